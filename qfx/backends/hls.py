"""Vitis HLS C++ backend: renders a ``qfx.ir.Graph`` into a self-contained HLS project folder.

Python decides *what* goes into the project (types, exact constant literals, layer configurations, K-hot shift/sign
tables, identifiers); the Jinja2 templates in ``templates/hls/`` decide the layout; the hand-written kernels in
``hls/qfx_*.h`` hold the loops. Every layer computes exactly what ``qfx.fixed.ops`` computes: the exact result in a
lossless intermediate type, then one cast to the output type.

This module does what every layer shares (identifiers, types of tensors, io plumbing, files); what is particular to
an op lives in its emitter in ``qfx.backends.hls_ops.HLS_EMITTERS`` and its ``call_<name>`` macro in
``templates/hls/macros.j2``. A project copies only the support headers its layers use.

Project layout::

    firmware/<top>.h, <top>.cpp     top function (io_parallel arrays, or io_stream: a DATAFLOW region of pixel
                                    streams, line-buffer windows for convolutions and pools, see README.md)
    firmware/<top>_axis.cpp         AXI4-Stream top around it (one packed vector per beat, ap_ctrl_none) for
                                    ``qfx cosim --hls-rtl`` and IP use; one port per graph input and output
    firmware/parameters.h           ap_fixed typedef of every tensor and accumulator, per-layer config structs
    firmware/weights.h              constants as static const arrays of exact literals
    firmware/qfx_*.h                the support kernels its layers use (copied from the qfx package)
    tb/tb_<top>.cpp                 testbench: int64 codes in, codes out, mismatch count
    tb/tb_input_codes.bin, tb/tb_expected_codes.bin   a few vectors so Vitis csim_design runs stand-alone
    build_prj.tcl, model.json, README.md
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qfx.backends.axis import AxisLayout, pad8
from qfx.backends.hls_ops import HLS_EMITTERS, STREAM_WINDOW_PAD, exact_literal, khot_term_format, stream_form
from qfx.backends.naming import comment_text, is_identifier, sanitize_one, unique_identifiers
from qfx.backends.templating import template_env
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph, Node, op_def
from qfx.ops import Categories, emitter_for

__all__ = ["write_project", "exact_literal", "khot_term_format", "IO_MODES", "BASE_HEADERS", "STREAM_HEADER",
           "TB_VECTORS", "AxisLayout", "axis_layout", "AxisPort", "axis_ports", "AXIS_MAX_BITS", "HLS_EMITTERS", "project_headers"]

IO_MODES = ("parallel", "stream")
#: support headers every project has: ap_types includes and pragma macros (parameters.h), testbench code I/O
BASE_HEADERS = ("qfx_types.h", "qfx_io.h")
#: support header of io=stream projects (stream <-> array plumbing)
STREAM_HEADER = "qfx_stream.h"
#: support header of io=stream sliding windows (line buffers) for convolutions and pooling
WINDOW_HEADER = "qfx_window_stream.h"
#: kinds of config struct fields parameters.h.j2 renders: a typedef, a static const unsigned, a static const int
_CONFIG_KINDS = ("type", "uint", "int")
#: vectors written into tb/ so that ``vitis_hls build_prj.tcl`` (csim_design) checks something on its own
TB_VECTORS = 32
_RESERVED = ("tb", "firmware", "parameters", "weights", "model", "acc", "term", "win", "src", "got", "exp", "argc",
             "argv", "in_path", "exp_path", "got_path", "mismatches", "n_vec", "vec", "x", "y", "t", "a0", "a1",
             "in0", "in1", "out", "oh", "ow", "dst", "n_in", "n_out", "out_name", "out_off", "have_exp", "in", "i",
             "j", "k", "o", "q", "c", "s", "h", "v", "m", "w", "b", "s_axis", "m_axis", "xs", "ys", "wd")
#: widest AXI4-Stream TDATA Vitis HLS supports (UG1399, "AXI4-Stream Interfaces": 4096 bits, aggregated structs too)
AXIS_MAX_BITS = 4096


# ------------------------------------------------------------------------------------------------ constants
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


# ------------------------------------------------------------------------------------------------ AXI-Stream top
@dataclass(frozen=True)
class AxisPort:
    """One AXI4-Stream port of the HLS AXI top: the graph tensor it carries, its port name (``s_axis``/``m_axis``
    for one-input, one-output graphs, else ``s<k>_axis``/``m<k>_axis`` by graph input/output position, as qfx's
    RTL names them), element count, element width, signedness and padded TDATA width (one whole tensor per beat)."""

    tensor: str
    prefix: str
    count: int
    ew: int
    signed: bool
    tw: int

    def facts(self) -> dict[str, Any]:
        """The port in the co-simulation port schema (``qfx.sim.cosim.project_ports``)."""
        return {"tensor": self.tensor, "prefix": self.prefix, "count": self.count, "ew": self.ew,
                "signed": self.signed, "tw": self.tw, "beats": 1, "order": "flat", "tlast": False}


def axis_ports(graph: Graph) -> tuple[tuple[AxisPort, ...], tuple[AxisPort, ...]]:
    """(input ports, output ports) of the AXI4-Stream top, in graph order; UnsupportedError (one line, the reason)
    if a port's packed word is wider than Vitis HLS allows."""
    multi = len(graph.inputs) != 1 or len(graph.outputs) != 1
    sides = []
    for d, names, side in (("s", graph.inputs, "input"), ("m", graph.outputs, "output")):
        ports = []
        for k, t in enumerate(names):
            spec = graph.tensor(t)
            q = AxisPort(t, f"{d}{k}_axis" if multi else f"{d}_axis", spec.size, spec.fmt.width, spec.fmt.signed,
                         pad8(spec.size * spec.fmt.width))
            if q.tw > AXIS_MAX_BITS:
                what = f"{side} port {q.prefix} ({t})" if multi else side
                raise UnsupportedError(f"the AXI-Stream HLS top would need a {q.tw}-bit {what} TDATA word; Vitis "
                                       f"HLS allows at most {AXIS_MAX_BITS} bits")
            ports.append(q)
        sides.append(tuple(ports))
    return sides[0], sides[1]


def axis_layout(graph: Graph) -> AxisLayout:
    """The AXI4-Stream top's word layout for a one-input, one-output ``graph`` (``axis_ports`` handles any graph);
    UnsupportedError (one line, the reason) otherwise."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedError(f"axis_layout describes one input and one output; graph {graph.name!r} has "
                               f"{len(graph.inputs)} and {len(graph.outputs)} (use axis_ports)")
    (i,), (o,) = axis_ports(graph)
    return AxisLayout(i.count, i.ew, i.signed, i.tw, o.count, o.ew, o.signed, o.tw)


def _axis_reserved(graph: Graph) -> tuple[str, ...]:
    """Identifiers the AXI top of a several-input or several-output graph declares (its ports and locals)."""
    if len(graph.inputs) == 1 and len(graph.outputs) == 1:
        return ()  # s_axis, m_axis, xs, ys, wd, o: in _RESERVED already
    return tuple(f"{a}{k}{b}" for k in range(len(graph.inputs)) for a, b in (("s", "_axis"), ("xs", ""), ("wd", ""))) \
        + tuple(f"{a}{k}{b}" for k in range(len(graph.outputs)) for a, b in (("m", "_axis"), ("ys", ""), ("o", "")))


def _axis_context(graph: Graph, top: str, inputs: list[dict[str, Any]],
                  outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What templates/hls/axis_top.cpp.j2 and README.md.j2 need of the AXI top; None when the graph has none."""
    try:
        ins, outs = axis_ports(graph)
    except UnsupportedError:
        return None  # no AXI-Stream top; qfx cosim --hls-rtl says why
    multi = len(ins) != 1 or len(outs) != 1

    def port(q: AxisPort, p: dict[str, Any], k: int, buf: str, word: str, loop: str) -> dict[str, Any]:
        sfx = str(k) if multi else ""
        return {"port": q.prefix, "tensor": p["note"], "type": p["type"], "count": q.count, "ew": q.ew, "tw": q.tw,
                "buf": buf + sfx, "word": word + sfx, "loop": loop + sfx}

    ax: dict[str, Any] = {
        "name": f"{top}_axis", "multi": multi,
        "ins": [port(q, p, k, "xs", "wd", "Unpack") for k, (q, p) in enumerate(zip(ins, inputs))],
        "outs": [port(q, p, k, "ys", "o", "Pack") for k, (q, p) in enumerate(zip(outs, outputs))],
        "max_tw": max(q.tw for q in ins + outs)}
    if not multi:  # the one-port keys, as before
        ax |= {k: v for k, v in vars(axis_layout(graph)).items()}
    return ax


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


#: io=stream only: locals of the generated layer functions (pixels, line buffers, converted weights)
_STREAM_RESERVED = ("wv", "nob", "lb", "a2", "a3", "in2", "in3")
#: io=stream only: configurations of a layer's line buffers, of its one-output-pixel kernel, of its one-pixel kernel
_STREAM_NODE_IDS = {"lbcfg": "_lb_config", "wcfg": "_window_config", "pcfg": "_pixel_config"}


# ------------------------------------------------------------------------------------------------ context
@dataclass
class _Ctx:
    graph: Graph
    top: str
    io: str
    names: _Names
    reuse: Mapping[str, int]
    forms: dict[str, str] = field(default_factory=dict)
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
        ap_type = fmt.with_modes("TRN", "WRAP").ap_type()
        self.consts.append({"name": ident, "ctype_int": _int_ctype(fmt), "size": max(1, flat.size),
                            "comment": f"{note}: codes of {ctype} = {ap_type}, value = code * 2^{-fmt.frac_bits}",
                            "literals": [_int_literal(int(c)) for c in flat] or ["0"]})
        return ident

    def table(self, ident: str, values: np.ndarray, note: str) -> str:
        """A constant array of small integers that are not fixed-point codes (K-hot shift/sign tables)."""
        flat = np.asarray(values, dtype=np.int64).reshape(-1)
        lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
        self.consts.append({"name": ident, "ctype_int": _int_ctype(FxFormat.for_code_range(lo, hi, 0, signed=True)),
                            "size": max(1, flat.size), "comment": note,
                            "literals": [_int_literal(int(c)) for c in flat] or ["0"]})
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


def _layer(ctx: _Ctx, n: Node) -> dict[str, Any]:
    """The fields every layer has, then the op's own from its emitter in ``HLS_EMITTERS`` (config struct fields,
    the ``call_<name>`` macro that renders its C++ call, the support headers it needs)."""
    g, N = ctx.graph, ctx.names
    ins = [g.tensor(t) for t in n.inputs]
    out = g.tensor(n.output)
    L: dict[str, Any] = {
        "op": n.op.value, "node": N("fn", n.name), "note": comment_text(f"{n.name} ({n.op.value})"
                                                                       + (f" from {n.source}" if n.source else "")),
        "inputs": [N("tensor", t) for t in n.inputs], "in_types": [N("type", t) for t in n.inputs],
        "in_sizes": [s.size for s in ins], "output": N("tensor", n.output), "out_type": N("type", n.output),
        "out_size": out.size, "cfg": N("cfg", n.name), "reuse": ctx.reuse[n.name],
    }
    fields = dict(emitter_for(HLS_EMITTERS, n, "HLS")(ctx, n, L))
    cfg = fields.pop("config", [])
    header = op_def(n.op).hls_header
    L["headers"] = tuple(fields.pop("headers", (header,) if header else ()))
    L.update(fields)
    if "call" not in L:
        raise UnsupportedError(f"the HLS emitter of op {n.op.value!r} (node {n.name!r}) names no call macro")
    bad = [f for f in cfg if f[0] not in _CONFIG_KINDS]
    if bad:
        raise UnsupportedError(f"the HLS emitter of op {n.op.value!r} (node {n.name!r}) gives config field "
                               f"{bad[0][1]!r} the unknown kind {bad[0][0]!r}")
    if cfg:
        ctx.configs.append({"name": L["cfg"], "note": L["note"], "fields": cfg})
    return L


def project_headers(layers: list[dict[str, Any]], io: str) -> list[str]:
    """Support headers a project copies: the base ones, each layer's, and the stream plumbing for io=stream."""
    used = {h for L in layers for h in L["headers"]} | ({STREAM_HEADER} if io == "stream" else set())
    return sorted(set(BASE_HEADERS) | used)


def _check_calls(env: Any, layers: list[dict[str, Any]]) -> None:
    """Every layer's call macro exists in macros.j2 (checked before any file is written)."""
    calls = env.get_template("macros.j2").module.CALLS
    for L in layers:
        if L["call"] not in calls:
            raise UnsupportedError(f"templates/hls/macros.j2 has no call macro for {L['call']!r} (op {L['op']!r}, "
                                   f"node {L['note']!r}); known: {', '.join(sorted(calls))}")


def _live_nodes(graph: Graph) -> list[Node]:
    """Nodes whose output reaches a graph output, in graph order. io=stream runs only these: a stream nobody reads
    would stall a DATAFLOW region (the default pass flow's ``remove_dead`` drops the others anyway)."""
    need = set(graph.outputs)
    live = set()
    for n in reversed(graph.nodes):
        if n.output in need:
            live.add(n.name)
            need.update(n.inputs)
    return [n for n in graph.nodes if n.name in live]


def _pix(graph: Graph, t: str) -> tuple[int, int]:
    """(values per stream element, elements) of tensor ``t`` in io=stream: an image (C, H, W) is H*W pixels of C
    channel values; any other tensor is one element holding all its values."""
    shape = graph.tensor(t).shape
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]) * int(shape[2])
    return graph.tensor(t).size, 1


def _pixel_type(ctx: _Ctx, t: str) -> str:
    c, _ = _pix(ctx.graph, t)
    return f"qfx::pixel<{ctx.names('type', t)}, {c}>"


#: depth of a stream between a producer and its only consumer when both run pixel by pixel
STREAM_DEPTH = 2


def _stream_plan(ctx: _Ctx, nodes: list[Node]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]],
                                                        dict[Any, str]]:
    """Streams for io=stream: every tensor gets one stream of pixels (``qfx::pixel``) per reader among ``nodes`` (the
    live ones); fan-out goes through clone chains; a graph input or output gets an internal pixel stream that an
    adapter fills from (or empties into) the scalar port.

    Depths: ``STREAM_DEPTH`` along a chain; for every stream that leaves a fan-out, the latency difference of the
    paths that meet again downstream (``_fanout_depth``; a whole frame where it cannot be bounded); a whole frame for
    every input of a multi-input layer in the whole-tensor form (it reads its inputs one after the other). With
    these the DATAFLOW region cannot deadlock.

    Returns the internal streams to declare, the clones by tensor (run right after the tensor's producer) and a map
    ``(node, input slot) -> stream read`` plus ``tensor -> stream written by its producer``.
    """
    g, N = ctx.graph, ctx.names
    uses: dict[str, list[Any]] = {t: [] for t in g.tensors}
    for n in nodes:
        for k, t in enumerate(n.inputs):
            uses[t].append((n.name, k))
    for t in g.outputs:
        uses[t].append("<output>")
    joins = {(n.name, k) for n in nodes if len(n.inputs) > 1 and n.name in ctx.forms
             and ctx.forms[n.name] == "tensor" for k in range(len(n.inputs))}
    streams: list[dict[str, Any]] = []
    clones: dict[str, list[dict[str, Any]]] = {}
    route: dict[Any, str] = {}
    for t in g.tensors:
        u = uses[t]
        if not u:
            if t in g.inputs:
                raise BadInputError(f"graph input {t!r} is never used")
            continue
        ty = _pixel_type(ctx, t)
        frame = _pix(g, t)[1]

        def declare(name: str, why: str) -> str:
            depth = min(frame, STREAM_DEPTH) if why == "chain" else frame
            if why == "fan-out":
                depth, why = _fanout_depth(ctx, t, nodes)
            streams.append({"name": name, "type": ty, "depth": depth, "frame": frame, "why": why,
                            "tensor": comment_text(t)})
            return name

        why = "join" if len(u) == 1 and u[0] in joins else "chain"
        if t in g.inputs:
            src = declare(N("spix", t), why)
        elif u == ["<output>"]:
            src = declare(N("spix", t), "chain")
        else:
            src = declare(N("sout", t) if t in g.outputs else N("tensor", t), why)
        route[t] = src
        if len(u) == 1:
            route[u[0]] = src
            continue
        dests = []
        for i, use in enumerate(u):
            d = declare(N("spix", t) if use == "<output>" else N(f"sfan{i}", t), "fan-out")
            route[use] = d
            dests.append(d)
        cur = src
        for i in range(len(dests) - 1):
            nxt = dests[-1] if i == len(dests) - 2 else declare(N(f"sfanr{i}", t), "fan-out")
            clones.setdefault(t, []).append({"type": ty, "size": frame, "src": cur, "a": dests[i], "b": nxt})
            cur = nxt
    return streams, clones, route


def _window_geometry(graph: Graph, n: Node) -> tuple[int, int, int, int, int, int]:
    """(k_h, k_w, stride_h, stride_w, pad_h, pad_w) of a windowed layer (kernel from a convolution's weights)."""
    d = op_def(n.op)
    if d.is_(Categories.CONV):
        kh, kw = (int(v) for v in n.consts["weight"].codes.shape[2:])
    else:
        kh, kw = (int(v) for v in d.attr(n, "kernel"))
    sh, sw = (int(v) for v in d.attr(n, "stride"))
    ph, pw = (int(v) for v in d.attr(n, "padding"))
    return kh, kw, sh, sw, ph, pw


def _fanout_depth(ctx: _Ctx, t: str, nodes: list[Node]) -> tuple[int, str]:
    """Depth of the streams leaving a fan-out of ``t``, and why.

    A branch through sliding windows runs behind a direct one: a window layer of stride 1 that keeps the frame size
    reads ``(k_h - 1 - pad_h) * W + (k_w - 1 - pad_w)`` pixels more than it has written at most (at its first
    output; padding steps later only let it catch up), and pixel layers read as they write. So when every layer
    between the fan-out and the joins is such a window or pixel layer, a FIFO of the largest summed lag on any path,
    plus two elements per layer and two (pipeline registers, rounding up), lets the direct branch run ahead without
    stalling the clone. Anything else (a stride, a size change or a whole-tensor layer on a path that joins again)
    gets a whole frame."""
    g = ctx.graph
    _, frame = _pix(g, t)
    lag: dict[str, int] = {t: 0}
    reached = {t}
    visited = 0
    for n in nodes:
        ins = [i for i in n.inputs if i in reached]
        if not ins:
            continue
        reached.add(n.output)
        form = ctx.forms.get(n.name, "tensor")
        same = _pix(g, n.output)[1] == frame and all(i in lag for i in ins)
        own = 0
        if form == "window" and same:
            kh, kw, sh, sw, ph, pw = _window_geometry(g, n)
            w = g.tensor(n.inputs[0]).shape[2]
            same = (sh, sw) == (1, 1) and tuple(g.tensor(n.inputs[0]).shape[1:]) == tuple(g.tensor(n.output).shape[1:])
            own = max(0, (kh - 1 - ph) * w + (kw - 1 - pw))
        if form == "tensor" or not same:
            if len(n.inputs) > 1:
                return frame, "fan-out (frame: a join behind a stride, resize or whole-tensor layer)"
            continue
        lag[n.output] = max(lag[i] for i in ins) + own
        visited += 1
    need = max(lag.values()) + 2 * visited + 2
    if need >= frame:
        return frame, "fan-out (frame)"
    return need, f"fan-out (latency difference {max(lag.values())} + {2 * visited + 2})"


def _config_fields(ctx: _Ctx, name: str) -> list[tuple[str, str, Any]]:
    for c in ctx.configs:
        if c["name"] == name:
            return list(c["fields"])
    return []


def _stream_layer(ctx: _Ctx, n: Node, L: dict[str, Any]) -> None:
    """The io=stream fields of layer ``L``: its form (``hls_ops.stream_form``), the pixel geometry of its tensors,
    and for the window and pixel forms a copy of its call fields with a configuration for one output pixel (window)
    or one pixel's channel vector (pixel), declared after the layer's own configuration."""
    g, N = ctx.graph, ctx.names
    form = ctx.forms[n.name]
    L["form"] = form
    L["in_pix"] = [_pix(g, t) for t in n.inputs]
    L["out_pix"] = _pix(g, n.output)
    L["in_pixel_types"] = [_pixel_type(ctx, t) for t in n.inputs]
    L["out_pixel_type"] = _pixel_type(ctx, n.output)
    fields = _config_fields(ctx, L["cfg"])
    if form == "window":
        c, h, w = g.tensor(n.inputs[0]).shape
        f, oh, ow = g.tensor(n.output).shape
        kh, kw, sh, sw, ph, pw = _window_geometry(g, n)
        h_lo, w_lo = min(0, kh - 1 - ph), min(0, kw - 1 - pw)
        h_hi, w_hi = max(h - 1, (oh - 1) * sh - ph + kh - 1), max(w - 1, (ow - 1) * sw - pw + kw - 1)
        lb = [("uint", "n_chan", c), ("uint", "in_h", h), ("uint", "in_w", w), ("uint", "k_h", kh),
              ("uint", "k_w", kw), ("uint", "stride_h", sh), ("uint", "stride_w", sw), ("uint", "pad_h", ph),
              ("uint", "pad_w", pw), ("uint", "out_h", oh), ("uint", "out_w", ow), ("int", "h_lo", h_lo),
              ("int", "h_hi", h_hi), ("int", "w_lo", w_lo), ("int", "w_hi", w_hi),
              ("uint", "scan_w", w_hi - w_lo + 1), ("uint", "lb_rows", max(kh - 1, 1)),
              ("uint", "edge", int(STREAM_WINDOW_PAD[n.op.value] == "edge"))]
        one = {"in_h": kh, "in_w": kw, "out_h": 1, "out_w": 1, "stride_h": 1, "stride_w": 1, "pad_h": 0,
               "pad_w": 0}
        ctx.configs.append({"name": N("lbcfg", n.name), "note": L["note"] + ": line buffers and scan",
                            "fields": lb})
        ctx.configs.append({"name": N("wcfg", n.name), "note": L["note"] + ": one output pixel from its window",
                            "fields": [(k, key, one.get(key, v)) for k, key, v in fields]})
        L["lb_cfg"] = N("lbcfg", n.name)
        L["n_win"] = c * kh * kw
        L["lb_rows"] = max(kh - 1, 1)
        L["scan_w"] = w_hi - w_lo + 1
        L["k_h"], L["k_w"] = kh, kw
        L["one"] = dict(L, cfg=N("wcfg", n.name), in_sizes=[c * kh * kw], out_size=f)
        L["headers"] = tuple(L["headers"]) + (WINDOW_HEADER,)
    elif form == "pixel":
        ch, p = L["out_pix"]
        one = {"n_elem": ch, "n_inner": 1, "n_chan": ch,
               "multiplier_limit": max(1, -(-ch // max(1, L["reuse"])))}
        cfg = L["cfg"]
        if fields and p > 1:
            cfg = N("pcfg", n.name)
            ctx.configs.append({"name": cfg, "note": L["note"] + ": one pixel",
                                "fields": [(k, key, one.get(key, v)) for k, key, v in fields]})
        L["one"] = dict(L, cfg=cfg, in_sizes=[ch] * len(n.inputs), out_size=ch)


# ------------------------------------------------------------------------------------------------ entry point
def write_project(graph: Graph, outdir: Path, *, part: str = "xcvu9p-flga2104-2-e", clock_ns: float = 5.0,
                  reuse_factor: int | Mapping[str, int] = 1, io: str = "parallel", top_name: str | None = None,
                  tb_vectors: int = TB_VECTORS) -> None:
    """Write a Vitis HLS project for ``graph`` into ``outdir`` (created if missing; an existing one must be empty).

    ``reuse_factor`` (an int, or a dict by node name) is how many multiplications share one multiplier in a layer;
    ``io`` is ``"parallel"`` (arrays, fully partitioned) or ``"stream"`` (DATAFLOW over streams of pixels: sliding
    windows with line buffers for convolutions and pools, per-pixel element-wise ops, whole-tensor layers otherwise;
    the ports stay scalar streams in C order).
    """
    from qfx import __version__
    from qfx.ir.interpret import run

    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise BadInputError(f"output {outdir} exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()):
        raise BadInputError(f"output folder {outdir} is not empty")
    if io not in IO_MODES:
        raise BadInputError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
    if not (isinstance(clock_ns, (int, float)) and 0 < float(clock_ns) < 1e6):
        raise BadInputError(f"clock period must be a positive number of ns, got {clock_ns!r}")
    if not part or any(ch.isspace() or ch in "{}[]$\\\";" for ch in str(part)):
        raise BadInputError(f"invalid FPGA part name {part!r}")
    outdir.mkdir(parents=True, exist_ok=True)  # like the RTL backend: created when missing
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
    names = _Names(_RESERVED + (top, f"{top}_stream", f"{top}_axis") + (_STREAM_RESERVED if io == "stream" else ())
                   + _axis_reserved(graph))
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
    if io == "stream":  # only here, so that io=parallel identifiers stay what they were
        for t in graph.tensors:
            names.want("spix", t, f"{t}_pix")
        for n in graph.nodes:
            for kind, suffix in _STREAM_NODE_IDS.items():
                names.want(kind, n.name, n.name + suffix)
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
        live_nodes = _live_nodes(graph)
        live = {n.name for n in live_nodes}
        ctx.forms = {n.name: stream_form(graph, n) for n in live_nodes}
        streams, clones, route = _stream_plan(ctx, live_nodes)
        steps = []
        for t in graph.inputs:
            c, p = _pix(graph, t)
            steps.append({"kind": "in", "port": names("tensor", t), "stream": route[t], "type": names("type", t),
                          "c": c, "p": p})
            steps += [{"kind": "clone", **c_} for c_ in clones.get(t, [])]
        for L, n in zip(ctx.layers, graph.nodes):
            if n.name not in live:
                continue
            _stream_layer(ctx, n, L)
            L["in_streams"] = [route[(n.name, k)] for k in range(len(n.inputs))]
            L["out_stream"] = route[n.output]
            L["stream_fn"] = names("stream_fn", n.name)
            steps.append({"kind": "layer", "layer": L})
            steps += [{"kind": "clone", **c_} for c_ in clones.get(n.output, [])]
        for t in graph.outputs:
            c, p = _pix(graph, t)
            steps.append({"kind": "out", "port": names("tensor", t), "stream": names("spix", t),
                          "type": names("type", t), "c": c, "p": p})
    axis = _axis_context(graph, top, inputs, outputs)
    env = template_env("hls")
    _check_calls(env, ctx.layers)
    headers = project_headers(ctx.layers, io)
    model_note = comment_text(graph.name)
    tvec = max(1, int(tb_vectors))
    from qfx.sim.csim import make_inputs

    xd = make_inputs(graph, tvec, seed=0)  # several inputs: side by side in graph order, as the testbench reads them
    x = np.concatenate([xd[t].reshape(tvec, -1) for t in graph.inputs], axis=1)
    common = {
        "version": __version__, "model": model_note, "top": top, "io": io, "part": part,
        "clock_ns": f"{float(clock_ns):g}", "types": ctx.types, "configs": ctx.configs, "consts": ctx.consts,
        "scalars": ctx.scalars, "layers": ctx.layers, "inputs": inputs, "outputs": outputs, "buffers": buffers,
        "streams": streams, "steps": steps, "headers": headers, "stream_depth": STREAM_DEPTH,
        "stream_layers": [s["layer"] for s in steps if s["kind"] == "layer"],
        "includes": [h for h in headers if h not in BASE_HEADERS],
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
    for h in headers:  # copied with the same header line as every generated file
        (fw / h).write_text(f"// Copied by qfx {__version__} for model '{model_note}'.\n" + (src / h).read_text())
    graph.replace(meta=dict(graph.meta) | {"exported_by": f"qfx {__version__} HLS backend"}).save(outdir / "model.json")
    if x is not None:
        from qfx.sim.build import write_codes

        y = run(graph, xd if len(xd) > 1 else xd[graph.inputs[0]])
        ys = np.concatenate([np.asarray(y[o] if isinstance(y, dict) else y).reshape(tvec, -1)
                             for o in graph.outputs], axis=1)
        write_codes(tb / "tb_input_codes.bin", x.reshape(tvec, -1))
        write_codes(tb / "tb_expected_codes.bin", ys)
