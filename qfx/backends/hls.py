"""Vitis HLS C++ backend: renders a ``qfx.ir.Graph`` into a self-contained HLS project folder.

Python decides *what* goes into the project (types, exact constant literals, layer configurations, K-hot shift-add
terms, identifiers); the Jinja2 templates in ``templates/hls/`` decide the layout; the hand-written kernels in
``hls/qfx_*.h`` hold the loops. Every layer computes exactly what ``qfx.fixed.ops`` computes: the exact result in a
lossless intermediate type, then one cast to the output type.

Project layout::

    firmware/<top>.h, <top>.cpp     top function (io_parallel arrays or io_stream hls::stream + DATAFLOW)
    firmware/<top>_axis.cpp         AXI4-Stream top around it (one packed vector per beat, ap_ctrl_none) for
                                    ``qfx cosim --hls-rtl`` and IP use; single-input, single-output graphs only
    firmware/parameters.h           ap_fixed typedef of every tensor and accumulator, per-layer config structs
    firmware/weights.h              constants as static const arrays of exact literals
    firmware/qfx_*.h                support kernels (copied from the qfx package)
    tb/tb_<top>.cpp                 testbench: int64 codes in, codes out, mismatch count
    tb/tb_input_codes.bin, tb/tb_expected_codes.bin   a few vectors so Vitis csim_design runs stand-alone
    build_prj.tcl, model.json, README.md
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qfx.backends.naming import comment_text, is_identifier, sanitize_one, unique_identifiers
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import FxFormat
from qfx.fixed.ops import avgpool_format, scale_shift_format
from qfx.ir.graph import Graph, Node, Op

__all__ = ["write_project", "exact_literal", "khot_term_format", "IO_MODES", "SUPPORT_HEADERS", "TB_VECTORS",
           "AxisLayout", "axis_layout", "AXIS_MAX_BITS"]

IO_MODES = ("parallel", "stream")
SUPPORT_HEADERS = ("qfx_types.h", "qfx_dense.h", "qfx_conv2d.h", "qfx_scale_shift.h", "qfx_activation.h",
                   "qfx_pool.h", "qfx_add.h", "qfx_stream.h", "qfx_io.h")
#: vectors written into tb/ so that ``vitis_hls build_prj.tcl`` (csim_design) checks something on its own
TB_VECTORS = 32
_RESERVED = ("tb", "firmware", "parameters", "weights", "model", "acc", "term", "win", "src", "got", "exp", "argc",
             "argv", "in_path", "exp_path", "got_path", "mismatches", "n_vec", "vec", "x", "y", "t", "a0", "a1",
             "in0", "in1", "out", "oh", "ow", "dst", "n_in", "n_out", "out_name", "out_off", "have_exp", "in", "i",
             "j", "k", "o", "q", "c", "s", "h", "v", "m", "w", "b", "s_axis", "m_axis", "xs", "ys", "wd")
#: widest AXI4-Stream TDATA Vitis HLS supports (UG1399, "AXI4-Stream Interfaces": 4096 bits, aggregated structs too)
AXIS_MAX_BITS = 4096


# ------------------------------------------------------------------------------------------------ exact literals
def exact_literal(code: int, fmt: FxFormat) -> str:
    """C++ expression whose value is exactly ``code * 2**-fmt.frac_bits``, convertible to ``fmt``'s type exactly.

    Codes below 2**53 in magnitude become one exact decimal ``double`` literal (a dyadic rational has a finite
    decimal expansion, the compiler parses it to the exact double, and ap_fixed's double constructor is exact for
    representable values). Wider codes are split into 2**32-aligned parts, each exact, summed exactly by ap_fixed.
    """
    code = int(code)
    if abs(code) < (1 << 53):
        return _decimal(code, fmt.frac_bits)
    lo = code & 0xFFFFFFFF
    hi = code - lo
    t = fmt.ap_type()
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


def _int_ctype(fmt: FxFormat) -> str:
    """Smallest C integer type holding every code of ``fmt``."""
    w = fmt.width + (0 if fmt.signed else 1)
    for bits, name in ((8, "signed char"), (16, "short"), (32, "int")):
        if w <= bits:
            return name
    return "long long"


def _int_literal(code: int) -> str:
    if code == -(1 << 63):
        return "(-9223372036854775807LL - 1)"
    return f"{code}LL" if not -(1 << 31) <= code < (1 << 31) else str(code)


def khot_term_format(fx: FxFormat, fw: FxFormat, codes: np.ndarray) -> FxFormat:
    """Signed type in which every partial sum of the shifted terms ``x * 2**(s - fw.frac)`` is exact.

    Fraction bits: those of ``x`` plus the right shifts a term may need; integer range: |x| times the sum of all
    CSD digit magnitudes of the largest-shift code (bounds every partial sum of any code's digits), and room for
    ``x`` itself, which is cast to this type before it is shifted right.
    """
    ff = fx.frac_bits + max(0, fw.frac_bits)
    xmax = max(-fx.min_code, fx.max_code)
    smax = max((s for c in np.asarray(codes).reshape(-1) for _, s in csd_digits(int(c))), default=0)
    # codes in units of 2**-ff: x itself is xcode * 2**max(0, fw.frac) (it is cast to the term type before any
    # shift); a term is xcode * 2**(s + max(0, -fw.frac)); partial sums stay below 2**(smax+1) times that
    bound = xmax * max(((1 << (smax + 1)) - 1) << max(0, -fw.frac_bits), 1 << max(0, fw.frac_bits))
    return FxFormat.for_code_range(-bound, bound, ff, signed=True)


# ------------------------------------------------------------------------------------------------ AXI-Stream top
@dataclass(frozen=True)
class AxisLayout:
    """TDATA layout of the AXI4-Stream top ``<top>_axis``: one whole tensor per beat, element 0 in the LSBs, each
    element its format's width, zero padding up to a whole byte (the layout of qfx's own RTL, so one testbench
    drives both). The C++ top packs the words itself, so no Vitis struct-aggregation rule is involved."""

    in_count: int
    in_ew: int
    in_signed: bool
    in_tw: int
    out_count: int
    out_ew: int
    out_signed: bool
    out_tw: int


def _pad8(bits: int) -> int:
    return max(8, (bits + 7) // 8 * 8)


def axis_layout(graph: Graph) -> AxisLayout:
    """The AXI4-Stream top's word layout for ``graph``; UnsupportedError (one line, the reason) if it has none."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedError(f"the AXI-Stream HLS top needs exactly one input and one output; graph "
                               f"{graph.name!r} has {len(graph.inputs)} and {len(graph.outputs)}")
    i, o = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    lay = AxisLayout(i.size, i.fmt.width, i.fmt.signed, _pad8(i.size * i.fmt.width),
                     o.size, o.fmt.width, o.fmt.signed, _pad8(o.size * o.fmt.width))
    for side, tw in (("input", lay.in_tw), ("output", lay.out_tw)):
        if tw > AXIS_MAX_BITS:
            raise UnsupportedError(f"the AXI-Stream HLS top would need a {tw}-bit {side} TDATA word; Vitis HLS "
                                   f"allows at most {AXIS_MAX_BITS} bits")
    return lay


# ------------------------------------------------------------------------------------------------ identifiers
class _Names:
    """Collects every identifier the project needs, then sanitizes them jointly (valid, unique, no keywords)."""

    def __init__(self, reserved: tuple[str, ...]) -> None:
        self.reserved = reserved
        self.keys: list[tuple[str, str]] = []
        self.raw: list[str] = []
        self.ids: dict[tuple[str, str], str] = {}

    def want(self, kind: str, name: str, raw: str) -> None:
        self.keys.append((kind, name))
        self.raw.append(raw)

    def resolve(self) -> None:
        self.ids = dict(zip(self.keys, unique_identifiers(self.raw, self.reserved)))

    def __call__(self, kind: str, name: str) -> str:
        return self.ids[(kind, name)]


_NODE_IDS = ("fn", "cfg", "acc", "w", "wt", "b", "bt", "scale", "scalet", "shift", "shiftt", "recip", "recipt",
             "sum", "term", "lo", "hi", "stream_fn", "bound")
_NODE_SUFFIX = {"fn": "", "cfg": "_config", "acc": "_acc_t", "w": "_w", "wt": "_weight_t", "b": "_b",
                "bt": "_bias_t", "scale": "_scale", "scalet": "_scale_t", "shift": "_shift", "shiftt": "_shift_t",
                "recip": "_recip", "recipt": "_recip_t", "sum": "_sum_t", "term": "_term_t", "lo": "_lo",
                "hi": "_hi", "stream_fn": "_stream", "bound": "_bound_t"}


# ------------------------------------------------------------------------------------------------ context
@dataclass
class _Ctx:
    graph: Graph
    top: str
    io: str
    names: _Names
    reuse: Mapping[str, int]
    types: list[dict[str, Any]] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    consts: list[dict[str, Any]] = field(default_factory=list)
    scalars: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)

    def typedef(self, ident: str, fmt: FxFormat, note: str) -> str:
        self.types.append({"name": ident, "ctype": fmt.ap_type(), "note": note})
        return ident

    def const_typedef(self, ident: str, fmt: FxFormat, note: str) -> str:
        """Type of a constant: the format's width and binary point with default modes. Modes only act when a value
        is converted *into* a type; a constant's own modes must not (AP_SAT_SYM would turn the most negative code
        into its negation plus one when the literal is converted)."""
        return self.typedef(ident, fmt.with_modes("TRN", "WRAP"), note)

    def array(self, ident: str, ctype: str, codes: np.ndarray, fmt: FxFormat, note: str) -> str:
        """A constant array stored as integer codes of ``ctype`` (a C integer type just wide enough); kernels turn
        each code into ``ctype`` with ``qfx::from_bits``. Exact by construction, and cheap to compile (an array of
        ap_fixed built from double literals costs g++ seconds per thousand elements)."""
        flat = np.asarray(codes, dtype=np.int64).reshape(-1)
        self.consts.append({"name": ident, "ctype": ctype, "ap_type": fmt.with_modes("TRN", "WRAP").ap_type(),
                            "ctype_int": _int_ctype(fmt), "size": max(1, flat.size), "note": note,
                            "frac_bits": fmt.frac_bits, "literals": [_int_literal(int(c)) for c in flat] or ["0"]})
        return ident


def _reuse_map(graph: Graph, reuse_factor: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(reuse_factor, Mapping):
        unknown = sorted(set(reuse_factor) - {n.name for n in graph.nodes})
        if unknown:
            raise BadInputError(f"reuse_factor names unknown node(s): {', '.join(map(repr, unknown[:3]))}")
        out = {n.name: int(reuse_factor.get(n.name, 1)) for n in graph.nodes}
    else:
        out = {n.name: int(reuse_factor) for n in graph.nodes}
    bad = [k for k, v in out.items() if v < 1]
    if bad:
        raise BadInputError(f"reuse_factor must be >= 1 (node {bad[0]!r})")
    return out


def _ceil_div(a: int, b: int) -> int:
    return max(1, -(-a // b))


def _layer(ctx: _Ctx, n: Node) -> dict[str, Any]:
    g, N = ctx.graph, ctx.names
    ins = [g.tensor(t) for t in n.inputs]
    out = g.tensor(n.output)
    L: dict[str, Any] = {
        "op": n.op.value, "node": N("fn", n.name), "note": comment_text(f"{n.name} ({n.op.value})"
                                                                       + (f" from {n.source}" if n.source else "")),
        "inputs": [N("tensor", t) for t in n.inputs], "in_types": [N("type", t) for t in n.inputs],
        "in_sizes": [s.size for s in ins], "output": N("tensor", n.output), "out_type": N("type", n.output),
        "out_size": out.size, "cfg": N("cfg", n.name), "khot": False, "reuse": ctx.reuse[n.name],
    }
    cfg: list[tuple[str, str, Any]] = []  # (kind, key, value): kind "type" or "uint"
    if n.op in (Op.DENSE, Op.CONV2D):
        w, b = n.consts["weight"], n.consts.get("bias")
        assert n.acc_fmt is not None
        fx = ins[0].fmt
        acc_t = ctx.typedef(N("acc", n.name), n.acc_fmt, f"accumulator of {L['note']}")
        L["acc_t"] = acc_t
        wt = ctx.const_typedef(N("wt", n.name), w.fmt, "weights")
        bt = ctx.const_typedef(N("bt", n.name), b.fmt if b is not None else FxFormat(2, 1), "bias" if b is not None
                         else "bias (unused: layer has none)")
        L["has_bias"] = b is not None
        L["bias_t"] = bt
        L["bias"] = ctx.array(N("b", n.name), bt, b.codes, b.fmt, f"bias of {L['note']}") if b is not None else ""
        cfg += [("type", "weight_t", wt), ("type", "bias_t", bt), ("type", "accum_t", acc_t)]
        wc = w.codes.reshape(w.codes.shape[0], -1)
        L["khot"] = int(n.attr("khot", 0) or 0) > 0
        if L["khot"]:
            tf = khot_term_format(fx, w.fmt, wc)
            L["term_t"] = ctx.typedef(N("term", n.name), tf, "exact partial sums of shift-add terms")
            L["rows"] = _khot_rows(wc, w.fmt)
            L["used"] = sorted({wj["j"] for r in L["rows"] for wj in r["weights"]})
        else:
            L["weights"] = ctx.array(N("w", n.name), wt, w.codes, w.fmt, f"weights of {L['note']}, shape "
                                     f"{tuple(w.codes.shape)}")
        if n.op is Op.DENSE:
            cfg += [("uint", "n_in", ins[0].size), ("uint", "n_out", out.size)]
            mults = wc.size
        else:
            c, h, wd = ins[0].shape
            o, _, kh, kw = w.codes.shape
            sh, sw = n.attr("stride", (1, 1))
            ph, pw = n.attr("padding", (0, 0))
            cfg += [("uint", "n_chan", c), ("uint", "in_h", h), ("uint", "in_w", wd), ("uint", "n_filt", o),
                    ("uint", "out_h", out.shape[1]), ("uint", "out_w", out.shape[2]), ("uint", "k_h", kh),
                    ("uint", "k_w", kw), ("uint", "stride_h", sh), ("uint", "stride_w", sw), ("uint", "pad_h", ph),
                    ("uint", "pad_w", pw)]
            L.update(n_filt=o, n_win=c * kh * kw, out_h=out.shape[1], out_w=out.shape[2])
            mults = wc.size
        cfg += [("uint", "reuse_factor", L["reuse"]), ("uint", "multiplier_limit", _ceil_div(mults, L["reuse"]))]
    elif n.op is Op.SCALE_SHIFT:
        s, h = n.consts["scale"], n.consts["shift"]
        exact = scale_shift_format(ins[0].fmt, s.fmt, h.fmt)
        acc = n.acc_fmt if n.acc_fmt is not None and n.acc_fmt.contains(exact) else exact
        acc_t = ctx.typedef(N("acc", n.name), acc, f"x*scale+shift of {L['note']}")
        st = ctx.const_typedef(N("scalet", n.name), s.fmt, "scale")
        ht = ctx.const_typedef(N("shiftt", n.name), h.fmt, "shift")
        L["scale"] = ctx.array(N("scale", n.name), st, s.codes, s.fmt, f"scale of {L['note']}")
        L["shift"] = ctx.array(N("shift", n.name), ht, h.codes, h.fmt, f"shift of {L['note']}")
        c = ins[0].shape[0]
        cfg += [("type", "scale_t", st), ("type", "shift_t", ht), ("type", "accum_t", acc_t),
                ("uint", "n_chan", c), ("uint", "n_inner", ins[0].size // c),
                ("uint", "reuse_factor", L["reuse"]), ("uint", "multiplier_limit", _ceil_div(ins[0].size, L["reuse"]))]
    elif n.op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        c, h, wd = ins[0].shape
        kh, kw = n.attr("kernel")
        sh, sw = n.attr("stride", (kh, kw))
        ph, pw = n.attr("padding", (0, 0))
        cfg += [("uint", "n_chan", c), ("uint", "in_h", h), ("uint", "in_w", wd), ("uint", "out_h", out.shape[1]),
                ("uint", "out_w", out.shape[2]), ("uint", "k_h", kh), ("uint", "k_w", kw), ("uint", "stride_h", sh),
                ("uint", "stride_w", sw), ("uint", "pad_h", ph), ("uint", "pad_w", pw)]
        if n.op is Op.AVGPOOL2D:
            r = n.consts["recip"]
            fx = ins[0].fmt
            sum_f = FxFormat.for_code_range(fx.min_code * kh * kw, fx.max_code * kh * kw, fx.frac_bits)
            st = ctx.typedef(N("sum", n.name), sum_f, "exact window sum")
            rt = ctx.const_typedef(N("recipt", n.name), r.fmt, "reciprocal of the window size")
            ctx.typedef(N("acc", n.name), avgpool_format(fx, r.fmt, kh * kw), "exact sum * recip (reference)")
            L["recip"] = N("recip", n.name)
            ctx.scalars.append({"name": L["recip"], "ctype": rt,
                                "value": exact_literal(int(r.codes.reshape(-1)[0]), r.fmt)})
            cfg += [("type", "sum_t", st), ("type", "recip_t", rt)]
    elif n.op is Op.CLIP:
        fx = ins[0].fmt
        lo, hi = int(n.attr("lo")), int(n.attr("hi"))
        L["bound_t"] = ctx.const_typedef(N("bound", n.name), fx, "clip bounds (input format, no conversion modes)")
        for key, code in (("lo", lo), ("hi", hi)):
            if not fx.min_code <= code <= fx.max_code:
                raise BadInputError(f"clip node {n.name!r}: bound {code} is not a code of {fx.ap_type()}")
            ctx.scalars.append({"name": N(key, n.name), "ctype": L["bound_t"], "value": exact_literal(code, fx)})
        L["lo"], L["hi"] = N("lo", n.name), N("hi", n.name)
    elif n.op in (Op.ADD, Op.RELU, Op.FLATTEN, Op.RESHAPE, Op.QUANT):
        if n.op in (Op.FLATTEN, Op.RESHAPE, Op.QUANT) and ins[0].size != out.size:
            raise BadInputError(f"node {n.name!r} changes the element count ({ins[0].size} -> {out.size})")
        if n.op is Op.ADD and ins[0].size != ins[1].size:
            raise BadInputError(f"add node {n.name!r}: operands have {ins[0].size} and {ins[1].size} elements")
    else:  # pragma: no cover - every Op is handled above
        raise UnsupportedError(f"HLS backend has no rule for op {n.op.value!r} (node {n.name!r})")
    if cfg:
        ctx.configs.append({"name": L["cfg"], "note": L["note"], "fields": cfg})
    return L


def _khot_rows(wc: np.ndarray, fw: FxFormat) -> list[dict[str, Any]]:
    """Per output row: the non-zero weights and their signed shift terms ``x * 2**(s - fw.frac)``."""
    rows = []
    for o in range(wc.shape[0]):
        ws = []
        for j, c in enumerate(wc[o].tolist()):
            if c == 0:
                continue
            terms = []
            for sign, s in csd_digits(int(c)):
                e = s - fw.frac_bits
                terms.append({"neg": sign < 0, "op": "<<" if e >= 0 else ">>", "sh": abs(e)})
            ws.append({"j": j, "code": int(c), "terms": terms})
        rows.append({"o": o, "weights": ws})
    return rows


def _stream_plan(ctx: _Ctx) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[Any, str]]:
    """Streams for io=stream: every tensor gets one stream per reader; fan-out goes through clone chains.

    Returns the internal streams to declare, the clones by tensor (run right after the tensor's producer) and a map
    ``(node, input slot) -> stream read`` plus ``tensor -> stream written by its producer``.
    """
    g, N = ctx.graph, ctx.names
    uses: dict[str, list[Any]] = {t: [] for t in g.tensors}
    for n in g.nodes:
        for k, t in enumerate(n.inputs):
            uses[t].append((n.name, k))
    for t in g.outputs:
        uses[t].append("<output>")
    streams: list[dict[str, Any]] = []
    clones: dict[str, list[dict[str, Any]]] = {}
    route: dict[Any, str] = {}
    for t, spec in g.tensors.items():
        u = uses[t]
        if not u:
            if t in g.inputs:
                raise BadInputError(f"graph input {t!r} is never used")
            continue
        ty = N("type", t)
        port = N("tensor", t)
        if t in g.inputs:
            src = port
        elif u == ["<output>"]:
            src = port
        else:
            src = N("sout", t) if t in g.outputs else port
            streams.append({"name": src, "type": ty, "depth": spec.size})
        route[t] = src
        if len(u) == 1:
            route[u[0]] = src
            continue
        dests = []
        for i, use in enumerate(u):
            d = port if use == "<output>" else N(f"sfan{i}", t)
            if use != "<output>":
                streams.append({"name": d, "type": ty, "depth": spec.size})
            route[use] = d
            dests.append(d)
        cur = src
        for i in range(len(dests) - 1):
            if i == len(dests) - 2:
                nxt = dests[-1]
            else:
                nxt = N(f"sfanr{i}", t)
                streams.append({"name": nxt, "type": ty, "depth": spec.size})
            clones.setdefault(t, []).append({"type": ty, "size": spec.size, "src": cur, "a": dests[i], "b": nxt})
            cur = nxt
    return streams, clones, route


# ------------------------------------------------------------------------------------------------ entry point
def write_project(graph: Graph, outdir: Path, *, part: str = "xcvu9p-flga2104-2-e", clock_ns: float = 5.0,
                  reuse_factor: int | Mapping[str, int] = 1, io: str = "parallel", top_name: str | None = None,
                  tb_vectors: int = TB_VECTORS) -> None:
    """Write a Vitis HLS project for ``graph`` into ``outdir`` (an existing, empty folder).

    ``reuse_factor`` (an int, or a dict by node name) is how many multiplications share one multiplier in a layer;
    ``io`` is ``"parallel"`` (arrays, fully partitioned) or ``"stream"`` (``hls::stream`` + DATAFLOW).
    """
    from qfx import __version__
    from qfx.ir.interpret import random_inputs, run

    outdir = Path(outdir)
    if not outdir.is_dir():
        raise BadInputError(f"output folder {outdir} does not exist")
    if any(outdir.iterdir()):
        raise BadInputError(f"output folder {outdir} is not empty")
    if io not in IO_MODES:
        raise BadInputError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
    if not (isinstance(clock_ns, (int, float)) and 0 < float(clock_ns) < 1e6):
        raise BadInputError(f"clock period must be a positive number of ns, got {clock_ns!r}")
    if not part or any(ch.isspace() or ch in "{}[]$\\\";" for ch in str(part)):
        raise BadInputError(f"invalid FPGA part name {part!r}")
    graph.validate()
    for t in graph.outputs:
        if t in graph.inputs:
            raise UnsupportedError(f"graph output {t!r} is also a graph input; nothing to synthesize")
    if top_name is None:
        top = sanitize_one(graph.name, _RESERVED)
    else:
        if not is_identifier(top_name, _RESERVED):
            raise BadInputError(f"top name {top_name!r} is not a usable C++ identifier")
        top = top_name
    names = _Names(_RESERVED + (top, f"{top}_stream", f"{top}_axis"))
    for t in graph.tensors:
        names.want("tensor", t, t)
    for t in graph.tensors:
        names.want("type", t, f"{t}_t")
    n_uses = {t: sum(n.inputs.count(t) for n in graph.nodes) + (t in graph.outputs) for t in graph.tensors}
    for t in graph.tensors:
        names.want("sout", t, f"{t}_out")
        for i in range(n_uses[t] if n_uses[t] > 1 else 0):
            names.want(f"sfan{i}", t, f"{t}_fan{i}")
            names.want(f"sfanr{i}", t, f"{t}_rest{i}")
    for n in graph.nodes:
        for kind in _NODE_IDS:
            names.want(kind, n.name, n.name + _NODE_SUFFIX[kind])
    names.resolve()
    ctx = _Ctx(graph, top, io, names, _reuse_map(graph, reuse_factor))
    for t, spec in graph.tensors.items():
        ctx.typedef(names("type", t), spec.fmt, comment_text(f"tensor {t} {list(spec.shape)}"))
    ctx.layers = [_layer(ctx, n) for n in graph.nodes]

    def port(t: str) -> dict[str, Any]:
        spec = graph.tensor(t)
        return {"name": names("tensor", t), "type": names("type", t), "size": spec.size, "signed": spec.fmt.signed,
                "note": comment_text(t)}

    inputs = [port(t) for t in graph.inputs]
    outputs = [port(t) for t in graph.outputs]
    io_names = {p["name"] for p in inputs + outputs}
    buffers = [{"name": names("tensor", t), "type": names("type", t), "size": graph.tensor(t).size}
               for t in graph.tensors if names("tensor", t) not in io_names and graph.producer(t) is not None]
    streams: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = [{"kind": "layer", "layer": L} for L in ctx.layers]
    if io == "stream":
        streams, clones, route = _stream_plan(ctx)
        steps = [{"kind": "clone", **c} for t in graph.inputs for c in clones.get(t, [])]
        for L, n in zip(ctx.layers, graph.nodes):
            L["in_streams"] = [route[(n.name, k)] for k in range(len(n.inputs))]
            L["out_stream"] = route[n.output]
            L["stream_fn"] = names("stream_fn", n.name)
            steps.append({"kind": "layer", "layer": L})
            steps += [{"kind": "clone", **c} for c in clones.get(n.output, [])]
    try:
        axis: dict[str, Any] | None = {"name": f"{top}_axis", **vars(axis_layout(graph))}
    except UnsupportedError:
        axis = None  # no AXI-Stream top; qfx cosim --hls-rtl says why
    env = _env()
    model_note = comment_text(graph.name)
    tvec = max(1, int(tb_vectors))
    x = random_inputs(graph, tvec, seed=0) if len(graph.inputs) == 1 else None
    common = {
        "version": __version__, "model": model_note, "top": top, "io": io, "part": part,
        "clock_ns": f"{float(clock_ns):g}", "types": ctx.types, "configs": ctx.configs, "consts": ctx.consts,
        "scalars": ctx.scalars, "layers": ctx.layers, "inputs": inputs, "outputs": outputs, "buffers": buffers,
        "streams": streams, "steps": steps, "headers": SUPPORT_HEADERS,
        "n_in": sum(p["size"] for p in inputs), "n_out": sum(p["size"] for p in outputs),
        "has_tb_vectors": x is not None, "ops": sorted({L["op"] for L in ctx.layers}),
        "n_nodes": len(graph.nodes), "reuse": sorted({L["reuse"] for L in ctx.layers}) or [1], "axis": axis,
    }
    fw = outdir / "firmware"
    tb = outdir / "tb"
    fw.mkdir()
    tb.mkdir()
    files = {
        fw / f"{top}.h": "top.h.j2",
        fw / f"{top}.cpp": "top.cpp.j2",
        fw / "parameters.h": "parameters.h.j2",
        fw / "weights.h": "weights.h.j2",
        tb / f"tb_{top}.cpp": "tb.cpp.j2",
        outdir / "build_prj.tcl": "build_prj.tcl.j2",
        outdir / "README.md": "README.md.j2",
    }
    if axis is not None:
        files[fw / f"{axis['name']}.cpp"] = "axis_top.cpp.j2"
    for path, tpl in files.items():
        path.write_text(env.get_template(tpl).render(**common))
    from qfx.resources import data_dir

    src = data_dir("hls")
    for h in SUPPORT_HEADERS:  # copied with the same header line as every generated file
        (fw / h).write_text(f"// Copied by qfx {__version__} for model '{model_note}'.\n" + (src / h).read_text())
    graph.replace(meta=dict(graph.meta) | {"exported_by": f"qfx {__version__} HLS backend"}).save(outdir / "model.json")
    if x is not None:
        from qfx.sim.build import write_codes

        y = run(graph, x)
        ys = np.concatenate([np.asarray(y[o] if isinstance(y, dict) else y).reshape(tvec, -1)
                             for o in graph.outputs], axis=1)
        write_codes(tb / "tb_input_codes.bin", x.reshape(tvec, -1))
        write_codes(tb / "tb_expected_codes.bin", ys)


def _env():
    import jinja2

    from qfx.resources import data_dir

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates") / "hls")),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True, autoescape=False)
