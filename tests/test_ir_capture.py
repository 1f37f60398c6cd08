"""torch.fx capture: the qfx layer contract with small fake modules, and real qfx models bit for bit."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch import nn

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir import Constant, Node, Op, TensorSpec, random_inputs, run
from qfx.ir.from_torch import capture, sanitize

FIN = FxFormat(6, 2)


class QuantInput(nn.Module):  # fake: the contract only (name, fmt, no nodes)
    def __init__(self, fmt=FIN):
        super().__init__()
        self.fmt = fmt
        self.out_fmt = fmt

    def forward(self, x):
        return x

    def ir_nodes(self, name, inputs, output):
        return []


class FakeDense(nn.Module):
    def __init__(self, n, m, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.fw = FxFormat(5, 1)
        self.w = rng.integers(-16, 15, size=(m, n), endpoint=True)
        self.out_fmt = FxFormat(8, 3, rounding="RND", overflow="SAT")
        self.lin = nn.Linear(n, m)

    def forward(self, x):
        return self.lin(x)

    def ir_nodes(self, name, inputs, output):
        (x,) = inputs
        acc = lossless_acc_format(self.w, self.fw, x.fmt)
        return [(Node(name, Op.DENSE, (x.name,), output, {"weight": Constant(self.w, self.fw)}, {}, acc),
                 TensorSpec(output, (self.w.shape[0],), self.out_fmt))]


class FakeReLU(nn.Module):
    out_fmt = FxFormat(6, 3, signed=False)

    def forward(self, x):
        return torch.relu(x)

    def ir_nodes(self, name, inputs, output):
        (x,) = inputs
        mid = f"{output}.pre"
        return [(Node(f"{name}.q", Op.QUANT, (x.name,), mid), TensorSpec(mid, x.shape, x.fmt)),
                (Node(name, Op.RELU, (mid,), output), TensorSpec(output, x.shape, self.out_fmt))]


def test_fake_contract_mlp_with_view_and_names():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = QuantInput()
            self.features = nn.ModuleList([FakeDense(12, 8), FakeReLU()])
            self.head = FakeDense(8, 3, seed=1)

        def forward(self, x):
            x = self.inp(x)
            x = x.view(x.size(0), -1)
            for m in self.features:
                x = m(x)
            return self.head(torch.flatten(x, 1))

    g = capture(M(), torch.zeros(2, 3, 4), name="fake")
    assert g.name == "fake" and g.tensor(g.inputs[0]).shape == (3, 4) and g.tensor(g.inputs[0]).fmt == FIN
    assert [n.op for n in g.nodes] == [Op.FLATTEN, Op.DENSE, Op.QUANT, Op.RELU, Op.FLATTEN, Op.DENSE]
    names = [n.name for n in g.nodes] + list(g.tensors)
    assert len(set(names[: len(g.nodes)])) == len(g.nodes)
    assert "features_0" in g.tensors and "features_1" in g.tensors and "features_1.pre" in g.tensors
    assert {n.source for n in g.nodes if n.op is Op.DENSE} == {"features.0", "head"}
    x = random_inputs(g, 20)
    # independent reference: the same arithmetic by hand through the kernels
    from qfx.fixed import ops

    d0 = g.nodes[1]
    h = ops.dense(x.reshape(20, -1), FIN, d0.consts["weight"].codes, FxFormat(5, 1), FxFormat(8, 3, rounding="RND",
                  overflow="SAT"))
    h = ops.relu(h, FxFormat(8, 3, rounding="RND", overflow="SAT"), FakeReLU.out_fmt)
    d1 = g.nodes[-1]
    y = ops.dense(h, FakeReLU.out_fmt, d1.consts["weight"].codes, FxFormat(5, 1),
                  FxFormat(8, 3, rounding="RND", overflow="SAT"))
    np.testing.assert_array_equal(run(g, x), y)


def test_unsupported_module_names_path_and_type():
    m = nn.Sequential(QuantInput(), FakeDense(4, 4), nn.Sequential(nn.GELU()))
    with pytest.raises(UnsupportedError, match=r"unsupported module '2\.0' \(torch\.nn\.modules\.activation\.GELU\)"):
        capture(m, torch.zeros(1, 4))


def test_unsupported_function_and_missing_input_format():
    class Add(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = QuantInput()

        def forward(self, x):
            x = self.inp(x)
            return x + x

    with pytest.raises(UnsupportedError, match="QAdd"):
        capture(Add(), torch.zeros(1, 4))
    with pytest.raises(BadInputError, match="QuantInput"):
        capture(nn.Sequential(FakeDense(4, 4)), torch.zeros(1, 4))
    with pytest.raises(BadInputError, match="example_input"):
        capture(nn.Sequential(QuantInput(), FakeDense(4, 4)))


def test_sanitize_unique():
    assert sanitize("features.3") == "features_3" and sanitize("0") == "m_0" and sanitize("a..b-c") == "a_b_c"


# ---------------------------------------------------------------------------------------------- real qfx layers
needs_nn = pytest.mark.skipif(importlib.util.find_spec("qfx.nn.layers") is None, reason="qfx.nn not available")


def _real_models():
    import qfx.nn as qnn

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantInput(8, 3)
            self.c1 = qnn.QConv2d(2, 4, 3, padding=1)
            self.r = qnn.QReLU()
            self.c2 = qnn.QConv2d(4, 4, 3, padding=1)
            self.add = qnn.QAdd(out_width=10)
            self.pool = qnn.QMaxPool2d(2)
            self.fl = qnn.QFlatten()
            self.fc = qnn.QLinear(4 * 3 * 3, 5)

        def forward(self, x):
            x = self.inp(x)
            h = self.r(self.c1(x))
            return self.fc(self.fl(self.pool(self.add(h, self.c2(h)))))

    return {
        "mlp": (nn.Sequential(qnn.QuantInput(8, 2), qnn.QLinear(10, 16), qnn.QReLU(), qnn.QLinear(16, 4)), (10,)),
        "cnn": (nn.Sequential(qnn.QuantInput(8, 2), qnn.QConv2d(1, 3, 3), qnn.QBatchNorm2d(3), qnn.QReLU(),
                              qnn.QAvgPool2d(2), nn.Flatten(), qnn.QLinear(27, 4)), (1, 8, 8)),
        "residual": (Res(), (2, 6, 6)),
    }


@needs_nn
@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_real_qfx_model_capture_is_bit_exact(kind, tmp_path):
    import qfx.nn as qnn
    from qfx.onnx import export_onnx, run_onnx_codes

    torch.manual_seed(0)
    model, shape = _real_models()[kind]
    x = torch.randn(256, *shape) * 2
    qnn.calibrate(model, x)
    model.eval()
    g = capture(model, x[:1])
    with qnn.mode(model, "exact"):
        y = model(x)
    fin, fout = g.tensor(g.inputs[0]).fmt, g.tensor(g.outputs[0]).fmt
    codes = fin.to_int(x.double().numpy())
    out = run(g, codes)
    np.testing.assert_array_equal(fout.from_int(out), y.detach().numpy())
    # and the whole chain: capture -> ONNX -> onnxruntime
    path = export_onnx(g, tmp_path / f"{kind}.onnx")
    np.testing.assert_array_equal(run_onnx_codes(path, g, codes), out)


# ---------------------------------------------------------------------------------------------- messages (issue 13)
def test_float_model_is_told_to_quantize_first():
    with pytest.raises(BadInputError, match=r"float model .*quantize it first with qfx.quantize_model"):
        capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.zeros(1, 4))


@needs_nn
def test_function_hints_name_the_right_alternative():
    import torch.nn.functional as F

    import qfx.nn as qnn

    class M(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.inp, self.fc, self.fn = qnn.QuantInput(8, 2), qnn.QLinear(4, 4), fn

        def forward(self, x):
            h = self.fc(self.inp(x))
            torch.tanh(h)  # dead code: not part of the design, never refused
            return self.fn(h).view(h.shape[0], -1)

    for fn, hint in ((F.relu, "QReLU"), (lambda h: h + h, "QAdd"), (lambda h: h.mean((2, 3)), "QGlobalAvgPool2d"),
                     (torch.sigmoid, "makes it qfx.nn.QActivation"), (lambda h: h * h, "makes it qfx.nn.QMul"),
                     (torch.exp, "makes it qfx.nn.QActivation"), (torch.erf, r"x \+ y, x - y, x \* y, x @ y")):
        with pytest.raises(UnsupportedError, match=hint) as ei:
            capture(M(fn), torch.zeros(1, 4))
        assert "torch.tanh" not in str(ei.value) and "(at tanh)" not in str(ei.value)
    with pytest.raises(UnsupportedError, match="float layer in a qfx model; pass the model through qfx.quantize"):
        capture(M(nn.Linear(4, 4)), torch.zeros(1, 4))
    g = capture(M(qnn.QReLU()), torch.zeros(1, 4))  # view(x.shape[0], -1) is understood, the dead tanh skipped
    assert [n.op for n in g.nodes] == [Op.DENSE, Op.RELU, Op.FLATTEN]
