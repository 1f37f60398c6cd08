"""``matmul``: the product of two computed tensors (attention's Q @ K^T and P @ V), exact, then one cast.

    a(..., M, K) @ b(..., K, N) -> y(..., M, N)   (equal leading dims; per-sample shapes, the batch is not stored)

Every output element is the exact sum of K products of codes in the lossless accumulator ``matmul_acc_format``
(from the two input formats and K alone: both operands are variables, so no weight codes narrow it), then one cast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import kernels as K
from qfx.fixed.format import FxFormat
from qfx.ops.base import Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["MATMUL", "matmul_acc_format", "matmul_out_shape"]


def matmul_out_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """(..., M, N) for a(..., M, K) @ b(..., K, N) with equal leading dims; None when they do not fit."""
    if len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] or a[-1] != b[-2]:
        return None
    return tuple(a[:-1]) + (b[-1],)


def matmul_acc_format(fa: FxFormat, fb: FxFormat, k: int) -> FxFormat:
    """Narrowest format holding every sum of ``k`` products of an ``fa`` code and an ``fb`` code: the range of one
    product times ``k`` (why lossless: any summation order, in any backend, stays exact)."""
    ends = [x * y for x in (fa.min_code, fa.max_code) for y in (fb.min_code, fb.max_code)]
    lo, hi = min(0, k * min(ends)), max(0, k * max(ends))
    return FxFormat.for_code_range(lo, hi, fa.frac_bits + fb.frac_bits, signed=True if lo < 0 else None)


def _acc(g: "Graph", n: "Node") -> FxFormat:
    a, b = (g.tensor(t) for t in n.inputs)
    return matmul_acc_format(a.fmt, b.fmt, int(a.shape[-1]) if a.shape else 1)


def _check(g: "Graph", n: "Node") -> None:
    a, b = (g.tensor(t).shape for t in n.inputs)
    y = g.tensor(n.output).shape
    exp = matmul_out_shape(a, b)
    if exp is None or y != exp:
        raise node_error(n, f"operands {a} @ {b} need shapes (..., M, K) and (..., K, N) with equal leading dims "
                            f"and an output (..., M, N); output is {y}")
    acc = _acc(g, n)
    if acc.width > 62:
        raise node_error(n, f"the exact sum needs {acc.width} bits, beyond the int64 exact path; narrow the operands")


def _golden(g, n, xs, fin, out):
    a, b = (np.asarray(x, dtype=np.int64) for x in xs)
    acc = matmul_acc_format(fin[0], fin[1], int(a.shape[-1]))
    K.check_fits_int64(max(abs(acc.min_code), abs(acc.max_code)), f"node {n.name!r} matmul sum")
    return K.cast(np.matmul(a, b), acc, out)  # integer matmul: exact (no BLAS, no float)


def _sample(rng: np.random.Generator) -> "Graph":
    lead = () if rng.random() < 0.5 else (int(rng.integers(1, 3, endpoint=True)),)
    m, k, nn = (int(rng.integers(1, 4, endpoint=True)) for _ in range(3))
    fa, fb = rand_fmt(rng, 2, 8), rand_fmt(rng, 2, 8)
    acc = matmul_acc_format(fa, fb, k)
    sa, sb = lead + (m, k), lead + (k, nn)
    return one_node_graph("matmul", [(sa, fa), (sb, fb)], lead + (m, nn),
                          rand_fmt(rng, 3, 10, int_bits=acc.int_bits - 1), acc=acc)


MATMUL = register(OpDef(
    name="matmul", doc="a(..., M, K) @ b(..., K, N) of two variables: exact sum of products, one cast", n_inputs=2,
    golden=_golden, check=_check, needs_acc=True, required_acc=_acc, acc_rule="equal",
    categories=frozenset(), torch_twin="qfx.nn.QMatMul",
    torch_float=("operator.matmul", "torch.matmul", "torch.bmm"), generators=("matmul",),
    hls_header="qfx_matmul.h", sample=_sample,
))
