"""Training on a CUDA device (marker ``gpu``; deselected by default: ``pytest -m gpu tests/test_gpu.py``).

The fused C++ kernels are CPU-only; on CUDA every quantizer, chain and BatchNorm takes the tensor-op path
automatically (``qfx.nn.quant``), whose element operations are exact (power-of-two scaling, floor, clamp, compares;
powers of two assembled from their bits by ``pow2_exact``), so quantized values and input gradients are the CPU's bit
for bit. What cannot be bit-identical on a GPU are the reductions: cuDNN/cuBLAS convolutions and matmuls, BatchNorm
statistics and the binary-point gradients' dot products sum in another order (and CUDA's rsqrt rounds differently),
so a few training steps give float weights that differ from the CPU's in the last bits; the tests bound that.
The CPU side of the same path (tensor-op vs fused, bit for bit) runs in CI: tests/test_fused_quant.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES
from qfx.nn import QFXConfig, quantize_model
from qfx.nn.quant import FixedQuant, tensor_op_path

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
@pytest.mark.parametrize("per_channel,khot", [(False, None), (True, None), (False, 2)])
def test_quantizer_on_cuda_equals_cpu(rounding, overflow, per_channel, khot):
    gen = torch.Generator().manual_seed(ROUNDING_MODES.index(rounding) * 7 + OVERFLOW_MODES.index(overflow))
    x = torch.randn(32, 6, 5, 5, generator=gen) * 4
    x[0, 0, 0, :4] = torch.tensor([0.5, -0.5, 1.5, -2.5]) / 8  # ties at step 1/8
    g = torch.randn(x.shape, generator=gen)
    q = FixedQuant(6, 2, True, rounding, overflow, per_channel_axis=1 if per_channel else None,
                   num_channels=6 if per_channel else None, khot=khot)
    if per_channel:
        with torch.no_grad():
            q.int_bits_param.copy_(torch.arange(-1.0, 5.0))
    res = []
    for dev in ("cpu", "cuda"):
        qd = copy.deepcopy(q).to(dev)
        xd = x.to(dev).requires_grad_()
        with tensor_op_path():
            y = qd(xd)
        if dev == "cuda":
            assert "FakeQuant" in y.grad_fn.name()  # chosen automatically (no switch)
        y.backward(g.to(dev))
        res.append((y.detach().cpu(), xd.grad.cpu(), qd.int_bits_param.grad.cpu()))
    (ya, ga, pa), (yb, gb, pb) = res
    assert torch.equal(ya, yb)
    assert torch.equal(ga, gb)
    torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-5)  # dot / sum: another summation order


def test_parameters_and_buffers_move_with_to():
    from qfx.models import DigitsCNN

    m = quantize_model(DigitsCNN(4), QFXConfig(weight_width=4, act_width=4, per_channel=True), torch.rand(32, 1, 8, 8))
    m = m.to("cuda")
    assert all(p.is_cuda for p in m.parameters())
    assert all(b.is_cuda for b in m.buffers())
    qs = [q for q in m.modules() if isinstance(q, FixedQuant)]
    assert qs and all(q.int_bits_param.is_cuda and q.observed_max.is_cuda for q in qs)


def test_digits_cnn_trains_on_cuda_like_on_cpu():
    """A few steps of the digits CNN on CUDA and on the CPU (fused kernels) from the same start with the same
    batches: the binary points move alike and exact-mode outputs agree (all but rare one-LSB flips from the
    reductions' last bits, see the module docstring)."""
    from qfx.data import load_digits_split
    from qfx.models import DigitsCNN
    from qfx.nn import mode
    from qfx.nn.train import evaluate, int_bits_snapshot, make_optimizer

    xtr, ytr, xte, yte = load_digits_split()
    torch.manual_seed(0)
    m0 = quantize_model(DigitsCNN(8), QFXConfig(weight_width=8, act_width=8, bn_width=8), xtr[:256])
    models, losses = {}, {}
    for dev in ("cpu", "cuda"):
        m = copy.deepcopy(m0).to(dev)
        opt = make_optimizer(m, 1e-2, 5e-2)
        losses[dev] = []
        for i in range(8):
            xb, yb = xtr[i * 64:(i + 1) * 64].to(dev), ytr[i * 64:(i + 1) * 64].to(dev)
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(m(xb), yb)
            loss.backward()
            opt.step()
            losses[dev].append(loss.item())
        models[dev] = m
    assert losses["cpu"][0] == pytest.approx(losses["cuda"][0], rel=1e-3)
    assert losses["cpu"] == pytest.approx(losses["cuda"], rel=2e-2)
    ia = [v for vs in int_bits_snapshot(models["cpu"]).values() for v in vs]
    ib = [v for vs in int_bits_snapshot(models["cuda"]).values() for v in vs]
    assert len(ia) == len(ib) and max(abs(a - b) for a, b in zip(ia, ib)) <= 1
    assert sum(a != b for a, b in zip(ia, ib)) <= max(1, len(ia) // 20)  # a binary point right at a .5 boundary
    outs = {}
    for dev, m in models.items():
        m.eval()
        with torch.no_grad(), mode(m, "exact"):
            outs[dev] = m(xte[:256].to(dev)).cpu()
    same = (outs["cpu"] == outs["cuda"]).float().mean().item()
    assert same >= 0.95, same
    assert (outs["cpu"].argmax(1) == outs["cuda"].argmax(1)).float().mean().item() >= 0.98
    assert abs(evaluate(models["cpu"], xte, yte, exact=True) - evaluate(models["cuda"], xte, yte, exact=True)) < 0.02
