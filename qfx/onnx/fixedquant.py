"""The ``qfx.FixedQuant`` ONNX local function: an ap_fixed cast built from standard ops on exact doubles.

``FixedQuant<width, int_bits, signed, rounding, overflow>(x)`` returns the value ``ap_fixed<W,I,Q,O>`` holds after
``T y = x;`` for a double ``x`` that is a dyadic rational. It mirrors ``qfx.fixed.kernels.requantize``:

* ``y = x * 2**F`` (F = W - I; a power-of-two scaling is exact in double), ``q = floor(y)``, ``r = y - q``
  (the fractional part of a double is itself a double, so exact), then the rounding increment from comparisons of
  ``r`` with 0.5, the sign of ``y`` and the parity of ``q`` — the same truth table as the integer kernel.
* WRAP: ``c mod 2**W`` as ``frac(c * 2**-W) * 2**W`` (floor-based, exact), then the signed fold.
  SAT: Min/Max with the code limits. SAT_ZERO: Where(in range, c, 0). SAT_SYM: the range is ``[-max_code, max_code]``
  for signed formats wider than one bit (``min_code`` itself becomes ``-max_code``, as ap_fixed does), else SAT.
* Powers of two are built from the exponent's bits as a product of exact table entries (``2**(2**k)``), never
  with ``Pow``, so no libm rounding is involved.

Every op used has a float64 CPU kernel in stock onnxruntime (checked by the tests): Mul, Sub, Add, Floor, Greater,
Less, Equal (also on strings), GreaterOrEqual, LessOrEqual, And, Or, Not, Where, Min, Max, Cast, Abs, Neg,
BitwiseAnd (int64), ReduceProd, Constant.
"""
from __future__ import annotations

import functools

import numpy as np
from onnx import FunctionProto, NodeProto, TensorProto, helper, numpy_helper

__all__ = ["DOMAIN", "FUNCTION_NAME", "FUNCTION_VERSION", "fixedquant_function", "fixedquant_node", "fmt_attrs",
           "OPSET", "IR_VERSION_ONNX"]

DOMAIN = "qfx"
FUNCTION_NAME = "FixedQuant"
FUNCTION_VERSION = 1
OPSET = 21
IR_VERSION_ONNX = 10


class _B:
    """Tiny node builder with unique local names."""

    def __init__(self) -> None:
        self.nodes: list[NodeProto] = []
        self.k = 0

    def __call__(self, op: str, *inputs: str, **attrs) -> str:
        self.k += 1
        out = f"v{self.k}_{op.lower()}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=None) -> str:
        arr = np.array(value, dtype=dtype)
        return self("Constant", value=numpy_helper.from_array(arr))

    def ref(self, kind: str, attr: str) -> str:
        self.k += 1
        out = f"v{self.k}_{attr}"
        n = helper.make_node("Constant", [], [out])
        a = n.attribute.add()
        a.name = kind
        a.ref_attr_name = attr
        a.type = {"value_int": helper.AttributeProto.INT, "value_string": helper.AttributeProto.STRING}[kind]
        self.nodes.append(n)
        return out


_BITS = 11  # exponents |e| < 2**11 = 2048; formats keep |e| <= 1100


def _pow2(b: _B, e: str, pos: str, neg: str, masks: str, one: str, zero_i: str) -> str:
    """Exact 2**e (double) for an int64 scalar e, as a product of selected table entries 2**(+-2**k)."""
    a = b("Abs", e)
    bits = b("BitwiseAnd", a, masks)
    sel = b("Greater", bits, zero_i)
    table = b("Where", b("Less", e, zero_i), neg, pos)
    factors = b("Where", sel, table, one)
    return b("ReduceProd", factors, keepdims=0)


def fixedquant_function() -> FunctionProto:
    """The FunctionProto every exported model carries (domain ``qfx``, name ``FixedQuant``)."""
    b = _B()
    W = b.ref("value_int", "width")
    I = b.ref("value_int", "int_bits")
    S = b.ref("value_int", "signed")
    R = b.ref("value_string", "rounding")
    O = b.ref("value_string", "overflow")
    # exact powers of two: a product of table entries; each partial product is a power of two in range
    pos_tab = np.array([np.ldexp(1.0, 1 << k) if (1 << k) < 1024 else np.inf for k in range(_BITS)])
    neg_tab = np.array([np.ldexp(1.0, -(1 << k)) for k in range(_BITS)])
    pos = b.const(pos_tab, np.float64)
    neg = b.const(neg_tab, np.float64)
    masks = b.const([1 << k for k in range(_BITS)], np.int64)
    one = b.const(1.0, np.float64)
    zero = b.const(0.0, np.float64)
    half = b.const(0.5, np.float64)
    zero_i = b.const(0, np.int64)
    one_i = b.const(1, np.int64)

    def pow2(e: str) -> str:
        return _pow2(b, e, pos, neg, masks, one, zero_i)

    F = b("Sub", W, I)
    scale = pow2(F)
    inv = pow2(b("Neg", F))
    two_w = pow2(W)
    inv_two_w = pow2(b("Neg", W))
    half_w = pow2(b("Sub", W, one_i))
    sb = b("Cast", S, to=TensorProto.BOOL)
    lo = b("Where", sb, b("Neg", half_w), zero)
    hi = b("Where", sb, b("Sub", half_w, one), b("Sub", two_w, one))

    # ---- rounding
    x = "x"
    y = b("Mul", x, scale)
    q = b("Floor", y)
    r = b("Sub", y, q)
    gt = b("Greater", r, half)
    eq = b("Equal", r, half)
    nz = b("Greater", r, zero)
    ng = b("Less", y, zero)
    hq = b("Mul", q, half)
    odd = b("Not", b("Equal", b("Floor", hq), hq))

    def as_d(t: str) -> str:
        return b("Cast", t, to=TensorProto.DOUBLE)

    inc_by_mode = [
        ("TRN_ZERO", b("And", nz, ng)),
        ("RND", b("Or", gt, eq)),
        ("RND_ZERO", b("Or", gt, b("And", eq, ng))),
        ("RND_MIN_INF", gt),
        ("RND_INF", b("Or", gt, b("And", eq, b("Not", ng)))),
        ("RND_CONV", b("Or", gt, b("And", eq, odd))),
    ]
    inc = zero  # TRN
    for mode, cond in inc_by_mode:
        inc = b("Where", b("Equal", R, b.const(mode, object)), as_d(cond), inc)
    c = b("Add", q, inc)

    # ---- overflow
    inr = b("And", b("GreaterOrEqual", c, lo), b("LessOrEqual", c, hi))
    u = b("Mul", c, inv_two_w)
    m = b("Mul", b("Sub", u, b("Floor", u)), two_w)  # c mod 2**W, exact
    wrapped = b("Where", b("And", sb, b("GreaterOrEqual", m, half_w)), b("Sub", m, two_w), m)
    wrap = b("Where", inr, c, wrapped)
    sat = b("Min", b("Max", c, lo), hi)
    satz = b("Where", inr, c, zero)
    if sat_sym_is_symmetric():
        # symmetric range [-max, max] for signed W > 1 (the most negative code itself maps to -max); else SAT
        sym = b("And", sb, b("Greater", W, one_i))
        lo_sym = b("Where", sym, b("Add", lo, one), lo)
        satsym = b("Min", b("Max", c, lo_sym), hi)
    else:  # kernels where min_code stays and only out-of-range negatives go to min_code + 1
        lo_sym = b("Where", sb, b("Add", lo, one), lo)
        satsym = b("Where", b("Less", c, lo), lo_sym, b("Min", c, hi))
    res = satsym
    for mode, t in (("SAT_ZERO", satz), ("SAT", sat), ("WRAP", wrap)):
        res = b("Where", b("Equal", O, b.const(mode, object)), t, res)
    b.nodes.append(helper.make_node("Mul", [res, inv], ["y"]))
    return helper.make_function(
        DOMAIN, FUNCTION_NAME, ["x"], ["y"], b.nodes,
        [helper.make_opsetid("", OPSET)],
        attributes=["width", "int_bits", "signed", "rounding", "overflow"],
        doc_string="ap_fixed<width,int_bits,rounding,overflow> cast of exact float64 values (qfx)",
    )


@functools.lru_cache(maxsize=None)
def sat_sym_is_symmetric() -> bool:
    """Whether the kernel's SAT_SYM maps ``min_code`` itself to ``-max_code`` (asked of the kernel, not assumed)."""
    from qfx.fixed.format import FxFormat
    from qfx.fixed.kernels import cast

    return int(cast(np.array([-8], dtype=np.int64), FxFormat(8, 8), FxFormat(4, 4, overflow="SAT_SYM"))[0]) == -7


def fmt_attrs(fmt) -> dict:
    return {"width": fmt.width, "int_bits": fmt.int_bits, "signed": int(fmt.signed), "rounding": fmt.rounding,
            "overflow": fmt.overflow}


def fixedquant_node(inp: str, out: str, fmt, name: str) -> NodeProto:
    return helper.make_node(FUNCTION_NAME, [inp], [out], name=name, domain=DOMAIN, doc_string=fmt.ap_type(),
                            **fmt_attrs(fmt))
