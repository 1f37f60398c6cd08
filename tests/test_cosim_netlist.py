"""``qfx cosim --netlist``: the Yosys gate-level netlist (generic ``synth -flatten``) simulated with the same testbench.

Small random dense and conv designs are bit-exact at gate level under Icarus (4-state), with random AXI-Stream
stalls; a changed constant in the RTL is caught in its netlist; netlists are cached by content; a design Yosys
cannot read is exit 2 with the log path; a missing Yosys is exit 3.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qfx.backends.rtl import write_project
from qfx.cli import main
from qfx.ir.random_graph import random_graph
from qfx.sim.cosim import run_cosim_many

N_VECTORS = 100

# small designs (tens of adders) keep synthesis at a few seconds each: two dense stacks, two pixel-folded convs
SMALL = [("mlp", 116), ("mlp", 120), ("cnn", 103), ("cnn", 123)]


def _small(root: Path, name: str, kind: str, seed: int) -> Path:
    d = root / name
    d.mkdir()
    write_project(random_graph(seed, kind=kind, max_layers=2, max_width=8), d, top_name=f"t_{name}")
    return d


def _mutate_shift(path: Path) -> None:
    """One CSD digit gets another power of two: the first ``<<< k`` becomes ``<<< k+1``."""
    text = path.read_text()
    m = re.search(r"<<< (\d+)\)", text)
    assert m, f"no shifted term in {path.name}"
    path.write_text(text[:m.start(1)] + str(int(m.group(1)) + 1) + text[m.end(1):])


@pytest.mark.yosys
@pytest.mark.icarus
def test_small_models_gate_level_bit_exact_and_mutation_caught(tmp_path, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = [_small(tmp_path, f"{k}{s}", k, s) for k, s in SMALL]
    dirs.append(_small(tmp_path, "bad", "mlp", 116))
    _mutate_shift(dirs[-1] / "rtl" / "t_bad_l1.sv")
    reps = {r.top: r for r in run_cosim_many(dirs, N_VECTORS, seed=3, backpressure=True,
                                             work_dir=tmp_path / "work", netlist=True)}
    good = [r for t, r in reps.items() if t != "t_bad"]
    bad = [(r.top, r.mismatches, r.received, r.x_handshake_cycles, r.first_mismatch) for r in good if not r.ok]
    assert not bad, bad
    assert all(r.netlist and r.sim == "icarus" and r.outputs_compared > 0 for r in good)
    assert any(r.ii > 1 for r in good) and any(r.ii == 1 for r in good)
    assert reps["t_bad"].mismatches > 0
    # the simulated sources were the netlists: one flattened module per design, no RTL submodules
    for r in good:
        net = Path(r.extra["netlist"]["path"])
        text = net.read_text()
        assert net.is_file() and re.findall(r"^module (\w+)", text, re.M) == [r.top]
        assert r.extra["netlist"]["cached"] is False
    # cached by content: the same RTL gives the same netlist file without running Yosys
    from qfx.report.yosys import write_netlist

    info = json.loads((dirs[0] / "cosim.json").read_text())
    again = write_netlist([dirs[0] / f for f in info["rtl_files"]], info["top"])
    assert again.cached and str(again.path) == reps[info["top"]].extra["netlist"]["path"]


@pytest.mark.yosys
@pytest.mark.icarus
def test_cli_netlist_ok_then_mutation_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    d = _small(tmp_path, "p", "mlp", 116)
    assert main(["cosim", str(d), "--netlist", "-n", "60", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["netlist"] is True and rep["sim"] == "icarus"
    assert rep["extra"]["netlist"]["cached"] is False
    assert main(["cosim", str(d), "--netlist", "-n", "60"]) == 0
    out = capsys.readouterr().out
    assert "(icarus, gate-level netlist)" in out and "0 mismatches" in out and "(cached)" in out
    _mutate_shift(d / "rtl" / "t_p_l1.sv")
    assert main(["cosim", str(d), "--netlist", "-n", "60"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.yosys
def test_cli_netlist_yosys_failure_exit_2_and_missing_yosys_exit_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    d = _small(tmp_path, "p", "mlp", 116)
    layer = d / "rtl" / "t_p_l0.sv"
    layer.write_text(layer.read_text().replace("endmodule", "endmodule_oops", 1))
    # Verilator does not run for this: synthesis fails first
    assert main(["cosim", str(d), "--netlist", "--sim", "verilator", "-n", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Yosys synthesis of t_p to a netlist failed" in err and "\n" not in err
    assert Path(err.rsplit("log: ", 1)[1].rstrip(")")).is_file()
    monkeypatch.setenv("PATH", str(tmp_path))  # no yosys (and no iverilog)
    assert main(["cosim", str(d), "--netlist", "--sim", "verilator", "-n", "5"]) == 3
    assert "Yosys not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.yosys
@pytest.mark.verilator
def test_netlist_under_verilator(tmp_path, monkeypatch):
    """The same netlists also run under Verilator (2-state: catches synthesis-semantics bugs, not X)."""
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = [_small(tmp_path, f"{k}{s}", k, s) for k, s in SMALL]
    reps = run_cosim_many(dirs, 300, seed=4, backpressure=True, work_dir=tmp_path / "work", netlist=True,
                          sim="verilator")
    assert all(r.ok and r.netlist and r.sim == "verilator" for r in reps), [(r.top, r.mismatches) for r in reps]


@pytest.mark.slow
@pytest.mark.yosys
@pytest.mark.icarus
@pytest.mark.parametrize("kind,start", [("mlp", 300), ("cnn", 300)])
def test_more_random_models_gate_level(tmp_path, monkeypatch, kind, start):
    """Default-sized random designs (hundreds of adders: ~20 s of Yosys each)."""
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = []
    for s in range(start, start + 6):
        d = tmp_path / f"p{s}"
        d.mkdir()
        write_project(random_graph(s, kind=kind, khot_prob=0.5), d)
        dirs.append(d)
    reps = run_cosim_many(dirs, 100, seed=5, backpressure=True, work_dir=tmp_path / "work", netlist=True)
    bad = [(r.top, r.mismatches, r.received, r.first_mismatch) for r in reps if not r.ok]
    assert not bad, bad
