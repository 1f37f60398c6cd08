"""``lut``: element-wise lookup table. x -> y (same shape); const ``table`` holds one code per input code
(``min_code`` first, ``qfx.fixed.tables.build_table``); attrs: ``fn`` (the function spec the table samples, for
reports and regeneration). ``y = cast(table[x - min_code])``: sigmoid, tanh, SiLU, GELU, hard-sigmoid/-swish,
leaky ReLU, ... are all this one op, so every backend implements them with one ROM emitter."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qfx.fixed import kernels as K
from qfx.ops.base import (AttrSpec, Categories as C, OpDef, node_error, one_node_graph, rand_fmt, register, same_shape,
                          sample_shape)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["LUT"]


def _check(g: "Graph", n: "Node") -> None:
    same_shape(g, n)
    f = g.tensor(n.inputs[0]).fmt
    t = n.consts["table"].codes
    if t.ndim != 1 or t.size != f.max_code - f.min_code + 1:
        raise node_error(n, f"table has {t.size} entries; input format {f.ap_type()} has "
                            f"{f.max_code - f.min_code + 1} codes")


def _golden(g, n, xs, fin, out):
    t = n.consts["table"]
    idx = np.asarray(xs[0], dtype=np.int64) - fin[0].min_code
    return K.cast(t.codes[idx], t.fmt, out)


def _sample(rng: np.random.Generator) -> "Graph":
    from qfx.fixed.tables import FUNCTIONS, build_table
    from qfx.ir.graph import Constant

    fn = str(rng.choice(sorted(f for f in FUNCTIONS if f not in ("exp", "reciprocal"))))
    shape, fx = sample_shape(rng), rand_fmt(rng, 3, 10, int_bits=int(rng.integers(1, 4, endpoint=True)))
    of = rand_fmt(rng, 3, 10, int_bits=max(1, fx.int_bits))
    return one_node_graph("lut", [(shape, fx)], shape, of, {"table": Constant(build_table(fn, fx, of), of)},
                          {"fn": fn})


LUT = register(OpDef(
    name="lut", doc="element-wise lookup table over every input code (non-linear functions)", n_inputs=1,
    golden=_golden, check=_check, consts=frozenset({"table"}), attrs=(AttrSpec("fn", "str", ""),),
    categories=frozenset({C.ELEMENTWISE, C.TABLE}), torch_twin="qfx.nn.QActivation",
    torch_float=("torch.nn.Sigmoid", "torch.nn.Tanh", "torch.nn.SiLU", "torch.nn.GELU", "torch.nn.Hardsigmoid",
                 "torch.nn.Hardswish", "torch.nn.LeakyReLU", "torch.nn.ELU", "torch.nn.Softplus"),
    generators=("lut",), hls_header="qfx_lut.h", sample=_sample,
))
