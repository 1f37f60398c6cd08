"""``add``: a, b (same shape) -> y; exact ``a + b`` (binary points aligned as ap_fixed does), one cast."""
from __future__ import annotations

from typing import TYPE_CHECKING

from qfx.fixed import ops as fops
from qfx.ops.base import Categories as C, OpDef, node_error, register

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["ADD"]


def _check(g: "Graph", n: "Node") -> None:
    a, b = (g.tensor(t).shape for t in n.inputs)
    y = g.tensor(n.output).shape
    if a != b or y != a:
        raise node_error(n, f"operand shapes {a} and {b} and output {y} disagree")


def _golden(g, n, xs, fin, out):
    return fops.add(xs[0], fin[0], xs[1], fin[1], out)


ADD = register(OpDef(
    name="add", doc="exact a + b, one cast (residual add)", n_inputs=2, golden=_golden, check=_check,
    categories=frozenset({C.BINARY}), torch_twin="qfx.nn.QAdd",
    torch_float=("operator.add", "torch.add"), generators=("add",), hls_header="qfx_add.h",
))
