"""qfx.onnx.cleanup: shape and constant subgraphs folded, Identity/Dropout removed, QONNX domains normalized,
layout transposes folded; a cleaned plain-ONNX model computes exactly what the original does (onnxruntime)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfx.onnx import import_model
from qfx.onnx.cleanup import QONNX_DOMAIN, cleanup


def _model(nodes, inits, in_shape, out="y", opset=13, extra_opsets=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               *(helper.make_opsetid(d, 1) for d in extra_opsets)])


def _ort(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.astype(np.float32)})[0]


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_view_flatten_shape_subgraph_folds_to_static_reshape():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    w = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    m = _model(nodes, {"zero": np.array(0, np.int64), "ax0": np.array([0], np.int64),
                       "minus1": np.array([-1], np.int64), "w": w}, (3, 2, 2))
    c, rep = cleanup(m)
    assert _ops(c) == ["Reshape", "MatMul"]
    shape = {i.name: numpy_helper.to_array(i) for i in c.graph.initializer}[c.graph.node[0].input[1]]
    assert shape.tolist() == [1, -1]  # batch taken as 1; the importer ignores the batch entry
    assert any("Shape x1" in line for line in rep)
    x = np.random.default_rng(1).normal(size=(1, 3, 2, 2))
    np.testing.assert_array_equal(_ort(c, x), _ort(m, x))


def test_slice_shape_subgraph_constants_identities_and_dead_nodes():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "st", "en"], ["s0"]),
             helper.make_node("Concat", ["s0", "minus1"], ["shape"], axis=0),
             helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Reshape", ["xi", "shape"], ["flat"]),
             helper.make_node("Dropout", ["flat"], ["fd"]),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([9.0], np.float32))),
             helper.make_node("Sqrt", ["k"], ["sk"]),
             helper.make_node("Pow", ["sk", "two"], ["p"]),
             helper.make_node("Div", ["fd", "p"], ["y"]),
             helper.make_node("Relu", ["x"], ["unused"])]
    m = _model(nodes, {"st": np.array([0], np.int64), "en": np.array([1], np.int64),
                       "minus1": np.array([-1], np.int64), "two": np.array([2.0], np.float32),
                       "dead_init": np.zeros(3, np.float32)}, (2, 3))
    c, rep = cleanup(m)
    assert _ops(c) == ["Reshape", "Div"]
    assert "dead_init" not in {i.name for i in c.graph.initializer}
    assert any("Identity/Dropout" in line for line in rep) and any("reach no output" in line for line in rep)
    x = np.random.default_rng(2).normal(size=(1, 2, 3))
    np.testing.assert_array_equal(_ort(c, x), _ort(m, x))


@pytest.mark.parametrize("domain", ["", "onnx.brevitas", "finn.custom_op.general", QONNX_DOMAIN])
def test_qonnx_ops_moved_into_one_domain(domain):
    q = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], domain=domain, signed=1, narrow=0,
                         rounding_mode="ROUND")
    m = _model([q], {"s": np.array(0.25, np.float32), "z": np.array(0.0, np.float32),
                     "b": np.array(8.0, np.float32)}, (4,), extra_opsets=[domain] if domain else [])
    c, _ = cleanup(m)
    assert c.graph.node[0].domain == QONNX_DOMAIN
    assert QONNX_DOMAIN in {o.domain for o in c.opset_import}
    assert m.graph.node[0].domain == domain  # the caller's model is not modified
    g = import_model(m)
    assert g.tensor(g.inputs[0]).fmt.ap_type() == "ap_fixed<8,6,AP_RND_CONV,AP_SAT>"


def test_keras_style_channels_last_transposes_fold_into_interface_and_weights():
    """Transpose(NHWC->NCHW) -> Conv -> Relu -> Transpose(NCHW->NHWC) -> Flatten -> Gemm: the input transpose
    becomes the input layout (qfx.input_perm) and the output one moves into the Gemm weight rows."""
    r = np.random.default_rng(3)
    w = (np.round(r.normal(0, 1, (2, 3, 3, 3)) * 8) / 8).astype(np.float32)
    fc = (np.round(r.normal(0, 1, (2 * 4 * 4, 5)) * 8) / 8).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["rt"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    m = _model(nodes, {"w": w, "fc": fc}, (4, 4, 3))
    c, rep = cleanup(m)
    assert _ops(c) == ["Conv", "Relu", "Flatten", "Gemm"]
    props = {p.key: p.value for p in c.metadata_props}
    assert props["qfx.input_perm"] == "0,3,1,2"
    x = np.round(r.normal(0, 2, (1, 4, 4, 3)) * 4) / 4
    np.testing.assert_array_equal(_ort(c, x.transpose(0, 3, 1, 2)), _ort(m, x))
    from qfx.fixed import FxFormat
    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values

    g = import_model(m, input_fmt=FxFormat(8, 6))
    assert g.tensor(g.inputs[0]).shape == (3, 4, 4) and g.meta["input_perm"] == [0, 3, 1, 2]
    np.testing.assert_array_equal(output_values(g, run(g, input_codes(g, x))), _ort(m, x))


def test_large_constant_of_shape_is_left_alone_and_bad_constants_are_one_line():
    nodes = [helper.make_node("ConstantOfShape", ["big"], ["z"]),
             helper.make_node("Add", ["x", "y0"], ["y"])]
    m = _model(nodes, {"big": np.array([4096, 4096], np.int64), "y0": np.ones(3, np.float32)}, (3,))
    c, _ = cleanup(m)
    assert "ConstantOfShape" not in _ops(c)  # dead (reaches no output) and never materialized
    bad = _model([helper.make_node("Reshape", ["a", "s"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])],
                 {"a": np.ones(6, np.float32), "s": np.array([4, 4], np.int64)}, (3,))
    from qfx.errors import BadInputError

    with pytest.raises(BadInputError, match="cannot evaluate constant node"):
        cleanup(bad)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("case", ["layer_last", "layer_two_axes", "instance"])
def test_normalizations_become_their_steps_with_the_same_values(case, opset):
    """LayerNormalization (last axis; axis=1 of (N, C, L), i.e. two axes) and InstanceNormalization are written as
    ReduceMean/Sub/Mul/Sqrt/Div (+ scale, bias): onnxruntime gives the same values (float rounding apart)."""
    r = np.random.default_rng(3)
    shape = {"layer_last": (5, 8), "layer_two_axes": (3, 4), "instance": (3, 4, 5)}[case]
    if case == "instance":
        node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3, name="in")
        inits = {"s": r.uniform(0.5, 1.5, 3).astype(np.float32), "b": r.uniform(-1, 1, 3).astype(np.float32)}
    else:
        axis = -1 if case == "layer_last" else 1
        pshape = shape[-1:] if axis == -1 else shape
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-4, name="ln")
        inits = {"s": r.uniform(0.5, 1.5, pshape).astype(np.float32),
                 "b": r.uniform(-1, 1, pshape).astype(np.float32)}
    m = _model([node], inits, shape, opset=opset)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # a known rank for axis=1 / instance
    cleaned, report = cleanup(m)
    ops = _ops(cleaned)
    assert node.op_type not in ops and {"ReduceMean", "Sub", "Sqrt", "Div"} <= set(ops)
    assert any("LayerNormalization/InstanceNormalization" in line for line in report)
    x = r.normal(0, 2, (2, *shape)).astype(np.float32)
    np.testing.assert_allclose(_ort(cleaned, x), _ort(m, x), rtol=1e-4, atol=1e-4)


def test_normalization_with_read_statistics_is_left_alone():
    r = np.random.default_rng(4)
    node = helper.make_node("LayerNormalization", ["x", "s"], ["ln", "mean"], axis=-1, name="ln")
    add = helper.make_node("Add", ["ln", "mean"], ["y"])
    m = _model([node, add], {"s": r.uniform(0.5, 1.5, 6).astype(np.float32)}, (6,), opset=17)
    assert "LayerNormalization" in _ops(cleanup(m)[0])


def test_token_linears_become_1x1_convs_with_the_same_values():
    """MatMul + Add on (N, L, d) and a per-feature Mul/Add (LayerNorm's affine) become channel-first 1x1 Conv /
    per-channel ops between Transposes; consecutive inverse Transposes cancel; onnxruntime: same values."""
    r = np.random.default_rng(5)
    w1, b1 = r.normal(0, .5, (6, 8)).astype(np.float32), r.normal(0, .1, 8).astype(np.float32)
    g1, w2 = r.uniform(.5, 1.5, 8).astype(np.float32), r.normal(0, .5, (8, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["b1", "m1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("Mul", ["r1", "g1"], ["s1"]),
             helper.make_node("MatMul", ["s1", "w2"], ["y"])]
    m = _model(nodes, {"w1": w1, "b1": b1, "g1": g1, "w2": w2}, (5, 6))
    cleaned, report = cleanup(m)
    ops = _ops(cleaned)
    assert "MatMul" not in ops and ops.count("Conv") == 2 and any("tokens" in line for line in report)
    assert ops.count("Transpose") <= 2  # the inner pairs cancelled (what is left may fold into the interface)
    x = r.normal(0, 1, (3, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(_ort(cleaned, x.transpose(0, 2, 1) if _input_perm(cleaned) else x),
                               _ort(m, x), rtol=1e-5, atol=1e-5)


def _input_perm(model) -> bool:
    return any(p.key.startswith("qfx.input_perm") for p in model.metadata_props)


def test_sum_and_lrn_become_their_steps_with_the_same_values():
    """Sum of three tensors becomes two Adds; LRN (AlexNet's size 5) a square, a 1x1 band Conv, Pow, Mul."""
    r = np.random.default_rng(6)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Sum", ["a", "b", "x"], ["s"], name="sum"),
             helper.make_node("LRN", ["s"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=2.0, name="lrn")]
    m = _model(nodes, {}, (7, 4, 4), opset=11)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    cleaned, report = cleanup(m)
    ops = _ops(cleaned)
    assert "Sum" not in ops and "LRN" not in ops and ops.count("Add") >= 3 and "Conv" in ops and "Pow" in ops
    assert any("LRN" in line for line in report)
    x = r.normal(0, 2, (2, 7, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_ort(cleaned, x), _ort(m, x), rtol=1e-5, atol=1e-6)


def test_folded_scalar_constants_keep_their_rank():
    """A Constant scalar (Gather's index of torch's x[:, 0]) folds to a 0-d initializer: a (1,) one would keep the
    gathered axis and break the ranks after it."""
    idx = helper.make_node("Constant", [], ["i"], value=numpy_helper.from_array(np.array(0, np.int64)))
    nodes = [idx, helper.make_node("Gather", ["x", "i"], ["g"], axis=1), helper.make_node("Relu", ["g"], ["y"])]
    m = _model(nodes, {}, (5, 6))
    cleaned, _ = cleanup(m)
    init = {i.name: numpy_helper.to_array(i) for i in cleaned.graph.initializer}
    assert init["i"].shape == ()
    x = np.random.default_rng(7).normal(size=(2, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(_ort(cleaned, x), _ort(m, x))
    assert _ort(cleaned, x).shape == (2, 6)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", ["ReduceL2", "ReduceSumSquare", "ReduceL1"])
def test_norm_reductions_become_sums_with_the_same_values(op, opset):
    """ReduceL2 (F.normalize's norm), ReduceSumSquare and ReduceL1 become a ReduceSum of x * x (then Sqrt) or of |x|."""
    kw = {"axes": [1], "keepdims": 1}
    inits = {}
    if opset >= 18:  # axes as an input
        kw = {"keepdims": 1}
        inits = {"ax": np.array([1], np.int64)}
    node = helper.make_node(op, ["x", "ax"] if opset >= 18 else ["x"], ["y"], name="norm", **kw)
    m = _model([node], inits, (6, 3), opset=opset)
    cleaned, _ = cleanup(m)
    assert op not in _ops(cleaned) and "ReduceSum" in _ops(cleaned)
    x = np.random.default_rng(8).normal(size=(2, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(_ort(cleaned, x), _ort(m, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eq,shapes,opset", [("bqd,bkd->bqk", ((5, 4), (5, 4)), 13), ("bqk,bkd->bqd", ((5, 5), (5, 4)), 12),
                                             ("bnc->bcn", ((5, 4),), 17), ("bnc,bnc->bn", ((5, 4), (5, 4)), 13),
                                             ("bi,bj->bij", ((3,), (4,)), 13), ("bnc->bc", ((5, 4),), 12)])
def test_einsum_becomes_its_steps_with_the_same_values(eq, shapes, opset):
    """Each operand is a MatMul of the input (the model's own activations), the Einsum written as qfx ops."""
    r = np.random.default_rng(3)
    nodes, inits, ins = [], {}, []
    for k, sh in enumerate(shapes):
        inits[f"w{k}"] = r.normal(size=(6, sh[-1])).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["x" if len(sh) == 2 else "x0", f"w{k}"], [f"o{k}"]))
        ins.append(f"o{k}")
    if any(len(sh) == 1 for sh in shapes):  # (N, 6) input for the rank-2 operands
        nodes.insert(0, helper.make_node("ReduceMean", ["x"], ["x0"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("Einsum", ins, ["y"], equation=eq))
    m = _model(nodes, inits, (5, 6), opset=opset)
    x = r.normal(size=(3, 5, 6))
    cleaned, report = cleanup(m)
    assert "Einsum" not in _ops(cleaned) and any("Einsum" in line for line in report)
    np.testing.assert_allclose(_ort(cleaned, x.transpose(0, 2, 1) if _input_perm(cleaned) else x), _ort(m, x),
                               rtol=1e-5, atol=1e-5)


def test_einsum_outside_the_forms_and_tile_of_the_batch_are_left_alone():
    m = _model([helper.make_node("Einsum", ["x"], ["d"], equation="bii->bi"),
                helper.make_node("Tile", ["d", "reps"], ["y"])], {"reps": np.array([2, 1], np.int64)}, (4, 4))
    cleaned, _ = cleanup(m)
    assert _ops(cleaned) == ["Einsum", "Tile"]
    with pytest.raises(Exception) as ei:
        import_model(cleaned)
    assert "\n" not in str(ei.value) and "Einsum" in str(ei.value)


@pytest.mark.parametrize("permuted", [False, True])
def test_flat_gather_of_a_batch_one_tensor_is_read_per_sample(permuted):
    """The dynamo exporter writes ``as_strided`` as Gather(Reshape(x, [-1]), I) with a constant I over the batch-1
    tensor: arange indices become one Reshape, any other indices a Reshape to (1, -1) and a Gather along axis 1;
    the values are onnxruntime's on the original graph, and the arange form imports (a permuting Gather is refused
    by the importer in one line, as any non-slice Gather)."""
    from qfx.errors import UnsupportedError
    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx

    idx = np.arange(12).reshape(1, 3, 2, 2)
    if permuted:
        idx = np.ascontiguousarray(idx.transpose(0, 1, 3, 2))
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["a", "flat"], ["f"]),
             helper.make_node("Gather", ["f", "idx"], ["g"], axis=0, name="as_strided"),
             helper.make_node("Mul", ["g", "two"], ["y"])]
    m = _model(nodes, {"flat": np.array([-1], dtype=np.int64), "idx": idx.astype(np.int64),
                       "two": np.array(2.0, dtype=np.float32)}, (3, 2, 2))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    cleaned, report = cleanup(m)
    assert any("as_strided" in line for line in report)
    assert _ops(cleaned).count("Gather") == int(permuted)
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(_ort(cleaned, x), _ort(m, x))
    xs = np.random.default_rng(4).normal(0, 1, (8, 3, 2, 2)).astype(np.float32)
    if permuted:
        with pytest.raises(UnsupportedError, match="not one ascending run"):
            import_model(quantize_onnx(m, xs)[0])
        return
    g = import_model(quantize_onnx(m, xs)[0])
    got = output_values(g, run(g, input_codes(g, xs)))
    want = np.concatenate([_ort(m, xs[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(got, want, atol=0.05)
