"""Build, cache and load the fused C++ fake-quantization kernels (``qfx/nn/_fused_quant.cpp``).

Train-mode quantization on CPU costs more in per-call overhead (Python, dispatch, autograd) than in arithmetic on
the small tensors of these models, so the quantizer and its backward are one C++ autograd node with one pass over
the data each way. The extension is compiled with g++ against the installed torch headers the first time a
quantizer runs, **in a background thread**: until it is ready (about 25 s of CPU once; then cached by content hash
under ``$QFX_CACHE_DIR/torch_ext``, default ``~/.cache/qfx``) quantizers run the tensor-op path, which computes
the same bits, so switching mid-training changes nothing but speed. The compiler runs detached and finishes even
when the process that started it exits first (the next process then finds it built). Without g++ (or when the build fails, or with
``QFX_FUSED=0``) the tensor-op path simply stays in use; ``status()`` says which path runs and why.

The kernels are CPU-only: CUDA (or any non-CPU, non-float32, non-contiguous) tensors make every entry point answer
"not applicable" and the tensor-op path runs for them, on whatever device they live.

``wait()`` blocks until the build is done (benchmarks and tests call it); ``QFX_FUSED=wait`` makes the first
quantizer call wait instead of starting in the background.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shlex
import subprocess
import sys
import sysconfig
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

__all__ = ["get", "wait", "status", "enabled", "SOURCE"]

SOURCE = Path(__file__).with_name("_fused_quant.cpp")
_MODULE = "_qfx_fused"
_BUILD_TIMEOUT_S = 900.0

_lock = threading.Lock()
_ext: ModuleType | None = None
_thread: threading.Thread | None = None
_done = threading.Event()
_why = "not built yet"
_pid = 0


def enabled() -> bool:
    """False when ``QFX_FUSED=0`` (the tensor-op path only)."""
    return os.environ.get("QFX_FUSED", "1").strip().lower() not in ("0", "off", "false", "no")


def _forked() -> None:
    """In a child process forked while the build thread ran, that thread does not exist: start over there."""
    global _thread, _done, _why
    if _thread is not None and _pid != os.getpid():
        _thread, _done, _why = None, threading.Event(), "not built yet"


def get() -> ModuleType | None:
    """The loaded extension, or None while it is being built / when it is unavailable. Never blocks (unless
    ``QFX_FUSED=wait``); the first call starts the build."""
    if _ext is not None:
        return _ext
    _forked()
    if _thread is None:
        if not enabled():
            return None
        _start()
        if os.environ.get("QFX_FUSED", "").strip().lower() == "wait":
            _done.wait()
    return _ext


def wait(timeout: float | None = None) -> ModuleType | None:
    """Start the build if needed and wait for it; returns the extension or None (see ``status()``)."""
    if _ext is not None or not enabled():
        return _ext
    _forked()
    _start()
    _done.wait(timeout)
    return _ext


def status() -> str:
    """One line: which train-mode quantizer path runs and why."""
    if not enabled():
        return "tensor-op path (QFX_FUSED=0)"
    if _ext is not None:
        return "fused C++ kernels"
    return f"tensor-op path ({_why})"


def _start() -> None:
    global _thread, _why, _pid
    with _lock:
        if _thread is not None:
            return
        _pid = os.getpid()
        _why = "building the fused kernels in the background"
        _thread = threading.Thread(target=_build_and_load, name="qfx-fused-build", daemon=True)
        _thread.start()


def _build_and_load() -> None:
    global _ext, _why
    try:
        so = _build()
        spec = importlib.util.spec_from_file_location(_MODULE, so)
        if spec is None or spec.loader is None:  # pragma: no cover - defensive
            raise ImportError(f"cannot load {so}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _ext = mod
        _why = ""
    except _Unavailable as e:
        _why = str(e)
    except Exception as e:  # noqa: BLE001 - any failure leaves the (identical, slower) tensor-op path in place
        _why = f"fused kernels unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"qfx: {_why}; train mode uses the tensor-op path (same results, slower)", RuntimeWarning,
                      stacklevel=1)
    finally:
        _done.set()


class _Unavailable(Exception):
    """No compiler: an expected condition, reported by status() without a warning."""


def _flags() -> tuple[str, list[str], list[str]]:
    """(g++ path, compile flags, link flags)."""
    from torch.utils import cpp_extension as ce

    from qfx.sim.toolchain import find_gxx

    try:
        gxx = find_gxx()
    except Exception as e:  # noqa: BLE001 - MissingToolError
        raise _Unavailable(f"no C++ compiler: {e}") from None
    incs = list(ce.include_paths()) + [sysconfig.get_paths()["include"]]
    # -ffp-contract=off: no multiply-add contraction may change a rounding; -fno-math-errno / -fno-trapping-math
    # let floor/round/trunc vectorize and change no value
    cflags = ["-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
              "-w",
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-DTORCH_EXTENSION_NAME={_MODULE}",
              "-DTORCH_API_INCLUDE_EXTENSION_H"]
    if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.cpu.get_cpu_capability() in ("AVX2",
                                                                                                        "AVX512"):
        cflags += ["-mavx2", "-mfma"]  # FMA only where the source asks for it (std::fma): -ffp-contract=off
    cflags += [f"-I{d}" for d in incs]
    libdirs = list(ce.library_paths())
    lflags = [f"-L{d}" for d in libdirs] + [f"-Wl,-rpath,{d}" for d in libdirs]
    lflags += ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    return gxx, cflags, lflags


def _key(gxx: str, cflags: list[str], lflags: list[str]) -> str:
    h = hashlib.sha256()
    try:
        ver = subprocess.run([gxx, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        ver = []
    for part in (SOURCE.read_bytes(), gxx.encode(), "".join(ver).encode(), torch.__version__.encode(),
                 str(Path(torch.__file__).resolve()).encode(), sys.version.encode(), platform.machine().encode(),
                 str(torch.backends.cpu.get_cpu_capability()).encode(), "\0".join(cflags + lflags).encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()


_STALE_S = 1200.0  # a "building" marker older than this belongs to a build that died


def _build() -> Path:
    """The cached extension, building it if needed. The compiler runs detached (its own session) and renames its
    output into place itself, so a short-lived process that exits mid-build still leaves a finished cache entry for
    the next one; a marker file keeps concurrent processes from starting the same build twice."""
    from qfx.sim.toolchain import cache_dir

    gxx, cflags, lflags = _flags()
    key = _key(gxx, cflags, lflags)
    folder = cache_dir("torch_ext") / key[:32]
    folder.mkdir(parents=True, exist_ok=True)
    so, marker, log = folder / f"{_MODULE}.so", folder / "building", folder / "build.log"
    failed = folder / "failed"
    if failed.is_file() and not so.is_file():  # this exact build failed before: do not retry in every process
        raise RuntimeError(f"{failed.read_text().strip()} (delete {folder} to retry)")
    deadline = time.monotonic() + _BUILD_TIMEOUT_S
    started = False
    while not so.is_file():
        if not started and _claim(marker):
            tmp = folder / f".build-{os.getpid()}.so"
            cmd = [gxx, *cflags, str(SOURCE), "-o", str(tmp), *lflags]
            script = (" ".join(shlex.quote(c) for c in cmd) + f" > {shlex.quote(str(log))} 2>&1"
                      f" && mv -f {shlex.quote(str(tmp))} {shlex.quote(str(so))};"
                      f" rc=$?; rm -f {shlex.quote(str(tmp))} {shlex.quote(str(marker))}; exit $rc")
            proc = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            started = True
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"g++ took over {_BUILD_TIMEOUT_S:.0f} s") from None
            if rc != 0 or not so.is_file():
                out = log.read_text(errors="replace") if log.is_file() else ""
                first = next((ln.strip() for ln in out.splitlines() if "error" in ln.lower()), "no output")
                msg = f"g++ failed ({first[:200]}; full log: {log})"
                failed.write_text(msg + "\n")
                raise RuntimeError(msg)
            break
        if started or time.monotonic() > deadline:
            raise RuntimeError(f"no extension after {_BUILD_TIMEOUT_S:.0f} s (see {log})")
        time.sleep(0.5)  # another process is building it
    return so


def _claim(marker: Path) -> bool:
    """Create the "building" marker (False when a live one exists; a stale one is replaced)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - marker.stat().st_mtime < _STALE_S:
                return False
            marker.unlink()
        except FileNotFoundError:
            pass
        return _claim(marker)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()} {time.time():.0f}\n")
    return True


def _describe() -> dict[str, Any]:  # pragma: no cover - debugging aid
    return {"status": status(), "source": str(SOURCE)}
