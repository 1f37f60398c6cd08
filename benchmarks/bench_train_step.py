"""Training-step time on CPU: float vs qfx (every tensor quantized) vs Brevitas 0.13.4 (fixed-point quantizers).

One step = zero_grad + forward + cross-entropy + backward + Adam step (``qfx.nn.train.make_optimizer`` for all),
batch 64 of the digits training set. Variants: ``float``; ``qfx`` (the fused C++ quantizer / BatchNorm / chain
nodes, ``qfx/nn/_fused_quant.cpp``); ``qfx-tensor-op`` (the same model on the tensor-op path, i.e. the code before
the fused kernels, bit-identical results: the "before" figure, measured side by side); ``brevitas``. They run
interleaved (rounds of ``--per-round`` steps, A/B/C/D then B/C/D/A, ...) so that drift from other processes on the
machine hits all of them alike; warm-up rounds are dropped and the median per-step time is reported with its
interquartile range. Brevitas's activation quantizers collect statistics for their first 300 steps (a different,
slower path), so each Brevitas model first runs 310 untimed steps. The script waits for the fused kernels to be
built (first use: about 25 s of g++, then cached) and prints the load average before and after.

Then the qfx step is profiled (``torch.profiler``: top ops by self CPU time; ``cProfile``: top Python functions by
own time) so the README can say where the time goes.

    python benchmarks/bench_train_step.py [--kinds mlp cnn] [--bits 8] [--threads 1] [--rounds 40] [--per-round 5]
                                          [--no-brevitas] [--no-before] [--no-profile]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _value, brevitas_model, float_model, markdown_table, qfx_model, timed_interleaved  # noqa: E402

from qfx.data import load_digits_split  # noqa: E402
from qfx.nn import _fused  # noqa: E402
from qfx.nn.quant import fused_status, tensor_op_path  # noqa: E402
from qfx.nn.train import make_optimizer  # noqa: E402

TARGET_QFX_FLOAT = {"mlp": 2.0, "cnn": 1.3}
GOAL_BREVITAS_QFX = 4.0


def make_step(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    opt = make_optimizer(model, 1e-3)
    lossf = nn.CrossEntropyLoss()
    model.train()
    state = {"i": 0}

    def step() -> None:
        xb, yb = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        lossf(_value(model(xb)), yb).backward()
        opt.step()

    return step


def on_tensor_op_path(step):
    def run() -> None:
        with tensor_op_path():
            step()

    return run


def load() -> str:
    try:
        return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:  # pragma: no cover - not available on this platform
        return "load average n/a"


def quartiles(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=4)
    return q[0], statistics.median(v), q[2]


def profile_qfx(step, kind: str, steps: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"\n### torch.profiler, qfx {kind}, {steps} steps (top {top} by self CPU time)\n")
    print("```")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))
    print("```")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(steps):
        step()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in s.getvalue().splitlines() if ln.strip()]
    print(f"\n### cProfile, qfx {kind}, {steps} steps (top {top} by own time)\n")
    print("```")
    print("\n".join(lines[2:]))
    print("```")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn", "rescnn"])
    ap.add_argument("--bits", type=int, default=8, help="W for weights/activations/BN (bias 2W, input 8)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds (each variant --per-round steps per round)")
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--warmup-rounds", type=int, default=3)
    ap.add_argument("--no-brevitas", action="store_true")
    ap.add_argument("--no-before", action="store_true", help="skip the qfx tensor-op-path (before) variant")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=50)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    _fused.wait()
    load0 = load()
    torch.manual_seed(0)
    xtr, ytr, _, _ = load_digits_split()
    n = len(xtr) - len(xtr) % args.batch
    batches = [(xtr[i:i + args.batch], ytr[i:i + args.batch]) for i in range(0, n, args.batch)]
    print(f"# Training step time (CPU, torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"W={args.bits}; {args.rounds} rounds x {args.per_round} steps per variant after "
          f"{args.warmup_rounds} warm-up rounds; train-mode quantizers: {fused_status()}; {load0})\n")
    rows, steps_of = [], {}
    for kind in args.kinds:
        fmodel = float_model(kind)
        steps = {"float": make_step(fmodel, batches),
                 "qfx": make_step(qfx_model(fmodel, args.bits, xtr[:512]), batches)}
        if not args.no_before:
            steps["qfx-tensor-op"] = on_tensor_op_path(make_step(qfx_model(fmodel, args.bits, xtr[:512]), batches))
        if not args.no_brevitas and kind != "rescnn":
            bstep = make_step(brevitas_model(kind, args.bits, fmodel), batches)
            for _ in range(310):  # past the activation quantizers' statistics-collection phase
                bstep()
            steps["brevitas"] = bstep
        t0 = time.time()
        times = timed_interleaved(steps, args.rounds, args.per_round, args.warmup_rounds)
        wall = {k: quartiles(v["wall"]) for k, v in times.items()}
        cpu = {k: statistics.median(v["cpu"]) * 1e3 for k, v in times.items()}
        med = {k: v[1] * 1e3 for k, v in wall.items()}
        cells = [kind]
        for k in ("float", "qfx-tensor-op", "qfx", "brevitas"):
            cells.append(f"{med[k]:.2f} ({wall[k][0] * 1e3:.2f}–{wall[k][2] * 1e3:.2f}) / {cpu[k]:.2f}"
                         if k in med else "—")
        target = TARGET_QFX_FLOAT.get(kind)
        for num, den, goal in (("qfx-tensor-op", "float", None), ("qfx", "float", target),
                               ("brevitas", "qfx", GOAL_BREVITAS_QFX)):
            if num not in med or den not in med:
                cells.append("—")
                continue
            rw, rc = med[num] / med[den], cpu[num] / cpu[den]
            ok = (rc <= goal) if num == "qfx" else (rc >= goal) if goal else True
            sign = "≤" if num == "qfx" else "≥"
            cells.append(f"{rw:.2f}× / {rc:.2f}× ({'met' if ok else 'missed'}: {sign} {goal})" if goal else
                         f"{rw:.2f}× / {rc:.2f}×")
        rows.append(cells)
        steps_of[kind] = steps["qfx"]
        print(f"{kind}: timed in {time.time() - t0:.0f} s", file=sys.stderr)
    print("Cells: wall-clock median (interquartile range) / median process CPU time, ms per step; ratios: wall / CPU,"
          " targets judged on the CPU-time ratio (robust to other processes on the machine).\n")
    print(markdown_table(["model", "float ms/step", "qfx before (tensor-op) ms/step", "qfx ms/step",
                          "Brevitas ms/step", "before / float", "qfx / float", "Brevitas / qfx"], rows))
    print(f"\n{load()} at the end")
    if not args.no_profile:
        for kind, step in steps_of.items():
            profile_qfx(step, kind, args.profile_steps, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
