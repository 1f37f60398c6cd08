"""``matmul`` (tensor x tensor product, attention's Q @ K^T and P @ V): golden vs numpy, onnxruntime (two graph
inputs, which the every-op test skips), C-sim and RTL cosim on the op's own samples, and the ONNX importer on a tiny
hand-built attention graph."""
from __future__ import annotations

import numpy as np
import pytest

from qfx.errors import BadInputError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph, Node, TensorSpec
from qfx.ir.interpret import run
from qfx.ops import REGISTRY
from qfx.ops.matmul import matmul_acc_format
from qfx.sim.csim import make_inputs


def _samples(n: int = 6) -> list[Graph]:
    return [REGISTRY["matmul"].sample(np.random.default_rng(70 + s)) for s in range(n)]


def _graph(sa, sb, sy, fa=FxFormat(6, 3), fb=FxFormat(5, 2), fy=FxFormat(16, 10)) -> Graph:
    t = {"a": TensorSpec("a", sa, fa), "b": TensorSpec("b", sb, fb), "y": TensorSpec("y", sy, fy)}
    k = sa[-1] if sa else 1
    return Graph("mm", ("a", "b"), ("y",), t,
                 (Node("mm", "matmul", ("a", "b"), "y", acc_fmt=matmul_acc_format(fa, fb, k)),)).validate()


def test_golden_is_exact_product_then_one_cast() -> None:
    g = _graph((2, 3, 4), (2, 4, 2), (2, 3, 2))
    x = make_inputs(g, 16, 1)
    got = run(g, x)
    exact = np.matmul(x["a"].astype(object), x["b"].astype(object))  # codes at 2**-(3 + 3), y's own LSB
    assert np.array_equal(got, exact.astype(np.int64)) and np.abs(got).max() > 64
    assert matmul_acc_format(FxFormat(6, 3), FxFormat(5, 2), 4).width == 13  # 4 * 2**5 * 2**4 -> 12 bits + sign
    narrow = _graph((2, 3, 4), (2, 4, 2), (2, 3, 2), fy=FxFormat(6, 2, rounding="RND", overflow="SAT"))
    from qfx.fixed import kernels as K

    want = K.cast(exact.astype(np.int64), FxFormat(13, 7), FxFormat(6, 2, rounding="RND", overflow="SAT"))
    assert np.array_equal(run(narrow, x), want)


def test_shape_rules_refuse_mismatches() -> None:
    with pytest.raises(BadInputError, match="matmul"):
        from qfx.ir.passes import run_flow

        run_flow(_graph((3, 4), (5, 2), (3, 2)), ("check_formats",))
    with pytest.raises(BadInputError, match="matmul"):
        from qfx.ir.passes import run_flow

        run_flow(_graph((2, 3, 4), (3, 4, 2), (2, 3, 2)), ("check_formats",))


def test_onnxruntime_matches_interpreter_two_inputs() -> None:
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import ort_session, values_to_codes

    for g in _samples():
        x = make_inputs(g, 64, 2)
        sess = ort_session(to_onnx_model(g).SerializeToString())
        feed = {i.name: g.tensor(i.name).fmt.from_int(x[i.name]) for i in sess.get_inputs()}
        got = values_to_codes(sess.run(None, feed)[0], g.tensor("y").fmt)
        np.testing.assert_array_equal(got, run(g, x))


@pytest.mark.gxx
def test_matmul_csim_bit_exact(tmp_path) -> None:
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for k, g in enumerate(_samples(4)):
        d = tmp_path / f"mm{k}"
        d.mkdir()
        hls.write_project(g.replace(name=f"mm_{k}"), d)
        dirs.append(d)
    reps = run_csim_batch(dirs, n_vectors=200, seed=4)
    assert all(r.passed for r in reps), [r.summary() for r in reps]


@pytest.mark.verilator
def test_matmul_rtl_cosim_bit_exact(tmp_path) -> None:
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for k, g in enumerate(_samples(3)):
        d = tmp_path / f"mm{k}"
        rtl.write_project(g.replace(name=f"mm_{k}"), d)
        dirs.append(d)
    reps = run_cosim_many(dirs, n_vectors=100, seed=6)
    assert all(r.ok for r in reps), [(r.mismatches, r.received, r.vectors) for r in reps]


def _attention_model(softmax: bool):
    from onnx import TensorProto as T, helper

    s, d = 4, 3
    ins = [helper.make_tensor_value_info(n, T.FLOAT, ["N", s, d]) for n in "qkv"]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "c"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1) if softmax else helper.make_node("Relu", ["ss"], ["p"]),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    g = helper.make_graph(nodes, "att", ins, [helper.make_tensor_value_info("y", T.FLOAT, ["N", s, d])],
                          [helper.make_tensor("c", T.FLOAT, [], [0.5])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_importer_attention_matmuls_vs_onnxruntime() -> None:
    """Q @ K^T, scaling, relu, @ V: both products become matmul nodes; the quantized model tracks float ORT."""
    import onnxruntime as ort

    from qfx.onnx.importer import import_model, input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx

    m = _attention_model(softmax=False)
    rng = np.random.default_rng(0)
    cal = {n: rng.normal(size=(64, 4, 3)).astype(np.float32) for n in "qkv"}
    g = import_model(quantize_onnx(m, cal)[0])
    assert [n.op.value for n in g.nodes].count("matmul") == 2
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, cal)[0]
    feeds = {"q": cal["q"], "kt": cal["k"], "v": cal["v"]}  # K^T is folded into the input (input_codes permutes)
    codes = {t: input_codes(g, feeds[t], k) for k, t in enumerate(g.inputs)}
    got = output_values(g, run(g, codes)).reshape(ref.shape)
    err = np.abs(got - ref).max()
    assert err < 0.25 * np.abs(ref).max() / 4, err  # 8-bit activations: a few output LSBs, not garbage
    assert np.corrcoef(got.reshape(-1), ref.reshape(-1))[0, 1] > 0.99


def test_importer_attention_with_softmax_over_rows_vs_onnxruntime() -> None:
    """softmax(Q @ K^T * c) @ V: the softmax runs over each row of the (4, 4) score matrix."""
    import onnxruntime as ort

    from qfx.onnx.importer import import_model, input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx

    m = _attention_model(softmax=True)
    rng = np.random.default_rng(0)
    cal = {n: rng.normal(size=(64, 4, 3)).astype(np.float32) for n in "qkv"}
    g = import_model(quantize_onnx(m, cal)[0])
    sm = [n for n in g.nodes if n.op.value == "softmax"]
    assert len(sm) == 1 and g.tensor(sm[0].output).shape == (4, 4)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, cal)[0]
    feeds = {"q": cal["q"], "kt": cal["k"], "v": cal["v"]}
    codes = {t: input_codes(g, feeds[t], k) for k, t in enumerate(g.inputs)}
    got = output_values(g, run(g, codes)).reshape(ref.shape)
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    assert np.corrcoef(got.reshape(-1), ref.reshape(-1))[0, 1] > 0.99
