"""Ninth pass: what torchvision's and timm's own model code does (ConvNeXt's ``LayerNorm2d`` calls ``F.layer_norm`` on a
channels-last view with the module's weight and bias; ``F.group_norm`` with a module's parameters; EfficientNet /
ConvNeXt's ``StochasticDepth`` calls a ``torch.fx.wrap``-ed function from a library whose name starts with
"torch"), and the accumulator sizing that runs once per layer at capture (int64 row sums where they are exact).
Train mode == exact mode == interpreter == onnxruntime on the qfx ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import qfx
from qfx.fixed import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.nn.extra_layers import QTrainOnly

from models.harness import exact_check, square_loss_steps


def _agrees(f: nn.Module, x: torch.Tensor, tol: float = 0.25):
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    q.eval()
    with torch.no_grad():
        want, got = f.eval()(x), q(x)
    assert float((got - want).abs().max() / want.abs().max()) < tol
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    return q, g


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d, written from its description."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class FunctionalNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln2d = LayerNorm2d(8, eps=1e-6)
        self.gw, self.gb = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8) * 0.1)
        self.head = nn.Linear(8 * 4 * 4, 3)
        with torch.no_grad():
            self.ln2d.weight.uniform_(0.5, 1.5)
            self.ln2d.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        h = self.ln2d(self.conv(x))
        h = F.group_norm(F.relu(h), 2, self.gw, self.gb, 1e-5)
        h = F.layer_norm(h, h.shape[1:])  # no affine parameters
        return self.head(h.flatten(1))


def test_functional_norms_with_the_modules_own_parameters():
    torch.manual_seed(0)
    _agrees(FunctionalNorms(), torch.randn(16, 3, 4, 4))


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Row-mode stochastic depth (what torchvision.ops.stochastic_depth does), an identity outside training."""
    if not training or p == 0.0:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.dim() - 1)), dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


torch.fx.wrap("stochastic_depth")
stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"  # a library named torch*, not torch itself


class StochasticDepth(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return stochastic_depth(x, self.p, self.training)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = StochasticDepth(0.3)

    def forward(self, x):
        return x + self.drop(F.relu(self.conv(x)))


def test_stochastic_depth_from_a_torch_named_library_is_train_only():
    torch.manual_seed(1)
    f = nn.Sequential(nn.Conv2d(2, 4, 1), Block(), Block(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    q, g = _agrees(f, torch.randn(16, 2, 3, 3))
    assert sum(isinstance(m, QTrainOnly) for m in q.modules()) == 2


class TimmAttention(nn.Module):
    """timm's Attention: qkv reshaped to (B, N, 3, heads, hd), permuted to (3, B, heads, N, hd) (the batch moves to
    dim 1), ``q, k, v = qkv.unbind(0)``, fused (F.scaled_dot_product_attention) or written out."""

    def __init__(self, dim: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmViT(nn.Module):
    """timm's VisionTransformer layout: patch embedding, class token, position embedding, pre-norm blocks with
    LayerScale (``x * self.gamma``), a final norm and the class token (or the mean of the others) to the head."""

    def __init__(self, fused: bool, pool: str):
        super().__init__()
        self.pool = pool
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 5, 8) * 0.2)
        self.n1, self.n2, self.norm = nn.LayerNorm(8), nn.LayerNorm(8), nn.LayerNorm(8)
        self.attn = TimmAttention(8, 2, fused)
        self.g1, self.g2 = nn.Parameter(torch.full((8,), 0.5)), nn.Parameter(torch.full((8,), 0.5))
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = x + self.attn(self.n1(x)) * self.g1
        x = self.norm(x + self.mlp(self.n2(x)) * self.g2)
        return self.head(x[:, 1:].mean(dim=1) if self.pool == "avg" else x[:, 0])


@pytest.mark.parametrize("fused,pool", [(False, "token"), (True, "avg")])
def test_timm_style_vit_with_unbind(fused, pool):
    torch.manual_seed(4)
    _agrees(TimmViT(fused, pool), torch.randn(16, 3, 8, 8), tol=0.3)


def _acc_reference(w, fw, fx, b, fb):
    """The interval analysis in Python ints (the definition lossless_acc_format must meet)."""
    f = fx.frac_bits + fw.frac_bits if fb is None else max(fx.frac_bits + fw.frac_bits, fb.frac_bits)
    sh = f - fx.frac_bits - fw.frac_bits
    lo_all, hi_all = 0, 0
    for o, row in enumerate(w.tolist()):
        lo = sum(min(c * fx.min_code, c * fx.max_code) for c in row) << sh
        hi = sum(max(c * fx.min_code, c * fx.max_code) for c in row) << sh
        if b is not None:
            lo, hi = lo + (int(b[o]) << (f - fb.frac_bits)), hi + (int(b[o]) << (f - fb.frac_bits))
        lo_all, hi_all = min(lo_all, lo), max(hi_all, hi)
    return FxFormat.for_code_range(lo_all, hi_all, f, signed=True if lo_all < 0 or fx.signed or fw.signed else None)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 32), st.integers(-4, 36), st.booleans(), st.integers(1, 32), st.integers(-4, 36), st.booleans(),
       st.integers(1, 4), st.integers(0, 6), st.booleans(), st.integers(0, 2**32 - 1))
def test_lossless_acc_format_is_the_interval_analysis(ww, wi, ws, xw, xi, xs, o, n, with_bias, seed):
    fw, fx = FxFormat(ww, wi, ws), FxFormat(xw, xi, xs)
    r = np.random.default_rng(seed)
    w = r.integers(fw.min_code, fw.max_code, size=(o, n), endpoint=True, dtype=np.int64)
    w[:, :1] = fw.min_code if r.random() < 0.5 else fw.max_code  # the extremes, where overflow would show
    fb = FxFormat(16, 6) if with_bias else None
    b = r.integers(fb.min_code, fb.max_code, size=o, endpoint=True) if with_bias else None
    try:
        want = _acc_reference(w, fw, fx, b, fb)
    except Exception as e:  # wider than int64 codes: both refuse the same way
        with pytest.raises(type(e)):
            lossless_acc_format(w, fw, fx, b, fb)
        return
    assert lossless_acc_format(w, fw, fx, b, fb) == want


def test_codes_from_double_in_pieces_is_the_whole_conversion(monkeypatch):
    """Large weight tensors are converted in pieces (memory); the pieces give the codes of the whole array."""
    from qfx.fixed import kernels

    r = np.random.default_rng(5)
    x = np.concatenate([r.normal(0, 3, 997), [0.0, -0.0, 2.0**-30, -(2.0**40), 0.5, -0.5, 1.5, -1.5]]).reshape(3, -1)
    for fmt in (FxFormat(8, 3, True, "RND_CONV", "SAT"), FxFormat(6, 2, False, "TRN", "WRAP"),
                FxFormat(12, 1, True, "RND_ZERO", "SAT_SYM")):
        whole = kernels.codes_from_double(x, fmt)
        monkeypatch.setattr(kernels, "_CHUNK", 7)
        pieces = kernels.codes_from_double(x, fmt)
        monkeypatch.setattr(kernels, "_CHUNK", 1 << 18)
        assert pieces.shape == x.shape and np.array_equal(pieces, whole)


@pytest.mark.slow
@pytest.mark.verilator
def test_torchvision_style_blocks_rtl_cosim(tmp_path):
    """The functional norms (LayerNorm2d, GroupNorm, LayerNorm over (C, H, W)) and a residual block with stochastic
    depth in RTL: one Verilator build for both projects, with stalls, 0 mismatches."""
    import dataclasses

    from qfx.backends import rtl
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.cosim import run_cosim_many

    torch.manual_seed(2)
    models = [(FunctionalNorms(), torch.randn(32, 3, 4, 4)),
              (nn.Sequential(nn.Conv2d(2, 4, 1), Block(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)),
               torch.randn(32, 2, 3, 3))]
    dirs = []
    for i, (f, x) in enumerate(models):
        q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
        square_loss_steps(q, x, 2)
        g = dataclasses.replace(run_flow(exact_check(q, x)[0], DEFAULT_FLOW).graph, name=f"i9_{i}")
        rtl.write_project(g, tmp_path / f"p{i}")
        dirs.append(tmp_path / f"p{i}")
    for rep in run_cosim_many(dirs, n_vectors=24, seed=5, work_dir=tmp_path / "w"):
        assert rep.ok and rep.mismatches == 0 and rep.received, (rep.top, rep.mismatches, rep.received)
