"""Ablation on the digits MLP: learned vs frozen (calibration-only) binary points, per-tensor vs per-channel weights.

Per seed a float 64-64-32-10 MLP is trained (``--float-epochs``); then, for each width W and variant, the same
float model is converted with ``quantize_model`` (MSE calibration on 512 training images: that sets every binary
point) and fine-tuned for ``--epochs`` of QAT (Adam, lr 2e-3, cosine decay, batch 64: ``qfx.nn.train``'s recipe):

* ``learned``: binary points are parameters (STE + the log2-step gradient of ``qfx/nn/quant.py``), their own Adam
  group at ``--int-bits-lr`` (the recipe's 1e-2);
* ``frozen``: ``learn_int_bits=False``: the calibrated binary points stay; weights still train;
* ``learned xN``: as ``learned`` with the binary-point learning rate multiplied (``--lr-mults``), to see whether
  the step size of that parameter is what limits it;
* each of them with per-tensor and with per-channel (per output neuron) weight binary points.

Reported: exact-mode (int64, = the hardware) test accuracy, mean ± std over seeds, and how far the binary points
moved during QAT: the share of quantizer entries (per-channel entries counted one by one) whose rounded integer
bits I changed, and the mean |change| of the underlying float parameter.

    python benchmarks/bench_ablation.py [--widths 3 4] [--seeds 3] [--epochs 8] [--float-epochs 20]
                                        [--lr-mults 10] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fit, float_model, fmt_ms, markdown_table, qfx_config  # noqa: E402

from qfx.data import load_digits_split  # noqa: E402
from qfx.nn import quantize_model  # noqa: E402
from qfx.nn.exact import mode  # noqa: E402
from qfx.nn.quant import FixedQuant  # noqa: E402

FLOAT_LR, QAT_LR = 1e-2, 2e-3


@torch.no_grad()
def exact_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with mode(model, "exact"):
        pred = model(x).argmax(dim=1)
    model.train()
    return 100.0 * float((pred == y).float().mean())


def binary_points(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.int_bits_param.detach().clone().reshape(-1) for m in model.modules() if isinstance(m, FixedQuant)]


def moved(before: list[torch.Tensor], after: list[torch.Tensor]) -> tuple[float, float]:
    """(% of entries whose rounded I changed, mean |change| of the float parameter)."""
    b, a = torch.cat(before), torch.cat(after)
    changed = (torch.round(b) != torch.round(a)).float().mean().item() * 100.0
    return changed, (a - b).abs().mean().item()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="QAT epochs per variant")
    ap.add_argument("--float-epochs", type=int, default=20)
    ap.add_argument("--int-bits-lr", type=float, default=1e-2)
    ap.add_argument("--lr-mults", type=float, nargs="*", default=[10.0],
                    help="extra 'learned' variants with the binary-point lr multiplied by these")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = load_digits_split()
    t0 = time.time()
    variants = [("learned", True, 1.0), ("frozen", False, 1.0)] + [(f"learned x{m:g}", True, m) for m in args.lr_mults]
    res: dict[tuple[int, str, str], list[tuple[float, float, float]]] = {}
    floats = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        fm = float_model("mlp")
        fit(fm, xtr, ytr, args.float_epochs, FLOAT_LR, seed)
        floats.append(_float_acc(fm, xte, yte))
        gen = torch.Generator().manual_seed(1000 + seed)
        calib = xtr[torch.randperm(len(xtr), generator=gen)[:512]]
        for w in args.widths:
            for gran in ("per-tensor", "per-channel"):
                for name, learn, mult in variants:
                    cfg = replace(qfx_config(w), learn_int_bits=learn, per_channel=gran == "per-channel")
                    torch.manual_seed(seed)
                    qm = quantize_model(fm, cfg, calib)
                    before = binary_points(qm)
                    fit(qm, xtr, ytr, args.epochs, QAT_LR, seed, args.int_bits_lr * mult)
                    acc = exact_accuracy(qm, xte, yte)
                    ch, dp = moved(before, binary_points(qm))
                    res.setdefault((w, gran, name), []).append((acc, ch, dp))
            print(f"[{time.time() - t0:5.0f} s] seed {seed} W={w} done", file=sys.stderr, flush=True)
    print(f"# Digits MLP ablation: {args.seeds} seeds, float {args.float_epochs} epochs "
          f"({fmt_ms(floats, 2)} %), QAT {args.epochs} epochs, binary-point lr {args.int_bits_lr:g}\n")
    rows = []
    for (w, gran, name), v in res.items():
        acc = [a for a, _, _ in v]
        ch = [c for _, c, _ in v]
        dp = [d for _, _, d in v]
        rows.append([str(w), gran, name, fmt_ms(acc, 2), fmt_ms(ch, 1), fmt_ms(dp, 3)])
    print(markdown_table(["W", "weights", "binary points", "exact test acc %", "I changed (% of entries)",
                          "mean |Δ param|"], rows))
    print(f"\n[{time.time() - t0:.0f} s]")
    return 0


@torch.no_grad()
def _float_acc(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(dim=1)
    model.train()
    return 100.0 * float((pred == y).float().mean())


if __name__ == "__main__":
    raise SystemExit(main())
