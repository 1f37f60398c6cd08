"""Compile C++ against the ap_types headers, cache the binaries by content, run them, exchange int64 codes by file.

Why a content cache: csim harnesses and generated HLS projects are rebuilt by many tests and CLI calls; g++ on the
ap_fixed headers costs seconds. The cache key covers everything that can change the binary: the compiler (path and
``--version``), the flags and defines, and the text of every file the sources include (found by scanning ``#include``
lines through the source folders, the include folders and the ap_types folder). Builds go to a temporary file in the
cache folder and are renamed into place, so concurrent builds of the same program are safe.

Data exchange with the binaries is through files of int64 values: ``.bin`` files are raw little-endian int64,
any other suffix is whitespace-separated decimal text (one row per line). Doubles travel as their IEEE-754 bit
patterns viewed as int64, so nothing is lost to printing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from qfx.errors import BuildError, MissingToolError, RunError
from qfx.sim.toolchain import cache_dir, find_ap_include, find_gxx

__all__ = ["BASE_FLAGS", "compile_cxx", "cache_key", "run_binary", "write_codes", "read_codes"]

BASE_FLAGS: tuple[str, ...] = ("-std=c++14", "-O2", "-Wall")
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"]+)[>"]', re.MULTILINE)
_CACHE_FORMAT = "qfx-cxx-1"


@lru_cache(maxsize=8)
def _compiler_id(exe: str, mtime_ns: int) -> str:
    """``exe --version`` (first line), cached per process and per compiler file state."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:  # pragma: no cover - find_gxx checked it exists
        raise MissingToolError(f"cannot run {exe} --version ({e}); install g++ or point $CXX at a working one") \
            from None
    return out.splitlines()[0] if out else ""


@lru_cache(maxsize=4096)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digest(path: Path) -> str:
    st = path.stat()
    return _file_digest(str(path), st.st_mtime_ns, st.st_size)


def _dependencies(sources: Sequence[Path], include_dirs: Sequence[Path]) -> list[Path]:
    """Every file reachable from ``sources`` through ``#include`` lines that resolves in the source's folder (quoted
    includes) or in ``include_dirs``. Over-approximate on purpose (conditional includes count too); system headers
    are covered by the compiler's identity instead."""
    seen: dict[Path, None] = {}
    stack = [p.resolve() for p in sources]
    while stack:
        f = stack.pop()
        if f in seen:
            continue
        seen[f] = None
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for kind, name in _INCLUDE_RE.findall(text):
            dirs = ([f.parent] if kind == '"' else []) + list(include_dirs)
            for d in dirs:
                cand = d / name
                if cand.is_file():
                    stack.append(cand.resolve())
                    break
    return list(seen)


def cache_key(
    sources: Sequence[Path],
    include_dirs: Sequence[Path],
    flags: Sequence[str],
    compiler: str,
) -> str:
    """SHA-256 over compiler identity, full command-line flags and the contents of all included files."""
    h = hashlib.sha256()
    exe = Path(compiler)
    h.update(f"{_CACHE_FORMAT}\0{exe}\0{_compiler_id(str(exe), exe.stat().st_mtime_ns)}\0".encode())
    for fl in flags:
        h.update(fl.encode() + b"\0")
    h.update(b"\1")
    for d in include_dirs:
        h.update(str(d).encode() + b"\0")
    h.update(b"\1")
    srcs = [p.resolve() for p in sources]
    for p in srcs:  # order of sources matters for the link line, so hash it in order
        h.update(str(p.name).encode() + b"\0" + _digest(p).encode() + b"\0")
    h.update(b"\1")
    for dep in sorted(set(_dependencies(srcs, include_dirs)) - set(srcs)):
        h.update(str(dep).encode() + b"\0" + _digest(dep).encode() + b"\0")
    return h.hexdigest()


def _first_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pat in (r"\berror\b", r"\bfatal\b", r"undefined reference"):
        for ln in lines:
            if re.search(pat, ln, re.IGNORECASE):
                return ln[:300]
    return (lines[0][:300] if lines else "no compiler output")


def compile_cxx(
    sources: Sequence[Path | str],
    *,
    include_dirs: Sequence[Path | str] = (),
    defines: Mapping[str, str] | None = None,
    flags: Sequence[str] = (),
    ap_include: Path | str | None = None,
    name: str = "prog",
    timeout: float = 600.0,
) -> Path:
    """Compile ``sources`` with g++ (``-std=c++14 -O2 -Wall`` + ``flags``) against the ap_types headers and return the
    cached executable. A cache hit returns the same path without running the compiler.

    Raises ``BuildError`` (one line: the first compiler error and the path of the full log; exit status 2) when
    g++ fails on the sources, and ``MissingToolError`` (exit status 3) only when g++ or the headers cannot be found.
    """
    if not sources:
        raise BuildError("compile_cxx: no source files given")
    srcs = [Path(s).resolve() for s in sources]
    for s in srcs:
        if not s.is_file():
            raise BuildError(f"C++ source not found: {s}")
    gxx = find_gxx()
    ap = find_ap_include(ap_include)
    incs = [Path(d).resolve() for d in include_dirs] + [ap]
    all_flags = list(BASE_FLAGS) + [f"-D{k}={v}" if v != "" else f"-D{k}" for k, v in sorted((defines or {}).items())]
    all_flags += list(flags)
    key = cache_key(srcs, incs, all_flags, gxx)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40] or "prog"
    root = cache_dir("cxx")
    exe = root / f"{safe}-{key[:32]}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    with _build_lock(root / f".{safe}-{key[:32]}.lock"):
        if exe.is_file() and os.access(exe, os.X_OK):  # a concurrent process built it while we waited
            return exe
        _compile(cmd_base=[gxx, *all_flags, *[f"-I{d}" for d in incs]], srcs=srcs, exe=exe, root=root, safe=safe,
                 key=key, name=name, timeout=timeout)
    return exe


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """Serialise identical builds across processes (pytest-xdist workers): the second waits, then hits the cache."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: the atomic rename alone keeps it safe
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compile(*, cmd_base: list[str], srcs: list[Path], exe: Path, root: Path, safe: str, key: str, name: str,
             timeout: float) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{safe}-", suffix=".tmp", dir=root)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [*cmd_base, "-o", str(tmp), *map(str, srcs)]
    try:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BuildError(f"g++ timed out after {timeout:.0f} s compiling {name}") from None
        if res.returncode != 0:
            log_dir = root / "logs"
            log_dir.mkdir(exist_ok=True)
            log = log_dir / f"{safe}-{key[:16]}.log"
            log.write_text(" ".join(cmd) + "\n\n" + res.stdout + res.stderr)
            raise BuildError(f"g++ failed to compile {name}: {_first_error(res.stderr + res.stdout)} (full log: {log})")
        os.chmod(tmp, 0o755)
        os.replace(tmp, exe)  # atomic: a concurrent identical build just replaces it with an identical file
    finally:
        if tmp.exists():
            tmp.unlink()


def run_binary(
    exe: Path | str,
    args: Sequence[str] = (),
    cwd: Path | str | None = None,
    timeout: float = 600.0,
    *,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a compiled program and capture its text output. With ``check`` a non-zero exit (or a crash, e.g. an
    ap_types assertion) raises ``RunError`` naming the exit status and the last line of stderr; a timeout always
    raises ``RunError``."""
    cmd = [str(exe), *map(str, args)]
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"{Path(exe).name} timed out after {timeout:g} s") from None
    except OSError as e:
        raise RunError(f"cannot run {exe}: {e.strerror or e}") from None
    if check and res.returncode != 0:
        why = f"killed by signal {-res.returncode}" if res.returncode < 0 else f"exit status {res.returncode}"
        tail = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        raise RunError(f"{Path(exe).name} failed ({why})" + (f": {tail[-1].strip()[:300]}" if tail else ""))
    return res


def write_codes(path: Path | str, array: np.ndarray) -> Path:
    """Write integers (any shape, flattened in C order) as int64: raw little-endian for ``.bin``, else decimal text
    with one row (last axis) per line."""
    p = Path(path)
    a = np.asarray(array)
    if a.dtype.kind not in "iub":
        raise TypeError(f"write_codes needs an integer array, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if p.suffix == ".bin":
        p.write_bytes(np.ascontiguousarray(a, dtype="<i8").tobytes())
    else:
        rows = a.reshape(-1, a.shape[-1]) if a.ndim >= 1 and a.size else a.reshape(-1, 1)
        p.write_text("".join(" ".join(map(str, r.tolist())) + "\n" for r in rows))
    return p


def read_codes(path: Path | str, shape: Sequence[int] | int | None = None) -> np.ndarray:
    """Read int64 values written by a binary (``.bin`` raw little-endian, else whitespace-separated decimal text).
    With ``shape`` the count must match exactly (else ``RunError``)."""
    p = Path(path)
    try:
        if p.suffix == ".bin":
            raw = p.read_bytes()
            if len(raw) % 8:
                raise RunError(f"{p.name}: {len(raw)} bytes is not a whole number of int64 values")
            a = np.frombuffer(raw, dtype="<i8").astype(np.int64)
        else:
            toks = p.read_text().split()
            a = np.array([int(t) for t in toks], dtype=np.int64)
    except FileNotFoundError:
        raise RunError(f"result file {p} was not written") from None
    except (ValueError, OverflowError) as e:
        raise RunError(f"{p.name}: not a list of int64 values ({e})") from None
    if shape is None:
        return a
    shp = (shape,) if isinstance(shape, int) else tuple(shape)
    n = int(np.prod(shp, dtype=np.int64))
    if a.size != n:
        raise RunError(f"{p.name}: expected {n} values for shape {shp}, got {a.size}")
    return a.reshape(shp)
