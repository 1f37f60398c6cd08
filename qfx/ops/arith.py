"""``sub`` (exact a - b) and ``mul`` (exact a * b) on same-shape tensors, one cast to the output format."""
from __future__ import annotations

from qfx.fixed import kernels as K
from qfx.ops.base import Categories as C, OpDef, register
from qfx.ops.binary import binary_sample, same_shape_operands

__all__ = ["SUB", "MUL"]


def _sub_golden(g, n, xs, fin, out):
    s, f = K.sub(xs[0], fin[0], xs[1], fin[1])
    return K.cast(s, f, out)


SUB = register(OpDef(
    name="sub", doc="exact a - b, one cast", n_inputs=2, golden=_sub_golden, check=same_shape_operands,
    categories=frozenset({C.BINARY}), torch_twin="qfx.nn.QSub", torch_float=("operator.sub", "torch.sub"),
    generators=("sub",), hls_header="qfx_add.h", sample=binary_sample("sub"),
))


def _mul_golden(g, n, xs, fin, out):
    p, f = K.mul(xs[0], fin[0], xs[1], fin[1])
    return K.cast(p, f, out)


MUL = register(OpDef(
    name="mul", doc="exact a * b, one cast", n_inputs=2, golden=_mul_golden, check=same_shape_operands,
    categories=frozenset({C.BINARY}), torch_twin="qfx.nn.QMul", torch_float=("operator.mul", "torch.mul"),
    generators=("mul",), hls_header="qfx_add.h", sample=binary_sample("mul"),
))
