"""Brevitas interop: train a tiny Brevitas model, export QONNX, import it, and match its integer outputs bit for bit.

Needs brevitas (and the exporter's onnxscript/onnxoptimizer); skips visibly, with the reason, when they are missing.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from qfx.ir import Op, run
from qfx.onnx import import_onnx


def _brevitas():
    try:
        import brevitas.nn as qnn
        from brevitas.export import export_qonnx
        from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint
        from brevitas.quant import Int8BiasPerTensorFixedPointInternalScaling, Uint8ActPerTensorFixedPoint
    except Exception as exc:  # ImportError or a broken install
        pytest.skip(f"brevitas not importable: {type(exc).__name__}: {exc}")
    return (qnn, export_qonnx, Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint,
            Int8BiasPerTensorFixedPointInternalScaling)


def _models(kind: str):
    qnn, _, IA, IW, UA, IB = _brevitas()

    if kind == "mlp":
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.inp = qnn.QuantIdentity(act_quant=IA, bit_width=6, return_quant_tensor=True)
                self.fc1 = qnn.QuantLinear(8, 16, bias=False, weight_quant=IW, weight_bit_width=4,
                                           return_quant_tensor=True)
                self.relu = qnn.QuantReLU(act_quant=UA, bit_width=5, return_quant_tensor=True)
                self.fc2 = qnn.QuantLinear(16, 3, bias=True, weight_quant=IW, weight_bit_width=5, bias_quant=IB,
                                           output_quant=IA, output_bit_width=8, return_quant_tensor=True)

            def forward(self, x):
                return self.fc2(self.relu(self.fc1(self.inp(x))))

        return M(), (8,)

    class C(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=IA, bit_width=8, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(1, 3, 3, padding=1, bias=False, weight_quant=IW, weight_bit_width=4,
                                        return_quant_tensor=True)
            self.relu = qnn.QuantReLU(act_quant=UA, bit_width=6, return_quant_tensor=True)
            self.pool = nn.MaxPool2d(2)  # max-pooling a QuantTensor keeps it quantized
            self.fc = qnn.QuantLinear(3 * 3 * 3, 4, bias=False, weight_quant=IW, weight_bit_width=6,
                                      output_quant=IA, output_bit_width=10, return_quant_tensor=True)

        def forward(self, x):
            h = self.pool(self.relu(self.conv(self.inp(x))))
            return self.fc(h.flatten(1))

    return C(), (1, 6, 6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_brevitas_qonnx_bit_exact(kind, tmp_path):
    _, export_qonnx, *_ = _brevitas()
    torch.manual_seed(0)
    model, shape = _models(kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):  # a few training steps so weights and learned scales move
        x = torch.randn(32, *shape)
        out = model(x)
        loss = (out.value - 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path / f"{kind}_qonnx.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_qonnx(model, torch.randn(1, *shape), str(path))
    except Exception as exc:  # exporter dependencies missing in this environment
        pytest.skip(f"brevitas export_qonnx failed here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    g = import_onnx(path)
    assert g.nodes[-1].op is Op.DENSE
    x = torch.randn(500, *shape) * 2
    with torch.no_grad():
        codes_in = model.inp(x).int().numpy().astype(np.int64)
        want = model(x).int().numpy().astype(np.int64)
    np.testing.assert_array_equal(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), codes_in)
    np.testing.assert_array_equal(run(g, codes_in), want)
