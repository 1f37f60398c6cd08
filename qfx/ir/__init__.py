"""The qfx IR: graph data model, passes, capture from torch, golden interpreter, JSON io."""
from qfx.ir.graph import IR_VERSION, Constant, Graph, Node, Op, TensorSpec
from qfx.ir.interpret import edge_inputs, random_inputs, run, run_all

__all__ = ["Graph", "Node", "Op", "TensorSpec", "Constant", "IR_VERSION", "run", "run_all", "random_inputs", "edge_inputs"]
