"""Atomic output folders and files: write into a temporary sibling, rename into place only when complete.

The temporary sibling comes from ``tempfile`` (mode 0700/0600, private while incomplete); before the rename it gets
the mode an ordinary ``mkdir``/``open`` would have given it under the process umask, so outputs are shared or
private as the user's umask says, like any other file they write.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from qfx.errors import BadInputError, OutputExistsError

__all__ = ["atomic_output_dir", "atomic_output_file", "safe_child", "check_writable", "current_umask"]


def current_umask() -> int:
    """The process umask, read from /proc where possible (setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def check_writable(path: str | os.PathLike[str], force: bool = False) -> Path:
    """Fail now, in one line, when the file ``path`` cannot be written (it exists and ``force`` is off, a folder is
    in the way, or the nearest existing parent folder takes no files): before minutes of training, not after.
    Creates nothing (a probe file in that parent is removed at once)."""
    dest = Path(path).expanduser().absolute()
    if dest.exists() and not force:
        raise OutputExistsError(f"output {dest} already exists (use --force to replace it)")
    if dest.is_dir():
        raise BadInputError(f"output {dest} is a folder, expected a file path")
    anc = dest.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise BadInputError(f"cannot write {dest}: {anc} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qfx-probe-", dir=anc)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise BadInputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return dest


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike[str], force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``.

    An existing ``path`` is left untouched unless ``force``; on any exception (Ctrl-C included) the temporary
    folder is removed and whatever was at ``path`` stays as it was.
    """
    dest = Path(path).expanduser().absolute()
    if dest.exists() and not force:
        raise OutputExistsError(f"output {dest} already exists (use --force to replace it)")
    if dest.exists() and not dest.is_dir():
        raise BadInputError(f"output {dest} exists and is not a folder")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    except OSError as exc:
        raise BadInputError(f"cannot write output folder {dest}: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        old = None
        if dest.exists():
            old = parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike[str], force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file object for a temporary sibling of ``path``; on success it replaces ``path``.

    Same guarantees as ``atomic_output_dir``: an existing file is kept unless ``force``, and a failure (Ctrl-C
    included) removes the temporary file and leaves ``path`` as it was.
    """
    dest = Path(path).expanduser().absolute()
    if dest.exists() and not force:
        raise OutputExistsError(f"output {dest} already exists (use --force to replace it)")
    if dest.is_dir():
        raise BadInputError(f"output {dest} is a folder, expected a file path")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    except OSError as exc:
        raise BadInputError(f"cannot write {dest}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_child(root: Path, rel: str) -> Path:
    """``root/rel``, refusing names that would escape ``root`` (``..``, absolute paths)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise BadInputError(f"refusing to write outside the output folder: {rel!r}")
    return p
