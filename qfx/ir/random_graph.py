"""Random valid IR graphs (random layer stacks, shapes, formats, modes, K-hot) for differential testing.

Used by tests and benchmarks of every executor: golden interpreter, onnxruntime, C simulation, RTL simulation.
"""
from __future__ import annotations

import numpy as np

from qfx.fixed.csd import khot_project
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import avgpool_format, conv_out_size, scale_shift_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec

__all__ = ["random_graph", "random_format"]


def random_format(rng: np.random.Generator, wmin: int = 2, wmax: int = 10, signed: bool | None = None) -> FxFormat:
    w = int(rng.integers(wmin, wmax, endpoint=True))
    i = int(rng.integers(-2, w + 3))
    s = bool(rng.integers(0, 2)) if signed is None else signed
    if not s and w < 1:
        w = 1
    return FxFormat(w, i, s, str(rng.choice(ROUNDING_MODES)), str(rng.choice(OVERFLOW_MODES)))


class _Builder:
    def __init__(self, rng: np.random.Generator, max_width: int) -> None:
        self.rng = rng
        self.max_width = max_width
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []

    def tensor(self, shape: tuple[int, ...], fmt: FxFormat) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = TensorSpec(name, shape, fmt)
        return name

    def out_fmt(self) -> FxFormat:
        return random_format(self.rng, 2, self.max_width)

    def weights(self, shape: tuple[int, ...], khot: int) -> Constant:
        fw = random_format(self.rng, 2, 8, signed=True)
        codes = self.rng.integers(fw.min_code, fw.max_code, size=shape, endpoint=True, dtype=np.int64)
        if khot:
            codes = khot_project(codes, khot, fw.min_code, fw.max_code)
        return Constant(codes, fw)

    def bias(self, n: int) -> Constant:
        fb = random_format(self.rng, 2, 10, signed=True)
        return Constant(self.rng.integers(fb.min_code, fb.max_code, size=(n,), endpoint=True, dtype=np.int64), fb)

    def add(self, op: Op, inputs: list[str], shape: tuple[int, ...], consts=None, attrs=None, acc=None,
            fmt: FxFormat | None = None) -> str:
        out = self.tensor(shape, fmt or self.out_fmt())
        idx = len(self.nodes)
        self.nodes.append(Node(f"n{idx}_{op.value}", op, tuple(inputs), out, consts or {}, attrs or {}, acc,
                               source=f"layer{idx}"))
        return out

    def dense(self, x: str, m: int, khot: int) -> str:
        spec = self.tensors[x]
        w = self.weights((m, spec.size), khot)
        b = self.bias(m) if self.rng.random() < 0.7 else None
        consts = {"weight": w} | ({"bias": b} if b else {})
        acc = lossless_acc_format(w.codes, w.fmt, spec.fmt, b.codes if b else None, b.fmt if b else None)
        return self.add(Op.DENSE, [x], (m,), consts, {"khot": khot}, acc)

    def conv(self, x: str, o: int, khot: int) -> str:
        c, h, wd = self.tensors[x].shape
        k = int(self.rng.choice([1, 2, 3]))
        k = min(k, h, wd)
        pad = int(self.rng.integers(0, (k - 1) // 2 + 1))
        st = int(self.rng.choice([1, 1, 2]))
        w = self.weights((o, c, k, k), khot)
        b = self.bias(o) if self.rng.random() < 0.7 else None
        consts = {"weight": w} | ({"bias": b} if b else {})
        acc = lossless_acc_format(w.codes.reshape(o, -1), w.fmt, self.tensors[x].fmt, b.codes if b else None,
                                  b.fmt if b else None)
        shape = (o, conv_out_size(h, k, st, pad), conv_out_size(wd, k, st, pad))
        return self.add(Op.CONV2D, [x], shape, consts, {"stride": (st, st), "padding": (pad, pad), "khot": khot}, acc)

    def scale_shift(self, x: str) -> str:
        spec = self.tensors[x]
        c = spec.shape[0]
        s = self.weights((c,), 0)
        h = self.bias(c)
        return self.add(Op.SCALE_SHIFT, [x], spec.shape, {"scale": s, "shift": h}, {},
                        scale_shift_format(spec.fmt, s.fmt, h.fmt))

    def pool(self, x: str, kind: Op) -> str:
        c, h, w = self.tensors[x].shape
        k = 2 if min(h, w) >= 2 else 1
        shape = (c, conv_out_size(h, k, k, 0), conv_out_size(w, k, k, 0))
        attrs = {"kernel": (k, k), "stride": (k, k), "padding": (0, 0)}
        if kind is Op.MAXPOOL2D:
            return self.add(kind, [x], shape, {}, attrs, fmt=self.tensors[x].fmt if self.rng.random() < 0.5 else None)
        fr = FxFormat(1, 1 - 2 * (k.bit_length() - 1), signed=False)  # code 1 == 1/(k*k) for k in {1, 2}
        recip = Constant(np.array([1], dtype=np.int64), fr)
        return self.add(kind, [x], shape, {"recip": recip}, attrs, avgpool_format(self.tensors[x].fmt, fr, k * k))


def random_graph(seed: int, kind: str = "any", max_layers: int = 4, khot_prob: float = 0.3,
                 max_width: int = 12) -> Graph:
    """A random, valid graph. ``kind``: ``mlp`` (dense stacks), ``cnn`` (conv front end), or ``any``."""
    rng = np.random.default_rng(seed)
    if kind == "any":
        kind = "cnn" if rng.random() < 0.5 else "mlp"
    b = _Builder(rng, max_width)
    if kind == "cnn":
        shape: tuple[int, ...] = (int(rng.integers(1, 3, endpoint=True)), int(rng.integers(4, 7)), int(rng.integers(4, 7)))
    else:
        shape = (int(rng.integers(2, 16, endpoint=True)),)
    x = b.tensor(shape, random_format(rng, 2, 8))
    inp = x
    layers = int(rng.integers(1, max_layers, endpoint=True))
    for _ in range(layers):
        khot = int(rng.integers(1, 3, endpoint=True)) if rng.random() < khot_prob else 0
        spec = b.tensors[x]
        if len(spec.shape) == 3:
            choice = rng.choice(["conv", "conv", "bn", "relu", "max", "avg", "res", "clip", "quant"])
            if choice == "conv":
                x = b.conv(x, int(rng.integers(1, 4, endpoint=True)), khot)
            elif choice == "bn":
                x = b.scale_shift(x)
            elif choice == "relu":
                x = b.add(Op.RELU, [x], spec.shape)
            elif choice == "clip":
                f = spec.fmt
                lo = int(rng.integers(f.min_code, 1)) if f.signed else 0
                hi = int(rng.integers(max(lo, 0), f.max_code, endpoint=True))
                x = b.add(Op.CLIP, [x], spec.shape, attrs={"lo": lo, "hi": hi})
            elif choice == "max":
                x = b.pool(x, Op.MAXPOOL2D)
            elif choice == "avg":
                x = b.pool(x, Op.AVGPOOL2D)
            elif choice == "quant":
                x = b.add(Op.QUANT, [x], spec.shape)
            else:  # residual: x + conv(x) with the same shape (3x3, pad 1, stride 1)
                c = spec.shape[0]
                w = b.weights((c, c, 3, 3), khot) if min(spec.shape[1:]) >= 3 else b.weights((c, c, 1, 1), khot)
                k = w.codes.shape[2]
                acc = lossless_acc_format(w.codes.reshape(c, -1), w.fmt, spec.fmt)
                y = b.add(Op.CONV2D, [x], spec.shape, {"weight": w}, {"stride": (1, 1), "padding": ((k - 1) // 2,) * 2,
                                                                      "khot": khot}, acc)
                x = b.add(Op.ADD, [x, y], spec.shape)
        else:
            choice = rng.choice(["dense", "dense", "relu", "res", "bn", "quant"])
            if choice == "dense":
                x = b.dense(x, int(rng.integers(1, 16, endpoint=True)), khot)
            elif choice == "relu":
                x = b.add(Op.RELU, [x], spec.shape)
            elif choice == "bn":
                x = b.scale_shift(x)
            elif choice == "quant":
                x = b.add(Op.QUANT, [x], spec.shape)
            else:
                y = b.dense(x, spec.shape[0], khot)
                x = b.add(Op.ADD, [x, y], spec.shape)
        if len(b.tensors[x].shape) == 3 and rng.random() < 0.25:
            x = b.add(Op.FLATTEN, [x], (b.tensors[x].size,), fmt=b.tensors[x].fmt)
    if len(b.tensors[x].shape) == 3:
        x = b.add(Op.FLATTEN, [x], (b.tensors[x].size,), fmt=b.tensors[x].fmt)
        x = b.dense(x, int(rng.integers(1, 8, endpoint=True)), 0)
    g = Graph(f"random_{kind}_{seed}", (inp,), (x,), b.tensors, tuple(b.nodes), {"generator": "qfx.ir.random_graph",
                                                                                  "seed": seed})
    return g.validate()
