"""ONNX -> IR: qfx-exported files (exact round trip), QONNX/Brevitas ``Quant`` graphs and plain torch exports.

* **qfx files** (metadata ``qfx.nodes``): the node structure comes from the metadata, every format from the
  ``FixedQuant`` attributes, constants from the initializers (values checked to be codes of their format), shapes
  from the value infos. The result is then re-exported and compared with the file node for node, initializer for
  initializer and function for function: a file whose graph does not compute what its metadata says is refused.
* **QONNX** (``Quant`` in domain ``qonnx.custom_op.general``/``onnx.brevitas``/``finn.custom_op.general``): a
  ``Quant`` is fixed point when its scale is a power of two (per tensor; per channel only on constants), its zero
  point 0 and its bit width an integer; it becomes an ``FxFormat`` (rounding ROUND/HALF_EVEN -> RND_CONV, FLOOR ->
  TRN, ...; clamping -> SAT; signed ``narrow`` -> SAT_SYM, whose range ``[-max, max]`` is QONNX's narrow range;
  unsigned ``narrow`` -> SAT plus a clip to ``2**b - 2``).
* **Plain ops** as torch exports them: Gemm, MatMul(+Add), Conv, Relu, Add, Flatten, Reshape, MaxPool,
  Identity, BatchNormalization is not accepted (fold it or use a qfx layer). Float initializers are taken as
  constants when their values are dyadic with a small code width (that is the case for weights a fixed-point
  trainer produced); intermediate results between two casts are kept exact.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfx.errors import BadInputError, FormatError, QfxError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import conv_out_size
from qfx.ir.graph import IR_VERSION, Constant, Graph, Node, Op, TensorSpec

__all__ = ["import_onnx", "import_model", "load_model_file"]

QONNX_DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general", "qonnx")
_ROUNDING = {"ROUND": "RND_CONV", "HALF_EVEN": "RND_CONV", "FLOOR": "TRN", "DOWN": "TRN_ZERO",
             "ROUND_TO_ZERO": "TRN_ZERO", "HALF_UP": "RND_INF", "HALF_DOWN": "RND_ZERO"}
MAX_CONST_WIDTH = 32


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


def import_onnx(path: str | os.PathLike[str], name: str | None = None, input_fmt: FxFormat | None = None) -> Graph:
    """Import an ONNX file as a qfx Graph (qfx-exported, QONNX or plain); errors are one-line QfxErrors."""
    return import_model(load_model_file(path), name=name, input_fmt=input_fmt, origin=str(path))


def import_model(model, name: str | None = None, input_fmt: FxFormat | None = None, origin: str = "model") -> Graph:
    try:
        meta = {p.key: p.value for p in model.metadata_props}
        if "qfx.nodes" in meta:
            g = _import_qfx(model, meta)
        else:
            g = _Converter(model, input_fmt).convert()
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
        nodes.append(Node(r["name"], Op(r["op"]), tuple(r["inputs"]), r["output"], consts, r.get("attrs", {}), acc,
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
    """What an ONNX value is during conversion."""

    kind: str  # "const" (float values, maybe a format) | "act" (an IR tensor) | "input" (no format yet)
    values: np.ndarray | None = None
    fmt: FxFormat | None = None  # for consts: format from a Quant; None = plain float
    tensor: str = ""  # for acts: the IR tensor name


#: ops whose converted output format is their exact (lossless) result
_EXACT_OPS = frozenset({Op.DENSE, Op.CONV2D, Op.ADD, Op.RELU, Op.MAXPOOL2D})


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
        raise FormatError(f"{what} needs {fmt.width}-bit codes as fixed point (limit {MAX_CONST_WIDTH}); "
                          f"quantize it (qfx layer or a QONNX Quant node)")
    return codes, fmt


def _pow2_exponent(scale: np.ndarray, what: str) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float64).ravel()
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise FormatError(f"{what} has a non-positive or non-finite scale")
    m, e = np.frexp(s)
    if not np.all(m == 0.5):
        bad = s[m != 0.5][0]
        raise UnsupportedError(f"{what} has non-power-of-two scale {float(bad):.6g}; only power-of-two scales are "
                               f"fixed point")
    return (e - 1).astype(np.int64)  # scale = 2**(e-1)


class _Converter:
    def __init__(self, model, input_fmt: FxFormat | None) -> None:
        self.m = model
        self.g = model.graph
        self.input_fmt = input_fmt
        self.vals: dict[str, _Val] = {}
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.inits = {i.name: _array(i) for i in self.g.initializer}
        self.used_names: set[str] = set()
        self.consumers: dict[str, int] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        self.pending_inputs: dict[str, tuple[int, ...]] = {}
        self.exact: set[str] = set()

    # ---------------------------------------------------------------- naming
    def _name(self, base: str) -> str:
        import re

        b = re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_") or "t"
        if b[0].isdigit():
            b = "t_" + b
        name, i = b, 1
        while name in self.used_names:
            name = f"{b}_{i}"
            i += 1
        self.used_names.add(name)
        return name

    def _new_tensor(self, base: str, shape: tuple[int, ...], fmt: FxFormat) -> str:
        t = self._name(base)
        self.tensors[t] = TensorSpec(t, shape, fmt)
        return t

    def _add(self, op: Op, onnx_node, inputs: list[str], shape: tuple[int, ...], fmt: FxFormat,
             consts=None, attrs=None, acc=None) -> str:
        out = self._new_tensor(onnx_node.output[0], shape, fmt)
        if op in _EXACT_OPS:
            self.exact.add(out)  # still the lossless result: a following Quant may become this node's output cast
        nname = self._name(f"{onnx_node.name or onnx_node.op_type}_{op.value}")
        self.nodes.append(Node(nname, op, tuple(inputs), out, consts or {}, attrs or {}, acc,
                               source=onnx_node.name or onnx_node.op_type))
        return out

    # ---------------------------------------------------------------- values
    def _get(self, name: str, node) -> _Val:
        if name in self.vals:
            return self.vals[name]
        if name in self.inits:
            v = _Val("const", self.inits[name])
            self.vals[name] = v
            return v
        raise BadInputError(f"node {node.name or node.op_type!r} reads {name!r}, which is neither an initializer nor "
                            f"computed before it (missing initializer?)")

    def _act(self, name: str, node) -> str:
        v = self._get(name, node)
        if v.kind == "input":
            raise BadInputError(f"graph input {name!r} is used by node {node.name or node.op_type!r} before a Quant "
                                f"node gives it a fixed-point format (or pass an input format)")
        if v.kind != "act":
            raise UnsupportedError(f"node {node.name or node.op_type!r}: input {name!r} is a constant where an "
                                   f"activation is expected")
        return v.tensor

    def _const(self, name: str, node, what: str) -> Constant:
        v = self._get(name, node)
        if v.kind != "const":
            raise UnsupportedError(f"node {node.name or node.op_type!r}: {what} {name!r} is computed, qfx needs a "
                                   f"constant")
        if v.fmt is not None:
            return Constant(_codes_of(v.values, v.fmt, f"{what} {name!r}"), v.fmt)
        codes, fmt = _dyadic_codes(v.values, f"{what} {name!r}")
        return Constant(codes, fmt)

    def _int_list(self, name: str, node) -> list[int]:
        v = self._get(name, node)
        if v.kind != "const":
            raise UnsupportedError(f"node {node.name or node.op_type!r}: shape input {name!r} must be constant")
        return [int(x) for x in np.asarray(v.values).ravel()]

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
        if len(self.pending_inputs) != 1:
            raise UnsupportedError(f"qfx imports single-input models; this one has {len(self.pending_inputs)}")
        (iname, ishape), = self.pending_inputs.items()
        self.input_onnx = iname
        self.input_tensor: str | None = None
        if self.input_fmt is not None:
            self.input_tensor = self._new_tensor(iname, ishape, self.input_fmt)
            self.vals[iname] = _Val("act", tensor=self.input_tensor)
        else:
            self.vals[iname] = _Val("input")
        for n in g.node:
            self._convert_node(n)
        if self.input_tensor is None:
            raise BadInputError(f"graph input {iname!r} has no fixed-point format: add a Quant node or pass an "
                                f"input format")
        outs = []
        for o in g.output:
            v = self.vals.get(o.name)
            if v is None or v.kind != "act":
                raise BadInputError(f"graph output {o.name!r} is not computed from the input")
            outs.append(v.tensor)
        used = {t for n in self.nodes for t in (*n.inputs, n.output)} | {self.input_tensor}
        tensors = {k: v for k, v in self.tensors.items() if k in used}
        name = g.name or "onnx_model"
        graph = Graph(name, (self.input_tensor,), tuple(outs), tensors, tuple(self.nodes),
                      {"imported_from": "onnx", "producer": self.m.producer_name}).validate()
        from qfx.ir.passes import run_flow

        return run_flow(graph, ["check_formats"]).graph

    def _convert_node(self, n) -> None:
        op = n.op_type
        where = n.name or op
        if n.domain in QONNX_DOMAINS and op == "Quant":
            return self._quant(n)
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"unsupported op {n.domain}.{op} (node {where!r})")
        if len(n.output) < 1:
            raise BadInputError(f"node {where!r} has no output")
        if op == "Constant":
            a = _attrs(n)
            if "value" not in a:
                raise UnsupportedError(f"Constant node {where!r} without a tensor value")
            from onnx import numpy_helper

            self.vals[n.output[0]] = _Val("const", numpy_helper.to_array(a["value"]))
            return
        if op == "Identity" or op == "Dropout":
            self.vals[n.output[0]] = self._get(n.input[0], n)
            return
        ins = [i for i in n.input]
        if op in ("Gemm", "MatMul"):
            return self._dense(n, ins)
        if op == "Conv":
            return self._conv(n, ins)
        if op == "Add":
            return self._add_op(n, ins)
        if op == "Relu":
            x = self._act(ins[0], n)
            t = self.tensors[x]
            self.vals[n.output[0]] = _Val("act", tensor=self._add(Op.RELU, n, [x], t.shape, t.fmt))
            return
        if op == "MaxPool":
            return self._maxpool(n, ins)
        if op in ("Flatten", "Reshape"):
            return self._reshape(n, ins)
        raise UnsupportedError(f"unsupported ONNX op {op!r} (node {where!r})")

    # ---------------------------------------------------------------- Quant
    def _quant(self, n) -> None:
        where = n.name or n.output[0]
        if len(n.input) != 4:
            raise BadInputError(f"Quant node {where!r} needs inputs x, scale, zeropt, bitwidth")
        a = _attrs(n)
        sc = self._get(n.input[1], n)
        zp = self._get(n.input[2], n)
        bw = self._get(n.input[3], n)
        if sc.kind != "const" or zp.kind != "const" or bw.kind != "const":
            raise UnsupportedError(f"Quant node {where!r} has computed scale/zero point/bit width")
        bits = np.asarray(bw.values, dtype=np.float64).ravel()
        if bits.size != 1 or bits[0] != math.floor(bits[0]) or not 1 <= bits[0] <= 53:
            raise UnsupportedError(f"Quant node {where!r} has bit width {bits.tolist()}; need one integer in 1..53")
        b = int(bits[0])
        if np.any(np.asarray(zp.values, dtype=np.float64) != 0):
            raise UnsupportedError(f"Quant node {where!r} has a non-zero zero point; qfx needs zero point 0")
        e = _pow2_exponent(sc.values, f"Quant node {where!r}")
        signed = bool(int(a.get("signed", 1)))
        narrow = bool(int(a.get("narrow", 0)))
        rm = a.get("rounding_mode", b"ROUND")
        rm = (rm.decode() if isinstance(rm, bytes) else str(rm)).upper()
        if rm not in _ROUNDING:
            raise UnsupportedError(f"Quant node {where!r} has rounding mode {rm!r} with no ap_fixed equivalent")
        rounding = _ROUNDING[rm]
        lo = -(1 << (b - 1)) + narrow if signed else 0
        hi = (1 << (b - 1)) - 1 if signed else (1 << b) - 1 - narrow
        x = self._get(n.input[0], n)
        if x.kind == "const":
            v = np.asarray(x.values, dtype=np.float64)
            exps = self._broadcast_exps(e, sc.values, v, where)
            codes = self._quantize_const(v, exps, rounding, lo, hi)
            if e.size == 1:
                fmt = FxFormat(b, b + int(e[0]), signed)
                self.vals[n.output[0]] = _Val("const", np.ldexp(codes.astype(np.float64), int(e[0])), fmt)
            else:  # per-channel scales: exact values; the constant gets the narrowest common format later
                self.vals[n.output[0]] = _Val("const", np.ldexp(codes.astype(np.float64), exps))
            return
        if e.size != 1:
            raise UnsupportedError(f"Quant node {where!r} quantizes an activation per channel; qfx formats are per "
                                   f"tensor")
        sym = narrow and signed and b > 1 and _sat_sym_is_symmetric()
        fmt = FxFormat(b, b + int(e[0]), signed, rounding, "SAT_SYM" if sym else "SAT")  # value = code * 2**e
        if x.kind == "input":  # the graph input itself: its format is this Quant's (the model's first cast)
            t = self._bind_input(n, fmt)
        else:
            t = self._requant(n, x.tensor, fmt)
        if narrow and not sym:  # unsigned narrow range [0, 2**b - 2]: an explicit clip
            shape = self.tensors[t].shape
            t = self._add(Op.CLIP, n, [t], shape, fmt, attrs={"lo": lo, "hi": hi})
        self.vals[n.output[0]] = _Val("act", tensor=t)

    @staticmethod
    def _broadcast_exps(e: np.ndarray, scale, v: np.ndarray, where: str) -> np.ndarray:
        if e.size == 1:
            return np.full(v.shape, int(e[0]), dtype=np.int64)
        sshape = np.asarray(scale).shape
        try:
            if len(sshape) == v.ndim:
                return np.broadcast_to(e.reshape(sshape), v.shape)
            return np.broadcast_to(e.reshape((-1,) + (1,) * (v.ndim - 1)), v.shape)
        except ValueError:
            raise BadInputError(f"Quant node {where!r}: scale shape {sshape} does not fit {v.shape}") from None

    @staticmethod
    def _quantize_const(v: np.ndarray, exps: np.ndarray, rounding: str, lo: int, hi: int) -> np.ndarray:
        """QONNX Quant on constants, exactly: ``clamp(round(v / 2**e), lo, hi)`` via the integer kernel."""
        from qfx.fixed.kernels import codes_from_double

        out = np.empty(v.shape, dtype=np.int64)
        for ex in np.unique(exps):
            m = exps == ex
            if abs(int(ex)) > 400:
                raise UnsupportedError(f"Quant scale 2**{int(ex)} is out of range")
            out[m] = codes_from_double(v[m], FxFormat(62, 62 + int(ex), True, rounding, "SAT"))
        return np.clip(out, lo, hi)

    def _bind_input(self, n, fmt: FxFormat) -> str:
        shape = self.pending_inputs[self.input_onnx]
        self.input_tensor = self._new_tensor(self.input_onnx, shape, fmt)
        self.vals[self.input_onnx] = _Val("act", tensor=self.input_tensor)
        return self.input_tensor

    def _requant(self, n, src: str, fmt: FxFormat) -> str:
        """Cast ``src`` to ``fmt``; fused into src's producer when that node's output is used only here."""
        prod = next((i for i, nd in enumerate(self.nodes) if nd.output == src), None)
        # fusing is exact only into a node that computes exactly and casts once, whose output is not cast yet
        if prod is not None and src in self.exact and self._single_use(src):
            self.exact.discard(src)
            old = self.tensors[src]
            self.tensors[src] = TensorSpec(src, old.shape, fmt)  # the node casts its exact result once, to fmt
            return src
        return self._add(Op.QUANT, n, [src], self.tensors[src].shape, fmt)

    def _single_use(self, tensor: str) -> bool:
        onnx_names = [k for k, v in self.vals.items() if v.kind == "act" and v.tensor == tensor]
        return sum(self.consumers.get(k, 0) for k in onnx_names) <= 1 and not any(
            o.name in onnx_names for o in self.g.output)

    # ---------------------------------------------------------------- ops
    def _dense(self, n, ins: list[str]) -> None:
        a = _attrs(n)
        where = n.name or n.op_type
        x = self._act(ins[0], n)
        xs = self.tensors[x]
        if len(xs.shape) != 1:
            raise UnsupportedError(f"node {where!r}: {n.op_type} on a {len(xs.shape) + 1}-D tensor; flatten first")
        if n.op_type == "Gemm":
            if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
                raise UnsupportedError(f"Gemm node {where!r} with transA/alpha/beta is not supported")
            w = self._const(ins[1], n, "weight")
            wc = w.codes if a.get("transB", 0) else w.codes.T
            b = self._const(ins[2], n, "bias") if len(ins) > 2 and ins[2] else None
        else:
            w = self._const(ins[1], n, "weight")
            if w.codes.ndim != 2:
                raise UnsupportedError(f"MatMul node {where!r} needs a 2-D weight")
            wc = w.codes.T
            b = None
        wconst = Constant(np.ascontiguousarray(wc), w.fmt)
        if wconst.codes.shape[1] != xs.shape[0]:
            raise BadInputError(f"node {where!r}: weight {wconst.codes.shape} does not fit input {xs.shape}")
        self._emit_dense(n, x, wconst, b)

    def _emit_dense(self, n, x: str, w: Constant, b: Constant | None) -> None:
        fx = self.tensors[x].fmt
        if b is not None:
            b = Constant(b.codes.reshape(-1), b.fmt)
            if b.codes.size != w.codes.shape[0]:
                raise BadInputError(f"node {n.name!r}: bias has {b.codes.size} values for {w.codes.shape[0]} outputs")
        acc = lossless_acc_format(w.codes, w.fmt, fx, b.codes if b else None, b.fmt if b else None)
        consts = {"weight": w} | ({"bias": b} if b else {})
        t = self._add(Op.DENSE, n, [x], (w.codes.shape[0],), acc, consts, {"khot": 0}, acc)
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def _add_op(self, n, ins: list[str]) -> None:
        a, b = self._get(ins[0], n), self._get(ins[1], n)
        if a.kind == "act" and b.kind == "act":
            ta, tb = self.tensors[a.tensor], self.tensors[b.tensor]
            if ta.shape != tb.shape:
                raise BadInputError(f"Add node {n.name!r}: operand shapes {ta.shape} and {tb.shape} disagree")
            f = ta.fmt.add_format(tb.fmt)
            t = self._add(Op.ADD, n, [a.tensor, b.tensor], ta.shape, f)
            self.vals[n.output[0]] = _Val("act", tensor=t)
            return
        act, cst = (a, ins[1]) if a.kind == "act" else (b, ins[0])
        # bias add after MatMul/Conv: fold into the producing dense/conv when it has no bias yet
        prod = next((i for i, nd in enumerate(self.nodes) if nd.output == act.tensor), None)
        nd = self.nodes[prod] if prod is not None else None
        if nd is None or nd.op not in (Op.DENSE, Op.CONV2D) or "bias" in nd.consts or not self._single_use(act.tensor) \
                or nd.output not in self.exact:  # the sum must still be exact (no cast before the add)
            raise UnsupportedError(f"Add node {n.name!r}: adding a constant is supported only as the bias of a "
                                   f"MatMul/Conv")
        bias = self._const(cst, n, "bias")
        m = nd.consts["weight"].codes.shape[0]
        bc = bias.codes.reshape(-1)
        if bc.size != m:
            raise BadInputError(f"Add node {n.name!r}: bias has {bc.size} values for {m} outputs")
        bias = Constant(bc, bias.fmt)
        w = nd.consts["weight"]
        fx = self.tensors[nd.inputs[0]].fmt
        acc = lossless_acc_format(w.codes.reshape(m, -1), w.fmt, fx, bias.codes, bias.fmt)
        self.nodes[prod] = nd.replace(consts={"weight": w, "bias": bias}, acc_fmt=acc)
        old = self.tensors[nd.output]
        self.tensors[nd.output] = TensorSpec(nd.output, old.shape, acc)
        self.vals[n.output[0]] = act

    def _conv(self, n, ins: list[str]) -> None:
        a = _attrs(n)
        where = n.name or "Conv"
        x = self._act(ins[0], n)
        xs = self.tensors[x]
        if len(xs.shape) != 3:
            raise UnsupportedError(f"Conv node {where!r}: only 2-D convolutions (C, H, W) are supported")
        if int(a.get("group", 1)) != 1:
            raise UnsupportedError(f"Conv node {where!r}: grouped convolution is not supported")
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise UnsupportedError(f"Conv node {where!r}: dilation is not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise UnsupportedError(f"Conv node {where!r}: auto_pad is not supported; use explicit pads")
        w = self._const(ins[1], n, "weight")
        if w.codes.ndim != 4 or w.codes.shape[1] != xs.shape[0]:
            raise BadInputError(f"Conv node {where!r}: weight {w.codes.shape} does not fit input {xs.shape}")
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise UnsupportedError(f"Conv node {where!r}: asymmetric padding {pads} is not supported")
        st = [int(s) for s in a.get("strides", [1, 1])]
        b = self._const(ins[2], n, "bias") if len(ins) > 2 and ins[2] else None
        o, _, kh, kw = w.codes.shape
        shape = (o, conv_out_size(xs.shape[1], kh, st[0], pads[0]), conv_out_size(xs.shape[2], kw, st[1], pads[1]))
        if b is not None:
            b = Constant(b.codes.reshape(-1), b.fmt)
        acc = lossless_acc_format(w.codes.reshape(o, -1), w.fmt, xs.fmt, b.codes if b else None, b.fmt if b else None)
        consts = {"weight": w} | ({"bias": b} if b else {})
        t = self._add(Op.CONV2D, n, [x], shape, acc, consts,
                      {"stride": tuple(st), "padding": (pads[0], pads[1]), "khot": 0}, acc)
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def _maxpool(self, n, ins: list[str]) -> None:
        a = _attrs(n)
        where = n.name or "MaxPool"
        x = self._act(ins[0], n)
        xs = self.tensors[x]
        if len(xs.shape) != 3 or len(n.output) != 1 and n.output[1]:
            raise UnsupportedError(f"MaxPool node {where!r}: only 2-D pooling without indices is supported")
        if int(a.get("ceil_mode", 0)) or any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise UnsupportedError(f"MaxPool node {where!r}: ceil_mode/dilations are not supported")
        k = [int(v) for v in a["kernel_shape"]]
        st = [int(v) for v in a.get("strides", [1, 1])]
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise UnsupportedError(f"MaxPool node {where!r}: asymmetric padding {pads} is not supported")
        shape = (xs.shape[0], conv_out_size(xs.shape[1], k[0], st[0], pads[0]),
                 conv_out_size(xs.shape[2], k[1], st[1], pads[1]))
        t = self._add(Op.MAXPOOL2D, n, [x], shape, xs.fmt, attrs={"kernel": tuple(k), "stride": tuple(st),
                                                                   "padding": (pads[0], pads[1])})
        self.vals[n.output[0]] = _Val("act", tensor=t)

    def _reshape(self, n, ins: list[str]) -> None:
        x = self._act(ins[0], n)
        xs = self.tensors[x]
        if n.op_type == "Flatten":
            if int(_attrs(n).get("axis", 1)) != 1:
                raise UnsupportedError(f"Flatten node {n.name!r}: only axis=1 is supported")
            t = self._add(Op.FLATTEN, n, [x], (xs.size,), xs.fmt)
        else:
            shp = self._int_list(ins[1], n)
            if not shp:
                raise BadInputError(f"Reshape node {n.name!r}: empty target shape")
            rest = shp[1:]
            if -1 in rest:
                known = int(np.prod([d for d in rest if d != -1])) or 1
                rest = [xs.size // known if d == -1 else d for d in rest]
            if any(d <= 0 for d in rest) or int(np.prod(rest)) != xs.size:
                raise BadInputError(f"Reshape node {n.name!r}: cannot reshape {xs.shape} to {shp}")
            op = Op.FLATTEN if len(rest) == 1 else Op.RESHAPE
            t = self._add(op, n, [x], tuple(rest), xs.fmt, attrs={} if op is Op.FLATTEN else {"shape": tuple(rest)})
        self.vals[n.output[0]] = _Val("act", tensor=t)
