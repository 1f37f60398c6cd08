"""``qfx cosim --sim icarus``: the same cocotb testbench under Icarus Verilog (4-state, event-driven).

Random dense and conv models with random AXI-Stream stalls are bit-exact; a changed constant and an undriven wire
are caught (the latter as X outputs, which a 2-state simulator cannot show); the testbench drives every input of
the design from time 0 (a checker module reports any X/Z input it sees); a missing Icarus is exit 3 with the
install hint; a design Icarus cannot compile is exit 2 with the log path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qfx.backends.rtl import write_project
from qfx.cli import main
from qfx.errors import MissingToolError, exit_code
from qfx.ir.random_graph import random_graph
from qfx.sim.cosim import compare_outputs, parse_words, run_cosim_many

N_VECTORS = 150


def _project(root: Path, name: str, g, **kw) -> Path:
    d = root / name
    d.mkdir()
    write_project(g, d, top_name=f"t_{name}", **kw)
    return d


def _mutate(path: Path, pattern: str, fn) -> None:
    text = path.read_text()
    m = re.search(pattern, text, re.M)
    assert m, f"no {pattern!r} in {path.name}"
    path.write_text(text[:m.start(1)] + fn(m.group(1)) + text[m.end(1):])


def _add_input_checker(d: Path) -> None:
    """Make ``d`` simulate a wrapper that reports (in the simulation log) any X/Z on the design's inputs at 1 ns,
    before the first clock edge, and at every rising clock edge."""
    info = json.loads((d / "cosim.json").read_text())
    inner, tw_in, tw_out = info["top"], info["in_tw"], info["out_tw"]
    outer = f"{inner}_chk"
    # (^ of any X/Z bit is X; Icarus 11's $isunknown misreads some wide concatenations of nets)
    ins = "{ap_rst_n, s_axis_tvalid, m_axis_tready, s_axis_tdata}"
    (d / "rtl" / f"{outer}.sv").write_text(f"""module {outer} (
    input  logic ap_clk, input logic ap_rst_n,
    input  logic [{tw_in - 1}:0] s_axis_tdata, input logic s_axis_tvalid, output logic s_axis_tready,
    output logic [{tw_out - 1}:0] m_axis_tdata, output logic m_axis_tvalid, input logic m_axis_tready);
    {inner} u (.*);
    initial begin
        #1;
        if ((^{ins}) === 1'bx) $display("QFX_CHECK X/Z input at %0t", $time);
    end
    always @(posedge ap_clk) if ((^{ins}) === 1'bx) $display("QFX_CHECK X/Z input at %0t", $time);
endmodule
""")
    info["top"] = outer
    info["rtl_files"].append(f"rtl/{outer}.sv")
    (d / "cosim.json").write_text(json.dumps(info))


@pytest.mark.icarus
def test_random_models_bit_exact_under_icarus_and_mutations_caught(tmp_path, monkeypatch):
    """Dense and conv (pixel-folded, II > 1) models, one simulation; a changed CSD shift and an undriven input
    slice are caught; a checker wrapper sees no X/Z input at 1 ns or at any clock edge."""
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = []
    for i, s in enumerate((100, 101, 102)):
        dirs.append(_project(tmp_path, f"m{s}", random_graph(s, kind="mlp", khot_prob=(0.0, 0.5, 1.0)[i]),
                             register_stages=i != 2, adder=("cse", "csd")[i == 1]))
    for i, s in enumerate((100, 103)):
        dirs.append(_project(tmp_path, f"c{s}", random_graph(s, kind="cnn", khot_prob=0.5), register_stages=i == 0))
    mlp = random_graph(104, kind="mlp", khot_prob=0.0)
    dirs.append(_project(tmp_path, "chk", mlp))
    _add_input_checker(dirs[-1])
    dirs.append(_project(tmp_path, "bad_con", mlp))
    _mutate(dirs[-1] / "rtl" / "t_bad_con_l0.sv", r"<<< (\d+)\)", lambda v: str(int(v) + 1))
    dirs.append(_project(tmp_path, "bad_und", mlp))
    # an undriven net: the first unpacked input slice loses its assign (Icarus: X; Verilator would read 0)
    _mutate(dirs[-1] / "rtl" / "t_bad_und_l0.sv", r"^(    assign \w+ = (?:\{1'b0, )?x\[\d+:\d+\]\}?;\n)", lambda v: "")
    work = tmp_path / "work"
    reps = {r.top: r for r in run_cosim_many(dirs, N_VECTORS, seed=7, backpressure=True, work_dir=work,
                                             sim="icarus")}
    good = [r for t, r in reps.items() if not t.startswith("t_bad")]
    assert len(good) == 6
    bad = [(r.top, r.mismatches, r.received, r.x_handshake_cycles, r.first_mismatch) for r in good if not r.ok]
    assert not bad, bad
    assert all(r.sim == "icarus" and not r.netlist and r.outputs_compared > 0 for r in good)
    assert any(r.ii > 1 for r in good), "expected a pixel-folded conv among the designs"
    assert reps["t_bad_con"].mismatches > 0 and not reps["t_bad_con"].ok
    und = reps["t_bad_und"]
    assert und.mismatches > 0 and und.extra["x_outputs"] > 0 and und.first_mismatch["got"] == "X"
    log = (work / "sim.log").read_text()
    assert "QFX_CHECK" not in log, [ln for ln in log.splitlines() if "QFX_CHECK" in ln][:5]
    report = json.loads((dirs[0] / "cosim_report.json").read_text())
    assert report["sim"] == "icarus" and report["ok"]


@pytest.mark.icarus
def test_cli_icarus_ok_cached_and_mutation_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    d = _project(tmp_path, "p", random_graph(104, kind="mlp", khot_prob=0.0))  # its first shift reaches the output
    assert main(["cosim", str(d), "--sim", "icarus", "-n", "100", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "(icarus)" in out and "0 mismatches" in out
    assert main(["cosim", str(d), "--sim", "icarus", "-n", "50", "--no-backpressure", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["build_cached"] is True and rep["sim"] == "icarus" and rep["ok"]
    assert any((tmp_path / "cache" / "icarus").iterdir())
    _mutate(d / "rtl" / "t_p_l0.sv", r"<<< (\d+)\)", lambda v: str(int(v) + 1))
    assert main(["cosim", str(d), "--sim", "icarus", "-n", "100"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.icarus
def test_cli_icarus_build_failure_is_exit_2_with_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    d = _project(tmp_path, "p", random_graph(106, kind="mlp"))
    layer = d / "rtl" / "t_p_l0.sv"
    layer.write_text(layer.read_text().replace("endmodule", "endmodule_oops", 1))
    assert main(["cosim", str(d), "--sim", "icarus", "-n", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Icarus build of t_p failed" in err and "log: " in err and "\n" not in err
    assert Path(err.rsplit("log: ", 1)[1].rstrip(")")).is_file()


def test_missing_icarus_is_exit_3_with_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no iverilog, no vvp
    from qfx.sim.toolchain import find_iverilog

    with pytest.raises(MissingToolError) as ei:
        find_iverilog()
    assert exit_code(ei.value) == 3 and "apt-get install iverilog" in str(ei.value)
    d = _project(tmp_path, "p", random_graph(107, kind="mlp"))
    assert main(["cosim", str(d), "--sim", "icarus", "-n", "5"]) == 3
    assert "apt-get install iverilog" in capsys.readouterr().err
    with pytest.raises(SystemExit) as se:
        main(["cosim", str(d), "--sim", "questa"])  # not a choice: a usage error
    assert se.value.code == 2


def test_x_outputs_parse_and_count_as_mismatches():
    """Words with X/Z bits (the testbench writes them as 'bits:' + bits, MSB first) mark exactly the elements
    whose bits hold X/Z; each such element is a mismatch reported as got 'X'."""
    # 3 elements of 4 bits, signed; element 1 has an X bit, element 2 a Z bit
    got, unknown = parse_words(["bits:01z1" + "10x0" + "0011", "2af"], 3, 4, True)
    assert unknown.tolist() == [[False, True, True], [False, False, False]]
    assert got[1].tolist() == [-1, -6, 2]
    assert got[0].tolist() == [3, -8, 5]  # X/Z bits read as 0
    expected = np.array([[3, -8, 4], [-1, -6, 2]])
    m, mism, first = compare_outputs(got, expected, unknown)
    assert (m, mism) == (2, 2) and first == {"vector": 0, "output_index": 1, "expected": -8, "got": "X"}
    assert compare_outputs(got, expected)[1] == 1  # without the mask only the Z element's value differs
