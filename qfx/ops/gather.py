"""Ops that only move elements, each defined by an index map (``OpDef.gather_map``):

``concat``     x0, x1, ... -> y; attrs: axis (per-sample axis, 0 = channels); every input cast to y's format
``upsample2d`` x(C,H,W) -> y(C,H*sh,W*sw); attrs: scale (sh, sw); nearest neighbour by integer factors
``zeropad2d``  x(C,H,W) -> y(C,(H-1)*sh+1+t+b,(W-1)*sw+1+l+r); attrs: pads (top, bottom, left, right), stride
               (sh, sw), default (1, 1); zero codes outside and, for stride > 1, sh-1 / sw-1 zero rows / columns
               between input rows / columns (the zero insertion of a transposed convolution); mode "zeros"
               (default), "replicate" or "reflect" (edge values instead of zeros; stride 1 only)
``transpose``  x -> y; attrs: perm (a permutation of the per-sample axes)
``slice``      x -> y; attrs: starts, stops, steps (one per per-sample axis, steps >= 1): ``x[s0:e0:k0, ...]``
               (torch indexing, narrow, chunk, split)

The golden function is derived from the map (``gather_golden``), and every backend implements all of them with one
generic gather emitter (an index table), so a new element-moving op needs only its map.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.ops.base import AttrSpec, Categories as C, OpDef, gather_golden, node_error, one_node_graph, rand_fmt, register

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["CONCAT", "UPSAMPLE2D", "ZEROPAD2D", "TRANSPOSE", "SLICE"]

_CATS = frozenset({C.GATHER})


def _img(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(1, 3, size=3, endpoint=True))  # type: ignore[return-value]


def _out_fmt(rng: np.random.Generator, fx):
    return fx if rng.random() < 0.5 else rand_fmt(rng, 2, 10, int_bits=fx.int_bits)


def _sample_concat(rng: np.random.Generator) -> "Graph":
    c, h, w = _img(rng)
    k = int(rng.integers(2, 3, endpoint=True))
    chans = [int(rng.integers(1, 3, endpoint=True)) for _ in range(k)]
    fx = [rand_fmt(rng, 2, 8) for _ in range(k)]
    return one_node_graph("concat", [((ci, h, w), f) for ci, f in zip(chans, fx)], (sum(chans), h, w),
                          rand_fmt(rng, 2, 10, int_bits=max(f.int_bits for f in fx)), attrs={"axis": 0})


def _sample_up(rng: np.random.Generator) -> "Graph":
    c, h, w = _img(rng)
    sh, sw = (int(v) for v in rng.integers(1, 3, size=2, endpoint=True))
    fx = rand_fmt(rng, 2, 8)
    return one_node_graph("upsample2d", [((c, h, w), fx)], (c, h * sh, w * sw), _out_fmt(rng, fx),
                          attrs={"scale": (sh, sw)})


def _sample_pad(rng: np.random.Generator) -> "Graph":
    c, h, w = _img(rng)
    t, b, l, r = (int(v) for v in rng.integers(0, 2, size=4, endpoint=True))
    fx = rand_fmt(rng, 2, 8)
    out_fmt = _out_fmt(rng, fx)
    u = rng.random()
    if u >= 0.5:
        attrs: dict = {"pads": (t, b, l, r)}
        if u >= 0.75:  # edge modes (reflect needs pads below the size)
            attrs = {"pads": (min(t, h - 1), min(b, h - 1), min(l, w - 1), min(r, w - 1)),
                     "mode": "reflect" if u >= 0.875 else "replicate"}
            t, b, l, r = attrs["pads"]
        return one_node_graph("zeropad2d", [((c, h, w), fx)], (c, h + t + b, w + l + r), out_fmt, attrs=attrs)
    sh, sw = (int(v) for v in rng.integers(1, 3, size=2, endpoint=True))  # zero insertion
    return one_node_graph("zeropad2d", [((c, h, w), fx)], (c, (h - 1) * sh + 1 + t + b, (w - 1) * sw + 1 + l + r),
                          out_fmt, attrs={"pads": (t, b, l, r), "stride": (sh, sw)})


def _sample_tr(rng: np.random.Generator) -> "Graph":
    x = _img(rng)
    perm = tuple(int(v) for v in rng.permutation(3))
    fx = rand_fmt(rng, 2, 8)
    return one_node_graph("transpose", [(x, fx)], tuple(x[i] for i in perm), _out_fmt(rng, fx),
                          attrs={"perm": perm})


def _expect(g: "Graph", n: "Node", shape: tuple[int, ...]) -> None:
    y = g.tensor(n.output).shape
    if y != tuple(shape):
        raise node_error(n, f"output shape {y} should be {tuple(shape)}")


# ------------------------------------------------------------------------------------------------ concat
def _concat_shape(g: "Graph", n: "Node") -> tuple[int, ...]:
    shapes = [g.tensor(t).shape for t in n.inputs]
    ax = int(n.attrs.get("axis", 0))
    r = len(shapes[0])
    if not 0 <= ax < r:
        raise node_error(n, f"axis {ax} out of range for per-sample rank {r}")
    for s in shapes[1:]:
        if len(s) != r or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != ax):
            raise node_error(n, f"input shapes {shapes} differ outside axis {ax}")
    out = list(shapes[0])
    out[ax] = sum(s[ax] for s in shapes)
    return tuple(out)


def _concat_map(g: "Graph", n: "Node") -> np.ndarray:
    ax = int(n.attrs.get("axis", 0))
    blocks, off = [], 0
    for t in n.inputs:
        s = g.tensor(t).shape
        blocks.append(np.arange(off, off + int(np.prod(s)), dtype=np.int64).reshape(s))
        off += int(np.prod(s))
    return np.concatenate(blocks, axis=ax).reshape(-1)


CONCAT = register(OpDef(
    name="concat", doc="concatenate along a per-sample axis, each input cast to the output format", n_inputs=2,
    variadic=True, golden=gather_golden, check=lambda g, n: _expect(g, n, _concat_shape(g, n)),
    attrs=(AttrSpec("axis", "int", 0),), categories=_CATS, torch_twin="qfx.nn.QCat",
    torch_float=("torch.cat",), generators=("concat",), gather_map=_concat_map, hls_header="qfx_gather.h",
    sample=_sample_concat,
))


# ------------------------------------------------------------------------------------------------ upsample2d
def _chw(g: "Graph", n: "Node") -> tuple[int, int, int]:
    x = g.tensor(n.inputs[0]).shape
    if len(x) != 3:
        raise node_error(n, f"input must be (C, H, W), got {x}")
    return x  # type: ignore[return-value]


def _up_check(g: "Graph", n: "Node") -> None:
    c, h, w = _chw(g, n)
    sh, sw = n.attrs["scale"]
    if sh < 1 or sw < 1:
        raise node_error(n, f"scale {(sh, sw)} must be positive integers")
    _expect(g, n, (c, h * sh, w * sw))


def _up_map(g: "Graph", n: "Node") -> np.ndarray:
    c, h, w = _chw(g, n)
    sh, sw = n.attrs["scale"]
    idx = np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)
    return np.repeat(np.repeat(idx, sh, axis=1), sw, axis=2).reshape(-1)


UPSAMPLE2D = register(OpDef(
    name="upsample2d", doc="nearest-neighbour upsampling by integer factors", n_inputs=1, golden=gather_golden,
    check=_up_check, attrs=(AttrSpec("scale", "pair", required=True),), categories=_CATS,
    torch_twin="qfx.nn.QUpsample", torch_float=("torch.nn.Upsample", "torch.nn.functional.interpolate"),
    generators=("upsample2d",), gather_map=_up_map, hls_header="qfx_gather.h", sample=_sample_up,
))


# ------------------------------------------------------------------------------------------------ zeropad2d
def _pads(n: "Node") -> tuple[int, int, int, int]:
    p = tuple(n.attrs["pads"])
    if len(p) != 4 or min(p) < 0:
        raise node_error(n, f"pads must be four non-negative integers (top, bottom, left, right), got {p}")
    return p  # type: ignore[return-value]


def _pad_stride(n: "Node") -> tuple[int, int]:
    s = tuple(n.attrs.get("stride", (1, 1)))
    if len(s) != 2 or min(s) < 1:
        raise node_error(n, f"stride must be two positive integers (zero insertion), got {s}")
    return s  # type: ignore[return-value]


_PAD_MODES = {"zeros": "constant", "replicate": "edge", "reflect": "reflect"}


def _pad_mode(n: "Node") -> str:
    m = str(n.attrs.get("mode", "zeros"))
    if m not in _PAD_MODES:
        raise node_error(n, f"mode {m!r} is not one of {sorted(_PAD_MODES)}")
    if m != "zeros" and tuple(n.attrs.get("stride", (1, 1))) != (1, 1):
        raise node_error(n, f"mode {m!r} pads without zero insertion (stride (1, 1))")
    return m


def _pad_check(g: "Graph", n: "Node") -> None:
    c, h, w = _chw(g, n)
    t, b, l, r = _pads(n)
    if _pad_mode(n) == "reflect" and (max(t, b) >= h or max(l, r) >= w):
        raise node_error(n, f"reflect pads {(t, b, l, r)} must be below the input size {(h, w)}")
    sh, sw = _pad_stride(n)
    _expect(g, n, (c, (h - 1) * sh + 1 + t + b, (w - 1) * sw + 1 + l + r))


def _pad_map(g: "Graph", n: "Node") -> np.ndarray:
    c, h, w = _chw(g, n)
    t, b, l, r = _pads(n)
    sh, sw = _pad_stride(n)
    idx = np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)
    if (sh, sw) != (1, 1):  # input element (i, j) lands on (i * sh, j * sw), zeros between
        spread = np.full((c, (h - 1) * sh + 1, (w - 1) * sw + 1), -1, dtype=np.int64)
        spread[:, ::sh, ::sw] = idx
        idx = spread
    mode = _PAD_MODES[_pad_mode(n)]
    if mode != "constant":  # edge modes copy input indices (numpy's edge/reflect are torch's replicate/reflect)
        return np.pad(idx, ((0, 0), (t, b), (l, r)), mode=mode).reshape(-1)
    return np.pad(idx, ((0, 0), (t, b), (l, r)), constant_values=-1).reshape(-1)


ZEROPAD2D = register(OpDef(
    name="zeropad2d", doc="padding of H and W (zeros, replicate, reflect), optionally with zeros inserted between "
    "rows/columns (stride)",
    n_inputs=1, golden=gather_golden, check=_pad_check,
    attrs=(AttrSpec("pads", "ints", required=True, doc="top, bottom, left, right"),
           AttrSpec("stride", "pair", (1, 1), doc="input rows/columns land stride apart (transposed conv)"),
           AttrSpec("mode", "str", "zeros", doc="zeros, replicate or reflect (edge values, stride 1)")),
    categories=_CATS,
    torch_twin="qfx.nn.QZeroPad2d", torch_float=("torch.nn.ZeroPad2d", "torch.nn.functional.pad"),
    generators=("zeropad2d",), gather_map=_pad_map, hls_header="qfx_gather.h", sample=_sample_pad,
))


# ------------------------------------------------------------------------------------------------ transpose
def _perm(g: "Graph", n: "Node") -> tuple[int, ...]:
    x = g.tensor(n.inputs[0]).shape
    p = tuple(n.attrs["perm"])
    if sorted(p) != list(range(len(x))):
        raise node_error(n, f"perm {p} is not a permutation of the {len(x)} per-sample axes")
    return p


def _tr_map(g: "Graph", n: "Node") -> np.ndarray:
    x = g.tensor(n.inputs[0]).shape
    return np.arange(int(np.prod(x)), dtype=np.int64).reshape(x).transpose(_perm(g, n)).reshape(-1)


TRANSPOSE = register(OpDef(
    name="transpose", doc="permute the per-sample axes (channels-last <-> channels-first)", n_inputs=1,
    golden=gather_golden,
    check=lambda g, n: _expect(g, n, tuple(g.tensor(n.inputs[0]).shape[i] for i in _perm(g, n))),
    attrs=(AttrSpec("perm", "ints", required=True),), categories=_CATS, torch_twin="",
    torch_float=("Tensor.permute",), generators=("transpose",), gather_map=_tr_map, hls_header="qfx_gather.h",
    sample=_sample_tr,
))


# ------------------------------------------------------------------------------------------------ slice
def _slices(g: "Graph", n: "Node") -> tuple[slice, ...]:
    x = g.tensor(n.inputs[0]).shape
    st, sp, sk = (tuple(int(v) for v in n.attrs[k]) for k in ("starts", "stops", "steps"))
    if not len(st) == len(sp) == len(sk) == len(x):
        raise node_error(n, f"starts/stops/steps need one entry per per-sample axis of {x}")
    for a, b, k, d in zip(st, sp, sk, x):
        if k < 1 or not 0 <= a < b <= d:
            raise node_error(n, f"slice {a}:{b}:{k} must satisfy 0 <= start < stop <= {d} and step >= 1")
    return tuple(slice(a, b, k) for a, b, k in zip(st, sp, sk))


def _slice_map(g: "Graph", n: "Node") -> np.ndarray:
    x = g.tensor(n.inputs[0]).shape
    return np.arange(int(np.prod(x)), dtype=np.int64).reshape(x)[_slices(g, n)].reshape(-1)


def _slice_shape(g: "Graph", n: "Node") -> tuple[int, ...]:
    return tuple(len(range(s.start, s.stop, s.step)) for s in _slices(g, n))


def _sample_slice(rng: np.random.Generator) -> "Graph":
    x = tuple(int(v) for v in rng.integers(2, 4, size=3, endpoint=True))
    st = tuple(int(rng.integers(0, d - 1)) for d in x)
    sp = tuple(int(rng.integers(a + 1, d, endpoint=True)) for a, d in zip(st, x))
    sk = tuple(int(v) for v in rng.integers(1, 2, size=3, endpoint=True))
    fx = rand_fmt(rng, 2, 8)
    out = tuple(len(range(a, b, k)) for a, b, k in zip(st, sp, sk))
    return one_node_graph("slice", [(x, fx)], out, _out_fmt(rng, fx), attrs={"starts": st, "stops": sp, "steps": sk})


SLICE = register(OpDef(
    name="slice", doc="a strided box of the per-sample axes (x[a:b:k, ...]: indexing, narrow, chunk, split)",
    n_inputs=1, golden=gather_golden, check=lambda g, n: _expect(g, n, _slice_shape(g, n)),
    attrs=(AttrSpec("starts", "ints", required=True), AttrSpec("stops", "ints", required=True),
           AttrSpec("steps", "ints", required=True)),
    categories=_CATS, torch_twin="", torch_float=("Tensor.__getitem__", "torch.narrow", "torch.chunk", "torch.split"),
    generators=("slice",), gather_map=_slice_map, hls_header="qfx_gather.h", sample=_sample_slice,
))
