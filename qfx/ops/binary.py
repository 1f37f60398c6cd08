"""Two-operand element-wise ops on same-shape tensors, each exact then cast once to the output format:
``add`` (a + b, binary points aligned as ap_fixed does); ``sub`` and ``mul`` are in ``arith``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from qfx.fixed import ops as fops
import numpy as np

from qfx.ops.base import Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register, sample_shape

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["ADD"]


def same_shape_operands(g: "Graph", n: "Node") -> None:
    a, b = (g.tensor(t).shape for t in n.inputs)
    y = g.tensor(n.output).shape
    if a != b or y != a:
        raise node_error(n, f"operand shapes {a} and {b} and output {y} disagree")


def _golden(g, n, xs, fin, out):
    return fops.add(xs[0], fin[0], xs[1], fin[1], out)


def binary_sample(op: str):
    """Sampler of a two-operand op: same shape, independent random formats."""
    def sample(rng: np.random.Generator) -> "Graph":
        shape, fa, fb = sample_shape(rng), rand_fmt(rng, 2, 8), rand_fmt(rng, 2, 8)
        ib = fa.int_bits + fb.int_bits if op == "mul" else max(fa.int_bits, fb.int_bits) + 1
        return one_node_graph(op, [(shape, fa), (shape, fb)], shape, rand_fmt(rng, 3, 10, int_bits=ib))
    return sample


ADD = register(OpDef(
    name="add", doc="exact a + b, one cast (residual add)", n_inputs=2, golden=_golden, check=same_shape_operands,
    categories=frozenset({C.BINARY}), torch_twin="qfx.nn.QAdd",
    torch_float=("operator.add", "torch.add"), generators=("add",), hls_header="qfx_add.h",
    sample=binary_sample("add"),
))

