"""softmax through every executor: interpreter vs onnxruntime, C simulation (io parallel and stream) and RTL
co-simulation, on edge vectors and on a jet-tagging-like MLP 16-64-32-32-5 ending in QSoftmax, exported with
qfx.export. Also: the HLS io=stream project of a raw graph with dead nodes (runs only the live ones)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.errors import FormatError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph, Node, TensorSpec
from qfx.ir.interpret import random_inputs, run
from qfx.ops import REGISTRY
from qfx.ops.base import one_node_graph
from qfx.ops.softmax import softmax_tables


def _softmax_graph(n: int, fin: FxFormat, fout: FxFormat, name: str = "sm", **table_kw) -> Graph:
    et, rt, shift = softmax_tables(n, fin, fout, **table_kw)
    return one_node_graph("softmax", [((n,), fin)], (n,), fout, {"exp_table": et, "recip_table": rt},
                          {"shift": shift}).replace(name=name)


#: (n, input format, output format): signed and unsigned inputs, n = 1 and 2, a wide input, saturating outputs
CASES = [(5, FxFormat(8, 4), FxFormat(8, 1, False, "RND", "SAT")),
         (2, FxFormat(6, 3, False), FxFormat(6, 1, False)),
         (1, FxFormat(4, 2), FxFormat(5, 0, False, "RND_CONV", "WRAP")),
         (16, FxFormat(10, 5), FxFormat(10, 1, False, "RND", "SAT")),
         (7, FxFormat(12, 6), FxFormat(9, 2, True, "RND_INF", "SAT_SYM"))]


def _edge_inputs(g: Graph, n_random: int = 200) -> np.ndarray:
    """Random vectors plus the corners: all equal, one at max and the rest at min (largest distance), and back."""
    f = g.tensor(g.inputs[0]).fmt
    n = g.tensor(g.inputs[0]).size
    rows = [np.full(n, f.min_code), np.full(n, f.max_code), np.full(n, 0 if f.signed else f.min_code)]
    for j in range(n):
        r = np.full(n, f.min_code)
        r[j] = f.max_code
        rows.append(r)
        rows.append(np.where(np.arange(n) == j, f.min_code, f.max_code))
    return np.concatenate([np.array(rows, dtype=np.int64), random_inputs(g, n_random, seed=7)], axis=0)


@pytest.mark.parametrize("case", [k for k, c in enumerate(CASES) if c[2].int_bits >= 1 + c[2].signed])
def test_interpreter_is_close_to_float_softmax(case):
    n, fin, fout = CASES[case]
    g = _softmax_graph(n, fin, fout)
    x = _edge_inputs(g)
    y = fout.from_int(run(g, x))
    xv = fin.from_int(x)
    ref = np.exp(xv - xv.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    assert np.abs(y - ref).max() <= 2 * 2.0 ** -fout.frac_bits  # tables sized for about 1 LSB


@pytest.mark.parametrize("case", range(len(CASES)))
def test_onnx_matches_interpreter_on_edge_vectors(case):
    from qfx.onnx.export import GRAPH_OPS, to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    g = _softmax_graph(*CASES[case])
    m = to_onnx_model(g)
    ops = {nd.op_type for nd in m.graph.node if nd.domain == ""}
    assert {"ReduceMax", "ReduceSum", "Floor", "Gather"} <= ops <= GRAPH_OPS
    x = _edge_inputs(g)
    np.testing.assert_array_equal(run_onnx_codes(m.SerializeToString(), g, x), run(g, x))


def test_onnx_refuses_a_product_beyond_float64():
    g = _softmax_graph(4, FxFormat(6, 3), FxFormat(8, 1, False), exp_bits=40, recip_bits=20)
    from qfx.onnx.export import to_onnx_model

    with pytest.raises(FormatError, match="exp \\* recip"):
        to_onnx_model(g)


def test_rtl_design_shares_its_two_roms_and_multiplies_per_element():
    from qfx.backends.rtl_design import design_layer

    g = _softmax_graph(*CASES[0])
    d = design_layer(g, g.nodes[0], "sm_l0")
    assert len(d.roms) == 2 and d.n_mults == CASES[0][0]
    assert sum(1 for it in d.items if it["kind"] == "rom") == CASES[0][0] + 1  # n exp reads, one reciprocal read


def test_hls_project_uses_the_kernel_and_the_ir_tables(tmp_path):
    from qfx.backends import hls

    g = _softmax_graph(*CASES[0])
    hls.write_project(g, tmp_path)
    top = (tmp_path / "firmware" / "sm.cpp").read_text()
    assert "qfx::softmax<" in top and (tmp_path / "firmware" / "qfx_softmax.h").is_file()
    weights = (tmp_path / "firmware" / "weights.h").read_text()
    et = g.nodes[0].consts["exp_table"].codes
    assert ", ".join(str(int(c)) for c in et[:6]) in weights  # the exp ROM is the IR table, code for code
    params = (tmp_path / "firmware" / "parameters.h").read_text()
    assert f"shift = {int(g.nodes[0].attrs['shift'])}" in params


@pytest.mark.gxx
def test_csim_bit_exact_parallel_and_stream(tmp_path):
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for k, case in enumerate(CASES):
        for io in ("parallel", "stream"):
            d = tmp_path / f"c{k}_{io}"
            hls.write_project(_softmax_graph(*case, name=f"sm{k}_{io}"), d, io=io)
            dirs.append(d)
    reps = run_csim_batch(dirs, n_vectors=300, seed=11)
    assert [r.mismatches for r in reps] == [0] * len(dirs) and all(r.passed for r in reps)


#: RTL co-simulation in CI; case 3 (16 elements, a 2**14-entry reciprocal ROM: 0.6 MB of SystemVerilog) is slow
COSIM_FAST = (0, 1, 2, 4)


@pytest.mark.verilator
@pytest.mark.parametrize("cases", [COSIM_FAST, pytest.param((3,), marks=pytest.mark.slow)], ids=["fast", "wide"])
def test_rtl_cosim_bit_exact(tmp_path, cases):
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for k in cases:
        g = _softmax_graph(*CASES[k], name=f"sm{k}")
        d = tmp_path / f"r{k}"
        rtl.write_project(g, d)
        dirs.append((d, _edge_inputs(g, 100)))
    reps = run_cosim_many([d for d, _ in dirs], inputs=[x for _, x in dirs], seed=3)
    assert [(r.mismatches, r.received == r.vectors) for r in reps] == [(0, True)] * len(dirs)


# ------------------------------------------------------------------------------------------------ jet tagging MLP
@pytest.fixture(scope="module")
def jet_mlp():
    """A jet-tagging-like classifier (hls4ml's 16-64-32-32-5 benchmark shape) ending in softmax."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 5), nn.Softmax(dim=1))
    x = torch.randn(256, 16)
    q = qfx.quantize_model(model, qfx.QFXConfig(weight_width=6, act_width=8), calib_data=x)
    return q, x


def test_jet_mlp_ends_in_softmax_and_exact_mode_equals_interpreter(jet_mlp, tmp_path):
    import qfx.nn as qn
    from qfx.ir.load import load_graph

    q, x = jet_mlp
    path = qfx.export(q, x[:1], "onnx", tmp_path / "jet.onnx")
    g = load_graph(path)
    assert g.nodes[-1].op.value == "softmax" and g.tensor(g.outputs[0]).shape == (5,)
    codes = g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy())
    q.eval()
    with qn.mode(q, "exact"):
        want = q(x).double().numpy()
    y = g.tensor(g.outputs[0]).fmt.from_int(run(g, codes))
    np.testing.assert_array_equal(y, want)
    assert len(np.unique(y.argmax(axis=1))) > 1  # the outputs depend on the input


@pytest.mark.gxx
def test_jet_mlp_hls_csim_bit_exact(jet_mlp, tmp_path):
    from qfx.sim.csim import run_csim

    q, x = jet_mlp
    prj = qfx.export(q, x[:1], "hls", tmp_path / "jet_hls", name="jet")
    rep = run_csim(prj, n_vectors=500, seed=2)
    assert rep.passed and rep.mismatches == 0


@pytest.mark.verilator
def test_jet_mlp_rtl_cosim_bit_exact(jet_mlp, tmp_path):
    from qfx.sim.cosim import run_cosim

    q, x = jet_mlp
    prj = qfx.export(q, x[:1], "rtl", tmp_path / "jet_rtl", name="jet")
    rep = run_cosim(prj, n_vectors=300, seed=2)
    assert rep.ok and rep.mismatches == 0 and rep.received == rep.vectors


# ------------------------------------------------------------------------------------------------ HLS io=stream
def _graph_with_dead_nodes() -> Graph:
    """x -> relu -> y (the output); x -> quant -> d1 -> relu -> d2 is dead (a raw graph, no pass flow)."""
    f, h = FxFormat(8, 3), FxFormat(6, 2, rounding="RND")
    t = {"x": TensorSpec("x", (6,), f), "y": TensorSpec("y", (6,), f), "d1": TensorSpec("d1", (6,), h),
         "d2": TensorSpec("d2", (6,), h)}
    nodes = (Node("dead_q", "quant", ("x",), "d1"), Node("live", "relu", ("x",), "y"),
             Node("dead_r", "relu", ("d1",), "d2"))
    return Graph("deadnodes", ("x",), ("y",), t, nodes).validate()


def test_stream_project_of_a_graph_with_dead_nodes_runs_the_live_ones(tmp_path):
    from qfx.backends import hls

    g = _graph_with_dead_nodes()
    hls.write_project(g, tmp_path, io="stream")
    top = (tmp_path / "firmware" / "deadnodes.cpp").read_text()
    assert "live_stream(" in top and "dead_q" not in top and "dead_r" not in top
    assert "clone_stream" not in top  # x has one live reader


@pytest.mark.gxx
def test_stream_project_with_dead_nodes_csim(tmp_path):
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    g = _graph_with_dead_nodes()
    dirs = [tmp_path / "p", tmp_path / "s"]
    hls.write_project(g.replace(name="dead_p"), dirs[0], io="parallel")
    hls.write_project(g.replace(name="dead_s"), dirs[1], io="stream")
    reps = run_csim_batch(dirs, n_vectors=100, seed=1)
    assert all(r.passed and r.mismatches == 0 for r in reps)


def test_softmax_is_registered_with_every_backend():
    from qfx.backends.hls_ops import HLS_EMITTERS
    from qfx.backends.rtl_design import LAYER_EMITTERS
    from qfx.ir.random_graph import GENERATORS
    from qfx.onnx.export import EXACTNESS, LOWERINGS

    assert "softmax" in REGISTRY
    for table in (HLS_EMITTERS, LAYER_EMITTERS, LOWERINGS, EXACTNESS, GENERATORS):
        assert "softmax" in table
