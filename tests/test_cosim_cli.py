"""``qfx cosim``: exit codes, report file, and a mutated constant in the RTL is caught (exit 1)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qfx.backends.rtl import write_project
from qfx.cli import main
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec


def _graph() -> Graph:
    """Dense 6 -> 4 with an output format wide enough that any change of any term shows in the output."""
    rng = np.random.default_rng(5)
    fx, fw, fb = FxFormat(6, 2), FxFormat(7, 1), FxFormat(8, 3)
    w = rng.integers(fw.min_code, fw.max_code, (4, 6), endpoint=True)
    w[w == 0] = 3
    b = rng.integers(fb.min_code, fb.max_code, (4,), endpoint=True)
    acc = lossless_acc_format(w, fw, fx, b, fb)
    t = {"x": TensorSpec("x", (6,), fx), "y": TensorSpec("y", (4,), acc)}
    node = Node("fc", Op.DENSE, ("x",), "y", {"weight": Constant(w, fw), "bias": Constant(b, fb)}, {}, acc)
    return Graph("mut_dense", ("x",), ("y",), t, (node,)).validate()


@pytest.mark.verilator
def test_cli_cosim_ok_then_mutation_caught(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "proj"
    d.mkdir()
    write_project(_graph(), d)
    assert main(["cosim", str(d), "-n", "200", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "0 mismatches" in out and "200 vectors" in out
    rep = json.loads((d / "cosim_report.json").read_text())
    assert rep["ok"] and rep["outputs_compared"] == 800 and rep["mismatches"] == 0
    assert main(["cosim", str(d), "-n", "100", "--no-backpressure", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["build_cached"] is True
    # mutate one shift-and-add term: a different power of two for one CSD digit
    layer = d / "rtl" / "mut_dense_l0.sv"
    text = layer.read_text()
    m = re.search(r"<<< (\d+)\)", text)
    assert m, "expected a shifted term in the dense layer"
    layer.write_text(text[:m.start(1)] + str(int(m.group(1)) + 1) + text[m.end(1):])
    assert main(["cosim", str(d), "-n", "200"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "first mismatch: vector" in out
    assert json.loads((d / "cosim_report.json").read_text())["mismatches"] > 0


def test_cli_bad_input_and_missing_tool(tmp_path, capsys):
    assert main(["cosim", str(tmp_path / "none")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["cosim", str(tmp_path / "empty")]) == 2
    assert "no cosim.json" in capsys.readouterr().err
    d = tmp_path / "p"
    d.mkdir()
    write_project(_graph(), d)
    assert main(["cosim", str(d), "-n", "0"]) == 2
    assert main(["cosim", str(d), "--hls-rtl"]) == 3
    assert "Vitis HLS" in capsys.readouterr().err
