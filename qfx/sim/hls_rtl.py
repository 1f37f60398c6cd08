"""``qfx cosim --hls-rtl``: synthesize an HLS project's AXI-Stream top with Vitis HLS and co-simulate that RTL.

Flow: ``vitis_hls -f build_prj.tcl`` with ``QFX_HLS_FLOW=axis_csynth`` (C synthesis only, top ``<top>_axis``, project
folder ``<top>_axis_prj``), the Verilog read from ``<top>_axis_prj/solution1/syn/verilog/*.v``, a small SystemVerilog
adapter (``templates/hls/vitis_axis_wrapper.sv.j2``) that gives Vitis's ports (``s_axis_TDATA``/``TVALID``/``TREADY``,
``m_axis_*``, ``ap_clk``, ``ap_rst_n``) the names of qfx's own RTL, and then the same cocotb testbench and the same
vectors (``make_inputs`` with the same seed) as ``qfx cosim`` on qfx's RTL, compared with ``qfx.ir.run``. A graph with
several inputs or outputs has one port each, ``s<k>_axis``/``m<k>_axis`` (``qfx.backends.hls.axis_ports``), each
driven and stalled on its own as for qfx's multi-IO RTL.

Assumptions about Vitis's output (UG1399): an ``hls::stream`` argument with ``INTERFACE axis`` becomes the ports
``<arg>_TDATA``, ``<arg>_TVALID``, ``<arg>_TREADY`` (no TLAST/TKEEP without ``hls::axis`` side channels); TDATA is the
element type rounded up to whole bytes; designs with AXI interfaces get the active-low reset ``ap_rst_n``;
``ap_ctrl_none`` removes ``ap_start``/``ap_done``/``ap_idle``/``ap_ready``. The adapter checks the port list it finds
rather than trusting these: an active-high ``ap_rst`` is inverted, ``ap_start``/``ap_continue``/``ap_ce`` are held
high, other outputs are left open; an input it cannot drive, or a TDATA width other than the packed word's, is an
error. ROM initialisation files (``*.dat``, read by ``$readmemh`` relative to the simulation folder) are copied next
to the simulation.

Synthesis is skipped when ``<top>_axis_prj/.qfx_csynth_stamp`` records the same firmware and Tcl contents.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfx.errors import BadInputError, MissingToolError, RunError, UnsupportedError
from qfx.ir.graph import Graph

__all__ = ["find_vitis_hls", "HlsRtlProject", "load_hls_project", "synthesize", "VitisTop", "read_vitis_top",
           "parse_ports", "render_wrapper", "dut_config", "run_hls_rtl_cosim", "FLOW_ENV", "STAMP_NAME"]

FLOW_ENV = {"QFX_HLS_FLOW": "axis_csynth"}
STAMP_NAME = ".qfx_csynth_stamp"
_STAMP_FORMAT = "qfx-hls-rtl-1"
_TIE_HIGH = ("ap_start", "ap_continue", "ap_ce")  # block control / clock enable, if Vitis added them
_CTRL_OUT = ("ap_done", "ap_idle", "ap_ready")


def find_vitis_hls() -> Path:
    """The ``vitis_hls`` executable on PATH; MissingToolError saying how to get it otherwise."""
    exe = shutil.which("vitis_hls")
    if exe is None:
        raise MissingToolError("--hls-rtl needs AMD Vitis HLS to synthesize the HLS project (vitis_hls is not on "
                               "PATH): install Vitis and source <install>/settings64.sh, or co-simulate qfx's own "
                               "RTL instead ('qfx export --target rtl', then 'qfx cosim')")
    return Path(exe)


@dataclass(frozen=True)
class HlsRtlProject:
    """An HLS project folder with its top names, graph and the AXI-Stream ports (``qfx.backends.hls.AxisPort``)."""

    path: Path
    top: str
    axis_top: str
    graph: Graph
    in_ports: tuple[Any, ...]
    out_ports: tuple[Any, ...]

    @property
    def prj_dir(self) -> Path:
        return self.path / f"{self.axis_top}_prj"

    @property
    def verilog_dir(self) -> Path:
        return self.prj_dir / "solution1" / "syn" / "verilog"


def load_hls_project(project_dir: str | os.PathLike[str]) -> HlsRtlProject:
    """Check that ``project_dir`` is an HLS project (``qfx export --target hls``) with an AXI-Stream top."""
    from qfx.backends.hls import axis_ports
    from qfx.sim.csim import project_top

    p = Path(project_dir).expanduser().absolute()
    if not p.is_dir():
        raise BadInputError(f"HLS project folder {p} does not exist")
    if (p / "cosim.json").is_file() and not (p / "build_prj.tcl").is_file():
        raise BadInputError(f"{p} is not a qfx HLS project but an RTL project (cosim.json): co-simulate it without "
                            f"--hls-rtl")
    if not (p / "build_prj.tcl").is_file() or not (p / "model.json").is_file():
        raise BadInputError(f"{p} is not a qfx HLS project (no build_prj.tcl and model.json; export one with "
                            f"'qfx export --target hls')")
    top, _, _ = project_top(p)
    graph = Graph.load(p / "model.json")
    axis_top = f"{top}_axis"
    if not (p / "firmware" / f"{axis_top}.cpp").is_file():
        try:
            axis_ports(graph)
        except UnsupportedError as exc:
            raise UnsupportedError(f"{p} has no AXI-Stream top: {exc}") from None
        raise BadInputError(f"{p} has no AXI-Stream top firmware/{axis_top}.cpp; re-export it with this qfx version")
    if f"{axis_top}_prj" not in (p / "build_prj.tcl").read_text():
        raise BadInputError(f"{p}/build_prj.tcl has no axis_csynth flow; re-export the project with this qfx version")
    return HlsRtlProject(p, top, axis_top, graph, *axis_ports(graph))


def _stamp(proj: HlsRtlProject, vitis: Path) -> str:
    h = hashlib.sha256(f"{_STAMP_FORMAT}\0{vitis.resolve()}\0".encode())
    files = sorted((proj.path / "firmware").glob("*")) + [proj.path / "build_prj.tcl"]
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _first_error(log: Path) -> str:
    if not log.is_file():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    errs = [ln.strip() for ln in lines if ln.lstrip().startswith("ERROR")]
    pick = errs[0] if errs else next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return pick[:300]


def synthesize(proj: HlsRtlProject, vitis: Path | None = None, timeout: float | None = None,
               force: bool = False) -> tuple[bool, float, Path]:
    """Run Vitis C synthesis of the AXI-Stream top unless a stamp says it is current: (cached, seconds, log path)."""
    vitis = vitis or find_vitis_hls()
    stamp = _stamp(proj, vitis)
    stamp_file = proj.prj_dir / STAMP_NAME
    top_v = proj.verilog_dir / f"{proj.axis_top}.v"
    log = proj.path / "qfx_hls_rtl_csynth.log"
    if not force and top_v.is_file() and stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        return True, 0.0, log
    stamp_file.unlink(missing_ok=True)  # a failed or interrupted run must not leave older RTL looking current
    t0 = time.perf_counter()
    env = {**os.environ, **FLOW_ENV}
    try:
        with open(log, "w") as out:
            res = subprocess.run([str(vitis), "-f", "build_prj.tcl"], cwd=proj.path, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"vitis_hls C synthesis of {proj.axis_top} timed out after {timeout:g} s (log: {log})") from None
    except OSError as exc:
        raise MissingToolError(f"cannot run {vitis}: {exc.strerror or exc}") from None
    if res.returncode != 0:
        raise RunError(f"vitis_hls C synthesis of {proj.axis_top} failed (exit status {res.returncode}): "
                       f"{_first_error(log) or 'no output'} (log: {log})")
    if not top_v.is_file():
        raise RunError(f"vitis_hls finished but wrote no {top_v.relative_to(proj.path)}: "
                       f"{_first_error(log) or 'no output'} (log: {log})")
    stamp_file.write_text(stamp + "\n")
    return False, time.perf_counter() - t0, log


# ------------------------------------------------------------------------------------------------ Vitis's Verilog
_PORT_RE = re.compile(r"^\s*(input|output|inout)\b\s*(?:wire\b|reg\b|logic\b)?\s*(?:signed\b)?\s*"
                      r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\])?\s*([A-Za-z_][A-Za-z0-9_$]*)\s*[;,)]?", re.M)


def parse_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """Ports of ``module`` in Verilog ``text`` (ANSI or non-ANSI declarations): name -> (direction, width)."""
    m = re.search(rf"^\s*module\s+{re.escape(module)}\b", text, re.M)
    if m is None:
        raise RunError(f"module {module} not found in Vitis's Verilog")
    end = text.find("endmodule", m.end())
    body = text[m.end(): end if end >= 0 else len(text)]
    body = re.sub(r"//[^\n]*|/\*.*?\*/", "", body, flags=re.S)
    ports: dict[str, tuple[str, int]] = {}
    for d, msb, lsb, name in _PORT_RE.findall(body):
        ports[name] = (d, abs(int(msb) - int(lsb)) + 1 if msb else 1)
    return ports


@dataclass(frozen=True)
class VitisTop:
    """What the adapter needs from Vitis's top module."""

    name: str
    sources: tuple[Path, ...]
    data_files: tuple[Path, ...]
    reset: str
    tie_high: tuple[str, ...]
    open_outputs: tuple[str, ...]
    latency: int | None
    interval: int | None


def _report_numbers(report: Path) -> tuple[int | None, int | None]:
    """(worst-case latency, max interval) from the csynth XML report, None where absent or not a number."""
    if not report.is_file():
        return None, None
    try:
        root = ET.parse(report).getroot()
    except ET.ParseError:
        return None, None

    def num(tag: str) -> int | None:
        el = root.find(f".//SummaryOfOverallLatency/{tag}")
        txt = (el.text or "").strip() if el is not None else ""
        return int(txt) if txt.isdigit() else None

    return num("Worst-caseLatency"), num("Interval-max")


def read_vitis_top(proj: HlsRtlProject) -> VitisTop:
    """Find and check the synthesized top: AXI-Stream ports with the packed word widths, clock, reset."""
    vdir = proj.verilog_dir
    top_v = vdir / f"{proj.axis_top}.v"
    ports = parse_ports(top_v.read_text(errors="replace"), proj.axis_top)
    want: dict[str, tuple[str, int]] = {}
    for q, (d_in, d_out) in [(q, ("input", "output")) for q in proj.in_ports] + \
            [(q, ("output", "input")) for q in proj.out_ports]:
        want |= {f"{q.prefix}_TDATA": (d_in, q.tw), f"{q.prefix}_TVALID": (d_in, 1),
                 f"{q.prefix}_TREADY": (d_out, 1)}
    want["ap_clk"] = ("input", 1)
    for name, (d, w) in want.items():
        if name not in ports:
            raise RunError(f"{top_v.name}: Vitis top has no port {name} (found: {', '.join(sorted(ports))})")
        if ports[name] != (d, w):
            raise RunError(f"{top_v.name}: port {name} is {ports[name][0]} [{ports[name][1]}], expected {d} [{w}] "
                           f"(firmware/{proj.axis_top}.cpp packs {w}-bit words)")
    reset = next((r for r in ("ap_rst_n", "ap_rst") if r in ports), None)
    if reset is None:
        raise RunError(f"{top_v.name}: Vitis top has no reset port (ap_rst_n or ap_rst)")
    tie = tuple(p for p in _TIE_HIGH if p in ports)
    opened = tuple(p for p in ports if ports[p][0] == "output" and p not in want)
    known = set(want) | {reset} | set(tie)
    extra = sorted(p for p, (d, _) in ports.items() if d != "output" and p not in known)
    if extra:
        raise RunError(f"{top_v.name}: Vitis top has input ports the testbench cannot drive: {', '.join(extra)}")
    sources = tuple(sorted([*vdir.glob("*.v"), *vdir.glob("*.sv")]))
    lat, ii = _report_numbers(proj.prj_dir / "solution1" / "syn" / "report" / f"{proj.axis_top}_csynth.xml")
    return VitisTop(proj.axis_top, sources, tuple(sorted(vdir.glob("*.dat"))), reset, tie, opened, lat, ii)


def render_wrapper(vt: VitisTop, proj: HlsRtlProject, name: str) -> str:
    """SystemVerilog adapter module ``name`` around Vitis's top, with qfx's RTL port names."""
    from qfx import __version__
    from qfx.backends.templating import template_env

    env = template_env("hls")
    return env.get_template("vitis_axis_wrapper.sv.j2").render(
        header=f"Generated by qfx {__version__} for 'qfx cosim --hls-rtl'; do not edit.", name=name,
        dut=vt.name, reset=vt.reset, tie_high=list(vt.tie_high), open_outputs=list(vt.open_outputs),
        in_ports=[vars(q) for q in proj.in_ports], out_ports=[vars(q) for q in proj.out_ports])


def dut_config(proj: HlsRtlProject, name: str, latency: int, ii: int, xs: dict[str, np.ndarray],
               ys: dict[str, np.ndarray]) -> dict[str, Any]:
    """The testbench's entry for the adapter ``name`` (schema of ``qfx.sim.cosim``: one driver per input port, one
    checker per output port): ``xs``/``ys`` are the input / expected output codes by tensor name, N vectors each."""
    from qfx.sim.cosim import pack_port

    def side(ports: tuple[Any, ...], codes: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"prefix": q.prefix, "width": q.tw, "beats": 1,
                 "words": [format(v, "x") for v in pack_port(np.asarray(codes[q.tensor]).reshape(
                     len(codes[q.tensor]), -1), q.facts())]} for q in ports]

    return {"name": name, "latency": latency, "ii": ii, "in_ports": side(proj.in_ports, xs),
            "out_ports": side(proj.out_ports, ys)}


def _timing(proj: HlsRtlProject, vt: VitisTop) -> tuple[int, int, str]:
    """(latency, initiation interval, where they came from) for the testbench's hang timeout and final idle cycles:
    the csynth report's worst case, else a generous estimate (io_stream moves one element per cycle and buffers
    whole tensors, so the sum and the largest of the tensor sizes bound latency and interval)."""
    sizes = [t.size for t in proj.graph.tensors.values()]
    lat, ii = vt.latency, vt.interval
    if lat is not None and ii is not None:
        return lat, max(1, ii), "csynth report"
    return (lat if lat is not None else 2 * sum(sizes) + 64, max(1, ii if ii is not None else 2 * max(sizes) + 8),
            "estimate (no csynth report)")


def run_hls_rtl_cosim(project_dir: str | os.PathLike[str], n_vectors: int = 1000, seed: int = 0,
                      backpressure: bool = True, work_dir: str | os.PathLike[str] | None = None,
                      synth_timeout: float | None = None, resynth: bool = False):
    """Synthesize (or reuse) the project's AXI-Stream top with Vitis HLS and co-simulate it against ``qfx.ir.run``.

    Writes ``cosim_report.json`` into the project and returns the ``qfx.sim.cosim.CosimReport``.
    """
    from qfx.ir.interpret import run
    from qfx.sim.cosim import CosimReport, compare_outputs, run_testbench, unpack_port
    from qfx.sim.csim import make_inputs
    from qfx.sim.toolchain import find_verilator

    if n_vectors < 1:
        raise BadInputError(f"number of vectors must be >= 1, got {n_vectors}")
    vitis = find_vitis_hls()
    proj = load_hls_project(project_dir)
    find_verilator()
    try:
        import cocotb  # noqa: F401
    except ImportError as exc:
        raise MissingToolError(f"{exc.name} is not installed (install it: pip install 'qfx[sim]')") from None
    synth_cached, synth_s, log = synthesize(proj, vitis, synth_timeout, force=resynth)
    vt = read_vitis_top(proj)
    own_work = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="qfx-hls-rtl-"))
    work.mkdir(parents=True, exist_ok=True)
    for f in vt.data_files:  # $readmemh("./x.dat") is relative to the simulation's working folder
        shutil.copy2(f, work / f.name)
    wrap_name = f"qfx_vitis_wrap_{proj.top}"[:60]
    wrap = work / f"{wrap_name}.sv"
    wrap.write_text(render_wrapper(vt, proj, wrap_name))
    g = proj.graph
    xs = make_inputs(g, n_vectors, seed)
    yr = run(g, xs if len(g.inputs) > 1 else xs[g.inputs[0]])
    ys = {o: np.asarray(yr[o] if isinstance(yr, dict) else yr).reshape(n_vectors, -1) for o in g.outputs}
    lat, ii, timing_source = _timing(proj, vt)
    results = work / "results.json"
    conf = work / "cosim_config.json"
    conf.write_text(json.dumps({"seed": seed, "backpressure": backpressure, "results": str(results),
                                "duts": [dut_config(proj, vt.name, lat, ii, xs, ys)]}))
    t0 = time.perf_counter()
    _, cached, build_s = run_testbench([*vt.sources, wrap], wrap_name, "qfx_cosim_tb",
                                       {"QFX_COSIM_CONFIG": str(conf)}, work)
    sim_s = time.perf_counter() - t0 - build_s
    if not results.is_file():
        raise RunError(f"the testbench wrote no results (log: {work / 'sim.log'})")
    r = json.loads(results.read_text())["duts"][0]
    # every output port side by side, one row per vector (output_index counts across the outputs in order)
    parts = [unpack_port(rp["got"], q.facts())[0] for rp, q in zip(r["out_ports"], proj.out_ports)]
    k = min(len(c) for c in parts)
    got = np.concatenate([c[:k] for c in parts], axis=1)
    y = np.concatenate([ys[q.tensor] for q in proj.out_ports], axis=1)
    m, mism, first = compare_outputs(got, y)
    rep = CosimReport(
        project=str(proj.path), top=vt.name, vectors=n_vectors, outputs_compared=int(m * y.shape[1]),
        mismatches=mism, received=len(got), first_mismatch=first,
        backpressure=backpressure, seed=seed, latency=vt.latency if vt.latency is not None else -1, ii=ii,
        tlast_errors=int(r.get("tlast_errors", 0)),
        build_s=round(build_s, 3), build_cached=cached, sim_s=round(sim_s, 3),
        vectors_per_s=round(n_vectors / max(r["wall_s"], 1e-9), 1), timed_out=bool(r["timed_out"]),
        extra={"flow": "vitis_hls csynth of the AXI-Stream top", "vitis_hls": str(vitis),
               "verilog": str(proj.verilog_dir), "synth_cached": synth_cached, "synth_s": round(synth_s, 3),
               "synth_log": str(log), "reset_port": vt.reset, "tied_high": list(vt.tie_high),
               "csynth_interval": vt.interval, "timing_source": timing_source,
               "tb_mismatched_vectors": r["mismatched_vectors"], "work_dir": str(work)})
    (proj.path / "cosim_report.json").write_text(json.dumps(rep.to_dict(), indent=1))
    if own_work and rep.ok:
        shutil.rmtree(work, ignore_errors=True)
    return rep
