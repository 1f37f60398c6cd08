"""Unary element-wise ops: ``relu``, ``clip`` (bounds are codes of the input format) and ``quant`` (a plain cast,
i.e. requantization to the output format). Each keeps the shape and casts once to the output format."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from qfx.fixed import kernels as K
from qfx.fixed import ops as fops
from qfx.ops.base import (AttrSpec, Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register, same_shape,
                          sample_shape)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["RELU", "CLIP", "QUANT"]

_UNARY = frozenset({C.ELEMENTWISE, C.FUSABLE})


def _unary_sample(op: str) -> "Callable[[np.random.Generator], Graph]":
    def sample(rng: np.random.Generator) -> "Graph":
        shape, fx = sample_shape(rng), rand_fmt(rng, 2, 10)
        attrs = {}
        if op == "clip":
            lo = int(rng.integers(fx.min_code, 1)) if fx.signed else int(rng.integers(0, fx.max_code // 2 + 1))
            attrs = {"lo": lo, "hi": int(rng.integers(lo, fx.max_code, endpoint=True))}
        return one_node_graph(op, [(shape, fx)], shape, rand_fmt(rng, 2, 10, int_bits=fx.int_bits), attrs=attrs)
    return sample


def _relu_golden(g, n, xs, fin, out):
    return fops.relu(xs[0], fin[0], out)


RELU = register(OpDef(
    name="relu", doc="max(x, 0), one cast", n_inputs=1, golden=_relu_golden, check=same_shape, categories=_UNARY,
    torch_twin="qfx.nn.QReLU", torch_float=("torch.nn.ReLU", "torch.nn.functional.relu"), generators=("relu",),
    hls_header="qfx_activation.h", sample=_unary_sample("relu"),
))


def _clip_check(g: "Graph", n: "Node") -> None:
    same_shape(g, n)
    f = g.tensor(n.inputs[0]).fmt
    lo, hi = n.attrs.get("lo"), n.attrs.get("hi")
    if not isinstance(lo, int) or not isinstance(hi, int) or not f.min_code <= lo <= hi <= f.max_code:
        raise node_error(n, f"clip bounds lo={lo!r}, hi={hi!r} must be codes of {f.ap_type()} with lo <= hi")


def _clip_golden(g, n, xs, fin, out):
    return fops.clip(xs[0], fin[0], int(n.attrs["lo"]), int(n.attrs["hi"]), out)


CLIP = register(OpDef(
    name="clip", doc="min(max(x, lo), hi) with bounds as input codes, one cast", n_inputs=1, golden=_clip_golden,
    check=_clip_check, attrs=(AttrSpec("lo", "int", required=True), AttrSpec("hi", "int", required=True)),
    categories=_UNARY, torch_twin="qfx.nn.QClippedReLU",
    torch_float=("torch.nn.ReLU6", "torch.nn.Hardtanh", "torch.clamp"), generators=("clip",),
    hls_header="qfx_activation.h", sample=_unary_sample("clip"),
))


def _quant_golden(g, n, xs, fin, out):
    return K.cast(np.asarray(xs[0]), fin[0], out)


QUANT = register(OpDef(
    name="quant", doc="requantize: a plain cast to the output format", n_inputs=1, golden=_quant_golden,
    check=same_shape, categories=_UNARY | {C.WIRING}, torch_twin="qfx.nn.QuantInput",
    torch_float=("torch.nn.Identity",), generators=("quant",), hls_header="qfx_activation.h",
    sample=_unary_sample("quant"),
))
