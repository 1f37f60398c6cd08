"""Non-linear functions in fixed point: how far the lookup tables and the integer softmax are from the float
functions, and what the digits-sized zoo models lose with quantization-aware training.

    python benchmarks/bench_tables.py                  # all three tables (a few minutes: the models train)
    python benchmarks/bench_tables.py --no-models      # the table and softmax errors only (seconds)
    python benchmarks/bench_tables.py --epochs 20 --qat-epochs 10 --widths 8 4 --seeds 2

Tables (``qfx.fixed.tables.FUNCTIONS``): each function through the layer quantize_model builds for it
(``qfx.nn.QActivation``: requantize the input to the table's input format, look up, done), run by the golden
interpreter on every input code. Input ``ap_fixed<W,4>`` (``ap_ufixed<W,4>`` for reciprocal and sqrt, which the
layer's signed input quantizer holds as ``ap_fixed<W,5>``; reciprocal only over [1, 16), as softmax uses it),
output ``ap_[u]fixed<W,I>`` with the smallest I that holds the function's range there, RND/SAT.
At W = 8 the table covers every input code. At W = 16 the input is first requantized to 12 bits
(``MAX_TABLE_BITS``; a 2**16-entry ROM per activation is not what qfx builds), so the error has two parts: the
table at its own 12-bit inputs (output rounding only) and the input requantization (slope x half a 12-bit LSB);
both are printed. Errors are max |table(x) - f(x)| over all inputs x of the W-bit format, f in float64.

Softmax (``qfx.nn.QSoftmax``, ``qfx/ops/softmax.py``: max, exp table, exact sum, reciprocal table, one cast):
20,000 random logit vectors (N(0, 2^2), then the input format ``ap_fixed<Win,4>``) per size n, compared with float64
softmax of the same quantized logits: max and mean absolute error, the error in output LSBs, and how often the
argmax agrees (ties in the quantized output count as disagreement).

Models: the zoo models (``tests/models/zoo.py``) that take digits-sized inputs (8x8 images, or the 64 pixels as a
vector), at the sizes listed below; float training (Adam, cosine decay, batch 64), then ``quantize_model`` of the
trained model with ``QFXConfig(weight=W, act=W, bn=W, bias=2W, input=8)`` and QAT; accuracy on the held-out
quarter of digits, fixed-point models evaluated in exact mode (what the exported design computes).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the zoo models live with the tests

from qfx.fixed.format import FxFormat  # noqa: E402
from qfx.fixed.tables import FUNCTIONS, evaluate  # noqa: E402
from qfx.ir.graph import Graph, TensorSpec  # noqa: E402
from qfx.ir.interpret import run  # noqa: E402

DOMAIN_UNSIGNED = {"reciprocal", "sqrt"}


def _fmt_for(values: np.ndarray, width: int) -> FxFormat:
    """Smallest-I format of ``width`` bits holding every value (unsigned when none is negative), RND/SAT."""
    signed = bool((values < 0).any())
    amax = float(np.abs(values).max()) or 1.0
    i = math.floor(math.log2(amax)) + 1 + (1 if signed else 0)
    f = FxFormat(width, i, signed, "RND", "SAT")
    while f.max < amax - f.step / 2:  # rounding to the top code must not saturate more than half an LSB
        i += 1
        f = FxFormat(width, i, signed, "RND", "SAT")
    return f


def _layer_graph(layer, fin: FxFormat) -> Graph:
    x = TensorSpec("x", (1,), fin)
    items = layer.ir_nodes("act", [x], "y")
    tensors = {"x": x} | {spec.name: spec for _, spec in items}
    return Graph("t", ("x",), ("y",), tensors, tuple(n for n, _ in items)).validate()


def table_error(fn: str, width: int) -> dict[str, object]:
    """Max error of ``QActivation(fn)`` at input/output width ``width`` (12-bit table inputs above 12 bits)."""
    from qfx.fixed.tables import MAX_TABLE_BITS
    from qfx.nn.op_layers import QActivation

    fin = FxFormat(width, 4, fn not in DOMAIN_UNSIGNED, "RND", "SAT")
    codes = np.arange(fin.min_code, fin.max_code + 1, dtype=np.int64)
    if fn == "reciprocal":  # 1/x is unbounded at 0: the domain is [1, 16), where softmax uses it
        codes = codes[fin.from_int(codes) >= 1.0]
    x = fin.from_int(codes)
    fout = _fmt_for(evaluate(fn, x), width)
    tw = min(width, MAX_TABLE_BITS)
    layer = QActivation(fn, in_width=max(2, tw), out_width=width, out_signed=fout.signed, rounding="RND",
                        overflow="SAT")
    layer.in_quant.int_bits_param.data.fill_(4 if fin.signed else 5)  # the layer's input quantizer is signed
    layer.out_quant.int_bits_param.data.fill_(fout.int_bits)
    g = _layer_graph(layer, fin)
    y = fout.from_int(run(g, codes.reshape(-1, 1)).reshape(-1))
    err = np.abs(y - evaluate(fn, x))
    out = {"fn": fn, "in": fin.ap_type().split(",AP")[0] + ">", "table_in": layer.in_quant.fmt.width,
           "out": fout.ap_type().split(",AP")[0] + ">", "lsb": fout.step, "max_abs": float(err.max()),
           "max_lsb": float(err.max() / fout.step)}
    if width > tw:  # the table alone: inputs already on the 12-bit grid
        on_grid = np.asarray(layer.in_quant.fmt.to_int(x), dtype=np.int64)
        mask = np.asarray(layer.in_quant.fmt.from_int(on_grid)) == x
        out["grid_lsb"] = float(err[mask].max() / fout.step)
    return out


def softmax_error(n: int, win: int, wout: int, vectors: int = 20000, seed: int = 0) -> dict[str, object]:
    from qfx.nn.op_layers import QSoftmax

    layer = QSoftmax(1, in_width=win, out_width=wout)
    layer.in_quant.int_bits_param.data.fill_(4)
    fin = layer.in_quant.fmt
    fout = layer.out_quant.fmt
    x = TensorSpec("x", (n,), fin)
    items = layer.ir_nodes("sm", [x], "y")
    g = Graph("s", ("x",), ("y",), {"x": x} | {s.name: s for _, s in items}, tuple(nd for nd, _ in items)).validate()
    rng = np.random.default_rng(seed)
    codes = np.asarray(fin.to_int(rng.normal(0, 2, size=(vectors, n))), dtype=np.int64)
    y = fout.from_int(run(g, codes))
    v = fin.from_int(codes)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    err = np.abs(y - ref)
    agree = float(np.mean(y.argmax(1) == ref.argmax(1)))
    return {"n": n, "in": f"ap_fixed<{win},4>", "out": fout.ap_type().split(",AP")[0] + ">",
            "max_abs": float(err.max()), "mean_abs": float(err.mean()), "max_lsb": float(err.max() / fout.step),
            "argmax": agree}


# ---------------------------------------------------------------------------------------------- models
#: zoo model -> (constructor arguments at digits size, data kind)
DIGITS_MODELS = {
    "lenet5": (dict(hw=8, c1=6, c2=16, f1=120, f2=84, pad2=2), "digits"),
    "mobilenet_v1": (dict(in_ch=1, c=8), "digits"),
    "resnet8": (dict(in_ch=1, c=8), "digits"),
    "padded_cnn": (dict(c=16), "digits"),
    "jet_mlp": (dict(n_in=64, n_classes=10), "digits64"),
    "act_mix": (dict(n_in=64, h=32, n_classes=10), "digits64"),
    "gated_ffn": (dict(n_in=64, d=32, h=64, n_classes=10), "digits64"),
    "preprocess": (dict(n_in=64, h=32, n_classes=10), "digits64"),
}


def _fit(model, x, y, epochs: int, lr: float, loss, seed: int) -> None:
    from qfx.nn.train import make_optimizer

    opt = make_optimizer(model, lr, int_bits_lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(x) / 64)
    base = [grp["lr"] for grp in opt.param_groups]
    k = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            for grp, b in zip(opt.param_groups, base):
                grp["lr"] = b * 0.5 * (1 + math.cos(math.pi * k / steps))
            opt.zero_grad(set_to_none=True)
            loss(model(x[idx]), y[idx]).backward()
            opt.step()
            k += 1


@torch.no_grad()
def _accuracy(model, x, y, exact: bool) -> float:
    from qfx.nn.exact import mode

    model.eval()
    if exact:
        with mode(model, "exact"):
            return float((model(x).argmax(1) == y).float().mean())
    return float((model(x).argmax(1) == y).float().mean())


def model_accuracy(name: str, widths: list[int], epochs: int, qat_epochs: int, seed: int) -> dict[str, object]:
    import copy

    import qfx
    from models.harness import loss_fn
    from models.zoo import ZOO
    from qfx.data import load_digits_split

    e = ZOO[name]
    kwargs, kind = DIGITS_MODELS[name]
    xtr, ytr, xte, yte = load_digits_split(image=kind == "digits")
    lossf = lambda out, t: loss_fn(e, out, t)  # noqa: E731
    torch.manual_seed(seed)
    f = e.build(**kwargs)
    t0 = time.process_time()
    _fit(f, xtr, ytr, epochs, 1e-2, lossf, seed)
    row: dict[str, object] = {"model": name, "params": sum(p.numel() for p in f.parameters()),
                              "float": _accuracy(f, xte, yte, False)}
    for w in widths:
        cfg = qfx.QFXConfig(weight_width=w, bias_width=2 * w, act_width=w, bn_width=w, input_width=8)
        q = qfx.quantize_model(copy.deepcopy(f).eval(), cfg, xtr[:512])
        row[f"ptq{w}"] = _accuracy(q, xte, yte, True)
        _fit(q, xtr, ytr, qat_epochs, 2e-3, lossf, seed)
        row[f"qat{w}"] = _accuracy(q, xte, yte, True)
        row[f"agree{w}"] = float((_pred(q, xte, True) == _pred(q, xte, False)).float().mean())
    row["cpu_s"] = time.process_time() - t0
    return row


@torch.no_grad()
def _pred(model, x, exact: bool) -> torch.Tensor:
    from qfx.nn.exact import mode

    model.eval()
    with mode(model, "exact" if exact else "train"):
        return model(x).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-models", action="store_true", help="only the table and softmax errors")
    ap.add_argument("--models", nargs="*", default=list(DIGITS_MODELS), choices=list(DIGITS_MODELS))
    ap.add_argument("--widths", nargs="*", type=int, default=[8, 4], help="QAT widths (default 8 4)")
    ap.add_argument("--epochs", type=int, default=15, help="float epochs (default 15)")
    ap.add_argument("--qat-epochs", type=int, default=8, help="QAT epochs (default 8)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    print("### Table functions: largest error against the float function\n")
    print("| function | W=8: in → out | max err (LSB) | max err (abs) | W=16: in → 12-bit table → out | "
          "max err (LSB) | max err (abs) | at 12-bit inputs (LSB) |")
    print("|---|---|---|---|---|---|---|---|")
    for fn in FUNCTIONS:
        r8, r16 = table_error(fn, 8), table_error(fn, 16)
        print(f"| {fn} | {r8['in']} → {r8['out']} | {r8['max_lsb']:.3f} | {r8['max_abs']:.2e} | "
              f"{r16['in']} → {r16['out']} | {r16['max_lsb']:.1f} | {r16['max_abs']:.2e} | "
              f"{r16['grid_lsb']:.3f} |", flush=True)

    print("\n### Softmax (integer exp/reciprocal tables) against float64 softmax of the same quantized logits\n")
    print("| n | in → out | max err (abs) | max err (out LSB) | mean err (abs) | argmax agrees |")
    print("|---|---|---|---|---|---|")
    for win, wout in ((8, 8), (12, 16)):
        for n in (5, 10, 32, 64):
            r = softmax_error(n, win, wout)
            print(f"| {n} | {r['in']} → {r['out']} | {r['max_abs']:.2e} | {r['max_lsb']:.2f} | "
                  f"{r['mean_abs']:.2e} | {100 * r['argmax']:.2f} % |", flush=True)
    if a.no_models:
        return

    print(f"\n### Digits-sized zoo models: float vs PTQ vs QAT ({a.epochs} float + {a.qat_epochs} QAT epochs, exact "
          f"mode, % test accuracy, mean over {a.seeds} seed(s))\n")
    cols = [c for w in a.widths for c in (f"ptq{w}", f"qat{w}")]
    print("| model | params | float | " + " | ".join(c.upper().replace("PTQ", "PTQ W=").replace("QAT", "QAT W=")
                                                 for c in cols) + " | train = exact | CPU s |")
    print("|---|---|---|" + "---|" * len(cols) + "---|---|")
    for name in a.models:
        rows = [model_accuracy(name, a.widths, a.epochs, a.qat_epochs, s) for s in range(a.seeds)]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "model"}
        agree = min(mean[f"agree{w}"] for w in a.widths)
        print(f"| {name} | {int(mean['params'])} | {100 * mean['float']:.2f} | "
              + " | ".join(f"{100 * mean[c]:.2f}" for c in cols)
              + f" | {100 * agree:.1f} % | {mean['cpu_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
