"""IR -> ONNX with real-valued (float64) tensors whose every value is exact; stock onnxruntime runs it bit-exactly.

Each IR node becomes standard ops on exact doubles followed by ``qfx.FixedQuant`` (the output format's cast).
Constants are initializers holding their exact values (codes times the LSB), each passed through ``FixedQuant`` of
its storage format (width/int_bits/signed with TRN/WRAP: the identity on codes) so the file states every format.
The graph input is a real tensor quantized by ``FixedQuant`` of the input format (SAT_SYM read as SAT so that every
code passes unchanged, see ``input_cast_format``).

Exactness: a double holds any dyadic rational ``m * 2**e`` with ``|m| < 2**53`` and ``e`` in range. Export checks,
per node, that every exact intermediate (products, partial sums in any order, scale/shift, window sums) has a code
bound below ``2**53`` and an exponent window inside the double range; otherwise it raises ``FormatError``. Sums are
then exact whatever order MatMul/Gemm/ReduceSum use, because any partial sum is bounded by the sum of magnitudes.

onnxruntime's CPU provider has no float64 Conv or AveragePool, so conv2d and avgpool2d are lowered exactly to
Pad + Gather (im2col with constant indices) + MatMul / ReduceSum, which all have float64 kernels.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qfx import __version__
from qfx.errors import BadInputError, FormatError, UnsupportedError
from qfx.outdir import atomic_output_file
from qfx.fixed.format import FxFormat
from qfx.fixed.ops import avgpool_format, scale_shift_format
from qfx.ir.names import UniqueNames
from qfx.ir.graph import IR_VERSION, Graph, Node, op_def
from qfx.ir.passes import acc_is_lossless
from qfx.onnx.fixedquant import DOMAIN, IR_VERSION_ONNX, OPSET, fixedquant_function, fixedquant_node
from qfx.ops import Categories, emitter_for, with_category

__all__ = ["export_onnx", "to_onnx_model", "check_exact_in_double", "input_cast_format", "GRAPH_OPS", "META_NODES",
           "META_GRAPH", "LOWERINGS", "EXACTNESS"]

#: standard ops exported graphs use (outside the FixedQuant body); each has a float64 CPU kernel in onnxruntime
#: (checked by tests/test_onnx_roundtrip.py). Conv and AveragePool have none, hence the im2col lowering.
GRAPH_OPS = frozenset({"Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "Pad", "Reshape", "Gather",
                       "Transpose", "ReduceSum", "Flatten", "Sub", "Concat", "Cast", "ReduceMax", "Floor"})
META_NODES = "qfx.nodes"
META_GRAPH = "qfx.graph"
MAX_MANTISSA = 53
_EXP_LIMIT = 1000  # keep every value, LSB and scaling factor well inside the double exponent range


# ------------------------------------------------------------------------------------------------ exactness
def _check_code_bound(bound: int, frac: int, what: str, n: Node) -> None:
    if bound >= (1 << MAX_MANTISSA):
        raise FormatError(f"node {n.name!r}: {what} needs {bound.bit_length()} significant bits, more than the "
                          f"{MAX_MANTISSA} a float64 holds exactly; ONNX export cannot be exact")
    if abs(frac) > _EXP_LIMIT or bound.bit_length() - frac > _EXP_LIMIT:
        raise FormatError(f"node {n.name!r}: {what} lies outside the float64 exponent range")


def _check_fmt(f: FxFormat, what: str, n: Node | None = None) -> None:
    where = f"node {n.name!r}: " if n else ""
    if f.width > MAX_MANTISSA:
        raise FormatError(f"{where}{what} format {f.ap_type()} is wider than {MAX_MANTISSA} bits; "
                          f"float64 ONNX export cannot hold its codes exactly")


def _check_cast(src_frac: int, src_bits: int, dst: FxFormat, n: Node) -> None:
    """FixedQuant scales by 2**F_dst: keep the scaled value and the LSB inside the exponent range."""
    f = dst.frac_bits
    if src_bits - src_frac + f > _EXP_LIMIT or -src_frac + f < -_EXP_LIMIT or abs(f) > _EXP_LIMIT:
        raise FormatError(f"node {n.name!r}: cast to {dst.ap_type()} leaves the float64 exponent range")


def _fmt_bound(f: FxFormat) -> int:
    return max(abs(f.min_code), abs(f.max_code))


def _linear_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """dense/conv2d: the exact dot product plus bias, in any summation order."""
    if not acc_is_lossless(graph, n):
        raise UnsupportedError(f"node {n.name!r}: accumulator {n.acc_fmt} can overflow or drop bits; run the "
                               f"size_accumulators pass (ONNX export needs a lossless accumulator)")
    w, b = n.consts["weight"], n.consts.get("bias")
    pf = fx.frac_bits + w.fmt.frac_bits
    f = max(pf, b.fmt.frac_bits) if b else pf
    row = int(np.abs(w.codes.reshape(w.codes.shape[0], -1)).astype(object).sum(axis=1).max())
    bound = (row * _fmt_bound(fx)) << (f - pf)
    if b:
        bound += int(np.abs(b.codes).max(initial=0)) << (f - b.fmt.frac_bits)
    _check_code_bound(bound, f, "the exact dot product (any summation order)", n)
    return f, bound


def _scale_shift_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    s, h = n.consts["scale"], n.consts["shift"]
    pf = fx.mul_format(s.fmt)
    _check_code_bound(_fmt_bound(pf), pf.frac_bits, "x * scale", n)
    sf = scale_shift_format(fx, s.fmt, h.fmt)
    _check_code_bound(_fmt_bound(sf), sf.frac_bits, "x * scale + shift", n)
    return sf.frac_bits, _fmt_bound(sf)


def _add_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    sf = fx.add_format(graph.tensor(n.inputs[1]).fmt)
    _check_code_bound(_fmt_bound(sf), sf.frac_bits, "a + b", n)
    return sf.frac_bits, _fmt_bound(sf)


def _avgpool_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    k = tuple(n.attr("kernel"))
    win = int(k[0]) * int(k[1])
    _check_code_bound(_fmt_bound(fx) * win, fx.frac_bits, "the window sum", n)
    af = avgpool_format(fx, n.consts["recip"].fmt, win)
    _check_code_bound(_fmt_bound(af), af.frac_bits, "window sum * recip", n)
    return af.frac_bits, _fmt_bound(af)


def _input_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """Ops whose exact result is an input value (max, relu, clip, reshape, requantize)."""
    return fx.frac_bits, _fmt_bound(fx)


def _sub_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    sf = fx.sub_format(graph.tensor(n.inputs[1]).fmt)
    _check_code_bound(_fmt_bound(sf), sf.frac_bits, "a - b", n)
    return sf.frac_bits, _fmt_bound(sf)


def _mul_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    pf = fx.mul_format(graph.tensor(n.inputs[1]).fmt)
    _check_code_bound(_fmt_bound(pf), pf.frac_bits, "a * b", n)
    return pf.frac_bits, _fmt_bound(pf)


def _matmul_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """matmul: every partial sum of K products lies in the lossless accumulator's range (any summation order)."""
    from qfx.ops.matmul import matmul_acc_format

    a, b = (graph.tensor(t) for t in n.inputs)
    acc = matmul_acc_format(a.fmt, b.fmt, int(a.shape[-1]))
    _check_code_bound(_fmt_bound(acc), acc.frac_bits, "the exact matmul sum (any summation order)", n)
    return acc.frac_bits, _fmt_bound(acc)


def _gather_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """Ops that only move elements: the value cast is an element of any input (or zero)."""
    fmts = [graph.tensor(t).fmt for t in n.inputs]
    f = max(x.frac_bits for x in fmts)
    return f, max(_fmt_bound(x) << (f - x.frac_bits) for x in fmts)


def _lut_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """The value cast is a table entry; the ROM address is the input code (exact: inputs have at most 53 bits)."""
    t = n.consts["table"].fmt
    return t.frac_bits, _fmt_bound(t)


def _softmax_bound(graph: Graph, n: Node, fx: FxFormat) -> tuple[int, int]:
    """softmax: the exp sum (its code, scaled by 2**(F_e - shift), floors to the recip index) and the product
    e * r are exact; the distance and both indexes are small integers (the input has at most 12 bits)."""
    from qfx.ops.softmax import softmax_row, sum_format

    et, rt = n.consts["exp_table"].fmt, n.consts["recip_table"].fmt
    _check_code_bound(_fmt_bound(sum_format(softmax_row(graph, n), et)), et.frac_bits, "the exp sum", n)
    shift = int(op_def(n.op).attr(n, "shift"))
    if abs(et.frac_bits - shift) > _EXP_LIMIT:
        raise FormatError(f"node {n.name!r}: the recip index scaling lies outside the float64 exponent range")
    bound = int(et.max_code) * int(rt.max_code)
    _check_code_bound(bound, et.frac_bits + rt.frac_bits, "exp * recip", n)
    return et.frac_bits + rt.frac_bits, bound


#: per op: (graph, node, input format) -> (frac bits, code bound) of the exact value the output cast reads; raises
#: FormatError when an intermediate would not be exact in float64
EXACTNESS = {"dense": _linear_bound, "conv2d": _linear_bound, "scale_shift": _scale_shift_bound, "add": _add_bound,
             "avgpool2d": _avgpool_bound, "relu": _input_bound, "clip": _input_bound, "maxpool2d": _input_bound,
             "flatten": _input_bound, "reshape": _input_bound, "quant": _input_bound, "sub": _sub_bound,
             "mul": _mul_bound, "lut": _lut_bound, "softmax": _softmax_bound, "matmul": _matmul_bound,
             **{k: _gather_bound for k in with_category(Categories.GATHER)}}


def check_exact_in_double(graph: Graph) -> None:
    """Raise FormatError unless every value the exported model computes is exact in float64."""
    for t in graph.tensors.values():
        _check_fmt(t.fmt, f"tensor {t.name!r}")
    for n in graph.nodes:
        fx = graph.tensor(n.inputs[0]).fmt
        out = graph.tensor(n.output).fmt
        for k, c in n.consts.items():
            _check_fmt(c.fmt, f"constant {k!r}", n)
        src_frac, src_bound = emitter_for(EXACTNESS, n, "ONNX")(graph, n, fx)
        _check_cast(src_frac, src_bound.bit_length(), out, n)
        for c in n.consts.values():  # constants are cast from their own exact values
            _check_cast(c.fmt.frac_bits, _fmt_bound(c.fmt).bit_length(), c.fmt, n)
    for t in graph.inputs:
        f = graph.tensor(t).fmt
        if abs(f.frac_bits) > _EXP_LIMIT or f.int_bits > _EXP_LIMIT:
            raise FormatError(f"input {t!r} format {f.ap_type()} lies outside the float64 exponent range")


# ------------------------------------------------------------------------------------------------ emission
class _Emitter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.names = UniqueNames(set(graph.tensors))
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.val: dict[str, str] = {t: t for t in graph.tensors}

    def op(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.names(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def init(self, base: str, arr: np.ndarray) -> str:
        name = self.names(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def quant(self, inp: str, out: str, fmt: FxFormat, name: str) -> str:
        self.nodes.append(fixedquant_node(inp, out, fmt, self.names(name)))
        return out

    def const(self, n: Node, key: str) -> tuple[str, str]:
        """Initializer with the constant's exact values, then FixedQuant of its format; (init name, quantized)."""
        c = n.consts[key]
        iname = self.init(f"{n.name}.{key}", c.values())
        # constants are codes, never cast: their FixedQuant states the storage format with TRN/WRAP, which is the
        # identity on every code (SAT_SYM would move min_code); the full format is in the node metadata
        store = c.fmt.with_modes("TRN", "WRAP")
        return iname, self.quant(iname, self.names(f"{iname}.q"), store, f"{iname}.quant")

    def i64(self, base: str, values: list[int] | np.ndarray) -> str:
        return self.init(base, np.asarray(values, dtype=np.int64))

    # -------------------------------------------------------------- ops
    def emit(self, n: Node) -> dict[str, str]:
        """Lower ``n`` (its op's entry in ``LOWERINGS``), then cast to the output format; returns const inits."""
        consts: dict[str, str] = {}
        s = emitter_for(LOWERINGS, n, "ONNX")(self, n, self.val[n.inputs[0]], consts)
        self.quant(s, n.output, self.g.tensor(n.output).fmt, f"{n.name}/quant")
        return consts

    def _padded_flat(self, n: Node, x: str, keep_channels: bool) -> tuple[str, int, int]:
        c, h, w = self.g.tensor(n.inputs[0]).shape
        ph, pw = (int(v) for v in n.attr("padding", (0, 0)))
        if ph or pw:
            x = self.op("Pad", [x, self.i64(f"{n.name}.pads", [0, 0, ph, pw, 0, 0, ph, pw])], f"{n.name}/pad")
        hp, wp = h + 2 * ph, w + 2 * pw
        shape = [0, c, hp * wp] if keep_channels else [0, c * hp * wp]
        return self.op("Reshape", [x, self.i64(f"{n.name}.flat", shape)], f"{n.name}/flat"), hp, wp

    def _conv(self, n: Node, x: str, wq: str) -> str:
        """Exact conv as im2col: Gather with constant indices, then MatMul with the (K, O) weight matrix."""
        c = self.g.tensor(n.inputs[0]).shape[0]
        o, _, kh, kw = n.consts["weight"].codes.shape
        _, ho, wo = self.g.tensor(n.output).shape
        sh, sw = (int(v) for v in n.attr("stride", (1, 1)))
        flat, hp, wp = self._padded_flat(n, x, keep_channels=False)
        i, j, ch, a, b = np.meshgrid(np.arange(ho), np.arange(wo), np.arange(c), np.arange(kh), np.arange(kw),
                                     indexing="ij")
        idx = (ch * hp * wp + (i * sh + a) * wp + (j * sw + b)).reshape(ho * wo, c * kh * kw)
        cols = self.op("Gather", [flat, self.i64(f"{n.name}.im2col", idx)], f"{n.name}/im2col", axis=1)
        wm = self.op("Reshape", [wq, self.i64(f"{n.name}.wshape", [o, -1])], f"{n.name}/wmat")
        wm = self.op("Transpose", [wm], f"{n.name}/wmat_t", perm=[1, 0])
        return self.op("MatMul", [cols, wm], f"{n.name}/matmul")

    def _window_sum(self, n: Node, x: str) -> str:
        c, _, _ = self.g.tensor(n.inputs[0]).shape
        kh, kw = (int(v) for v in n.attr("kernel"))
        sh, sw = (int(v) for v in n.attr("stride", (kh, kw)))
        _, ho, wo = self.g.tensor(n.output).shape
        flat, hp, wp = self._padded_flat(n, x, keep_channels=True)
        i, j, a, b = np.meshgrid(np.arange(ho), np.arange(wo), np.arange(kh), np.arange(kw), indexing="ij")
        idx = ((i * sh + a) * wp + (j * sw + b)).reshape(ho * wo, kh * kw)
        win = self.op("Gather", [flat, self.i64(f"{n.name}.windows", idx)], f"{n.name}/windows", axis=2)
        s = self.op("ReduceSum", [win, self.i64(f"{n.name}.axes", [3])], f"{n.name}/sum", keepdims=0)
        return self.op("Reshape", [s, self.i64(f"{n.name}.out_shape", [0, c, ho, wo])], f"{n.name}/unflatten")


# ------------------------------------------------------------------------------------------------ lowerings
# Each lowering: (emitter, node, input value name, consts out-dict) -> name of the exact value before the output
# cast; it records the initializer of every constant it writes in ``consts`` (the node metadata lists them).

def _lower_dense(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    consts["weight"], w = em.const(n, "weight")
    ins = [x, w]
    if "bias" in n.consts:
        consts["bias"], bq = em.const(n, "bias")
        ins.append(bq)
    return em.op("Gemm", ins, f"{n.name}/gemm", transB=1)


def _lower_conv2d(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    p = n.name
    consts["weight"], w = em.const(n, "weight")
    s = em._conv(n, x, w)
    if "bias" in n.consts:
        consts["bias"], bq = em.const(n, "bias")
        s = em.op("Add", [s, bq], f"{p}/bias")
    o, ho, wo = em.g.tensor(n.output).shape
    s = em.op("Transpose", [s], f"{p}/nchw", perm=[0, 2, 1])
    return em.op("Reshape", [s, em.i64(f"{p}.out_shape", [0, o, ho, wo])], f"{p}/unflatten")


def _lower_scale_shift(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    p = n.name
    consts["scale"], sq = em.const(n, "scale")
    consts["shift"], hq = em.const(n, "shift")
    rank = len(em.g.tensor(n.inputs[0]).shape)
    bshape = em.i64(f"{p}.bshape", [-1] + [1] * (rank - 1))
    sq = em.op("Reshape", [sq, bshape], f"{p}/scale_b")
    hq = em.op("Reshape", [hq, bshape], f"{p}/shift_b")
    return em.op("Add", [em.op("Mul", [x, sq], f"{p}/mul"), hq], f"{p}/add")


def _lower_add(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Add", [x, em.val[n.inputs[1]]], f"{n.name}/add")


def _lower_relu(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Relu", [x], f"{n.name}/relu")


def _lower_clip(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    p = n.name
    f = em.g.tensor(n.inputs[0]).fmt
    lo = em.init(f"{p}.lo", np.array(f.from_int(int(n.attr("lo")))))
    hi = em.init(f"{p}.hi", np.array(f.from_int(int(n.attr("hi")))))
    return em.op("Clip", [x, lo, hi], f"{p}/clip")


def _lower_maxpool2d(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    k, st, pd = (list(n.attr(a, d)) for a, d in (("kernel", None), ("stride", n.attr("kernel")),
                                                  ("padding", (0, 0))))
    return em.op("MaxPool", [x], f"{n.name}/maxpool", kernel_shape=k, strides=st, pads=pd + pd)


def _lower_avgpool2d(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    p = n.name
    consts["recip"], rq = em.const(n, "recip")
    s = em._window_sum(n, x)
    return em.op("Mul", [s, em.op("Reshape", [rq, em.i64(f"{p}.scalar", [])], f"{p}/recip_s")], f"{p}/mul")


def _lower_flatten(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Flatten", [x], f"{n.name}/flatten", axis=1)


def _lower_reshape(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Reshape", [x, em.i64(f"{n.name}.shape", [0] + list(em.g.tensor(n.output).shape))],
                 f"{n.name}/reshape")


def _lower_quant(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return x  # the output cast is the whole op


def _lower_sub(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Sub", [x, em.val[n.inputs[1]]], f"{n.name}/sub")


def _lower_mul(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    return em.op("Mul", [x, em.val[n.inputs[1]]], f"{n.name}/mul")


def _lower_matmul(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    """Standard MatMul on the exact float64 values (batch first, then the leading dims): exact while every partial
    sum stays below 2**53 (``_matmul_bound``)."""
    return em.op("MatMul", [x, em.val[n.inputs[1]]], f"{n.name}/matmul")


def _lower_lut(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    """Table lookup: the input value scaled to its code, minus ``min_code``, as int64 indexes the table's values."""
    p = n.name
    f = em.g.tensor(n.inputs[0]).fmt
    consts["table"], tq = em.const(n, "table")
    codes = em.op("Mul", [x, em.init(f"{p}.to_code", np.array(np.ldexp(1.0, f.frac_bits)))], f"{p}/code")
    idx = em.op("Sub", [codes, em.init(f"{p}.min_code", np.array(float(f.min_code)))], f"{p}/index")
    idx = em.op("Cast", [idx], f"{p}/index_i64", to=TensorProto.INT64)
    return em.op("Gather", [tq, idx], f"{p}/lookup", axis=0)


def _lower_softmax(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    """Softmax over the last axis with the op's two tables: ReduceMax, the distance ``m - x`` scaled to its code as
    the int64 index of the exp values (Gather), exact ReduceSum, ``floor(s * 2**(F_e - shift))`` (the sum's code
    shifted right; a power of two scaling and Floor are exact in float64) as the int64 index of the reciprocal
    values, exact Mul. Both reductions keep dims over the last axis (axis 0 is the batch, so a vector's is 1)."""
    p = n.name
    f = em.g.tensor(n.inputs[0]).fmt
    ef = n.consts["exp_table"].fmt
    shift = int(op_def(n.op).attr(n, "shift"))
    consts["exp_table"], eq = em.const(n, "exp_table")
    consts["recip_table"], rq = em.const(n, "recip_table")
    axes = em.i64(f"{p}.axes", [max(1, len(em.g.tensor(n.inputs[0]).shape))])
    m = em.op("ReduceMax", [x, axes], f"{p}/max", keepdims=1)
    dist = em.op("Sub", [m, x], f"{p}/dist")
    idx = em.op("Mul", [dist, em.init(f"{p}.to_code", np.array(np.ldexp(1.0, f.frac_bits)))], f"{p}/dist_code")
    idx = em.op("Cast", [idx], f"{p}/dist_i64", to=TensorProto.INT64)
    e = em.op("Gather", [eq, idx], f"{p}/exp", axis=0)
    s = em.op("ReduceSum", [e, axes], f"{p}/sum", keepdims=1)
    k = em.op("Mul", [s, em.init(f"{p}.to_index", np.array(np.ldexp(1.0, ef.frac_bits - shift)))], f"{p}/scaled")
    k = em.op("Cast", [em.op("Floor", [k], f"{p}/shift")], f"{p}/recip_i64", to=TensorProto.INT64)
    r = em.op("Gather", [rq, k], f"{p}/recip", axis=0)
    return em.op("Mul", [e, r], f"{p}/mul")


def _lower_gather(em: _Emitter, n: Node, x: str, consts: dict[str, str]) -> str:
    """Any ``Categories.GATHER`` op by its ``gather_map``: the inputs flattened and concatenated (one zero appended
    when the map has zeros), one Gather with the constant indices, reshaped. The golden op casts every input to the
    output format before gathering; the output cast alone gives the same values, because a cast maps each real
    value independently of the format it came from and zero to zero, and gathering only moves values."""
    p = n.name
    flat_shape = em.i64(f"{p}.flat", [0, -1])
    flat = [em.op("Reshape", [em.val[t], flat_shape], f"{p}/flat") for t in n.inputs]
    cat = flat[0] if len(flat) == 1 else em.op("Concat", flat, f"{p}/concat", axis=1)
    m = np.asarray(op_def(n.op).gather_map(em.g, n), dtype=np.int64).reshape(-1)
    n_cat = sum(em.g.tensor(t).size for t in n.inputs)
    if (m < 0).any():
        cat = em.op("Pad", [cat, em.i64(f"{p}.zero_pad", [0, 0, 0, 1])], f"{p}/zero")
    y = em.op("Gather", [cat, em.i64(f"{p}.map", np.where(m < 0, n_cat, m))], f"{p}/gather", axis=1)
    return em.op("Reshape", [y, em.i64(f"{p}.out_shape", [0, *em.g.tensor(n.output).shape])], f"{p}/unflatten")


#: the ONNX lowering of each IR op (looked up with ``qfx.ops.emitter_for``); every lowering ends in the output cast
LOWERINGS = {"dense": _lower_dense, "conv2d": _lower_conv2d, "scale_shift": _lower_scale_shift, "add": _lower_add,
             "relu": _lower_relu, "clip": _lower_clip, "maxpool2d": _lower_maxpool2d, "avgpool2d": _lower_avgpool2d,
             "flatten": _lower_flatten, "reshape": _lower_reshape, "quant": _lower_quant, "sub": _lower_sub,
             "mul": _lower_mul, "lut": _lower_lut, "softmax": _lower_softmax, "matmul": _lower_matmul,
             **{k: _lower_gather for k in with_category(Categories.GATHER)}}


def input_cast_format(fmt: FxFormat) -> FxFormat:
    """The input's FixedQuant: the input format's own cast, except that SAT_SYM saturates like SAT.

    Every code of the input format then passes unchanged (SAT_SYM would turn ``min_code`` into ``-max_code``), so
    onnxruntime fed ``from_int(codes)`` computes exactly what the interpreter computes on ``codes``; real inputs
    are rounded with the format's rounding mode. The true input format is kept in the metadata.
    """
    return fmt.with_modes(overflow="SAT") if fmt.overflow == "SAT_SYM" else fmt


def _vi(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.DOUBLE, ["N", *shape])


def to_onnx_model(graph: Graph) -> onnx.ModelProto:
    """The ONNX model for ``graph`` (deterministic: the importer re-exports and compares to verify a file)."""
    graph.validate()
    check_exact_in_double(graph)
    if set(graph.inputs) & set(graph.outputs):
        raise UnsupportedError("a graph output that is also a graph input cannot be exported to ONNX")
    em = _Emitter(graph)
    for t in graph.inputs:
        q = em.names(f"{t}.q")
        em.quant(t, q, input_cast_format(graph.tensor(t).fmt), f"{t}/quant")
        em.val[t] = q
    records = []
    for n in graph.nodes:
        consts = em.emit(n)
        records.append({"name": n.name, "op": n.op.value, "inputs": list(n.inputs), "output": n.output,
                        "source": n.source, "attrs": {k: list(v) if isinstance(v, tuple) else v
                                                      for k, v in n.attrs.items()},
                        "acc_fmt": n.acc_fmt.to_dict() if n.acc_fmt else None,
                        "consts": {k: {"init": v, "shape": list(n.consts[k].codes.shape),
                                       "fmt": n.consts[k].fmt.to_dict()} for k, v in consts.items()}})
    inner = [t for t in graph.tensors if t not in graph.inputs and t not in graph.outputs]
    g = helper.make_graph(
        em.nodes, _safe_graph_name(graph.name),
        [_vi(t, graph.tensor(t).shape) for t in graph.inputs],
        [_vi(t, graph.tensor(t).shape) for t in graph.outputs],
        em.inits,
        value_info=[_vi(t, graph.tensor(t).shape) for t in inner if any(nd.output == t for nd in graph.nodes)],
    )
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=[fixedquant_function()], ir_version=IR_VERSION_ONNX, producer_name="qfx",
        producer_version=__version__,
        doc_string=f"qfx fixed-point model {graph.name!r}: float64 tensors hold exact fixed-point values; "
                   f"qfx.FixedQuant nodes are ap_fixed casts.",
    )
    meta = {"qfx.version": __version__, "qfx.ir_version": str(IR_VERSION),
            META_GRAPH: json.dumps({"name": graph.name, "inputs": list(graph.inputs),
                                    "input_fmts": [graph.tensor(t).fmt.to_dict() for t in graph.inputs],
                                    "outputs": list(graph.outputs), "meta": dict(graph.meta)}),
            META_NODES: json.dumps(records)}
    helper.set_model_props(model, meta)
    return model


def _safe_graph_name(name: str) -> str:
    return name or "qfx_model"


def export_onnx(graph: Graph, path: str | os.PathLike[str], force: bool = False) -> Path:
    """Write ``graph`` as an ONNX file (atomically: temp file then rename; an existing file only with ``force``).

    The model passes ``onnx.checker.check_model(full_check=True)`` before it is written.
    """
    model = to_onnx_model(graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in qfx, not user input; still one line
        raise BadInputError(f"exported ONNX model failed onnx.checker: {str(exc).splitlines()[0]}") from None
    dest = Path(path).expanduser().absolute()
    with atomic_output_file(dest, force) as fh:
        fh.write(model.SerializeToString())
    return dest
