"""IR passes: format checks, accumulator sizing, exact BN folding, dead-node removal, flows and summary."""
from __future__ import annotations

import numpy as np
import pytest

from qfx.errors import BadInputError, OverflowRiskError
from qfx.fixed import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import scale_shift_format
from qfx.ir import Constant, Graph, Node, Op, TensorSpec, edge_inputs, random_inputs, run
from qfx.ir.passes import DEFAULT_FLOW, PASSES, run_flow, summary
from qfx.ir.random_graph import random_graph


def _inputs(g: Graph, n: int = 200, seed: int = 0) -> np.ndarray:
    return np.concatenate([edge_inputs(g), random_inputs(g, n, seed=seed, edges=False)])


@pytest.mark.parametrize("seed", range(30))
def test_default_flow_preserves_semantics(seed):
    g = random_graph(seed)
    res = run_flow(g, DEFAULT_FLOW)
    x = _inputs(g, seed=seed)
    np.testing.assert_array_equal(run(res.graph, x), run(g, x))
    assert set(res.reports) >= {"check_formats", "size_accumulators", "fold_scale_shift", "remove_dead"}


def _mlp(out_fmt: FxFormat, bn_out: FxFormat, acc: FxFormat | None = None, seed: int = 0,
         conv: bool = False) -> Graph:
    rng = np.random.default_rng(seed)
    fx, fw, fb = FxFormat(6, 2), FxFormat(5, 1), FxFormat(6, 3)
    fs, fsh = FxFormat(6, 2), FxFormat(7, 3)
    if conv:
        xs, wshape, ys = (2, 5, 5), (3, 2, 3, 3), (3, 5, 5)
    else:
        xs, wshape, ys = (7,), (4, 7), (4,)
    w = Constant(rng.integers(fw.min_code, fw.max_code, size=wshape, endpoint=True), fw)
    b = Constant(rng.integers(fb.min_code, fb.max_code, size=(wshape[0],), endpoint=True), fb)
    s = Constant(rng.integers(fs.min_code, fs.max_code, size=(wshape[0],), endpoint=True), fs)
    h = Constant(rng.integers(fsh.min_code, fsh.max_code, size=(wshape[0],), endpoint=True), fsh)
    need = lossless_acc_format(w.codes.reshape(wshape[0], -1), fw, fx, b.codes, fb)
    t = {"x": TensorSpec("x", xs, fx), "h": TensorSpec("h", ys, out_fmt), "y": TensorSpec("y", ys, bn_out)}
    op = Op.CONV2D if conv else Op.DENSE
    attrs = {"stride": (1, 1), "padding": (1, 1)} if conv else {}
    n1 = Node("fc", op, ("x",), "h", {"weight": w, "bias": b}, attrs, acc or need)
    n2 = Node("bn", Op.SCALE_SHIFT, ("h",), "y", {"scale": s, "shift": h}, {}, scale_shift_format(out_fmt, fs, fsh))
    return Graph("m", ("x",), ("y",), t, (n1, n2)).validate()


@pytest.mark.parametrize("conv", [False, True])
def test_fold_is_exact_when_intermediate_is_lossless(conv):
    g = _mlp(FxFormat(24, 12), FxFormat(10, 5, rounding="RND_CONV", overflow="SAT"), conv=conv)
    res = run_flow(g, ["fold_scale_shift"])
    assert [n.op for n in res.graph.nodes] == [Op.CONV2D if conv else Op.DENSE]
    assert any("folded into fc" in line for line in res.reports["fold_scale_shift"])
    x = _inputs(g, 500)
    np.testing.assert_array_equal(run(res.graph, x), run(g, x))
    # the folded graph still exports and runs exactly
    from qfx.onnx import run_onnx_codes, to_onnx_model

    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(res.graph).SerializeToString(), res.graph, x),
                                  run(g, x))


def test_fold_refused_when_intermediate_cast_is_lossy():
    g = _mlp(FxFormat(6, 3, rounding="RND", overflow="SAT"), FxFormat(10, 5))
    res = run_flow(g, ["fold_scale_shift"])
    assert len(res.graph.nodes) == 2
    (line,) = res.reports["fold_scale_shift"]
    assert "kept" in line and "lossy" in line
    # and the lossy cast really matters: a naive fold would change results
    naive = _mlp(FxFormat(24, 12), FxFormat(10, 5))
    x = _inputs(g, 300)
    assert not np.array_equal(run(g, x), run(naive, x))


def test_fold_refused_when_output_shared():
    g = _mlp(FxFormat(24, 12), FxFormat(10, 5))
    g = g.replace(outputs=("y", "h"))
    res = run_flow(g, ["fold_scale_shift"])
    assert len(res.graph.nodes) == 2 and "used elsewhere" in res.reports["fold_scale_shift"][0]


def test_size_accumulators_widens_unsafe_and_reports():
    g = _mlp(FxFormat(24, 12), FxFormat(10, 5), acc=FxFormat(6, 4))
    res = run_flow(g, ["size_accumulators"])
    need = lossless_acc_format(g.nodes[0].consts["weight"].codes, FxFormat(5, 1), FxFormat(6, 2),
                               g.nodes[0].consts["bias"].codes, FxFormat(6, 3))
    assert res.graph.nodes[0].acc_fmt == need
    assert "could overflow" in res.reports["size_accumulators"][0]
    with pytest.raises(OverflowRiskError, match="can overflow"):
        run_flow(g, ["check_accumulators"])
    # a wider-than-needed accumulator is kept
    wide = _mlp(FxFormat(24, 12), FxFormat(10, 5), acc=FxFormat(40, 20))
    assert run_flow(wide, ["size_accumulators"]).graph.nodes[0].acc_fmt == FxFormat(40, 20)


def test_sized_accumulator_never_overflows_on_extremes():
    """After sizing, the sequential ap_fixed accumulation equals the exact sum for edge inputs."""
    g = _mlp(FxFormat(24, 12), FxFormat(40, 20), acc=FxFormat(6, 4))
    sized = run_flow(g, ["size_accumulators"]).graph
    x = _inputs(g, 100)
    exact = sized.replace(nodes=(sized.nodes[0].replace(acc_fmt=FxFormat(62, 40)), sized.nodes[1]))
    np.testing.assert_array_equal(run(sized, x), run(exact, x))


def test_remove_dead():
    g = _mlp(FxFormat(24, 12), FxFormat(10, 5))
    extra = Node("dead", Op.RELU, ("x",), "d")
    tensors = dict(g.tensors) | {"d": TensorSpec("d", (7,), FxFormat(6, 2))}
    g2 = g.replace(nodes=g.nodes + (extra,), tensors=tensors).validate()
    res = run_flow(g2, ["remove_dead"])
    assert [n.name for n in res.graph.nodes] == ["fc", "bn"] and "d" not in res.graph.tensors
    assert "dead" in res.reports["remove_dead"][0]


def test_check_formats_rejects_bad_shapes():
    g = _mlp(FxFormat(24, 12), FxFormat(10, 5))
    bad = g.replace(tensors=dict(g.tensors) | {"h": TensorSpec("h", (5,), FxFormat(24, 12))})
    with pytest.raises(BadInputError, match="fc"):
        run_flow(bad, ["check_formats"])
    clip = Node("c", Op.CLIP, ("x",), "c", attrs={"lo": 5, "hi": 99})
    g3 = g.replace(nodes=g.nodes + (clip,), tensors=dict(g.tensors) | {"c": TensorSpec("c", (7,), FxFormat(6, 2))})
    with pytest.raises(BadInputError, match="clip bounds"):
        run_flow(g3, ["check_formats"])


def test_unknown_pass_and_summary():
    g = random_graph(2)
    with pytest.raises(BadInputError, match="unknown pass 'nope'"):
        run_flow(g, ["check_formats", "nope"])
    text = summary(g)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["node", "op", "in"] and len(lines) == len(g.nodes) + 1
    for n in g.nodes:
        assert n.name in text and g.tensor(n.output).fmt.ap_type() in text
    assert set(DEFAULT_FLOW) <= set(PASSES)
