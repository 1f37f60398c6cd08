"""Shared pieces of the training benchmarks: the digits models (float, qfx, Brevitas twins), one training recipe for
all of them, evaluation, and small statistics/formatting helpers.

Models
------
* ``mlp``: 64-64-32-10 (``qfx.models.digits_mlp``).
* ``cnn``: Conv(1->8)-BN-ReLU-Conv(8->16)-BN-ReLU-MaxPool(2)-Flatten-Linear(256->10), 3x3 convs, padding 1,
  convs without bias (a BN follows). The plain CNN of the issue; Brevitas can express it layer for layer.
* ``rescnn``: ``qfx.models.DigitsCNN`` (16 channels, one residual block) for the qfx-only accuracy figures.

Quantization (qfx): ``QFXConfig(weight=W, bias=2W, act=W, bn=W, input=8, khot=K)`` = what ``qfx train --bits W``
uses; every tensor is quantized (input, weights, biases, BN scale/shift, every layer output).

Quantization (Brevitas 0.13.4, fixed-point = power-of-two scales): input ``QuantIdentity(Int8ActPerTensorFixedPoint,
8 bits)``; weights ``Int8WeightPerTensorFixedPoint`` at W bits; biases ``IntBias`` at 2W bits (scale = input scale x
weight scale, so quant tensors flow between layers); conv/linear outputs ``Int8ActPerTensorFixedPoint`` at W bits;
ReLU ``QuantReLU(Uint8ActPerTensorFixedPoint)`` at W bits. BatchNorm stays a float ``nn.BatchNorm2d`` (Brevitas's
normal training path; it quantizes BN only after folding), so Brevitas has fewer quantized tensors than qfx there.

Recipe (same for every model, mirrors ``qfx.nn.train.train_model``): Adam (``qfx.nn.train.make_optimizer``: fused,
binary points in their own group), cosine learning-rate decay, batch 64; float pre-training 20 epochs at lr 1e-2,
then QAT at lr 2e-3 (qfx binary points 1e-2) starting from the float weights.
"""
from __future__ import annotations

import copy
import statistics
from typing import Callable, Sequence

import torch
from torch import nn

from qfx.nn import QFXConfig, quantize_model
from qfx.nn.exact import mode
from qfx.nn.train import fit_epochs, make_optimizer

KINDS = ("mlp", "cnn", "rescnn")


def plain_cnn() -> nn.Sequential:
    """Conv(1->8)-BN-ReLU-Conv(8->16)-BN-ReLU-MaxPool-Linear on (N, 1, 8, 8)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def float_model(kind: str) -> nn.Module:
    from qfx.models import DigitsCNN, digits_mlp

    if kind == "mlp":
        return digits_mlp()
    if kind == "cnn":
        return plain_cnn()
    if kind == "rescnn":
        return DigitsCNN(16)  # the figures in benchmarks/README.md were measured with 16 channels
    raise SystemExit(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def qfx_config(bits: int, khot: int | None = None) -> QFXConfig:
    """Every tensor quantized: weights/acts/BN at ``bits``, biases 2*bits, input 8 bits (as ``qfx train``)."""
    return QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits, input_width=8, khot=khot)


def qfx_model(fmodel: nn.Module, bits: int, calib: torch.Tensor, khot: int | None = None) -> nn.Module:
    return quantize_model(fmodel, qfx_config(bits, khot), calib)


# ============================================================================ Brevitas twins
def brevitas_model(kind: str, bits: int, fmodel: nn.Module | None = None) -> nn.Module:
    """Brevitas fixed-point twin of ``float_model(kind)`` (see the module docstring); copies ``fmodel``'s weights."""
    import brevitas.nn as qnn
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, IntBias,
                                Uint8ActPerTensorFixedPoint)

    wq = dict(weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=bits)
    oq = dict(output_quant=Int8ActPerTensorFixedPoint, output_bit_width=bits, return_quant_tensor=True)
    bq = dict(bias_quant=IntBias, bias_bit_width=2 * bits)

    def relu() -> nn.Module:
        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=bits, return_quant_tensor=True)

    inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=8, return_quant_tensor=True)
    if kind == "mlp":
        last = dict(oq, return_quant_tensor=False)
        m = nn.Sequential(
            nn.Flatten(), inp,
            qnn.QuantLinear(64, 64, True, **wq, **bq, **oq), relu(),
            qnn.QuantLinear(64, 32, True, **wq, **bq, **oq), relu(),
            qnn.QuantLinear(32, 10, True, **wq, **bq, **last),
        )
        float_idx = {1: 2, 3: 4, 5: 6}  # float Sequential index -> Brevitas index
    elif kind == "cnn":
        # conv outputs are not quant tensors (BN is float), so no bias quant is needed (convs have no bias)
        coq = dict(output_quant=Int8ActPerTensorFixedPoint, output_bit_width=bits)
        m = nn.Sequential(
            inp,
            qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, **wq, **coq), nn.BatchNorm2d(8), relu(),
            qnn.QuantConv2d(8, 16, 3, padding=1, bias=False, **wq, **coq), nn.BatchNorm2d(16), relu(),
            nn.MaxPool2d(2), nn.Flatten(),
            qnn.QuantLinear(256, 10, True, **wq, **bq, output_quant=Int8ActPerTensorFixedPoint,
                            output_bit_width=bits),
        )
        float_idx = {i: i + 1 for i in range(9)}
    else:
        raise SystemExit(f"no Brevitas twin for {kind!r} (choose mlp or cnn)")
    if fmodel is not None:
        src = list(fmodel.children())
        dst = list(m.children())
        for i, j in float_idx.items():
            if list(src[i].parameters()) or list(src[i].buffers()):
                missing, unexpected = dst[j].load_state_dict(src[i].state_dict(), strict=False)
                assert not unexpected, unexpected
    return m


def _value(y) -> torch.Tensor:
    return y.value if hasattr(y, "value") else y


# ============================================================================ training
def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int,
        int_bits_lr: float | None = None, batch: int = 64) -> None:
    """Adam + cosine decay over ``epochs`` (the ``qfx.nn.train`` schedule), seeded batch order."""
    if epochs <= 0:
        return
    gen = torch.Generator().manual_seed(seed)
    fit_epochs(_Unwrapped(model), make_optimizer(model, lr, int_bits_lr), x, y, epochs, batch, gen)


class _Unwrapped(nn.Module):
    """Brevitas may return a QuantTensor; the shared loop wants a plain tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _value(self.model(x))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, qfx_mode: str | None = None) -> float:
    """Top-1 accuracy in % (eval mode); ``qfx_mode`` = "exact" (int64 golden path) or "train" (fake quant)."""
    was = model.training
    model.eval()
    try:
        if qfx_mode is None:
            out = _value(model(x))
        else:
            with mode(model, qfx_mode):
                out = model(x)
        return 100.0 * float((out.argmax(dim=1) == y).float().mean())
    finally:
        model.train(was)


def copy_model(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m)


# ============================================================================ statistics / formatting
def mean_spread(v: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def fmt_ms(v: Sequence[float], digits: int = 1) -> str:
    m, s = mean_spread(v)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(v) > 1 else f"{m:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def timed_interleaved(steps: dict[str, Callable[[], None]], rounds: int, per_round: int, warmup_rounds: int = 2,
                      ) -> dict[str, dict[str, list[float]]]:
    """Per-step times (seconds) of each callable, interleaved A/B/C, B/C/A, ... in rounds of ``per_round`` steps so
    machine drift hits every variant alike; warm-up rounds discarded. Returns ``{name: {"wall": [...], "cpu": [...]}}``
    where "cpu" is this process's CPU time (``time.process_time``): on a machine shared with other processes the
    wall time includes the time the process waited for a core, the CPU time does not."""
    import time

    names = list(steps)
    out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(warmup_rounds + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            fn = steps[n]
            for _ in range(per_round):
                c, t = time.process_time(), time.perf_counter()
                fn()
                dt, dc = time.perf_counter() - t, time.process_time() - c
                if r >= warmup_rounds:
                    out[n]["wall"].append(dt)
                    out[n]["cpu"].append(dc)
    return out
