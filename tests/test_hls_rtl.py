"""``qfx cosim --hls-rtl``: the Vitis HLS RTL path, with a stand-in ``vitis_hls`` (Vitis is not installed here).

The fake ``vitis_hls`` is a script put on PATH by each test. It checks that it was asked for the axis_csynth flow,
that the C++ top it would synthesize has the AXI-Stream / ap_ctrl_none pragmas, and then writes what Vitis writes:
``<top>_axis_prj/solution1/syn/verilog/<top>_axis.v`` with Vitis's port names (``s_axis_TDATA`` ...), implemented
by qfx's own RTL for the same graph, a ``$readmemh`` ROM file and a csynth XML report. So these tests prove the
plumbing (Tcl flow switch, Verilog discovery, port adapter, ROM files, vectors, comparison, exit codes), not Vitis.
The C++ AXI-Stream top itself is checked separately, by g++ C simulation against the golden interpreter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qfx.backends.hls import AXIS_MAX_BITS, axis_layout, write_project
from qfx.cli import main
from qfx.errors import UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.ir.interpret import random_inputs, run
from qfx.ir.random_graph import random_graph
from qfx.sim.cosim import pack_words
from qfx.sim.hls_rtl import load_hls_project, parse_ports, synthesize

FAKE_VITIS = r'''#!{python}
"""Stand-in for vitis_hls (tests only): writes Vitis-style Verilog built from qfx's own RTL."""
import os, re, shutil, sys
from pathlib import Path

mode = os.environ.get("FAKE_VITIS_MODE", "ok")
with open(os.environ["FAKE_VITIS_CALLS"], "a") as f:
    f.write(mode + "\n")
if sys.argv[1:] != ["-f", "build_prj.tcl"] or os.environ.get("QFX_HLS_FLOW") != "axis_csynth":
    print("ERROR: fake vitis_hls called as", sys.argv[1:], os.environ.get("QFX_HLS_FLOW"))
    sys.exit(2)
print("INFO: [HLS 200-10] Running fake vitis_hls")
if mode == "fail":
    print("ERROR: [HLS 207-812] fake synthesis failure")
    sys.exit(1)
if mode == "nothing":
    sys.exit(0)
tcl = Path("build_prj.tcl").read_text()
m = re.search(r"if \{\$qfx_axis\} \{\s*open_project -reset (\w+)_prj\s+set_top (\w+)", tcl)
top = m.group(2)
assert m.group(1) == top
shutil.rmtree(top + "_prj", ignore_errors=True)  # open_project -reset
src = Path("firmware", top + ".cpp").read_text()
for need in ("HLS INTERFACE axis port=s_axis", "HLS INTERFACE axis port=m_axis",
             "HLS INTERFACE ap_ctrl_none port=return"):
    if need not in src:
        print("ERROR: [HLS 214-100] fake: the top lacks", need)
        sys.exit(1)

from qfx.backends.rtl import build_project
from qfx.ir.graph import Graph

core = build_project(Graph.load("model.json"), top_name=top + "_core")
info = core.info
vdir = Path(top + "_prj", "solution1", "syn", "verilog")
rdir = Path(top + "_prj", "solution1", "syn", "report")
vdir.mkdir(parents=True)
rdir.mkdir(parents=True)
for name, text in core.files.items():
    (vdir / (name.rsplit(".", 1)[0] + ".v")).write_text("`timescale 1 ns / 1 ps\n" + text)
itw, otw = info["in_tw"], info["out_tw"]
# output = (core & rom[0]) ^ rom[1]: the ROM file must reach the simulation, and "flip" changes one output bit
# without changing the Verilog (so the ok and flipped designs share one Verilator build)
rom = [(1 << otw) - 1, 1 if mode == "flip" else 0]
(vdir / (top + "_mask_rom.dat")).write_text("".join(format(v, "x") + "\n" for v in rom))
hs = mode == "hs"  # ap_ctrl_hs-style ports and an active-high reset
rst = "ap_rst" if hs else "ap_rst_n"
ctrl = ["ap_start", "ap_done", "ap_idle", "ap_ready"] if hs else []
ports = ["ap_clk", rst] + ctrl + ["s_axis_TDATA", "s_axis_TVALID", "s_axis_TREADY", "m_axis_TDATA",
                                  "m_axis_TVALID", "m_axis_TREADY"]
go = "ap_start" if hs else "1'b1"
decl = ["input   ap_clk;", "input   %s;" % rst]
if hs:
    decl += ["input   ap_start;", "output   ap_done;", "output   ap_idle;", "output   ap_ready;"]
decl += ["input  [%d:0] s_axis_TDATA;" % (itw - 1), "input   s_axis_TVALID;", "output   s_axis_TREADY;",
         "output  [%d:0] m_axis_TDATA;" % (otw - 1), "output   m_axis_TVALID;", "input   m_axis_TREADY;"]
body = [
    "wire core_s_ready;", "wire core_m_valid;", "wire [%d:0] core_data;" % (otw - 1),
    "reg [%d:0] mask_rom [0:1];" % (otw - 1),
    'initial begin\n    $readmemh("./%s_mask_rom.dat", mask_rom);\nend' % top,
    "%s_core u_core (.ap_clk(ap_clk), .ap_rst_n(%s), .s_axis_tdata(s_axis_TDATA), "
    ".s_axis_tvalid(s_axis_TVALID & %s), .s_axis_tready(core_s_ready), .m_axis_tdata(core_data), "
    ".m_axis_tvalid(core_m_valid), .m_axis_tready(m_axis_TREADY & %s));"
    % (top, "!ap_rst" if hs else "ap_rst_n", go, go),
    "assign s_axis_TREADY = core_s_ready & %s;" % go,
    "assign m_axis_TVALID = core_m_valid & %s;" % go,
    "assign m_axis_TDATA = (core_data & mask_rom[0]) ^ mask_rom[1];",
]
if hs:
    body += ["assign ap_done = 1'b0;", "assign ap_idle = 1'b0;", "assign ap_ready = ap_start;"]
(vdir / (top + ".v")).write_text(
    "`timescale 1 ns / 1 ps\n(* CORE_GENERATION_INFO=\"fake\" *)\n\nmodule %s (\n        %s\n);\n\n"
    "%s\n\n%s\n\nendmodule\n" % (top, ",\n        ".join(ports), "\n".join(decl), "\n".join(body)))
if not hs:  # the hs stand-in writes no report: qfx must estimate latency and interval
    (rdir / (top + "_csynth.xml")).write_text(
        "<profile><PerformanceEstimates><SummaryOfOverallLatency><Best-caseLatency>%d</Best-caseLatency>"
        "<Worst-caseLatency>%d</Worst-caseLatency><Interval-min>1</Interval-min><Interval-max>1</Interval-max>"
        "</SummaryOfOverallLatency></PerformanceEstimates></profile>\n" % (info["latency"], info["latency"]))
print("INFO: [HLS 200-111] Finished fake C synthesis")
'''


def _dense(n_in: int = 6, n_out: int = 4, fx: FxFormat = FxFormat(6, 2), seed: int = 5) -> Graph:
    """Dense n_in -> n_out, the accumulator as output format: any wrong term shows in the output."""
    rng = np.random.default_rng(seed)
    fw, fb = FxFormat(7, 1), FxFormat(8, 3)
    w = rng.integers(fw.min_code, fw.max_code, (n_out, n_in), endpoint=True)
    w[w == 0] = 3
    b = rng.integers(fb.min_code, fb.max_code, (n_out,), endpoint=True)
    acc = lossless_acc_format(w, fw, fx, b, fb)
    t = {"x": TensorSpec("x", (n_in,), fx), "y": TensorSpec("y", (n_out,), acc)}
    node = Node("fc", Op.DENSE, ("x",), "y", {"weight": Constant(w, fw), "bias": Constant(b, fb)}, {}, acc)
    return Graph("vdense", ("x",), ("y",), t, (node,)).validate()


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One build cache for this module: the ok and the bit-flipped stand-ins share one Verilator build."""
    return tmp_path_factory.mktemp("qfx_cache")


@pytest.fixture
def fake_vitis(tmp_path, monkeypatch, shared_cache):
    """Put the stand-in vitis_hls first on PATH; returns a function giving the modes it was called with."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "vitis_hls"
    exe.write_text(FAKE_VITIS.replace("{python}", sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    calls = tmp_path / "fake_calls.txt"
    calls.write_text("")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_VITIS_CALLS", str(calls))
    monkeypatch.setenv("QFX_CACHE_DIR", str(shared_cache))
    return lambda: calls.read_text().split()


def _hls_project(tmp_path: Path, graph: Graph, io: str = "parallel", name: str = "hls") -> Path:
    d = tmp_path / name
    d.mkdir()
    write_project(graph, d, io=io)
    return d


@pytest.mark.verilator
def test_fake_vitis_rtl_is_bit_exact_and_synthesis_is_reused(tmp_path, capsys, monkeypatch, fake_vitis):
    d = _hls_project(tmp_path, _dense())
    assert main(["cosim", str(d), "--hls-rtl", "-n", "150", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 mismatches" in out and "bit-exact" in out and "Vitis HLS RTL from" in out
    rep = json.loads((d / "cosim_report.json").read_text())
    assert rep["ok"] and rep["vectors"] == 150 and rep["received"] == 150 and rep["outputs_compared"] == 600
    assert rep["top"] == "vdense_axis" and rep["extra"]["reset_port"] == "ap_rst_n"
    assert rep["extra"]["timing_source"] == "csynth report" and rep["latency"] >= 1
    assert not rep["extra"]["synth_cached"] and fake_vitis() == ["ok"]
    # --resynth runs Vitis again; the same Verilog reuses the Verilator build
    assert main(["cosim", str(d), "--hls-rtl", "-n", "40", "--no-backpressure", "--json", "--resynth"]) == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["ok"] and not rep2["extra"]["synth_cached"] and rep2["build_cached"] and fake_vitis() == ["ok"] * 2
    # unchanged firmware: no synthesis; a changed firmware file: synthesis again (checked without simulating)
    proj = load_hls_project(d)
    assert synthesize(proj)[0] is True and fake_vitis() == ["ok"] * 2
    axis_cpp = d / "firmware" / "vdense_axis.cpp"
    axis_cpp.write_text(axis_cpp.read_text() + "// edited\n")
    assert synthesize(proj)[0] is False and fake_vitis() == ["ok"] * 3
    assert synthesize(proj)[0] is True


@pytest.mark.verilator
def test_one_wrong_bit_in_vitis_rtl_is_caught(tmp_path, capsys, monkeypatch, fake_vitis):
    monkeypatch.setenv("FAKE_VITIS_MODE", "flip")  # output bit 0 inverted
    d = _hls_project(tmp_path, _dense())
    assert main(["cosim", str(d), "--hls-rtl", "-n", "120", "--seed", "4"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "first mismatch: vector" in out
    rep = json.loads((d / "cosim_report.json").read_text())
    assert rep["received"] == 120 and not rep["timed_out"]  # everything arrived: only the bit is wrong
    assert rep["mismatches"] == 120 and rep["first_mismatch"]["output_index"] == 0
    assert abs(rep["first_mismatch"]["got"] - rep["first_mismatch"]["expected"]) == 1


@pytest.mark.verilator
def test_ap_ctrl_hs_ports_and_active_high_reset(tmp_path, capsys, monkeypatch, fake_vitis):
    """Stand-in with ap_start/ap_done/ap_idle/ap_ready and ap_rst (what Vitis writes without ap_ctrl_none or AXI):
    the adapter holds ap_start high and inverts the reset, or nothing would come out."""
    monkeypatch.setenv("FAKE_VITIS_MODE", "hs")
    d = _hls_project(tmp_path, _dense(), io="stream")
    assert main(["cosim", str(d), "--hls-rtl", "-n", "100", "--seed", "6"]) == 0
    rep = json.loads((d / "cosim_report.json").read_text())
    assert rep["ok"] and rep["received"] == 100
    assert rep["extra"]["reset_port"] == "ap_rst" and rep["extra"]["tied_high"] == ["ap_start"]
    assert rep["extra"]["timing_source"].startswith("estimate") and rep["latency"] == -1


def test_without_vitis_exit_3_with_hint(tmp_path, capsys, monkeypatch):
    d = _hls_project(tmp_path, _dense())
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["cosim", str(d), "--hls-rtl"]) == 3
    err = capsys.readouterr().err
    assert "Vitis HLS" in err and "vitis_hls is not on PATH" in err and "settings64.sh" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (d / "cosim_report.json").exists()


def test_not_an_hls_project_exit_2(tmp_path, capsys, fake_vitis):
    assert main(["cosim", str(tmp_path / "missing"), "--hls-rtl"]) == 2
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    from qfx.backends.rtl import write_project as write_rtl

    write_rtl(_dense(), rtl)
    assert main(["cosim", str(rtl), "--hls-rtl"]) == 2
    err = capsys.readouterr().err
    assert "not a qfx HLS project" in err and "Traceback" not in err
    assert main(["cosim", str(rtl), "--resynth"]) == 2  # --resynth without --hls-rtl
    assert fake_vitis() == []  # nothing was synthesized


def test_graph_without_axis_top_exit_2(tmp_path, capsys, fake_vitis):
    """A 4104-bit input word: the HLS project has no AXI-Stream top; the error says why."""
    d = _hls_project(tmp_path, _dense(n_in=AXIS_MAX_BITS // 8 + 1, fx=FxFormat(8, 2)))
    assert not (d / "firmware" / "vdense_axis.cpp").exists()
    assert "axis_csynth" not in (d / "build_prj.tcl").read_text()
    assert main(["cosim", str(d), "--hls-rtl"]) == 2
    err = capsys.readouterr().err
    assert "has no AXI-Stream top" in err and "at most 4096 bits" in err and "Traceback" not in err
    assert fake_vitis() == []


def _two_out() -> Graph:
    """One input forked to two outputs of different formats (dense, then relu of it)."""
    g = _dense()
    t = dict(g.tensors) | {"z": TensorSpec("z", (4,), FxFormat(5, 3, signed=False))}
    relu = Node("act", Op.RELU, ("y",), "z", {}, {}, None)
    return Graph("two_out", ("x",), ("y", "z"), t, (*g.nodes, relu)).validate()


def test_several_outputs_one_vitis_port_each(tmp_path):
    """Two outputs: ports s0_axis, m0_axis, m1_axis in the C++ top, the adapter's checks, the adapter itself and
    the testbench entry (one driver / checker per port, words that unpack to the codes), all without Vitis."""
    from qfx.errors import RunError
    from qfx.sim.cosim import unpack_port
    from qfx.sim.hls_rtl import dut_config, read_vitis_top, render_wrapper

    g = _two_out()
    d = _hls_project(tmp_path, g)
    src = (d / "firmware" / "two_out_axis.cpp").read_text()
    for q in ("s0_axis", "m0_axis", "m1_axis"):
        assert f"HLS INTERFACE axis port={q})" in src
    assert "two_out(xs0, ys0, ys1);" in src and "s_axis" not in src.replace("s0_axis", "")
    proj = load_hls_project(d)
    assert [(q.prefix, q.tensor, q.tw) for q in proj.in_ports + proj.out_ports] == [
        ("s0_axis", "x", 40), ("m0_axis", "y", proj.out_ports[0].tw), ("m1_axis", "z", 24)]
    decl = ["input ap_clk;", "input ap_rst_n;", "input [39:0] s0_axis_TDATA;", "input s0_axis_TVALID;",
            "output s0_axis_TREADY;"]
    for q in proj.out_ports:
        decl += [f"output [{q.tw - 1}:0] {q.prefix}_TDATA;", f"output {q.prefix}_TVALID;", f"input {q.prefix}_TREADY;"]
    proj.verilog_dir.mkdir(parents=True)
    top_v = proj.verilog_dir / "two_out_axis.v"

    def write(lines: list[str]) -> None:
        names = [re.findall(r"(\w+);", x)[0] for x in lines]
        top_v.write_text("module two_out_axis (%s);\n%s\nendmodule\n" % (", ".join(names), "\n".join(lines)))

    write([x for x in decl if "m1_axis_TREADY" not in x])
    with pytest.raises(RunError, match="no port m1_axis_TREADY"):
        read_vitis_top(proj)
    write(decl)
    vt = read_vitis_top(proj)
    wrap = render_wrapper(vt, proj, "wrap")
    for q in ("s0_axis", "m0_axis", "m1_axis"):
        assert f".{q}_TDATA({q}_tdata)" in wrap and f"{q}_tready" in wrap
    assert "input  logic m1_axis_tready\n);" in wrap and ".m1_axis_TREADY(m1_axis_tready)\n    );" in wrap
    x = random_inputs(g, 7, seed=1)
    y = run(g, x)
    conf = dut_config(proj, "wrap", 3, 1, {"x": x}, y)
    assert [q["prefix"] for q in conf["in_ports"]] == ["s0_axis"]
    assert [q["prefix"] for q in conf["out_ports"]] == ["m0_axis", "m1_axis"]
    for q, c in zip(proj.out_ports, conf["out_ports"]):
        assert c["width"] == q.tw and len(c["words"]) == 7
        np.testing.assert_array_equal(unpack_port(c["words"], q.facts())[0], np.asarray(y[q.tensor]).reshape(7, -1))


@pytest.mark.parametrize("mode, text", [("fail", "ERROR: [HLS 207-812] fake synthesis failure"),
                                        ("nothing", "wrote no vdense_axis_prj")])
def test_vitis_failure_is_reported_exit_3(tmp_path, capsys, monkeypatch, fake_vitis, mode, text):
    monkeypatch.setenv("FAKE_VITIS_MODE", mode)
    d = _hls_project(tmp_path, _dense())
    assert main(["cosim", str(d), "--hls-rtl", "-n", "10"]) == 3
    err = capsys.readouterr().err
    assert text in err and "qfx_hls_rtl_csynth.log" in err and len(err.strip().splitlines()) == 1
    assert not (d / "cosim_report.json").exists() and fake_vitis() == [mode]


_TCL_STUBS = """
foreach cmd {open_project set_top add_files open_solution set_part create_clock csim_design csynth_design
             cosim_design export_design} {
    proc $cmd {args} [format {puts "%s $args"} $cmd]
}
source build_prj.tcl
"""


@pytest.mark.skipif(shutil.which("tclsh") is None, reason="tclsh not found")
@pytest.mark.parametrize("flow", [None, "axis_csynth", "other"])
def test_build_tcl_flow_switch(tmp_path, flow):
    """build_prj.tcl under a real Tcl interpreter, Vitis commands stubbed: the env switch picks the axis top and
    C synthesis only; without it the script does the full flow on the plain top."""
    d = _hls_project(tmp_path, _dense())
    env = {k: v for k, v in os.environ.items() if k != "QFX_HLS_FLOW"} | ({"QFX_HLS_FLOW": flow} if flow else {})
    res = subprocess.run(["tclsh"], input=_TCL_STUBS, cwd=d, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    cmds = [c.strip() for c in res.stdout.splitlines()]
    steps = [c for c in cmds if c.endswith("_design") or c.startswith("export_design")]
    if flow == "axis_csynth":
        assert cmds[:2] == ["open_project -reset vdense_axis_prj", "set_top vdense_axis"]
        assert steps == ["csynth_design"]
    else:
        assert cmds[:2] == ["open_project -reset vdense_prj", "set_top vdense"]
        assert steps == ["csim_design", "csynth_design", "cosim_design", "export_design -format ip_catalog"]
    assert "add_files firmware/vdense_axis.cpp -cflags {-std=c++14 -Ifirmware}" in cmds


def test_axis_layout_limits(tmp_path):
    lay = axis_layout(_dense())
    assert (lay.in_count, lay.in_ew, lay.in_tw) == (6, 6, 40) and lay.out_tw % 8 == 0
    wide = _dense(n_in=AXIS_MAX_BITS // 8 + 1, fx=FxFormat(8, 2))  # 4104 input bits
    with pytest.raises(UnsupportedError, match="at most 4096 bits"):
        axis_layout(wide)
    d = _hls_project(tmp_path, wide)
    assert not (d / "firmware" / "vdense_axis.cpp").exists()


_PORTS_OK = ["input ap_clk;", "input ap_rst_n;", "input [39:0] s_axis_TDATA;", "input s_axis_TVALID;",
             "output s_axis_TREADY;", "output [63:0] m_axis_TDATA;", "output m_axis_TVALID;", "input m_axis_TREADY;"]


@pytest.mark.parametrize("change, error", [
    ({}, None),
    ({"input ap_ce;": None, "output ap_idle;": None, "input ap_rst_n;": "input ap_rst;"}, None),
    ({"input [39:0] s_axis_TDATA;": "input [47:0] s_axis_TDATA;"}, "expected input [40]"),
    ({"input s_axis_TLAST;": None}, "cannot drive: s_axis_TLAST"),
    ({"input ap_rst_n;": "wire ap_rst_n;"}, "no reset port"),
    ({"output m_axis_TVALID;": "wire m_axis_TVALID;"}, "no port m_axis_TVALID"),
])
def test_adapter_checks_vitis_ports(tmp_path, change, error):
    """read_vitis_top on hand-written Vitis-style tops: extra control ports are tied or left open, anything the
    testbench cannot honour is a one-line error naming the port."""
    from qfx.errors import RunError
    from qfx.sim.hls_rtl import read_vitis_top

    d = _hls_project(tmp_path, _dense())
    proj = load_hls_project(d)
    decl = [change.get(p, p) for p in _PORTS_OK] + [p for p, q in change.items() if q is None]
    names = [re.findall(r"(\w+);", x)[0] for x in decl]
    proj.verilog_dir.mkdir(parents=True)
    (proj.verilog_dir / "vdense_axis.v").write_text(
        "module vdense_axis (%s);\n%s\nendmodule\n" % (", ".join(names), "\n".join(decl)))
    if error:
        with pytest.raises(RunError, match=re.escape(error)):
            read_vitis_top(proj)
        return
    vt = read_vitis_top(proj)
    assert vt.reset == ("ap_rst" if "input ap_rst;" in decl else "ap_rst_n")
    assert vt.tie_high == (("ap_ce",) if "input ap_ce;" in decl else ())
    assert vt.open_outputs == (("ap_idle",) if "output ap_idle;" in decl else ())
    assert vt.latency is None and vt.interval is None  # no csynth report here


def test_parse_ports_both_styles():
    non_ansi = textwrap.dedent("""\
        `timescale 1 ns / 1 ps
        module sub (a, b); input a; output b; endmodule
        (* CORE_GENERATION_INFO="x" *)
        module top (
                ap_clk,
                ap_rst_n,
                s_axis_TDATA,
                m_axis_TVALID
        );
        parameter    ap_ST_fsm_state1 = 1'd1;
        input   ap_clk;
        input   ap_rst_n;  // reset
        input  [47:0] s_axis_TDATA;
        output   m_axis_TVALID;
        reg [3:0] not_a_port;
        endmodule
        """)
    assert parse_ports(non_ansi, "top") == {"ap_clk": ("input", 1), "ap_rst_n": ("input", 1),
                                            "s_axis_TDATA": ("input", 48), "m_axis_TVALID": ("output", 1)}
    ansi = "module w (\n  input wire ap_clk,\n  output reg [15:0] m_axis_TDATA,\n  input logic [0:0] x\n);\nendmodule\n"
    assert parse_ports(ansi, "w") == {"ap_clk": ("input", 1), "m_axis_TDATA": ("output", 16), "x": ("input", 1)}


# ------------------------------------------------------------------------------------------------ C++ axis top
_HARNESS = r"""
#include <cstdio>
#include <iostream>
#include <string>
// Reads one hex word per line, runs the AXI-Stream top once per word, prints the output word in hex.
static unsigned hexval(char c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }
int main() {
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) continue;
        ap_uint<IN_TW> wd = 0;
        const unsigned n = line.size();
        for (unsigned k = 0; k < n && 4 * k < IN_TW; k++)
            wd.range(4 * k + 3 < IN_TW ? 4 * k + 3 : IN_TW - 1, 4 * k) = hexval(line[n - 1 - k]);
        hls::stream<ap_uint<IN_TW> > s;
        hls::stream<ap_uint<OUT_TW> > m;
        s.write(wd);
        AXIS_TOP(s, m);
        const ap_uint<OUT_TW> o = m.read();
        std::string out;
        for (unsigned k = 0; 4 * k < OUT_TW; k++)
            out.insert(out.begin(),
                       "0123456789abcdef"[(unsigned)o.range(4 * k + 3 < OUT_TW ? 4 * k + 3 : OUT_TW - 1, 4 * k).to_uint()]);
        if (!s.empty() || !m.empty()) return 3;
        std::printf("%s\n", out.c_str());
    }
    return 0;
}
"""


def _axis_csim(tmp_path: Path, graph: Graph, io: str, n: int = 300) -> None:
    from qfx.sim.build import compile_cxx

    d = _hls_project(tmp_path, graph, io=io, name=f"csim_{io}")
    top = next((d / "tb").glob("tb_*.cpp")).stem[3:]
    lay = axis_layout(graph)
    drv = d / "axis_driver.cpp"
    # the axis top first: it may define AP_INT_MAX_W, which must precede the first ap_int.h include
    drv.write_text(f'#include "{d}/firmware/{top}_axis.cpp"\n#include "{d}/firmware/{top}.cpp"\n'
                   f"#define IN_TW {lay.in_tw}\n#define OUT_TW {lay.out_tw}\n#define AXIS_TOP {top}_axis\n" + _HARNESS)
    exe = compile_cxx([drv], include_dirs=[d / "firmware"], defines={"NDEBUG": ""}, name=f"axis_{top}")
    x = random_inputs(graph, n, seed=7)
    want = pack_words(np.asarray(run(graph, x)).reshape(n, -1), lay.out_ew)
    res = subprocess.run([str(exe)], input="\n".join(format(w, "x") for w in pack_words(x, lay.in_ew)) + "\n",
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = [int(v, 16) for v in res.stdout.split()]
    assert len(got) == n
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad, f"{len(bad)} wrong words, first vector {bad[0]}: got {got[bad[0]]:x}, expected {want[bad[0]]:x}"


@pytest.mark.gxx
@pytest.mark.parametrize("io", ["parallel", "stream"])
def test_axis_top_csim_packs_like_qfx(tmp_path, monkeypatch, io):
    """The C++ AXI-Stream top (what Vitis would synthesize) unpacks qfx's words and packs its outputs bit-exactly."""
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    _axis_csim(tmp_path, random_graph(3, "cnn") if io == "stream" else random_graph(1, "mlp"), io)


@pytest.mark.gxx
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_axis_top_csim_random_and_wide(tmp_path, monkeypatch, seed):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    g = _dense(n_in=200, fx=FxFormat(8, 2), seed=seed) if seed == 0 else random_graph(10 + seed)  # 1600-bit words
    _axis_csim(tmp_path, g, "parallel" if seed % 2 == 0 else "stream", n=100)
