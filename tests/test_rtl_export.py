"""RTL generator without simulators: files, interface facts, packing, no multipliers, clean errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qfx.backends.rtl import build_project, pad8, write_project
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.ir.random_graph import random_graph
from qfx.sim.cosim import pack_words, unpack_words


def test_project_files_and_interface(tmp_path):
    g = random_graph(3, kind="cnn")
    write_project(g, tmp_path)
    info = json.loads((tmp_path / "cosim.json").read_text())
    assert Graph.load(tmp_path / "model.json").name == g.name
    for f in info["rtl_files"]:
        assert (tmp_path / f).is_file()
    spec_in, spec_out = g.tensor(g.inputs[0]), g.tensor(g.outputs[0])
    assert info["in_bits"] == spec_in.size * spec_in.fmt.width and info["in_tw"] % 8 == 0
    assert info["out_bits"] == spec_out.size * spec_out.fmt.width and info["out_tw"] >= info["out_bits"]
    top = (tmp_path / "rtl" / f"{info['top']}.sv").read_text()
    for port in ("ap_clk", "ap_rst_n", "s_axis_tdata", "s_axis_tvalid", "s_axis_tready", "m_axis_tdata",
                 "m_axis_tvalid", "m_axis_tready"):
        assert re.search(rf"\b{port}\b", top)
    readme = (tmp_path / "README.md").read_text()
    assert f"Latency: **{info['latency']}**" in readme and "element 0 in the least significant bits" in readme


@pytest.mark.parametrize("seed", range(8))
def test_no_multiplier_in_layers(seed):
    proj = build_project(random_graph(seed, khot_prob=0.5))
    for name, text in proj.files.items():
        code = "\n".join(ln.split("//")[0] for ln in re.sub(r"/\*.*?\*/", "", text, flags=re.S).splitlines())
        assert "*" not in code, name


def test_latency_counts_register_stages():
    g = random_graph(1, kind="mlp")
    on = build_project(g, register_stages=True).info["latency"]
    off = build_project(g, register_stages=False).info["latency"]
    computing = sum(1 for n in g.nodes if not (n.op in (Op.FLATTEN, Op.RESHAPE, Op.QUANT)
                                             and g.tensor(n.inputs[0]).fmt == g.tensor(n.output).fmt))
    assert off == 1 and on == max(1, computing)


def test_pack_roundtrip():
    rng = np.random.default_rng(0)
    for w, signed in ((1, False), (3, True), (7, False), (12, True)):
        f = FxFormat(w, 0, signed)
        codes = rng.integers(f.min_code, f.max_code, (20, 9), endpoint=True)
        words = pack_words(codes, w)
        assert all(v < (1 << (9 * w)) for v in words)
        np.testing.assert_array_equal(unpack_words(words, 9, w, signed), codes)
    assert pack_words(np.array([[1, -1]]), 4) == [0xF1]  # element 0 in the LSBs, two's complement
    assert pad8(1) == 8 and pad8(8) == 8 and pad8(9) == 16


def _two_input_graph() -> Graph:
    f = FxFormat(4, 2)
    t = {n: TensorSpec(n, (2,), f) for n in ("a", "b", "y")}
    return Graph("two", ("a", "b"), ("y",), t, (Node("add", Op.ADD, ("a", "b"), "y"),)).validate()


def test_bad_inputs():
    two = build_project(_two_input_graph()).info  # one AXI4-Stream port per input (tests/test_multi_io.py)
    assert [q["prefix"] for q in two["in_ports"]] == ["s0_axis", "s1_axis"]
    with pytest.raises(BadInputError, match="not a valid SystemVerilog identifier"):
        build_project(random_graph(0), top_name="module")
    with pytest.raises(BadInputError, match="adder"):
        build_project(random_graph(0), adder="magic")


def test_lossy_accumulator_refused():
    fx, fw = FxFormat(6, 2), FxFormat(6, 1)
    w = Constant(np.array([[31, -32, 17]]), fw)
    t = {"x": TensorSpec("x", (3,), fx), "y": TensorSpec("y", (1,), FxFormat(8, 4))}
    g = Graph("lossy", ("x",), ("y",), t, (Node("fc", Op.DENSE, ("x",), "y", {"weight": w}, {}, FxFormat(6, 4)),))
    with pytest.raises(UnsupportedError, match="not lossless"):
        build_project(g.validate())


def test_hostile_names_are_sanitized():
    g = random_graph(4)
    g = g.replace(name="my model; drop */ table")
    proj = build_project(g)
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", proj.top)
    # the only block comments are Verilator lint pragmas; a name cannot close or open one
    assert all("*/" not in re.sub(r"/\* verilator lint_o(n|ff) [A-Z]+ \*/", "", t) for t in proj.files.values())
