"""qfx vs Brevitas 0.13.4 on the same digits model and bit widths: final accuracy and training-step time.

For each W (default 4 and 8) and seed: one float model is pre-trained (``--float-epochs``), then copied into a qfx
model (``quantize_model``, every tensor quantized, learned binary points) and into a Brevitas model (fixed-point
quantizers, BN float; see ``benchmarks/_common.py``), and both are trained ``--epochs`` with the same optimizer
(Adam via ``qfx.nn.train.make_optimizer``, lr 2e-3, cosine decay), batch size and batch order. qfx accuracy is
measured in exact mode (int64), Brevitas accuracy in its eval-mode fake quantization. Step times (float / qfx /
Brevitas) are measured interleaved as in ``bench_train_step.py``.

Brevitas's activation quantizers collect statistics for their first 300 training steps before their scales become
learned parameters; the default 30 epochs (660 steps) go past that, ``--quick`` (10 epochs, 220 steps) does not.

    python benchmarks/bench_brevitas.py [--kind cnn] [--widths 4 8] [--seeds 1] [--epochs 30] [--float-epochs 20]
                                        [--threads 2] [--rounds 30] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (accuracy, brevitas_model, fit, float_model, fmt_ms, markdown_table, qfx_model,  # noqa: E402
                     timed_interleaved)
from bench_accuracy import FLOAT_LR, INT_BITS_LR, QAT_LR  # noqa: E402
from bench_train_step import make_step, quartiles  # noqa: E402

from qfx.data import load_digits_split  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="cnn", choices=["cnn", "mlp"])
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--float-epochs", type=int)
    ap.add_argument("--quick", action="store_true", help="10 float + 10 QAT epochs, 10 timing rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the step timing")
    ap.add_argument("--train-threads", type=int, default=1, help="torch threads while training")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    for name, full, quick in (("epochs", 30, 10), ("float_epochs", 20, 10), ("rounds", 30, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    xtr, ytr, xte, yte = load_digits_split()
    t0 = time.time()
    acc: dict[str, dict[int, list[float]]] = {"float": {}, "qfx": {}, "brevitas": {}}
    torch.set_num_threads(args.train_threads)
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        fm = float_model(args.kind)
        fit(fm, xtr, ytr, args.float_epochs, FLOAT_LR, seed)
        fa = accuracy(fm, xte, yte)
        calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1000 + seed))[:512]]
        for w in args.widths:
            q = qfx_model(fm, w, calib)
            fit(q, xtr, ytr, args.epochs, QAT_LR, seed, INT_BITS_LR)
            b = brevitas_model(args.kind, w, fm)
            fit(b, xtr, ytr, args.epochs, QAT_LR, seed)
            acc["float"].setdefault(w, []).append(fa)
            acc["qfx"].setdefault(w, []).append(accuracy(q, xte, yte, "exact"))
            acc["brevitas"].setdefault(w, []).append(accuracy(b, xte, yte))
            print(f"[{time.time() - t0:5.0f} s] seed {seed} W={w}: float {fa:.2f} qfx {acc['qfx'][w][-1]:.2f} "
                  f"Brevitas {acc['brevitas'][w][-1]:.2f}", file=sys.stderr, flush=True)
    step: dict[int, dict[str, float]] = {}
    if not args.no_timing:
        torch.set_num_threads(args.threads)
        n = len(xtr) - len(xtr) % 64
        batches = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, n, 64)]
        for w in args.widths:
            fm = float_model(args.kind)
            steps = {"float": make_step(fm, batches), "qfx": make_step(qfx_model(fm, w, xtr[:512]), batches)}
            bstep = make_step(brevitas_model(args.kind, w, fm), batches)
            for _ in range(310):  # past Brevitas's statistics-collection steps
                bstep()
            steps["brevitas"] = bstep
            times = timed_interleaved(steps, args.rounds, args.per_round)
            step[w] = {k: quartiles(v["cpu"])[1] * 1e3 for k, v in times.items()}
            print(f"[{time.time() - t0:5.0f} s] timed W={w}", file=sys.stderr, flush=True)
    print(f"# qfx vs Brevitas 0.13.4, digits {args.kind} (float {args.float_epochs} + QAT {args.epochs} epochs, "
          f"{args.seeds} seed(s); step time: {args.threads} threads, batch 64, median process CPU time of "
          f"{args.rounds}x{args.per_round} interleaved steps)\n")
    rows = []
    for w in args.widths:
        row = [str(w), fmt_ms(acc["float"][w], 2), fmt_ms(acc["qfx"][w], 2), fmt_ms(acc["brevitas"][w], 2)]
        if w in step:
            s = step[w]
            row += [f"{s['float']:.2f}", f"{s['qfx']:.2f}", f"{s['brevitas']:.2f}", f"{s['brevitas'] / s['qfx']:.2f}×"]
        rows.append(row)
    hdr = ["W", "float acc %", "qfx QAT acc % (exact)", "Brevitas QAT acc %"]
    if step:
        hdr += ["float ms/step", "qfx ms/step", "Brevitas ms/step", "Brevitas / qfx"]
    print(markdown_table(hdr, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
