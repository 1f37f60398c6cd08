"""Self-attention written the usual way (``q @ k.transpose(-2, -1)``, ``softmax(dim=-1)``, ``att @ v``) through
``qfx.quantize_model``: QMatMul twins of the two activation products, QSoftmax over the score rows, a few training
steps, then torch exact mode == train mode == interpreter == onnxruntime (qfx's ONNX export) == C simulation (io
parallel and stream), and one small RTL co-simulation, 0 mismatches. Also the multi-head form (view + transpose,
``k.mT``, ``torch.matmul``, sizes read in forward) and QMatMul's train mode when float64 cannot hold the sum."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
import qfx.nn as qn
from qfx.errors import UnsupportedError

from models.harness import cross_entropy_steps, exact_check, onnxruntime_agrees

S, E = 6, 8


class SelfAttention(nn.Module):
    """One head: nn.Linear projections of (N, S, E), scaled dot-product scores, softmax over each row, then the mean
    over the sequence and a classifier."""

    def __init__(self, e: int = E, n_classes: int = 3) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(e, e), nn.Linear(e, e), nn.Linear(e, e)
        self.head = nn.Linear(e, n_classes)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(E))
        att = att.softmax(dim=-1)
        y = att @ v
        return self.head(y.mean(1))


class MultiHead(nn.Module):
    """Two heads the way minGPT writes them: sizes read from x.shape, view + transpose(1, 2), k.mT, torch.matmul,
    F.softmax(dim=-1), heads merged with transpose + contiguous + view, flattened into the classifier."""

    def __init__(self, e: int = E, heads: int = 2, n_classes: int = 3) -> None:
        super().__init__()
        self.h = heads
        self.qkv = nn.ModuleList([nn.Linear(e, e) for _ in range(3)])
        self.proj = nn.Linear(e, e)
        self.head = nn.Linear(S * e, n_classes)

    def forward(self, x):
        b, s, e = x.shape
        d = e // self.h
        q, k, v = (m(x).view(b, s, self.h, d).transpose(1, 2) for m in self.qkv)
        att = F.softmax(torch.matmul(q, k.mT) / math.sqrt(d), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, s, e)
        return self.head(torch.flatten(F.relu(self.proj(y)), 1))


def _trained(model: nn.Module, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(192, S, E)
    y = (x[:, :, :3].sum(1)).argmax(1)
    q = qfx.quantize_model(model, qfx.QFXConfig(weight_width=6, act_width=8), calib_data=x[:128])
    losses = cross_entropy_steps(q, x[:128], y[:128], 4)
    assert all(math.isfinite(v) for v in losses)
    return q, x[128:]


@pytest.fixture(scope="module")
def single():
    torch.manual_seed(0)
    return _trained(SelfAttention())


@pytest.fixture(scope="module")
def multi():
    torch.manual_seed(1)
    return _trained(MultiHead(), seed=1)


@pytest.mark.parametrize("which", ["single", "multi"])
def test_train_exact_interpreter_agree(which, request):
    q, x = request.getfixturevalue(which)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    ops = [n.op.value for n in g.nodes]
    assert ops.count("matmul") == 2 and ops.count("softmax") == 1
    sm = next(n for n in g.nodes if n.op.value == "softmax")
    assert g.tensor(sm.output).shape == ((S, S) if which == "single" else (2, S, S))


@pytest.mark.parametrize("which", ["single", "multi"])
def test_onnxruntime_matches_torch_exact_and_interpreter(which, request, tmp_path):
    q, x = request.getfixturevalue(which)
    onnxruntime_agrees(q, x, tmp_path / f"{which}.onnx", 200)


@pytest.mark.gxx
def test_csim_bit_exact(single, multi, tmp_path):
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for which, (q, x) in (("single", single), ("multi", multi)):
        for io in ("parallel", "stream"):
            dirs.append(qfx.export(q, x[:1], "hls", tmp_path / f"{which}_{io}", name=f"att_{which}_{io}", io=io))
    reps = run_csim_batch(dirs, n_vectors=200, seed=4)
    assert [r.mismatches for r in reps] == [0] * len(dirs) and all(r.passed for r in reps)


@pytest.mark.verilator
def test_rtl_cosim_bit_exact(single, tmp_path):
    from qfx.sim.cosim import run_cosim

    q, x = single
    prj = qfx.export(q, x[:1], "rtl", tmp_path / "att_rtl", name="att")
    rep = run_cosim(prj, n_vectors=60, seed=2, work_dir=tmp_path / "w")
    assert rep.ok and rep.mismatches == 0 and rep.received == rep.vectors == 60


# ------------------------------------------------------------------------------------------------ QMatMul itself
def _on_grid(shape, frac_bits: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    hi = 2 ** (width - 1)
    return (torch.randint(-hi, hi, shape, generator=g).double() * 2.0 ** -frac_bits)


@pytest.mark.parametrize("wide", [False, True], ids=["float64", "wider than float64"])
def test_qmatmul_train_mode_is_exact_mode(wide):
    """Train mode equals exact mode bit for bit: float64 products while the exact sum fits 53 bits, exact mode's
    integer values (with float gradients) when it does not."""
    from qfx.nn.op_layers import _float64_exact

    out = qn.FixedQuant(24, 50, True, "RND", "SAT", learn_int_bits=False) if wide else \
        qn.FixedQuant(16, 10, True, "RND", "SAT", learn_int_bits=False)
    m = qn.QMatMul(out_quant=out)
    for seed in range(4):
        w = 28 if wide else 8
        a = _on_grid((5, 2, 3, 4), 5 + seed, w, seed).requires_grad_(True)
        b = _on_grid((5, 2, 4, 3), 3, w, seed + 10)
        assert _float64_exact(a, b) is not wide
        with qn.mode(m, "exact"):
            ye = m(a, b)
        yt = m(a, b)
        assert torch.equal(yt.double(), ye.double())
        yt.sum().backward()
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
        a.grad = None


def test_matrix_product_with_a_parameter_on_the_left_is_refused_in_one_line():
    """``x @ self.w`` is a dense layer (tests/test_idioms8.py); ``self.w @ x`` mixes samples' rows: refused."""
    class W(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(E, E))

        def forward(self, x):
            return self.w @ x

    with pytest.raises(UnsupportedError, match="use nn.Linear") as e:
        qfx.quantize_model(W(), qfx.QFXConfig())
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedError, match="equal leading dims"):
        qn.QMatMul(out_width=8)(torch.randn(2, 3, 4), torch.randn(2, 1, 4, 5))
