"""Shape-only ops: ``flatten`` (C,H,W) -> (C*H*W,) in C order, and ``reshape`` to ``attrs['shape']``. Both cast to
the output format (a wire when the formats agree)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import kernels as K
from qfx.ops.base import AttrSpec, Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["FLATTEN", "RESHAPE"]

_CATS = frozenset({C.ELEMENTWISE, C.WIRING})


def _check(g: "Graph", n: "Node") -> None:
    x, y = g.tensor(n.inputs[0]).shape, g.tensor(n.output).shape
    if int(np.prod(y)) != int(np.prod(x)):
        raise node_error(n, f"cannot reshape {x} to {y}")
    if n.op == "flatten" and len(y) != 1:
        raise node_error(n, f"flatten output must be 1-D, got {y}")


def _golden(g, n, xs, fin, out):
    x = np.asarray(xs[0])
    return K.cast(x.reshape((x.shape[0],) + g.tensor(n.output).shape), fin[0], out)


def _sample(op: str):
    def sample(rng: np.random.Generator) -> "Graph":
        c, h, w = (int(v) for v in rng.integers(1, 4, size=3, endpoint=True))
        fx = rand_fmt(rng, 2, 10)
        of = fx if rng.random() < 0.5 else rand_fmt(rng, 2, 10, int_bits=fx.int_bits)
        if op == "flatten":
            return one_node_graph(op, [((c, h, w), fx)], (c * h * w,), of)
        return one_node_graph(op, [((c * h * w,), fx)], (c, h * w), of, attrs={"shape": (c, h * w)})
    return sample


FLATTEN = register(OpDef(
    name="flatten", doc="(C, H, W) -> (C*H*W,) in C order, one cast", n_inputs=1, golden=_golden, check=_check,
    categories=_CATS, torch_twin="qfx.nn.QFlatten",
    torch_float=("torch.nn.Flatten", "torch.flatten"), generators=("flatten",), hls_header="qfx_activation.h",
    sample=_sample("flatten"),
))

RESHAPE = register(OpDef(
    name="reshape", doc="reshape to attrs['shape'] (C order), one cast", n_inputs=1, golden=_golden, check=_check,
    attrs=(AttrSpec("shape", "ints"),), categories=_CATS, torch_twin="",
    torch_float=("Tensor.view", "Tensor.reshape", "torch.reshape"), generators=("reshape",),
    hls_header="qfx_activation.h", sample=_sample("reshape"),
))
