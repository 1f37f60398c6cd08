"""RTL co-simulation: cocotb run of a generated RTL project against the golden interpreter, bit for bit.

Two simulators run the same testbench (``tb/qfx_cosim_tb.py``), vectors and report: Verilator (2-state, compiled,
fast; the default) and Icarus Verilog (4-state, event-driven: X and Z propagate, so reading an undriven or
uninitialized value shows). With ``netlist=True`` each design is first synthesized by Yosys (generic
``synth -flatten``, ``qfx.report.yosys.write_netlist``) and the gate-level netlist is simulated instead of the RTL,
so a difference between simulation and synthesis semantics (signedness, widths, X) is a mismatch; a netlist runs
under Icarus unless Verilator is asked for.

Builds are cached by a hash of the sources, the top name and the tool versions: the Verilator build under
``cache_dir("verilator")`` (a second run of the same design skips the 10 s+ build), the Icarus build under
``cache_dir("icarus")``, netlists under ``cache_dir("netlist")``. Several projects can share one build
(``run_cosim_many``: a generated wrapper instantiates every top, the testbench drives all concurrently), which is how
the test suite checks many random models quickly.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qfx.errors import BadInputError, HdlBuildError, MissingToolError, RunError
from qfx.ir.graph import Graph
from qfx.ir.interpret import run
from qfx.resources import data_dir
from qfx.sim.csim import make_inputs
from qfx.sim.toolchain import cache_dir, find_iverilog, find_verilator, verilator_env

__all__ = ["compare_outputs", "run_testbench", "CosimReport", "run_cosim", "run_cosim_many", "pack_words", "unpack_words",
           "build_verilator", "build_icarus", "build_stats", "check_inputs", "load_project", "SIMULATORS",
           "resolve_sim", "find_simulator", "parse_words", "project_ports", "pack_port", "unpack_port",
           "check_input_dict"]

SIMULATORS = ("verilator", "icarus")

_CACHE_FORMAT = "qfx-verilator-2"
# split big generated functions: g++ time grows faster than linearly with function size (one 6 MB eval function
# for a 64-64-32-10 MLP), and split files compile in parallel
_BUILD_ARGS = ("-Wno-fatal", "-O3", "--x-assign", "fast", "--x-initial", "fast", "--no-timing", "--output-split",
               "20000", "--output-split-cfuncs", "2000")
# the PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the precompiled-header compile lines;
# "-include" restores them. -O1 instead of -Os: the straight-line adder code compiles much faster, and simulation
# speed is bound by cocotb anyway
_MAKE_VARS = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O1")
_ICARUS_FORMAT = "qfx-icarus-1"
# the generated RTL carries no `timescale; cocotb's 10 ns clock needs a unit and precision
_ICARUS_TIMESCALE = ("1ns", "1ps")


def resolve_sim(sim: str | None, netlist: bool = False) -> str:
    """The simulator to use: ``sim`` when given, else Icarus for a gate-level netlist (4-state, so X shows) and
    Verilator for RTL. BadInputError for an unknown name."""
    if sim is None:
        return "icarus" if netlist else "verilator"
    if sim not in SIMULATORS:
        raise BadInputError(f"unknown simulator {sim!r} (choose one of: {', '.join(SIMULATORS)})")
    return sim


def find_simulator(sim: str) -> None:
    """MissingToolError (exit 3, with the install hint) unless ``sim`` and cocotb can run."""
    if sim == "icarus":
        find_iverilog()
    else:
        find_verilator()
    try:
        import cocotb  # noqa: F401
        import cocotb_tools.runner  # noqa: F401
    except ImportError as exc:
        raise MissingToolError(f"{exc.name} is not installed (install it: pip install 'qfx[sim]')") from None


@dataclass
class CosimReport:
    """Outcome of one co-simulation: counts, the first mismatch (output index, expected, got), timings."""

    project: str
    top: str
    vectors: int
    outputs_compared: int
    mismatches: int
    received: int
    first_mismatch: dict[str, Any] | None
    backpressure: bool
    seed: int
    latency: int
    build_s: float
    build_cached: bool
    sim_s: float
    vectors_per_s: float
    timed_out: bool = False
    ii: int = 1  # clock cycles between accepted input beats (cosim.json "ii"; 1 = a vector every cycle)
    sim: str = "verilator"  # the simulator that ran it
    netlist: bool = False  # True: the Yosys gate-level netlist was simulated, not the RTL
    x_handshake_cycles: int = 0  # cycles after reset with X/Z on m_axis_tvalid or s_axis_tready (4-state only)
    tlast_errors: int = 0  # output beats whose tlast was not 1 exactly on a vector's last beat (ports with tlast)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.mismatches == 0 and self.received == self.vectors and not self.timed_out
                and self.x_handshake_cycles == 0 and self.tlast_errors == 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def pack_words(codes: np.ndarray, width: int) -> list[int]:
    """Rows of codes -> one integer per row, element 0 in the LSBs, each element ``width`` bits (two's complement)."""
    mask = (1 << width) - 1
    out = []
    for row in np.asarray(codes, dtype=np.int64).reshape(len(codes), -1):
        v = 0
        for j, c in enumerate(row.tolist()):
            v |= (int(c) & mask) << (j * width)
        out.append(v)
    return out


def unpack_words(words: Sequence[int], count: int, width: int, signed: bool) -> np.ndarray:
    """Inverse of ``pack_words``."""
    mask = (1 << width) - 1
    res = np.zeros((len(words), count), dtype=np.int64)
    for i, w in enumerate(words):
        for j in range(count):
            c = (int(w) >> (j * width)) & mask
            if signed and c >> (width - 1):
                c -= 1 << width
            res[i, j] = c
    return res


def compare_outputs(got: np.ndarray, expected: np.ndarray, unknown: np.ndarray | None = None
                    ) -> tuple[int, int, dict[str, Any] | None]:
    """(vectors compared, mismatching outputs, first mismatch) of received vs expected rows of output codes; every
    output of a missing or extra vector counts as a mismatch. ``unknown`` (same shape as ``got``, bool) marks outputs
    whose bits held X or Z in a 4-state simulation: each is a mismatch, reported as ``"got": "X"``."""
    m = min(len(got), len(expected))
    diff = got[:m] != expected[:m]
    if unknown is not None:
        diff = diff | np.asarray(unknown, dtype=bool)[:m]
    first = None
    if diff.any():
        v, j = map(int, np.argwhere(diff)[0])
        is_x = unknown is not None and bool(unknown[v, j])
        first = {"vector": v, "output_index": j, "expected": int(expected[v, j]),
                 "got": "X" if is_x else int(got[v, j])}
    return m, int(diff.sum()) + abs(len(got) - len(expected)) * expected.shape[1], first


def parse_words(words: Sequence[str], count: int, width: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Output words as the testbench wrote them (hex, or ``"bits:"`` + bits MSB first when any bit is X/Z) -> (codes,
    unknown): ``unpack_words`` of each word with X/Z bits read as 0, and which elements had an X/Z bit."""
    vals, xmask = [], []
    for w in words:
        if w.startswith("bits:"):
            bits = w[5:]
            vals.append(int("0" + "".join("1" if c == "1" else "0" for c in bits), 2))
            xmask.append(int("0" + "".join("0" if c in "01" else "1" for c in bits), 2))
        else:
            vals.append(int(w, 16))
            xmask.append(0)
    return unpack_words(vals, count, width, signed), unpack_words(xmask, count, width, False) != 0


def project_ports(info: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(input ports, output ports) of a project's cosim.json facts, in graph input / output order.

    Each port: ``tensor`` (None: the graph's only input / output), ``prefix`` (its signals are ``<prefix>_tdata``,
    ``_tvalid``, ``_tready`` and, with ``tlast``, ``_tlast``), ``count`` elements of ``ew`` bits (``signed``), ``tw``
    TDATA bits per beat, ``beats`` per vector and ``order`` (``"flat"``: beat b carries flat elements
    ``[b*count/beats, (b+1)*count/beats)``; ``"pixel"``: a CHW ``shape``, beat ``h*W + w`` carries that pixel's
    channels). Projects that name no ``in_ports``/``out_ports`` have one port each side from the ``in_*``/``out_*``
    keys (``s_axis``/``m_axis``, one beat per vector). KeyError/TypeError/ValueError on malformed facts."""
    if "in_ports" in info or "out_ports" in info:
        sides = (info["in_ports"], info["out_ports"])
    else:
        sides = tuple([{"tensor": None, "prefix": f"{d}_axis", "count": info[f"{k}_count"], "ew": info[f"{k}_ew"],
                        "signed": info.get(f"{k}_signed", True), "tw": info[f"{k}_tw"]}] for k, d in
                      (("in", "s"), ("out", "m")))
    res: list[list[dict[str, Any]]] = []
    for ports in sides:
        if not isinstance(ports, list) or not ports:
            raise ValueError("in_ports/out_ports must be non-empty lists")
        side = []
        for q in ports:
            q = {"beats": 1, "order": "flat", "tlast": False, "tensor": None, "signed": True, **q}
            count, ew, beats, tw = (int(q[k]) for k in ("count", "ew", "beats", "tw"))
            if min(count, ew, beats, tw) < 1 or count % beats or (count // beats) * ew > tw:
                raise ValueError(f"port {q['prefix']}: {count} elements of {ew} bits in {beats} beats of {tw} bits")
            if q["order"] not in ("flat", "pixel"):
                raise ValueError(f"port {q['prefix']}: order {q['order']!r}")
            if q["order"] == "pixel" and (len(q["shape"]) != 3 or q["shape"][1] * q["shape"][2] != beats):
                raise ValueError(f"port {q['prefix']}: pixel order needs shape [C, H, W] with H*W = beats")
            side.append(q)
        res.append(side)
    return res[0], res[1]


def _order(port: dict[str, Any]) -> np.ndarray | None:
    """Flat element index of each position in beat order (None: flat order as it is)."""
    if port.get("order", "flat") != "pixel":
        return None
    c, h, w = port["shape"]
    return np.arange(c * h * w).reshape(c, h * w).T.ravel()


def pack_port(codes: np.ndarray, port: dict[str, Any]) -> list[int]:
    """Rows of flat (C-order) codes ``(N, count)`` -> the port's beats in order, ``beats`` per vector (see
    ``project_ports`` for the element order), element 0 of each beat in the LSBs."""
    arr = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    order = _order(port)
    if order is not None:
        arr = arr[:, order]
    beats = int(port.get("beats", 1))
    return pack_words(arr.reshape(len(arr) * beats, -1), int(port["ew"]))


def unpack_port(words: Sequence[str], port: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``pack_port`` on beats as the testbench wrote them (``parse_words``): (codes, unknown), one row
    per complete vector (a trailing partial vector is dropped)."""
    beats = int(port.get("beats", 1))
    count = int(port["count"])
    words = list(words)[:len(words) // beats * beats]
    codes, unknown = parse_words(words, count // beats, int(port["ew"]), bool(port["signed"]))
    codes, unknown = codes.reshape(-1, count), unknown.reshape(-1, count)
    order = _order(port)
    if order is not None:
        inv = np.argsort(order)
        codes, unknown = codes[:, inv], unknown[:, inv]
    return codes, unknown


def load_project(project_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], Graph]:
    """(folder, cosim.json facts, graph) of an RTL project written by ``qfx export --target rtl``."""
    p = Path(project_dir).expanduser().absolute()
    if not p.is_dir():
        raise BadInputError(f"RTL project folder {p} does not exist")
    cj = p / "cosim.json"
    if not cj.is_file():
        raise BadInputError(f"{p} is not a qfx RTL project (no cosim.json; export one with --target rtl)")
    try:
        info = json.loads(cj.read_text())
        files = [p / f for f in info["rtl_files"]]
        info["top"], info["latency"]  # noqa: B018 - presence check
        project_ports(info)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{cj}: malformed cosim.json ({type(exc).__name__}: {exc})") from None
    for f in files:
        if not f.is_file():
            raise BadInputError(f"RTL file {f} listed in cosim.json is missing")
    graph = Graph.load(p / "model.json")
    return p, info, graph


def _versions() -> str:
    import cocotb

    exe = find_verilator()
    conf_h = exe.parent.parent / "include" / "verilated_config.h"  # carries the version; the bin/ script may not
    ver = hashlib.sha256(conf_h.read_bytes()).hexdigest()[:16] if conf_h.is_file() else "?"
    gxx = shutil.which(os.environ.get("CXX") or "g++") or ""
    gst = Path(gxx).stat() if gxx else None
    return (f"{exe}|{exe.stat().st_size}|{ver}|cocotb {cocotb.__version__}|{gxx}|{gst.st_size if gst else 0}"
            f"|{gst.st_mtime_ns if gst else 0}")


def _build_jobs() -> int:
    """Parallel g++ jobs of one build: ``QFX_BUILD_JOBS``, else the CPU count (at most 4)."""
    env = os.environ.get("QFX_BUILD_JOBS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, min(4, os.cpu_count() or 1))


def _verilate_cmd(sources: Sequence[Path], top: str, mdir: Path, vlt: Path) -> list[str]:
    """The Verilator command cocotb's runner would run, without its ``--public-flat-rw``.

    cocotb reaches only the top's ports (clock, reset, AXI-Stream), so ``vlt`` marks just the top module public; with
    every internal adder net public (the runner's default) the generated C++ of a 6,600-adder MLP was 3x larger and
    g++ took 4x longer. The testbench never reads internal nets, so nothing is lost.
    """
    import cocotb_tools.config as cc

    libs = cc.libs_dir
    return [str(find_verilator()), "-cc", "--exe", "-Mdir", str(mdir), "--top-module", top, "--vpi", "--prefix",
            "Vtop", "-o", top, "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator", *_BUILD_ARGS,
            str(vlt), str(cc.share_dir / "lib" / "verilator" / "verilator.cpp"), *map(str, sources)]


def _runtime_objects(mdir: Path) -> tuple[list[str], str]:
    """(names of the design-independent Verilator runtime objects of this build, a key of their compile settings)."""
    text = (mdir / "Vtop_classes.mk").read_text()
    names: list[str] = []
    for block in re.findall(r"^VM_GLOBAL_(?:FAST|SLOW) \+= \\\n((?:[ \t]+\S+ \\\n)*)", text, re.M):
        names += [ln.strip(" \t\\") + ".o" for ln in block.splitlines() if ln.strip(" \t\\")]
    conf = sorted(ln.strip() for ln in text.splitlines() if re.match(r"VM_[A-Z0-9_]+ = ", ln))
    key = hashlib.sha256("\0".join([_versions(), *_MAKE_VARS, *conf, *names]).encode()).hexdigest()[:24]
    return sorted(names), key


def _run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, what: str) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "%Error" in ln or "error" in ln]
        raise HdlBuildError(f"{what} failed: {(lines[0][:300] if lines else f'exit {r.returncode}')} (log: {log})")


def _publish(tmp: Path, dest: Path, key: str) -> None:
    """Mark a finished build folder and move it into the cache atomically (a concurrent build of the same design
    that got there first wins; this one is dropped)."""
    (tmp / ".qfx-done").write_text(key)
    try:
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def build_verilator(sources: Sequence[Path], top: str, log_dir: Path | None = None) -> tuple[Path, bool, float]:
    """Verilator+cocotb simulation executable for ``sources`` with ``top``: (build dir, cache hit, seconds).

    Verilates and runs make itself (the same commands as cocotb's runner, minus ``--public-flat-rw``, ``make -j``
    bounded); the compiled Verilator runtime (``verilated*.o``, the same for every design) is cached once and copied
    into each new build. ``qfx_build.json`` in the build dir records the step times (wall and CPU seconds).
    """
    env = verilator_env()
    if shutil.which("make", path=env.get("PATH")) is None:
        raise MissingToolError("make not found (the Verilator build runs make and g++; install build-essential)")
    h = hashlib.sha256(f"{_CACHE_FORMAT}\0{top}\0{_versions()}\0{' '.join(_BUILD_ARGS + _MAKE_VARS)}\0".encode())
    for s in sources:
        h.update(Path(s).name.encode() + b"\0" + Path(s).read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    root = cache_dir("verilator")
    dest = root / f"{top[:40]}-{key}"
    if (dest / top).is_file() and (dest / ".qfx-done").is_file():
        return dest, True, 0.0
    tmp = Path(tempfile.mkdtemp(prefix=f".{top[:40]}-", dir=root))
    t0 = time.perf_counter()
    log = (log_dir or tmp) / "verilator_build.log"
    log.write_text("")
    try:
        vlt = tmp / "qfx_public.vlt"
        vlt.write_text(f'`verilator_config\npublic_flat_rw -module "{top}" -var "*"\n')
        cpu0 = _child_cpu()
        _run_logged(_verilate_cmd(sources, top, tmp, vlt), tmp, env, log, f"Verilator build of {top}")
        t1, cpu1 = time.perf_counter(), _child_cpu()
        names, rkey = _runtime_objects(tmp)
        rt = root / f"runtime-{rkey}"
        reused = rt.is_dir() and all((rt / n).is_file() for n in names)
        if reused:  # fresh copies are newer than Vtop.mk, so make keeps them
            for n in names:
                shutil.copyfile(rt / n, tmp / n)
        _run_logged(["make", "-j", str(_build_jobs()), "-C", str(tmp), "-f", "Vtop.mk", "VM_TRACE=0", *_MAKE_VARS],
                    tmp, env, log, f"Verilator build of {top} (g++)")
        t2, cpu2 = time.perf_counter(), _child_cpu()
        if not reused and names:
            _store_runtime(tmp, names, rt)
        (tmp / "qfx_build.json").write_text(json.dumps({
            "verilate_s": round(t1 - t0, 2), "verilate_cpu_s": round(cpu1 - cpu0, 2), "make_s": round(t2 - t1, 2),
            "make_cpu_s": round(cpu2 - cpu1, 2), "runtime_reused": reused, "jobs": _build_jobs()}))
        _publish(tmp, dest, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, False, time.perf_counter() - t0


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _store_runtime(mdir: Path, names: list[str], dest: Path) -> None:
    """Keep this build's runtime objects for the next build (atomic rename; a concurrent winner is fine)."""
    tmp = Path(tempfile.mkdtemp(prefix=".runtime-", dir=dest.parent))
    try:
        for n in names:
            shutil.copyfile(mdir / n, tmp / n)
        os.replace(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def build_stats(build_dir: Path) -> dict[str, Any]:
    """Step times a fresh build recorded (``{}`` for builds made before they were recorded)."""
    try:
        return json.loads((Path(build_dir) / "qfx_build.json").read_text())
    except (OSError, ValueError):
        return {}


def _icarus_version() -> str:
    import cocotb

    exe = find_iverilog()
    try:
        ver = subprocess.run([str(exe), "-V"], capture_output=True, text=True, timeout=60).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError) as e:
        raise MissingToolError(f"cannot run {exe} ({e})") from None
    return f"{exe}|{exe.stat().st_size}|{ver[0] if ver else '?'}|cocotb {cocotb.__version__}"


def _first_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
             if "error" in ln.lower() and "sorry" not in ln.lower()]
    return lines[0][:300] if lines else ""


def build_icarus(sources: Sequence[Path], top: str, log_dir: Path | None = None) -> tuple[Path, bool, float]:
    """Icarus Verilog build (``sim.vvp``) of ``sources`` with ``top``, by cocotb's runner: (build dir, cache hit,
    seconds). ``iverilog -g2012`` with timescale 1ns/1ps; cached under ``cache_dir("icarus")`` by content."""
    from cocotb_tools.runner import get_runner

    h = hashlib.sha256(f"{_ICARUS_FORMAT}\0{top}\0{_icarus_version()}\0{_ICARUS_TIMESCALE}\0".encode())
    for s in sources:
        h.update(Path(s).name.encode() + b"\0" + Path(s).read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    root = cache_dir("icarus")
    dest = root / f"{top[:40]}-{key}"
    if (dest / "sim.vvp").is_file() and (dest / ".qfx-done").is_file():
        return dest, True, 0.0
    tmp = Path(tempfile.mkdtemp(prefix=f".{top[:40]}-", dir=root))
    t0 = time.perf_counter()
    log = (log_dir or tmp) / "icarus_build.log"
    try:
        runner = get_runner("icarus")
        try:
            runner.build(sources=[str(s) for s in sources], hdl_toplevel=top, build_dir=str(tmp), always=True,
                         timescale=_ICARUS_TIMESCALE, log_file=str(log))
        except (SystemExit, Exception) as exc:
            why = _first_error(log) if log.is_file() else ""
            raise HdlBuildError(f"Icarus build of {top} failed: {why or exc} (log: {log})") from None
        if not (tmp / "sim.vvp").is_file():
            raise HdlBuildError(f"Icarus build of {top} wrote no sim.vvp (log: {log})")
        _publish(tmp, dest, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, False, time.perf_counter() - t0


def run_testbench(sources: Sequence[Path], top: str, test_module: str, env: dict[str, str],
                  work: Path, sim: str = "verilator") -> tuple[Path, bool, float]:
    """Build (cached) and run the cocotb test module ``test_module`` from ``tb/`` on ``top`` under ``sim``
    (``"verilator"`` or ``"icarus"``): (build dir, cache hit, build s).

    The build is qfx's own (cached); the run is cocotb's public ``Runner.test`` pointed at that build folder.
    """
    sim = resolve_sim(sim)
    if sim == "icarus":
        build_dir, cached, build_s = build_icarus(sources, top, work)
    else:
        build_dir, cached, build_s = build_verilator(sources, top, work)
    from cocotb_tools.runner import get_runner

    runner = get_runner(sim)
    tb = data_dir("tb")
    # the runner passes sys.path as the simulator's PYTHONPATH; the testbench module must be importable there
    if str(tb) not in sys.path:
        sys.path.append(str(tb))
    try:
        runner.test(test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog", build_dir=str(build_dir),
                    test_dir=str(work), results_xml=str(work / "results.xml"), log_file=str(work / "sim.log"),
                    extra_env={**env, "COCOTB_LOG_LEVEL": "WARNING"})
    except (SystemExit, Exception) as exc:
        raise RunError(f"cocotb simulation of {top} ({sim}) failed: {exc} (log: {work / 'sim.log'})") from None
    return build_dir, cached, build_s


def _ii(info: dict[str, Any]) -> int:
    """Clock cycles between accepted input beats from cosim.json (absent: 1, a vector every cycle)."""
    ii = info.get("ii", 1)
    if isinstance(ii, bool) or not isinstance(ii, int) or ii < 1:
        raise BadInputError(f"cosim.json: \"ii\" must be a positive integer, got {ii!r}")
    return ii


def _rate(n: int, seconds: float) -> float:
    """Vectors per second, one decimal (three significant digits below 10: gate-level runs are that slow)."""
    x = n / max(seconds, 1e-9)
    return round(x, 1) if x >= 10 else float(f"{x:.3g}")


def _netlists(projects: Sequence[tuple[Path, dict[str, Any], Graph]]) -> list[Any]:
    """Yosys gate-level netlist of each project's RTL (``qfx.report.yosys.write_netlist``, cached), synthesized
    ``_build_jobs()`` at a time."""
    from qfx.report.yosys import write_netlist

    def one(pr: tuple[Path, dict[str, Any], Graph]) -> Any:
        p, info, _ = pr
        return write_netlist([p / f for f in info["rtl_files"]], info["top"])

    if len(projects) == 1:
        return [one(projects[0])]
    with ThreadPoolExecutor(max_workers=max(1, min(len(projects), _build_jobs()))) as pool:
        return list(pool.map(one, projects))


def _wrapper(tops: list[dict[str, Any]]) -> str:
    from qfx.backends.rtl import template_env

    return template_env().get_template("multi_top.sv.j2").render(duts=tops)


def check_inputs(graph: Graph, x: Any, what: str = "inputs", name: str | None = None) -> np.ndarray:
    """Given input codes as int64 ``(N, *input_shape)`` of graph input ``name`` (default: the first); BadInputError
    (one line) unless every code fits the format."""
    spec = graph.tensor(name or graph.inputs[0])
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"{what} must be integer codes of {spec.fmt.ap_type()}, got dtype {arr.dtype}")
    if arr.ndim != len(spec.shape) + 1 or tuple(arr.shape[1:]) != tuple(spec.shape):
        want = "(N, " + ", ".join(map(str, spec.shape)) + ")"
        raise BadInputError(f"{what} has shape {tuple(arr.shape)}, expected {want} for input {spec.name!r}")
    if len(arr) == 0:
        raise BadInputError(f"{what} hold no vectors (shape {tuple(arr.shape)})")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < spec.fmt.min_code or hi > spec.fmt.max_code:
        bad = lo if lo < spec.fmt.min_code else hi
        raise BadInputError(f"{what} hold code {bad} outside {spec.fmt.ap_type()} "
                            f"[{spec.fmt.min_code}, {spec.fmt.max_code}]")
    return arr.astype(np.int64, copy=False)


def check_input_dict(graph: Graph, x: Any, what: str = "inputs") -> dict[str, np.ndarray]:
    """Given input codes -> one checked int64 array per graph input name. A graph with one input takes its array
    or a one-entry mapping; several inputs need a mapping with exactly their names and the same vector count."""
    if not hasattr(x, "keys"):
        if len(graph.inputs) != 1:
            raise BadInputError(f"{what}: the graph has {len(graph.inputs)} inputs ({', '.join(graph.inputs)}); give "
                                f"one array per input name")
        return {graph.inputs[0]: check_inputs(graph, x, what)}
    keys = set(x.keys())
    if keys != set(graph.inputs):
        raise BadInputError(f"{what} name {', '.join(sorted(map(str, keys))) or 'nothing'}; the graph's inputs are "
                            f"{', '.join(graph.inputs)}")
    res = {t: check_inputs(graph, x[t], f"{what}[{t!r}]", t) for t in graph.inputs}
    if len({len(a) for a in res.values()}) > 1:
        raise BadInputError(f"{what}: the inputs hold different numbers of vectors "
                            f"({', '.join(f'{t}: {len(a)}' for t, a in res.items())})")
    return res


def run_cosim_many(project_dirs: Sequence[str | os.PathLike[str]], n_vectors: int = 1000, seed: int = 0,
                   backpressure: bool = True, work_dir: str | os.PathLike[str] | None = None,
                   write_reports: bool = True, inputs: Sequence[Any | None] | None = None,
                   sim: str | None = None, netlist: bool = False) -> list[CosimReport]:
    """Co-simulate several RTL projects in ONE simulator build and one simulation (each driven independently).

    ``inputs``: None (every project gets ``n_vectors`` edge + random vectors from ``seed``) or one entry per
    project, each None (random as before) or the input codes to stream, shape ``(N, *input_shape)``; then that
    project simulates exactly those N vectors and ``n_vectors`` does not apply to it.
    ``sim``: ``"verilator"`` or ``"icarus"`` (default: Verilator for RTL, Icarus with ``netlist``). ``netlist``:
    simulate each project's Yosys gate-level netlist (``synth -flatten``, cached) instead of its RTL.
    """
    sim = resolve_sim(sim, netlist)
    projects = [load_project(d) for d in project_dirs]
    if isinstance(inputs, np.ndarray):
        raise BadInputError("inputs: pass a list with one array (or None) per project, not one array")
    if inputs is not None and len(inputs) != len(projects):
        raise BadInputError(f"inputs: {len(inputs)} arrays for {len(projects)} projects (give one per project, "
                            f"or None)")
    given = list(inputs) if inputs is not None else [None] * len(projects)
    if n_vectors < 1 and any(g is None for g in given):
        raise BadInputError(f"number of vectors must be >= 1, got {n_vectors}")
    xs_given = [None if g is None else check_input_dict(graph, g, "inputs" if len(projects) == 1 else f"inputs[{i}]")
                for i, (g, (_, _, graph)) in enumerate(zip(given, projects))]
    iis = [_ii(info) for _, info, _ in projects]
    tops = [info["top"] for _, info, _ in projects]
    if len(set(tops)) != len(tops):
        raise BadInputError("projects co-simulated together need distinct top names")
    find_simulator(sim)
    if netlist:
        from qfx.sim.toolchain import find_yosys

        find_yosys()
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="qfx-cosim-"))
    work.mkdir(parents=True, exist_ok=True)
    nets = _netlists(projects) if netlist else [None] * len(projects)
    sources: list[Path] = []
    duts, expect = [], []
    single = len(projects) == 1
    ports = [project_ports(info) for _, info, _ in projects]
    for i, ((p, info, graph), xg, ii, net, (pin, pout)) in enumerate(zip(projects, xs_given, iis, nets, ports)):
        sources += [p / f for f in info["rtl_files"]] if net is None else [net.path]
        xs = make_inputs(graph, n_vectors, seed) if xg is None else xg
        n = len(next(iter(xs.values())))
        y = run(graph, xs if len(graph.inputs) > 1 else xs[graph.inputs[0]])
        ys = {o: np.asarray(y[o] if isinstance(y, dict) else y).reshape(n, -1) for o in graph.outputs}
        expect.append(ys)
        pre = "" if single else f"d{i}_"
        duts.append({"name": info["top"], "latency": info["latency"], "ii": ii,
                     "in_ports": [{"prefix": pre + q["prefix"], "width": q["tw"], "beats": q["beats"],
                                   "words": [format(v, "x") for v in pack_port(xs[q["tensor"] or graph.inputs[0]]
                                                                               .reshape(n, -1), q)]} for q in pin],
                     "out_ports": [{"prefix": pre + q["prefix"], "width": q["tw"], "beats": q["beats"],
                                    "words": [format(v, "x") for v in pack_port(ys[q["tensor"] or graph.outputs[0]],
                                                                                q)]} for q in pout]})
    if single:
        top = tops[0]
    else:
        top = "qfx_multi_top"
        wrap = work / f"{top}.sv"
        wrap.write_text(_wrapper([{"top": info["top"], "i": i, "in_ports": pin, "out_ports": pout}
                                  for i, ((_, info, _), (pin, pout)) in enumerate(zip(projects, ports))]))
        sources.append(wrap)
    results = work / "results.json"
    conf = work / "cosim_config.json"
    conf.write_text(json.dumps({"seed": seed, "backpressure": backpressure, "results": str(results), "duts": duts}))
    if results.exists():
        results.unlink()
    t0 = time.perf_counter()
    build_dir, cached, build_s = run_testbench(sources, top, "qfx_cosim_tb", {"QFX_COSIM_CONFIG": str(conf)}, work,
                                               sim=sim)
    sim_s = time.perf_counter() - t0 - build_s
    if not results.is_file():
        raise RunError(f"the testbench wrote no results (log: {work / 'sim.log'})")
    res = json.loads(results.read_text())
    reports = []
    for (p, info, graph), d, ys, r, xg, net, (_, pout) in zip(projects, duts, expect, res["duts"], xs_given, nets,
                                                              ports):
        parts = [unpack_port(rp["got"], q) for rp, q in zip(r["out_ports"], pout)]
        k = min(len(c) for c, _ in parts)
        # every output port side by side, one row per vector (output_index counts across the outputs in order)
        got = np.concatenate([c[:k] for c, _ in parts], axis=1)
        unknown = np.concatenate([u[:k] for _, u in parts], axis=1)
        y = np.concatenate([ys[q["tensor"] or graph.outputs[0]] for q in pout], axis=1)
        m, mism, first = compare_outputs(got, y, unknown)
        if first is not None and len(pout) > 1:  # name the output port and the index inside it
            j, off = first["output_index"], 0
            for q in pout:
                if j < off + q["count"]:
                    first.update(port=q["prefix"], tensor=q["tensor"], index_in_port=j - off)
                    break
                off += q["count"]
        rep = CosimReport(project=str(p), top=info["top"], vectors=len(y), outputs_compared=int(m * y.shape[1]),
                          mismatches=mism, received=len(got), first_mismatch=first, backpressure=backpressure,
                          seed=seed, latency=info["latency"], build_s=round(build_s, 3), build_cached=cached,
                          sim_s=round(sim_s, 3), vectors_per_s=_rate(len(y), r["wall_s"]),
                          timed_out=bool(r["timed_out"]), ii=d["ii"], sim=sim, netlist=net is not None,
                          x_handshake_cycles=int(r.get("x_handshake_cycles", 0)),
                          tlast_errors=int(r.get("tlast_errors", 0)),
                          extra={"tb_mismatched_vectors": r["mismatched_vectors"],
                                 "x_outputs": int(unknown.sum()),
                                 "inputs": "given" if xg is not None else "edge + random",
                                 **({} if net is None else {"netlist": net.to_dict()}),
                                 **({} if cached or sim != "verilator" else {"build": build_stats(build_dir)})})
        if write_reports:
            (p / "cosim_report.json").write_text(json.dumps(rep.to_dict(), indent=1))
        reports.append(rep)
    return reports


def run_cosim(project_dir: str | os.PathLike[str], n_vectors: int = 1000, seed: int = 0,
              backpressure: bool = True, work_dir: str | os.PathLike[str] | None = None,
              inputs: Any | None = None, sim: str | None = None, netlist: bool = False) -> CosimReport:
    """Co-simulate one RTL project against ``qfx.ir.run``; writes ``cosim_report.json`` into the project.

    ``inputs``: the input codes to stream, shape ``(N, *input_shape)`` (then N vectors, ``n_vectors`` unused);
    default ``n_vectors`` edge + random vectors from ``seed``. ``sim`` and ``netlist``: see ``run_cosim_many``.
    """
    return run_cosim_many([project_dir], n_vectors, seed, backpressure, work_dir,
                          inputs=None if inputs is None else [inputs], sim=sim, netlist=netlist)[0]
