"""``nn.Embedding`` in fixed point: integer token indices (the model input as ``ap_uint<k>``, exact) select rows of a
quantized weight table. In the IR each embedding column is one ``lut`` over the index codes (the ROM the hardware
holds anyway), the columns reshaped and concatenated along a new last axis; no new IR op, so every backend runs it."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.tables import index_table
from qfx.ir.graph import Constant, Node, TensorSpec
from qfx.nn.layers import IRItem, _quant
from qfx.nn.op_layers import _IRModule

__all__ = ["QEmbedding", "index_table"]


class QEmbedding(_IRModule):
    """``nn.Embedding(num, dim)`` with a ``weight_width``-bit weight quantizer (learned binary point); the output is
    the quantized rows themselves (no further rounding). The index input should be exact integers: quantize_model
    gives an integer model input an ``ap_uint<k>`` / ``ap_int<k>`` format that holds every value seen."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 weight_width: int = 8, rounding: str = "RND", overflow: str = "SAT",
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        if num_embeddings < 1 or embedding_dim < 1:
            raise BadInputError(f"QEmbedding({num_embeddings}, {embedding_dim}): sizes must be positive")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim))
        self.weight_quant = _quant(None, weight_width, rounding=rounding, overflow=overflow, learn=learn_int_bits)
        self.out_quant = None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        w = self.weight_quant(self.weight)
        xf = x.detach().to(torch.float64)
        idx = torch.round(xf)
        valid = (idx == xf) & (idx >= 0) & (idx < self.num_embeddings)
        y = F.embedding(torch.where(valid, idx, torch.zeros_like(idx)).long(), w)
        return y * valid.unsqueeze(-1).to(y.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        (x,) = inputs
        if not x.shape:
            raise UnsupportedError(f"{name}: an embedding of one index per sample; give (N, L) index sequences")
        if x.fmt.width > 12:
            raise UnsupportedError(f"{name}: index format {x.fmt.ap_type()} is wider than 12 bits (a "
                                   f"{2 ** x.fmt.width}-entry table per column)")
        with torch.no_grad():
            codes, wf = self.weight_quant.quantize_exact(self.weight.detach().float())
        table = index_table(np.asarray(codes, dtype=np.int64).reshape(self.num_embeddings, -1), x.fmt)
        items: list[IRItem] = []
        cols = []
        one = tuple(x.shape) + (1,)
        for e in range(self.embedding_dim):
            col, col1 = f"{output}.c{e}", f"{output}.c{e}x1"
            items.append((Node(f"{name}.c{e}", "lut", (x.name,), col, {"table": Constant(table[:, e], wf)},
                               {"fn": f"embedding column {e}"}, source=name), TensorSpec(col, tuple(x.shape), wf)))
            items.append((Node(f"{name}.c{e}x1", "reshape", (col,), col1, attrs={"shape": one}, source=name),
                          TensorSpec(col1, one, wf)))
            cols.append(col1)
        shape = tuple(x.shape) + (self.embedding_dim,)
        if len(cols) == 1:  # one column: its reshape is the output
            node, _ = items[-1]
            items[-1] = (Node(node.name, "reshape", node.inputs, output, attrs={"shape": shape}, source=name),
                         TensorSpec(output, shape, wf))
            return items
        items.append((Node(name, "concat", tuple(cols), output, attrs={"axis": len(x.shape)}, source=name),
                      TensorSpec(output, shape, wf)))
        return items

    @classmethod
    def from_float(cls, m: nn.Embedding, **kw: Any) -> "QEmbedding":
        if m.max_norm is not None or m.sparse:
            raise UnsupportedError("nn.Embedding with max_norm or sparse=True: qfx embeds with a fixed table")
        q = cls(m.num_embeddings, m.embedding_dim, m.padding_idx, **kw)
        with torch.no_grad():
            q.weight.copy_(m.weight)
        return q
