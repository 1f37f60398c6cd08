"""ONNX import of ConvTranspose (1-D, 2-D), Pad edge/reflect and Max/Min of two tensors.

ConvTranspose becomes ``zeropad2d`` (zero insertion) + a stride-1 ``conv2d``; Max/Min become exact
``sub``/``relu``/``add`` nodes. Float torch models go through ``qfx quantize`` and must follow onnxruntime's float
output; a QONNX-style graph must equal QONNX's executor code for code; the exported ONNX computes the interpreter's
bits; one model runs through g++ C simulation.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

from test_qonnx_import import B, compare  # noqa: E402

from qfx.errors import QfxError, UnsupportedError  # noqa: E402
from qfx.ir.interpret import run  # noqa: E402
from qfx.onnx.export import to_onnx_model  # noqa: E402
from qfx.onnx.importer import import_model, input_codes, output_values  # noqa: E402
from qfx.onnx.quantize import quantize_onnx  # noqa: E402
from qfx.onnx.runtime import run_onnx_codes  # noqa: E402


class Decoder2d(nn.Module):
    """Reflect pad, conv, ReLU, stride-2 transposed conv with output_padding, max of two tensors."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3)
        self.t = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        y = self.t(F.relu(self.c(F.pad(x, (1, 1, 1, 1), mode="reflect"))))
        return torch.maximum(y, -y)


class Decoder1d(nn.Module):
    """Replicate pad, grouped stride-2 ConvTranspose1d, min of two tensors."""

    def __init__(self):
        super().__init__()
        self.t = nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1, groups=2)

    def forward(self, x):
        a = self.t(F.pad(x, (2, 1), mode="replicate"))
        return torch.min(a, 0.5 * a + 0.25)


MODELS = {"decoder2d": (Decoder2d, (2, 5, 5)), "decoder1d": (Decoder1d, (4, 7))}


def _export(name: str, opset: int):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(cls().eval(), torch.zeros(1, *shape), buf, opset_version=opset, dynamo=False,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buf.getvalue()), shape


def quantize_and_check(name: str, opset: int, tol: float = 0.06):
    model, shape = _export(name, opset)
    r = np.random.default_rng(1)
    g = import_model(quantize_onnx(model, r.uniform(-1, 1, (96, *shape)).astype(np.float32))[0])
    x = r.uniform(-1, 1, (24, *shape)).astype(np.float32)
    codes = input_codes(g, x)
    got = output_values(g, run(g, codes)).reshape(len(x), -1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]).reshape(len(x), -1)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err < tol, f"{name} opset {opset}: max error {err:.3f} of the largest output"
    return g, codes


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_float_decoder_quantizes_and_imports(name, opset):
    g, codes = quantize_and_check(name, opset)
    ops = [n.op for n in g.nodes]
    zp = [n for n in g.nodes if n.op == "zeropad2d"]
    assert any(n.attrs.get("stride") == ((2, 2) if name == "decoder2d" else (1, 2)) for n in zp)
    assert any(n.attrs.get("mode") == ("reflect" if name == "decoder2d" else "replicate") for n in zp)
    assert "relu" in ops and ops[-1] == ("add" if name == "decoder2d" else "sub")  # b + relu(a-b) / a - relu(a-b)
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


def _qonnx_convt(strides, pads, output_padding, shape=(3, 4, 5), group=1, one_d=False):
    rng = np.random.default_rng(7)
    b = B((3, shape[-1]) if one_d else shape)
    x = b.quant("x", 2.0 ** -4, 8)
    o = 4
    kshape = (3, o // group, 3) if one_d else (3, o // group, 3, 2)
    w = b.quant(b.c(rng.uniform(-1, 1, kshape)), 0.037, 6)  # a non-power-of-two weight scale
    ks = list(kshape[2:])
    y = b.op("ConvTranspose", [x, w, b.c(rng.uniform(-0.5, 0.5, o))], kernel_shape=ks, strides=strides, pads=pads,
             output_padding=output_padding, group=group)
    return b.model(b.quant(y, 2.0 ** -3, 8)), b.in_shape


@pytest.mark.parametrize("strides,pads,output_padding,one_d", [
    ([2, 3], [1, 0, 2, 1], [1, 2], False), ([1, 1], [0, 0, 0, 0], [0, 0], False), ([3], [1, 2], [2], True)])
def test_qonnx_convtranspose_equals_qonnx(strides, pads, output_padding, one_d):
    model, shape = _qonnx_convt(strides, pads, output_padding, one_d=one_d)
    x = np.random.default_rng(3).uniform(-3, 3, (24, *shape))
    g = compare(model, x)
    assert [n.op for n in g.nodes].count("conv2d") == 1


def test_convtranspose_output_crop_is_refused():
    model, _ = _qonnx_convt([2, 2], [3, 0, 0, 0], [0, 0])  # top pad 3 > kernel - 1 = 2: an output crop
    with pytest.raises(UnsupportedError, match="output crop") as exc:
        import_model(model)
    assert "\n" not in str(exc.value)


def test_max_of_scaled_operands_exact_or_refused():
    b = B((6,))
    x = b.quant("x", 2.0 ** -4, 8)
    y = b.op("Max", [b.quant(x, 2.0 ** -2, 6), b.op("Mul", [b.quant(x, 2.0 ** -3, 8), b.c(-0.75)])])  # exact
    g = compare(b.model(y), np.random.default_rng(5).uniform(-8, 8, (32, 6)))
    assert [n.op for n in g.nodes][-3:] == ["sub", "relu", "add"]
    b = B((6,))
    x = b.quant("x", 2.0 ** -4, 8)
    y = b.op("Min", [b.quant(x, 0.1, 40), b.quant(x, 0.3, 8)])  # a 40-bit operand leaves too few multiplier bits
    with pytest.raises(QfxError, match="one exact grid") as exc:
        import_model(b.model(y))
    assert "\n" not in str(exc.value)


@pytest.mark.gxx
def test_decoder_csim(tmp_path):
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.csim import run_csim

    g, _ = quantize_and_check("decoder2d", 13)
    rep = run_csim(export_graph(run_flow(g, DEFAULT_FLOW).graph, "hls", tmp_path / "hls"), n_vectors=32)
    assert rep.mismatches == 0 and rep.outputs_compared > 0
