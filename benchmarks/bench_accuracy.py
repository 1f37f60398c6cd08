"""Digits accuracy: float vs qfx QAT vs PTQ at W = 8, 6, 4, 3, and K-hot (K=1, K=2) vs plain weights.

Per seed: a float model is trained (``--float-epochs``), then for each width W
* **PTQ**: ``qfx.quantize_model`` on the trained float model with MSE calibration on 512 training images, no
  training (BN running statistics from the float model);
* **QAT**: the same conversion, then ``--epochs`` of fixed-point training with learned binary points;
every qfx model is evaluated in **exact** mode (the int64 golden path = the exported hardware). The train-mode
(float32 fake quantization) evaluation of each QAT model is also run and the number of test images whose predicted
class differs between the two paths is reported (expected: 0).

All tensors are quantized: input 8 bits, weights/activations/BN scale and shift W bits, biases 2W bits
(``benchmarks/_common.py``). The test set is the fixed 450-image split of ``qfx.data``; seeds change the
initialisation and batch order only. Figures are mean ± sample standard deviation over seeds.

    python benchmarks/bench_accuracy.py [--kinds cnn mlp] [--seeds 3] [--epochs 30] [--float-epochs 20] [--quick]
                                        [--widths 8 6 4 3] [--khot-widths 4 8] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KINDS, fit, float_model, fmt_ms, markdown_table, mean_spread, qfx_model  # noqa: E402

from qfx.data import load_digits_split  # noqa: E402
from qfx.nn.exact import mode  # noqa: E402

FLOAT_LR, QAT_LR, INT_BITS_LR = 1e-2, 2e-3, 1e-2


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, qfx_mode: str | None = None) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        if qfx_mode is None:
            return model(x).argmax(dim=1)
        with mode(model, qfx_mode):
            return model(x).argmax(dim=1)
    finally:
        model.train(was)


def pct(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((pred == y).float().mean())


def log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def run_seed(kind: str, seed: int, widths: list[int], khot_widths: list[int], khots: list[int], epochs: int,
             float_epochs: int, data, t0: float) -> dict:
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    fm = float_model(kind)
    fit(fm, xtr, ytr, float_epochs, FLOAT_LR, seed)
    res: dict = {"float": pct(predict(fm, xte), yte), "ptq": {}, "qat": {}, "qat_train_mode": {}, "mismatch": {}}
    log(f"{kind} seed {seed}: float {res['float']:.2f} %", t0)
    gen = torch.Generator().manual_seed(1000 + seed)
    calib = xtr[torch.randperm(len(xtr), generator=gen)[:512]]
    cases = [(w, None) for w in widths] + [(w, k) for w in khot_widths for k in khots]
    for w, k in cases:
        key = f"W{w}" + (f"K{k}" if k else "")
        ptq = qfx_model(fm, w, calib, k)
        res["ptq"][key] = pct(predict(ptq, xte, "exact"), yte)
        qat = qfx_model(fm, w, calib, k)
        fit(qat, xtr, ytr, epochs, QAT_LR, seed, INT_BITS_LR)
        pe, pt = predict(qat, xte, "exact"), predict(qat, xte, "train")
        res["qat"][key], res["qat_train_mode"][key] = pct(pe, yte), pct(pt, yte)
        res["mismatch"][key] = int((pe != pt).sum())
        log(f"{kind} seed {seed} {key}: PTQ {res['ptq'][key]:.2f}  QAT {res['qat'][key]:.2f} "
            f"(train-mode {res['qat_train_mode'][key]:.2f}, {res['mismatch'][key]} differing predictions)", t0)
    return res


def tables(kind: str, runs: list[dict], widths: list[int], khot_widths: list[int], khots: list[int]) -> str:
    fl = [r["float"] for r in runs]
    out = [f"### digits {kind}: float vs PTQ vs QAT (exact mode, {len(runs)} seed(s), % test accuracy)\n"]
    rows = []
    for w in widths:
        key = f"W{w}"
        ptq = [r["ptq"][key] for r in runs]
        qat = [r["qat"][key] for r in runs]
        tm = [r["qat_train_mode"][key] for r in runs]
        mism = sum(r["mismatch"][key] for r in runs)
        d = [q - f for q, f in zip(qat, fl)]
        rows.append([str(w), fmt_ms(fl, 2), fmt_ms(ptq, 2), fmt_ms(qat, 2), f"{mean_spread(d)[0]:+.2f}",
                     f"{fmt_ms(tm, 2)} ({mism})"])
    out.append(markdown_table(["W", "float", "PTQ", "QAT", "QAT − float", "QAT train-mode eval (differing preds)"],
                              rows))
    if khot_widths and khots:
        out.append(f"\n### digits {kind}: K-hot weights vs plain weights at the same width (exact mode)\n")
        rows = []
        for w in khot_widths:
            plain = [r["qat"][f"W{w}"] for r in runs] if f"W{w}" in runs[0]["qat"] else None
            row = [str(w), fmt_ms(plain, 2) if plain else "—"]
            for k in khots:
                key = f"W{w}K{k}"
                kq = [r["qat"][key] for r in runs]
                kp = [r["ptq"][key] for r in runs]
                delta = f"{mean_spread([a - b for a, b in zip(kq, plain)])[0]:+.2f}" if plain else "—"
                row += [fmt_ms(kq, 2), delta, fmt_ms(kp, 2)]
            rows.append(row)
        hdr = ["W", "plain QAT"]
        for k in khots:
            hdr += [f"K={k} QAT", f"K={k} − plain", f"K={k} PTQ"]
        out.append(markdown_table(hdr, rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["cnn"], choices=KINDS)
    ap.add_argument("--seeds", type=int, help="default 3 (1 with --quick)")
    ap.add_argument("--epochs", type=int, help="QAT epochs (default 30, 10 with --quick)")
    ap.add_argument("--float-epochs", type=int, help="float pre-training epochs (default 20, 10 with --quick)")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 6, 4, 3])
    ap.add_argument("--khot-widths", type=int, nargs="*", default=[4, 8])
    ap.add_argument("--khots", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="1 seed, 10 float + 10 QAT epochs (explicit options win)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results do not depend on it)")
    ap.add_argument("--json", type=Path, help="also write the raw per-seed results here")
    args = ap.parse_args(argv)
    for name, full, quick in (("seeds", 3, 1), ("epochs", 30, 10), ("float_epochs", 20, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    torch.set_num_threads(args.threads)
    data = load_digits_split()
    t0 = time.time()
    all_runs: dict[str, list[dict]] = {}
    print(f"# Digits accuracy (float {args.float_epochs} epochs, QAT {args.epochs} epochs, seeds 0..{args.seeds - 1})\n")
    for kind in args.kinds:
        all_runs[kind] = [run_seed(kind, s, args.widths, args.khot_widths, args.khots, args.epochs,
                                   args.float_epochs, data, t0) for s in range(args.seeds)]
        print(tables(kind, all_runs[kind], args.widths, args.khot_widths, args.khots) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": all_runs},
                                        indent=1))
    log("done", t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
