"""Per-op emitters of the Vitis HLS backend, one function per IR op, in the table ``HLS_EMITTERS``.

Why a table: adding an op means adding its ``OpDef`` (``qfx/ops/``), one emitter here and one ``call_<name>`` macro
in ``templates/hls/macros.j2``; nothing in ``qfx.backends.hls`` switches on op type, and an op without an emitter
fails loudly (``qfx.ops.emitter_for``) instead of falling back to some default.

An emitter gets the backend context, the node and the layer fields every op has (names of the function, the input
and output arrays and types, the config struct, the reuse factor) and returns the op's own fields:

- ``call``: the name ``K`` of the ``call_K`` macro in ``macros.j2`` that renders the layer's C++ call;
- ``config``: the fields ``(kind, key, value)`` of the layer's config struct in ``parameters.h`` (kind ``type``,
  ``uint`` or ``int``), omitted when the kernel needs none;
- ``headers``: the support headers the call needs, when they differ from the op's ``OpDef.hls_header``;
- anything the call macro reads (constant array names, scalar names, flags).

Emitters declare types, constant arrays and scalars through the context in the order they appear in the generated
files.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from qfx.errors import BadInputError
from qfx.fixed import kernels as K
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import FxFormat
from qfx.fixed.ops import avgpool_format, scale_shift_format
from qfx.ir.graph import op_def
from qfx.ops import Categories, with_category

if TYPE_CHECKING:  # pragma: no cover
    from qfx.backends.hls import _Ctx
    from qfx.ir.graph import Graph, Node

__all__ = ["HLS_EMITTERS", "HlsEmitter", "exact_literal", "khot_term_format", "khot_table", "STREAM_WINDOW_PAD",
           "stream_form"]

#: (context, node, common layer fields) -> the op's own layer fields (see the module docstring)
HlsEmitter = Callable[["_Ctx", "Node", dict[str, Any]], dict[str, Any]]

#: support headers of K-hot layers (instead of the op's ``hls_header``): the shift-add kernels; a convolution adds
#: its window reader (qfx_conv2d.h) and the K-hot conv kernel
_KHOT_DENSE_HEADERS = ("qfx_khot.h",)
_KHOT_CONV_HEADERS = ("qfx_conv2d.h", "qfx_khot.h", "qfx_khot_conv2d.h")


# ------------------------------------------------------------------------------------------------ exact literals
def exact_literal(code: int, fmt: FxFormat) -> str:
    """C++ expression whose value is exactly ``code * 2**-fmt.frac_bits``, convertible to ``fmt``'s type exactly.

    Codes below 2**53 in magnitude become one exact decimal ``double`` literal (a dyadic rational has a finite
    decimal expansion, the compiler parses it to the exact double, and ap_fixed's double constructor is exact for
    representable values). Wider codes are split into 2**32-aligned parts, each a code of ``fmt`` (``hi`` may be
    ``min_code`` itself), summed exactly by ap_fixed. The parts are wrapped in ``fmt``'s width and binary point with
    TRN/WRAP modes: its own overflow mode would act on the conversion (AP_SAT_SYM turns ``min_code`` into
    ``-max_code``).
    """
    code = int(code)
    if abs(code) < (1 << 53):
        return _decimal(code, fmt.frac_bits)
    lo = code & 0xFFFFFFFF
    hi = code - lo
    t = fmt.with_modes("TRN", "WRAP").ap_type()
    return f"({t}({_decimal(hi, fmt.frac_bits)}) + {t}({_decimal(lo, fmt.frac_bits)}))"


def _decimal(code: int, frac_bits: int) -> str:
    if code == 0:
        return "0.0"
    sign = "-" if code < 0 else ""
    mag = abs(code)
    if frac_bits <= 0:
        return f"{sign}{mag << -frac_bits}.0"
    digits = str(mag * 5**frac_bits).rjust(frac_bits + 1, "0")
    whole, frac = digits[:-frac_bits], digits[-frac_bits:].rstrip("0") or "0"
    return f"{sign}{whole}.{frac}"


# ------------------------------------------------------------------------------------------------ K-hot
def khot_term_format(fx: FxFormat, fw: FxFormat, codes: np.ndarray) -> FxFormat:
    """Signed type in which every partial sum of the shifted terms ``x * 2**(s - fw.frac)`` is exact.

    Fraction bits: those of ``x`` plus the right shifts a term may need; integer range: |x| times the sum of all
    CSD digit magnitudes of the largest-shift code (bounds every partial sum of any code's digits), and room for
    ``x`` itself, which is cast to this type before it is shifted right.
    """
    ff = fx.frac_bits + max(0, fw.frac_bits)
    xmax = max(-fx.min_code, fx.max_code)
    smax = max((s for c in np.unique(np.asarray(codes)).tolist() for _, s in csd_digits(int(c))), default=0)
    # codes in units of 2**-ff: x itself is xcode * 2**max(0, fw.frac) (it is cast to the term type before any
    # shift); a term is xcode * 2**(s + max(0, -fw.frac)); partial sums stay below 2**(smax+1) times that
    bound = xmax * max(((1 << (smax + 1)) - 1) << max(0, -fw.frac_bits), 1 << max(0, fw.frac_bits))
    return FxFormat.for_code_range(-bound, bound, ff, signed=True)


def khot_table(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Shift/sign table of K-hot weight codes for ``qfx_khot.h``: (table, slots per weight).

    Each weight code becomes ``k`` small integers (``k`` = the most CSD digits of any code, at least 1), its digits
    in ``csd_digits`` order: ``+(s + 1)`` / ``-(s + 1)`` for a digit ``+2**s`` / ``-2**s``, then 0 for unused slots.
    The kernel adds the input shifted by ``s - frac`` per digit, so the table is the weight, multiplier-free.
    """
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    uniq, inv = np.unique(flat, return_inverse=True)
    digits = [[sign * (s + 1) for sign, s in csd_digits(int(c))] for c in uniq.tolist()]
    k = max([1] + [len(d) for d in digits])
    rows = np.zeros((len(uniq), k), dtype=np.int64)
    for i, d in enumerate(digits):
        rows[i, :len(d)] = d
    return rows[inv.reshape(-1)].reshape(-1), k


# ------------------------------------------------------------------------------------------------ emitters
def _ceil_div(a: int, b: int) -> int:
    return max(1, -(-a // b))


_Fields = list[tuple[str, str, Any]]


def _linear(ctx: "_Ctx", n: "Node", L: dict[str, Any], dims: _Fields, khot_dims: _Fields, call: str,
            khot_headers: tuple[str, ...]) -> dict[str, Any]:
    """Shared part of dense and conv2d: accumulator, weight/bias types and constants; for a K-hot layer the
    shift/sign table instead of the weight codes, the ``khot_<call>`` kernel and its headers."""
    N = ctx.names
    fx = ctx.graph.tensor(n.inputs[0]).fmt
    w, b = n.consts["weight"], n.consts.get("bias")
    assert n.acc_fmt is not None
    acc_t = ctx.typedef(N("acc", n.name), n.acc_fmt, f"accumulator of {L['note']}")
    wt = ctx.const_typedef(N("wt", n.name), w.fmt, "weights")
    bt = ctx.const_typedef(N("bt", n.name), b.fmt if b is not None else FxFormat(2, 1), "bias" if b is not None
                           else "bias (unused: layer has none)")
    F: dict[str, Any] = {"acc_t": acc_t, "has_bias": b is not None, "bias_t": bt, "call": call}
    F["bias"] = ctx.array(N("b", n.name), bt, b.codes, b.fmt, f"bias of {L['note']}") if b is not None else ""
    cfg: list[tuple[str, str, Any]] = [("type", "weight_t", wt), ("type", "bias_t", bt), ("type", "accum_t", acc_t)]
    wc = w.codes.reshape(w.codes.shape[0], -1)
    if int(op_def(n.op).attr(n, "khot") or 0) > 0:
        tf = khot_term_format(fx, w.fmt, wc)
        term_t = ctx.typedef(N("term", n.name), tf, "exact partial sums of shift-add terms")
        tab, k = khot_table(wc)
        F["weights"] = ctx.table(N("w", n.name), tab, f"K-hot weights of {L['note']}, shape "
                                 f"{tuple(w.codes.shape)} x {k}: digits of {wt} codes, +-(s+1) = +-2^s, 0 = none")
        F["call"] = "khot_" + call
        F["headers"] = khot_headers
        cfg += [("type", "term_t", term_t)] + dims + khot_dims
        cfg += [("uint", "k_terms", k), ("int", "w_frac", w.fmt.frac_bits), ("uint", "reuse_factor", L["reuse"])]
    else:
        F["weights"] = ctx.array(N("w", n.name), wt, w.codes, w.fmt, f"weights of {L['note']}, shape "
                                 f"{tuple(w.codes.shape)}")
        cfg += dims + [("uint", "reuse_factor", L["reuse"]),
                       ("uint", "multiplier_limit", _ceil_div(wc.size, L["reuse"]))]
    F["config"] = cfg
    return F


def emit_dense(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::dense`` (weights as codes, multiply-accumulate) or ``qfx::khot_dense`` (shift-add table)."""
    g = ctx.graph
    dims = [("uint", "n_in", g.tensor(n.inputs[0]).size), ("uint", "n_out", g.tensor(n.output).size)]
    return _linear(ctx, n, L, dims, [], "dense", _KHOT_DENSE_HEADERS)


def emit_conv2d(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::conv2d`` or ``qfx::khot_conv2d`` over CHW tensors, weights (O, C, kh, kw)."""
    g = ctx.graph
    c, h, wd = g.tensor(n.inputs[0]).shape
    out = g.tensor(n.output)
    o, _, kh, kw = n.consts["weight"].codes.shape
    d = op_def(n.op)
    sh, sw = d.attr(n, "stride")
    ph, pw = d.attr(n, "padding")
    dims = [("uint", "n_chan", c), ("uint", "in_h", h), ("uint", "in_w", wd), ("uint", "n_filt", o),
            ("uint", "out_h", out.shape[1]), ("uint", "out_w", out.shape[2]), ("uint", "k_h", kh),
            ("uint", "k_w", kw), ("uint", "stride_h", sh), ("uint", "stride_w", sw), ("uint", "pad_h", ph),
            ("uint", "pad_w", pw)]
    return _linear(ctx, n, L, dims, [("uint", "n_win", c * kh * kw)], "conv2d", _KHOT_CONV_HEADERS)


def emit_scale_shift(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::scale_shift``: per-channel x * scale + shift in its exact format, one cast."""
    N = ctx.names
    x = ctx.graph.tensor(n.inputs[0])
    s, h = n.consts["scale"], n.consts["shift"]
    exact = scale_shift_format(x.fmt, s.fmt, h.fmt)
    acc = n.acc_fmt if n.acc_fmt is not None and n.acc_fmt.contains(exact) else exact
    acc_t = ctx.typedef(N("acc", n.name), acc, f"x*scale+shift of {L['note']}")
    st = ctx.const_typedef(N("scalet", n.name), s.fmt, "scale")
    ht = ctx.const_typedef(N("shiftt", n.name), h.fmt, "shift")
    F = {"call": "scale_shift",
         "scale": ctx.array(N("scale", n.name), st, s.codes, s.fmt, f"scale of {L['note']}"),
         "shift": ctx.array(N("shift", n.name), ht, h.codes, h.fmt, f"shift of {L['note']}")}
    c = x.shape[0]
    F["config"] = [("type", "scale_t", st), ("type", "shift_t", ht), ("type", "accum_t", acc_t),
                   ("uint", "n_chan", c), ("uint", "n_inner", x.size // c), ("uint", "reuse_factor", L["reuse"]),
                   ("uint", "multiplier_limit", _ceil_div(x.size, L["reuse"]))]
    return F


def _window(ctx: "_Ctx", n: "Node") -> list[tuple[str, str, Any]]:
    g, d = ctx.graph, op_def(n.op)
    c, h, wd = g.tensor(n.inputs[0]).shape
    out = g.tensor(n.output)
    kh, kw = d.attr(n, "kernel")
    sh, sw = d.attr(n, "stride")
    ph, pw = d.attr(n, "padding")
    return [("uint", "n_chan", c), ("uint", "in_h", h), ("uint", "in_w", wd), ("uint", "out_h", out.shape[1]),
            ("uint", "out_w", out.shape[2]), ("uint", "k_h", kh), ("uint", "k_w", kw), ("uint", "stride_h", sh),
            ("uint", "stride_w", sw), ("uint", "pad_h", ph), ("uint", "pad_w", pw)]


def emit_maxpool2d(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::maxpool2d``: window maximum (padding ignored), one cast."""
    return {"call": "maxpool2d", "config": _window(ctx, n)}


def emit_avgpool2d(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::avgpool2d``: exact window sum times the reciprocal constant, one cast."""
    N = ctx.names
    cfg = _window(ctx, n)
    kh, kw = op_def(n.op).attr(n, "kernel")
    r = n.consts["recip"]
    fx = ctx.graph.tensor(n.inputs[0]).fmt
    sum_f = FxFormat.for_code_range(fx.min_code * kh * kw, fx.max_code * kh * kw, fx.frac_bits)
    st = ctx.typedef(N("sum", n.name), sum_f, "exact window sum")
    rt = ctx.const_typedef(N("recipt", n.name), r.fmt, "reciprocal of the window size")
    ctx.typedef(N("acc", n.name), avgpool_format(fx, r.fmt, kh * kw), "exact sum * recip (reference)")
    recip = N("recip", n.name)
    ctx.scalars.append({"name": recip, "ctype": rt, "value": exact_literal(int(r.codes.reshape(-1)[0]), r.fmt)})
    return {"call": "avgpool2d", "recip": recip, "config": cfg + [("type", "sum_t", st), ("type", "recip_t", rt)]}


def emit_clip(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::clip`` with bounds as scalars of the input's width and binary point."""
    N = ctx.names
    fx = ctx.graph.tensor(n.inputs[0]).fmt
    d = op_def(n.op)
    bound_t = ctx.const_typedef(N("bound", n.name), fx, "clip bounds (input format, no conversion modes)")
    for key in ("lo", "hi"):
        code = int(d.attr(n, key))
        if not fx.min_code <= code <= fx.max_code:
            raise BadInputError(f"clip node {n.name!r}: bound {code} is not a code of {fx.ap_type()}")
        ctx.scalars.append({"name": N(key, n.name), "ctype": bound_t, "value": exact_literal(code, fx)})
    return {"call": "clip", "bound_t": bound_t, "lo": N("lo", n.name), "hi": N("hi", n.name)}


def emit_relu(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::relu``."""
    return {"call": "relu"}


def emit_add(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::add``: the exact ap_fixed sum of two same-size tensors, one cast."""
    a, b = L["in_sizes"]
    if a != b:
        raise BadInputError(f"add node {n.name!r}: operands have {a} and {b} elements")
    return {"call": "add"}


def _same_size_operands(n: "Node", L: dict[str, Any]) -> None:
    a, b = L["in_sizes"]
    if a != b:
        raise BadInputError(f"{n.op.value} node {n.name!r}: operands have {a} and {b} elements")


def emit_sub(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::sub``: the exact ap_fixed difference (its minus type), one conversion."""
    _same_size_operands(n, L)
    return {"call": "sub"}


def emit_mul(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::mul``: the exact ap_fixed product of two variables (its mult type), one conversion."""
    _same_size_operands(n, L)
    return {"call": "mul"}


def emit_matmul(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::matmul``: per output element an exact sum of ap_fixed products in the lossless accumulator
    (``qfx.ops.matmul.matmul_acc_format``), one conversion. Leading dims fold into one batch loop."""
    from qfx.ops.matmul import matmul_acc_format

    g = ctx.graph
    a, b = (g.tensor(t) for t in n.inputs)
    m, k = a.shape[-2:]
    nn = b.shape[-1]
    batch = int(np.prod(a.shape[:-2], dtype=np.int64))
    acc_t = ctx.typedef(ctx.names("acc", n.name), matmul_acc_format(a.fmt, b.fmt, k), f"exact sum of {L['note']}")
    return {"call": "matmul", "config": [("type", "accum_t", acc_t), ("uint", "n_batch", batch), ("uint", "n_m", m),
                                         ("uint", "n_k", k), ("uint", "n_n", nn)]}


def emit_gather(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::gather`` for every ``Categories.GATHER`` op: its ``OpDef.gather_map`` as a constant index table into
    the concatenated inputs (each converted to the output type), ``-1`` (a zero code) becoming the index of the zero
    the kernel appends. Why one kernel: a new element-moving op then needs only its map."""
    n_cat = sum(L["in_sizes"])
    m = np.asarray(op_def(n.op).gather_map(ctx.graph, n), dtype=np.int64).reshape(-1)
    if m.size != L["out_size"] or (m.size and (int(m.min()) < -1 or int(m.max()) >= n_cat)):
        raise BadInputError(f"{n.op.value} node {n.name!r}: index map does not fit {L['out_size']} output and "
                            f"{n_cat} input elements")
    table = ctx.table(ctx.names("w", n.name), np.where(m < 0, n_cat, m),
                      f"index map of {L['note']}: per output element, its element of the concatenated inputs "
                      f"({n_cat} = the zero code)")
    return {"call": "gather", "map": table, "config": [("uint", "n_out", L["out_size"]), ("uint", "n_cat", n_cat)]}


def emit_lut(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::lut``: a ROM of output codes addressed by the input code. The IR table goes through the node's one
    cast (``qfx.fixed.kernels.cast`` into the output format) here, so the hardware is a lookup and nothing else."""
    g = ctx.graph
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    t = n.consts["table"]
    n_table = fx.max_code - fx.min_code + 1
    if t.codes.size != n_table:
        raise BadInputError(f"lut node {n.name!r}: table has {t.codes.size} entries, input format {fx.ap_type()} "
                            f"has {n_table} codes")
    rom = K.cast(t.codes.reshape(-1), t.fmt, of)
    fn = op_def(n.op).attr(n, "fn") or "table"
    table = ctx.array(ctx.names("w", n.name), L["out_type"], rom, of,
                      f"ROM of {L['note']} ({fn}): output code per input code from {fx.min_code} up")
    return {"call": "lut", "table": table,
            "config": [("uint", "n_elem", L["out_size"]), ("uint", "n_table", n_table),
                       ("uint", "index_flip", (1 << (fx.width - 1)) if fx.signed else 0)]}


def emit_softmax(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::softmax``: per row (the last axis), max, exp ROM addressed by the code distance, exact sum,
    reciprocal ROM addressed by the sum's code shifted right, exact product, one conversion. Both ROMs hold the IR's
    table codes unchanged (their types carry the tables' formats), so the kernel computes the golden function's
    integers. ``n_elem`` is the row length, ``n_rows`` the number of rows (1 for a vector)."""
    from qfx.ops.softmax import softmax_row, sum_format

    g, N = ctx.graph, ctx.names
    fx = g.tensor(n.inputs[0]).fmt
    et, rt = n.consts["exp_table"], n.consts["recip_table"]
    shift = int(op_def(n.op).attr(n, "shift"))
    n_elem = softmax_row(g, n)
    n_rows = L["out_size"] // n_elem if n_elem else 0
    if et.codes.size != 1 << fx.width or (n_elem * int(et.codes.max()) >> shift) >= rt.codes.size:
        raise BadInputError(f"softmax node {n.name!r}: tables do not fit input format {fx.ap_type()} and "
                            f"{n_elem} elements (exp {et.codes.size}, recip {rt.codes.size} entries, shift {shift})")
    exp_t = ctx.const_typedef(N("wt", n.name), et.fmt, "exp table codes")
    recip_t = ctx.const_typedef(N("recipt", n.name), rt.fmt, "reciprocal table codes")
    sum_t = ctx.typedef(N("sum", n.name), sum_format(n_elem, et.fmt.with_modes("TRN", "WRAP")), "exact exp sum")
    ctx.typedef(N("acc", n.name), FxFormat.for_code_range(0, int(et.fmt.max_code) * int(rt.fmt.max_code),
                                                          et.fmt.frac_bits + rt.fmt.frac_bits, signed=False),
                "exact exp * recip (reference)")
    etab = ctx.array(N("w", n.name), exp_t, et.codes, et.fmt,
                     f"exp ROM of {L['note']}: exp(-d) per input code distance d from 0 up")
    rtab = ctx.array(N("recip", n.name), recip_t, rt.codes, rt.fmt,
                     f"reciprocal ROM of {L['note']}: 1/sum per (sum code >> {shift})")
    return {"call": "softmax", "exp_table": etab, "recip_table": rtab,
            "config": [("type", "exp_t", exp_t), ("type", "recip_t", recip_t), ("type", "sum_t", sum_t),
                       ("uint", "n_elem", n_elem), ("uint", "n_rows", n_rows), ("uint", "n_exp", et.codes.size),
                       ("uint", "n_recip", rt.codes.size), ("uint", "shift", shift),
                       ("uint", "index_flip", (1 << (fx.width - 1)) if fx.signed else 0)]}


def emit_cast(ctx: "_Ctx", n: "Node", L: dict[str, Any]) -> dict[str, Any]:
    """``qfx::cast``: ops that only move or requantize elements (C order is kept, so the array is unchanged)."""
    if L["in_sizes"][0] != L["out_size"]:
        raise BadInputError(f"node {n.name!r} changes the element count ({L['in_sizes'][0]} -> {L['out_size']})")
    return {"call": "cast"}


HLS_EMITTERS: dict[str, HlsEmitter] = {
    "dense": emit_dense,
    "conv2d": emit_conv2d,
    "scale_shift": emit_scale_shift,
    "maxpool2d": emit_maxpool2d,
    "avgpool2d": emit_avgpool2d,
    "clip": emit_clip,
    "relu": emit_relu,
    "add": emit_add,
    "sub": emit_sub,
    "mul": emit_mul,
    "matmul": emit_matmul,
    "lut": emit_lut,
    "softmax": emit_softmax,
    "quant": emit_cast,
    "flatten": emit_cast,
    "reshape": emit_cast,
    **{name: emit_gather for name in with_category(Categories.GATHER)},
}


# ------------------------------------------------------------------------------------------------ io=stream forms
#: io=stream: ops that run as a sliding window over a pixel stream (``hls/qfx_window_stream.h``), and what a padded
#: window position holds: ``zero`` (convolution, average pooling count it as zero) or ``edge`` (max pooling ignores
#: padding; repeating a frame position of the same window leaves the maximum unchanged). The window's own kernel is
#: the op's io_parallel kernel on a one-output-pixel configuration.
STREAM_WINDOW_PAD: dict[str, str] = {"conv2d": "zero", "avgpool2d": "zero", "maxpool2d": "edge"}


def stream_form(graph: "Graph", n: "Node") -> str:
    """How node ``n`` runs in io=stream: ``window`` (line buffers, one output pixel per window), ``pixel`` (an
    element-wise or binary op on equal shapes: its kernel on each pixel's channel vector) or ``tensor`` (any other
    op: its io_parallel kernel on the gathered tensor, converted back to pixels at the boundary)."""
    d = op_def(n.op)
    shapes = {tuple(graph.tensor(t).shape) for t in n.inputs} | {tuple(graph.tensor(n.output).shape)}
    if n.op.value in STREAM_WINDOW_PAD and len(graph.tensor(n.inputs[0]).shape) == 3:
        return "window"
    if (d.is_(Categories.ELEMENTWISE) or d.is_(Categories.BINARY)) and len(shapes) == 1:
        return "pixel"
    return "tensor"
