"""Brevitas sweep: small models written the way Brevitas users write them, exported with ``export_qonnx``.

Default quantizers (float, non-power-of-two scales; per-tensor and per-channel weights), 2-/4-/8-bit weights, input
QuantIdentity, QuantReLU/HardTanh/Sigmoid/Tanh, BatchNorm between conv and activation, biases (Int8Bias, Int16Bias,
float), QuantMaxPool2d, TruncAvgPool2d, TruncAdaptiveAvgPool2d, QuantEltwiseAdd residuals, QuantCat, ``x.view``
flatten, Conv1d, depthwise conv, ``return_quant_tensor`` True and False. Each is imported unmodified and compared
with QONNX's executor (``compare`` in test_qonnx_import: equal output codes on nearly every vector, never more than
one LSB apart, and the interpreter bit-exact with onnxruntime on the exported qfx file). Needs brevitas; skips
visibly without it.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from test_qonnx_import import compare


def _deps():
    try:
        import torch
        import brevitas.nn as qnn
        import brevitas.quant as bq
        from brevitas.export import export_qonnx
    except Exception as exc:  # ImportError or a broken install
        pytest.skip(f"brevitas not importable: {type(exc).__name__}: {exc}")
    return torch, qnn, bq, export_qonnx


def _build(kind: str):
    """One small Brevitas model and its input shape (without the batch axis)."""
    torch, qnn, bq, _ = _deps()
    nn = torch.nn

    class M(nn.Module):
        def __init__(self, layers, fwd):
            super().__init__()
            self.l = nn.ModuleDict(layers)
            self.fwd = fwd

        def forward(self, x):
            return self.fwd(self.l, x)

    if kind == "mlp_default":  # everything default: Int8WeightPerTensorFloat, Int8ActPerTensorFloat, float bias
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True), "a": qnn.QuantLinear(10, 16, bias=True),
                  "r": qnn.QuantReLU(), "b": qnn.QuantLinear(16, 4, bias=True)},
                 lambda l, x: l["b"](l["r"](l["a"](l["i"](x))))), (10,)
    if kind == "mlp_perchannel_int16bias":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "a": qnn.QuantLinear(10, 12, bias=True, weight_quant=bq.Int8WeightPerChannelFloat,
                                       weight_bit_width=4, bias_quant=bq.Int16Bias, return_quant_tensor=True),
                  "r": qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
                  "b": qnn.QuantLinear(12, 3, bias=True, weight_bit_width=2, bias_quant=bq.Int8Bias,
                                       output_quant=bq.Int8ActPerTensorFloat, return_quant_tensor=True)},
                 lambda l, x: l["b"](l["r"](l["a"](l["i"](x))))), (10,)
    if kind == "cnn_bn_maxpool_view":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "c": qnn.QuantConv2d(2, 4, 3, padding=1, bias=False, weight_bit_width=4),
                  "bn": nn.BatchNorm2d(4), "r": qnn.QuantReLU(return_quant_tensor=True),
                  "p": nn.MaxPool2d(2),  # max-pooling a QuantTensor keeps it quantized
                  "f": qnn.QuantLinear(4 * 3 * 3, 5, bias=True, bias_quant=bq.Int16Bias)},
                 lambda l, x: l["f"](l["p"](l["r"](l["bn"](l["c"](l["i"](x))))).view(x.shape[0], -1))), (2, 6, 6)
    if kind == "conv1d":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "c": qnn.QuantConv1d(3, 4, 3, bias=True, weight_quant=bq.Int8WeightPerChannelFloat),
                  "r": qnn.QuantReLU(bit_width=6), "f": qnn.QuantLinear(4 * 6, 3, bias=False)},
                 lambda l, x: l["f"](l["r"](l["c"](l["i"](x))).flatten(1))), (3, 8)
    if kind == "hardtanh_2bit":
        return M({"i": qnn.QuantHardTanh(bit_width=4, max_val=1.0, min_val=-1.0, return_quant_tensor=True),
                  "a": qnn.QuantLinear(8, 16, bias=False, weight_bit_width=2),
                  "h": qnn.QuantHardTanh(bit_width=2, max_val=1.0, min_val=-1.0, return_quant_tensor=True),
                  "b": qnn.QuantLinear(16, 4, bias=False, weight_bit_width=2,
                                       output_quant=bq.Int8ActPerTensorFloat)},
                 lambda l, x: l["b"](l["h"](l["a"](l["i"](x))))), (8,)
    if kind == "residual_add":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "c1": qnn.QuantConv2d(3, 3, 3, padding=1, bias=True, bias_quant=bq.Int16Bias,
                                        return_quant_tensor=True),
                  "r1": qnn.QuantReLU(return_quant_tensor=True),
                  "c2": qnn.QuantConv2d(3, 3, 3, padding=1, bias=False, return_quant_tensor=True),
                  "q": qnn.QuantIdentity(return_quant_tensor=True),
                  "add": qnn.QuantEltwiseAdd(return_quant_tensor=True),
                  "r2": qnn.QuantReLU(return_quant_tensor=True)},
                 lambda l, x: (lambda a: l["r2"](l["add"](l["q"](l["c2"](l["r1"](l["c1"](a)))), a)))(l["i"](x))), \
            (3, 5, 5)
    if kind == "cat":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "a": qnn.QuantConv2d(2, 3, 1, bias=False), "b": qnn.QuantConv2d(2, 2, 3, padding=1, bias=False),
                  "ra": qnn.QuantReLU(bit_width=4), "rb": qnn.QuantReLU(bit_width=6),
                  "q": qnn.QuantIdentity(return_quant_tensor=True)},  # torch.cat, then one shared quantizer
                 lambda l, x: (lambda a: l["q"](torch.cat([l["ra"](l["a"](a)), l["rb"](l["b"](a))], dim=1)))(
                     l["i"](x))), \
            (2, 4, 4)
    if kind == "truncavgpool":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "c": qnn.QuantConv2d(2, 4, 3, padding=1, bias=False, weight_quant=bq.Int8WeightPerChannelFloat),
                  "r": qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
                  "p": qnn.TruncAvgPool2d(2, stride=2, return_quant_tensor=True),
                  "g": qnn.TruncAdaptiveAvgPool2d((1, 1), return_quant_tensor=True),
                  "f": qnn.QuantLinear(4, 3, bias=True, output_quant=bq.Int8ActPerTensorFloat)},
                 lambda l, x: l["f"](l["g"](l["p"](l["r"](l["c"](l["i"](x))))).flatten(1))), (2, 8, 8)
    if kind == "sigmoid_tanh":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True), "a": qnn.QuantLinear(6, 8, bias=True),
                  # a quantized input: qfx tables read at most 12-bit codes (not a float accumulator)
                  "s": qnn.QuantSigmoid(input_quant=bq.Int8ActPerTensorFloat, return_quant_tensor=True),
                  "b": qnn.QuantLinear(8, 8, bias=False),
                  "t": qnn.QuantTanh(input_quant=bq.Int8ActPerTensorFloat, return_quant_tensor=True),
                  "c": qnn.QuantLinear(8, 2, bias=False)},
                 lambda l, x: l["c"](l["t"](l["b"](l["s"](l["a"](l["i"](x))))))), (6,)
    if kind == "depthwise_bn":
        return M({"i": qnn.QuantIdentity(bit_width=6, return_quant_tensor=True),
                  "d": qnn.QuantConv2d(3, 3, 3, groups=3, padding=1, bias=False,
                                       weight_quant=bq.Int8WeightPerChannelFloat),
                  "bn": nn.BatchNorm2d(3), "r": qnn.QuantReLU(bit_width=4, return_quant_tensor=True),
                  "pw": qnn.QuantConv2d(3, 4, 1, bias=True, output_quant=bq.Int8ActPerTensorFloat)},
                 lambda l, x: l["pw"](l["r"](l["bn"](l["d"](l["i"](x)))))), (3, 5, 5)
    if kind == "uint_input_fixedpoint":  # power-of-two quantizers throughout (the FINN style)
        return M({"i": qnn.QuantIdentity(act_quant=bq.Uint8ActPerTensorFixedPoint, return_quant_tensor=True),
                  "a": qnn.QuantLinear(6, 8, bias=True, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                                       weight_bit_width=3,
                                       bias_quant=bq.Int8BiasPerTensorFixedPointInternalScaling),
                  "r": qnn.QuantReLU(act_quant=bq.Uint8ActPerTensorFixedPoint, bit_width=3),
                  "b": qnn.QuantLinear(8, 3, bias=False, weight_quant=bq.Int8WeightPerTensorFixedPoint,
                                       output_quant=bq.Int8ActPerTensorFixedPoint, return_quant_tensor=True)},
                 lambda l, x: l["b"](l["r"](l["a"](l["i"](x))))), (6,)
    if kind == "upsample_nearest":
        return M({"i": qnn.QuantIdentity(return_quant_tensor=True),
                  "c": qnn.QuantConv2d(2, 2, 3, padding=1, bias=False),
                  "r": qnn.QuantReLU(return_quant_tensor=True),
                  "u": nn.Upsample(scale_factor=2, mode="nearest"),
                  "c2": qnn.QuantConv2d(2, 1, 3, padding=1, bias=False, output_quant=bq.Int8ActPerTensorFloat)},
                 lambda l, x: l["c2"](l["u"](l["r"](l["c"](l["i"](x)))))), (2, 3, 3)
    raise KeyError(kind)


KINDS = ["mlp_default", "mlp_perchannel_int16bias", "cnn_bn_maxpool_view", "conv1d", "hardtanh_2bit", "residual_add",
        "cat", "truncavgpool", "sigmoid_tanh", "depthwise_bn", "uint_input_fixedpoint", "upsample_nearest"]


def export(kind: str, path, seed: int = 0):
    """Random init, a few train-mode passes (activation statistics settle), eval, export_qonnx."""
    torch, _, _, export_qonnx = _deps()
    torch.manual_seed(seed)
    model, shape = _build(kind)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *shape))
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_qonnx(model, torch.randn(1, *shape), str(path))
    except Exception as exc:  # exporter dependencies missing in this environment
        pytest.skip(f"brevitas export_qonnx failed here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return model, shape


SLOW = {"mlp_default", "mlp_perchannel_int16bias", "conv1d", "hardtanh_2bit", "cat", "truncavgpool",
        "depthwise_bn", "uint_input_fixedpoint", "upsample_nearest"}  # ~6 s each (the exporter); run with -m slow


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in KINDS])
def test_brevitas_model_imports_and_matches_qonnx(kind, tmp_path):
    _, shape = export(kind, tmp_path / f"{kind}.onnx")
    x = np.random.default_rng(1).normal(0, 1.5, (24, *shape))
    compare(onnx.load(tmp_path / f"{kind}.onnx"), x, min_equal=0.95)


def _ort_reference(model, x: np.ndarray) -> np.ndarray:
    """onnxruntime without graph optimizations: the QDQ operators' float definitions (its optimizer would fuse
    Q/DQ into integer kernels with their own requantization rounding)."""
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1].astype(np.float32)})[0].reshape(1, -1)
                           for i in range(len(x))])


@pytest.mark.parametrize("kind", ["hardtanh_2bit", pytest.param("residual_add", marks=pytest.mark.slow),
                                  pytest.param("cnn_bn_maxpool_view", marks=pytest.mark.slow)])
def test_brevitas_qcdq_export_imports_and_matches_onnxruntime(kind, tmp_path):
    """``export_onnx_qcdq``: QuantizeLinear -> Clip (bit widths below 8) -> DequantizeLinear, int8 weights through
    Clip -> DequantizeLinear, and (return_quant_tensor=True) the output's scale/zero point as extra constant outputs."""
    torch, _, _, _ = _deps()
    from brevitas.export import export_onnx_qcdq

    from qfx.ir import run
    from qfx.onnx import import_model
    from qfx.onnx.importer import input_codes, output_values

    torch.manual_seed(0)
    model, shape = _build(kind)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *shape))
    model.eval()
    path = tmp_path / f"{kind}_qcdq.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx_qcdq(model, torch.randn(1, *shape), str(path), dynamo=False)
    except Exception as exc:
        pytest.skip(f"brevitas export_onnx_qcdq failed here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    m = onnx.load(path)
    assert any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    g = import_model(m)
    if kind == "hardtanh_2bit":  # 2-bit activations: the Clip between Q and DQ is a clip of the codes
        assert "clip" in [n.op.value for n in g.nodes]
    x = np.random.default_rng(2).normal(0, 1.5, (64, *shape))
    got = output_values(g, run(g, input_codes(g, x))).reshape(len(x), -1)
    ref = _ort_reference(m, x)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
