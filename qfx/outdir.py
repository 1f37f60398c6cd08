"""Atomic output folders: write into a temporary sibling, rename into place only when complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from qfx.errors import BadInputError, OutputExistsError

__all__ = ["atomic_output_dir", "atomic_output_file", "safe_child"]


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
