"""Vitis HLS C++ backend: renders a ``qfx.ir.Graph`` into a self-contained HLS project folder.

Python decides *what* goes into the project (types, exact constant literals, layer configurations, K-hot shift/sign
tables, identifiers); the Jinja2 templates in ``templates/hls/`` decide the layout; the hand-written kernels in
``hls/qfx_*.h`` hold the loops. Every layer computes exactly what ``qfx.fixed.ops`` computes: the exact result in a
lossless intermediate type, then one cast to the output type.

This module does what every layer shares (identifiers, types of tensors, io plumbing, files); what is particular to
an op lives in its emitter in ``qfx.backends.hls_ops.HLS_EMITTERS`` and its ``call_<name>`` macro in
``templates/hls/macros.j2``. A project copies only the support headers its layers use.

Project layout::

    firmware/<top>.h, <top>.cpp     top function (io_parallel arrays or io_stream hls::stream + DATAFLOW)
    firmware/<top>_axis.cpp         AXI4-Stream top around it (one packed vector per beat, ap_ctrl_none) for
                                    ``qfx cosim --hls-rtl`` and IP use; single-input, single-output graphs only
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
from qfx.backends.hls_ops import HLS_EMITTERS, exact_literal, khot_term_format
from qfx.backends.naming import comment_text, is_identifier, sanitize_one, unique_identifiers
from qfx.backends.templating import template_env
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph, Node, op_def
from qfx.ops import emitter_for

__all__ = ["write_project", "exact_literal", "khot_term_format", "IO_MODES", "BASE_HEADERS", "STREAM_HEADER",
           "TB_VECTORS", "AxisLayout", "axis_layout", "AXIS_MAX_BITS", "HLS_EMITTERS", "project_headers"]

IO_MODES = ("parallel", "stream")
#: support headers every project has: ap_types includes and pragma macros (parameters.h), testbench code I/O
BASE_HEADERS = ("qfx_types.h", "qfx_io.h")
#: support header of io=stream projects (stream <-> array plumbing)
STREAM_HEADER = "qfx_stream.h"
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
def axis_layout(graph: Graph) -> AxisLayout:
    """The AXI4-Stream top's word layout for ``graph``; UnsupportedError (one line, the reason) if it has none."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedError(f"the AXI-Stream HLS top needs exactly one input and one output; graph "
                               f"{graph.name!r} has {len(graph.inputs)} and {len(graph.outputs)}")
    i, o = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    lay = AxisLayout(i.size, i.fmt.width, i.fmt.signed, pad8(i.size * i.fmt.width),
                     o.size, o.fmt.width, o.fmt.signed, pad8(o.size * o.fmt.width))
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


def _stream_plan(ctx: _Ctx, nodes: list[Node]) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]],
                                                        dict[Any, str]]:
    """Streams for io=stream: every tensor gets one stream per reader among ``nodes`` (the live ones); fan-out goes
    through clone chains.

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
    """Write a Vitis HLS project for ``graph`` into ``outdir`` (created if missing; an existing one must be empty).

    ``reuse_factor`` (an int, or a dict by node name) is how many multiplications share one multiplier in a layer;
    ``io`` is ``"parallel"`` (arrays, fully partitioned) or ``"stream"`` (``hls::stream`` + DATAFLOW).
    """
    from qfx import __version__
    from qfx.ir.interpret import random_inputs, run

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
        live = {n.name for n in _live_nodes(graph)}
        streams, clones, route = _stream_plan(ctx, [n for n in graph.nodes if n.name in live])
        steps = [{"kind": "clone", **c} for t in graph.inputs for c in clones.get(t, [])]
        for L, n in zip(ctx.layers, graph.nodes):
            if n.name not in live:
                continue
            L["in_streams"] = [route[(n.name, k)] for k in range(len(n.inputs))]
            L["out_stream"] = route[n.output]
            L["stream_fn"] = names("stream_fn", n.name)
            steps.append({"kind": "layer", "layer": L})
            steps += [{"kind": "clone", **c} for c in clones.get(n.output, [])]
    try:
        axis: dict[str, Any] | None = {"name": f"{top}_axis", **vars(axis_layout(graph))}
    except UnsupportedError:
        axis = None  # no AXI-Stream top; qfx cosim --hls-rtl says why
    env = template_env("hls")
    _check_calls(env, ctx.layers)
    headers = project_headers(ctx.layers, io)
    model_note = comment_text(graph.name)
    tvec = max(1, int(tb_vectors))
    x = random_inputs(graph, tvec, seed=0) if len(graph.inputs) == 1 else None
    common = {
        "version": __version__, "model": model_note, "top": top, "io": io, "part": part,
        "clock_ns": f"{float(clock_ns):g}", "types": ctx.types, "configs": ctx.configs, "consts": ctx.consts,
        "scalars": ctx.scalars, "layers": ctx.layers, "inputs": inputs, "outputs": outputs, "buffers": buffers,
        "streams": streams, "steps": steps, "headers": headers,
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

        y = run(graph, x)
        ys = np.concatenate([np.asarray(y[o] if isinstance(y, dict) else y).reshape(tvec, -1)
                             for o in graph.outputs], axis=1)
        write_codes(tb / "tb_input_codes.bin", x.reshape(tvec, -1))
        write_codes(tb / "tb_expected_codes.bin", ys)
