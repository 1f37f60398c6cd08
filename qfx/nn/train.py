"""Quantization-aware training on the digits data set, checkpoints, and the loader other commands use.

Schedule: a short float pre-training, conversion with ``quantize_model`` (binary points calibrated on a training
batch), then fixed-point fine-tuning with learned binary points (Adam; the integer-bit parameters get their own
learning rate; cosine decay). The reported accuracy is measured in **exact** mode (int64 arithmetic), i.e. what the
exported hardware computes.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from qfx.errors import BadInputError
from qfx.outdir import atomic_output_file
from qfx.nn.convert import QFXConfig, quantize_model
from qfx.nn.exact import mode
from qfx.nn.quant import FixedQuant

__all__ = ["TrainResult", "train_model", "evaluate", "save_checkpoint", "load_checkpoint", "checkpoint_dict",
           "make_optimizer", "int_bits_snapshot", "benchmark_step", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    model: nn.Module
    kind: str
    config: QFXConfig
    accuracy: float  # exact-mode test accuracy of the fixed-point model
    float_accuracy: float | None  # test accuracy of the float model after pre-training
    train_mode_accuracy: float  # the same fixed-point model evaluated with float32 fake quantization
    int_bits_history: dict[str, list[list[int]]] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def make_optimizer(model: nn.Module, lr: float, int_bits_lr: float | None = None,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam with the binary-point parameters in their own group (their own learning rate, no weight decay). Uses
    the fused CPU/GPU kernel when available: many tiny parameters make the per-parameter Adam loop the bottleneck
    otherwise. When the binary points would get the same hyperparameters as the rest (``int_bits_lr`` None or equal
    to ``lr``, no weight decay) everything is one group: the same updates, one fused kernel call fewer per step."""
    ib = [p for m in model.modules() if isinstance(m, FixedQuant) for p in [m.int_bits_param] if p.requires_grad]
    ib_ids = {id(p) for p in ib}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ib_ids]
    ib_lr = int_bits_lr if int_bits_lr is not None else lr
    if ib and ib_lr == lr and weight_decay == 0.0:
        groups = [{"params": rest + ib, "weight_decay": 0.0}]
    else:
        groups = [{"params": rest, "weight_decay": weight_decay}]
        if ib:
            groups.append({"params": ib, "lr": ib_lr, "weight_decay": 0.0})
    try:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch / unsupported device
        return torch.optim.Adam(groups, lr=lr)


def int_bits_snapshot(model: nn.Module) -> dict[str, list[int]]:
    """Rounded integer bits of every quantizer, by module path."""
    return {n: m.int_bits() for n, m in model.named_modules() if isinstance(m, FixedQuant)}


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a model without any): batches are moved there."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, exact: bool = False, batch: int = 512) -> float:
    """Top-1 accuracy (0..1); ``exact`` runs the int64 path."""
    was = model.training
    model.eval()
    correct = 0
    dev = model_device(model)
    try:
        with mode(model, "exact" if exact else "train"):
            for i in range(0, len(x), batch):
                out = model(x[i:i + batch].to(dev))
                correct += int((out.argmax(dim=1) == y[i:i + batch].to(dev)).sum())
    finally:
        model.train(was)
    return correct / max(len(x), 1)


def fit_epochs(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, epochs: int,
               batch: int, gen: torch.Generator, on_epoch: Callable[[int], None] | None = None,
               progress: Callable[[int], None] | None = None) -> None:
    """The one training loop (cross-entropy, cosine-decayed lr, batch order from ``gen``): qfx train, the demo and
    the benchmarks all use it, so their figures come from the same recipe."""
    lossf = nn.CrossEntropyLoss()
    steps = epochs * math.ceil(len(x) / batch)
    base = [g["lr"] for g in opt.param_groups]
    k = 0
    dev = model_device(model)  # CUDA or CPU: the same loop (quantizers pick their path per tensor)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * 0.5 * (1 + math.cos(math.pi * k / steps))
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(x[idx].to(dev)), y[idx].to(dev))
            loss.backward()
            opt.step()
            k += 1
            if progress:
                progress(1)
        if on_epoch:
            on_epoch(ep)


def train_model(kind: str = "cnn", bits: int = 8, khot: int | None = None, epochs: int = 30, batch: int = 64,
                lr: float = 2e-3, seed: int = 0, float_epochs: int = 20, float_lr: float = 1e-2,
                int_bits_lr: float = 1e-2, config: QFXConfig | None = None, quiet: bool = True,
                threads: int | None = None, device: str | torch.device | None = None) -> TrainResult:
    """Train a digits model (``"mlp"`` or ``"cnn"``) in fixed point; ``bits`` sets every width in the default
    config (weights, activations, BN scale/shift, residual add; bias 2*bits; input 8 bits) unless ``config`` is given.
    ``device`` (e.g. ``"cuda"``) trains there (quantization is set up on the CPU); the default is the CPU.
    """
    from qfx.data import load_digits_split
    from qfx.models import build_model

    if bits < 2 or bits > 24:
        raise BadInputError(f"--bits must be in 2..24, got {bits}")
    if epochs < 0 or float_epochs < 0 or batch < 1 or lr <= 0:
        raise BadInputError("epochs must be >= 0, batch >= 1 and lr > 0")
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed=0)
    fmodel = build_model(kind).to(device or "cpu")
    bar = None
    total = (float_epochs + epochs) * math.ceil(len(xtr) / batch)
    if not quiet and sys.stderr.isatty():  # a bar in a piped log is thousands of carriage-return lines
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"train {kind} W={bits}" + (f" K={khot}" if khot else ""), unit="step",
                   leave=False, file=sys.stderr)
    progress = bar.update if bar is not None else None
    float_acc = None
    try:
        if float_epochs:
            fit_epochs(fmodel, make_optimizer(fmodel, float_lr), xtr, ytr, float_epochs, batch, gen, progress=progress)
            float_acc = evaluate(fmodel, xte, yte)
        if config is None:
            config = QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits,
                               input_width=8, khot=khot)
        elif khot is not None:
            config.khot = khot
        calib = xtr[torch.randperm(len(xtr), generator=gen)[:512]]
        qmodel = quantize_model(fmodel.cpu(), config, calib).to(device or "cpu")
        history: dict[str, list[list[int]]] = {}

        def snap(_ep: int = -1) -> None:
            for n, v in int_bits_snapshot(qmodel).items():
                history.setdefault(n, []).append(v)

        snap()
        if epochs:
            opt = make_optimizer(qmodel, lr, int_bits_lr)
            fit_epochs(qmodel, opt, xtr, ytr, epochs, batch, gen, on_epoch=snap, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    acc = evaluate(qmodel, xte, yte, exact=True)
    tacc = evaluate(qmodel, xte, yte, exact=False)
    args = dict(kind=kind, bits=bits, khot=khot, epochs=epochs, batch=batch, lr=lr, seed=seed,
                float_epochs=float_epochs, float_lr=float_lr, int_bits_lr=int_bits_lr)
    return TrainResult(qmodel, kind, qmodel.qfx_config, acc, float_acc, tacc, history, args, time.time() - t0)


def checkpoint_dict(result: TrainResult) -> dict[str, Any]:
    """Plain checkpoint (tensors, str, int, float, bool, None, lists, dicts): loads with ``weights_only=True``."""
    return {
        "qfx_checkpoint": CHECKPOINT_VERSION,
        "model_kind": result.kind,
        "config": result.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
        "accuracy": float(result.accuracy),
        "train_mode_accuracy": float(result.train_mode_accuracy),
        "float_accuracy": None if result.float_accuracy is None else float(result.float_accuracy),
        "int_bits_history": result.int_bits_history,
        "args": dict(result.args),
    }


def save_checkpoint(result: TrainResult | dict[str, Any], path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write atomically (temp file in the same folder, then rename); refuses to overwrite unless ``force``."""
    ck = checkpoint_dict(result) if isinstance(result, TrainResult) else result
    dest = Path(path).expanduser().absolute()
    with atomic_output_file(dest, force) as f:
        torch.save(ck, f)
    return dest


def load_checkpoint(path: str | os.PathLike[str], with_info: bool = False) -> Any:
    """Rebuild the fixed-point model of a ``qfx train`` checkpoint (``weights_only`` load; eval mode).

    Returns the model, or ``(model, checkpoint_dict)`` with ``with_info``.
    """
    from qfx.models import build_model

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"checkpoint {p} does not exist")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise BadInputError(f"cannot read checkpoint {p}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ck, dict) or ck.get("qfx_checkpoint") != CHECKPOINT_VERSION:
        raise BadInputError(f"{p} is not a qfx checkpoint (version {CHECKPOINT_VERSION})")
    try:
        config = QFXConfig.from_dict(ck["config"])
        model = quantize_model(build_model(ck["model_kind"]), config)
        model.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise BadInputError(f"checkpoint {p} does not match its model: {str(exc).splitlines()[0]}") from None
    model.eval()
    return (model, ck) if with_info else model


def benchmark_step(kind: str = "mlp", bits: int = 4, batch: int = 64, steps: int = 200, threads: int = 2,
                   compile: bool = False, seed: int = 0) -> dict[str, float]:
    """Median-ish (25th percentile) training-step time of the float model and of its fixed-point twin, same
    optimizer (``make_optimizer``), same batches. ``compile`` wraps forward+backward in ``torch.compile``.

    Returns ``{"float_ms", "fixed_ms", "ratio"}``. Timings on a shared machine are noisy; take the best of runs.
    """
    from qfx.data import load_digits_split
    from qfx.models import build_model
    from qfx.nn import _fused

    torch.set_num_threads(threads)
    _fused.wait()  # time the fused kernels, not the tensor-op path that runs while they are being built
    torch.manual_seed(seed)
    xtr, ytr, _, _ = load_digits_split()
    lossf = nn.CrossEntropyLoss()
    fmodel = build_model(kind)
    cfg = QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits)
    qmodel = quantize_model(fmodel, cfg, xtr[:256])

    def timed(model: nn.Module) -> float:
        opt = make_optimizer(model, 1e-3)
        model.train()

        def fb(xb: torch.Tensor, yb: torch.Tensor) -> None:
            lossf(model(xb), yb).backward()

        run = torch.compile(fb) if compile else fb
        ts = []
        for i in range(steps + 20):
            j = (i * batch) % (len(xtr) - batch)
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            run(xtr[j:j + batch], ytr[j:j + batch])
            opt.step()
            ts.append(time.perf_counter() - t)
        ts = sorted(ts[20:])
        return ts[len(ts) // 4]

    tf = timed(fmodel)
    tq = timed(qmodel)
    return {"float_ms": tf * 1e3, "fixed_ms": tq * 1e3, "ratio": tq / tf}
