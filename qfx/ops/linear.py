"""``dense`` and ``conv2d``: weights (+ bias) summed exactly in a lossless accumulator, then one cast.

``dense``:  x(n,) -> y(m,); weight(m, n), bias(m,)?; acc_fmt; attrs: khot (0 = plain weights)
``conv2d``: x(C,H,W) -> y(O,Ho,Wo); weight(O,C,kh,kw), bias(O,)?; acc_fmt; attrs: stride, padding, khot
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import ops as fops
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ops.base import (AttrSpec, Categories as C, OpDef, const_codes, node_error, one_node_graph, pair, rand_codes,
                          rand_fmt, register, window_shape)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Constant, Graph, Node

__all__ = ["DENSE", "CONV2D"]


def linear_acc(g: "Graph", n: "Node") -> FxFormat:
    """Lossless accumulator by interval analysis over the node's actual weight codes."""
    fx = g.tensor(n.inputs[0]).fmt
    w = n.consts["weight"]
    b = n.consts.get("bias")
    wc = w.codes.reshape(w.codes.shape[0], -1)
    return lossless_acc_format(wc, w.fmt, fx, b.codes if b else None, b.fmt if b else None)


def _check_bias(n: "Node", m: int) -> None:
    b = n.consts.get("bias")
    if b is not None and b.codes.size != m:
        raise node_error(n, f"bias has {b.codes.size} values for {m} outputs")


def _check_khot(n: "Node") -> None:
    if int(n.attrs.get("khot", 0) or 0) < 0:
        raise node_error(n, f"khot must be >= 0, got {n.attrs.get('khot')}")


# ------------------------------------------------------------------------------------------------ dense

def _dense_check(g: "Graph", n: "Node") -> None:
    x, y = g.tensor(n.inputs[0]).shape, g.tensor(n.output).shape
    w = n.consts["weight"].codes
    if w.ndim != 2 or len(x) != 1 or w.shape[1] != x[0] or y != (w.shape[0],):
        raise node_error(n, f"weight {w.shape} does not map input {x} to output {y}")
    _check_bias(n, w.shape[0])
    _check_khot(n)


def _dense_golden(g, n, xs, fin, out):
    w, fw = const_codes(n, "weight")
    b, fb = const_codes(n, "bias")
    return fops.dense(xs[0], fin[0], w, fw, out, b, fb, n.acc_fmt)


def _sample_dense(rng: np.random.Generator) -> "Graph":
    n, m = int(rng.integers(1, 12, endpoint=True)), int(rng.integers(1, 8, endpoint=True))
    fx = rand_fmt(rng, 2, 8)
    w, b, khot = _sample_weights(rng, (m, n))
    tmp = one_node_graph("dense", [((n,), fx)], (m,), fx, {"weight": w, **b}, {"khot": khot}, FxFormat(62, 40))
    acc = linear_acc(tmp, tmp.nodes[0])
    return one_node_graph("dense", [((n,), fx)], (m,), rand_fmt(rng, 3, 10, int_bits=acc.int_bits - 2),
                          {"weight": w, **b}, {"khot": khot}, acc)


def _sample_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[Constant, dict, int]:
    from qfx.fixed.csd import khot_project
    from qfx.ir.graph import Constant

    fw = rand_fmt(rng, 2, 8, signed=True)
    codes = rand_codes(rng, fw, shape)
    khot = int(rng.integers(1, 2, endpoint=True)) if rng.random() < 0.3 else 0
    if khot:
        codes = khot_project(codes, khot, fw.min_code, fw.max_code)
    bias = {}
    if rng.random() < 0.7:
        fb = rand_fmt(rng, 2, 10, signed=True)
        bias = {"bias": Constant(rand_codes(rng, fb, (shape[0],)), fb)}
    return Constant(codes, fw), bias, khot


DENSE = register(OpDef(
    name="dense", doc="fully connected layer: out(acc(bias) + sum x*w)", n_inputs=1,
    golden=_dense_golden, check=_dense_check, consts=frozenset({"weight"}), optional_consts=frozenset({"bias"}),
    attrs=(AttrSpec("khot", "int", 0, doc="at most K non-zero CSD digits per weight (0 = plain)"),),
    needs_acc=True, required_acc=linear_acc, acc_rule="contains", categories=frozenset({C.LINEAR}),
    torch_twin="qfx.nn.QLinear", torch_float=("torch.nn.Linear",), generators=("dense",),
    hls_header="qfx_dense.h", sample=_sample_dense,
))


# ------------------------------------------------------------------------------------------------ conv2d

def _conv_check(g: "Graph", n: "Node") -> None:
    x, y = g.tensor(n.inputs[0]).shape, g.tensor(n.output).shape
    w = n.consts["weight"].codes
    if w.ndim != 4 or len(x) != 3 or w.shape[1] != x[0]:
        raise node_error(n, f"weight {w.shape} does not fit input {x} (need (O, C, kh, kw) with C = {x[0]})")
    st, pd = pair(CONV2D.attr(n, "stride"), "stride", n), pair(CONV2D.attr(n, "padding"), "padding", n)
    if min(st) < 1 or min(pd) < 0:
        raise node_error(n, f"stride {st} / padding {pd} out of range")
    exp = window_shape(g, n, w.shape[2:], st, pd, w.shape[0])
    if y != exp:
        raise node_error(n, f"output shape {y} should be {exp}")
    _check_bias(n, w.shape[0])
    _check_khot(n)


def _conv_golden(g, n, xs, fin, out):
    w, fw = const_codes(n, "weight")
    b, fb = const_codes(n, "bias")
    return fops.conv2d(xs[0], fin[0], w, fw, out, b, fb, tuple(CONV2D.attr(n, "stride")),
                       tuple(CONV2D.attr(n, "padding")), n.acc_fmt)


def _sample_conv(rng: np.random.Generator) -> "Graph":
    from qfx.fixed.ops import conv_out_size

    c, o = int(rng.integers(1, 3, endpoint=True)), int(rng.integers(1, 3, endpoint=True))
    h, wd = int(rng.integers(3, 6, endpoint=True)), int(rng.integers(3, 6, endpoint=True))
    k = int(rng.integers(1, min(3, h, wd), endpoint=True))
    st, pd = int(rng.integers(1, 2, endpoint=True)), int(rng.integers(0, k - 1, endpoint=True))
    fx = rand_fmt(rng, 2, 8)
    w, b, khot = _sample_weights(rng, (o, c, k, k))
    shape = (o, conv_out_size(h, k, st, pd), conv_out_size(wd, k, st, pd))
    attrs = {"stride": (st, st), "padding": (pd, pd), "khot": khot}
    tmp = one_node_graph("conv2d", [((c, h, wd), fx)], shape, fx, {"weight": w, **b}, attrs, FxFormat(62, 40))
    acc = linear_acc(tmp, tmp.nodes[0])
    return one_node_graph("conv2d", [((c, h, wd), fx)], shape, rand_fmt(rng, 3, 10, int_bits=acc.int_bits - 2),
                          {"weight": w, **b}, attrs, acc)


CONV2D = register(OpDef(
    name="conv2d", doc="2-D convolution (zero padding): out(acc(bias) + sum window*w)", n_inputs=1,
    golden=_conv_golden, check=_conv_check, consts=frozenset({"weight"}), optional_consts=frozenset({"bias"}),
    attrs=(AttrSpec("stride", "pair", (1, 1)), AttrSpec("padding", "pair", (0, 0)),
           AttrSpec("khot", "int", 0, doc="at most K non-zero CSD digits per weight (0 = plain)")),
    needs_acc=True, required_acc=linear_acc, acc_rule="contains", categories=frozenset({C.LINEAR, C.CONV}),
    torch_twin="qfx.nn.QConv2d", torch_float=("torch.nn.Conv2d",), generators=("conv2d",),
    hls_header="qfx_conv2d.h", sample=_sample_conv,
))

