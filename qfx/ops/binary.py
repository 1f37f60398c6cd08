"""Two-operand element-wise ops on same-shape tensors, each exact then cast once to the output format:
``add`` (a + b, binary points aligned as ap_fixed does); ``sub`` and ``mul`` are in ``arith``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from qfx.fixed import ops as fops
from qfx.ops.base import Categories as C, OpDef, node_error, register

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


ADD = register(OpDef(
    name="add", doc="exact a + b, one cast (residual add)", n_inputs=2, golden=_golden, check=same_shape_operands,
    categories=frozenset({C.BINARY}), torch_twin="qfx.nn.QAdd",
    torch_float=("operator.add", "torch.add"), generators=("add",), hls_header="qfx_add.h",
))

