"""``softmax``: x(..., n) -> y(..., n) over the last axis, each row of n values independently (a vector is one
row; attention's (heads, S, S) scores are heads * S rows), in integer arithmetic with two tables (hls4ml's scheme):

    per row:  m = max(x);  e_i = exp_table[m - x_i];  s = sum(e_i);  r = recip_table[s >> shift];  y_i = cast(e_i * r)

``exp_table`` has one entry per input code distance (``2**W_in``): the code of ``exp(-d * lsb_in)`` in its format
(unsigned, one integer bit); ``s`` is the exact sum of the exp codes; ``recip_table[k]`` holds ``1 / value`` of the
sum interval ``[k, k+1) << shift`` (its midpoint) in the reciprocal format; ``y`` is the exact product cast once.
Every row uses the same two tables and shift (``softmax_tables(n, ...)``, n the row length). Every executor reads
them, so all are bit-exact with each other; the error against float softmax is set by the table widths (measured by
``benchmarks/bench_tables.py``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import kernels as K
from qfx.fixed.format import FxFormat
from qfx.ops.base import AttrSpec, Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Constant, Graph, Node

__all__ = ["SOFTMAX", "softmax_tables", "softmax_row", "MAX_SOFTMAX_IN_BITS"]

#: widest input format the exp table covers (2**12 entries)
MAX_SOFTMAX_IN_BITS = 12


def softmax_tables(n: int, in_fmt: FxFormat, out_fmt: FxFormat | None = None, exp_bits: int | None = None,
                   recip_index_bits: int | None = None, recip_bits: int | None = None
                   ) -> tuple["Constant", "Constant", int]:
    """(exp_table, recip_table, shift) for a softmax over ``n`` values of ``in_fmt``.

    Defaults follow the output width W: exp and reciprocal codes of W + 4 bits, a reciprocal table of
    2**clamp(W + ceil(log2 n), 10, 14) entries (about 1 LSB of an 8-bit output for n <= 64; wider outputs are
    limited by the table size, as in hls4ml)."""
    from qfx.ir.graph import Constant

    if in_fmt.width > MAX_SOFTMAX_IN_BITS:
        raise node_error_fmt(in_fmt)
    w = out_fmt.width if out_fmt is not None else 8
    exp_bits = exp_bits or min(w + 4, 20)
    recip_bits = recip_bits or min(w + 4, 20)
    recip_index_bits = recip_index_bits or max(10, min(14, w + (max(n, 2) - 1).bit_length()))
    fe = FxFormat(exp_bits, 1, signed=False)
    d = np.arange(0, 1 << in_fmt.width, dtype=np.int64)
    e = np.asarray(fe.to_int(np.exp(-np.ldexp(d.astype(np.float64), -in_fmt.frac_bits))), dtype=np.int64)
    s_max = n * int(e[0])
    shift = max(0, s_max.bit_length() - recip_index_bits)
    k = np.arange(0, 1 << recip_index_bits, dtype=np.int64)
    mid = np.ldexp((k.astype(np.float64) + 0.5) * float(1 << shift) if shift else np.maximum(k, 1).astype(np.float64),
                   -fe.frac_bits)
    fr = FxFormat(recip_bits, 1, signed=False)
    r = np.asarray(fr.to_int(1.0 / mid), dtype=np.int64)
    return Constant(e, fe), Constant(r, fr), shift


def node_error_fmt(f: FxFormat) -> Exception:
    from qfx.errors import FormatError

    return FormatError(f"softmax over {f.ap_type()} needs a 2**{f.width}-entry exp table; requantize the input to at "
                       f"most {MAX_SOFTMAX_IN_BITS} bits first")


def sum_format(n: int, fe: FxFormat) -> FxFormat:
    """Exact format of the sum of ``n`` exp codes."""
    return FxFormat.for_code_range(0, n * fe.max_code, fe.frac_bits, signed=False)


def softmax_row(g: "Graph", n: "Node") -> int:
    """The row length of softmax node ``n``: the size of its input's last axis (the op checks rank >= 1)."""
    shape = g.tensor(n.inputs[0]).shape
    return int(shape[-1]) if shape else 1


def _check(g: "Graph", n: "Node") -> None:
    x, y = g.tensor(n.inputs[0]), g.tensor(n.output)
    if len(x.shape) < 1 or y.shape != x.shape:
        raise node_error(n, f"softmax works over the last axis of (..., n) and keeps the shape: input {x.shape}, "
                            f"output {y.shape}")
    et, rt = n.consts["exp_table"].codes, n.consts["recip_table"].codes
    if et.ndim != 1 or et.size != 1 << x.fmt.width:
        raise node_error(n, f"exp_table has {et.size} entries; input format {x.fmt.ap_type()} needs {1 << x.fmt.width}")
    if rt.ndim != 1 or rt.size < 2:
        raise node_error(n, "recip_table must be a vector")
    s_max = softmax_row(g, n) * int(et.max())  # one row's sum; exp codes are at most the table's largest entry (exp(0))
    if (s_max >> int(n.attrs.get("shift", 0))) >= rt.size:
        raise node_error(n, f"sum >> shift reaches {s_max >> int(n.attrs.get('shift', 0))}, beyond the "
                            f"{rt.size}-entry recip_table")


def _golden(g, n, xs, fin, out):
    x = np.asarray(xs[0], dtype=np.int64)
    et, rt = n.consts["exp_table"], n.consts["recip_table"]
    d = x.max(axis=-1, keepdims=True) - x  # batch first, rows along the last axis
    e = et.codes[d]
    s = e.sum(axis=-1, keepdims=True)
    r = rt.codes[s >> int(n.attrs.get("shift", 0))]
    return K.cast(e * r, FxFormat.for_code_range(0, int(et.fmt.max_code) * int(rt.fmt.max_code),
                                                 et.fmt.frac_bits + rt.fmt.frac_bits, signed=False), out)


def _sample(rng: np.random.Generator) -> "Graph":
    n = int(rng.integers(2, 10, endpoint=True))
    fx = rand_fmt(rng, 3, 8, signed=True, int_bits=int(rng.integers(1, 4, endpoint=True)))
    of = rand_fmt(rng, 4, 12, signed=False, int_bits=1)
    et, rt, shift = softmax_tables(n, fx, of, int(rng.integers(8, 14, endpoint=True)),
                                   int(rng.integers(6, 10, endpoint=True)), int(rng.integers(8, 14, endpoint=True)))
    shape: tuple[int, ...] = (n,)
    if rng.random() < 0.4:  # rows: (rows, n) or (heads, rows, n), at most ~48 elements
        lead = (int(rng.integers(1, 4, endpoint=True)),)
        if rng.random() < 0.5:
            lead = (int(rng.integers(1, 2, endpoint=True)),) + lead
        while int(np.prod(lead)) * n > 48:
            lead = lead[:-1] + (lead[-1] - 1,)
        shape = lead + (n,)
    return one_node_graph("softmax", [(shape, fx)], shape, of, {"exp_table": et, "recip_table": rt},
                          {"shift": shift})


SOFTMAX = register(OpDef(
    name="softmax", doc="softmax over the last axis (each row) with exp and reciprocal tables (hls4ml's scheme)",
    n_inputs=1,
    golden=_golden, check=_check, consts=frozenset({"exp_table", "recip_table"}),
    attrs=(AttrSpec("shift", "int", 0, doc="right shift of the exp sum that indexes recip_table"),),
    categories=frozenset({C.TABLE}), torch_twin="qfx.nn.QSoftmax",
    torch_float=("torch.nn.Softmax", "torch.nn.functional.softmax", "torch.softmax"), generators=("softmax",),
    hls_header="qfx_softmax.h", sample=_sample,
))
