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
from qfx.ir.graph import IR_VERSION, Graph, Node, Op
from qfx.ir.passes import acc_is_lossless
from qfx.onnx.fixedquant import DOMAIN, IR_VERSION_ONNX, OPSET, fixedquant_function, fixedquant_node

__all__ = ["export_onnx", "to_onnx_model", "check_exact_in_double", "input_cast_format", "GRAPH_OPS", "META_NODES",
           "META_GRAPH"]

#: standard ops exported graphs use (outside the FixedQuant body); each has a float64 CPU kernel in onnxruntime
#: (checked by tests/test_onnx_roundtrip.py). Conv and AveragePool have none, hence the im2col lowering.
GRAPH_OPS = frozenset({"Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "MaxPool", "Pad", "Reshape", "Gather",
                       "Transpose", "ReduceSum", "Flatten"})
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


def check_exact_in_double(graph: Graph) -> None:
    """Raise FormatError unless every value the exported model computes is exact in float64."""
    for t in graph.tensors.values():
        _check_fmt(t.fmt, f"tensor {t.name!r}")
    for n in graph.nodes:
        fx = graph.tensor(n.inputs[0]).fmt
        out = graph.tensor(n.output).fmt
        for k, c in n.consts.items():
            _check_fmt(c.fmt, f"constant {k!r}", n)
        src_frac, src_bound = fx.frac_bits, _fmt_bound(fx)
        if n.op in (Op.DENSE, Op.CONV2D):
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
            src_frac, src_bound = f, bound
        elif n.op is Op.SCALE_SHIFT:
            s, h = n.consts["scale"], n.consts["shift"]
            pf = fx.mul_format(s.fmt)
            _check_code_bound(_fmt_bound(pf), pf.frac_bits, "x * scale", n)
            sf = scale_shift_format(fx, s.fmt, h.fmt)
            _check_code_bound(_fmt_bound(sf), sf.frac_bits, "x * scale + shift", n)
            src_frac, src_bound = sf.frac_bits, _fmt_bound(sf)
        elif n.op is Op.ADD:
            sf = fx.add_format(graph.tensor(n.inputs[1]).fmt)
            _check_code_bound(_fmt_bound(sf), sf.frac_bits, "a + b", n)
            src_frac, src_bound = sf.frac_bits, _fmt_bound(sf)
        elif n.op is Op.AVGPOOL2D:
            k = tuple(n.attr("kernel"))
            win = int(k[0]) * int(k[1])
            _check_code_bound(_fmt_bound(fx) * win, fx.frac_bits, "the window sum", n)
            af = avgpool_format(fx, n.consts["recip"].fmt, win)
            _check_code_bound(_fmt_bound(af), af.frac_bits, "window sum * recip", n)
            src_frac, src_bound = af.frac_bits, _fmt_bound(af)
        _check_cast(src_frac, src_bound.bit_length(), out, n)
        for c in n.consts.values():  # constants are cast from their own exact values
            _check_cast(c.fmt.frac_bits, _fmt_bound(c.fmt).bit_length(), c.fmt, n)
    for t in graph.inputs:
        f = graph.tensor(t).fmt
        if abs(f.frac_bits) > _EXP_LIMIT or f.int_bits > _EXP_LIMIT:
            raise FormatError(f"input {t!r} format {f.ap_type()} lies outside the float64 exponent range")


# ------------------------------------------------------------------------------------------------ emission
class _Names:
    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name


class _Emitter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.names = _Names(set(graph.tensors))
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
        x = self.val[n.inputs[0]]
        consts: dict[str, str] = {}
        p = n.name
        out = self.g.tensor(n.output)
        if n.op is Op.DENSE:
            consts["weight"], w = self.const(n, "weight")
            ins = [x, w]
            if "bias" in n.consts:
                consts["bias"], bq = self.const(n, "bias")
                ins.append(bq)
            s = self.op("Gemm", ins, f"{p}/gemm", transB=1)
        elif n.op is Op.CONV2D:
            consts["weight"], w = self.const(n, "weight")
            s = self._conv(n, x, w)
            if "bias" in n.consts:
                consts["bias"], bq = self.const(n, "bias")
                s = self.op("Add", [s, bq], f"{p}/bias")
            o, ho, wo = out.shape
            s = self.op("Transpose", [s], f"{p}/nchw", perm=[0, 2, 1])
            s = self.op("Reshape", [s, self.i64(f"{p}.out_shape", [0, o, ho, wo])], f"{p}/unflatten")
        elif n.op is Op.SCALE_SHIFT:
            consts["scale"], sq = self.const(n, "scale")
            consts["shift"], hq = self.const(n, "shift")
            rank = len(self.g.tensor(n.inputs[0]).shape)
            bshape = self.i64(f"{p}.bshape", [-1] + [1] * (rank - 1))
            sq = self.op("Reshape", [sq, bshape], f"{p}/scale_b")
            hq = self.op("Reshape", [hq, bshape], f"{p}/shift_b")
            s = self.op("Add", [self.op("Mul", [x, sq], f"{p}/mul"), hq], f"{p}/add")
        elif n.op is Op.ADD:
            s = self.op("Add", [x, self.val[n.inputs[1]]], f"{p}/add")
        elif n.op is Op.RELU:
            s = self.op("Relu", [x], f"{p}/relu")
        elif n.op is Op.CLIP:
            f = self.g.tensor(n.inputs[0]).fmt
            lo = self.init(f"{p}.lo", np.array(f.from_int(int(n.attr("lo")))))
            hi = self.init(f"{p}.hi", np.array(f.from_int(int(n.attr("hi")))))
            s = self.op("Clip", [x, lo, hi], f"{p}/clip")
        elif n.op is Op.MAXPOOL2D:
            k, st, pd = (list(n.attr(a, d)) for a, d in (("kernel", None), ("stride", n.attr("kernel")),
                                                          ("padding", (0, 0))))
            s = self.op("MaxPool", [x], f"{p}/maxpool", kernel_shape=k, strides=st, pads=pd + pd)
        elif n.op is Op.AVGPOOL2D:
            consts["recip"], rq = self.const(n, "recip")
            s = self._window_sum(n, x)
            s = self.op("Mul", [s, self.op("Reshape", [rq, self.i64(f"{p}.scalar", [])], f"{p}/recip_s")],
                        f"{p}/mul")
        elif n.op is Op.FLATTEN:
            s = self.op("Flatten", [x], f"{p}/flatten", axis=1)
        elif n.op is Op.RESHAPE:
            s = self.op("Reshape", [x, self.i64(f"{p}.shape", [0] + list(out.shape))], f"{p}/reshape")
        elif n.op is Op.QUANT:
            s = x
        else:  # pragma: no cover - Op is closed
            raise UnsupportedError(f"no ONNX lowering for op {n.op.value!r}")
        self.quant(s, n.output, out.fmt, f"{p}/quant")
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
