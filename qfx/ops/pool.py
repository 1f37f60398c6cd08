"""2-D pooling over (C, H, W): ``maxpool2d`` (padding never wins) and ``avgpool2d`` (``sum(window) * recip``,
recip the code of 1/(kh*kw), exact for powers of two; acc_fmt is the exact product's format)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import ops as fops
from qfx.fixed.format import FxFormat
from qfx.ops.base import (AttrSpec, Categories as C, OpDef, node_error, one_node_graph, pair, rand_fmt, register,
                          window_shape)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["MAXPOOL2D", "AVGPOOL2D"]

_ATTRS = (AttrSpec("kernel", "pair", required=True), AttrSpec("stride", "pair", "kernel"),
          AttrSpec("padding", "pair", (0, 0)))


def _window(op: OpDef, n: "Node") -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    k = pair(op.attr(n, "kernel"), "kernel", n)
    return k, pair(op.attr(n, "stride"), "stride", n), pair(op.attr(n, "padding"), "padding", n)


def _check(g: "Graph", n: "Node") -> None:
    op = MAXPOOL2D if n.op == "maxpool2d" else AVGPOOL2D
    x = g.tensor(n.inputs[0]).shape
    if len(x) != 3:
        raise node_error(n, f"input must be (C, H, W), got {x}")
    k, st, pd = _window(op, n)
    if min(k) < 1 or min(st) < 1 or min(pd) < 0 or pd[0] >= k[0] or pd[1] >= k[1]:
        raise node_error(n, f"kernel {k}, stride {st}, padding {pd} out of range")
    exp = window_shape(g, n, k, st, pd, x[0])
    y = g.tensor(n.output).shape
    if y != exp:
        raise node_error(n, f"output shape {y} should be {exp}")
    if "recip" in n.consts and n.consts["recip"].codes.size != 1:
        raise node_error(n, "recip must be a single code")


def _max_golden(g, n, xs, fin, out):
    k, st, pd = _window(MAXPOOL2D, n)
    return fops.maxpool2d(xs[0], fin[0], out, k, st, pd)


def _pool_sample(op: str):
    def sample(rng: np.random.Generator) -> "Graph":
        from qfx.fixed.ops import conv_out_size
        from qfx.ir.graph import Constant

        c, h, w = int(rng.integers(1, 3, endpoint=True)), int(rng.integers(2, 6)), int(rng.integers(2, 6))
        k = int(rng.integers(1, min(3, h, w), endpoint=True))
        st, pd = int(rng.integers(1, k, endpoint=True)), int(rng.integers(0, k - 1, endpoint=True))
        fx = rand_fmt(rng, 2, 10)
        shape = (c, conv_out_size(h, k, st, pd), conv_out_size(w, k, st, pd))
        attrs = {"kernel": (k, k), "stride": (st, st), "padding": (pd, pd)}
        if op == "maxpool2d":
            return one_node_graph(op, [((c, h, w), fx)], shape, rand_fmt(rng, 2, 10, int_bits=fx.int_bits),
                                  attrs=attrs)
        fr = rand_fmt(rng, 4, 10, signed=False, int_bits=0)
        recip = int(fr.to_int(1.0 / (k * k)))
        acc = fops.avgpool_format(fx, fr, k * k)
        return one_node_graph(op, [((c, h, w), fx)], shape, rand_fmt(rng, 2, 10, int_bits=fx.int_bits),
                              {"recip": Constant(np.array([recip]), fr)}, attrs, acc)
    return sample


MAXPOOL2D = register(OpDef(
    name="maxpool2d", doc="max over 2-D windows, one cast", n_inputs=1, golden=_max_golden, check=_check,
    attrs=_ATTRS, categories=frozenset({C.POOL}), torch_twin="qfx.nn.QMaxPool2d",
    torch_float=("torch.nn.MaxPool2d", "torch.nn.functional.max_pool2d"), generators=("maxpool2d",),
    hls_header="qfx_pool.h", sample=_pool_sample("maxpool2d"),
))


def _avg_acc(g: "Graph", n: "Node") -> FxFormat:
    k = pair(AVGPOOL2D.attr(n, "kernel"), "kernel", n)
    return fops.avgpool_format(g.tensor(n.inputs[0]).fmt, n.consts["recip"].fmt, k[0] * k[1])


def _avg_golden(g, n, xs, fin, out):
    k, st, pd = _window(AVGPOOL2D, n)
    r = n.consts["recip"]
    return fops.avgpool2d(xs[0], fin[0], out, k, st, int(np.asarray(r.codes).reshape(-1)[0]), r.fmt, pd)


AVGPOOL2D = register(OpDef(
    name="avgpool2d", doc="sum over 2-D windows times recip, one cast", n_inputs=1, golden=_avg_golden,
    check=_check, consts=frozenset({"recip"}), attrs=_ATTRS, needs_acc=True, required_acc=_avg_acc,
    acc_rule="equal", categories=frozenset({C.POOL}), torch_twin="qfx.nn.QAvgPool2d",
    torch_float=("torch.nn.AvgPool2d", "torch.nn.functional.avg_pool2d"), generators=("avgpool2d",),
    hls_header="qfx_pool.h", sample=_pool_sample("avgpool2d"),
))
