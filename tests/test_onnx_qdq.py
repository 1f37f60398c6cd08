"""ONNX QDQ models (QuantizeLinear -> DequantizeLinear pairs, int8 weights + DequantizeLinear) and the QOperator
ops QLinearConv/QLinearMatMul/QGemm import onto the Quant machinery: ``q - zp`` are codes of the scale with range
``[qmin - zp, qmax - zp]`` (round half to even, saturate), non-power-of-two scales requantize with dyadic constants
(qfx.onnx.requant). Models come from ``onnxruntime.quantization.quantize_static`` on small torch models; the
reference is onnxruntime's execution of the quantized model (share of equal output codes, largest difference in
output LSBs)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfx.errors import UnsupportedError
from qfx.ir import run
from qfx.onnx import import_model, to_onnx_model
from qfx.onnx.importer import input_codes, output_values
from qfx.onnx.runtime import run_onnx_codes

ort = pytest.importorskip("onnxruntime")


def qdq_model(kind: str, tmp_path, per_channel: bool, symmetric_act: bool, fmt: str = "QDQ"):
    """A float torch model exported to ONNX, quantized by onnxruntime's quantize_static (QDQ or QOperator format)."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.it = iter([{"x": d[None]} for d in data])

        def get_next(self):
            return next(self.it, None)

    torch.manual_seed(0)
    if kind == "mlp":
        m, shape = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4)), (10,)
    else:
        m, shape = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(36, 3)), (2, 6, 6)
    m.eval()
    fp, qp = tmp_path / f"{kind}.onnx", tmp_path / f"{kind}_qdq.onnx"
    torch.onnx.export(m, torch.randn(1, *shape), str(fp), input_names=["x"], output_names=["y"], dynamo=False,
                      opset_version=13)
    data = np.random.default_rng(0).normal(0, 1, (32, *shape)).astype(np.float32)
    quantize_static(str(fp), str(qp), Reader(data), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    activation_type=QuantType.QInt8 if symmetric_act else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": symmetric_act})
    return onnx.load(qp), shape


def compare_ort(model, x: np.ndarray) -> tuple[float, float]:
    """(share of equal output codes, largest difference in output LSBs) of qfx vs onnxruntime on the QDQ model;
    also checks that qfx's exported ONNX computes the interpreter's bits."""
    g = import_model(model)
    codes = input_codes(g, x)
    y = run(g, codes)
    got = output_values(g, y).reshape(len(x), -1)
    sess = ort.InferenceSession(model.SerializeToString())
    iname = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {iname: x[i:i + 1].astype(np.float32)})[0].reshape(1, -1)
                          for i in range(len(x))])
    dq = [n for n in model.graph.node if n.output[0] == model.graph.output[0].name][0]
    lsb = float(numpy_helper.to_array([i for i in model.graph.initializer if i.name == dq.input[1]][0]))
    diff = np.abs(got - ref) / lsb
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), y)
    return float(np.mean(diff < 0.5)), float(diff.max())


@pytest.mark.parametrize("kind,per_channel,symmetric_act", [("mlp", False, False), ("cnn", True, False),
                                                            ("cnn", False, True)])
def test_quantize_static_qdq_matches_onnxruntime(kind, per_channel, symmetric_act, tmp_path):
    model, shape = qdq_model(kind, tmp_path, per_channel, symmetric_act)
    x = np.random.default_rng(5).normal(0, 1.2, (200, *shape))
    equal, worst = compare_ort(model, x)
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)
    g = import_model(model)
    ops = [n.op.value for n in g.nodes]
    assert "scale_shift" in ops  # non-power-of-two scales: dyadic requantizers
    if not symmetric_act:  # uint8 with a zero point: codes q - zp in [-zp, 255 - zp] kept by a clip
        assert "clip" in ops


def _hand_qdq(scale_x: float, zp_x: int, w_scale, zp_dtype=np.uint8):
    """x -> Q/DQ -> MatMul(int8 weights + DQ per axis 1) -> Q/DQ, built with onnx.helper."""
    r = np.random.default_rng(3)
    w = r.integers(-127, 128, (6, 4)).astype(np.int8)
    ws = np.asarray(w_scale, dtype=np.float32)
    inits = [numpy_helper.from_array(np.float32(scale_x), "sx"), numpy_helper.from_array(zp_dtype(zp_x), "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(ws, "ws"),
             numpy_helper.from_array(np.zeros(ws.shape, np.int8), "wz"),
             numpy_helper.from_array(np.float32(0.25), "sy"), numpy_helper.from_array(np.int8(0), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
             helper.make_node("MatMul", ["xd", "w"], ["h"]),
             helper.make_node("QuantizeLinear", ["h", "sy", "zy"], ["hq"]),
             helper.make_node("DequantizeLinear", ["hq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_power_of_two_qdq_is_exact_without_requantizers():
    model = _hand_qdq(2.0 ** -4, 0, [2.0 ** -6] * 4, np.int8)
    g = import_model(model)
    assert "scale_shift" not in [n.op.value for n in g.nodes]
    assert g.tensor(g.inputs[0]).fmt.ap_type().startswith("ap_fixed<8,4")
    equal, worst = compare_ort(model, np.random.default_rng(0).normal(0, 3, (300, 6)))
    assert equal == 1.0 and worst == 0.0


def test_per_axis_weights_and_uint8_zero_point():
    model = _hand_qdq(0.037, 131, [0.011, 0.007, 0.013, 0.003])
    equal, worst = compare_ort(model, np.random.default_rng(1).normal(0, 2.5, (300, 6)))  # inputs saturate too
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)


def test_qoperator_and_mismatched_pairs_refused_in_one_line():
    model = _hand_qdq(0.05, 0, [0.01] * 4, np.int8)
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[1].input[1] = "sy"  # DequantizeLinear with another scale than its QuantizeLinear
    with pytest.raises(UnsupportedError, match="another scale") as e:
        import_model(bad)
    assert "\n" not in str(e.value)
    qop = onnx.ModelProto()
    qop.CopyFrom(model)
    qop.graph.node[1].op_type = "QLinearAdd"  # a QOperator node qfx does not map
    with pytest.raises(UnsupportedError, match="QDQ") as e:
        import_model(qop)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind,per_channel", [("mlp", False), ("cnn", True)])
def test_quantize_static_qoperator_matches_onnxruntime(kind, per_channel, tmp_path):
    """QOperator format: QLinearConv, com.microsoft QGemm, MaxPool/Flatten on uint8 codes; onnxruntime runs its
    integer kernels, qfx the same dyadic requantizers as for QDQ."""
    model, shape = qdq_model(kind, tmp_path, per_channel, False, fmt="QOperator")
    ops = {n.op_type for n in model.graph.node}
    assert ops & {"QLinearConv", "QGemm", "QLinearMatMul"}, ops
    equal, worst = compare_ort(model, np.random.default_rng(6).normal(0, 1.2, (200, *shape)))
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)


def test_qlinearmatmul_hand_built():
    """QLinearMatMul (the form of ONNX-zoo int8 MLP layers): uint8 activations with zero points, int8 weights."""
    r = np.random.default_rng(7)
    w = r.integers(-127, 128, (6, 5)).astype(np.int8)
    f32 = np.float32
    inits = [numpy_helper.from_array(f32(0.043), "sx"), numpy_helper.from_array(np.uint8(128), "zx"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(f32(0.0071), "sw"),
             numpy_helper.from_array(np.int8(0), "zw"), numpy_helper.from_array(f32(0.19), "sy"),
             numpy_helper.from_array(np.uint8(97), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("QLinearMatMul", ["xq", "sx", "zx", "w", "sw", "zw", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "qlmm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    equal, worst = compare_ort(model, r.normal(0, 3, (400, 6)))  # includes saturating inputs and outputs
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)
