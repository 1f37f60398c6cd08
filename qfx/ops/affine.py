"""``scale_shift``: per-channel ``out(x * scale[c] + shift[c])`` — BatchNorm (and dyadic requantization) in
fixed point. x(C, ...) -> y (same shape); scale(C,), shift(C,); acc_fmt = the exact x*scale+shift format."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import ops as fops
from qfx.fixed.format import FxFormat
from qfx.ops.base import (Categories as C, OpDef, const_codes, node_error, one_node_graph, rand_codes, rand_fmt,
                          register, same_shape, sample_shape)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["SCALE_SHIFT"]


def _check(g: "Graph", n: "Node") -> None:
    c = g.tensor(n.inputs[0]).shape[0]
    for k in ("scale", "shift"):
        if n.consts[k].codes.size != c:
            raise node_error(n, f"{k} has {n.consts[k].codes.size} values for {c} channels")
    same_shape(g, n)


def _acc(g: "Graph", n: "Node") -> FxFormat:
    return fops.scale_shift_format(g.tensor(n.inputs[0]).fmt, n.consts["scale"].fmt, n.consts["shift"].fmt)


def _golden(g, n, xs, fin, out):
    s, fs = const_codes(n, "scale")
    h, fh = const_codes(n, "shift")
    return fops.scale_shift(xs[0], fin[0], s, fs, h, fh, out)


def _sample(rng: np.random.Generator) -> "Graph":
    from qfx.ir.graph import Constant

    shape = sample_shape(rng)
    fx, fs, fh = rand_fmt(rng, 2, 8), rand_fmt(rng, 2, 8, signed=True), rand_fmt(rng, 2, 8, signed=True)
    consts = {"scale": Constant(rand_codes(rng, fs, (shape[0],)), fs),
              "shift": Constant(rand_codes(rng, fh, (shape[0],)), fh)}
    acc = fops.scale_shift_format(fx, fs, fh)
    return one_node_graph("scale_shift", [(shape, fx)], shape, rand_fmt(rng, 3, 10, int_bits=acc.int_bits - 1),
                          consts, acc=acc)


SCALE_SHIFT = register(OpDef(
    name="scale_shift", doc="per-channel x*scale+shift, one cast (BatchNorm in fixed point)", n_inputs=1,
    golden=_golden, check=_check, consts=frozenset({"scale", "shift"}), needs_acc=True, required_acc=_acc,
    acc_rule="equal", categories=frozenset({C.ELEMENTWISE, C.FUSABLE, C.AFFINE}),
    torch_twin="qfx.nn.QBatchNorm2d", torch_float=("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d"),
    generators=("scale_shift",), hls_header="qfx_scale_shift.h", sample=_sample,
))
