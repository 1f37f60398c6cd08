"""``qfx quantize``: float ONNX -> calibrated power-of-two QONNX model; imports into qfx, agrees with QONNX's executor
code for code and with the float model on (nearly) every argmax."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfx.errors import BadInputError, UnsupportedError
from qfx.ir import run
from qfx.onnx import import_model
from qfx.onnx.importer import input_codes, output_values
from qfx.onnx.quantize import quantize_onnx


def float_cnn(seed: int = 0):
    r = np.random.default_rng(seed)
    inits = {"w": r.normal(0, 0.4, (4, 2, 3, 3)), "b": r.normal(0, 0.1, 4), "g": r.uniform(0.5, 1.5, 4),
             "be": r.normal(0, 0.1, 4), "mu": r.normal(0, 0.1, 4), "var": r.uniform(0.5, 1.5, 4),
             "fc": r.normal(0, 0.3, (3, 36)), "fb": r.normal(0, 0.1, 3)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], axis=1)]
    g = helper.make_graph(nodes, "float_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_quantized_model_imports_and_matches_float_and_qonnx():
    m = float_cnn()
    r = np.random.default_rng(1)
    calib = r.normal(0, 1, (200, 2, 6, 6)).astype(np.float32)
    q, report = quantize_onnx(m, calib, weight_bits=8, act_bits=8)
    assert not any("dropped" in line for line in report)  # the Softmax stays: qfx has a softmax op
    # input, 4 weights/biases, 2 chain ends (conv+BN+relu, the logits before the softmax)
    assert sum(n.op_type == "Quant" for n in q.graph.node) == 1 + 4 + 2
    g = import_model(q)
    assert [n.op.value for n in g.nodes] == ["conv2d", "scale_shift", "relu", "maxpool2d", "flatten", "dense",
                                             "softmax"]
    x = r.normal(0, 1, (150, 2, 6, 6)).astype(np.float32)
    out = output_values(g, run(g, input_codes(g, x)))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"x": x})[0]
    assert np.mean(out.argmax(1) == probs.argmax(1)) >= 0.9
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model

    mw = cleanup_model(ModelWrapper(q), override_inpsize=1)
    iname, oname = mw.graph.input[0].name, mw.graph.output[0].name
    ref = np.stack([execute_onnx(mw, {iname: x[i:i + 1]})[oname].reshape(-1) for i in range(40)])
    # power-of-two scales make the logits exact; the softmax tables are within 2**-9 of QONNX's float softmax
    assert np.max(np.abs(out[:40] - ref)) < 2.0 ** -9


def test_quantize_cli_and_refusals(tmp_path, capsys):
    from qfx.cli import main

    src, calib, out = tmp_path / "f.onnx", tmp_path / "c.npy", tmp_path / "q.onnx"
    onnx.save(float_cnn(), src)
    np.save(calib, np.random.default_rng(2).normal(0, 1, (64, 2, 6, 6)).astype(np.float32))
    assert main(["quantize", str(src), "--calib", str(calib), "-o", str(out), "--weight-bits", "6"]) == 0
    text = capsys.readouterr().out
    assert "argmax equal" in text and out.exists()
    assert main(["quantize", str(src), "--calib", str(calib), "-o", str(out)]) == 2  # exists, no --force
    assert main(["quantize", str(out), "--calib", str(calib), "-o", str(tmp_path / "q2.onnx")]) == 2
    assert "already quantized" in capsys.readouterr().err
    np.save(calib, np.zeros((4, 3, 3), np.float32))
    assert main(["quantize", str(src), "--calib", str(calib), "-o", str(tmp_path / "q3.onnx")]) == 2
    err = capsys.readouterr().err
    assert "does not run through the model" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(out), "--to", "hls", "-o", str(tmp_path / "hls"), "-q"]) == 0
    with pytest.raises(BadInputError, match="bits"):
        quantize_onnx(float_cnn(), np.zeros((2, 2, 6, 6)), weight_bits=1)
    with pytest.raises(UnsupportedError, match="already quantized"):
        quantize_onnx(onnx.load(out), np.zeros((2, 2, 6, 6)))


def two_input_float_model(seed: int = 3):
    """Image input in channels-last layout (a Transpose the clean-up folds into the interface) and a vector input."""
    r = np.random.default_rng(seed)
    inits = {"w": r.normal(0, 0.4, (4, 2, 3, 3)), "b": r.normal(0, 0.1, 4), "fc": r.normal(0, 0.5, (4, 5)),
             "fb": r.normal(0, 0.1, 4)}
    nodes = [helper.make_node("Transpose", ["img"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["vec", "fc", "fb"], ["v"], transB=1),
             helper.make_node("Add", ["f", "v"], ["y"])]
    g = helper.make_graph(nodes, "two_in", [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 4, 4, 2]),
                                            helper.make_tensor_value_info("vec", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_quantize_several_inputs_with_npz_and_folded_input_transpose(tmp_path, capsys):
    from qfx.cli import main

    m = two_input_float_model()
    r = np.random.default_rng(4)
    calib = {"img": r.normal(0, 1, (128, 4, 4, 2)).astype(np.float32),
             "vec": r.normal(0, 1, (128, 5)).astype(np.float32)}
    with pytest.raises(BadInputError, match="npz"):
        quantize_onnx(m, calib["img"])  # one array for two inputs
    with pytest.raises(BadInputError, match="inputs are"):
        quantize_onnx(m, {"img": calib["img"]})
    q, report = quantize_onnx(m, calib, weight_bits=8, act_bits=10)
    assert sum(line.startswith("input '") and "bits, scale" in line for line in report) == 2
    g = import_model(q)
    assert len(g.inputs) == 2
    assert g.meta["input_meta"][0].get("input_perm") == [0, 3, 1, 2]  # channels-last image laid out channels-first
    x = {k: v[:100] for k, v in calib.items()}  # inside the calibrated ranges (nothing saturates)
    y = run(g, {g.inputs[0]: input_codes(g, x["img"], 0), g.inputs[1]: input_codes(g, x["vec"], 1)})
    got = output_values(g, y[g.outputs[0]] if isinstance(y, dict) else y)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    src, npz, out = tmp_path / "f.onnx", tmp_path / "c.npz", tmp_path / "q.onnx"
    onnx.save(m, src)
    np.savez(npz, **calib)
    assert main(["quantize", str(src), "--calib", str(npz), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on 128 calibration inputs: argmax equal" in text and "max |diff|" in text
