"""ONNX -> IR: qfx-exported files (exact round trip), QONNX/Brevitas graphs and plain (torch, Keras) exports.

* **qfx files** (metadata ``qfx.nodes``): the node structure comes from the metadata, every format from the
  ``FixedQuant`` attributes, constants from the initializers (values checked to be codes of their format), shapes
  from the value infos. The result is then re-exported and compared with the file node for node, initializer for
  initializer and function for function: a file whose graph does not compute what its metadata says is refused.
* **Everything else** first goes through ``qfx.onnx.cleanup`` (constant and shape subgraphs folded, Identity and
  Dropout removed, QONNX ops from any of their domains, channels-last layouts), then one handler per ONNX op type
  (``HANDLERS``) maps nodes to IR ops:

  - ``Quant`` with a power-of-two scale and zero point 0 is a cast to an ``FxFormat`` (ROUND/HALF_EVEN ->
    RND_CONV, FLOOR -> TRN, ...; clamping -> SAT; signed ``narrow`` -> SAT_SYM, whose range ``[-max, max]`` is
    QONNX's narrow range; unsigned ``narrow`` -> SAT plus a clip to ``2**b - 2``), fused into the producing node's
    output cast when that node's result is still exact.
  - Non-power-of-two scales (per tensor or per channel), BatchNormalization, biases that are not codes of the
    accumulator, and Mul/Div/Add/Sub by constants (pre-processing) are kept as a per-channel affine view
    ``real = t * m + h`` of an IR tensor ``t``; the next rounding ``Quant`` becomes one ``scale_shift``
    requantizer with dyadic constants (``qfx.onnx.requant`` explains the choice and its precision).
  - ``BipolarQuant``: weights are codes +-1; on activations it is a sign, i.e. a threshold: a ``scale_shift``
    mapping ``x >= threshold`` to an odd integer and a 2-bit SAT_SYM cast to +-1 (no new op needed).
  - ``Trunc`` (after AveragePool, Brevitas' QuantAvgPool) is a requantization with its rounding mode;
    AveragePool is ``avgpool2d`` (a power-of-two window exactly; otherwise the window sum with 1/(kh*kw) in
    the view); with padding and ``count_include_pad=0`` the window sum divided per position by its count of real
    elements (one per-position ``scale_shift`` between transposes).
  - Gemm/MatMul (+ Add bias), Conv (grouped convolutions expanded to block-diagonal weights; asymmetric
    padding as a ``zeropad2d`` first), Relu, Add, MaxPool, AveragePool/GlobalAveragePool, ReduceMean over the
    spatial axes, Pad (zeros), Flatten, Reshape, Squeeze/Unsqueeze (not of the batch axis) as torch exports them;
    MaxPool/AveragePool with ``ceil_mode=1`` when the windows tile the padded input (no partial last window). Float initializers are constants when their
    values are dyadic with a small code width (weights a fixed-point trainer produced).
  - **1-D** Conv/MaxPool/AveragePool/GlobalAveragePool on (N, C, L) run as their 2-D form on (C, 1, L) with
    ``reshape`` nodes around them, so every tensor keeps the shape the ONNX model promises (Keras' channels-last
    form is the same op between two Transposes, which the clean-up folds); BatchNormalization is per channel.
  - Float functions of a quantized tensor (Sigmoid, Tanh, HardSigmoid, HardSwish, Elu, Selu, Softplus, Softsign,
    Erf, Gelu, Mish, Sqrt, Exp, Log, Reciprocal, Abs, Celu, ThresholdedRelu, Pow by a constant other than 1 and 2, LeakyRelu, PRelu with one slope, Clip with off-grid bounds) are ``lut`` tables over every input code (inputs of at most 12 bits; the
    per-tensor view folds into the table); output ``TABLE_OUT_BITS`` (16) bits with the most fractional bits that
    hold the function's range. Clip with bounds on the grid is the ``clip`` op.
  - ``Softmax`` over the last axis of a vector of at most 12 bits is the ``softmax`` op with output
    ``SOFTMAX_OUT`` = ``ap_ufixed<16,1,AP_RND_CONV,AP_SAT>`` (1.0 representable, 15 fractional bits; its tables
    follow from that width); over an inner axis (opset >= 13: per-pixel class scores over the channels) the axis is
    moved last and back by ``transpose`` nodes.
  - ``Mul`` of two activations (SiLU's ``x * Sigmoid(x)``, squeeze-excitation and GLU gates; a (C, 1, 1) operand
    repeated over H and W) and ``Pow(x, 2)`` are the exact ``mul`` op; ``Slice`` (positive steps) and ``Split`` of
    activations are ``slice`` nodes; ``ReduceMax`` over the spatial axes is a max pool over the whole plane.
  - ``ReduceMean``/``ReduceMax``/``ReduceMin``/``ReduceSum`` over any non-batch axes (the features of (N, n), the
    channels, the width, a whole sample): the reduced axes moved last (``transpose``), a (1, R) pool, reshapes;
    Sum is the exact window sum, Min the negated Max. ``Add``/``Sub``/``Mul`` of two activations broadcast an
    operand with size-1 axes (a row or channel statistic) by ``upsample2d`` copies; ``Div`` of two activations is
    a reciprocal ``lut`` over the divisor's codes times the numerator (``mul``), a scalar over an activation one
    ``lut``. With these, LayerNormalization/InstanceNormalization (GroupNorm) import as the steps the clean-up writes
    them as (``cleanup.normalizations``). ``Where`` of a comparison (Greater/Less/GreaterOrEqual/LessOrEqual of an
    activation and a constant, through Cast to bool or Not) whose branches are that activation through per-tensor
    views or constants is one ``lut`` over its codes. ``Gather`` with constant indices along a per-sample axis
    (``x[:, 0]``) is a ``slice``; ``Expand`` along size-1 axes repeats by ``upsample2d``. Ops with no handler are
    refused before any node is converted.
  - ``MultiThreshold`` (FINN) is a ``lut`` over the input codes whose entries are the threshold counts (exact);
    per-channel thresholds select one block of the table per distinct row through an exact ``scale_shift``
    (``MT_TABLE_BITS``); ``out_scale``/``out_bias`` go into the view. ``FloatQuant`` (minifloat) on constants gives
    their exact dyadic values; on activations of at most 12 bits it is a ``lut`` holding the minifloat values.
  - Several graph inputs and outputs (each input's format from its Quant, annotation or ``input_fmt``);
    ``input_codes(graph, x, k)`` for input ``k``. MatMul of two computed tensors (attention) is refused up front.

  - **ONNX QDQ** (onnxruntime ``quantize_static``, TensorRT/PyTorch QAT exports, ONNX-zoo int8 models): a
    ``QuantizeLinear -> DequantizeLinear`` pair is a Quant whose codes are ``q - zp``: round half to even (RND_CONV),
    saturation to the integer type's range shifted by the zero point (``[qmin - zp, qmax - zp]``, a ``clip`` where
    that is narrower than the code format, e.g. uint8 with zp 131 -> 9-bit signed codes in [-131, 124]); per-tensor
    or per-channel (axis 1) scales, non-power-of-two ones requantized with the same dyadic constants as Quant.
    ``DequantizeLinear`` of an int8/int32 initializer (weights per axis, biases) is a constant kept as codes and
    scales. Brevitas' QCDQ (a ``Clip`` of the integer codes between Q and DQ) is a ``clip`` of the codes.
    Constant graph outputs (Brevitas ``return_quant_tensor=True`` exports the output's scale and zero point) are
    dropped with a report line.
  - **ONNX QOperator** (``quantize_static(..., quant_format=QuantFormat.QOperator)``): each op is its float op
    between dequantized operands (codes ``q - zp`` and scales, as above) and a QuantizeLinear to the op's output
    scale and zero point, with the same requantizers: ``QLinearConv``/``QLinearMatMul``/com.microsoft ``QGemm``;
    com.microsoft ``QLinearAdd`` (each operand brought to units of the output scale by a lossless dyadic
    ``scale_shift`` where the scales differ, an exact ``add``, one rounding) and ``QLinearMul`` (exact ``mul`` of
    the codes, one requantizer by ``s_A * s_B / s_C``), with per-input scales/zero points, a constant operand, or a
    (C, 1, 1) gate repeated over H and W (``upsample2d``); ``QLinearGlobalAveragePool``/``QLinearAveragePool``
    (``avgpool2d``; kernel/strides/pads with ``count_include_pad=1``; ``channels_last=1`` inputs transposed to
    channels-first and back); ``QLinearConcat`` (each input requantized to the output's scale and zero point, as
    onnxruntime does, then ``concat``); ``QLinearSigmoid``/``QLinearLeakyRelu`` as a ``lut`` holding the output
    codes (onnxruntime's own table: float32 dequantization, the function, one rounding). MaxPool/Reshape/Flatten on
    integer codes keep scale and zero point. Other QOperator ops (QLinearSoftmax, QLinearWhere, QLinearReduceMean,
    ...) are refused with a QDQ hint; dynamic quantization (DynamicQuantizeLinear, MatMulInteger, ConvInteger:
    scales computed at run time) is refused up front.
  - A ``Quant`` right after a table (Sigmoid/Tanh/... ``lut``) is folded into the table: its entries are the
    Quant's output codes of the function (one rounding, as QONNX computes it, not two).

  Ops qfx has no IR op for (LogSoftmax, SpaceToDepth, QLinearSoftmax, Greater/Where, ...) are refused with one
  line naming the op, the node and what to do (``REFUSALS``).
* **Input format**: ``input_fmt`` (CLI ``--input-format``), else a QONNX datatype annotation of the input
  (``graph.quantization_annotation``: INT8, UINT4, BIPOLAR, FIXED<8,4>, ...), else the first ``Quant`` that reads
  the input. ``input_codes(graph, x)`` turns float model inputs into the IR's input codes (input scale, bipolar,
  layout); ``output_values(graph, codes)`` gives the ONNX model's real outputs back.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qfx.errors import BadInputError, FormatError, QfxError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import avgpool_format, conv_out_size, scale_shift_format
from qfx.ir.names import UniqueNames
from qfx.ir.graph import IR_VERSION, Constant, Graph, Node, TensorSpec, op_def
from qfx.onnx.cleanup import QONNX_DOMAIN, QONNX_OPS, cleanup, constant_value
from qfx.onnx.requant import REQUANT_BITS, dyadic, is_pow2, pow2_exponent, scale_bits_for
from qfx.ops import REGISTRY, Categories

__all__ = ["import_onnx", "import_model", "load_model_file", "input_codes", "output_values", "parse_qonnx_datatype",
           "HANDLERS", "REFUSALS"]

_ROUNDING = {"ROUND": "RND_CONV", "HALF_EVEN": "RND_CONV", "FLOOR": "TRN", "DOWN": "TRN_ZERO",
             "ROUND_TO_ZERO": "TRN_ZERO", "HALF_UP": "RND_INF", "HALF_DOWN": "RND_ZERO"}
MAX_CONST_WIDTH = 32
INPUT_FORMAT_HINT = "give its format with --input-format 'ap_fixed<W,I>' (Python: input_fmt=...)"


# ------------------------------------------------------------------------------------------------ loading
def load_model_file(path: str | os.PathLike[str]):
    """Read and parse an ONNX file; one-line BadInputError for missing, unreadable or corrupt files."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"ONNX file {p} does not exist") from None
    except OSError as exc:
        raise BadInputError(f"cannot read ONNX file {p}: {exc.strerror or exc}") from None
    if not data:
        raise BadInputError(f"ONNX file {p} is empty")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, TypeError, RuntimeError, UnicodeDecodeError, OverflowError) as exc:
        raise BadInputError(f"{p} is not a valid ONNX file ({type(exc).__name__})") from None
    except Exception as exc:  # protobuf backends raise assorted types on garbage
        raise BadInputError(f"{p} is not a valid ONNX file ({type(exc).__name__})") from None
    if not model.HasField("graph") or not len(model.graph.node):
        raise BadInputError(f"{p} holds no ONNX graph (truncated or not an ONNX model)")
    return model


def import_onnx(path: str | os.PathLike[str], name: str | None = None, input_fmt: FxFormat | str | None = None,
                requant_bits: int = REQUANT_BITS) -> Graph:
    """Import an ONNX file as a qfx Graph (qfx-exported, QONNX or plain); errors are one-line QfxErrors.

    ``input_fmt`` (an ``FxFormat`` or its ``ap_fixed<...>`` text) is the format of a float graph input that no
    annotation or Quant node gives; ``requant_bits`` the significant bits of non-power-of-two requantizers.
    """
    return import_model(load_model_file(path), name=name, input_fmt=input_fmt, origin=str(path),
                        requant_bits=requant_bits)


def import_model(model, name: str | None = None, input_fmt: FxFormat | str | None = None, origin: str = "model",
                 requant_bits: int = REQUANT_BITS) -> Graph:
    """``import_onnx`` for a loaded ``onnx.ModelProto``."""
    if isinstance(input_fmt, str):
        input_fmt = FxFormat.parse(input_fmt)
    try:
        meta = {p.key: p.value for p in model.metadata_props}
        if "qfx.nodes" in meta:
            g = _import_qfx(model, meta)
        else:
            cleaned, report = cleanup(model)
            g = _Converter(cleaned, input_fmt, requant_bits, report).convert()
        return g.replace(name=name) if name else g
    except QfxError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, ArithmeticError,
            json.JSONDecodeError, RecursionError) as exc:
        raise BadInputError(f"{origin}: malformed ONNX model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None


# ------------------------------------------------------------------------------------------------ helpers
def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _attr_str(a: dict[str, Any], key: str, default: str) -> str:
    """A string attribute of ``_attrs(node)`` (onnx gives bytes), ``default`` when absent."""
    v = a.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _erf(v: np.ndarray) -> np.ndarray:
    """The error function elementwise (numpy has none; tables are small)."""
    return np.vectorize(math.erf, otypes=[np.float64])(np.asarray(v, dtype=np.float64))


def _array(init) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def _shape_of(vi) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim[1:]:
        if not d.HasField("dim_value"):
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _codes_of(values: np.ndarray, fmt: FxFormat, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    s = np.ldexp(v, fmt.frac_bits)
    if not np.all(np.isfinite(s)) or not np.array_equal(s, np.floor(s)):
        raise FormatError(f"{what}: values are not codes of {fmt.ap_type()}")
    if s.size and (s.min() < fmt.min_code or s.max() > fmt.max_code):
        raise FormatError(f"{what}: values out of range for {fmt.ap_type()}")
    return s.astype(np.int64)


def _fmt_from_attrs(a: dict[str, Any], where: str) -> FxFormat:
    try:
        r, o = a["rounding"], a["overflow"]
        r = r.decode() if isinstance(r, bytes) else r
        o = o.decode() if isinstance(o, bytes) else o
        return FxFormat(int(a["width"]), int(a["int_bits"]), bool(int(a["signed"])), r, o)
    except KeyError as exc:
        raise BadInputError(f"FixedQuant node {where!r} lacks attribute {exc}") from None


# ------------------------------------------------------------------------------------------------ qfx files
def _import_qfx(model, meta: dict[str, str]) -> Graph:
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.fixedquant import DOMAIN, FUNCTION_NAME

    if meta.get("qfx.ir_version") != str(IR_VERSION):
        raise BadInputError(f"qfx ONNX file has IR version {meta.get('qfx.ir_version')!r}, expected {IR_VERSION}")
    ginfo = json.loads(meta["qfx.graph"])
    records = json.loads(meta["qfx.nodes"])
    if not isinstance(ginfo, dict) or not isinstance(records, list):
        raise BadInputError("qfx ONNX metadata is malformed")
    g = model.graph
    fq: dict[str, Any] = {}
    fq_by_input: dict[str, Any] = {}
    for n in g.node:
        if n.domain == DOMAIN and n.op_type == FUNCTION_NAME:
            if len(n.output) != 1 or len(n.input) != 1:
                raise BadInputError(f"FixedQuant node {n.name!r} must have one input and one output")
            fq[n.output[0]] = n
            fq_by_input.setdefault(n.input[0], n)
        elif n.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"unknown op {n.domain}.{n.op_type} in node {n.name!r}")
    inits = {i.name: i for i in g.initializer}
    shapes = {vi.name: _shape_of(vi) for vi in (*g.input, *g.output, *g.value_info)}

    def fmt_of(tensor: str, via: dict[str, Any]) -> FxFormat:
        node = via.get(tensor)
        if node is None:
            raise BadInputError(f"tensor {tensor!r} has no FixedQuant node giving its format")
        return _fmt_from_attrs(_attrs(node), node.name)

    tensors: dict[str, TensorSpec] = {}

    def spec(t: str, fmt: FxFormat) -> None:
        shp = shapes.get(t)
        if shp is None:
            raise BadInputError(f"tensor {t!r} has no static shape in the ONNX file")
        tensors[t] = TensorSpec(t, shp, fmt)

    in_fmts = ginfo.get("input_fmts") or [None] * len(ginfo["inputs"])
    if len(in_fmts) != len(ginfo["inputs"]):
        raise BadInputError("qfx ONNX metadata lists a different number of input formats and inputs")
    for t, fd in zip(ginfo["inputs"], in_fmts):
        spec(t, FxFormat.from_dict(fd) if fd else fmt_of(t, fq_by_input))
    nodes = []
    for r in records:
        consts = {}
        for k, c in r.get("consts", {}).items():
            iname = c["init"]
            if iname not in inits:
                raise BadInputError(f"node {r['name']!r}: initializer {iname!r} is missing")
            store = fmt_of(iname, fq_by_input)
            cf = FxFormat.from_dict(c["fmt"]) if "fmt" in c else store
            if cf.with_modes("TRN", "WRAP") != store:
                raise BadInputError(f"node {r['name']!r}: initializer {iname!r} format {store.ap_type()} disagrees "
                                    f"with the metadata ({cf.ap_type()})")
            vals = _array(inits[iname])
            if list(vals.shape) != list(c["shape"]):
                raise BadInputError(f"node {r['name']!r}: initializer {iname!r} has shape {vals.shape}, "
                                    f"metadata says {tuple(c['shape'])}")
            consts[k] = Constant(_codes_of(vals, cf, f"initializer {iname!r}"), cf)
        spec(r["output"], fmt_of(r["output"], fq))
        acc = FxFormat.from_dict(r["acc_fmt"]) if r.get("acc_fmt") else None
        nodes.append(Node(r["name"], r["op"], tuple(r["inputs"]), r["output"], consts, r.get("attrs", {}), acc,
                          r.get("source", "")))
    graph = Graph(ginfo["name"], tuple(ginfo["inputs"]), tuple(ginfo["outputs"]), tensors, tuple(nodes),
                  ginfo.get("meta", {})).validate()
    from qfx.ir.passes import run_flow

    run_flow(graph, ["check_formats"])
    # verify: the file must be exactly what exporting this graph produces
    ref = to_onnx_model(graph)
    _compare(model, ref)
    return graph


def _compare(model, ref) -> None:
    g, r = model.graph, ref.graph
    if len(g.node) != len(r.node):
        raise BadInputError(f"ONNX graph has {len(g.node)} nodes but its qfx metadata describes {len(r.node)}")
    for a, b in zip(g.node, r.node):
        if a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True):
            raise BadInputError(f"ONNX node {a.name or a.op_type!r} differs from what its qfx metadata describes")
    ia = {i.name: _array(i) for i in g.initializer}
    ib = {i.name: _array(i) for i in r.initializer}
    if set(ia) != set(ib):
        raise BadInputError("ONNX initializers differ from what the qfx metadata describes")
    for k, v in ib.items():
        if ia[k].dtype != v.dtype or ia[k].shape != v.shape or not np.array_equal(ia[k], v):
            raise BadInputError(f"initializer {k!r} differs from what the qfx metadata describes")
    fa = sorted(f.SerializeToString(deterministic=True) for f in model.functions)
    fb = sorted(f.SerializeToString(deterministic=True) for f in ref.functions)
    if fa != fb:
        raise BadInputError("the file's qfx.FixedQuant function differs from qfx's definition")
    oa = sorted((o.domain, o.version) for o in model.opset_import)
    ob = sorted((o.domain, o.version) for o in ref.opset_import)
    if oa != ob:
        raise BadInputError(f"ONNX opset imports {oa} differ from qfx's {ob}")
    for la, lb in ((g.input, r.input), (g.output, r.output), (g.value_info, r.value_info)):
        if [x.SerializeToString(deterministic=True) for x in la] != [x.SerializeToString(deterministic=True)
                                                                     for x in lb]:
            raise BadInputError("ONNX graph inputs/outputs/value infos differ from what the qfx metadata describes")


# ------------------------------------------------------------------------------------------------ QONNX / plain
@dataclass
class _Val:
    """What an ONNX value is during conversion.

    ``const``: float64 ``values`` (exact), with ``fmt`` when a power-of-two Quant made them codes of one format, or
    ``codes`` and a per-element ``cscale`` when a Quant with other scales did (``values == codes * cscale``).
    ``act``: an IR ``tensor`` seen through the per-channel affine view ``real = relu?(tensor * m + h)`` (``m``,
    ``h`` 1-D: one value, or one per channel, i.e. per index of the tensor's first per-sample axis).
    ``input``: the graph input before anything gave it a format.
    """

    kind: str
    values: np.ndarray | None = None
    fmt: FxFormat | None = None
    codes: np.ndarray | None = None
    cscale: np.ndarray | None = None
    tensor: str = ""
    m: np.ndarray = field(default_factory=lambda: np.ones(1))
    h: np.ndarray = field(default_factory=lambda: np.zeros(1))
    relu: bool = False

    @property
    def pure(self) -> bool:
        """The IR tensor's values are the ONNX values."""
        return self.kind == "act" and not self.relu and bool(np.all(self.m == 1)) and not np.any(self.h)

    def view(self, m: np.ndarray | float, h: np.ndarray | float, relu: bool | None = None) -> "_Val":
        return _Val("act", tensor=self.tensor, m=np.atleast_1d(np.asarray(m, dtype=np.float64)),
                    h=np.atleast_1d(np.asarray(h, dtype=np.float64)), relu=self.relu if relu is None else relu)


def _natural_range(bits: int, signed: bool, sym: bool) -> tuple[int, int]:
    """The code range of a ``bits``-bit format (SAT_SYM: symmetric)."""
    if not signed:
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)) + int(sym), (1 << (bits - 1)) - 1


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


def _vec(a: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(a, dtype=np.float64)).ravel()


def _sat_sym_is_symmetric() -> bool:
    """True when qfx's SAT_SYM range is ``[-max, max]`` (ap_fixed's rule), i.e. exactly QONNX's signed narrow range."""
    from qfx.onnx.fixedquant import sat_sym_is_symmetric

    return sat_sym_is_symmetric()


def _dyadic_codes(values: np.ndarray, what: str) -> tuple[np.ndarray, FxFormat]:
    """Exact (codes, narrowest format) for float values that are dyadic with a small code width."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise FormatError(f"{what} holds non-finite values")
    nz = v[v != 0]
    if nz.size == 0:
        return np.zeros(v.shape, dtype=np.int64), FxFormat(1, 1)
    mant, exp = np.frexp(nz)  # nz = mant * 2**exp, 0.5 <= |mant| < 1, mant has <= 53 bits
    mi = np.ldexp(mant, 53).astype(np.int64)  # exact integer significand
    low = np.bitwise_and(mi, -mi)  # its lowest set bit, 2**tz
    tz = np.frexp(low.astype(np.float64))[1] - 1
    frac = int((53 - exp - tz).max())  # smallest F with every value * 2**F integral
    frac = max(-512, min(frac, 600))
    s = np.ldexp(v, frac)
    if not np.array_equal(s, np.floor(s)) or np.abs(s).max() >= 2.0 ** 62:
        raise FormatError(f"{what} is not representable as fixed point")
    codes = s.astype(np.int64)
    fmt = FxFormat.for_code_range(min(0, int(codes.min())), max(0, int(codes.max())), frac, signed=True)
    if fmt.width > MAX_CONST_WIDTH:
        raise FormatError(f"{what} needs {fmt.width}-bit codes as fixed point (limit {MAX_CONST_WIDTH}): its values "
                          f"are float, not fixed point; quantize the model (qfx quantize MODEL --calib DATA.npy)")
    return codes, fmt


def _broadcast_scale(s: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A Quant scale (scalar, broadcastable, or one per output channel) as an array of ``shape``."""
    s = np.asarray(s, dtype=np.float64)
    try:
        return np.broadcast_to(s, shape)
    except ValueError:
        return np.broadcast_to(s.reshape((-1,) + (1,) * (len(shape) - 1)), shape)


def _int_codes(codes: np.ndarray) -> Constant:
    c = np.asarray(codes, dtype=np.int64)
    return Constant(c, FxFormat.for_code_range(min(0, int(c.min(initial=0))), max(0, int(c.max(initial=0))), 0,
                                               signed=True))


# ------------------------------------------------------------------------------------------------ datatypes
_DT_RE = re.compile(r"^(U?INT)(\d+)$|^(FIXED|UFIXED)<\s*(\d+)\s*,\s*(-?\d+)\s*>$")


def parse_qonnx_datatype(name: str) -> FxFormat | None:
    """The ``FxFormat`` of a QONNX/FINN datatype name (None for FLOAT32 and other non-fixed types).

    INTn/UINTn -> integers; BINARY -> 1-bit unsigned; BIPOLAR/TERNARY -> 2-bit signed codes (+-1, 0);
    FIXED<W,I> -> ``ap_fixed<W,I>``; UFIXED<W,I> -> ``ap_ufixed<W,I>``.
    """
    t = str(name).strip().upper()
    if t in ("BIPOLAR", "TERNARY"):
        return FxFormat(2, 2, True)
    if t == "BINARY":
        return FxFormat(1, 1, False)
    m = _DT_RE.match(t)
    if not m:
        return None
    if m.group(1):
        b = int(m.group(2))
        return FxFormat(b, b, m.group(1) == "INT")
    return FxFormat(int(m.group(4)), int(m.group(5)), m.group(3) == "FIXED")


def _annotations(graph) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in graph.quantization_annotation:
        for kv in a.quant_parameter_tensor_names:
            if kv.key == "finn_datatype":
                out[a.tensor_name] = kv.value
    return out


# ------------------------------------------------------------------------------------------------ interface helpers
def input_codes(graph: Graph, x: Any, k: int = 0) -> np.ndarray:
    """IR input codes for a batch of the ONNX model's float input ``k``: layout (``input_perm``), bipolar sign or
    input scale (``input_scale``), then the input format's own rounding and saturation."""
    meta = graph.meta["input_meta"][k] if "input_meta" in graph.meta else graph.meta
    v = np.asarray(x, dtype=np.float64)
    shape = graph.tensor(graph.inputs[k]).shape
    if not meta.get("input_perm") and len(shape) == v.ndim and shape[:1] == (1,) and v.shape[1:] == shape[1:]:
        v = v[:, None]  # K samples of a model exported with batch 1 whose batch axis qfx lifted (whole_sample)
    perm = meta.get("input_perm")
    if perm:
        v = np.transpose(v, [int(p) for p in perm])
    fin = graph.tensor(graph.inputs[k]).fmt
    if meta.get("input_quant") == "bipolar":
        return fin.to_int(np.where(v >= 0, 1.0, -1.0) * float(meta.get("input_unit", 1.0)))
    s = meta.get("input_scale")
    if s is not None:
        v = v / float(s)
    return fin.to_int(v)


def output_values(graph: Graph, codes: np.ndarray, k: int = 0) -> np.ndarray:
    """The ONNX model's real output ``k`` for IR output codes (output format, times ``output_scale``)."""
    fout = graph.tensor(graph.outputs[k]).fmt
    y = fout.from_int(np.asarray(codes))
    scales = graph.meta.get("output_scale")
    if scales and scales[k] is not None:
        s = np.asarray(scales[k], dtype=np.float64)
        y = y * (s.reshape((1, -1) + (1,) * (y.ndim - 2)) if s.size > 1 else s.reshape(()))
    return y


# ------------------------------------------------------------------------------------------------ tables
#: output format of an imported Softmax: probabilities in [0, 1] (1.0 included) with 15 fractional bits; the exp
#: and reciprocal tables follow this width (``softmax_tables``: 19-bit entries, a 2**14-entry reciprocal table)
SOFTMAX_OUT = FxFormat(16, 1, False, "RND_CONV", "SAT")
#: width of the output of an imported float function table (Sigmoid, Tanh, ...): the most fractional bits that
#: hold the function's range over the input format
TABLE_OUT_BITS = 16
#: widest table index of a MultiThreshold with per-channel thresholds (input bits + bits of the row number)
MT_TABLE_BITS = 16


def _table_format(y: np.ndarray) -> FxFormat:
    """The TABLE_OUT_BITS-bit round-to-nearest saturating format with the most fractional bits that holds ``y``."""
    lo, hi = float(np.min(y)), float(np.max(y))
    signed = lo < 0
    big = max(abs(lo), abs(hi), 2.0 ** -TABLE_OUT_BITS)
    ib = math.floor(math.log2(big)) + 1 + (1 if signed else 0)
    fmt = FxFormat(TABLE_OUT_BITS, ib, signed, "RND_CONV", "SAT")
    if np.max(y) > fmt.max:  # hi rounds up past the range by less than one LSB: one more integer bit
        fmt = FxFormat(TABLE_OUT_BITS, ib + 1, signed, "RND_CONV", "SAT")
    return fmt


def minifloat(x: np.ndarray, e_bits: int, m_bits: int, e_bias: float, max_val: float, rounding: str) -> np.ndarray:
    """QONNX FloatQuant on unit-scale values (float64): round to ``m_bits`` mantissa bits at each value's binade
    (subnormals below ``1 - bias``), saturate to ``min(max_val, format max)``. Every result is a dyadic number."""
    x = np.asarray(x, dtype=np.float64)
    emin = 1.0 - e_bias - m_bits
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.abs(x) + np.finfo(np.float64).tiny)) - m_bits
    step = np.exp2(np.maximum(e, emin))
    r = {"ROUND": np.round, "HALF_EVEN": np.round, "FLOOR": np.floor, "CEIL": np.ceil, "ROUND_TO_ZERO": np.trunc,
         "DOWN": np.trunc, "UP": lambda v: np.sign(v) * np.ceil(np.abs(v))}[rounding]
    q = step * r(x / step)
    top = float(np.sum(2.0 ** np.arange(0, -m_bits - 1, -1.0))) * 2.0 ** (2.0 ** e_bits - 1 - e_bias)
    top = min(top, max_val)
    return np.clip(q, -top, top)


# ------------------------------------------------------------------------------------------------ refusals
_CUT = "cut the model before it (run that part on the host) or replace it in the source model"
#: onnxruntime's dynamic quantization (quantize_dynamic; MatMulInteger/ConvInteger as older tools wrote them)
DYNAMIC_QUANT_OPS = ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                     "MatMulIntegerToFloat", "DynamicQuantizeLSTM")
DYNAMIC_QUANT = ("dynamic quantization (scales computed at run time from each input's range) cannot be fixed point: "
                 "re-quantize with onnxruntime quantize_static or qfx quantize")
#: ONNX ops qfx has no IR op for: what the user can do (the refusal names op and node)
REFUSALS = {
    "LogSoftmax": "qfx has no log-softmax; drop the final LogSoftmax before export (argmax is unchanged) or compute it "
                  "on the host",
    "SpaceToDepth": "qfx has no space-to-depth op; " + _CUT,
    **{op: "the clean-up unrolls a recurrent layer over its fixed length when its input is a batch-first tensor "
           "transposed to sequence-first (torch's export), its initial state is absent or zeros, it has default "
           "activations, no clip, sequence_lens or peepholes (GRU: linear_before_reset=1) and its outputs are read "
           "as torch's export reads them; this one is not (run the recurrence on the host); " + _CUT
       for op in ("LSTM", "GRU", "RNN")},
    **{op: "qfx maps feed-forward graphs; a loop has no qfx op (run it on the host); " + _CUT
       for op in ("Scan", "Loop")},
    **{op: "qfx writes LayerNormalization/InstanceNormalization as ReduceMean, Sub, Mul, Sqrt and Div steps when "
           "the input's rank is known and the Mean/InvStdDev outputs are unused (qfx quantize then calibrates each "
           "step), not this node; export with opset < 17 (torch writes the steps itself), use BatchNormalization, "
           "or " + _CUT
       for op in ("LayerNormalization", "InstanceNormalization", "GroupNormalization")},
    **{op: "of onnxruntime's QOperator ops qfx maps QLinearConv/QLinearMatMul/QGemm, QLinearAdd/QLinearMul, "
           "QLinearAveragePool/QLinearGlobalAveragePool, QLinearConcat and QLinearSigmoid/QLinearLeakyRelu, not this "
           "one; re-quantize in the QDQ format (onnxruntime quantize_static(..., quant_format=QuantFormat.QDQ)) or "
           "export QONNX"
       for op in ("QLinearSoftmax", "QLinearWhere", "QLinearReduceMean", "QLinearConvTranspose", "QLinearLayerNorm",
                  "QLinearAveragePoolNhwc", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul")},
    **{op: DYNAMIC_QUANT for op in DYNAMIC_QUANT_OPS},
}
_GENERIC = ("qfx imports Quant/BipolarQuant/Trunc/MultiThreshold/FloatQuant, QuantizeLinear/DequantizeLinear "
            "(QDQ), onnxruntime's QOperator ops (QLinearConv, QLinearAdd, ...), Gemm/MatMul, Conv/ConvTranspose "
            "(1-D, 2-D), BatchNormalization, Relu/Clip/LeakyRelu/PRelu/Sigmoid/Tanh/"
            "HardSigmoid/HardSwish/Elu/Erf/Gelu, Softmax, Add/Sub/Mul/Div, Max/Min of two tensors, MaxPool/AveragePool, "
            "Reduce{Mean,Max,Min,Sum}, Slice/Split, Concat, Resize, DepthToSpace, Flatten/Reshape; " + _CUT)


def _fits(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """``small`` repeats to ``big`` along its size-1 axes (same rank)."""
    return len(small) == len(big) and all(s in (1, g) for s, g in zip(small, big))


def _clean_name(base: str) -> str:
    b = re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "t"
    return "t_" + b if b[0].isdigit() else b


def _ceil_pool_size(size: int, k: int, s: int, begin: int, end: int) -> int:
    """Output length of a ``ceil_mode`` pool (torch and onnxruntime): a last window that would start in the end
    padding is dropped."""
    out = -(-(size + begin + end - k) // s) + 1
    return out - 1 if (out - 1) * s >= size + begin else out


class _Converter:
    def __init__(self, model, input_fmt: FxFormat | None, requant_bits: int = REQUANT_BITS,
                 report: list[str] | None = None) -> None:
        self.m = model
        self.g = model.graph
        self.input_fmt = input_fmt
        self.bits = int(requant_bits)
        self.report = list(report or [])
        self.vals: dict[str, _Val] = {}
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.inits = {i.name: _array(i) for i in self.g.initializer}
        self.used_names = UniqueNames(clean=_clean_name)
        self.consumers: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        self.pending_inputs: dict[str, tuple[int, ...]] = {}
        self.exact: set[str] = set()
        self.meta: dict[str, Any] = {}
        self.requants: list[dict[str, Any]] = []
        self.qdq: dict[str, tuple[np.ndarray, int]] = {}  # QuantizeLinear output -> (scale, zero point)
        self.tables: dict[str, np.ndarray] = {}  # lut output tensor -> the function's float values per input code
        self.comparisons: dict[str, tuple[str, str, float]] = {}  # Greater/Less/... output -> (x, op, constant)

    # ---------------------------------------------------------------- naming
    def _name(self, base: str) -> str:  # IR tensor and node names from ONNX names (identifier characters only)
        return self.used_names(base)

    def _new_tensor(self, base: str, shape: tuple[int, ...], fmt: FxFormat) -> str:
        t = self._name(base)
        self.tensors[t] = TensorSpec(t, shape, fmt)
        return t

    def _add(self, op: str, onnx_node, inputs: list[str], shape: tuple[int, ...], fmt: FxFormat,
             consts=None, attrs=None, acc=None) -> str:
        out = self._new_tensor(onnx_node.output[0], shape, fmt)
        if not op_def(op).is_(Categories.WIRING):
            # every IR op computes exactly and casts once; the importer gives non-wiring ops their lossless output
            # format, so a following Quant may become this node's output cast
            self.exact.add(out)
        nname = self._name(f"{onnx_node.name or onnx_node.op_type}_{op}")
        self.nodes.append(Node(nname, op, tuple(inputs), out, consts or {}, attrs or {}, acc,
                               source=onnx_node.name or onnx_node.op_type))
        return out

    @staticmethod
    def _where(node) -> str:
        return node.name or (node.output[0] if len(node.output) else node.op_type)

    # ---------------------------------------------------------------- values
    def _get(self, name: str, node) -> _Val:
        if name in self.vals:
            return self.vals[name]
        if name in self.comparisons:
            raise UnsupportedError(f"node {self._where(node)!r} ({node.op_type}) reads the comparison {name!r}; qfx "
                                   f"takes a comparison of an activation with a constant only as the condition of a "
                                   f"Where; {_CUT}")
        if name in self.inits:
            v = _Val("const", np.asarray(self.inits[name]))
            self.vals[name] = v
            return v
        raise BadInputError(f"node {self._where(node)!r} reads {name!r}, which is neither an initializer nor "
                            f"computed before it (missing initializer?)")

    def _act(self, name: str, node) -> _Val:
        v = self._get(name, node)
        if v.kind == "input":
            raise BadInputError(f"graph input {name!r} is used by node {self._where(node)!r} ({node.op_type}) before "
                                f"a Quant node gives it a fixed-point format; {INPUT_FORMAT_HINT}")
        if v.kind != "act":
            raise UnsupportedError(f"node {self._where(node)!r} ({node.op_type}): input {name!r} is a constant where "
                                   f"an activation is expected")
        return v

    def _const(self, name: str, node, what: str) -> _Val:
        v = self._get(name, node)
        if v.kind != "const":
            raise UnsupportedError(f"node {self._where(node)!r} ({node.op_type}): {what} {name!r} is computed, qfx "
                                   f"needs a constant")
        return v

    def _int_list(self, name: str, node) -> list[int]:
        v = self._get(name, node)
        if v.kind != "const":
            raise UnsupportedError(f"node {self._where(node)!r}: shape input {name!r} must be constant")
        return [int(x) for x in np.asarray(v.values).ravel()]

    def _chan(self, c: np.ndarray, act: _Val, node, what: str) -> np.ndarray:
        """A constant broadcast against an activation as a per-channel vector (1 value, or 1 per channel)."""
        c = np.asarray(c, dtype=np.float64)
        shape = self.tensors[act.tensor].shape
        full = (1, *shape)
        if c.ndim > len(full):
            raise UnsupportedError(f"node {self._where(node)!r}: {what} of shape {c.shape} does not broadcast "
                                   f"against {full}")
        cc = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
        for ax in range(len(full)):
            if ax != 1 and cc.shape[ax] != 1:
                raise UnsupportedError(f"node {self._where(node)!r}: {what} of shape {c.shape} varies along axis "
                                       f"{ax} of {full}; qfx folds only per-tensor or per-channel constants")
        if cc.shape[1] not in (1, full[1]):
            raise BadInputError(f"node {self._where(node)!r}: {what} of shape {c.shape} does not fit {full}")
        return cc.reshape(-1)

    def _single_use(self, tensor: str) -> bool:
        """The IR tensor is read by one ONNX consumer (views of it that only pass it on do not count)."""
        names = [k for k, v in self.vals.items() if v.kind == "act" and v.tensor == tensor]
        uses = sum(self.consumers.get(k, 0) for k in names) - (len(names) - 1)
        return uses <= 1 and not any(o.name in names for o in self.g.output)

    # ---------------------------------------------------------------- building blocks
    def _channels(self, t: str) -> int:
        shape = self.tensors[t].shape
        return shape[0] if shape else 1

    def _full(self, v: np.ndarray, t: str) -> np.ndarray:
        c = self._channels(t)
        v = _vec(v)
        return np.repeat(v, c) if v.size == 1 else v

    def _cast(self, node, src: str, fmt: FxFormat) -> str:
        """Cast ``src`` to ``fmt``; fused into src's producer when that node's output is used only here."""
        prod = next((nd for nd in self.nodes if nd.output == src), None)
        if prod is not None and src in self.exact and self._single_use(src):
            self.exact.discard(src)
            old = self.tensors[src]
            self.tensors[src] = TensorSpec(src, old.shape, fmt)  # the node casts its exact result once, to fmt
            return src
        return self._add("quant", node, [src], self.tensors[src].shape, fmt)

    def _scale_shift(self, node, t: str, mult: np.ndarray, shift: np.ndarray, out: FxFormat | None,
                     why: str) -> str:
        """``out(t * mult + shift)`` per channel with dyadic constants; ``out=None``: the lossless format."""
        fx = self.tensors[t].fmt
        d_m = dyadic(self._full(mult, t), scale_bits_for(fx, self.bits))
        hv = self._full(shift, t)
        pf = d_m.frac + fx.frac_bits
        d_h0 = dyadic(hv, bits=max(self.bits, 8))  # short exact shifts (integers, bipolar thresholds) stay exact
        d_h = d_h0 if d_h0.exact and d_h0.frac <= pf + 2 else dyadic(hv, frac=pf)
        fs, fh = d_m.fmt(), d_h.fmt()
        acc = scale_shift_format(fx, fs, fh)
        if acc.width > 62:
            raise FormatError(f"node {self._where(node)!r}: requantizer x*scale+shift needs {acc.width} bits")
        exact = d_m.exact and d_h.exact
        # worst error of x*M+H before the output cast, in LSBs of the output (of the exact sum when out is None)
        xmax = max(abs(fx.min), abs(fx.max))
        err = xmax * float(np.max(np.abs(d_m.approx - d_m.values), initial=0.0)) + \
            float(np.max(np.abs(d_h.approx - d_h.values), initial=0.0))
        rec = {"node": self._where(node), "why": why, "exact": exact, "scale_bits": fs.width}
        if out is not None:
            rec["err_lsb"] = err / out.step
        self.requants.append(rec)
        return self._add("scale_shift", node, [t], self.tensors[t].shape, out or acc,
                         {"scale": Constant(d_m.codes, fs), "shift": Constant(d_h.codes, fh)}, acc=acc)

    def _materialize(self, node, v: _Val) -> str:
        """The IR tensor holding the view's real values (scale_shift, relu as needed)."""
        if v.kind != "act":
            raise UnsupportedError(f"node {self._where(node)!r}: expected an activation")
        t = v.tensor
        if not (np.all(v.m == 1) and not np.any(v.h)):
            t = self._scale_shift(node, t, v.m, v.h, None, "affine view materialized")
        if v.relu:
            t = self._add("relu", node, [t], self.tensors[t].shape, self.tensors[t].fmt)
        return t

    def _requant(self, node, v: _Val, scale: np.ndarray, bits: int, signed: bool, narrow: bool,
                 rounding: str, lohi: tuple[int, int] | None = None) -> tuple[str, np.ndarray]:
        """Round and clamp the view to ``bits``-bit codes of ``scale``: (IR tensor, u) with ``code*scale = IR*u``;
        ``lohi``: a code range narrower than the format's (QDQ zero points), kept by a ``clip``."""
        s = _vec(scale)
        if is_pow2(s) and np.all(s == s[0]):
            e, u = pow2_exponent(float(s[0])), np.ones(1)
        else:
            e, u = 0, s
        sym = narrow and signed and bits > 1 and _sat_sym_is_symmetric()
        fmt = FxFormat(bits, bits + e, signed, rounding, "SAT_SYM" if sym else "SAT")  # value = code * 2**e
        mult, shift = v.m / u, v.h / u
        src = self.tensors[v.tensor].fmt
        if np.all(mult == 1) and not np.any(shift) and src.frac_bits == fmt.frac_bits and src.signed == fmt.signed \
                and src.width <= fmt.width and (fmt.overflow != "SAT_SYM" or src.overflow == "SAT_SYM"):
            t = v.tensor  # already codes of fmt (the same scale re-quantized after MaxPool/Flatten): no cast
        elif np.all(mult == 1) and not np.any(shift):
            t = self._cast(node, v.tensor, fmt)
        else:
            t = self._scale_shift(node, v.tensor, mult, shift, fmt, "requantize")
        if lohi is None and narrow and not sym:  # unsigned narrow range [0, 2**b - 2]: an explicit clip
            lohi = (-(1 << (bits - 1)) + 1 if signed else 0, (1 << (bits - 1)) - 1 if signed else (1 << bits) - 2)
        if lohi is not None and tuple(lohi) != _natural_range(bits, signed, sym):
            t = self._add("clip", node, [t], self.tensors[t].shape, fmt, attrs={"lo": lohi[0], "hi": lohi[1]})
        if v.relu:  # relu(round(y)) == round(relu(y)): the deferred ReLU runs on the codes
            t = self._add("relu", node, [t], self.tensors[t].shape, fmt)
        return t, u

    def _bind_input(self, node, fmt: FxFormat, meta: dict[str, Any], onnx_name: str) -> str:
        """Give graph input ``onnx_name`` its IR tensor (format ``fmt``); ``meta``: how float data becomes codes."""
        t = self._new_tensor(onnx_name, self.pending_inputs[onnx_name], fmt)
        self.input_tensors[onnx_name] = t
        self.input_meta[onnx_name].update(meta)
        return t

    # ---------------------------------------------------------------- conversion
    def convert(self) -> Graph:
        g = self.g
        for i in g.input:
            if i.name in self.inits:
                continue
            shape = _shape_of(i)
            if shape is None:
                raise BadInputError(f"graph input {i.name!r} needs a static per-sample shape")
            self.pending_inputs[i.name] = shape
        if not self.pending_inputs:
            raise BadInputError("the ONNX graph has no data input")
        self.input_tensors: dict[str, str | None] = {k: None for k in self.pending_inputs}
        self.input_meta: dict[str, dict[str, Any]] = {k: {} for k in self.pending_inputs}
        props = {p.key: p.value for p in self.m.metadata_props}
        for name in self.pending_inputs:
            perm = props.get(f"qfx.input_perm:{name}") or \
                (props.get("qfx.input_perm") if len(self.pending_inputs) == 1 else None)
            if perm:
                self.input_meta[name]["input_perm"] = [int(p) for p in perm.split(",")]
        live = set(self.pending_inputs)  # tensors computed from the data inputs
        for n in g.node:  # refuse dynamic quantization, ops qfx has no handler for and activation-by-activation
            if n.op_type in DYNAMIC_QUANT_OPS:  # Gemms up front (not after an unrelated complaint about a node before)
                full = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                raise UnsupportedError(f"unsupported ONNX op {full!r} (node {self._where(n)!r}): {DYNAMIC_QUANT}")
            if n.domain in ("", "ai.onnx") and n.op_type not in HANDLERS and n.op_type not in QONNX_OPS and \
                    n.op_type not in self._MS_QOPS:
                raise UnsupportedError(f"unsupported ONNX op {n.op_type!r} (node {self._where(n)!r}): "
                                       f"{REFUSALS.get(n.op_type, _GENERIC)}")
            if any(i in live for i in n.input):
                live.update(n.output)
            if n.op_type == "Gemm" and n.domain in ("", "ai.onnx") and len(n.input) > 1 and \
                    n.input[0] in live and n.input[1] in live:  # MatMul of two activations: the matmul op
                raise UnsupportedError(f"unsupported {n.op_type} of two computed tensors (node {self._where(n)!r}, "
                                       f"e.g. attention scores Q*K^T): qfx multiplies activations only by constant "
                                       f"weights; {_CUT}")
        anns = _annotations(g)
        for iname, ishape in self.pending_inputs.items():
            ann = anns.get(iname)
            fin = self.input_fmt
            if fin is None and ann is not None:
                fin = parse_qonnx_datatype(ann)
                if fin is not None:
                    self.report.append(f"input {iname!r}: format {fin.ap_type()} from its QONNX datatype {ann}")
            if fin is not None:
                self.input_tensors[iname] = self._new_tensor(iname, ishape, fin)
                self.vals[iname] = _Val("act", tensor=self.input_tensors[iname])
            else:
                self.vals[iname] = _Val("input", tensor=iname)
        for n in g.node:
            self._convert_node(n)
        for iname, t in self.input_tensors.items():
            if t is None:
                raise BadInputError(f"graph input {iname!r} is a float tensor that no Quant node quantizes; "
                                    f"{INPUT_FORMAT_HINT}, or add a QONNX datatype annotation")
        ins = tuple(t for t in self.input_tensors.values() if t is not None)
        metas = [self.input_meta[k] for k in self.input_tensors]
        if len(ins) == 1:
            self.meta.update(metas[0])
        elif any(metas):
            self.meta["input_meta"] = metas
        outs, scales = [], []
        for o in g.output:
            v = self.vals.get(o.name) or (_Val("const", self.inits[o.name]) if o.name in self.inits else None)
            if v is not None and v.kind == "const" and any(self.vals.get(p.name, _Val("const")).kind == "act"
                                                           for p in g.output):
                # Brevitas return_quant_tensor=True exports the output's scale/zero point/bit width as outputs
                self.report.append(f"constant graph output {o.name!r} dropped (qfx outputs computed tensors)")
                continue
            if v is None or v.kind != "act":
                raise BadInputError(f"graph output {o.name!r} is not computed from the input")
            if v.relu or np.any(v.h):
                t = self._materialize(_FakeNode(o.name), v)
                v = _Val("act", tensor=t)
            outs.append(v.tensor)
            scales.append(None if np.all(v.m == 1) else [float(x) for x in v.m])
        if any(s is not None for s in scales):
            self.meta["output_scale"] = scales
        used = {t for n in self.nodes for t in (*n.inputs, n.output)} | set(ins)
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        name = g.name or "onnx_model"
        approx = [r for r in self.requants if not r["exact"]]
        if self.requants:
            self.report.append(f"{len(self.requants)} scale_shift requantizer(s), {len(approx)} with dyadic "
                               f"approximations of non-power-of-two scales (worst error before rounding "
                               f"{max((r.get('err_lsb', 0.0) for r in approx), default=0.0):.1e} output LSB)")
        meta = {"imported_from": "onnx", "producer": self.m.producer_name, **self.meta}
        if self.report:
            meta["import_report"] = list(self.report)
        graph = Graph(name, ins, tuple(outs), tensors, tuple(self.nodes), meta).validate()
        from qfx.ir.passes import run_flow

        return run_flow(graph, ["check_formats"]).graph

    def _convert_node(self, n) -> None:
        op = n.op_type
        where = self._where(n)
        if len(n.output) < 1:
            raise BadInputError(f"node {where!r} has no output")
        if n.domain in ("", "ai.onnx") and op in self._MS_QOPS and op != "QGemm":
            raise UnsupportedError(f"unsupported ONNX op {op!r} (node {where!r}): {op} is an onnxruntime op of domain "
                                   f"'com.microsoft', not of the default domain; set the node's domain, or "
                                   f"re-quantize in the QDQ format (quant_format=QuantFormat.QDQ)")
        if n.domain == QONNX_DOMAIN and op in QONNX_OPS or n.domain in ("", "ai.onnx") and op not in QONNX_OPS or \
                n.domain == "com.microsoft" and (op in ("QuantizeLinear", "DequantizeLinear") or
                                                 op in self._MS_QOPS):  # onnxruntime's own
            handler = HANDLERS.get(op)
            if handler is not None:
                handler(self, n)
                if op in self._INT_MOVES and n.input and n.input[0] in self.qdq:  # codes moved: same scale
                    self.qdq[n.output[0]] = self.qdq[n.input[0]]
                return
        hint = REFUSALS.get(op, _GENERIC)
        full = f"{n.domain}.{op}" if n.domain not in ("", "ai.onnx") else op
        raise UnsupportedError(f"unsupported ONNX op {full!r} (node {where!r}): {hint}")

    # ---------------------------------------------------------------- handlers: constants and aliases
    def h_constant(self, n) -> None:
        val = constant_value(n)
        if val is None:
            raise UnsupportedError(f"Constant node {self._where(n)!r} without a tensor, float or int value")
        self.vals[n.output[0]] = _Val("const", val)

    def h_identity(self, n) -> None:
        self.vals[n.output[0]] = self._get(n.input[0], n)

    def _const_map(self, v: _Val, fn: Callable[[np.ndarray], np.ndarray]) -> _Val:
        return _Val("const", fn(np.asarray(v.values)), v.fmt, None if v.codes is None else fn(v.codes),
                    None if v.cscale is None else fn(np.broadcast_to(v.cscale, np.shape(v.codes))))

    def h_transpose(self, n) -> None:
        v = self._get(n.input[0], n)
        perm = _attrs(n).get("perm")
        if v.kind == "const":
            self.vals[n.output[0]] = self._const_map(v, lambda a: np.transpose(a, perm) if perm is not None else a.T)
            return
        x = self._act(n.input[0], n)
        rank = len(self.tensors[x.tensor].shape) + 1
        perm = list(range(rank))[::-1] if perm is None else [int(p) for p in perm]
        if "transpose" not in REGISTRY or perm[0] != 0:
            raise UnsupportedError(f"unsupported Transpose of an activation (node {self._where(n)!r}) with perm "
                                   f"{perm}: qfx folds layout transposes at the input, around channels-last "
                                   f"Conv/MaxPool and before Flatten+MatMul; export the model channels-first")
        self._gather(n, x, "transpose", {"perm": tuple(p - 1 for p in perm[1:])}, keeps_channels=perm[1] == 1)

    # ---------------------------------------------------------------- handlers: quantizers
    def _quant_params(self, n, names: list[str]) -> list[np.ndarray]:
        out = []
        for i in names:
            v = self._get(i, n)
            if v.kind != "const":
                raise UnsupportedError(f"{n.op_type} node {self._where(n)!r} has a computed scale/zero point/bit width")
            out.append(np.asarray(v.values))
        return out

    def h_quant(self, n) -> None:
        where = self._where(n)
        if len(n.input) != 4:
            raise BadInputError(f"Quant node {where!r} needs inputs x, scale, zeropt, bitwidth")
        a = _attrs(n)
        sc, zp, bw = self._quant_params(n, list(n.input[1:4]))
        bits = np.asarray(bw, dtype=np.float64).ravel()
        if bits.size != 1 or bits[0] != math.floor(bits[0]) or not 1 <= bits[0] <= 53:
            raise UnsupportedError(f"Quant node {where!r} has bit width {bits.tolist()}; need one integer in 1..53")
        b = int(bits[0])
        if np.any(np.asarray(zp, dtype=np.float64) != 0):
            raise UnsupportedError(f"Quant node {where!r} has a non-zero zero point; qfx needs zero point 0 "
                                   f"(symmetric quantization)")
        s = np.asarray(sc, dtype=np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise FormatError(f"Quant node {where!r} has a non-positive or non-finite scale")
        signed = bool(int(a.get("signed", 1)))
        narrow = bool(int(a.get("narrow", 0)))
        rm = _attr_str(a, "rounding_mode", "ROUND").upper()
        if rm not in _ROUNDING:
            raise UnsupportedError(f"Quant node {where!r} has rounding mode {rm!r} with no ap_fixed equivalent")
        if b == 1 and signed:  # QONNX executes a signed 1-bit Quant as a bipolar quantizer
            return self._bipolar(n, sc)
        rounding = _ROUNDING[rm]
        lo = -(1 << (b - 1)) + narrow if signed else 0
        hi = (1 << (b - 1)) - 1 if signed else (1 << b) - 1 - narrow
        self._quantize(n, sc, b, signed, narrow, rounding, lo, hi)

    def _quantize(self, n, sc: np.ndarray, b: int, signed: bool, narrow: bool, rounding: str, lo: int,
                  hi: int) -> None:
        """``clip(round(x / sc), lo, hi) * sc`` into ``n.output[0]`` (QONNX Quant, QDQ pairs): constants folded,
        the graph input bound to a format, activations requantized (codes are ``b``-bit, signed or not)."""
        where = self._where(n)
        s = np.asarray(sc, dtype=np.float64)
        x = self._get(n.input[0], n)
        if x.kind == "const":
            self.vals[n.output[0]] = self._quant_const(n, x, sc, b, signed, rounding, lo, hi)
            return
        if x.kind == "input":
            if s.size != 1:
                raise UnsupportedError(f"Quant node {where!r} quantizes the graph input per channel; "
                                       f"{INPUT_FORMAT_HINT}")
            sym = narrow and signed and b > 1 and _sat_sym_is_symmetric()
            ovf = "SAT_SYM" if sym else "SAT"
            if is_pow2(s):
                t = self._bind_input(n, FxFormat(b, b + pow2_exponent(float(s.ravel()[0])), signed, rounding, ovf), {},
                                     x.tensor)
                u = np.ones(1)
            else:
                t = self._bind_input(n, FxFormat(b, b, signed, rounding, ovf), {"input_scale": float(s.ravel()[0])},
                                     x.tensor)
                u = _vec(s)
            self.vals[x.tensor] = _Val("act", tensor=t, m=u)
            if (lo, hi) != _natural_range(b, signed, sym):
                t = self._add("clip", n, [t], self.tensors[t].shape, self.tensors[t].fmt, attrs={"lo": lo, "hi": hi})
            self.vals[n.output[0]] = _Val("act", tensor=t, m=u)
            return
        if x.kind == "act" and x.pure and x.tensor in self.tables and s.size == 1 and self._single_use(x.tensor):
            self.vals[n.output[0]] = self._refit_table(n, x.tensor, float(s.ravel()[0]), b, signed, narrow, rounding,
                                                       lo, hi)
            return
        scale = self._chan(s, x, n, "scale") if s.size > 1 else _vec(s)
        t, u = self._requant(n, x, scale, b, signed, narrow, rounding, (lo, hi))
        self.vals[n.output[0]] = _Val("act", tensor=t, m=u)

    def _quant_const(self, n, x: _Val, sc: np.ndarray, b: int, signed: bool, rounding: str, lo: int,
                     hi: int) -> _Val:
        """QONNX Quant of a constant, exactly as QONNX computes it (``x / scale`` in the initializer's dtype)."""
        from qfx.fixed.kernels import codes_from_double

        v = np.asarray(x.values)
        dt = v.dtype if v.dtype in (np.float32, np.float64) else np.float64
        scale = _broadcast_scale(np.asarray(sc, dtype=np.float64), v.shape)
        q = (v.astype(dt) / scale.astype(dt)).astype(np.float64)  # the division QONNX does, in its dtype
        codes = np.clip(codes_from_double(q, FxFormat(62, 62, True, rounding, "SAT")), lo, hi)
        vals = codes.astype(np.float64) * scale
        s = np.asarray(sc, dtype=np.float64)
        if s.size == 1 and is_pow2(s):
            fmt = FxFormat(b, b + pow2_exponent(float(s.ravel()[0])), signed)
            return _Val("const", vals, fmt)
        return _Val("const", vals, None, codes, np.ascontiguousarray(scale))

    # ---------------------------------------------------------------- handlers: ONNX QDQ
    _QDQ_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int16): (-32768, 32767),
                   np.dtype(np.uint16): (0, 65535), np.dtype(np.int32): (-(1 << 31), (1 << 31) - 1)}

    def _qdq_params(self, n) -> tuple[np.ndarray, np.ndarray, tuple[int, int], int]:
        """(scale, zero point, integer range, axis) of a QuantizeLinear/DequantizeLinear node."""
        where = self._where(n)
        if len(n.input) < 2:
            raise BadInputError(f"{n.op_type} node {where!r} needs inputs x, scale")
        a = _attrs(n)
        (sc,) = self._quant_params(n, [n.input[1]])
        if len(n.input) > 2 and n.input[2]:
            (zp,) = self._quant_params(n, [n.input[2]])
            dt = np.asarray(zp).dtype
        else:
            zp = np.zeros(1, dtype=np.int64)
            if n.op_type == "DequantizeLinear":
                dt = np.dtype(np.uint8)  # the default type; an integer constant input says its own below
            else:
                from onnx import helper

                dt = np.dtype(helper.tensor_dtype_to_np_dtype(int(a.get("output_dtype", 0)) or 2))
        if n.op_type == "DequantizeLinear" and n.input[0] not in self.qdq:
            v = self._get(n.input[0], n)
            if v.kind == "const" and np.issubdtype(np.asarray(v.values).dtype, np.integer):
                dt = np.asarray(v.values).dtype
        if dt not in self._QDQ_RANGES:
            raise UnsupportedError(f"{n.op_type} node {where!r} uses integer type {dt}; qfx maps int8/uint8/int16/"
                                   f"uint16/int32 QDQ (not float8/int4)")
        s = np.asarray(sc, dtype=np.float64)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise FormatError(f"{n.op_type} node {where!r} has a non-positive or non-finite scale")
        if int(a.get("block_size", 0)):
            raise UnsupportedError(f"{n.op_type} node {where!r} uses blocked quantization; qfx takes per-tensor or "
                                   f"per-axis scales")
        return s, np.asarray(zp, dtype=np.int64), self._QDQ_RANGES[dt], int(a.get("axis", 1))

    @staticmethod
    def _along(v: np.ndarray, axis: int, rank: int) -> np.ndarray:
        """A per-axis vector shaped to broadcast along ``axis`` of a rank-``rank`` tensor (scalars unchanged)."""
        v = np.asarray(v)
        if v.size == 1 or rank == 0:
            return v.reshape(()) if v.size == 1 else v
        ax = axis % rank
        return v.reshape([-1 if i == ax else 1 for i in range(rank)])

    def h_quantize_linear(self, n, check_readers: bool = True) -> None:
        """QuantizeLinear (read only by DequantizeLinear): ``clip(round_half_even(x / s) + zp) - zp`` codes of
        scale ``s``, i.e. a Quant whose code range is ``[qmin - zp, qmax - zp]`` (a clip where that is narrower
        than the format); non-power-of-two scales requantize with dyadic constants as for QONNX Quant."""
        where = self._where(n)
        out = n.output[0]
        bad = self._int_misuse(out) if check_readers else None
        if bad is not None:
            raise UnsupportedError(f"QuantizeLinear node {where!r}: its integer codes reach {bad}; qfx maps QDQ pairs "
                                   f"and the QOperator ops it imports: quantize with quant_format=QuantFormat.QDQ")
        s, zp, (qmin, qmax), axis = self._qdq_params(n)
        if zp.size > 1 and not np.all(zp == zp.ravel()[0]):
            raise UnsupportedError(f"QuantizeLinear node {where!r} has per-axis zero points; qfx takes one zero "
                                   f"point for a computed tensor")
        z = int(zp.ravel()[0])
        lo, hi = qmin - z, qmax - z
        if lo > 0 or hi < 0:
            raise UnsupportedError(f"QuantizeLinear node {where!r}: zero point {z} lies outside the integer range")
        signed = lo < 0
        bits = max((-lo - 1).bit_length(), hi.bit_length()) + 1 if signed else max(1, hi.bit_length())
        x = self._get(n.input[0], n)
        if x.kind == "const" and s.size > 1:
            s = self._along(s, axis, np.ndim(x.values))
        elif s.size > 1 and axis not in (1, -len(self.tensors[x.tensor].shape) - 1 if x.kind == "act" else 1):
            raise UnsupportedError(f"QuantizeLinear node {where!r} quantizes a computed tensor per axis {axis}; qfx "
                                   f"takes per-channel (axis 1) scales")
        self._quantize(n, s, bits, signed, False, "RND_CONV", lo, hi)
        self.qdq[out] = (np.asarray(s).ravel(), z)

    #: ops that move integer codes without arithmetic (their output keeps the input's scale and zero point)
    _INT_MOVES = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
    #: QOperator ops of onnxruntime's com.microsoft domain that qfx maps (besides its QuantizeLinear/DequantizeLinear)
    _MS_QOPS = frozenset({"QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
                          "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu"})
    #: integer (QOperator) ops qfx maps: they read codes of a known scale and zero point
    _INT_READERS = frozenset({"DequantizeLinear", "QLinearConv", "QLinearMatMul"}) | _MS_QOPS

    def _int_misuse(self, t: str) -> str | None:
        """What reads integer tensor ``t`` other than DequantizeLinear or a QOperator op qfx maps (``_INT_READERS``;
        directly or through a Clip (QCDQ) or ops that only move codes: MaxPool, Reshape, ...); None if nothing does."""
        if any(o.name == t for o in self.g.output):
            return "the graph output"
        for nd in self.g.node:
            if t not in nd.input or nd.op_type in self._INT_READERS:
                continue
            if nd.input[0] == t and (nd.op_type == "Clip" or nd.op_type in self._INT_MOVES):
                bad = self._int_misuse(nd.output[0])
                if bad is None:
                    continue
                return bad
            full = f"{nd.domain}.{nd.op_type}" if nd.domain not in ("", "ai.onnx") else nd.op_type
            return f"{full} node {self._where(nd)!r}"
        return None

    def _qlinear_input(self, n, k: int) -> None:
        """Input ``k`` (with its scale and zero point at k+1, k+2) of a QLinear op must be codes of that scale."""
        rec = self.qdq.get(n.input[k])
        (s,) = self._quant_params(n, [n.input[k + 1]])
        (z,) = self._quant_params(n, [n.input[k + 2]]) if len(n.input) > k + 2 and n.input[k + 2] else (0,)
        if rec is None or not (np.array_equal(rec[0], np.asarray(s, np.float64).ravel()) and
                               np.all(np.asarray(z) == rec[1])):
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r}: input {n.input[k]!r} is not the output of "
                                   f"a QuantizeLinear/QLinear op with this scale and zero point")

    def _qlinear_const(self, n, k: int, name: str, axis: int = 0) -> str:
        """Integer constant input ``k`` with scale/zero point at k+1, k+2, dequantized (per ``axis``) into a
        synthetic value ``name``."""
        from onnx import helper

        zp = [n.input[k + 2]] if len(n.input) > k + 2 and n.input[k + 2] else []
        dq = helper.make_node("DequantizeLinear", [n.input[k], n.input[k + 1], *zp], [name],
                              name=f"{self._where(n)}_{name}", axis=axis)
        self.h_dequantize_linear(dq)
        return name

    def h_qlinear(self, n) -> None:
        """QOperator QLinearConv / QLinearMatMul: dequantized input and weights (codes and scales, as a QDQ model
        writes them), the float op, then a QuantizeLinear to ``y_scale``/``y_zero_point`` (same requantizer)."""
        from onnx import helper

        where = self._where(n)
        conv, gemm = n.op_type == "QLinearConv", n.op_type == "QGemm"
        if len(n.input) < (6 if gemm else 8):
            raise BadInputError(f"{n.op_type} node {where!r} needs {6 if gemm else 8} inputs")
        self._qlinear_input(n, 0)
        if n.input[3] in self.qdq or self._get(n.input[3], n).kind != "const":
            raise UnsupportedError(f"{n.op_type} node {where!r} multiplies two computed tensors; qfx needs constant "
                                   f"weights")
        base = _clean_name(where)
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = self._qlinear_const(n, 3, f"{base}__w", axis=0 if conv or gemm and attrs.get("transB", 0) else 1)
        ins = [n.input[0], w]
        bias_at = 8 if conv else 6 if gemm else None
        if bias_at is not None and len(n.input) > bias_at and n.input[bias_at]:
            # int32 bias of scale x_scale * w_scale, zero point 0
            (sx,) = self._quant_params(n, [n.input[1]])
            (sw,) = self._quant_params(n, [n.input[4]])
            b = np.asarray(self._get(n.input[bias_at], n).values).astype(np.int64)
            sb = np.broadcast_to(np.asarray(sx, np.float64).ravel()[0] * np.asarray(sw, np.float64).ravel(), b.shape)
            self.vals[f"{base}__b"] = _Val("const", b * sb, None, b, np.ascontiguousarray(sb))
            ins.append(f"{base}__b")
        ys = 7 if gemm else 6
        if gemm and (len(n.input) <= ys or not n.input[ys]):  # QGemm without y_scale: a float output
            mid = n.output[0]
        else:
            mid = f"{base}__acc"
            self.consumers[mid] = 1
        kind = "Conv" if conv else "Gemm" if gemm else "MatMul"
        fl = helper.make_node(kind, ins, [mid], name=where, **attrs)
        {"Conv": self.h_conv, "Gemm": self.h_gemm, "MatMul": self.h_matmul}[kind](fl)
        if mid != n.output[0]:
            zp = [n.input[ys + 1]] if len(n.input) > ys + 1 and n.input[ys + 1] else []
            q = helper.make_node("QuantizeLinear", [mid, n.input[ys], *zp], [n.output[0]], name=where)
            self.h_quantize_linear(q, check_readers=False)

    # ---------------------------------------------------------------- handlers: onnxruntime's QOperator ops
    def _qlinear_operand(self, n, k: int, name: str) -> str:
        """Operand ``k`` of a QOperator op (its scale and zero point at k+1, k+2) as the name of its real value: the
        codes of a QuantizeLinear/QLinear op (checked to carry this scale and zero point), or an integer constant
        dequantized into ``name``."""
        src = n.input[k]
        if src not in self.qdq and self._get(src, n).kind == "const":
            return self._qlinear_const(n, k, name)
        self._qlinear_input(n, k)
        return src

    def _qlinear_out(self, n, mid: str, ys: int, like: int) -> None:
        """QuantizeLinear of the real value ``mid`` to the op's output scale and zero point (inputs ``ys``, ``ys+1``)
        into ``n.output[0]``; an absent output zero point is a zero of the type of zero point input ``like``."""
        from onnx import helper

        zp = n.input[ys + 1] if len(n.input) > ys + 1 and n.input[ys + 1] else ""
        if not zp:
            dt = np.asarray(self._get(n.input[like], n).values).dtype if len(n.input) > like and n.input[like] \
                else np.dtype(np.uint8)
            zp = f"{_clean_name(self._where(n))}__y_zp"
            self.vals[zp] = _Val("const", np.zeros((), dtype=dt))
        q = helper.make_node("QuantizeLinear", [mid, n.input[ys], zp], [n.output[0]], name=self._where(n))
        self.h_quantize_linear(q, check_readers=False)

    def _mid(self, n, suffix: str) -> str:
        """A synthetic ONNX name for an intermediate real value of QOperator node ``n`` (read once)."""
        name = f"{_clean_name(self._where(n))}__{suffix}"
        self.consumers[name] = 1
        return name

    def _in_units(self, n, v: _Val, unit: np.ndarray) -> _Val:
        """Activation ``v`` as an IR tensor counted in units of ``unit`` (its view becomes ``m == unit``, ``h == 0``):
        a lossless dyadic ``scale_shift`` (exact products of the codes) unless it is already."""
        if v.relu:
            v = _Val("act", tensor=self._materialize(n, v))
        if v.m.size == unit.size and np.array_equal(v.m, unit) and not np.any(v.h):
            return v
        t = self._scale_shift(n, v.tensor, v.m / unit, v.h / unit, None, "operand in units of the output scale")
        return _Val("act", tensor=t, m=unit)

    def _broadcast_pair(self, n, a: _Val, b: _Val) -> tuple[_Val, _Val]:
        """Two activations of one shape: an operand with size-1 axes is repeated along them to the other's shape
        (ONNX broadcasting between per-sample shapes of one rank; ``_repeat_to``)."""
        sa, sb = self.tensors[a.tensor].shape, self.tensors[b.tensor].shape
        if sa == sb:
            return a, b
        if "upsample2d" in REGISTRY:
            if _fits(sa, sb):
                return self._repeat_to(n, a, sb), b
            if _fits(sb, sa):
                return a, self._repeat_to(n, b, sa)
        raise UnsupportedError(f"{n.op_type} node {self._where(n)!r}: operand shapes {sa} and {sb} (per sample) "
                               f"differ; qfx broadcasts an operand with size-1 axes against one of the same rank; "
                               f"{_CUT}")

    def _repeat_to(self, n, v: _Val, big: tuple[int, ...]) -> _Val:
        """``v`` repeated along its size-1 axes to ``big``: a (C, 1, 1) gate against (C, H, W) (squeeze-excitation)
        is one ``upsample2d``; a row statistic (C, H, 1), a per-sample one (1,) against (n,), or a channel map
        (1, H, W) is repeated one axis at a time, each a reshape to (P, 1, Q) and an ``upsample2d`` by (size, 1)
        (wires and copies: exact). The view is per channel (axis 0): a repeated axis 0 had one channel, so its view
        is one value."""
        small = self.tensors[v.tensor].shape
        base = f"{self._where(n)}_broadcast"
        if len(small) == 3 and small == (big[0], 1, 1):
            t = self._add("upsample2d", _FakeNode(base), [v.tensor], big, self.tensors[v.tensor].fmt,
                          attrs={"scale": (big[1], big[2])})
            return _Val("act", tensor=t, m=v.m, h=v.h, relu=v.relu)
        t, cur = v.tensor, list(small)
        fmt = self.tensors[t].fmt
        for k, g in enumerate(big):
            if cur[k] == g:
                continue
            p, q = int(np.prod(cur[:k])), int(np.prod(cur[k + 1:]))
            if self.tensors[t].shape != (p, 1, q):
                t = self._add("reshape", _FakeNode(f"{base}{k}_in"), [t], (p, 1, q), fmt, attrs={"shape": (p, 1, q)})
            t = self._add("upsample2d", _FakeNode(f"{base}{k}"), [t], (p, g, q), fmt, attrs={"scale": (g, 1)})
            cur[k] = g
        if self.tensors[t].shape != tuple(big):
            t = self._add("reshape", _FakeNode(f"{base}_out"), [t], tuple(big), fmt, attrs={"shape": tuple(big)})
        return _Val("act", tensor=t, m=v.m, h=v.h, relu=v.relu)

    def h_expand(self, n) -> None:
        """Expand of an activation along its size-1 per-sample axes (``x.expand(-1, c, h, w)``): ``_repeat_to``."""
        v = self._get(n.input[0], n)
        shp = [int(d) for d in self._int_list(n.input[1], n)]
        if v.kind == "const":
            self.vals[n.output[0]] = self._const_map(v, lambda z: np.asarray(z) * np.ones(shp, dtype=np.asarray(z).dtype))
            return
        x = self._act(n.input[0], n)
        small = self.tensors[x.tensor].shape
        full = tuple(np.broadcast_shapes((1, *small), tuple(shp)))
        if len(full) != len(small) + 1:
            raise UnsupportedError(f"Expand node {self._where(n)!r} adds axes; qfx repeats along existing size-1 "
                                   f"axes; {_CUT}")
        big = tuple(full[1:])
        if big == small:
            self.vals[n.output[0]] = x
            return
        if "upsample2d" not in REGISTRY or not _fits(small, big):
            raise UnsupportedError(f"Expand node {self._where(n)!r} from {small} to {big}; {_CUT}")
        self.vals[n.output[0]] = self._repeat_to(n, x, big)

    def _mul_acts(self, n, a: _Val, b: _Val) -> None:
        """The exact product of two activations (``mul``: output width the sum of both): a view with an offset or a
        ReLU is materialized first, the views' multipliers multiply (real = IR_a * IR_b * m_a * m_b). Gates
        (SiLU's ``x * sigmoid(x)``, squeeze-excitation, GLU) need no rounding before the next quantizer."""
        a, b = self._broadcast_pair(n, a, b)
        vs = [_Val("act", tensor=self._materialize(n, v)) if v.relu or np.any(v.h) else v for v in (a, b)]
        ta, tb = self.tensors[vs[0].tensor], self.tensors[vs[1].tensor]
        t = self._add("mul", n, [vs[0].tensor, vs[1].tensor], ta.shape, ta.fmt.mul_format(tb.fmt))
        self.vals[n.output[0]] = _Val("act", tensor=t, m=vs[0].m * vs[1].m)

    def h_qlinear_binary(self, n) -> None:
        """com.microsoft QLinearAdd / QLinearMul: ``C = quantize(deq(A) op deq(B))`` to C's scale and zero point.
        QLinearAdd of two computed tensors brings each to units of C's scale (a lossless dyadic ``scale_shift``
        where the scales differ) and adds exactly, so C's cast is the one rounding; QLinearMul multiplies the codes
        exactly (``mul``) and requantizes by ``s_A * s_B / s_C``. A constant operand (integer initializer with its
        own scale and zero point) folds into the view, as for Add/Mul by a constant."""
        from onnx import helper

        where = self._where(n)
        if len(n.input) < 7:
            raise BadInputError(f"{n.op_type} node {where!r} needs inputs A, A_scale, A_zero_point, B, B_scale, "
                                f"B_zero_point, C_scale[, C_zero_point]")
        base = _clean_name(where)
        a, b = self._qlinear_operand(n, 0, f"{base}__a"), self._qlinear_operand(n, 3, f"{base}__b")
        va, vb = self._get(a, n), self._get(b, n)
        mid = self._mid(n, "acc")
        kind = "Add" if n.op_type == "QLinearAdd" else "Mul"
        fl = helper.make_node(kind, [a, b], [mid], name=where)
        if va.kind == "act" and vb.kind == "act":
            va, vb = self._broadcast_pair(n, va, vb)
            if kind == "Add":
                (sc,) = self._quant_params(n, [n.input[6]])
                unit = self._chan(sc, va, n, "C_scale") if np.size(sc) > 1 else _vec(sc)
                self._add_acts(fl, self._in_units(n, va, unit), self._in_units(n, vb, unit))
            else:
                self._mul_acts(fl, va, vb)
        elif va.kind == "const" and vb.kind == "const":
            raise UnsupportedError(f"{n.op_type} node {where!r} combines two constants; fold it before import")
        else:
            (self.h_add if kind == "Add" else self.h_mul)(fl)
        self._qlinear_out(n, mid, 6, 2)

    def h_qlinear_pool(self, n) -> None:
        """com.microsoft QLinearGlobalAveragePool / QLinearAveragePool: AveragePool of the dequantized input
        (``avgpool2d``: the exact window sum, 1/(kh*kw) exact for power-of-two windows, else in the requantizer),
        quantized to y's scale and zero point. ``channels_last=1`` inputs (N, H, W, C) are transposed to
        channels-first and back around the pool."""
        from onnx import helper

        where = self._where(n)
        if len(n.input) < 4:
            raise BadInputError(f"{n.op_type} node {where!r} needs inputs X, x_scale, x_zero_point, y_scale"
                                f"[, y_zero_point]")
        x = self._qlinear_operand(n, 0, f"{_clean_name(where)}__x")
        rank = len(self.tensors[self._act(x, n).tensor].shape) + 1
        a = _attrs(n)
        last = bool(int(a.pop("channels_last", 0)))
        if last:
            xt = self._mid(n, "channels_first")
            self.h_transpose(helper.make_node("Transpose", [x], [xt], name=where,
                                              perm=[0, rank - 1, *range(1, rank - 1)]))
            x = xt
        mid = self._mid(n, "pool")
        kind = "GlobalAveragePool" if n.op_type == "QLinearGlobalAveragePool" else "AveragePool"
        self.h_avgpool(helper.make_node(kind, [x], [mid], name=where, **a))
        if last:
            back = self._mid(n, "channels_last")
            self.h_transpose(helper.make_node("Transpose", [mid], [back], name=where, perm=[0, *range(2, rank), 1]))
            mid = back
        self._qlinear_out(n, mid, 3, 2)

    def h_qlinear_concat(self, n) -> None:
        """com.microsoft QLinearConcat (Y_scale, Y_zero_point, then X, X_scale, X_zero_point per input): each input
        requantized to Y's scale and zero point, as onnxruntime does (nothing where they are equal), then
        ``concat`` of the codes."""
        from onnx import helper

        where = self._where(n)
        if len(n.input) < 5 or (len(n.input) - 2) % 3:
            raise BadInputError(f"QLinearConcat node {where!r} needs Y_scale, Y_zero_point and (X, X_scale, "
                                f"X_zero_point) per input")
        base = _clean_name(where)
        parts = []
        for j, k in enumerate(range(2, len(n.input), 3)):
            x = self._qlinear_operand(n, k, f"{base}__in{j}")
            y = self._mid(n, f"q{j}")
            # QuantizeLinear(x, Y_scale, Y_zero_point); a missing Y_zero_point is a zero of X's type
            fake = helper.make_node("QLinearConcat", [n.input[0], n.input[1], n.input[k + 2]], [y], name=where)
            self._qlinear_out(fake, x, 0, 2)
            parts.append(y)
        self.h_concat(helper.make_node("Concat", parts, [n.output[0]], name=where, axis=int(_attrs(n).get("axis", 1))))
        self.qdq[n.output[0]] = self.qdq[parts[0]]

    def h_qlinear_table(self, n) -> None:
        """com.microsoft QLinearSigmoid / QLinearLeakyRelu: onnxruntime computes a table over the input codes
        (dequantize in float32, the function, quantize to y's scale and zero point); qfx's is a ``lut`` holding the
        output codes (the QuantizeLinear folds into the table: one rounding, of float32 ``f(x) / y_scale``)."""
        from onnx import helper

        where = self._where(n)
        if len(n.input) < 4:
            raise BadInputError(f"{n.op_type} node {where!r} needs inputs X, X_scale, X_zero_point, Y_scale"
                                f"[, Y_zero_point]")
        x = self._qlinear_operand(n, 0, f"{_clean_name(where)}__x")
        xv = self._act(x, n)
        mid = self._mid(n, "fn")
        f32 = np.float32
        if n.op_type == "QLinearSigmoid":
            def fn(v: np.ndarray) -> np.ndarray:
                return 0.5 * (1.0 + np.tanh(0.5 * v.astype(f32).astype(np.float64)))
            spec = "onnx:sigmoid"
        else:
            alpha = f32(_attrs(n).get("alpha", 0.01))

            def fn(v: np.ndarray) -> np.ndarray:  # float32, as onnxruntime evaluates it
                v32 = v.astype(f32)
                return np.where(v32 >= 0, v32, alpha * v32).astype(np.float64)
            spec = f"onnx:leaky_relu({float(alpha)!r})"
        t = self._table(helper.make_node(n.op_type, [x], [mid], name=where), xv, fn, spec)
        self.vals[mid] = _Val("act", tensor=t)
        self._qlinear_out(n, mid, 3, 2)

    def _qdq_clip(self, n, lo: float, hi: float) -> None:
        """Clip of QuantizeLinear's integer output ``q`` (bounds in q's units): the codes ``q - zp`` clipped."""
        src = n.input[0]
        s, z = self.qdq[src]
        if not all(not math.isfinite(b) or b == math.floor(b) for b in (lo, hi)):
            raise UnsupportedError(f"Clip node {self._where(n)!r} clips integer codes by non-integer bounds")
        clo = -(1 << 62) if not math.isfinite(lo) else int(lo) - z
        chi = (1 << 62) if not math.isfinite(hi) else int(hi) - z
        x = self._get(src, n)
        if x.kind == "const":
            sc = np.broadcast_to(x.cscale, np.shape(x.codes)) if x.codes is not None else None
            if x.codes is not None:
                codes = np.clip(x.codes, clo, chi)
                self.vals[n.output[0]] = _Val("const", codes * sc, None, codes, np.ascontiguousarray(sc))
            else:
                step = float(s[0])
                self.vals[n.output[0]] = _Val("const", np.clip(x.values, clo * step, chi * step), x.fmt)
        else:
            fx = self.tensors[x.tensor].fmt
            clo, chi = max(clo, fx.min_code), min(chi, fx.max_code)
            t = self._add("clip", n, [x.tensor], self.tensors[x.tensor].shape, fx, attrs={"lo": clo, "hi": chi})
            self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h, relu=x.relu)
        self.qdq[n.output[0]] = (s, z)

    def h_dequantize_linear(self, n) -> None:
        """DequantizeLinear: of an integer initializer, the constant ``(q - zp) * s`` (weights, int32 biases) kept
        as codes and scales; of a QuantizeLinear output, that Quant's real values (same scale and zero point)."""
        where = self._where(n)
        s, zp, _, axis = self._qdq_params(n)
        src = n.input[0]
        v = self._get(src, n)
        if v.kind == "const" and src not in self.qdq:
            q = np.asarray(v.values)
            if not np.issubdtype(q.dtype, np.integer) and not np.array_equal(q, np.round(q)):
                raise UnsupportedError(f"DequantizeLinear node {where!r} reads non-integer constants")
            q = q.astype(np.int64)
            rank = q.ndim
            codes = q - self._along(zp, axis, rank)
            scale = np.broadcast_to(self._along(s, axis, rank), q.shape).astype(np.float64)
            vals = codes * scale
            if s.size == 1 and is_pow2(s):  # power-of-two scale: the values are exact dyadics
                self.vals[n.output[0]] = _Val("const", vals, _dyadic_codes(vals, f"DequantizeLinear {where!r}")[1])
                return
            self.vals[n.output[0]] = _Val("const", vals, None, np.ascontiguousarray(codes), np.ascontiguousarray(scale))
            return
        rec = self.qdq.get(src)
        if rec is None:
            raise UnsupportedError(f"DequantizeLinear node {where!r} reads {src!r}, which no QuantizeLinear or integer "
                                   f"initializer gives; qfx imports QDQ pairs")
        if not (np.array_equal(rec[0], s.ravel()) and np.all(zp == rec[1])):
            raise UnsupportedError(f"DequantizeLinear node {where!r} uses another scale or zero point than its "
                                   f"QuantizeLinear; qfx imports matching QDQ pairs")
        self.vals[n.output[0]] = self._get(src, n)

    def h_bipolar(self, n) -> None:
        if len(n.input) != 2:
            raise BadInputError(f"BipolarQuant node {self._where(n)!r} needs inputs x, scale")
        (sc,) = self._quant_params(n, [n.input[1]])
        self._bipolar(n, sc)

    def _bipolar(self, n, sc: np.ndarray) -> None:
        """``where(x >= 0, 1, -1) * scale`` (QONNX BipolarQuant) on constants, the input or activations."""
        s = np.asarray(sc, dtype=np.float64)
        if s.size == 0 or np.any(s <= 0) or not np.all(np.isfinite(s)):
            raise FormatError(f"node {self._where(n)!r} has a non-positive or non-finite scale")
        x = self._get(n.input[0], n)
        if x.kind == "const":
            v = np.asarray(x.values)
            codes = np.where(v >= 0, 1, -1).astype(np.int64)
            scale = _broadcast_scale(s, v.shape)
            vals = codes * scale
            if s.size == 1 and is_pow2(s):
                e = pow2_exponent(float(s.ravel()[0]))
                self.vals[n.output[0]] = _Val("const", vals, FxFormat(2, 2 + e, True))
            else:
                self.vals[n.output[0]] = _Val("const", vals, None, codes, np.ascontiguousarray(scale))
            return
        pow2 = s.size == 1 and is_pow2(s)
        e = pow2_exponent(float(s.ravel()[0])) if pow2 else 0
        sym = _sat_sym_is_symmetric()
        fmt = FxFormat(2, 2 + e, True, "TRN", "SAT_SYM" if sym else "SAT")
        if x.kind == "input":
            if s.size != 1:
                raise UnsupportedError(f"BipolarQuant node {self._where(n)!r} quantizes the graph input per channel")
            t = self._bind_input(n, fmt, {"input_quant": "bipolar", "input_unit": 2.0 ** e}, x.tensor)
            self.vals[x.tensor] = _Val("act", tensor=t)
            self.vals[n.output[0]] = _Val("act", tensor=t, m=np.ones(1) if pow2 else _vec(s))
            return
        if x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        t = x.tensor
        fx = self.tensors[t].fmt
        f = fx.frac_bits
        c = self._channels(t)
        m, h = np.broadcast_to(self._full(x.m, t), (c,)), np.broadcast_to(self._full(x.h, t), (c,))
        mult, shift = np.empty(c), np.empty(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = np.where(m != 0, -h / np.where(m != 0, m, 1) * 2.0 ** f, 0.0)  # threshold in input codes
        for k in range(c):
            if m[k] == 0:  # constant sign
                mult[k], shift[k] = 0.0, 1.0 if h[k] >= 0 else -1.0
                continue
            th = float(np.clip(tau[k], fx.min_code - 1, fx.max_code + 1))
            if m[k] > 0:  # real >= 0  <=>  code >= K  ->  2*(code - K) + 1 is odd, sign as wanted
                kk = math.ceil(th)
                mult[k], shift[k] = 2.0 ** (f + 1), 1 - 2 * kk
            else:  # real >= 0  <=>  code <= K
                kk = math.floor(th)
                mult[k], shift[k] = -(2.0 ** (f + 1)), 2 * kk + 1
        out = self._scale_shift(n, t, mult * 2.0 ** e, shift * 2.0 ** e, fmt, "bipolar threshold")
        if not sym:
            out = self._add("clip", n, [out], self.tensors[out].shape, fmt, attrs={"lo": -1, "hi": 1})
        self.vals[n.output[0]] = _Val("act", tensor=out, m=np.ones(1) if pow2 else
                                      (self._chan(s, x, n, "scale") if s.size > 1 else _vec(s)))

    def h_trunc(self, n) -> None:
        """QONNX Trunc (v1: x, scale, zeropt, in_bits, out_bits; v2 adds out_scale and signed/narrow)."""
        where = self._where(n)
        if len(n.input) not in (5, 6):
            raise BadInputError(f"Trunc node {where!r} needs 5 (v1) or 6 (v2) inputs")
        a = _attrs(n)
        v2 = len(n.input) == 6
        params = self._quant_params(n, list(n.input[1:]))
        sc, zp, in_bits = params[0], params[1], params[2]
        out_scale, out_bits = (params[3], params[4]) if v2 else (params[0], params[3])
        if np.any(np.asarray(zp) != 0):
            raise UnsupportedError(f"Trunc node {where!r} has a non-zero zero point; qfx needs zero point 0")
        ib, ob = int(np.asarray(in_bits).ravel()[0]), int(np.asarray(out_bits).ravel()[0])
        rm = _attr_str(a, "rounding_mode", "FLOOR").upper()
        if rm not in _ROUNDING:
            raise UnsupportedError(f"Trunc node {where!r} has rounding mode {rm!r} with no ap_fixed equivalent")
        x = self._act(n.input[0], n)
        s = _vec(sc)
        if s.size != 1:
            raise UnsupportedError(f"Trunc node {where!r} has a per-channel scale")
        # 1) round(x / scale): integer codes with ib bits (plus sign room; QONNX does not clamp here)
        t1, u1 = self._requant(n, x, s, ib + 1, True, False, "RND_CONV")
        if v2:
            tscale = 2.0 ** round(math.log2(float(_vec(out_scale)[0]) / float(s[0])))
            signed, narrow = bool(int(a.get("signed", 1))), bool(int(a.get("narrow", 0)))
            bits = ob
        else:
            tscale = 2.0 ** (ib - ob)
            signed, narrow, bits = True, False, ob + 1  # v1 does not clamp: one more bit, never saturates
        # 2) rounding_mode(codes / 2**k): requantize the step-1 value (codes * scale) to steps of scale * 2**k
        div = s * tscale
        t2, u2 = self._requant(n, _Val("act", tensor=t1, m=u1), div, bits, signed, narrow, _ROUNDING[rm])
        # QONNX rescales the new codes by out_scale (v2) or by the input scale (v1)
        final = float(_vec(out_scale)[0]) if v2 else float(s[0])
        self.vals[n.output[0]] = _Val("act", tensor=t2, m=u2 / div * final)

    # ---------------------------------------------------------------- handlers: linear layers
    def _weight(self, v: _Val, node, what: str) -> tuple[Constant, np.ndarray]:
        """(constant codes, per-output-channel scale) of a weight whose axis 0 is the output channel."""
        vals = np.asarray(v.values, dtype=np.float64)
        o = vals.shape[0]
        if v.fmt is not None:
            return Constant(_codes_of(vals, v.fmt, f"{what}"), v.fmt), np.ones(o)
        if v.codes is not None:
            cs = np.broadcast_to(v.cscale, v.codes.shape).reshape(o, -1)
            if is_pow2(cs):  # power-of-two scales (per channel): the values are exact dyadics
                codes, fmt = _dyadic_codes(vals, what)
                return Constant(codes, fmt), np.ones(o)
            sw = cs[:, 0].copy()
            if not np.all(cs == sw[:, None]):
                raise UnsupportedError(f"node {self._where(node)!r}: {what} has scales that vary within an output "
                                       f"channel; qfx takes per-tensor or per-output-channel weight scales")
            return _int_codes(v.codes), sw
        codes, fmt = _dyadic_codes(vals, what)
        return Constant(codes, fmt), np.ones(o)

    def _ir_bias(self, b: np.ndarray, m_out: np.ndarray) -> Constant | None:
        """Bias as accumulator codes when it is exact there (``b / m_out`` integral or a short dyadic)."""
        r = b / m_out
        if not np.all(np.isfinite(r)):
            return None
        if np.all(m_out == 1):
            try:
                codes, fmt = _dyadic_codes(b, "bias")
                return Constant(codes, fmt)
            except FormatError:
                return None
        rr = np.round(r)
        if np.all(np.abs(r - rr) <= 1e-5 * np.maximum(1.0, np.abs(r))) and np.abs(rr).max(initial=0) < 2.0 ** 40:
            return _int_codes(rr.astype(np.int64))
        return None

    def _linear(self, n, x: _Val, w: Constant, sw: np.ndarray, bias: np.ndarray | None, op: str,
                shape: tuple[int, ...], attrs: dict[str, Any], padded: bool) -> None:
        """dense/conv2d on view x: the IR accumulates codes; scales and shifts go into the output view."""
        if x.relu or x.m.size > 1 and not np.all(x.m == x.m[0]) or padded and np.any(x.h):
            x = _Val("act", tensor=self._materialize(n, x))
        mx = float(x.m[0])
        o = w.codes.shape[0]
        m_out = mx * sw
        w_real = w.values() * sw.reshape((o,) + (1,) * (w.codes.ndim - 1))
        h_out = np.zeros(o)
        if np.any(x.h):  # sum_j h_j * w_cj: the shift of the input becomes a per-output constant
            hx = self._full(x.h, x.tensor)
            if op == "dense":
                h_out = w_real @ hx
            else:
                h_out = np.einsum("ockl,c->o", w_real, hx)
        b_ir = None
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64).reshape(-1)
            if bias.size != o:
                raise BadInputError(f"node {self._where(n)!r}: bias has {bias.size} values for {o} outputs")
            b_ir = self._ir_bias(bias, m_out)
            if b_ir is None:
                h_out = h_out + bias
        fx = self.tensors[x.tensor].fmt
        try:
            acc = lossless_acc_format(w.codes.reshape(o, -1), w.fmt, fx, b_ir.codes if b_ir else None,
                                      b_ir.fmt if b_ir else None)
        except (FormatError, OverflowError) as exc:
            hint = ("the weights look like float values: quantize the model (qfx quantize MODEL --calib DATA.npy)"
                    if w.fmt.width > 16 else "narrow the input (a Quant of fewer bits before this node) or the "
                    "weights")
            raise FormatError(f"node {self._where(n)!r} ({n.op_type}): the exact sum of {fx.ap_type()} inputs times "
                              f"{w.fmt.ap_type()} weights does not fit 64 bits ({_first_line(exc)}); {hint}") from None
        consts = {"weight": w} | ({"bias": b_ir} if b_ir else {})
        t = self._add(op, n, [x.tensor], shape, acc, consts, attrs, acc)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=m_out if not np.all(m_out == m_out[0]) else m_out[:1],
                                      h=h_out if np.any(h_out) else np.zeros(1))

    def h_gemm(self, n) -> None:
        a = _attrs(n)
        if a.get("transA", 0):
            raise UnsupportedError(f"Gemm node {self._where(n)!r} with transA is not supported")
        wv = self._const(n.input[1], n, "weight")
        if not a.get("transB", 0):
            wv = self._const_map(wv, lambda z: np.ascontiguousarray(np.asarray(z).T))
        bias = self._const(n.input[2], n, "bias") if len(n.input) > 2 and n.input[2] else None
        self._dense(n, wv, bias, float(a.get("alpha", 1.0)), float(a.get("beta", 1.0)))

    def h_matmul(self, n) -> None:
        if len(n.input) == 2 and self._get(n.input[1], n).kind in ("act", "input"):
            return self._matmul_acts(n)
        wv = self._const(n.input[1], n, "weight")
        if np.ndim(wv.values) != 2:
            raise UnsupportedError(f"MatMul node {self._where(n)!r} needs a 2-D constant weight")
        self._dense(n, self._const_map(wv, lambda z: np.ascontiguousarray(np.asarray(z).T)), None, 1.0, 1.0)

    def _matmul_acts(self, n) -> None:
        """MatMul of two activations (attention): the registry op ``matmul`` on their codes, exact in the lossless
        accumulator format; per-tensor scales multiply into the result's view, anything else (shifts, per-channel
        scales, a pending relu) is materialized first."""
        from qfx.ops.matmul import matmul_acc_format, matmul_out_shape

        a, b = self._act(n.input[0], n), self._act(n.input[1], n)
        vs = []
        for v in (a, b):
            if v.relu or np.any(v.h) or np.asarray(v.m).size != 1:
                v = _Val("act", tensor=self._materialize(n, v))
            vs.append(v)
        a, b = vs
        ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
        shape = matmul_out_shape(ta.shape, tb.shape)
        if shape is None:
            raise UnsupportedError(f"MatMul node {self._where(n)!r}: operands {ta.shape} @ {tb.shape} (per sample) "
                                   f"need (..., M, K) @ (..., K, N) with equal leading dims; {_CUT}")
        acc = matmul_acc_format(ta.fmt, tb.fmt, ta.shape[-1])
        t = self._add("matmul", n, [a.tensor, b.tensor], shape, acc, acc=acc)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=np.asarray(a.m).reshape(-1) * np.asarray(b.m).reshape(-1))

    def _dense(self, n, wv: _Val, bias: _Val | None, alpha: float, beta: float) -> None:
        """x @ W.T (+ beta * bias) * alpha with ``wv`` oriented (out, in)."""
        where = self._where(n)
        ins = list(n.input)
        x = self._act(ins[0], n)
        xs = self.tensors[x.tensor]
        if len(xs.shape) != 1:
            raise UnsupportedError(f"node {where!r}: {n.op_type} on a {len(xs.shape) + 1}-D tensor; flatten first")
        w, sw = self._weight(wv, n, f"weight {ins[1]!r}")
        if w.codes.ndim != 2 or w.codes.shape[1] != xs.shape[0]:
            raise BadInputError(f"node {where!r}: weight {w.codes.shape} does not fit input {xs.shape}")
        bvals = None
        if bias is not None:
            bvals = np.broadcast_to(np.asarray(bias.values, dtype=np.float64).reshape(-1), (w.codes.shape[0],)) * beta
        self._linear(n, x, w, sw * alpha, bvals, "dense", (w.codes.shape[0],), {"khot": 0}, False)

    def _one_d(self, n, handler: Callable[["_Converter", Any], None], const_inputs: tuple[int, ...] = ()) -> bool:
        """A 1-D op on (C, L) runs as its 2-D form on (C, 1, L): the input is reshaped, constant inputs at
        ``const_inputs`` (conv weights (O, C/g, k)) get a unit H axis, 1-D attributes become (1, k) ones, and the
        (C', 1, L') result is reshaped back to (C', L'), the shape the ONNX model promises."""
        from onnx import helper

        x = self._get(n.input[0], n)
        if x.kind != "act" or len(self.tensors[x.tensor].shape) != 2:
            return False
        xs = self.tensors[x.tensor]
        base = n.name or n.output[0]
        t_in = self._add("reshape", _FakeNode(f"{base}_2d_in"), [x.tensor], (xs.shape[0], 1, xs.shape[1]), xs.fmt,
                         attrs={"shape": (xs.shape[0], 1, xs.shape[1])})
        ins = list(n.input)
        tmp_in = f"{base}__qfx2d_in"
        self.vals[tmp_in] = _Val("act", tensor=t_in, m=x.m, h=x.h, relu=x.relu)
        ins[0] = tmp_in
        for k in const_inputs:
            if len(ins) > k and ins[k]:
                wv = self._const(ins[k], n, "weight")
                if np.ndim(wv.values) != 3:
                    raise BadInputError(f"{n.op_type} node {self._where(n)!r}: weight of shape "
                                        f"{np.shape(wv.values)} is not (O, C/g, k)")
                ins[k] = f"{base}__qfx2d_w{k}"
                self.vals[ins[k]] = self._const_map(wv, lambda z: np.asarray(z)[:, :, None, :])
        a2: dict[str, Any] = {}
        for key, v in _attrs(n).items():
            if key in ("kernel_shape", "strides", "dilations"):
                v = [1, *[int(e) for e in v]]
            elif key == "pads":
                v = [0, int(v[0]), 0, int(v[1])] if len(v) == 2 else v
            elif key == "output_padding":
                v = [0, *[int(e) for e in v]]
            elif key == "output_shape":
                v = [1, *[int(e) for e in v]]
            a2[key] = v
        out = f"{base}__qfx2d_out"
        node2 = helper.make_node(n.op_type, ins, [out], name=n.name or n.op_type, **a2)
        handler(self, node2)
        y = self.vals[out]
        ys = self.tensors[y.tensor]
        t = self._add("reshape", _FakeNode(f"{base}_1d_out"), [y.tensor], (ys.shape[0], ys.shape[2]), ys.fmt,
                      attrs={"shape": (ys.shape[0], ys.shape[2])})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=y.m, h=y.h, relu=y.relu)
        return True

    def _conv_operands(self, n, weight_layout: str) -> tuple[dict, str, list[str], "_Val", TensorSpec, Any]:
        """Attributes, node name, inputs, activation, its tensor and the 4-D weight of a Conv/ConvTranspose node;
        one-line refusals for what both ops lack (inputs other than (C, H, W), dilation, weights of another rank)."""
        a = _attrs(n)
        where = self._where(n)
        ins = list(n.input)
        x = self._act(ins[0], n)
        xs = self.tensors[x.tensor]
        if len(xs.shape) != 3:
            raise UnsupportedError(f"{n.op_type} node {where!r}: only 1-D (C, L) and 2-D (C, H, W) inputs are "
                                   f"supported, not {len(xs.shape)}-D")
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise UnsupportedError(f"{n.op_type} node {where!r}: dilation is not supported")
        wv = self._const(ins[1], n, "weight")
        if np.ndim(wv.values) != 4:
            raise BadInputError(f"{n.op_type} node {where!r}: weight of shape {np.shape(wv.values)} is not "
                                f"{weight_layout}")
        return a, where, ins, x, xs, wv

    def h_conv(self, n) -> None:
        if self._one_d(n, _Converter.h_conv, (1,)):
            return
        a, where, ins, x, xs, wv = self._conv_operands(n, "(O, C/g, kh, kw)")
        group = int(a.get("group", 1))
        o, cg, kh, kw = np.shape(wv.values)
        if group != 1:
            if xs.shape[0] != cg * group or o % group:
                raise BadInputError(f"Conv node {where!r}: {group} groups do not fit weight {np.shape(wv.values)} and "
                                    f"input {xs.shape}")
            wv = self._expand_groups(wv, group, xs.shape[0])
        w, sw = self._weight(wv, n, f"weight {ins[1]!r}")
        if w.codes.shape[1] != xs.shape[0]:
            raise BadInputError(f"Conv node {where!r}: weight {w.codes.shape} does not fit input {xs.shape}")
        st = [int(s) for s in a.get("strides", [1, 1])]
        p4 = self._pads4(n, a, xs.shape[1:], (kh, kw), st)
        if p4[0] != p4[1] or p4[2] != p4[3]:  # asymmetric (Keras 'same' with an even kernel): zero-pad first
            if x.relu or np.any(x.h):
                x = _Val("act", tensor=self._materialize(n, x))
            shp = (xs.shape[0], xs.shape[1] + p4[0] + p4[1], xs.shape[2] + p4[2] + p4[3])
            t = self._add("zeropad2d", _FakeNode(f"{where}_pad"), [x.tensor], shp, self.tensors[x.tensor].fmt,
                          attrs={"pads": p4})
            x = _Val("act", tensor=t, m=x.m)
            xs = self.tensors[t]
            p4 = (0, 0, 0, 0)
        pads = (p4[0], p4[2])
        bias = self._const(ins[2], n, "bias") if len(ins) > 2 and ins[2] else None
        shape = (o, conv_out_size(xs.shape[1], kh, st[0], pads[0]), conv_out_size(xs.shape[2], kw, st[1], pads[1]))
        self._linear(n, x, w, sw, None if bias is None else np.asarray(bias.values, dtype=np.float64).reshape(-1),
                     "conv2d", shape, {"stride": tuple(st), "padding": (pads[0], pads[1]), "khot": 0},
                     padded=any(pads))

    def _transposed_pads(self, n, a: dict[str, Any], hw: tuple[int, int], k: tuple[int, int],
                         st: list[int], outpad: list[int]) -> tuple[int, int, int, int]:
        """ConvTranspose (top, bottom, left, right) cropping pads: explicit, or from output_shape / auto_pad as the
        ONNX spec derives them."""
        auto = _attr_str(a, "auto_pad", "NOTSET")
        if "output_shape" in a or auto in ("SAME_UPPER", "SAME_LOWER"):
            shape = [int(v) for v in a["output_shape"]][-2:] if "output_shape" in a else [s * x for s, x in zip(st, hw)]
            p: list[int] = []
            for size, kk, s, op, want in zip(hw, k, st, outpad, shape):
                total = s * (size - 1) + op + kk - want
                p += [total // 2, total - total // 2] if auto == "SAME_UPPER" else [total - total // 2, total // 2]
            return p[0], p[1], p[2], p[3]
        if auto == "VALID":
            return 0, 0, 0, 0
        q = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(q) != 4:
            raise BadInputError(f"ConvTranspose node {self._where(n)!r}: pads {q} are not 4 values")
        return q[0], q[2], q[1], q[3]

    def h_conv_transpose(self, n) -> None:
        """ConvTranspose as zero insertion (``zeropad2d`` with a stride) then a stride-1 ``conv2d`` with the kernel's
        channel axes swapped (per group) and its taps flipped: exact, as the torch QConvTranspose2d twin."""
        if self._one_d(n, _Converter.h_conv_transpose, (1,)):
            return
        a, where, ins, x, xs, wv = self._conv_operands(n, "(C, O/g, kh, kw)")
        group = int(a.get("group", 1))
        cin, og, kh, kw = np.shape(wv.values)
        if cin != xs.shape[0] or group < 1 or cin % group:
            raise BadInputError(f"ConvTranspose node {where!r}: weight {np.shape(wv.values)} with {group} group(s) "
                                f"does not fit input {xs.shape}")
        cg = cin // group

        def swap(z: np.ndarray) -> np.ndarray:  # (C, O/g, kh, kw) -> grouped (O, C/g, kh, kw), taps flipped
            z = np.asarray(z).reshape(group, cg, og, kh, kw).transpose(0, 2, 1, 3, 4)
            return np.ascontiguousarray(z.reshape(group * og, cg, kh, kw)[:, :, ::-1, ::-1])

        wv = self._const_map(wv, swap)
        if group != 1:
            wv = self._expand_groups(wv, group, cin)
        w, sw = self._weight(wv, n, f"weight {ins[1]!r}")
        st = [int(s) for s in a.get("strides", [1, 1])]
        outpad = [int(v) for v in a.get("output_padding", [0, 0])]
        if len(st) != 2 or min(st) < 1 or len(outpad) != 2 or min(outpad) < 0:
            raise BadInputError(f"ConvTranspose node {where!r}: strides {st} / output_padding {outpad} are invalid")
        p = self._transposed_pads(n, a, xs.shape[1:], (kh, kw), st, outpad)
        z4 = (kh - 1 - p[0], kh - 1 - p[1] + outpad[0], kw - 1 - p[2], kw - 1 - p[3] + outpad[1])
        if min(z4) < 0:
            raise UnsupportedError(f"ConvTranspose node {where!r}: pads {p} above kernel - 1 need an output crop, "
                                   f"which qfx does not do")
        if x.relu or np.any(x.h):  # inserted and border zeros must be real zeros
            x = _Val("act", tensor=self._materialize(n, x))
        t = x.tensor
        c, h, wd = self.tensors[t].shape
        h, wd = (h - 1) * st[0] + 1 + z4[0] + z4[1], (wd - 1) * st[1] + 1 + z4[2] + z4[3]
        if z4 != (0, 0, 0, 0) or st != [1, 1]:
            attrs: dict[str, Any] = {"pads": z4}
            if st != [1, 1]:
                attrs["stride"] = (st[0], st[1])
            t = self._add("zeropad2d", _FakeNode(f"{where}_zeros"), [t], (c, h, wd), self.tensors[t].fmt,
                          attrs=attrs)
        bias = self._const(ins[2], n, "bias") if len(ins) > 2 and ins[2] else None
        self._linear(n, _Val("act", tensor=t, m=x.m), w, sw,
                     None if bias is None else np.asarray(bias.values, dtype=np.float64).reshape(-1), "conv2d",
                     (group * og, h - kh + 1, wd - kw + 1), {"stride": (1, 1), "padding": (0, 0), "khot": 0},
                     padded=False)

    @staticmethod
    def _expand_groups(wv: _Val, group: int, cin: int) -> _Val:
        """Grouped convolution as one convolution with block-diagonal weights (zeros across groups): exact."""
        def expand(z: np.ndarray, fill_from_first: bool) -> np.ndarray:
            z = np.asarray(z)
            o, cg = z.shape[:2]
            og = o // group
            out = np.zeros((o, cin) + z.shape[2:], dtype=z.dtype)
            for gi in range(group):
                out[gi * og:(gi + 1) * og, gi * cg:(gi + 1) * cg] = z[gi * og:(gi + 1) * og]
            if fill_from_first:  # scales: every entry of an output channel keeps that channel's scale
                out[:] = z.reshape(o, -1)[:, :1].reshape((o, 1) + (1,) * (z.ndim - 2))
            return out

        return _Val("const", expand(wv.values, False), wv.fmt, None if wv.codes is None else expand(wv.codes, False),
                    None if wv.cscale is None else expand(np.broadcast_to(wv.cscale, np.shape(wv.codes)), True))

    def _pads4(self, n, a: dict[str, Any], hw: tuple[int, ...], k: tuple[int, int],
               st: list[int]) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding of a 2-D window op (explicit pads or auto_pad)."""
        auto = _attr_str(a, "auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads: list[int] = []
            for size, kk, s in zip(hw, k, st):
                total = max((-(-size // s) - 1) * s + kk - size, 0)
                small, big = total // 2, total - total // 2
                pads += [small, big] if auto == "SAME_UPPER" else [big, small]
            return pads[0], pads[1], pads[2], pads[3]
        if auto == "VALID":
            return 0, 0, 0, 0
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4 or min(p) < 0:
            raise BadInputError(f"{n.op_type} node {self._where(n)!r}: pads {p} are not 4 non-negative values")
        return p[0], p[2], p[1], p[3]

    def _pads(self, n, a: dict[str, Any], hw: tuple[int, ...], k: tuple[int, int], st: list[int]) -> tuple[int, int]:
        p = self._pads4(n, a, hw, k, st)
        if p[0] != p[1] or p[2] != p[3]:
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r}: asymmetric padding (top, bottom, left, "
                                   f"right) = {p} is not supported here")
        return p[0], p[2]

    # ---------------------------------------------------------------- handlers: element-wise arithmetic
    def h_add(self, n) -> None:
        a, b = self._get(n.input[0], n), self._get(n.input[1], n)
        if a.kind == "act" and b.kind == "act":
            return self._add_acts(n, a, b)
        if a.kind == "input" or b.kind == "input":
            self._act(n.input[0] if a.kind == "input" else n.input[1], n)
        act, cst = (a, b) if a.kind == "act" else (b, a)
        if cst.kind != "const":
            raise UnsupportedError(f"Add node {self._where(n)!r}: operands must be activations or constants")
        if self._per_element(cst.values, act):  # a position embedding
            return self._add_elementwise(n, act, np.asarray(cst.values, dtype=np.float64))
        c = self._chan(cst.values, act, n, "added constant")
        if self._fold_bias(n, act, c):
            return
        if act.relu:
            act = _Val("act", tensor=self._materialize(n, act))
        self.vals[n.output[0]] = act.view(act.m, act.h + c)

    def _per_element(self, c: np.ndarray, act: _Val) -> bool:
        """The constant varies along a per-sample axis other than the channels (and broadcasts onto the
        activation without widening it)."""
        c = np.asarray(c)
        full = (1, *self.tensors[act.tensor].shape)
        if c.ndim > len(full):
            return False
        cc = c.reshape((1,) * (len(full) - c.ndim) + c.shape)
        fits = all(k in (1, f) for k, f in zip(cc.shape, full)) and cc.shape[0] == 1
        return fits and any(cc.shape[ax] != 1 for ax in range(2, len(full)))

    def _add_elementwise(self, n, act: _Val, c: np.ndarray) -> None:
        """``act + c`` for a constant ``c`` that varies per element (a ViT's position embedding): the view and
        ``c`` become one per-element ``scale_shift`` over the flattened tensor (scale the view's, shift its
        offset plus ``c``), reshaped back; the result is a plain tensor."""
        t, shift = self._flat_affine(n, act)
        xs = self.tensors[act.tensor]
        shift = shift + np.broadcast_to(c.reshape(c.shape[1:] if c.ndim == len(xs.shape) + 1 else c.shape),
                                        xs.shape).reshape(-1)
        mult = self._per_element_vec(act.m, xs.shape)
        y = self._unflatten(n, t, mult, shift, xs.shape, "per-element constant added")
        self.vals[n.output[0]] = _Val("act", tensor=y)

    def _flat_affine(self, n, act: _Val) -> tuple[str, np.ndarray]:
        """(the view's tensor flattened to (N,), its per-element offsets); a deferred ReLU is applied first."""
        if act.relu:
            act = _Val("act", tensor=self._materialize(n, act))
        xs = self.tensors[act.tensor]
        size = int(np.prod(xs.shape))
        t = self._add("reshape", n, [act.tensor], (size,), xs.fmt, attrs={"shape": (size,)})
        return t, self._per_element_vec(act.h, xs.shape)

    def _per_element_vec(self, v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A view's per-tensor or per-channel vector spread over every element of ``shape``."""
        v = _vec(v)
        lead = v if v.size == 1 else v.reshape((-1,) + (1,) * (len(shape) - 1))
        return np.broadcast_to(lead, shape).reshape(-1).astype(np.float64)

    def _unflatten(self, n, t: str, mult: np.ndarray, shift: np.ndarray, shape: tuple[int, ...], why: str) -> str:
        """``t * mult + shift`` per element of the flat ``t`` (lossless format), back in ``shape``."""
        y = self._scale_shift(n, t, mult, shift, None, why)
        return self._add("reshape", n, [y], shape, self.tensors[y].fmt, attrs={"shape": shape})

    def _fold_bias(self, n, act: _Val, c: np.ndarray) -> bool:
        """A constant added to a bias-less dense/conv output becomes its bias when exact in the accumulator."""
        prod_i = next((i for i, nd in enumerate(self.nodes) if nd.output == act.tensor), None)
        if prod_i is None or act.relu or np.any(act.h):
            return False
        nd = self.nodes[prod_i]
        if not op_def(nd.op).is_(Categories.LINEAR) or "bias" in nd.consts or nd.output not in self.exact or \
                not self._single_use(act.tensor):
            return False
        w = nd.consts["weight"]
        o = w.codes.shape[0]
        cb = np.broadcast_to(c, (o,)) if c.size in (1, o) else None
        if cb is None:
            return False
        bias = self._ir_bias(np.asarray(cb, dtype=np.float64), np.broadcast_to(act.m, (o,)))
        if bias is None:
            return False
        fx = self.tensors[nd.inputs[0]].fmt
        acc = lossless_acc_format(w.codes.reshape(o, -1), w.fmt, fx, bias.codes, bias.fmt)
        self.nodes[prod_i] = nd.replace(consts={"weight": w, "bias": bias}, acc_fmt=acc)
        old = self.tensors[nd.output]
        self.tensors[nd.output] = TensorSpec(nd.output, old.shape, acc)
        self.vals[n.output[0]] = act
        return True

    def _add_acts(self, n, a: _Val, b: _Val) -> None:
        a, b = self._broadcast_pair(n, a, b)
        ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
        if a.relu or b.relu or not (a.m.size == b.m.size and np.array_equal(a.m, b.m)):
            a = _Val("act", tensor=self._materialize(n, a))
            b = _Val("act", tensor=self._materialize(n, b))
            ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
        f = ta.fmt.add_format(tb.fmt)
        t = self._add("add", n, [a.tensor, b.tensor], ta.shape, f)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=a.m, h=a.h + b.h)

    def h_sub(self, n) -> None:
        a, b = self._get(n.input[0], n), self._get(n.input[1], n)
        for v, name in ((a, n.input[0]), (b, n.input[1])):
            if v.kind == "input":
                self._act(name, n)
        if a.kind == "act" and b.kind == "act":
            bn = _Val("act", tensor=self._materialize(n, b)).view(-1.0, 0.0) if b.relu else b.view(-b.m, -b.h)
            return self._add_acts(n, a, bn)
        if a.kind == "act" and self._per_element(b.values, a):
            return self._add_elementwise(n, a, -np.asarray(b.values, dtype=np.float64))
        if a.kind == "act":
            c = self._chan(b.values, a, n, "subtracted constant")
            if a.relu:
                a = _Val("act", tensor=self._materialize(n, a))
            self.vals[n.output[0]] = a.view(a.m, a.h - c)
            return
        c = self._chan(a.values, b, n, "constant")
        if b.relu:
            b = _Val("act", tensor=self._materialize(n, b))
        self.vals[n.output[0]] = b.view(-b.m, c - b.h)

    def h_neg(self, n) -> None:
        x = self._act(n.input[0], n)
        if x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        self.vals[n.output[0]] = x.view(-x.m, -x.h)

    def h_max_min(self, n) -> None:
        """Max / Min of two activations as ``b + relu(a - b)`` / ``a - relu(a - b)`` on codes: exact ``sub``,
        ``relu`` and ``add``/``sub`` nodes over operands on one grid (same view, or both exactly materialized)."""
        where = self._where(n)
        if len(n.input) != 2 or not all(n.input):
            raise UnsupportedError(f"{n.op_type} node {where!r}: qfx takes {n.op_type} of exactly two tensors")
        a, b = self._act(n.input[0], n), self._act(n.input[1], n)
        ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
        if ta.shape != tb.shape:
            raise UnsupportedError(f"{n.op_type} node {where!r}: operand shapes {ta.shape} and {tb.shape} differ "
                                   f"(no broadcasting)")
        same = a.relu == b.relu and a.m.size == b.m.size and np.array_equal(a.m, b.m) and \
            a.h.size == b.h.size and np.array_equal(a.h, b.h) and bool(np.all(a.m > 0))
        if not same:  # put both on one grid; only exact (dyadic) rescalings are allowed
            k = len(self.requants)
            a = _Val("act", tensor=self._materialize(n, a))
            b = _Val("act", tensor=self._materialize(n, b))
            if not all(r["exact"] for r in self.requants[k:]):
                raise UnsupportedError(f"{n.op_type} node {where!r}: the operands' scales do not put them on one "
                                       f"exact grid (non-dyadic ratio); requantize both with one scale first")
            ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
        d = self._add("sub", _FakeNode(f"{where}_diff"), [a.tensor, b.tensor], ta.shape, ta.fmt.sub_format(tb.fmt))
        r = self._add("relu", _FakeNode(f"{where}_relu"), [d], ta.shape, self.tensors[d].fmt)
        fr = self.tensors[r].fmt
        if n.op_type == "Max":
            t = self._add("add", n, [b.tensor, r], ta.shape, tb.fmt.add_format(fr))
        else:
            t = self._add("sub", n, [a.tensor, r], ta.shape, ta.fmt.sub_format(fr))
        self.vals[n.output[0]] = _Val("act", tensor=t, m=a.m, h=a.h, relu=a.relu)

    def _scale_view(self, n, div: bool) -> None:
        a, b = self._get(n.input[0], n), self._get(n.input[1], n)
        for v, name in ((a, n.input[0]), (b, n.input[1])):
            if v.kind == "input":
                self._act(name, n)
        if a.kind == "act" and b.kind == "act":
            if not div:
                return self._mul_acts(n, a, b)
            return self._div_acts(n, a, b)
        if div and a.kind != "act":
            if np.size(a.values) != 1:
                raise UnsupportedError(f"unsupported Div of a constant tensor by an activation (node "
                                       f"{self._where(n)!r}): qfx divides one constant by an activation; {_CUT}")
            c = float(np.asarray(a.values, dtype=np.float64).reshape(-1)[0])
            t = self._table(n, b, lambda v: c / v, f"onnx:div({c!r})")  # c / x: a lut over x's codes
            self.vals[n.output[0]] = _Val("act", tensor=t)
            return
        act, cst = (a, b) if a.kind == "act" else (b, a)
        c = self._chan(cst.values, act, n, "constant factor")
        if np.any(c == 0) and div:
            raise BadInputError(f"Div node {self._where(n)!r} divides by zero")
        f = 1.0 / c if div else c
        if act.relu and np.any(f <= 0):
            act = _Val("act", tensor=self._materialize(n, act))
        self.vals[n.output[0]] = act.view(act.m * f, act.h * f)

    def _div_acts(self, n, a: _Val, b: _Val) -> None:
        """``a / b`` of two activations (LayerNorm's ``d / sqrt(v + eps)``, normalizations, ratios): a reciprocal
        ``lut`` over every code of the divisor (at most 12 bits; a zero code saturates to the largest finite entry,
        as Reciprocal does) times the numerator (the exact ``mul``)."""
        from onnx import helper

        where = self._where(n)
        rec = helper.make_node("Reciprocal", [n.input[1]], [f"{_clean_name(where)}__recip"], name=where)
        t = self._table(rec, b, lambda v: 1.0 / v, "onnx:reciprocal")
        self._mul_acts(n, a, _Val("act", tensor=t))

    def h_mul(self, n) -> None:
        self._scale_view(n, div=False)

    def h_div(self, n) -> None:
        self._scale_view(n, div=True)

    def h_batchnorm(self, n) -> None:
        """BatchNormalization (inference): ``(x - mean) / sqrt(var + eps) * gamma + beta`` into the view."""
        if len(n.input) != 5:
            raise BadInputError(f"BatchNormalization node {self._where(n)!r} needs 5 inputs")
        x = self._act(n.input[0], n)
        gamma, beta, mean, var = (np.asarray(self._const(i, n, k).values, dtype=np.float64).reshape(-1)
                                  for i, k in zip(n.input[1:], ("scale", "bias", "mean", "var")))
        eps = float(_attrs(n).get("epsilon", 1e-5))
        if np.any(var + eps <= 0):
            raise BadInputError(f"BatchNormalization node {self._where(n)!r} has a non-positive variance")
        a = gamma / np.sqrt(var + eps)
        b = beta - mean * a
        c = self._channels(x.tensor)
        if a.size not in (1, c):
            raise BadInputError(f"BatchNormalization node {self._where(n)!r}: {a.size} values for {c} channels")
        if x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        self.vals[n.output[0]] = x.view(x.m * a, x.h * a + b)

    def h_relu(self, n) -> None:
        x = self._act(n.input[0], n)
        if x.relu:
            self.vals[n.output[0]] = x
        elif not np.any(x.h) and np.all(x.m > 0):
            t = self._add("relu", n, [x.tensor], self.tensors[x.tensor].shape, self.tensors[x.tensor].fmt)
            self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m)
        else:  # relu(t*m + h): deferred to the next requantization (or materialized where needed)
            self.vals[n.output[0]] = x.view(x.m, x.h, relu=True)

    # ---------------------------------------------------------------- handlers: registry ops that move values
    def _gather(self, n, x: _Val, op: str, attrs: dict[str, Any], keeps_channels: bool,
                shape: tuple[int, ...] | None = None) -> None:
        """A value-moving IR op (``Categories.GATHER``): the view survives when it is per tensor, or per channel
        and the op keeps the channel axis."""
        if x.relu and not keeps_channels or (x.m.size > 1 or x.h.size > 1) and not keeps_channels:
            x = _Val("act", tensor=self._materialize(n, x))
        xs = self.tensors[x.tensor]
        if shape is None:
            if op == "transpose":
                shape = tuple(xs.shape[p] for p in attrs["perm"])
            else:
                sh, sw = attrs["scale"]
                shape = (xs.shape[0], xs.shape[1] * sh, xs.shape[2] * sw)
        t = self._add(op, n, [x.tensor], shape, xs.fmt, attrs=attrs)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h, relu=x.relu)

    def h_resize(self, n) -> None:
        """Resize/Upsample over H and W: nearest mode by integer factors is ``upsample2d``, linear mode by
        integer factors with half-pixel centres ``_bilinear``, everything else (align_corners, other sizes and
        factors, downscaling) ``_resize_separable``."""
        where = self._where(n)
        x = self._act(n.input[0], n)
        xs = self.tensors[x.tensor]
        a = _attrs(n)

        mode = _attr_str(a, "mode", "nearest")
        if "upsample2d" not in REGISTRY or mode not in ("nearest", "linear", "bilinear") or len(xs.shape) != 3:
            raise UnsupportedError(f"unsupported ONNX op {n.op_type!r} (node {where!r}): qfx resizes 2-D (C, H, W) "
                                   f"tensors in nearest or linear mode only; {_CUT}")
        ins = list(n.input)
        scales = sizes = None
        if n.op_type == "Upsample":
            scales = np.asarray(self._const(ins[1], n, "scales").values if len(ins) > 1 else a["scales"], float)
        else:
            sc = ins[2] if len(ins) > 2 and ins[2] else None
            sz = ins[3] if len(ins) > 3 and ins[3] else None
            if sc is not None and np.size(self._const(sc, n, "scales").values):
                scales = np.asarray(self._const(sc, n, "scales").values, dtype=np.float64)
            elif sz is not None:
                sizes = np.asarray(self._const(sz, n, "sizes").values, dtype=np.float64)
                scales = sizes / np.asarray((1, *xs.shape), dtype=np.float64)
        if scales is None or scales.size != 4 or np.any(scales[:2] != 1) or np.any(scales[2:] <= 0):
            raise UnsupportedError(f"{n.op_type} node {where!r}: scales {None if scales is None else scales.tolist()} "
                                   f"must keep N and C and be positive for H and W; {_CUT}")
        if a.get("axes") is not None or _attr_str(a, "keep_aspect_ratio_policy", "stretch") != "stretch":
            raise UnsupportedError(f"{n.op_type} node {where!r}: axes / keep_aspect_ratio_policy; {_CUT}")
        ctm = _attr_str(a, "coordinate_transformation_mode", "half_pixel") if n.op_type == "Resize" else "asymmetric"
        nm = _attr_str(a, "nearest_mode", "round_prefer_floor")
        # ONNX: the output size is floor(input * scale) unless sizes are given
        out_hw = tuple(int(v) for v in sizes[2:]) if sizes is not None else tuple(
            int(np.floor(d * k)) for d, k in zip(xs.shape[1:], scales[2:]))
        mats = [self._resize_matrix(n, d, o, mode, ctm, nm, float(k))
                for d, o, k in zip(xs.shape[1:], out_hw, scales[2:])]
        integer = all(float(k) == int(k) for k in scales[2:])
        if integer and mode != "nearest" and ctm in ("half_pixel", "pytorch_half_pixel") and not any(
                d * k == 1 for d, k in zip(xs.shape[1:], scales[2:])):
            return self._bilinear(n, x, (int(scales[2]), int(scales[3])), ctm)
        if integer and mode == "nearest" and all(  # each pixel repeated k times: the upsample2d gather
                np.array_equal(m, np.repeat(np.eye(d), int(k), axis=0))
                for m, d, k in zip(mats, xs.shape[1:], scales[2:])):
            return self._gather(n, x, "upsample2d", {"scale": (int(scales[2]), int(scales[3]))}, keeps_channels=True)
        self._resize_separable(n, x, mats)

    def _resize_matrix(self, n, n_in: int, n_out: int, mode: str, ctm: str, nm: str, scale: float) -> np.ndarray:
        """One axis of a Resize as a (n_out, n_in) weight matrix (``qfx.nn.op_layers.resize_matrix`` for linear
        mode; ONNX's own index rules for nearest mode)."""
        from qfx.nn.op_layers import RESIZE_RULES, resize_matrix

        where = self._where(n)
        if mode != "nearest":
            if ctm not in RESIZE_RULES:
                raise UnsupportedError(f"{n.op_type} node {where!r}: linear mode with coordinate_transformation_mode "
                                       f"{ctm!r}; qfx resizes with {', '.join(RESIZE_RULES)}; {_CUT}")
            return resize_matrix(n_in, n_out, "linear", ctm, scale)
        i = np.arange(n_out, dtype=np.float64)
        src = {"asymmetric": i / scale, "half_pixel": (i + 0.5) / scale - 0.5,
               "pytorch_half_pixel": (i + 0.5) / scale - 0.5 if n_out > 1 else np.zeros(n_out),
               "tf_half_pixel_for_nn": (i + 0.5) / scale,
               "align_corners": i * (n_in - 1) / max(n_out - 1, 1)}.get(ctm)
        pick = None if src is None else {
            "floor": np.floor(src), "ceil": np.ceil(src),
            "round_prefer_floor": np.where(src - np.floor(src) == 0.5, np.floor(src), np.round(src)),
            "round_prefer_ceil": np.where(src - np.floor(src) == 0.5, np.ceil(src), np.round(src))}.get(nm)
        if pick is None:
            raise UnsupportedError(f"{n.op_type} node {where!r}: nearest mode with coordinate_transformation_mode "
                                   f"{ctm!r} and nearest_mode {nm!r}; {_CUT}")
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), np.clip(pick, 0, n_in - 1).astype(np.int64)] = 1.0
        return m

    def _resize_separable(self, n, x: _Val, mats: list[np.ndarray]) -> None:
        """A Resize that is no integer-factor gather or half-pixel bilinear (align_corners, sizes that are not
        multiples, downscaling): each axis's matrix as a 1x1 ``conv2d`` over that axis brought first by
        ``transpose`` (``qfx.nn.op_layers.resize_steps``, as ``QResize2d`` builds it). Each matrix row sums to
        one, so a linear per-channel view passes through; a pending ReLU is applied first."""
        from qfx.fixed.kernels import lossless_acc_format
        from qfx.nn.op_layers import axis_weights, resize_steps

        where = self._where(n)
        if x.relu or np.any(x.h) and not all(np.allclose(m.sum(1), 1.0) for m in mats):  # offsets pass rows of 1
            x = _Val("act", tensor=self._materialize(n, x))
        steps = resize_steps(tuple(axis_weights(m) for m in mats))
        t, base = x.tensor, _clean_name(where)
        for i, (kind, arg) in enumerate(steps):
            src = self.tensors[t]
            node = n if i == len(steps) - 1 else _FakeNode(f"{base}_r{i}")
            if kind == "transpose":
                t = self._add("transpose", node, [t], tuple(src.shape[p] for p in arg), src.fmt, attrs={"perm": arg})
            else:
                codes, kf = arg
                acc = lossless_acc_format(codes, kf, src.fmt)
                t = self._add("conv2d", node, [t], (codes.shape[0],) + tuple(src.shape[1:]), acc,
                              {"weight": Constant(codes.reshape(codes.shape + (1, 1)), kf)},
                              {"stride": (1, 1), "padding": (0, 0), "khot": 0}, acc)
        if not steps:
            self.vals[n.output[0]] = x
            return
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h)

    def _bilinear(self, n, x: _Val, f: tuple[int, int], ctm: str) -> None:
        """Resize in linear mode by integer factors with half-pixel centres (torch's bilinear, align_corners=False):
        replicate padding, zero insertion (``zeropad2d``) and a depthwise ``conv2d`` with the interpolation taps
        (``qfx.nn.op_layers.bilinear_plan``, as ``QUpsampleBilinear`` computes it). The taps sum to one, so a linear
        per-channel view passes through; a pending ReLU is applied first."""
        from qfx.fixed.kernels import lossless_acc_format
        from qfx.nn.op_layers import bilinear_plan

        where = self._where(n)
        if ctm not in ("half_pixel", "pytorch_half_pixel"):
            raise UnsupportedError(f"{n.op_type} node {where!r}: linear mode with coordinate_transformation_mode "
                                   f"{ctm!r}; qfx interpolates with half-pixel centres (torch's align_corners=False); "
                                   f"{_CUT}")
        xs0 = self.tensors[x.tensor]
        if ctm == "pytorch_half_pixel" and any(d * k == 1 for d, k in zip(xs0.shape[1:], f)):
            raise UnsupportedError(f"{n.op_type} node {where!r}: pytorch_half_pixel to a length-1 output")
        if x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        k, kf, edge, pads = bilinear_plan(f)
        c, h, w = self.tensors[x.tensor].shape
        fmt = self.tensors[x.tensor].fmt
        t = x.tensor
        base = _clean_name(where)
        if any(edge):
            t = self._add("zeropad2d", _FakeNode(f"{base}_edge"), [t], (c, h + edge[0] + edge[1], w + edge[2] + edge[3]),
                          fmt, attrs={"pads": edge, "mode": "replicate"})
        if f != (1, 1) or any(pads):
            _, hh, ww = self.tensors[t].shape
            shape = (c, (hh - 1) * f[0] + 1 + pads[0] + pads[1], (ww - 1) * f[1] + 1 + pads[2] + pads[3])
            t = self._add("zeropad2d", _FakeNode(f"{base}_zeros"), [t], shape, fmt,
                          attrs={"pads": pads, "stride": f})
        dense = np.zeros((c, c) + k.shape, dtype=np.int64)
        dense[np.arange(c), np.arange(c)] = k
        acc = lossless_acc_format(dense.reshape(c, -1), kf, fmt)
        y = self._add("conv2d", n, [t], (c, h * f[0], w * f[1]), acc, {"weight": Constant(dense, kf)},
                      {"stride": (1, 1), "padding": (0, 0), "khot": 0}, acc)
        self.vals[n.output[0]] = _Val("act", tensor=y, m=x.m, h=x.h)

    def h_concat(self, n) -> None:
        """Concat of activations: ``concat`` (per-channel views concatenate along the channel axis)."""
        where = self._where(n)
        vals = [self._get(i, n) for i in n.input]
        for i, v in zip(n.input, vals):
            if v.kind == "input":
                self._act(i, n)  # refuses: a graph input needs a format before it is concatenated
        if len(vals) == 1:  # DenseNet's torch.cat([x], 1)
            self.vals[n.output[0]] = vals[0]
            return
        if any(v.kind == "const" for v in vals) and any(v.kind == "act" for v in vals):
            return self._concat_consts(n, vals)
        if "concat" not in REGISTRY or any(v.kind != "act" for v in vals):
            raise UnsupportedError(f"unsupported ONNX op 'Concat' (node {where!r}): qfx graphs have no "
                                   f"concatenation op for these operands; {_CUT}")
        rank = len(self.tensors[vals[0].tensor].shape) + 1
        ax = int(_attrs(n).get("axis", 1)) % rank
        if ax == 0:
            raise UnsupportedError(f"Concat node {where!r} along the batch axis is not supported")
        chan = ax == 1
        same = all(v.relu == vals[0].relu and np.array_equal(v.m, vals[0].m) and np.array_equal(v.h, vals[0].h)
                   and v.m.size == 1 and v.h.size == 1 for v in vals)
        if not same and not (chan and len({v.relu for v in vals}) == 1):
            vals = [_Val("act", tensor=self._materialize(n, v)) for v in vals]
        fmts = [self.tensors[v.tensor].fmt for v in vals]
        frac = max(f.frac_bits for f in fmts)
        lo = min(f.min_code << (frac - f.frac_bits) for f in fmts)
        hi = max(f.max_code << (frac - f.frac_bits) for f in fmts)
        fmt = FxFormat.for_code_range(lo, hi, frac, signed=lo < 0)  # holds every operand exactly
        shapes = [self.tensors[v.tensor].shape for v in vals]
        shape = list(shapes[0])
        shape[ax - 1] = sum(sh[ax - 1] for sh in shapes)
        t = self._add("concat", n, [v.tensor for v in vals], tuple(shape), fmt, attrs={"axis": ax - 1})
        if all(v.m.size == 1 and v.h.size == 1 for v in vals) and same:
            m, h = vals[0].m, vals[0].h
        else:  # per-channel views, one block per operand
            m = np.concatenate([self._full(v.m, v.tensor) for v in vals])
            h = np.concatenate([self._full(v.h, v.tensor) for v in vals])
        self.vals[n.output[0]] = _Val("act", tensor=t, m=m, h=h, relu=vals[0].relu)

    def _concat_consts(self, n, vals: list[_Val]) -> None:
        """Concat of activations with constants before and after them (a ViT's class token): the activations
        concatenated, zero-padded along the axis over a (C, H, W) view (wires), and one per-element
        ``scale_shift`` that adds the constants' values where the padding went."""
        where = self._where(n)
        kinds = "".join("a" if v.kind == "act" else "c" for v in vals)
        first, last = kinds.index("a"), kinds.rindex("a")
        if "c" in kinds[first:last + 1] or "zeropad2d" not in REGISTRY:
            raise UnsupportedError(f"Concat node {where!r}: constants between activations; qfx concatenates "
                                   f"constants before or after the activations")
        acts = vals[first:last + 1]
        if len(acts) > 1:
            mid_name = f"{where}__qfx_acts"
            for i, v in enumerate(acts):
                self.vals[f"{mid_name}_{i}"] = v
                self.consumers[f"{mid_name}_{i}"] = 1
            from onnx import helper

            self.h_concat(helper.make_node("Concat", [f"{mid_name}_{i}" for i in range(len(acts))], [mid_name],
                                           name=f"{where}/acts", axis=int(_attrs(n).get("axis", 1))))
            act = self.vals[mid_name]
        else:
            act = acts[0]
        if act.relu:
            act = _Val("act", tensor=self._materialize(n, act))
        xs = self.tensors[act.tensor]
        rank = len(xs.shape) + 1
        ax = int(_attrs(n).get("axis", 1)) % rank
        if ax == 0:
            raise UnsupportedError(f"Concat node {where!r} along the batch axis is not supported")
        full = (1, *xs.shape)
        consts = []
        for v in vals[:first] + vals[last + 1:]:
            c = np.asarray(v.values, dtype=np.float64)
            c = c.reshape((1,) * (rank - c.ndim) + c.shape) if c.ndim <= rank else c
            if c.ndim != rank or c.shape[0] != 1 or any(c.shape[k] != full[k] for k in range(1, rank) if k != ax):
                raise UnsupportedError(f"Concat node {where!r}: a constant of shape {np.shape(v.values)} does not "
                                       f"fit the activations' per-sample shape {xs.shape} along axis {ax}")
            consts.append(c[0])
        front, back = consts[:first], consts[first:]
        top, bottom = sum(c.shape[ax - 1] for c in front), sum(c.shape[ax - 1] for c in back)
        k = ax - 1
        chw = (int(np.prod(xs.shape[:k])), xs.shape[k], int(np.prod(xs.shape[k + 1:])))
        t = self._add("reshape", n, [act.tensor], chw, xs.fmt, attrs={"shape": chw})
        padded = (chw[0], chw[1] + top + bottom, chw[2])
        t = self._add("zeropad2d", n, [t], padded, xs.fmt, attrs={"pads": (top, bottom, 0, 0)})
        out_shape = list(xs.shape)
        out_shape[k] += top + bottom
        out_shape = tuple(out_shape)
        size = int(np.prod(out_shape))
        t = self._add("reshape", n, [t], (size,), xs.fmt, attrs={"shape": (size,)})
        mid_m = self._per_element_vec(act.m, xs.shape)
        mid_h = self._per_element_vec(act.h, xs.shape)
        ones = [np.ones(c.shape) for c in consts]
        mult = np.concatenate(ones[:first] + [mid_m.reshape(xs.shape)] + ones[first:], axis=k).reshape(-1)
        shift = np.concatenate(front + [mid_h.reshape(xs.shape)] + back, axis=k).reshape(-1)
        self.vals[n.output[0]] = _Val("act", tensor=self._unflatten(n, t, mult, shift, out_shape,
                                                                      "constants concatenated"))

    def h_depth_to_space(self, n) -> None:
        """DepthToSpace (pixel shuffle) as reshape -> transpose -> reshape."""
        where = self._where(n)
        x = self._act(n.input[0], n)
        a = _attrs(n)
        r = int(a["blocksize"])
        mode = _attr_str(a, "mode", "DCR")
        xs = self.tensors[x.tensor]
        if "transpose" not in REGISTRY or len(xs.shape) != 3 or xs.shape[0] % (r * r):
            raise UnsupportedError(f"unsupported ONNX op 'DepthToSpace' (node {where!r}) on {xs.shape}; {_CUT}")
        if x.relu or x.m.size > 1 or x.h.size > 1:
            x = _Val("act", tensor=self._materialize(n, x))
        c, hh, ww = xs.shape[0] // (r * r), xs.shape[1], xs.shape[2]
        if mode == "CRD":
            split, perm = (c, r, r, hh, ww), (0, 3, 1, 4, 2)
        else:
            split, perm = (r, r, c, hh, ww), (2, 3, 0, 4, 1)
        fmt = self.tensors[x.tensor].fmt
        t = self._add("reshape", n, [x.tensor], split, fmt, attrs={"shape": split})
        t = self._add("transpose", n, [t], tuple(split[p] for p in perm), fmt, attrs={"perm": perm})
        out = (c, hh * r, ww * r)
        t = self._add("reshape", n, [t], out, fmt, attrs={"shape": out})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h)

    def h_leaky_relu(self, n) -> None:
        """LeakyRelu as a ``lut`` of its input codes (exact table values; inputs up to MAX_TABLE_BITS wide)."""
        self._leaky(n, float(_attrs(n).get("alpha", 0.01)))

    def h_prelu(self, n) -> None:
        """PRelu with one slope for every element (torch ``nn.PReLU()``) is a LeakyRelu; per-channel slopes are
        refused (qfx's tables are per tensor)."""
        slope = np.asarray(self._const(n.input[1], n, "slope").values, dtype=np.float64).ravel()
        if slope.size == 0 or not np.all(slope == slope[0]):
            raise UnsupportedError(f"PRelu node {self._where(n)!r} has per-channel slopes; qfx maps one slope for the "
                                   f"whole tensor (torch nn.PReLU() with num_parameters=1) or {_CUT}")
        self._leaky(n, float(slope[0]))

    def _leaky(self, n, alpha: float) -> None:
        where = self._where(n)
        x = self._act(n.input[0], n)
        if x.relu or np.any(x.h) or np.any(x.m <= 0):
            x = _Val("act", tensor=self._materialize(n, x))  # leaky(t * m) == m * leaky(t) for m > 0
        fx = self.tensors[x.tensor].fmt
        from qfx.fixed.tables import MAX_TABLE_BITS, build_table

        if "lut" not in REGISTRY or fx.width > MAX_TABLE_BITS or not 0 <= alpha:
            raise UnsupportedError(f"unsupported ONNX op {n.op_type!r} (node {where!r}) on {fx.ap_type()} values: qfx "
                                   f"tables take inputs of at most {MAX_TABLE_BITS} bits; quantize before it, or "
                                   f"{_CUT}")
        da = dyadic(np.array([alpha]), bits=24)
        frac = fx.frac_bits + max(da.frac, 0)
        vals = np.where(fx.from_int(np.arange(fx.min_code, fx.max_code + 1)) >= 0, 1.0, da.approx[0]) * \
            fx.from_int(np.arange(fx.min_code, fx.max_code + 1))
        codes = np.round(np.ldexp(vals, frac)).astype(np.int64)
        of = FxFormat.for_code_range(min(0, int(codes.min())), max(0, int(codes.max())), frac, signed=True)
        spec = f"leaky_relu({float(da.approx[0])!r})"
        table = Constant(build_table(spec, fx, of), of)
        t = self._add("lut", n, [x.tensor], self.tensors[x.tensor].shape, of, {"table": table}, {"fn": spec})
        if not da.exact:
            self.report.append(f"{n.op_type} {where!r}: alpha {alpha!r} rounded to {float(da.approx[0])!r}")
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m)

    # ---------------------------------------------------------------- handlers: tables (lut) and softmax
    def _per_tensor(self, n, x: _Val) -> _Val:
        """The view with per-tensor ``m``/``h`` (a per-channel view is materialized first)."""
        if x.m.size > 1 or x.h.size > 1:
            return _Val("act", tensor=self._materialize(n, x))
        return x

    def _table(self, n, x: _Val, fn: Callable[[np.ndarray], np.ndarray], spec: str,
               out: FxFormat | None = None) -> str:
        """``fn`` of the view's real values as a ``lut`` over every code of the IR tensor (the per-tensor view and a
        deferred ReLU fold into the table). ``out=None``: a TABLE_OUT_BITS-bit round-to-nearest, saturating format
        with the most fractional bits that hold the table's range."""
        from qfx.fixed.tables import MAX_TABLE_BITS

        x = self._per_tensor(n, x)
        fx = self.tensors[x.tensor].fmt
        if fx.width > MAX_TABLE_BITS:
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r} reads {fx.width}-bit values "
                                   f"({fx.ap_type()}); qfx tables take inputs of at most {MAX_TABLE_BITS} bits: put a "
                                   f"Quant of <= {MAX_TABLE_BITS} bits before it")
        codes = np.arange(fx.min_code, fx.max_code + 1, dtype=np.int64)
        real = fx.from_int(codes) * float(x.m[0]) + float(x.h[0])
        if x.relu:
            real = np.maximum(real, 0.0)
        with np.errstate(all="ignore"):
            y = np.asarray(fn(real), dtype=np.float64)
        fin = np.isfinite(y)
        if np.any(np.isnan(y)) or not np.any(fin):
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r}: the function is not defined on the whole "
                                   f"input range of {fx.ap_type()}")
        if not np.all(fin):  # a pole at a code the data may never reach (Log or Reciprocal at 0): saturated
            y = np.clip(y, y[fin].min(), y[fin].max())
        if out is None:
            out = _table_format(y)
        table = Constant(np.asarray(out.to_int(y), dtype=np.int64), out.with_modes("TRN", "WRAP"))
        t = self._add("lut", n, [x.tensor], self.tensors[x.tensor].shape, out, {"table": table}, {"fn": spec})
        self.tables[t] = y
        return t

    def _refit_table(self, n, t: str, scale: float, b: int, signed: bool, narrow: bool, rounding: str, lo: int,
                     hi: int) -> _Val:
        """A Quant right after a table: the table holds the Quant's output codes of the function's values, so the
        function is rounded once (as QONNX does, float32 ``y / scale``), not first to TABLE_OUT_BITS bits."""
        from qfx.fixed.kernels import codes_from_double

        y = self.tables.pop(t)
        q = (y.astype(np.float32) / np.float32(scale)).astype(np.float64)
        codes = np.clip(codes_from_double(q, FxFormat(62, 62, True, rounding, "SAT")), lo, hi)
        pow2 = is_pow2(np.asarray([scale]))
        e = pow2_exponent(scale) if pow2 else 0
        sym = narrow and signed and b > 1 and _sat_sym_is_symmetric()
        fmt = FxFormat(b, b + e, signed, rounding, "SAT_SYM" if sym else "SAT")
        k = next(i for i, nd in enumerate(self.nodes) if nd.output == t)
        table = Constant(np.asarray(codes, dtype=np.int64), fmt.with_modes("TRN", "WRAP"))
        self.nodes[k] = self.nodes[k].replace(consts={**self.nodes[k].consts, "table": table})
        self.tensors[t] = TensorSpec(t, self.tensors[t].shape, fmt)
        self.exact.discard(t)
        return _Val("act", tensor=t, m=np.ones(1) if pow2 else np.asarray([scale]))

    def h_activation(self, n) -> None:
        """Sigmoid, Tanh, HardSigmoid, HardSwish, Elu, Selu, Softplus, Softsign, Erf, Gelu, Mish, Sqrt, Exp, Log,
        Reciprocal, Abs, Celu, ThresholdedRelu: a ``lut`` (see ``_table``: an infinite entry, e.g. Log or Reciprocal
        at code 0, saturates to the nearest finite one; a NaN, e.g. Sqrt of a negative code, is refused)."""
        a = _attrs(n)
        op = n.op_type
        alpha = float(a.get("alpha", {"HardSigmoid": 0.2, "Elu": 1.0, "Selu": 1.6732632423543772, "Celu": 1.0,
                                      "ThresholdedRelu": 1.0}.get(op, 0.0)))
        beta = float(a.get("beta", 0.5))
        gamma = float(a.get("gamma", 1.0507009873554805))
        fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "Sigmoid": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
            "Tanh": np.tanh,
            "HardSigmoid": lambda v: np.clip(alpha * v + beta, 0.0, 1.0),
            "HardSwish": lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
            "Elu": lambda v: np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0))),
            "Selu": lambda v: gamma * np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0))),
            "Softplus": lambda v: np.logaddexp(0.0, v),
            "Softsign": lambda v: v / (1.0 + np.abs(v)),
            "Erf": _erf,
            "Gelu": (lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))))
            if _attr_str(a, "approximate", "none") == "tanh" else (lambda v: 0.5 * v * (1.0 + _erf(v / math.sqrt(2.0)))),
            "Mish": lambda v: v * np.tanh(np.logaddexp(0.0, v)),
            "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Reciprocal": lambda v: 1.0 / v, "Abs": np.abs,
            "Celu": lambda v: np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0) / alpha)),
            "ThresholdedRelu": lambda v: np.where(v > alpha, v, 0.0),
        }
        x = self._act(n.input[0], n)
        spec = op.lower() if op not in ("HardSigmoid", "Elu", "Selu", "Celu", "ThresholdedRelu") else \
            f"{op.lower()}({alpha!r})"
        if op == "Gelu":
            spec = f"gelu({_attr_str(a, 'approximate', 'none')})"
        t = self._table(n, x, fns[op], f"onnx:{spec}")
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def h_compare(self, n) -> None:
        """Greater/Less/GreaterOrEqual/LessOrEqual of an activation and a constant scalar: no IR of its own; the
        Where that reads it becomes a table (``h_where``)."""
        from qfx.fixed.tables import SELECT_OPS

        op = {"Greater": "gt", "Less": "lt", "GreaterOrEqual": "ge", "LessOrEqual": "le"}[n.op_type]
        a, b = self._get(n.input[0], n), self._get(n.input[1], n)
        if a.kind == "act" and b.kind == "const" and np.size(b.values) == 1:
            x, c = n.input[0], float(np.asarray(b.values).reshape(-1)[0])
        elif b.kind == "act" and a.kind == "const" and np.size(a.values) == 1:
            x, c, op = n.input[1], float(np.asarray(a.values).reshape(-1)[0]), {"gt": "lt", "lt": "gt", "ge": "le",
                                                                                "le": "ge"}[op]
        else:
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r}: qfx compares an activation with one "
                                   f"constant; {_CUT}")
        assert op in SELECT_OPS
        self.comparisons[n.output[0]] = (x, op, c)

    def h_cast(self, n) -> None:
        """Cast of a comparison to bool (masked_fill's export) or of an activation to float32 (a no-op on values):
        the same value; other casts are refused."""
        to = int(_attrs(n).get("to", 0))
        src = n.input[0]
        if src in self.comparisons and to == 9:  # BOOL
            self.comparisons[n.output[0]] = self.comparisons[src]
            return
        v = self._get(src, n)
        if v.kind in ("act", "const") and to == 1:  # FLOAT
            self.vals[n.output[0]] = v
            return
        raise UnsupportedError(f"Cast node {self._where(n)!r} to type {to}: qfx keeps activations in fixed point; "
                               f"{_CUT}")

    def h_not(self, n) -> None:
        """Not of a comparison: the opposite comparison."""
        if n.input[0] not in self.comparisons:
            raise UnsupportedError(f"Not node {self._where(n)!r}: qfx negates comparisons only; {_CUT}")
        x, op, c = self.comparisons[n.input[0]]
        self.comparisons[n.output[0]] = (x, {"gt": "le", "le": "gt", "ge": "lt", "lt": "ge"}[op], c)

    def h_where(self, n) -> None:
        """Where(x > c, a, b) whose branches are the same IR tensor as x through per-tensor views (x, 0.1 * x,
        x - 1) or constant scalars (hand-written LeakyReLU, thresholds, masked fills): one ``lut`` over x's codes,
        the comparison and both branches computed exactly as the float model does at every code."""
        from qfx.fixed.tables import SELECT_OPS

        where = self._where(n)
        if len(n.input) != 3 or n.input[0] not in self.comparisons:
            raise UnsupportedError(f"Where node {where!r}: qfx selects by a comparison of an activation with a "
                                   f"constant (Greater/Less/GreaterOrEqual/LessOrEqual); {_CUT}")
        xname, op, c = self.comparisons[n.input[0]]
        x = self._act(xname, n)
        branches = []
        for name in n.input[1:]:
            v = self._get(name, n)
            if v.kind == "const" and np.size(v.values) == 1:
                branches.append((None, float(np.asarray(v.values).reshape(-1)[0])))
            elif v.kind == "act" and v.tensor == x.tensor and v.m.size == 1 and v.h.size == 1:
                branches.append((v, 0.0))
            else:
                raise UnsupportedError(f"Where node {where!r}: a branch that is not the compared activation through "
                                       f"a per-tensor scale/shift or a constant scalar; {_CUT}")
        if x.m.size != 1 or x.h.size != 1:
            raise UnsupportedError(f"Where node {where!r}: the compared activation has per-channel scales; {_CUT}")

        def real(v: _Val, t: np.ndarray) -> np.ndarray:
            r = t * float(v.m[0]) + float(v.h[0])
            return np.maximum(r, 0.0) if v.relu else r

        def fn(t: np.ndarray) -> np.ndarray:
            cond = SELECT_OPS[op](real(x, t), c)
            a, b = (real(v, t) if v is not None else np.full_like(t, k) for v, k in branches)
            return np.where(cond, a, b)

        t = self._table(n, _Val("act", tensor=x.tensor), fn, f"onnx:where_{op}({c!r})")
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def h_clip(self, n) -> None:
        """Clip (ReLU6, hard-tanh): the ``clip`` op when both bounds are codes of the view, else a ``lut``."""
        a = _attrs(n)
        ins = list(n.input)
        def bound(k: int, key: str, default: float) -> float:
            if len(ins) > k and ins[k]:
                return float(np.asarray(self._const(ins[k], n, key).values).ravel()[0])
            return float(a.get(key, default))

        lo, hi = bound(1, "min", -np.inf), bound(2, "max", np.inf)
        if ins[0] in self.qdq:  # QCDQ (Brevitas export_onnx_qcdq): a clip of the integer q between Q and DQ
            return self._qdq_clip(n, lo, hi)
        v0 = self._get(ins[0], n)
        if v0.kind == "const" and v0.fmt is None and v0.codes is None:  # e.g. QCDQ int8 weights: folded
            vals = np.asarray(v0.values)
            self.vals[n.output[0]] = _Val("const", np.clip(vals, lo, hi).astype(vals.dtype))
            return
        x = self._per_tensor(n, self._act(ins[0], n))
        if x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        fx = self.tensors[x.tensor].fmt
        m, h = float(x.m[0]), float(x.h[0])
        bounds = []
        for b in (lo, hi):
            c = (b - h) / m * 2.0 ** fx.frac_bits if math.isfinite(b) else b
            bounds.append(c)
        if m > 0 and all(not math.isfinite(c) or c == math.floor(c) for c in bounds):
            clo = int(min(max(bounds[0], fx.min_code), fx.max_code))  # bounds outside the format change nothing
            chi = int(max(min(bounds[1], fx.max_code), fx.min_code))
            t = self._add("clip", n, [x.tensor], self.tensors[x.tensor].shape, fx, attrs={"lo": clo, "hi": chi})
            self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h)
            return
        t = self._table(n, x, lambda v: np.clip(v, lo, hi), f"onnx:clip({lo!r},{hi!r})")
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def h_softmax(self, n) -> None:
        """Softmax over the last axis (a vector, or the rows of a matrix such as attention scores): the ``softmax``
        op with an ``SOFTMAX_OUT`` output (values in [0, 1], 1.0 included). A per-tensor shift of the input cancels."""
        from qfx.ops.softmax import MAX_SOFTMAX_IN_BITS, softmax_tables

        where = self._where(n)
        x = self._act(n.input[0], n)
        shape = self.tensors[x.tensor].shape
        rank = len(shape) + 1
        ax = int(_attrs(n).get("axis", -1 if self._opset() >= 13 else 1)) % rank
        if 0 < ax < rank - 1 and self._opset() >= 13 and "transpose" in REGISTRY:
            return self._softmax_moved(n, ax, rank)
        if 0 < ax < rank - 1:  # before opset 13: over the flattened axes ax.. (AlexNet/SqueezeNet's (N, 1000, 1, 1))
            return self._softmax_flattened(n, x, ax)
        if ax != rank - 1 or ax == 0:
            raise UnsupportedError(f"{n.op_type} node {where!r}: qfx computes softmax along the last axis (of a vector "
                                   f"or the rows of a matrix); this one is over axis {ax} of a rank-{rank} tensor; "
                                   f"{_CUT}")
        if x.m.size > 1 or x.h.size > 1 or x.relu or np.any(x.m <= 0):
            x = _Val("act", tensor=self._materialize(n, x))
        fx = self.tensors[x.tensor].fmt
        if fx.width > MAX_SOFTMAX_IN_BITS:
            raise UnsupportedError(f"{n.op_type} node {where!r} reads {fx.width}-bit values ({fx.ap_type()}); qfx's "
                                   f"softmax takes at most {MAX_SOFTMAX_IN_BITS}-bit inputs: put a Quant of <= "
                                   f"{MAX_SOFTMAX_IN_BITS} bits before it" + (
                                       "" if any(q.op_type in ("Quant", "QuantizeLinear", "MultiThreshold")
                                                 for q in self.m.graph.node)
                                       else ", or quantize the float model (qfx quantize MODEL --calib DATA.npy)"))
        t = x.tensor
        if x.m[0] != 1:  # real = t * m: requantize to the same width with the scale applied (the shift cancels)
            lim = max(abs(fx.min), abs(fx.max)) * float(x.m[0])
            ib = max(1, math.ceil(math.log2(lim)) + 1) if lim > 0 else 1
            f2 = FxFormat(fx.width, ib, True, "RND_CONV", "SAT")
            t = self._scale_shift(n, t, x.m, np.zeros(1), f2, "softmax input scale")
            fx = f2
        et, rt, shift = softmax_tables(shape[-1], fx, SOFTMAX_OUT)
        out = self._add("softmax", n, [t], shape, SOFTMAX_OUT, {"exp_table": et, "recip_table": rt},
                        {"shift": shift})
        self.exact.discard(out)  # table approximations: a following Quant is a second rounding, not a fused cast
        self.vals[n.output[0]] = _Val("act", tensor=out)

    def _softmax_moved(self, n, ax: int, rank: int) -> None:
        """Softmax over an inner axis (the channels of (N, C, H, W): per-pixel class scores): the axis moved last by
        a ``transpose`` (wires), the row-wise softmax, and the inverse ``transpose``."""
        from onnx import helper

        base = n.name or n.output[0]
        perm = [0] + [a for a in range(1, rank) if a != ax] + [ax]
        inv = [int(i) for i in np.argsort(perm)]
        t_in, t_out = f"{base}__qfx_last", f"{base}__qfx_rows"
        self.h_transpose(helper.make_node("Transpose", [n.input[0]], [t_in], name=f"{base}_to_last", perm=perm))
        self.h_softmax(helper.make_node("Softmax", [t_in], [t_out], name=base, axis=-1))
        self.h_transpose(helper.make_node("Transpose", [t_out], [n.output[0]], name=f"{base}_back", perm=inv))

    def _softmax_flattened(self, n, x: _Val, ax: int) -> None:
        """Softmax before opset 13: the input seen as (rows, cols) with cols the product of axes ``ax``.. (a
        reshape, a wire), the row softmax, and the reshape back."""
        from onnx import helper

        shape = self.tensors[x.tensor].shape
        base = _clean_name(n.name or n.output[0])
        cols = int(np.prod(shape[ax - 1:]))
        flat = [cols] if ax == 1 else [int(np.prod(shape[:ax - 1])), cols]
        t_in, t_out = f"{base}__qfx_flat", f"{base}__qfx_rows"
        self._reshape_act(_FakeNode(t_in), x, flat)
        self.consumers[t_in] = self.consumers[t_out] = 1
        self.h_softmax(helper.make_node("Softmax", [t_in], [t_out], name=n.name or base, axis=-1))
        self._reshape_act(_FakeNode(n.output[0]), self.vals[t_out], list(shape))

    def _opset(self) -> int:
        return next((int(o.version) for o in self.m.opset_import if o.domain in ("", "ai.onnx")), 13)

    def h_multithreshold(self, n) -> None:
        """FINN/QONNX MultiThreshold: ``count(x >= thresholds[c, :]) * out_scale + out_bias`` as one ``lut``.

        The count depends on the channel when thresholds do; distinct threshold rows get one block of the table
        each, selected by a ``scale_shift`` that adds ``row * 2**W`` to the input code (exact integer
        arithmetic), so the table index is ``W + ceil(log2(rows))`` bits (at most MT_TABLE_BITS)."""
        from qfx.fixed.tables import MAX_TABLE_BITS

        where = self._where(n)
        if len(n.input) != 2:
            raise BadInputError(f"MultiThreshold node {where!r} needs inputs x, thresholds")
        a = _attrs(n)
        x = self._act(n.input[0], n)
        thr = np.asarray(self._const(n.input[1], n, "thresholds").values, dtype=np.float64)
        xs = self.tensors[x.tensor]
        rank = len(xs.shape) + 1
        layout = _attr_str(a, "data_layout", "")
        if not layout:
            layout = {2: "NC", 3: "NWC", 4: "NCHW"}.get(rank, "NC")
        cdim = layout.index("C") if "C" in layout else 1
        if thr.ndim != 2:
            raise BadInputError(f"MultiThreshold node {where!r}: thresholds of shape {thr.shape} are not (C, T)")
        if cdim != 1 and thr.shape[0] > 1:
            raise UnsupportedError(f"MultiThreshold node {where!r}: per-channel thresholds on a {layout} tensor; qfx "
                                   f"tensors are channels-first: export the model channels-first")
        fx = self.tensors[x.tensor].fmt
        if fx.width > MAX_TABLE_BITS:
            raise UnsupportedError(f"MultiThreshold node {where!r} reads {fx.width}-bit values ({fx.ap_type()}); qfx "
                                   f"maps thresholds onto a table over every input code, at most {MAX_TABLE_BITS} bits")
        c = self._channels(x.tensor) if cdim == 1 else 1
        if thr.shape[0] not in (1, c):
            raise BadInputError(f"MultiThreshold node {where!r}: {thr.shape[0]} threshold rows for {c} channels")
        codes = np.arange(fx.min_code, fx.max_code + 1, dtype=np.int64)
        m = np.broadcast_to(self._full(x.m, x.tensor), (self._channels(x.tensor),))
        h = np.broadcast_to(self._full(x.h, x.tensor), (self._channels(x.tensor),))
        per_chan = thr.shape[0] > 1 or x.m.size > 1 or x.h.size > 1
        rows_of = range(self._channels(x.tensor)) if per_chan else range(1)
        tables, row_idx = [], []
        seen: dict[bytes, int] = {}
        for ch in rows_of:
            real = fx.from_int(codes) * m[ch] + h[ch]
            if x.relu:
                real = np.maximum(real, 0.0)
            cnt = np.count_nonzero(real[:, None] >= thr[ch if thr.shape[0] > 1 else 0][None, :], axis=1)
            key = cnt.astype(np.int64).tobytes()
            if key not in seen:
                seen[key] = len(tables)
                tables.append(cnt.astype(np.int64))
            row_idx.append(seen[key])
        rb = (len(tables) - 1).bit_length()
        if fx.width + rb > MT_TABLE_BITS:
            raise UnsupportedError(f"MultiThreshold node {where!r}: {len(tables)} distinct threshold rows over "
                                   f"{fx.width}-bit inputs need a {fx.width + rb}-bit table index (limit "
                                   f"{MT_TABLE_BITS}); requantize its input to fewer bits")
        nt = thr.shape[1]
        of = FxFormat(max(1, nt.bit_length()), max(1, nt.bit_length()), False)
        src = x.tensor
        if len(tables) > 1:  # index = (code - min_code) + row * 2**W, unsigned, W + rb bits
            ix = FxFormat(fx.width + rb, fx.width + rb - fx.frac_bits, False, "TRN", "WRAP")
            shift = np.asarray(row_idx, dtype=np.int64) * (1 << fx.width) - fx.min_code
            sf = FxFormat.for_code_range(0, int(shift.max(initial=0)), fx.frac_bits, signed=False)
            one = Constant(np.ones(len(row_idx), dtype=np.int64), FxFormat(2, 2, True))
            acc = scale_shift_format(fx, one.fmt, sf)
            src = self._add("scale_shift", _FakeNode(f"{where}_row"), [x.tensor], xs.shape, ix,
                            {"scale": one, "shift": Constant(shift, sf)}, acc=acc)
            full = np.zeros(1 << ix.width, dtype=np.int64)
            for k, tb in enumerate(tables):
                full[k << fx.width:(k << fx.width) + tb.size] = tb
            table_codes = full
        else:
            table_codes = tables[0]
        table = Constant(table_codes, of)
        t = self._add("lut", n, [src], xs.shape, of, {"table": table}, {"fn": "multithreshold"})
        scale, bias = float(a.get("out_scale", 1.0)), float(a.get("out_bias", 0.0))
        self.vals[n.output[0]] = _Val("act", tensor=t, m=np.array([scale]), h=np.array([bias]))

    def h_floatquant(self, n) -> None:
        """QONNX FloatQuant (minifloat): on constants the exact dyadic values; on activations of at most
        MAX_TABLE_BITS bits a ``lut`` whose entries are the minifloat values (exact in a wide fixed format)."""
        where = self._where(n)
        if len(n.input) != 6:
            raise BadInputError(f"FloatQuant node {where!r} needs inputs x, scale, exponent_bitwidth, "
                                f"mantissa_bitwidth, exponent_bias, max_val")
        a = _attrs(n)
        sc, eb, mb, bias, mx = self._quant_params(n, list(n.input[1:6]))
        rm = _attr_str(a, "rounding_mode", "ROUND").upper()
        if rm not in ("ROUND", "HALF_EVEN", "FLOOR", "CEIL", "ROUND_TO_ZERO", "DOWN", "UP"):
            raise UnsupportedError(f"FloatQuant node {where!r} has rounding mode {rm!r}")
        if not int(a.get("saturation", 1)):
            raise UnsupportedError(f"FloatQuant node {where!r} does not saturate (inf/NaN outputs); qfx needs "
                                   f"saturation=1")
        e_bits, m_bits = int(np.asarray(eb).ravel()[0]), int(np.asarray(mb).ravel()[0])
        e_bias, max_val = float(np.asarray(bias).ravel()[0]), float(np.asarray(mx).ravel()[0])
        s = np.asarray(sc, dtype=np.float64)
        if s.size == 0 or np.any(s <= 0) or not np.all(np.isfinite(s)):
            raise FormatError(f"FloatQuant node {where!r} has a non-positive or non-finite scale")
        x = self._get(n.input[0], n)
        if x.kind == "input":
            self._act(n.input[0], n)
        if x.kind == "const":
            v = np.asarray(x.values)
            dt = v.dtype if v.dtype in (np.float32, np.float64) else np.float64
            scale = _broadcast_scale(s, v.shape)
            q = minifloat(np.asarray(v.astype(dt) / scale.astype(dt), dtype=np.float64), e_bits, m_bits, e_bias,
                          max_val, rm)
            codes, fmt = _dyadic_codes(q, f"FloatQuant {where!r} values")
            if s.size == 1 and is_pow2(s):
                e = pow2_exponent(float(s.ravel()[0]))
                self.vals[n.output[0]] = _Val("const", q * scale, FxFormat(fmt.width, fmt.int_bits + e, True))
            else:
                cs = scale * 2.0 ** -fmt.frac_bits
                self.vals[n.output[0]] = _Val("const", q * scale, None, codes, np.ascontiguousarray(cs))
            return
        if s.size != 1:
            raise UnsupportedError(f"FloatQuant node {where!r} quantizes an activation per channel")
        s0 = float(s.ravel()[0])
        fn = lambda r: minifloat(r / s0, e_bits, m_bits, e_bias, max_val, rm)  # noqa: E731
        xv = self._per_tensor(n, x)
        fx = self.tensors[xv.tensor].fmt
        codes = np.arange(fx.min_code, fx.max_code + 1, dtype=np.int64) if fx.width <= 12 else np.zeros(1, np.int64)
        real = fx.from_int(codes) * float(xv.m[0]) + float(xv.h[0])
        _, of = _dyadic_codes(fn(np.maximum(real, 0.0) if xv.relu else real), f"FloatQuant {where!r} values")
        t = self._table(n, xv, fn, f"onnx:floatquant(e{e_bits}m{m_bits})", of.with_modes("RND_CONV", "SAT"))
        self.vals[n.output[0]] = _Val("act", tensor=t, m=np.array([s0]))

    # ---------------------------------------------------------------- handlers: pooling and shapes
    def _pool_attrs(self, n, xs: TensorSpec) -> tuple[list[int], list[int], tuple[int, int]]:
        a = _attrs(n)
        where = self._where(n)
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise UnsupportedError(f"{n.op_type} node {where!r}: dilations are not supported")
        k = [int(v) for v in a["kernel_shape"]]
        st = [int(v) for v in a.get("strides", [1, 1])]
        pads = self._pads(n, a, xs.shape[1:], (k[0], k[1]), st)
        # ceil_mode changes nothing when the windows tile the padded input exactly (torch writes it for ceil_mode=True)
        if int(a.get("ceil_mode", 0)) and any((size + 2 * p - kk) % s for size, p, kk, s
                                              in zip(xs.shape[1:], pads, k, st)):
            raise UnsupportedError(f"{n.op_type} node {where!r}: ceil_mode with a partial last window is not "
                                   f"supported")
        return k, st, pads

    def h_maxpool(self, n) -> None:
        if self._one_d(n, _Converter.h_maxpool):
            return
        where = self._where(n)
        x = self._act(n.input[0], n)
        if np.any(x.m <= 0):
            x = _Val("act", tensor=self._materialize(n, x))
        xs = self.tensors[x.tensor]
        if len(xs.shape) != 3 or len(n.output) > 1 and n.output[1]:
            raise UnsupportedError(f"MaxPool node {where!r}: only 1-D and 2-D pooling without indices is supported")
        a = _attrs(n)
        if "kernel_shape" in a:
            k0, st0 = [int(v) for v in a["kernel_shape"]], [int(v) for v in a.get("strides", [1, 1])]
            p4 = self._pads4(n, a, xs.shape[1:], (k0[0], k0[1]), st0)
            if int(a.get("ceil_mode", 0)):  # partial last windows: more end padding (max pooling ignores it)
                ends = [max(0, (_ceil_pool_size(size, kk, s, p0, p1) - 1) * s + kk - size - p0 - p1)
                        for size, kk, s, p0, p1 in zip(xs.shape[1:], k0, st0, (p4[0], p4[2]), (p4[1], p4[3]))]
                if any(ends):
                    return self._maxpool_edge_padded(n, x, (p4[0], p4[1] + ends[0], p4[2], p4[3] + ends[1]))
            if p4[0] != p4[1] or p4[2] != p4[3]:
                return self._maxpool_edge_padded(n, x, p4)
        k, st, pads = self._pool_attrs(n, xs)
        shape = (xs.shape[0], conv_out_size(xs.shape[1], k[0], st[0], pads[0]),
                 conv_out_size(xs.shape[2], k[1], st[1], pads[1]))
        t = self._add("maxpool2d", n, [x.tensor], shape, xs.fmt, attrs={"kernel": tuple(k), "stride": tuple(st),
                                                                          "padding": pads})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h, relu=x.relu)

    def _maxpool_edge_padded(self, n, x: _Val, p4: tuple[int, int, int, int]) -> None:
        """MaxPool with asymmetric padding (TF/Caffe 'SAME' pools: (0, 1, 0, 1)): a replicate ``zeropad2d``, then the
        unpadded pool. Max pooling pads with -inf, and every window holds a real element in each padded row and
        column (pads are smaller than the kernel), so the edge copies never change a maximum."""
        from onnx import helper

        xs = self.tensors[x.tensor]
        c, h, w = xs.shape
        base = _clean_name(self._where(n))
        t = self._add("zeropad2d", _FakeNode(f"{base}_edge"), [x.tensor], (c, h + p4[0] + p4[1], w + p4[2] + p4[3]),
                      xs.fmt, attrs={"pads": p4, "mode": "replicate"})
        src = f"{base}__qfx_edge"
        self.vals[src] = _Val("act", tensor=t, m=x.m, h=x.h, relu=x.relu)
        self.consumers[src] = 1
        kw = {k: v for k, v in _attrs(n).items() if k not in ("pads", "auto_pad", "ceil_mode")}
        self.h_maxpool(helper.make_node("MaxPool", [src], list(n.output), name=n.name or "MaxPool", **kw))

    def h_avgpool(self, n) -> None:
        if self._one_d(n, _Converter.h_avgpool):
            return
        where = self._where(n)
        x = self._act(n.input[0], n)
        xs0 = self.tensors[x.tensor]
        if len(xs0.shape) != 3:
            raise UnsupportedError(f"{n.op_type} node {where!r}: only 1-D (C, L) and 2-D (C, H, W) pooling is "
                                   f"supported")
        if n.op_type == "GlobalAveragePool":
            k, st, pads = [xs0.shape[1], xs0.shape[2]], [1, 1], (0, 0)
        else:
            a = _attrs(n)
            k0, st0 = [int(v) for v in a["kernel_shape"]], [int(v) for v in a.get("strides", [1, 1])]
            p4 = self._pads4(n, a, xs0.shape[1:], (k0[0], k0[1]), st0)
            include = bool(int(a.get("count_include_pad", 0)))
            if int(a.get("ceil_mode", 0)) and p4[0] == p4[1] and p4[2] == p4[3] and any(
                    (size + 2 * p - kk) % s for size, p, kk, s in zip(xs0.shape[1:], (p4[0], p4[2]), k0, st0)):
                # partial last windows: torch's window counts, one constant matrix per axis (QAvgPoolMatrix's)
                from qfx.nn.op_layers import pool_matrix

                mats = [pool_matrix(size, kk, s, p, True, include)
                        for size, kk, s, p in zip(xs0.shape[1:], k0, st0, (p4[0], p4[2]))]
                return self._resize_separable(n, x, mats)
            if any(p4) and not include:
                return self._avgpool_real_count(n, x, k0, st0, p4)
            k, st, pads = self._pool_attrs(n, xs0)
        if x.relu or any(pads) and np.any(x.h):
            x = _Val("act", tensor=self._materialize(n, x))
        xs = self.tensors[x.tensor]
        win = k[0] * k[1]
        if win & (win - 1) == 0:  # 1/(kh*kw) is a power of two: exact reciprocal
            lg = win.bit_length() - 1
            recip, m = Constant(np.array([1]), FxFormat(2, 2 - lg, True)), x.m
        else:  # the window sum, with 1/(kh*kw) in the view
            recip, m = Constant(np.array([1]), FxFormat(2, 2, True)), x.m / win
        acc = avgpool_format(xs.fmt, recip.fmt, win)
        shape = (xs.shape[0], conv_out_size(xs.shape[1], k[0], st[0], pads[0]),
                 conv_out_size(xs.shape[2], k[1], st[1], pads[1]))
        t = self._add("avgpool2d", n, [x.tensor], shape, acc, {"recip": recip},
                      {"kernel": tuple(k), "stride": tuple(st), "padding": pads}, acc)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=m, h=x.h)

    def _avgpool_real_count(self, n, x: _Val, k: list[int], st: list[int], p4: tuple[int, int, int, int]) -> None:
        """AveragePool with padding and ``count_include_pad=0`` (Keras/TF 'same' pools, Inception, ShuffleNet): the
        window sum over the zero-padded input (``zeropad2d``, ``avgpool2d`` with reciprocal 1: exact), then each
        output position divided by its own count of real elements: positions moved to the channel axis (a reshape
        and a ``transpose``, wires) take 1/count in one per-channel ``scale_shift`` (dyadic constants, as for any
        non-power-of-two scale), and move back."""
        where = self._where(n)
        if int(_attrs(n).get("ceil_mode", 0)):
            raise UnsupportedError(f"AveragePool node {where!r}: ceil_mode with count_include_pad=0 is not supported")
        if x.relu or x.m.size > 1 or x.h.size > 1:
            x = _Val("act", tensor=self._materialize(n, x))
        xs = self.tensors[x.tensor]
        c, hh, ww = xs.shape
        base = _clean_name(where)
        ph, pw = hh + p4[0] + p4[1], ww + p4[2] + p4[3]
        t = self._add("zeropad2d", _FakeNode(f"{base}_pad"), [x.tensor], (c, ph, pw), xs.fmt, attrs={"pads": p4})
        oh, ow = (ph - k[0]) // st[0] + 1, (pw - k[1]) // st[1] + 1
        recip = Constant(np.array([1]), FxFormat(2, 2, True))
        acc = avgpool_format(xs.fmt, recip.fmt, k[0] * k[1])
        s = self._add("avgpool2d", _FakeNode(f"{base}_sum"), [t], (c, oh, ow), acc, {"recip": recip},
                      {"kernel": tuple(k), "stride": tuple(st), "padding": (0, 0)}, acc)
        rows = [min(i * st[0] + k[0], p4[0] + hh) - max(i * st[0], p4[0]) for i in range(oh)]
        cols = [min(j * st[1] + k[1], p4[2] + ww) - max(j * st[1], p4[2]) for j in range(ow)]
        count = np.outer(rows, cols).reshape(-1).astype(np.float64)
        if np.any(count <= 0):
            raise BadInputError(f"AveragePool node {where!r}: a window covers padding only")
        npos = oh * ow
        r = self._add("reshape", _FakeNode(f"{base}_positions"), [s], (c, npos), acc, attrs={"shape": (c, npos)})
        tr = self._add("transpose", _FakeNode(f"{base}_positions_first"), [r], (npos, c), acc, attrs={"perm": (1, 0)})
        # the averages lie in the input's real range: its width plus 16 fractional guard bits (a lossless format
        # would be ~40 bits wide and leave the next requantizer too few significant bits for its own multiplier)
        m0, h0 = float(x.m[0]), float(x.h[0])
        big = max(abs(xs.fmt.min * m0 + h0), abs(xs.fmt.max * m0 + h0), 2.0 ** -30)
        ib = math.floor(math.log2(big)) + 2
        fb = math.ceil(-math.log2(xs.fmt.step * abs(m0))) + 16
        out = FxFormat(min(ib + fb, 48), ib, True, "RND_CONV", "SAT")
        mean = self._scale_shift(n, tr, m0 / count, np.full(npos, h0), out,
                                 "average over the real elements (count_include_pad=0)")
        fm = self.tensors[mean].fmt
        back = self._add("transpose", _FakeNode(f"{base}_channels_first"), [mean], (c, npos), fm,
                         attrs={"perm": (1, 0)})
        y = self._add("reshape", n, [back], (c, oh, ow), fm, attrs={"shape": (c, oh, ow)})
        self.vals[n.output[0]] = _Val("act", tensor=y)

    def h_reduce_mean(self, n) -> None:
        """ReduceMean: a global average pool over every spatial axis (``x.mean((2, 3))``), else see ``_reduce``."""
        self._reduce(n, "mean")

    def h_reduce_max(self, n) -> None:
        """ReduceMax: a max pool over the whole plane (``x.amax((2, 3))``), else see ``_reduce``."""
        self._reduce(n, "max")

    def h_reduce_min(self, n) -> None:
        """ReduceMin: the negated ReduceMax of the negated view (``-max(-x)``, exact)."""
        self._reduce(n, "min")

    def h_reduce_sum(self, n) -> None:
        """ReduceSum: the average pool's exact window sum, R times the mean in the view."""
        self._reduce(n, "sum")

    def _reduce(self, n, kind: str) -> None:
        """Reduce{Mean,Max,Min,Sum} over non-batch axes. Over every spatial axis of (N, C, L) / (N, C, H, W): a global
        pool (``keepdims=0`` flattens to (C,)). Over any other set of axes (the features of (N, n), the last axis of
        (N, C, H, W), the channels, everything): the reduced axes moved last (a ``transpose``, a wire), the tensor
        seen as (A, B, R) (a ``reshape``), one (1, R) pool and a reshape to the result. A per-channel view survives
        when the channels are kept; a view with a ReLU is applied first for mean/sum (not for max: it commutes)."""
        from onnx import helper

        where = self._where(n)
        x = self._act(n.input[0], n)
        shape = self.tensors[x.tensor].shape
        rank = len(shape) + 1
        a = _attrs(n)
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            axes = self._int_list(n.input[1], n)
        if axes is not None and not len(axes) and int(a.get("noop_with_empty_axes", 0)):
            self.vals[n.output[0]] = x
            return
        axes = sorted({int(v) % rank for v in axes}) if axes is not None and len(axes) else list(range(rank))
        keep = bool(int(a.get("keepdims", 1)))
        if 0 in axes:
            raise UnsupportedError(f"{n.op_type} node {where!r} reduces over the batch axis; qfx computes each sample "
                                   f"on its own; {_CUT}")
        per = [v - 1 for v in axes]
        kept = [i for i in range(len(shape)) if i not in per]
        if not keep and not kept:
            raise UnsupportedError(f"{n.op_type} node {where!r} reduces a whole sample to a scalar (keepdims=0); qfx "
                                   f"keeps one axis per sample: export with keepdims=1 (keepdim=True); {_CUT}")
        if kind == "min":
            if x.relu:
                x = _Val("act", tensor=self._materialize(n, x))
            x = x.view(-x.m, -x.h)
        elif kind in ("mean", "sum") and x.relu:
            x = _Val("act", tensor=self._materialize(n, x))
        base = _clean_name(where)
        tmp = f"{base}__qfx_pooled"
        if rank in (3, 4) and axes == list(range(2, rank)):  # every spatial axis: the global pool on the plane
            win = int(np.prod(shape[1:]))
            src = f"{base}__qfx_plane"
            self.vals[src] = x
            self.consumers[src] = 1
            if kind == "mean" or kind == "sum":
                self.h_avgpool(helper.make_node("GlobalAveragePool", [src], [tmp], name=n.name or n.op_type))
            else:
                self.h_maxpool(helper.make_node("MaxPool", [src], [tmp], name=n.name or n.op_type,
                                                kernel_shape=list(shape[1:])))
            final = tuple(shape[:1]) + ((1,) * (len(shape) - 1) if keep else ())
        else:
            if 0 in per and (x.m.size > 1 or x.h.size > 1):  # the view varies along a reduced axis
                x = _Val("act", tensor=self._materialize(n, x))
            cur = x
            perm = kept + per
            if perm != list(range(len(shape))):
                t = self._add("transpose", _FakeNode(f"{base}_last"), [cur.tensor], tuple(shape[p] for p in perm),
                              self.tensors[cur.tensor].fmt, attrs={"perm": tuple(perm)})
                cur = _Val("act", tensor=t, m=cur.m, h=cur.h, relu=cur.relu)
            win = int(np.prod([shape[i] for i in per]))
            k = int(np.prod([shape[i] for i in kept])) if kept else 1
            s3 = (shape[0], k // shape[0], win) if 0 not in per else (1, k, win)
            if self.tensors[cur.tensor].shape != s3:
                t = self._add("reshape", _FakeNode(f"{base}_rows"), [cur.tensor], s3, self.tensors[cur.tensor].fmt,
                              attrs={"shape": s3})
                cur = _Val("act", tensor=t, m=cur.m, h=cur.h, relu=cur.relu)
            src = f"{base}__qfx_rows"
            self.vals[src] = cur
            self.consumers[src] = 1
            op = "AveragePool" if kind in ("mean", "sum") else "MaxPool"
            (self.h_avgpool if op == "AveragePool" else self.h_maxpool)(
                helper.make_node(op, [src], [tmp], name=n.name or n.op_type, kernel_shape=[1, win]))
            final = tuple(1 if i in per else shape[i] for i in range(len(shape))) if keep else \
                tuple(shape[i] for i in kept)
        y = self.vals.pop(tmp)
        if kind == "sum":  # the pool's view holds the mean (x.m, exact 1/R in the IR) or the sum (x.m / R)
            y = y.view(x.m * win if win & (win - 1) == 0 else x.m, x.h * win)
        elif kind == "min":
            y = y.view(-y.m, -y.h) if not y.relu else \
                _Val("act", tensor=self._materialize(n, y)).view(-1.0, 0.0)
        ys = self.tensors[y.tensor]
        if ys.shape == final:
            self.vals[n.output[0]] = y
        elif len(final) > 1 and final[0] == ys.shape[0] and 0 not in per:  # the channels stay first: the view holds
            t = self._add("reshape", n, [y.tensor], final, ys.fmt, attrs={"shape": final})
            self.vals[n.output[0]] = _Val("act", tensor=t, m=y.m, h=y.h, relu=y.relu)
        else:
            self._reshape_act(n, y, list(final))

    def _slice_act(self, n, x: _Val, box: list[tuple[int, int, int]], out: str) -> None:
        """``out`` = the per-sample box ``x[a0:b0:k0, ...]`` of an activation (the ``slice`` op; the whole tensor is
        the same value); a per-channel view keeps the multipliers of the channels it keeps."""
        shape = self.tensors[x.tensor].shape
        if all((a, b, k) == (0, d, 1) for (a, b, k), d in zip(box, shape)):
            self.vals[out] = x
            return
        if any(b <= a for a, b, _ in box):
            raise UnsupportedError(f"node {self._where(n)!r} slices an empty tensor")
        oshape = tuple(len(range(a, b, k)) for a, b, k in box)
        fmt = self.tensors[x.tensor].fmt
        t = self._add("slice", n, [x.tensor], oshape, fmt, attrs={"starts": tuple(a for a, _, _ in box),
                                                                   "stops": tuple(b for _, b, _ in box),
                                                                   "steps": tuple(k for _, _, k in box)})
        m, h = x.m, x.h
        if m.size > 1 or h.size > 1:
            a, b, k = box[0]
            m, h = self._full(m, x.tensor)[a:b:k], self._full(h, x.tensor)[a:b:k]
        self.vals[out] = _Val("act", tensor=t, m=m, h=h, relu=x.relu)

    def h_gather(self, n) -> None:
        """Gather of an activation with constant indices along a per-sample axis (torch's ``x[:, 0]``, ``x[:, -1]``:
        the class token, the last step): a ``slice`` (a scalar index then drops the axis by a reshape); indices that
        form an arithmetic run (``x[:, [0, 2, 4]]``) are one strided slice."""
        where = self._where(n)
        if len(n.input) != 2:
            raise BadInputError(f"Gather node {where!r} needs inputs data, indices")
        v = self._get(n.input[0], n)
        if v.kind == "const" and self._get(n.input[1], n).kind != "const":
            return self._embedding(n, v)
        if v.kind == "const":
            from qfx.onnx.cleanup import FOLDERS

            idx = np.asarray(self._const(n.input[1], n, "indices").values)
            self.vals[n.output[0]] = self._const_map(v, lambda z: FOLDERS["Gather"](n, [np.asarray(z), idx]))
            return
        x = self._act(n.input[0], n)
        shape = self.tensors[x.tensor].shape
        rank = len(shape) + 1
        ax = int(_attrs(n).get("axis", 0)) % rank
        iv = self._get(n.input[1], n)
        if iv.kind != "const":
            raise UnsupportedError(f"Gather node {where!r} with computed indices; qfx gathers constant indices; "
                                   f"{_CUT}")
        idx = np.asarray(iv.values).astype(np.int64)
        if ax == 0:
            raise UnsupportedError(f"Gather node {where!r} picks samples of the batch axis; {_CUT}")
        d = shape[ax - 1]
        flat = np.where(idx < 0, idx + d, idx).reshape(-1)
        if flat.size == 0 or np.any(flat < 0) or np.any(flat >= d):
            raise BadInputError(f"Gather node {where!r}: indices {idx.tolist()} out of range for size {d}")
        step = int(flat[1] - flat[0]) if flat.size > 1 else 1
        if idx.ndim > 1 or step < 1 or np.any(np.diff(flat) != step):
            raise UnsupportedError(f"Gather node {where!r}: indices {idx.tolist()} are not one ascending run with one "
                                   f"step; {_CUT}")
        box = [(0, s_, 1) for s_ in shape]
        box[ax - 1] = (int(flat[0]), int(flat[-1]) + 1, step)
        if idx.ndim == 1:
            return self._slice_act(n, x, box, n.output[0])
        tmp = f"{_clean_name(where)}__qfx_picked"
        self._slice_act(n, x, box, tmp)
        rest = [s_ for k, s_ in enumerate(shape) if k != ax - 1]
        if not rest:
            raise UnsupportedError(f"Gather node {where!r} leaves a scalar per sample; {_CUT}")
        self._reshape_act(_FakeNode(n.output[0]), self.vals.pop(tmp), rest)

    def _embedding(self, n, table: _Val) -> None:
        """Gather of rows of a constant (V, D) table by integer indices (torch's ``nn.Embedding`` exported): the
        graph input becomes ``ap_uint<k>`` indices (k bits hold 0..V-1, exact), each table column one ``lut`` over
        the index codes (indices outside 0..V-1 read zeros), the columns concatenated along a new last axis."""
        from qfx.fixed.tables import index_table

        where = self._where(n)
        vals = np.asarray(table.values)
        if vals.ndim != 2 or int(_attrs(n).get("axis", 0)) != 0:
            raise UnsupportedError(f"Gather node {where!r}: qfx looks up rows of a 2-D (V, D) table by integer "
                                   f"indices (an embedding); {_CUT}")
        iv = self._get(n.input[1], n)
        if iv.kind == "input":
            rows = vals.shape[0]
            k = max(1, (rows - 1).bit_length())
            t = self._bind_input(n, FxFormat(k, k, False), {}, iv.tensor)
            iv = self.vals[n.input[1]] = _Val("act", tensor=t)
        xs = self.tensors[iv.tensor].fmt
        if not iv.pure or xs.frac_bits > 0 or xs.width > 12:
            raise UnsupportedError(f"Gather node {where!r}: table rows are picked by integer indices of at most 12 "
                                   f"bits (a graph input, or integer codes), not {xs.ap_type()} values; {_CUT}")
        w, sw = self._weight(table, n, "embedding table")
        if not np.all(sw == sw[0]):
            raise UnsupportedError(f"Gather node {where!r}: an embedding table with per-row scales; {_CUT}")
        lut = index_table(w.codes.reshape(vals.shape), xs)
        shape = self.tensors[iv.tensor].shape
        cols = []
        for e in range(vals.shape[1]):
            c = self._add("lut", n, [iv.tensor], shape, w.fmt, {"table": Constant(lut[:, e], w.fmt)},
                          {"fn": f"embedding column {e}"})
            cols.append(self._add("reshape", n, [c], shape + (1,), w.fmt, attrs={"shape": shape + (1,)}))
        out = shape + (vals.shape[1],)
        if len(cols) == 1:
            t = self._add("reshape", n, cols, out, w.fmt, attrs={"shape": out})
        else:
            t = self._add("concat", n, cols, out, w.fmt, attrs={"axis": len(shape)})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=np.array([float(sw[0])]))

    def h_slice(self, n) -> None:
        """Slice of an activation (``x[:, 2:5]``, ``chunk``, ``narrow``) with positive steps: the ``slice`` op."""
        where = self._where(n)
        x = self._act(n.input[0], n)
        shape = self.tensors[x.tensor].shape
        rank = len(shape) + 1
        a = _attrs(n)
        if len(n.input) >= 3:
            starts, ends = self._int_list(n.input[1], n), self._int_list(n.input[2], n)
            axes = self._int_list(n.input[3], n) if len(n.input) > 3 and n.input[3] else list(range(len(starts)))
            steps = self._int_list(n.input[4], n) if len(n.input) > 4 and n.input[4] else [1] * len(starts)
        else:  # opset < 10: attributes
            starts, ends = [int(v) for v in a["starts"]], [int(v) for v in a["ends"]]
            axes = [int(v) for v in a.get("axes", range(len(starts)))]
            steps = [1] * len(starts)
        box = [(0, d, 1) for d in shape]
        flips = []
        for st, en, ax, k in zip(starts, ends, axes, steps):
            ax = int(ax) % rank
            if k < 0 and ax != 0:  # torch's flip: the same elements taken forwards, then reversed (_flip_axis)
                idx = list(range(shape[ax - 1]))[slice(st, en, k)]
                if not idx:
                    raise UnsupportedError(f"Slice node {where!r} selects nothing along axis {ax}; {_CUT}")
                st, en, k = idx[-1], idx[0] + 1, -k
                flips.append(ax)
            if k < 1:
                raise UnsupportedError(f"Slice node {where!r} has step {k}: qfx slices with non-zero steps only; "
                                       f"{_CUT}")
            if ax == 0:
                if st != 0 or en < 2 ** 30 or k != 1:
                    raise UnsupportedError(f"Slice node {where!r} slices the batch axis; {_CUT}")
                continue
            d = shape[ax - 1]
            lo = min(max(st + d if st < 0 else st, 0), d)
            hi = min(max(en + d if en < 0 else en, 0), d)
            box[ax - 1] = (lo, hi, int(k))
        if not flips:
            self._slice_act(n, x, box, n.output[0])
            return
        src = n.output[0] + "__fwd"
        self._slice_act(n, x, box, src)
        for j, ax in enumerate(flips):
            out = n.output[0] if j == len(flips) - 1 else f"{n.output[0]}__flip{j}"
            self._flip_axis(n, src, ax, out)
            src = out

    def _flip_axis(self, n, src: str, ax: int, out: str) -> None:
        """``src`` reversed along batch-counted axis ``ax``: one-element slices in reverse order, concatenated."""
        from onnx import helper

        size = self.tensors[self.vals[src].tensor].shape[ax - 1]
        base = f"{n.name or n.output[0]}__flip{ax}"
        parts = []
        for i in reversed(range(size)):
            part = f"{base}_{i}"
            self.h_slice(helper.make_node("Slice", [src], [part], name=f"{base}/{i}", starts=[i], ends=[i + 1],
                                          axes=[ax]))
            parts.append(part)
        if len(parts) == 1:
            self.vals[out] = self.vals[parts[0]]
            return
        self.h_concat(helper.make_node("Concat", parts, [out], name=f"{base}/cat", axis=ax))

    def h_split(self, n) -> None:
        """Split of an activation into consecutive pieces along one per-sample axis: one ``slice`` each."""
        from onnx import helper

        where = self._where(n)
        x = self._act(n.input[0], n)
        shape = self.tensors[x.tensor].shape
        rank = len(shape) + 1
        a = _attrs(n)
        ax = int(a.get("axis", 0)) % rank
        if ax == 0:
            raise UnsupportedError(f"Split node {where!r} splits the batch axis; {_CUT}")
        d = shape[ax - 1]
        outs = list(n.output)
        if len(n.input) > 1 and n.input[1]:
            sizes = self._int_list(n.input[1], n)
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:  # equal pieces (num_outputs in opset 18: the last one may be smaller)
            k = -(-d // len(outs))
            sizes = [min(k, d - i * k) for i in range(len(outs))]
        if len(sizes) != len(outs) or sum(sizes) != d or min(sizes) < 1:
            raise BadInputError(f"Split node {where!r}: sizes {sizes} do not split {d} into {len(outs)} pieces")
        start = 0
        for o, size in zip(outs, sizes):
            box = [(0, e, 1) for e in shape]
            box[ax - 1] = (start, start + size, 1)
            start += size
            if o:
                self._slice_act(helper.make_node("Split", [n.input[0]], [o], name=n.name), x, box, o)

    def h_pow(self, n) -> None:
        """Pow of an activation by a constant exponent: 1 is the value itself, 2 the exact product ``mul(x, x)``,
        any other exponent a table of the quantized input (refused where it is not defined: x ** 0.5 of negative
        codes)."""
        x = self._act(n.input[0], n)
        e = np.asarray(self._const(n.input[1], n, "exponent").values, dtype=np.float64)
        if e.size != 1:
            raise UnsupportedError(f"Pow node {self._where(n)!r}: qfx raises to one constant exponent; {_CUT}")
        p = float(e.ravel()[0])
        if p == 1.0:
            self.vals[n.output[0]] = x
        elif p == 2.0:
            self._mul_acts(n, x, x)
        else:
            t = self._table(n, x, lambda v: np.power(v, p), f"onnx:pow({p!r})")
            self.vals[n.output[0]] = _Val("act", tensor=t)

    def h_pad(self, n) -> None:
        """Pad with zeros over the spatial axes of (C, L) or (C, H, W): ``zeropad2d``."""
        where = self._where(n)
        a = _attrs(n)
        mode = _attr_str(a, "mode", "constant")
        x = self._act(n.input[0], n)
        xs = self.tensors[x.tensor]
        rank = len(xs.shape) + 1
        pads = self._int_list(n.input[1], n) if len(n.input) > 1 and n.input[1] else [int(v) for v in a["pads"]]
        value = float(np.asarray(self._const(n.input[2], n, "value").values).ravel()[0]) \
            if len(n.input) > 2 and n.input[2] else float(a.get("value", 0.0))
        if len(n.input) > 3 and n.input[3]:
            ax = [int(v) % rank for v in self._int_list(n.input[3], n)]
            full = [0] * (2 * rank)
            for k, axis in enumerate(ax):
                full[axis], full[rank + axis] = pads[k], pads[len(ax) + k]
            pads = full
        if not any(pads):  # F.pad by zero (Swin's window padding when the windows tile): the tensor itself
            self.vals[n.output[0]] = x
            return
        edge = {"edge": "replicate", "reflect": "reflect"}.get(mode)
        if mode == "constant" and value == 0 and len(pads) == 2 * rank and min(pads) >= 0 and not pads[0] and \
                not pads[rank] and (rank not in (3, 4) or pads[1] or pads[rank + 1]) and \
                sum(1 for k in range(1, rank) if pads[k] or pads[rank + k]) <= 2:
            return self._pad_axes(n, x, pads)  # channels-last (Swin's windows) or any other two axes
        if (mode != "constant" and edge is None) or value != 0 and edge is None or rank not in (3, 4) or len(pads) != 2 * rank or \
                any(pads[k] or pads[rank + k] for k in (0, 1)) or min(pads) < 0:
            raise UnsupportedError(f"Pad node {where!r}: qfx pads H and W (or L) of (C, H, W) / (C, L) tensors with "
                                   f"zeros (mode {mode!r}, value {value}, pads {pads}); {_CUT}")
        if edge is None and (x.relu or np.any(x.h)):  # edge modes copy values: the per-channel view survives
            x = _Val("act", tensor=self._materialize(n, x))
        fmt = self.tensors[x.tensor].fmt
        t = x.tensor
        if rank == 3:
            c, length = xs.shape
            t = self._add("reshape", _FakeNode(f"{where}_2d_in"), [t], (c, 1, length), fmt,
                          attrs={"shape": (c, 1, length)})
            p4 = (0, 0, pads[2], pads[5])
        else:
            p4 = (pads[2], pads[6], pads[3], pads[7])
        s3 = self.tensors[t].shape
        shp = (s3[0], s3[1] + p4[0] + p4[1], s3[2] + p4[2] + p4[3])
        if edge == "reflect" and (max(p4[:2]) >= s3[1] or max(p4[2:]) >= s3[2]):
            raise UnsupportedError(f"Pad node {where!r}: reflect pads {p4} must be below the padded sizes {s3[1:]}")
        t = self._add("zeropad2d", n, [t], shp, fmt, attrs={"pads": p4} | ({"mode": edge} if edge else {}))
        if rank == 3:
            t = self._add("reshape", _FakeNode(f"{where}_1d_out"), [t], (shp[0], shp[2]), fmt,
                          attrs={"shape": (shp[0], shp[2])})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h if edge else np.zeros(1),
                                      relu=x.relu if edge else False)

    def _pad_axes(self, n, x: _Val, pads: list[int]) -> None:
        """Zero padding of at most two per-sample axes other than the (C, H, W) / (C, L) spatial ones: a transpose
        brings the padded axes last, a reshape makes the rest one channel axis, ``zeropad2d``, and back."""
        if x.relu or np.any(x.h) or x.m.size > 1:
            x = _Val("act", tensor=self._materialize(n, x))
        xs = self.tensors[x.tensor]
        fmt, shape, r = xs.fmt, xs.shape, len(xs.shape)
        padded = [k for k in range(r) if pads[k + 1] or pads[r + 2 + k]]
        rest = [k for k in range(r) if k not in padded]
        perm = tuple(rest + padded)
        t = x.tensor
        if perm != tuple(range(r)):
            t = self._add("transpose", n, [t], tuple(shape[k] for k in perm), fmt, attrs={"perm": perm})
        lo = [pads[k + 1] for k in padded]
        hi = [pads[r + 2 + k] for k in padded]
        dims = [shape[k] for k in padded]
        if len(padded) == 1:
            dims, lo, hi = [1] + dims, [0] + lo, [0] + hi
        c = int(np.prod([shape[k] for k in rest])) if rest else 1
        t = self._add("reshape", n, [t], (c, dims[0], dims[1]), fmt, attrs={"shape": (c, dims[0], dims[1])})
        out3 = (c, dims[0] + lo[0] + hi[0], dims[1] + lo[1] + hi[1])
        t = self._add("zeropad2d", n, [t], out3, fmt, attrs={"pads": (lo[0], hi[0], lo[1], hi[1])})
        moved = [shape[k] for k in rest] + [shape[k] + pads[k + 1] + pads[r + 2 + k] for k in padded]
        t = self._add("reshape", n, [t], tuple(moved), fmt, attrs={"shape": tuple(moved)})
        if perm != tuple(range(r)):
            inv = tuple(int(i) for i in np.argsort(perm))
            t = self._add("transpose", n, [t], tuple(moved[i] for i in inv), fmt, attrs={"perm": inv})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m)

    def _flat_view(self, x: _Val, size: int) -> tuple[np.ndarray, np.ndarray]:
        shape = self.tensors[x.tensor].shape
        per = size // max(shape[0], 1) if shape else 1

        def f(v: np.ndarray) -> np.ndarray:
            return np.repeat(v, per) if v.size > 1 else v

        return f(x.m), f(x.h)

    def h_flatten(self, n) -> None:
        v = self._get(n.input[0], n)
        if v.kind == "const":
            self.vals[n.output[0]] = self._const_map(v, lambda z: np.asarray(z).reshape(1, -1)
                                                     if np.ndim(z) <= 1 else np.asarray(z).reshape(z.shape[0], -1))
            return
        x = self._act(n.input[0], n)
        if int(_attrs(n).get("axis", 1)) not in (0, 1):
            raise UnsupportedError(f"Flatten node {self._where(n)!r}: only axis=1 is supported")
        xs = self.tensors[x.tensor]
        t = self._add("flatten", n, [x.tensor], (xs.size,), xs.fmt)
        m, h = self._flat_view(x, xs.size)
        self.vals[n.output[0]] = _Val("act", tensor=t, m=m, h=h, relu=x.relu)

    def h_reshape(self, n) -> None:
        v = self._get(n.input[0], n)
        if v.kind == "const":
            shp = self._int_list(n.input[1], n)
            self.vals[n.output[0]] = self._const_map(v, lambda z: np.asarray(z).reshape(shp))
            return
        x = self._act(n.input[0], n)
        xs = self.tensors[x.tensor]
        shp = self._int_list(n.input[1], n)
        if not shp:
            raise BadInputError(f"Reshape node {self._where(n)!r}: empty target shape")
        rest = shp[1:]
        if -1 in rest:
            known = int(np.prod([d for d in rest if d != -1])) or 1
            rest = [xs.size // known if d == -1 else d for d in rest]
        if any(d <= 0 for d in rest) or int(np.prod(rest)) != xs.size:
            raise BadInputError(f"Reshape node {self._where(n)!r}: cannot reshape {xs.shape} to {shp}")
        self._reshape_act(n, x, rest)

    def _reshape_act(self, n, x: _Val, rest: list[int]) -> None:
        """The activation ``x`` viewed as per-sample shape ``rest`` (same size): flatten, reshape or nothing."""
        xs = self.tensors[x.tensor]
        if tuple(rest) == xs.shape:
            self.vals[n.output[0]] = x
            return
        if len(rest) == 1:
            t = self._add("flatten", n, [x.tensor], tuple(rest), xs.fmt)
            m, h = self._flat_view(x, xs.size)
            self.vals[n.output[0]] = _Val("act", tensor=t, m=m, h=h, relu=x.relu)
            return
        if x.m.size > 1 or x.h.size > 1:
            x = _Val("act", tensor=self._materialize(n, x))
        t = self._add("reshape", n, [x.tensor], tuple(rest), self.tensors[x.tensor].fmt,
                      attrs={"shape": tuple(rest)})
        self.vals[n.output[0]] = _Val("act", tensor=t, m=x.m, h=x.h, relu=x.relu)

    def h_squeeze(self, n) -> None:
        from qfx.onnx.cleanup import FOLDERS

        extra = [np.asarray(self._const(i, n, "axes").values) for i in n.input[1:] if i]
        v = self._get(n.input[0], n)
        if v.kind == "const":
            self.vals[n.output[0]] = self._const_map(v, lambda z: FOLDERS[n.op_type](n, [np.asarray(z), *extra]))
            return
        x = self._act(n.input[0], n)
        xs = self.tensors[x.tensor]
        try:  # a batch of 2 shows whether the axes leave the batch axis alone
            full = FOLDERS[n.op_type](n, [np.zeros((2, *xs.shape), dtype=np.int8), *extra]).shape
        except (ValueError, TypeError, IndexError) as exc:
            raise BadInputError(f"{n.op_type} node {self._where(n)!r}: bad axes for shape {xs.shape}: {exc}") from None
        if not full or full[0] != 2:
            raise UnsupportedError(f"{n.op_type} node {self._where(n)!r} changes the batch axis; qfx keeps it first")
        self._reshape_act(n, x, list(full[1:]))


class _FakeNode:
    """Stands in for an ONNX node when the converter adds IR nodes for a graph output."""

    def __init__(self, output: str) -> None:
        self.name = f"{output}_out"
        self.op_type = "Output"
        self.output = [output]


#: ONNX op type -> converter method (QONNX ops only in the QONNX domain, the rest only in the default domain)
HANDLERS: dict[str, Callable[[_Converter, Any], None]] = {
    "Quant": _Converter.h_quant, "BipolarQuant": _Converter.h_bipolar, "Trunc": _Converter.h_trunc,
    "Constant": _Converter.h_constant, "Identity": _Converter.h_identity, "Dropout": _Converter.h_identity,
    "Transpose": _Converter.h_transpose, "Gemm": _Converter.h_gemm, "MatMul": _Converter.h_matmul,
    "Conv": _Converter.h_conv, "Add": _Converter.h_add, "Sub": _Converter.h_sub, "Mul": _Converter.h_mul,
    "Div": _Converter.h_div, "BatchNormalization": _Converter.h_batchnorm, "Relu": _Converter.h_relu,
    "MaxPool": _Converter.h_maxpool, "AveragePool": _Converter.h_avgpool,
    "GlobalAveragePool": _Converter.h_avgpool, "Flatten": _Converter.h_flatten, "Reshape": _Converter.h_reshape,
    "Squeeze": _Converter.h_squeeze, "Unsqueeze": _Converter.h_squeeze,
    "Resize": _Converter.h_resize, "Upsample": _Converter.h_resize, "Concat": _Converter.h_concat,
    "DepthToSpace": _Converter.h_depth_to_space, "LeakyRelu": _Converter.h_leaky_relu,
    "Softmax": _Converter.h_softmax, "Clip": _Converter.h_clip, "MultiThreshold": _Converter.h_multithreshold,
    "PRelu": _Converter.h_prelu,
    "QuantizeLinear": _Converter.h_quantize_linear, "DequantizeLinear": _Converter.h_dequantize_linear,
    "QLinearConv": _Converter.h_qlinear, "QLinearMatMul": _Converter.h_qlinear, "QGemm": _Converter.h_qlinear,
    "QLinearAdd": _Converter.h_qlinear_binary, "QLinearMul": _Converter.h_qlinear_binary,
    "QLinearGlobalAveragePool": _Converter.h_qlinear_pool, "QLinearAveragePool": _Converter.h_qlinear_pool,
    "QLinearConcat": _Converter.h_qlinear_concat, "QLinearSigmoid": _Converter.h_qlinear_table,
    "QLinearLeakyRelu": _Converter.h_qlinear_table,
    "FloatQuant": _Converter.h_floatquant, "ReduceMean": _Converter.h_reduce_mean, "Pad": _Converter.h_pad,
    "ConvTranspose": _Converter.h_conv_transpose, "Max": _Converter.h_max_min, "Min": _Converter.h_max_min,
    "Neg": _Converter.h_neg, "ReduceMax": _Converter.h_reduce_max, "ReduceMin": _Converter.h_reduce_min,
    "ReduceSum": _Converter.h_reduce_sum, "Where": _Converter.h_where, "Cast": _Converter.h_cast,
    "Not": _Converter.h_not, "Gather": _Converter.h_gather, "Expand": _Converter.h_expand,
    **{op: _Converter.h_compare for op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual")}, "Slice": _Converter.h_slice,
    "Split": _Converter.h_split, "Pow": _Converter.h_pow,
    **{op: _Converter.h_activation for op in ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
                                              "Softsign", "Erf", "Gelu", "Mish", "Sqrt", "Exp", "Log",
                                              "Reciprocal", "Abs", "Celu", "ThresholdedRelu")},
}
