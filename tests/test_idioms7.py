"""Seventh pass of everyday idioms: division by a tensor (``x / y``: a reciprocal table, then QMul; ``k / x``),
``F.normalize`` (QMul, QSum, an rsqrt table, QMul), the element-wise functions ``torch.sqrt/rsqrt/exp/log/
reciprocal`` and ``F.selu/logsigmoid/softsign`` (tables), and ``F.interpolate(size=...)`` where the size is an
integer multiple of the input's (U-Nets' ``size=skip.shape[2:]``). Train mode == exact mode == interpreter ==
onnxruntime on the qfx ONNX, C simulation; what stays refused is refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import UnsupportedError
from qfx.nn.trace import size_to_factor

from models.harness import csim_agrees, exact_check, square_loss_steps


class Ratios(nn.Module):
    """A gated ratio head: a / (|b| + 1), 2 / (softplus(b) + 1), a normalized embedding, table functions."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.e = nn.Linear(12, 6), nn.Linear(12, 6), nn.Linear(12, 4)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        ratio = a / (b.abs() + 1.0) + 2.0 / (F.softplus(b) + 1.0)
        funcs = (torch.sqrt(b.abs() + 0.5) + torch.exp(-a.abs()) + torch.log(a.abs() + 1.0)
                 + torch.rsqrt(b * b + 1.0) + F.selu(a) + F.logsigmoid(b) + F.softsign(a) + torch.reciprocal(b.abs() + 2))
        return torch.cat([ratio, funcs, F.normalize(self.e(x), dim=1)], 1)


class SizedUpsampling(nn.Module):
    """A small U-Net step: pool, conv, upsample back to the skip's size (nearest and bilinear)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        skip = F.relu(self.c1(x))
        h = F.relu(self.c2(F.max_pool2d(skip, 2)))
        up = F.interpolate(h, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return skip + up + F.interpolate(h, size=(8, 8))


@pytest.fixture(scope="module")
def ratios():
    torch.manual_seed(7)
    x = torch.randn(64, 12)
    q = qfx.quantize_model(Ratios(), qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    return square_loss_steps(q, x, 2), x


def _onnx_agrees(g, x) -> None:
    from qfx.ir import run
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), dtype=np.int64)
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


def test_divisions_normalize_and_tables_agree_everywhere(ratios):
    q, x = ratios
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    fns = {n.attrs.get("fn") for n in g.nodes if n.op.value == "lut"}
    # torch.rsqrt(b * b + 1.0): the constant add inside the table (rsqrt(1.0)), where rounding cannot lose it
    assert {"reciprocal", "sqrt", "exp", "rsqrt(1.0)", "selu", "logsigmoid", "softsign"} <= fns, fns
    assert "log" in fns and "rsqrt(1e-24)" in fns  # torch.log; F.normalize's 1 / sqrt(sum + eps ** 2)
    _onnx_agrees(g, x)


def test_quantized_ratios_follow_the_float_model(ratios):
    """The tables and the reciprocal-times-numerator division track the float model (8-bit formats)."""
    torch.manual_seed(7)
    f = Ratios()
    x = torch.randn(256, 12)
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    q.eval()
    with torch.no_grad():
        want, got = f(x), q(x)
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.15, float(err)


def test_interpolate_to_a_size_is_its_integer_factor():
    torch.manual_seed(8)
    x = torch.randn(32, 2, 8, 8)
    f = SizedUpsampling()
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    ops = [n.op.value for n in g.nodes]
    assert "upsample2d" in ops and ops.count("zeropad2d") >= 2  # nearest, and bilinear's padding + zero insertion
    _onnx_agrees(g, x)
    assert size_to_factor((8, 8), (1, 4, 4, 4)) == (2, 2) and size_to_factor(12, (1, 3, 4)) == 3
    assert size_to_factor((6, 8), (1, 4, 4, 4)) is None  # not a multiple: refused as before


def test_bicubic_resizing_stays_refused_in_one_line():
    """Sizes that are not multiples are QResize2d now (tests/test_idioms8.py); bicubic has no qfx op."""
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return F.interpolate(self.c(x), size=(6, 9), mode="bicubic")

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Odd(), qfx.QFXConfig(), calib_data=torch.randn(8, 2, 4, 4))
    assert "\n" not in str(ei.value) and "bicubic" in str(ei.value)


@pytest.mark.gxx
def test_divisions_and_tables_csim(ratios, tmp_path):
    q, x = ratios
    csim_agrees(q, x, tmp_path / "hls", 48)


class CausalTCN(nn.Module):
    """A temporal block as TCN/WaveNet code writes it: causal left padding of (N, C, L) by F.pad and by
    nn.ConstantPad1d, a replicate-padded conv, dilations, shrinkage activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(2, 4, 3, dilation=2), nn.Conv1d(4, 4, 3, dilation=4)
        self.pad2, self.rep = nn.ConstantPad1d((8, 0), 0.0), nn.ReplicationPad1d(1)
        self.c3, self.shrink = nn.Conv1d(4, 3, 3), nn.Softshrink(0.25)

    def forward(self, x):
        h = F.hardshrink(self.c1(F.pad(x, (4, 0))), 0.1)
        h = F.tanhshrink(self.c2(self.pad2(h))) + h
        return self.shrink(self.c3(self.rep(h))).flatten(1)


def test_causal_1d_padding_and_shrink_tables():
    torch.manual_seed(9)
    x = torch.randn(48, 2, 16)
    f = CausalTCN()
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    pads = [n.attrs["pads"] for n in g.nodes if n.op.value == "zeropad2d"]
    assert (0, 0, 4, 0) in pads and (0, 0, 8, 0) in pads and (0, 0, 1, 1) in pads, pads
    fns = {n.attrs.get("fn") for n in g.nodes if n.op.value == "lut"}
    assert {"hardshrink(0.1)", "tanhshrink", "softshrink(0.25)"} <= fns, fns
    _onnx_agrees(g, x)


class SDPABlock(nn.Module):
    """Attention the way current PyTorch code writes it: q/k/v projections, heads by view + transpose,
    F.scaled_dot_product_attention, heads merged, output projection, mean over the tokens."""

    def __init__(self, e: int = 8, h: int = 2) -> None:
        super().__init__()
        self.h = h
        self.qkv, self.out, self.head = nn.Linear(e, 3 * e), nn.Linear(e, e), nn.Linear(e, 3)

    def forward(self, x):
        b, n, e = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.h, e // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e)
        return self.head(self.out(y).mean(1))


def test_scaled_dot_product_attention_is_its_steps():
    torch.manual_seed(10)
    x = torch.randn(48, 5, 8)
    f = SDPABlock()
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    q.eval()
    with torch.no_grad():  # before training: the quantized block follows the float one
        err = (q(x) - f(x)).abs().max() / f(x).abs().max()
    assert err < 0.2, float(err)
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    ops = [n.op.value for n in g.nodes]
    assert ops.count("matmul") == 2 and "softmax" in ops, ops
    _onnx_agrees(g, x)


def test_masked_or_causal_sdpa_stays_refused_in_one_line():
    class Causal(SDPABlock):
        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.head(F.scaled_dot_product_attention(q, k, v, is_causal=True).mean(1))

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Causal(), qfx.QFXConfig(), calib_data=torch.randn(8, 5, 8))
    assert "\n" not in str(ei.value) and "scaled_dot_product_attention" in str(ei.value)


class SEVariants(nn.Module):
    """Squeeze-excitation as SENet's and CBAM's code write it: ``x * y.view(b, c, 1, 1).expand_as(x)``,
    ``x * y[:, :, None, None]``, ``x + y.expand(-1, -1, h, w)``, ``x * z[..., None]``."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 4), nn.Sigmoid())

    def forward(self, x):
        h = self.c(x)
        b, c, hh, ww = h.shape
        y = self.fc(F.adaptive_avg_pool2d(h, 1).view(b, c))
        a = h * y.view(b, c, 1, 1).expand_as(h)
        z = h.mean(3)  # (N, C, H)
        return (a + h * y[:, :, None, None] + h.amax(1, keepdim=True).expand(-1, c, -1, -1) + h * z[..., None]).flatten(1)


def test_expand_and_none_indexing_broadcast():
    torch.manual_seed(11)
    x = torch.randn(48, 2, 5, 5)
    q = qfx.quantize_model(SEVariants(), qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    assert [n.op.value for n in g.nodes].count("upsample2d") >= 3
    _onnx_agrees(g, x)


def test_expand_read_by_something_else_stays_refused():
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(2, 4, 3, padding=1)

        def forward(self, x):
            h = self.c(x)
            return torch.cat([h, h.mean((2, 3), keepdim=True).expand_as(h)], 1)

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Cat(), qfx.QFXConfig(), calib_data=torch.randn(8, 2, 5, 5))
    assert "\n" not in str(ei.value) and "expand_as" in str(ei.value)


class Selections(nn.Module):
    """Hand-written activations: torch.where(h > 0, h, 0.2 * h), h.masked_fill(h < -0.5, -0.5), torch.where(h <= 1,
    0.0, h - 1), h.where(h >= 0, -h)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        h = self.c(x)
        a = torch.where(h > 0, h, 0.2 * h)
        b = h.masked_fill(h < -0.5, -0.5)
        c = torch.where(h <= 1, 0.0, h - 1)
        d = h.where(h >= 0, -h)
        return torch.cat([a, b, c, d], 1).flatten(1)


def test_where_and_masked_fill_of_comparisons_are_tables():
    from qfx.fixed.tables import evaluate

    torch.manual_seed(12)
    x = torch.randn(48, 2, 4, 4)
    f = Selections()
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    fns = [n for n in (m.fn for m in q.modules() if hasattr(m, "fn") and isinstance(getattr(m, "fn"), str))
           if n.startswith("select_")]
    assert len(fns) == 4, fns
    v = np.linspace(-2, 2, 41)
    by_op = {s.split("(")[0]: s for s in fns}
    np.testing.assert_allclose(evaluate(by_op["select_gt"], v), np.where(v > 0, v, 0.2 * v))
    np.testing.assert_allclose(evaluate(by_op["select_lt"], v), np.where(v < -0.5, -0.5, v))
    np.testing.assert_allclose(evaluate(by_op["select_le"], v), np.where(v <= 1, 0.0, v - 1))
    np.testing.assert_allclose(evaluate(by_op["select_ge"], v), np.abs(v))
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    _onnx_agrees(g, x)


def test_selections_that_are_not_tables_stay_refused():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h, g = self.a(x), self.b(x)
            return torch.where(h > 0, g, h)  # a branch that is another tensor

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Mixed(), qfx.QFXConfig(), calib_data=torch.randn(8, 4))
    assert "\n" not in str(ei.value) and "where" in str(ei.value)
