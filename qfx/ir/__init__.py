"""The qfx IR: graph data model, passes, capture from torch, golden interpreter, JSON io."""
from qfx.ir.graph import IR_VERSION, Constant, Graph, Node, Op, TensorSpec

__all__ = ["Graph", "Node", "Op", "TensorSpec", "Constant", "IR_VERSION"]
