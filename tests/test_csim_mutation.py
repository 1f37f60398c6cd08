"""Mutation tests: one weight code changed by one step in the generated firmware must make csim fail.

The graphs are built so that the change is observable: the output format is the (lossless) accumulator format,
so any change of a product reaches the output bits for every input with a non-zero operand.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qfx.backends.hls import write_project
from qfx.cli import main
from qfx.fixed.csd import khot_project
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import scale_shift_format
from qfx.ir.graph import Constant, Graph, Node, TensorSpec
from qfx.sim.csim import run_csim_batch

pytestmark = pytest.mark.gxx

FX = FxFormat(8, 3)
FW = FxFormat(6, 1)
FB = FxFormat(8, 4)


def _rng(seed):
    return np.random.default_rng(seed)


def dense_graph(name: str, khot: int = 0) -> Graph:
    r = _rng(1)
    w = r.integers(FW.min_code, FW.max_code, (4, 6), endpoint=True)
    if khot:
        w = khot_project(w, khot, FW.min_code, FW.max_code)
    b = r.integers(FB.min_code, FB.max_code, (4,), endpoint=True)
    acc = lossless_acc_format(w, FW, FX, b, FB)
    t = {"x": TensorSpec("x", (6,), FX), "y": TensorSpec("y", (4,), acc)}
    n = Node("fc", "dense", ("x",), "y", {"weight": Constant(w, FW), "bias": Constant(b, FB)}, {"khot": khot}, acc)
    return Graph(name, ("x",), ("y",), t, (n,)).validate()


def conv_graph(name: str) -> Graph:
    r = _rng(2)
    w = r.integers(FW.min_code, FW.max_code, (2, 2, 3, 3), endpoint=True)
    acc = lossless_acc_format(w.reshape(2, -1), FW, FX)
    t = {"x": TensorSpec("x", (2, 5, 5), FX), "y": TensorSpec("y", (2, 5, 5), acc)}
    n = Node("conv", "conv2d", ("x",), "y", {"weight": Constant(w, FW)}, {"stride": (1, 1), "padding": (1, 1)}, acc)
    return Graph(name, ("x",), ("y",), t, (n,)).validate()


def bn_graph(name: str) -> Graph:
    r = _rng(3)
    s = r.integers(FW.min_code, FW.max_code, (3,), endpoint=True)
    h = r.integers(FB.min_code, FB.max_code, (3,), endpoint=True)
    f = scale_shift_format(FX, FW, FB)
    t = {"x": TensorSpec("x", (3, 2, 2), FX), "y": TensorSpec("y", (3, 2, 2), f)}
    n = Node("bn", "scale_shift", ("x",), "y", {"scale": Constant(s, FW), "shift": Constant(h, FB)}, {}, f)
    return Graph(name, ("x",), ("y",), t, (n,)).validate()


def mutate_array(project, array: str, const, index: int) -> None:
    """Replace code ``index`` of ``array`` in weights.h by that code plus (or minus) one step."""
    p = project / "firmware" / "weights.h"
    text = p.read_text()
    m = re.search(rf"static const [\w ]+ {array}\[\d+\] = \{{\n(.*?)\n\}};", text, re.S)
    assert m, array
    lits = [x.strip() for x in m.group(1).replace("\n", " ").split(",") if x.strip()]
    code = int(const.codes.reshape(-1)[index])
    assert int(lits[index].rstrip("L")) == code
    new = code + 1 if code < const.fmt.max_code else code - 1
    lits[index] = str(new)
    body = "    " + ", ".join(lits) + ","
    p.write_text(text[: m.start(1)] + body + text[m.end(1):])


def mutate_khot(project, array: str, j: int, const) -> None:
    """Flip the sign of the first shift-add term of weight [0][j] in a K-hot layer's table in weights.h."""
    p = project / "firmware" / "weights.h"
    text = p.read_text()
    m = re.search(rf"static const signed char {array}\[\d+\] = \{{\n(.*?)\n\}};", text, re.S)
    assert m, array
    vals = [int(x) for x in m.group(1).replace("\n", " ").split(",") if x.strip()]
    k = len(vals) // const.codes.size  # term slots per weight
    assert vals[j * k] != 0
    vals[j * k] = -vals[j * k]
    p.write_text(text[: m.start(1)] + "    " + ", ".join(map(str, vals)) + "," + text[m.end(1):])


def test_single_weight_step_is_caught(tmp_path):
    cases = {
        "ok": dense_graph("m_ok"),
        "dense": dense_graph("m_dense"),
        "dense_bias": dense_graph("m_bias"),
        "conv": conv_graph("m_conv"),
        "bn": bn_graph("m_bn"),
        "khot": dense_graph("m_khot", khot=2),
    }
    dirs = {}
    for key, g in cases.items():
        d = tmp_path / key
        d.mkdir()
        write_project(g, d)
        dirs[key] = d
    mutate_array(dirs["dense"], "fc_w", cases["dense"].nodes[0].consts["weight"], 7)
    mutate_array(dirs["dense_bias"], "fc_b", cases["dense_bias"].nodes[0].consts["bias"], 2)
    mutate_array(dirs["conv"], "conv_w", cases["conv"].nodes[0].consts["weight"], 20)
    mutate_array(dirs["bn"], "bn_scale", cases["bn"].nodes[0].consts["scale"], 1)
    wk = cases["khot"].nodes[0].consts["weight"]
    j = int(np.flatnonzero(wk.codes[0])[0])
    mutate_khot(dirs["khot"], "fc_w", j, wk)
    reports = dict(zip(cases, run_csim_batch(list(dirs.values()), 1000, flags=("-Werror",))))
    assert reports["ok"].mismatches == 0
    for key in ("dense", "dense_bias", "conv", "bn", "khot"):
        r = reports[key]
        assert r.mismatches > 0, key
        assert r.first_mismatch["layer"] == cases[key].nodes[0].name
        assert r.first_mismatch["expected"] != r.first_mismatch["got"]


def test_cli_exit_1_on_mutation(tmp_path, capsys):
    g = dense_graph("cli_mut")
    write_project(g, tmp_path)
    mutate_array(tmp_path, "fc_w", g.nodes[0].consts["weight"], 0)
    rc = main(["csim", str(tmp_path), "-n", "200"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "first mismatch" in out and "'fc'" in out
    rep = json.loads((tmp_path / "csim_report.json").read_text())
    assert rep["passed"] is False and rep["mismatches"] > 0 and rep["first_mismatch"]["layer"] == "fc"
