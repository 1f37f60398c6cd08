"""Real-world QONNX patterns import unmodified and match QONNX's own executor (issue 14).

Graphs are built here with onnx.helper (and one with Brevitas ``export_qonnx``), so nothing needs the shared model
folder. The reference is ``qonnx.core.onnx_exec.execute_onnx`` (float32, node by node); qfx executors (interpreter,
onnxruntime on the exported file) must agree with each other bit for bit, and with QONNX on (nearly) every code.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfx.errors import BadInputError, QfxError, UnsupportedError
from qfx.fixed import FxFormat
from qfx.ir import run
from qfx.onnx import import_model, to_onnx_model
from qfx.onnx.importer import input_codes, output_values, parse_qonnx_datatype
from qfx.onnx.runtime import run_onnx_codes

QD = "qonnx.custom_op.general"


class B:
    """Builds an ONNX/QONNX graph with float32 initializers."""

    def __init__(self, in_shape, in_name="x"):
        self.nodes, self.inits, self.k = [], [], 0
        self.in_shape, self.in_name = tuple(in_shape), in_name
        self.annotations: list = []
        self.shapes: dict[str, list[int]] = {}  # value infos (QONNX's shape inference needs some on custom ops)

    def c(self, arr, dtype=np.float32):
        self.k += 1
        name = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def op(self, op, ins, domain="", **attrs):
        self.k += 1
        out = f"{op.lower()}{self.k}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{self.k}", domain=domain, **attrs))
        return out

    def quant(self, x, scale, bits, signed=1, narrow=0, mode="ROUND", domain=QD):
        return self.op("Quant", [x, self.c(scale), self.c(0.0), self.c(float(bits))], domain=domain,
                       signed=signed, narrow=narrow, rounding_mode=mode)

    def bipolar(self, x, scale=1.0):
        return self.op("BipolarQuant", [x, self.c(scale)], domain=QD)

    def model(self, out, opset=13, qonnx_opset=1):
        g = helper.make_graph(self.nodes, "t", [helper.make_tensor_value_info(self.in_name, TensorProto.FLOAT,
                                                                              [1, *self.in_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits,
                              value_info=[helper.make_tensor_value_info(k, TensorProto.FLOAT, v)
                                          for k, v in self.shapes.items()])
        for t, dt in self.annotations:
            a = onnx.TensorAnnotation()
            a.tensor_name = t
            kv = a.quant_parameter_tensor_names.add()
            kv.key, kv.value = "finn_datatype", dt
            g.quantization_annotation.append(a)
        domains = {n.domain for n in self.nodes} - {""}
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)] +
                                 [helper.make_opsetid(d, qonnx_opset) for d in sorted(domains)])


def qonnx_run(model, x: np.ndarray) -> np.ndarray:
    """QONNX's executor, one sample at a time (float32)."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(model))
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    shape = [d.dim_value for d in mw.graph.input[0].type.tensor_type.shape.dim]
    return np.stack([np.asarray(execute_onnx(mw, {iname: x[i:i + 1].astype(np.float32).reshape(shape)})[oname],
                                dtype=np.float64).reshape(-1) for i in range(len(x))])


def compare(model, x: np.ndarray, input_fmt=None, min_equal=1.0):
    """Import, run on x (float inputs), compare with QONNX; check interpreter == onnxruntime; returns the graph."""
    g = import_model(model, input_fmt=input_fmt)
    codes = input_codes(g, x)
    y = run(g, codes)
    got = output_values(g, y).reshape(len(x), -1)
    ref = qonnx_run(model, x)
    fout = g.tensor(g.outputs[0]).fmt
    scale = np.asarray((g.meta.get("output_scale") or [None])[0] or [1.0])
    lsb = fout.step * (np.repeat(scale, got.shape[1] // scale.size) if scale.size > 1 else scale)
    # outputs with no output Quant (float Gemm/Conv results) are compared at float32's precision, not the LSB
    diff = np.abs(got - ref) / np.maximum(lsb, np.abs(ref).max() * 2.0 ** -20)
    equal = float(np.mean(diff < 0.5))
    assert equal >= min_equal, f"only {equal:.4f} of output codes equal QONNX's (max diff {diff.max():.3g} LSB)"
    assert diff.max() <= 1.001, f"an output differs from QONNX by {diff.max():.3g} LSB"
    # every qfx executor computes the same bits: the exported ONNX under onnxruntime equals the interpreter
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), y)
    return g


def _rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------- TFC pattern
def tfc_like(seed=0, domain="onnx.brevitas"):
    """FINN/Brevitas TFC: view(N,-1) shape subgraph, 2x-1 pre-processing, ternary Quant, MatMul + BatchNorm + Quant,
    and a float BatchNorm tail written as Sub/Div(Pow)/Mul/Add."""
    r = _rng(seed)
    b = B((1, 4, 4))
    s = b.op("Shape", ["x"])
    g0 = b.op("Gather", [s, b.c(0, np.int64)], axis=0)
    u = b.op("Unsqueeze", [g0], axes=[0])
    cat = b.op("Concat", [u, b.c([-1], np.int64)], axis=0)
    h = b.op("Reshape", ["x", cat])
    h = b.op("Sub", [b.op("Mul", [h, b.c(2.0)]), b.c([1.0])])
    h = b.quant(h, 1.0, 2, narrow=1, domain=domain)
    for i, (n_in, n_out) in enumerate(((16, 12), (12, 6))):
        w = b.op("Transpose", [b.quant(b.c(r.normal(0, 1, (n_out, n_in))), 1.0, 2, narrow=1, domain=domain)],
                 perm=[1, 0])
        h = b.op("MatMul", [h, w])
        if i == 0:
            h = b.op("BatchNormalization", [h, b.c(r.uniform(0.5, 2, n_out)), b.c(r.normal(0, 0.5, n_out)),
                                            b.c(r.normal(0, 1, n_out)), b.c(r.uniform(1, 5, n_out))], epsilon=1e-5)
            h = b.quant(h, 1.0, 2, narrow=1, domain=domain)
    h = b.op("Sub", [h, b.c([0.37])])
    h = b.op("Div", [h, b.op("Pow", [b.c([7.3]), b.c(0.5)])])
    h = b.op("Add", [b.op("Mul", [h, b.c([0.81])]), b.c([-0.21])])
    return b.model(h, opset=11)


def test_tfc_pattern_imports_and_matches_qonnx():
    fin = FxFormat(8, 0, False, "RND_CONV", "SAT")
    m = tfc_like()
    with pytest.raises(BadInputError, match="--input-format"):
        import_model(m)  # a float input nothing quantizes: the error names the flag
    x = fin.from_int(_rng(1).integers(0, 256, size=(150, 1, 4, 4)))
    g = import_model(m, input_fmt=fin)
    ops = [n.op.value for n in g.nodes]
    assert ops == ["flatten", "scale_shift", "dense", "scale_shift", "dense", "scale_shift"], ops
    report = " ".join(g.meta["import_report"])
    assert "Shape x1" in report and "moved" in report
    # float output (the BN tail): compare values, not codes
    got = output_values(g, run(g, input_codes(g, x)))
    ref = qonnx_run(m, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    # the ternary layers themselves agree code for code: cut after the BN+Quant
    cut = onnx.ModelProto()
    cut.CopyFrom(m)
    q_out = [n for n in cut.graph.node if n.op_type == "Quant" and n.input[0].startswith("batchnorm")][0].output[0]
    cut.graph.output[0].name = q_out
    compare(cut, x, input_fmt=fin)


def test_tfc_pattern_from_cli(tmp_path, capsys):
    from qfx.cli import main

    src = tmp_path / "tfc.onnx"
    onnx.save(tfc_like(), src)
    assert main(["export", str(src), "--to", "onnx", "-o", str(tmp_path / "a.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--input-format" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(src), "--to", "onnx", "-o", str(tmp_path / "a.onnx"), "--input-format",
                 "ap_ufixed<8,0,AP_RND_CONV,AP_SAT>"]) == 0
    assert "[onnx import]" in capsys.readouterr().out
    assert main(["export", str(src), "--to", "onnx", "-o", str(tmp_path / "b.onnx"), "--input-format",
                 "ap_fixd<8,0>"]) == 2
    assert "cannot parse" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- dyadic requant
def test_non_power_of_two_scales_per_tensor_and_per_channel():
    r = _rng(2)
    b = B((6,))
    h = b.quant("x", 0.0173, 8)  # non-power-of-two input scale: the IR input holds the Quant's codes
    w = b.quant(b.c(r.normal(0, 0.5, (5, 6))), r.uniform(0.01, 0.06, (5, 1)), 5, narrow=1)  # per channel
    h = b.op("Gemm", [h, w, b.c(r.normal(0, 0.3, 5))], transB=1)  # float bias: part of the requantizer shift
    h = b.quant(b.op("Relu", [h]), 0.0511, 4, signed=0)
    w2 = b.quant(b.c(r.normal(0, 0.5, (3, 5))), 0.0371, 6)
    y = b.quant(b.op("Gemm", [h, w2], transB=1), np.array([0.021, 0.03, 0.017], dtype=np.float32), 8)
    x = r.normal(0, 1.2, (400, 6))
    g = compare(b.model(y), x, min_equal=0.99)
    assert g.meta["input_scale"] == pytest.approx(0.0173)
    assert g.meta["output_scale"][0] == pytest.approx([0.021, 0.03, 0.017])
    assert [n.op.value for n in g.nodes] == ["dense", "scale_shift", "relu", "dense", "scale_shift"]
    rq = [n for n in g.nodes if n.op.value == "scale_shift"]
    assert all(n.consts["scale"].fmt.width >= 20 for n in rq)  # REQUANT_BITS significant bits


def test_conv_batchnorm_relu_requant_per_channel():
    r = _rng(3)
    b = B((2, 6, 6))
    h = b.quant("x", 0.043, 6)
    w = b.quant(b.c(r.normal(0, 0.4, (4, 2, 3, 3))), r.uniform(0.02, 0.08, (4, 1, 1, 1)), 4, narrow=1)
    h = b.op("Conv", [h, w], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    gamma = np.array([1.3, -0.7, 0.9, 2.1])  # a negative BN scale flips that channel's sign
    h = b.op("BatchNormalization", [h, b.c(gamma), b.c(r.normal(0, 0.2, 4)), b.c(r.normal(0, 0.2, 4)),
                                    b.c(r.uniform(0.5, 2, 4))], epsilon=1e-5)
    h = b.op("Relu", [h])
    h = b.op("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    y = b.quant(h, 0.093, 5, signed=0)
    g = compare(b.model(y), r.normal(0, 1.0, (200, 2, 6, 6)), min_equal=0.99)
    assert "scale_shift" in [n.op.value for n in g.nodes]


def test_requant_bits_trade_precision():
    """Fewer requantizer bits: still one scale_shift per rounding, and the qfx executors still agree bit for bit."""
    r = _rng(4)
    b = B((6,))
    h = b.quant("x", 0.0173, 8)
    w = b.quant(b.c(r.normal(0, 0.5, (5, 6))), 0.031, 5)
    y = b.quant(b.op("Gemm", [h, w], transB=1), 0.0511, 6)
    g8 = import_model(b.model(y), requant_bits=8)
    g24 = import_model(b.model(y))
    s8, s24 = (next(n for n in g.nodes if n.op.value == "scale_shift").consts["scale"].fmt.width for g in (g8, g24))
    assert s8 < s24
    x = g8.tensor(g8.inputs[0]).fmt.to_int(r.normal(0, 60, (300, 6)))
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g8).SerializeToString(), g8, x), run(g8, x))


# ---------------------------------------------------------------------------------------------- bipolar
def test_bipolar_weights_input_and_sign_activation():
    r = _rng(5)
    b = B((7,))
    h = b.bipolar("x")  # the input itself: IR input codes are +-1
    w = b.bipolar(b.c(r.normal(0, 1, (6, 7))))
    h = b.op("Gemm", [h, w, b.quant(b.c(r.integers(-3, 4, 6).astype(float)), 1.0, 4)], transB=1)
    h = b.op("BatchNormalization", [h, b.c(r.choice([-1.5, 0.8, 1.1], 6)), b.c(r.normal(0, 1, 6)),
                                    b.c(r.normal(0, 1, 6)), b.c(r.uniform(1, 3, 6))], epsilon=1e-5)
    y = b.bipolar(h)  # sign of an affine: a threshold per channel
    x = r.normal(0, 1, (300, 7))
    g = compare(b.model(y), x)
    assert g.meta["input_quant"] == "bipolar"
    assert set(np.unique(run(g, input_codes(g, x)))) <= {-1, 1}


def test_signed_one_bit_quant_is_bipolar():
    b = B((5,))
    y = b.quant(b.quant("x", 0.25, 8), 0.5, 1)
    g = compare(b.model(y), _rng(6).normal(0, 1, (100, 5)))
    assert set(np.unique(output_values(g, run(g, input_codes(g, _rng(6).normal(0, 1, (100, 5))))))) <= {-0.5, 0.5}


# ---------------------------------------------------------------------------------------------- pooling, layout
@pytest.mark.parametrize("version", [1, 2])
def test_averagepool_trunc(version):
    r = _rng(7)
    b = B((3, 6, 6))
    h = b.quant("x", 0.25, 6, signed=0)
    h = b.op("AveragePool", [h], kernel_shape=[3, 3], strides=[3, 3])  # 1/9: the window sum, 1/9 in the view
    if version == 1:
        h = b.op("Trunc", [h, b.c(0.25 / 9), b.c(0.0), b.c(10.0), b.c(6.0)], domain=QD, rounding_mode="FLOOR")
    else:
        h = b.op("Trunc", [h, b.c(0.25 / 9), b.c(0.0), b.c(10.0), b.c(0.25 / 9 * 16), b.c(6.0)], domain=QD,
                 rounding_mode="FLOOR", signed=0, narrow=0)
    y = b.quant(h, 0.29, 6)  # (a power-of-two scale here makes exact ties that QONNX's float32 rounding decides)
    g = compare(b.model(y, qonnx_opset=version), np.abs(r.normal(0, 4, (150, 3, 6, 6))))
    assert "avgpool2d" in [n.op.value for n in g.nodes]


def test_channels_last_conv_maxpool_and_grouped_conv():
    r = _rng(8)
    b = B((6, 6, 4))  # NHWC input
    h = b.quant("x", 0.125, 6)
    b.shapes[h] = [1, 6, 6, 4]
    w = b.quant(b.c(r.normal(0, 0.5, (4, 3, 3, 2))), 0.0625, 4)  # (O, kh, kw, C/g): grouped, channels last
    b.shapes[w] = [4, 3, 3, 2]
    h = b.op("Conv", [h, w], domain="qonnx.custom_op.channels_last", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             group=2, strides=[1, 1], dilations=[1, 1])
    b.shapes[h] = [1, 6, 6, 4]
    h = b.quant(b.op("Relu", [h]), 0.25, 5, signed=0)
    b.shapes[h] = [1, 6, 6, 4]
    h = b.op("MaxPool", [h], domain="qonnx.custom_op.channels_last", kernel_shape=[2, 2], strides=[2, 2],
             pads=[0, 0, 0, 0])
    h = b.op("Flatten", [h], axis=1)  # NHWC flatten: folded into the MatMul rows
    y = b.quant(b.op("MatMul", [h, b.quant(b.c(r.normal(0, 0.3, (36, 3))), 0.125, 5)]), 0.25, 8)
    g = compare(b.model(y), r.normal(0, 2, (100, 6, 6, 4)))
    assert g.meta["input_perm"] == [0, 3, 1, 2]
    assert g.tensor(g.inputs[0]).shape == (4, 6, 6)
    assert [n.op.value for n in g.nodes] == ["conv2d", "relu", "maxpool2d", "flatten", "dense"]


def test_quant_in_default_domain_and_annotation_input_format():
    r = _rng(9)
    b = B((4,))
    b.annotations.append(("x", "INT4"))
    w = b.quant(b.c(r.normal(0, 0.5, (3, 4))), 0.125, 4, domain="")  # older Brevitas: default domain
    y = b.quant(b.op("Gemm", ["x", w], transB=1), 0.25, 8, domain="")
    x = r.integers(-8, 8, (100, 4)).astype(float)
    g = compare(b.model(y), x)
    assert g.tensor(g.inputs[0]).fmt == FxFormat(4, 4, True)


@pytest.mark.parametrize("name,fmt", [("UINT8", FxFormat(8, 8, False)), ("INT4", FxFormat(4, 4, True)),
                                      ("BIPOLAR", FxFormat(2, 2, True)), ("BINARY", FxFormat(1, 1, False)),
                                      ("FIXED<8,4>", FxFormat(8, 4, True)), ("UFIXED<6,-1>", FxFormat(6, -1, False)),
                                      ("FLOAT32", None), ("SCALEDINT<8>", None)])
def test_qonnx_datatypes(name, fmt):
    assert parse_qonnx_datatype(name) == fmt


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("op,domain,what,attrs", [
    ("Softmax", "", "softmax takes at most", {"axis": -1}), ("MultiThreshold", QD, "at most 12 bits", {"out_dtype": "UINT2"}),
    ("FloatQuant", QD, "at most 12 bits", {}), ("Sigmoid", "", "at most 12 bits", {}),
    ("Sin", "", "cut the model", {}), ("LeakyRelu", "", "at most 12 bits", {"alpha": 0.1}),
    ("Resize", "", "nearest or linear mode", {"mode": "cubic"}), ("DepthToSpace", "", "DepthToSpace", {"blocksize": 3}),
])
def test_unsupported_ops_refused_in_one_line(op, domain, what, attrs, tmp_path, capsys):
    b = B((4, 2, 2))
    h = b.quant("x", 0.25, 16 if op in ("LeakyRelu", "MultiThreshold", "FloatQuant", "Sigmoid", "Softmax") else 8)
    ins = [h, "", b.c([1.0, 1.0, 1.5, 1.5])] if op == "Resize" else [h]
    if op == "MultiThreshold":
        ins.append(b.c(np.array([[0.0, 1.0, 2.0]])))
    if op == "FloatQuant":
        ins += [b.c(np.array(1.0)), b.c(np.array(4.0)), b.c(np.array(3.0)), b.c(np.array(7.0)), b.c(np.array(448.0))]
    b.k += 1
    b.nodes.append(helper.make_node(op, ins, ["y"], name=f"my_{op}", domain=domain, **attrs))
    m = b.model("y")
    with pytest.raises(UnsupportedError) as ei:
        import_model(m)
    msg = str(ei.value)
    assert "\n" not in msg and op in msg and f"my_{op}" in msg and what in msg
    from qfx.cli import main

    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    assert main(["export", str(p), "--to", "onnx", "-o", str(tmp_path / "o.onnx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_concat_with_constants_at_the_ends_adds_them_and_between_refused():
    """A constant before/after the activations (a ViT's class token) is concatenated exactly (zero padding and a
    per-element shift); one between two activations is refused in one line."""
    b = B((4,))
    h = b.quant("x", 0.25, 8)
    c0 = np.array([[0.5, -1.25, 2.0, 0.75]])
    y = b.op("Concat", [b.c(c0), h, b.c(np.ones((1, 2)))], axis=1)
    g = import_model(b.model(y))
    x = _rng(3).uniform(-8, 8, (16, 4))
    got = output_values(g, run(g, input_codes(g, x)))
    want = np.concatenate([np.repeat(c0, 16, 0), np.clip(np.round(x / 0.25), -128, 127) * 0.25, np.ones((16, 2))], 1)
    np.testing.assert_array_equal(got, want)
    b = B((4,))
    h = b.quant("x", 0.25, 8)
    y = b.op("Concat", [h, b.c(np.ones((1, 4))), h], axis=1)
    with pytest.raises(UnsupportedError, match=r"Concat node 'Concat_\d+': constants between activations"):
        import_model(b.model(y))


def test_leakyrelu_resize_concat_depthtospace_transpose():
    """Ops with registry counterparts: LeakyRelu -> lut, Resize -> upsample2d, Concat -> concat (per-channel views
    concatenated), DepthToSpace -> reshape/transpose/reshape, Transpose -> transpose."""
    from qfx.ops import REGISTRY

    if not {"lut", "upsample2d", "concat", "transpose"} <= set(REGISTRY):
        pytest.skip("gather/lut registry ops not available")
    r = _rng(12)
    b = B((2, 3, 3))
    h = b.quant("x", 0.125, 6)
    w = b.quant(b.c(r.normal(0, 0.5, (4, 2, 3, 3))), r.uniform(0.02, 0.06, (4, 1, 1, 1)), 5)
    # scales with no small rational ratios: exact ties (decided by float32 noise in QONNX) would be coincidences
    h = b.quant(b.op("Conv", [h, w], pads=[1, 1, 1, 1], kernel_shape=[3, 3]), 0.0713, 6)
    a = b.quant(b.op("LeakyRelu", [h], alpha=0.1015625), 0.0517, 6)
    a = b.op("Resize", [a, "", b.c([1.0, 1.0, 2.0, 2.0])], mode="nearest",
             coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    c = b.op("Resize", [h, "", b.c([1.0, 1.0, 2.0, 2.0])], mode="nearest")  # half_pixel, round_prefer_floor
    h = b.op("Concat", [a, c], axis=1)  # different scales per operand: a per-channel view
    h = b.op("DepthToSpace", [h], blocksize=2, mode="CRD")
    h = b.op("Transpose", [h], perm=[0, 1, 3, 2])
    y = b.quant(h, 0.0619, 7)
    g = compare(b.model(y, opset=13), r.normal(0, 2, (100, 2, 3, 3)), min_equal=0.99)
    ops = [n.op.value for n in g.nodes]
    assert {"lut", "upsample2d", "concat", "transpose", "reshape"} <= set(ops), ops


# ---------------------------------------------------------------------------------------------- Brevitas
@pytest.fixture(scope="module")
def brevitas_model(tmp_path_factory):
    try:
        import torch
        from torch import nn
        import brevitas.nn as qnn
        from brevitas.export import export_qonnx
        from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
        from brevitas.quant import Uint8ActPerTensorFloat
    except Exception as exc:
        pytest.skip(f"brevitas not importable: {type(exc).__name__}: {exc}")

    class M(nn.Module):
        """Float (non-power-of-two) scales, per-channel weights, BatchNorm, TruncAvgPool, float bias."""

        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(2, 4, 3, padding=1, bias=False, weight_quant=Int8WeightPerChannelFloat,
                                        weight_bit_width=4)
            self.bn = nn.BatchNorm2d(4)
            self.relu = qnn.QuantReLU(act_quant=Uint8ActPerTensorFloat, bit_width=4, return_quant_tensor=True)
            self.pool = qnn.TruncAvgPool2d(kernel_size=2, stride=2, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(4 * 3 * 3, 3, bias=True, weight_quant=Int8WeightPerTensorFloat,
                                      weight_bit_width=4, output_quant=Int8ActPerTensorFloat,
                                      return_quant_tensor=True)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.bn(self.conv(self.inp(x))))).flatten(1))

    torch.manual_seed(0)
    m = M()
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(16, 2, 6, 6))
    m.eval()
    path = tmp_path_factory.mktemp("brevitas") / "m.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_qonnx(m, torch.randn(1, 2, 6, 6), str(path))
    except Exception as exc:
        pytest.skip(f"brevitas export_qonnx failed here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return m, path


def test_brevitas_float_scales_batchnorm_truncavgpool(brevitas_model):
    import torch

    m, path = brevitas_model
    model = onnx.load(path)
    x = np.random.default_rng(10).normal(0, 1, (200, 2, 6, 6))
    g = compare(model, x, min_equal=0.99)
    ops = [n.op.value for n in g.nodes]
    assert "avgpool2d" in ops and "scale_shift" in ops
    with torch.no_grad():  # Brevitas' own float execution: the same integer codes (nearly always)
        want = m(torch.from_numpy(x).float()).int().numpy()
    got = run(g, input_codes(g, x))
    assert np.mean(got == want) >= 0.99 and np.abs(got - want).max() <= 1


# ---------------------------------------------------------------------------------------------- simulators
@pytest.mark.gxx
def test_imported_requantizers_csim_bit_exact(tmp_path):
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.csim import run_csim

    g = run_flow(import_model(tfc_like(), input_fmt="ap_ufixed<8,0,AP_RND_CONV,AP_SAT>"), DEFAULT_FLOW).graph
    rep = run_csim(export_graph(g, "hls", tmp_path / "hls"), n_vectors=64)
    assert rep.mismatches == 0 and rep.outputs_compared > 0


@pytest.mark.verilator
def test_imported_bipolar_threshold_cosim_bit_exact(tmp_path):
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.cosim import run_cosim

    r = _rng(11)
    b = B((5,))
    h = b.quant("x", 0.0173, 6)
    w = b.quant(b.c(r.normal(0, 0.5, (4, 5))), 0.041, 4)
    y = b.bipolar(b.op("Gemm", [h, w, b.c(r.normal(0, 0.2, 4))], transB=1))
    g = run_flow(import_model(b.model(y)), DEFAULT_FLOW).graph
    rep = run_cosim(export_graph(g, "rtl", tmp_path / "rtl"), n_vectors=40)
    assert rep.ok and rep.mismatches == 0


def test_import_errors_are_one_line_qfx_errors():
    b = B((4,))
    y = b.op("Add", [b.op("Div", [b.c(np.ones(4)), "x"]), b.c(1.0)])  # a constant tensor over an activation
    with pytest.raises(QfxError) as ei:
        import_model(b.model(y), input_fmt="ap_fixed<8,3>")
    assert "\n" not in str(ei.value) and "constant tensor by an activation" in str(ei.value)


def test_products_of_activations_slices_and_tables_follow_qonnx():
    """Mul of two quantized activations (a (C, 1, 1) gate broadcast over H, W), Pow(x, 2), Erf as a table, Slice and
    Split of activations, ReduceMax over the plane and Softmax over the channels: QONNX's executor's codes."""
    r = _rng(23)
    b = B((4, 3, 3))
    h = b.quant("x", 0.125, 6)
    gate = b.quant(b.op("Sigmoid", [b.op("ReduceMax", [h], axes=[2, 3], keepdims=1)]), 2.0 ** -6, 7, signed=0)
    prod = b.quant(b.op("Mul", [h, gate]), 2.0 ** -5, 8)
    sq = b.quant(b.op("Pow", [prod, b.c(2.0)]), 2.0 ** -6, 9, signed=0)
    e = b.quant(b.op("Erf", [prod]), 2.0 ** -6, 8)
    k = b.k + 1
    b.nodes.append(helper.make_node("Split", [e, b.c(np.array([1, 3]), dtype=np.int64)], [f"s{k}a", f"s{k}b"],
                                    name="my_split", axis=1))
    b.k += 1
    mid = b.op("Slice", [sq, b.c([0], dtype=np.int64), b.c([4], dtype=np.int64), b.c([1], dtype=np.int64),
                         b.c([3], dtype=np.int64)])  # channels 0 and 3
    cat = b.op("Concat", [f"s{k}a", mid, f"s{k}b"], axis=1)
    y = b.quant(b.op("Softmax", [b.quant(cat, 2.0 ** -4, 8)], axis=1), 2.0 ** -7, 8, signed=0)
    x = r.uniform(-3, 3, (48, 4, 3, 3))
    g = compare(b.model(y), x, min_equal=0.97)
    ops = {n.op for n in g.nodes}
    assert {"mul", "slice", "lut", "softmax", "transpose", "maxpool2d"} <= ops


# ---------------------------------------------------------------------------------------------- FINN / minifloat
@pytest.mark.parametrize("per_channel", [False, True])
def test_multithreshold_is_an_exact_table(per_channel):
    """FINN MultiThreshold (count of thresholds <= x, times out_scale plus out_bias) equals QONNX's executor code for
    code, per-tensor and per-channel thresholds (ties at exact codes included)."""
    r = _rng(21)
    b = B((3, 2, 2))
    h = b.quant("x", 0.25, 5)
    rows = 3 if per_channel else 1
    thr = np.sort(r.integers(-16, 16, (rows, 6)) * 0.25 + r.choice([0.0, 0.1], (rows, 6)), axis=1)
    y = b.op("MultiThreshold", [h, b.c(thr)], domain=QD, out_dtype="UINT3", out_scale=0.5, out_bias=-1.0)
    x = r.uniform(-4.5, 4.5, (64, 3, 2, 2))
    x[:8] = thr.ravel()[:1]  # exactly on a threshold
    g = compare(b.model(y), x)
    ops = [n.op for n in g.nodes]
    assert ops.count("lut") == 1
    assert ("scale_shift" in ops[:ops.index("lut")]) == per_channel  # the row select for per-channel thresholds


def test_floatquant_weights_and_activation():
    """QONNX FloatQuant (fp8 e4m3 with non-power-of-two scales) on a Gemm's weights and on its input."""
    r = _rng(22)
    b = B((6,))
    fq = [b.c(np.array(4.0)), b.c(np.array(3.0)), b.c(np.array(7.0)), b.c(np.array(448.0))]
    w = b.op("FloatQuant", [b.c(r.normal(0, 0.4, (4, 6))), b.c(np.array(0.0043)), *fq], domain=QD, has_inf=0,
             has_nan=1, has_subnormal=1, rounding_mode="ROUND", saturation=1)
    h = b.op("FloatQuant", [b.quant("x", 2.0 ** -5, 8), b.c(np.array(0.0151)), *fq], domain=QD, has_inf=0,
             has_nan=1, has_subnormal=1, rounding_mode="ROUND", saturation=1)
    y = b.op("Gemm", [h, w], transB=1)
    x = r.uniform(-4, 4, (64, 6))
    g = import_model(b.model(y))
    got = output_values(g, run(g, input_codes(g, x))).reshape(len(x), -1)
    ref = qonnx_run(b.model(y), x)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
    assert "lut" in [n.op for n in g.nodes]


def test_two_inputs_two_outputs():
    """Several graph inputs (each its own Quant) and outputs import; the interpreter equals QONNX on each output."""
    r = _rng(23)
    b = B((4,))
    a = b.quant("x", 0.25, 6)
    c = b.quant("x2", 0.125, 6)
    s = b.quant(b.op("Add", [a, c]), 0.25, 8)
    d = b.quant(b.op("Gemm", [a, b.quant(b.c(r.normal(0, 0.5, (3, 4))), 0.125, 4)], transB=1), 0.5, 8)
    m = b.model(s)
    m.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 4]))
    m.graph.output.append(helper.make_tensor_value_info(d, TensorProto.FLOAT, None))
    g = import_model(m)
    assert len(g.inputs) == 2 and len(g.outputs) == 2
    x1, x2 = r.uniform(-4, 4, (32, 4)), r.uniform(-2, 2, (32, 4))
    outs = run(g, {g.inputs[0]: input_codes(g, x1, 0), g.inputs[1]: input_codes(g, x2, 1)})
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(m))
    for i in range(len(x1)):
        ins = [v.name for v in mw.graph.input]  # qonnx's clean-up renames them (global_in, global_in_1)
        ref = execute_onnx(mw, {ins[0]: x1[i:i + 1].astype(np.float32), ins[1]: x2[i:i + 1].astype(np.float32)})
        for k, o in enumerate(g.outputs):
            got = output_values(g, outs[o][i:i + 1], k).reshape(-1)
            np.testing.assert_array_equal(got, np.asarray(ref[mw.graph.output[k].name]).reshape(-1))


def test_softmax_after_quant_and_axis_refusal():
    """A Softmax after a quantized vector is qfx's softmax op (16-bit output, close to the float softmax)."""
    r = _rng(24)
    b = B((6,))
    y = b.op("Softmax", [b.quant("x", 2.0 ** -3, 7)], axis=-1)
    g = import_model(b.model(y))
    assert g.nodes[-1].op == "softmax"
    x = r.uniform(-4, 4, (64, 6))
    got = output_values(g, run(g, input_codes(g, x)))
    q = np.clip(np.round(x * 8), -64, 63) / 8
    ref = np.exp(q - q.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    assert np.max(np.abs(got - ref)) < 2e-3


def test_an_exact_sum_wider_than_64_bits_is_refused_naming_what_to_narrow():
    """Quantized 8-bit weights on 53-bit inputs, 256 terms: the sum cannot be exact in int64; the message asks for
    a narrower input, not for quantizing weights that already are quantized."""
    r = _rng(21)
    b = B((256,))
    h = b.quant("x", 2.0 ** -30, 53)
    w = b.quant(b.c(r.normal(0, 0.5, (256, 4))), 2.0 ** -6, 8)
    y = b.op("MatMul", [h, w])
    with pytest.raises(QfxError) as ei:
        import_model(b.model(y))
    msg = str(ei.value)
    assert "\n" not in msg and "does not fit 64 bits" in msg and "narrow the input" in msg and "float" not in msg


def test_a_float_model_too_wide_for_the_exact_path_is_told_to_quantize():
    """float32 weights (24 significant bits) on an 8-bit input: the sum does not fit int64 and the message says what
    to do, in the words ``benchmarks/bench_onnx_zoo.py --quantize-float`` looks for."""
    r = _rng(22)
    b = B((256,))
    h = b.quant("x", 2.0 ** -7, 8)
    y = b.op("MatMul", [h, b.c(r.normal(0, 0.3, (256, 4)) * 1.000123)])
    y = b.op("MatMul", [b.op("Relu", [y]), b.c(r.normal(0, 0.3, (4, 3)) * 1.000321)])
    with pytest.raises(QfxError) as ei:
        import_model(b.model(y))
    msg = str(ei.value)
    assert "\n" not in msg and "quantize the model" in msg
