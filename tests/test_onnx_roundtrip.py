"""Random IR graphs: JSON and ONNX round trips are identical; onnxruntime on the exported file == qfx.ir.run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from qfx import __version__
from qfx.errors import FormatError, UnsupportedError
from qfx.fixed import FxFormat
from qfx.ir import Constant, Graph, Node, Op, TensorSpec, random_inputs, run
from qfx.ir.random_graph import random_graph
from qfx.onnx import export_onnx, import_onnx, run_onnx_codes, to_onnx_model
from qfx.onnx.export import input_cast_format
from qfx.onnx.fixedquant import DOMAIN, FUNCTION_NAME
from qfx.onnx.runtime import ort_session

FAST_SEEDS = range(0, 40)
SLOW_SEEDS = range(40, 240)


def _same(a: Graph, b: Graph) -> None:
    assert a.to_json_dict() == b.to_json_dict()


def _roundtrip(seed: int, tmp_path, kind: str = "any") -> None:
    g = random_graph(seed, kind=kind)
    _same(Graph.from_json(g.to_json()), g)
    path = export_onnx(g, tmp_path / f"g{seed}.onnx")
    _same(import_onnx(path), g)
    x = random_inputs(g, 48, seed=seed)
    np.testing.assert_array_equal(run_onnx_codes(path, g, x), run(g, x), err_msg=g.name)


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_random_graph_roundtrip(seed, tmp_path):
    _roundtrip(seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_random_graph_roundtrip_more(seed, tmp_path):
    _roundtrip(seed, tmp_path)


@pytest.mark.parametrize("seed", range(6))
def test_wide_formats_roundtrip(seed, tmp_path):
    """Up to 24-bit activations: exactness of the float64 path does not depend on narrow widths."""
    g = random_graph(1000 + seed, kind="cnn" if seed % 2 else "mlp", max_width=24)
    path = export_onnx(g, tmp_path / "w.onnx")
    x = random_inputs(g, 64, seed=seed)
    np.testing.assert_array_equal(run_onnx_codes(path, g, x), run(g, x))


def test_model_metadata_and_checker(tmp_path):
    g = random_graph(3, kind="cnn")
    m = to_onnx_model(g)
    onnx.checker.check_model(m, full_check=True)
    assert m.producer_name == "qfx" and m.producer_version == __version__
    assert {(o.domain, o.version) for o in m.opset_import} >= {(DOMAIN, 1)}
    assert [f.name for f in m.functions] == [FUNCTION_NAME]
    props = {p.key for p in m.metadata_props}
    assert {"qfx.nodes", "qfx.graph", "qfx.version"} <= props
    # every IR tensor is written by a FixedQuant whose attributes are its format
    fq = {n.output[0]: n for n in m.graph.node if n.op_type == FUNCTION_NAME}
    for n in g.nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fq[n.output].attribute}
        f = g.tensor(n.output).fmt
        assert (attrs["width"], attrs["int_bits"], bool(attrs["signed"])) == (f.width, f.int_bits, f.signed)
        assert attrs["rounding"].decode() == f.rounding and attrs["overflow"].decode() == f.overflow


@pytest.mark.parametrize("seed", [7, 8, 11])
def test_real_valued_input_is_quantized_by_the_model(seed, tmp_path):
    """Feeding arbitrary doubles: the model's input FixedQuant is ``input_cast_format(fmt).to_int``.

    That is the input format's own cast, except that SAT_SYM saturates like SAT so every code passes unchanged.
    """
    g = random_graph(seed, kind="mlp")
    path = export_onnx(g, tmp_path / "m.onnx")
    spec = g.tensor(g.inputs[0])
    rng = np.random.default_rng(0)
    xf = rng.normal(0, 2 * max(abs(spec.fmt.min), spec.fmt.max), size=(64,) + spec.shape)
    sess = ort_session(path)
    out = sess.run(None, {sess.get_inputs()[0].name: xf})[0]
    ref = g.tensor(g.outputs[0]).fmt.from_int(run(g, input_cast_format(spec.fmt).to_int(xf)))
    np.testing.assert_array_equal(out, ref)


def _dense_graph(wfmt: FxFormat, xfmt: FxFormat, n: int = 4, out: FxFormat | None = None) -> Graph:
    w = Constant(np.full((2, n), wfmt.max_code, dtype=np.int64), wfmt)
    from qfx.fixed.kernels import lossless_acc_format

    acc = lossless_acc_format(w.codes, wfmt, xfmt)
    t = {"x": TensorSpec("x", (n,), xfmt), "y": TensorSpec("y", (2,), out or FxFormat(8, 4))}
    return Graph("d", ("x",), ("y",), t, (Node("fc", Op.DENSE, ("x",), "y", {"weight": w}, {}, acc),)).validate()


def test_refuses_formats_beyond_float64():
    with pytest.raises(FormatError, match="53"):
        to_onnx_model(_dense_graph(FxFormat(30, 2), FxFormat(30, 2)))
    with pytest.raises(FormatError, match="wider than 53"):
        to_onnx_model(_dense_graph(FxFormat(2, 1), FxFormat(54, 2), n=1))


def test_refuses_overflowing_accumulator():
    g = _dense_graph(FxFormat(8, 2), FxFormat(8, 2))
    narrow = g.nodes[0].replace(acc_fmt=FxFormat(8, 4))
    with pytest.raises(UnsupportedError, match="size_accumulators"):
        to_onnx_model(g.replace(nodes=(narrow,)))


def test_padded_pools_reshape_and_clip(tmp_path):
    """Ops random graphs do not produce: padded max/avg pooling, reshape, clip; ORT == interpreter."""
    from qfx.fixed.ops import avgpool_format

    fx = FxFormat(7, 3, rounding="RND", overflow="SAT")
    fr = FxFormat(1, -1, signed=False)  # code 1 == 1/4
    t = {
        "x": TensorSpec("x", (2, 5, 5), fx),
        "m": TensorSpec("m", (2, 3, 3), fx),
        "a": TensorSpec("a", (2, 4, 4), FxFormat(6, 2, rounding="RND_CONV", overflow="WRAP")),
        "r": TensorSpec("r", (4, 8), FxFormat(6, 2, rounding="RND_CONV", overflow="WRAP")),
        "c": TensorSpec("c", (4, 8), FxFormat(5, 1, True, "RND_INF", "SAT_SYM")),
    }
    nodes = (
        Node("mp", Op.MAXPOOL2D, ("x",), "m", attrs={"kernel": (3, 3), "stride": (2, 2), "padding": (1, 1)}),
        Node("ap", Op.AVGPOOL2D, ("m",), "a", {"recip": Constant(np.array([1]), fr)},
             {"kernel": (2, 2), "stride": (1, 1), "padding": (1, 1)}, avgpool_format(fx, fr, 4)),
        Node("rs", Op.RESHAPE, ("a",), "r", attrs={"shape": (4, 8)}),
        Node("cl", Op.CLIP, ("r",), "c", attrs={"lo": -20, "hi": 9}),
    )
    g = Graph("pools", ("x",), ("c",), t, nodes).validate()
    path = export_onnx(g, tmp_path / "p.onnx")
    _same(import_onnx(path), g)
    x = random_inputs(g, 200)
    np.testing.assert_array_equal(run_onnx_codes(path, g, x), run(g, x))


def test_only_float64_ops_are_used():
    """Exported graphs use only the documented ops; the FixedQuant body only ops with float64/int64/bool kernels."""
    from qfx.onnx.export import GRAPH_OPS
    from qfx.onnx.fixedquant import fixedquant_function

    seen = set()
    for seed in range(30):
        m = to_onnx_model(random_graph(seed))
        seen |= {n.op_type for n in m.graph.node if n.domain == ""}
        assert {n.domain for n in m.graph.node} <= {"", DOMAIN}
    assert seen <= GRAPH_OPS and {"Gemm", "MatMul", "Gather", "MaxPool"} <= seen
    body = {n.op_type for n in fixedquant_function().node}
    assert "Pow" not in body and body <= {"Constant", "Abs", "BitwiseAnd", "Greater", "Less", "Where", "ReduceProd",
                                          "Sub", "Neg", "Cast", "Mul", "Floor", "Equal", "Not", "And", "Or", "Add",
                                          "GreaterOrEqual", "LessOrEqual", "Min", "Max"}
