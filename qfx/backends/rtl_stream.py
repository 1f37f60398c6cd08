"""Pixel-streaming RTL (``io="stream"``): convolutional models move one pixel per AXI4-Stream beat.

Why: the whole-vector design (``qfx.backends.rtl``) moves a whole tensor per beat and keeps every frame in registers,
so its flip-flops grow with the image. Here a tensor of shape (C, H, W) is a stream of H*W beats of C codes in raster
order, and each layer keeps only what its window needs:

* Conv2d and pooling: a line buffer of the last (KH-1)*W + KW-1 input pixels (a register shift chain; FPGA tools may
  map its runs to shift-register LUTs) and fixed window taps into it; padding comes from masking taps with the pad
  code (no padded frame, no padding cycles); one output pixel per emitting clock from the same per-pixel adder graph
  the folded vector design uses (``design_conv_pixel``); element-wise ops after it are fused per pixel.
* element-wise chains without a window are 1x1 windows; a two-operand op (residual add) joins two streams of one
  frame, the branch with fewer pixels in flight through a FIFO sized from the difference (a memory with
  asynchronous read: distributed RAM).
* the first node that cannot stream (flatten + dense, ...) ends the streaming part: a collector gathers that frame
  into one vector (the dense input register, unavoidable) and the rest is today's whole-vector design
  (``rtl.build_project`` of the tail graph) behind it. A model that streams to its end streams its output too.

Every stage has valid/ready back-pressure and a registered output; a fork waits for all its readers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qfx.backends.adder_graph import CSE_BLOCK
from qfx.backends.axis import pad8
from qfx.backends.naming import sanitize_one
from qfx.backends.rtl_design import (BINARY_EMITTERS, LayerDesign, Sig, _conv_window, _elementwise,
                                     design_conv_pixel)
from qfx.backends.templating import template_env
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import FxFormat
from qfx.fixed.ops import conv_out_size
from qfx.ir.graph import Graph, Node, op_def
from qfx.ops import Categories, emitter_for

if TYPE_CHECKING:  # rtl imports this module at call time; no import cycle at run time
    from qfx.backends.rtl import RtlProject

__all__ = ["IO_MODES", "build_stream_project", "stream_plan", "POOL_PIXEL_EMITTERS"]

#: ``vector``: one whole tensor per AXI4-Stream beat (``qfx.backends.rtl``); ``stream``: one pixel per beat
IO_MODES = ("vector", "stream")


# ----------------------------------------------------------------------------------------- per-pixel pool kernels
def _pix_maxpool(d: LayerDesign, win: list[Sig], c: int, taps: int, fx: FxFormat, of: FxFormat, n: Node) -> list[str]:
    """Per channel a balanced comparator tree over the window (padding taps carry the minimum code: never chosen
    over an in-frame element, and every window holds one)."""
    outs = []
    for ci in range(c):
        w = win[ci * taps:(ci + 1) * taps]
        while len(w) > 1:
            w = [d.maximum(w[i], w[i + 1]) if i + 1 < len(w) else w[i] for i in range(0, len(w), 2)]
        outs.append(d.requant(w[0], fx.frac_bits - of.frac_bits, of))
    return outs


def _pix_avgpool(d: LayerDesign, win: list[Sig], c: int, taps: int, fx: FxFormat, of: FxFormat, n: Node) -> list[str]:
    """Per channel the window sum (padding taps are zero: they add nothing) times ``recip`` by CSD shift-adds."""
    sums: list[Sig | None] = []
    for ci in range(c):
        sm = d.dot(win[ci * taps:(ci + 1) * taps], np.ones((1, taps), dtype=np.int64), "cse")[0]
        sums.append(None if sm is None else d.lin([sm]))
    return _avg_of_sums(d, sums, fx, of, n)


def _avg_of_sums(d: LayerDesign, sums: list[Sig | None], fx: FxFormat, of: FxFormat, n: Node) -> list[str]:
    """Each channel's window sum (None: all zero) times the pool's ``recip`` by CSD shift-adds, requantized."""
    r = n.consts["recip"]
    rcode = int(r.codes.reshape(-1)[0])
    k = fx.frac_bits + r.fmt.frac_bits - of.frac_bits
    outs = []
    for s in sums:
        if s is None:
            outs.append(d.requant(d.const(0), k, of))
            continue
        terms = [(s, kk, sg < 0) for sg, kk in csd_digits(rcode)]
        gz = min([kk for _, kk, _ in terms], default=0)
        outs.append(d.requant(d.lin([(t, kk - gz, ng) for t, kk, ng in terms]), k - gz, of))
    return outs


def _pad_zero(fx: FxFormat) -> int:
    return 0


def _pad_min(fx: FxFormat) -> int:
    return fx.min_code


#: pool op -> (per-pixel kernel emitter, pad code of the input format); every ``Categories.POOL`` op needs one
POOL_PIXEL_EMITTERS: dict[str, Any] = {"maxpool2d": (_pix_maxpool, _pad_min), "avgpool2d": (_pix_avgpool, _pad_zero)}


# ------------------------------------------------------------------------------------------------------ planning
@dataclass
class StreamStage:
    """One streaming stage: a window (``kind="window"``: conv, pool or element-wise chain), a whole-frame pool
    (``"frame"``: a running sum or maximum) or a two-stream join."""

    kind: str
    node: Node
    chain: tuple[Node, ...]
    inputs: tuple[str, ...]
    output: str


@dataclass
class StreamPlan:
    """Stages of the streaming part, the tensor the whole-vector tail reads (None: the output streams) and the
    tail's nodes."""

    stages: list[StreamStage]
    boundary: str | None
    tail: list[Node] = field(default_factory=list)


def _is3(g: Graph, t: str) -> bool:
    return len(g.tensor(t).shape) == 3


def stream_plan(g: Graph) -> StreamPlan:
    """Split ``g`` into a streaming prefix and a whole-vector tail (see the module docstring)."""
    readers: dict[str, list[Node]] = {}
    for n in g.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    if not _is3(g, g.inputs[0]):
        return StreamPlan([], g.inputs[0], list(g.nodes))
    stream = {g.inputs[0]}
    fused: set[str] = set()
    stages: list[StreamStage] = []
    nodes = list(g.nodes)
    stop = len(nodes)
    for i, n in enumerate(nodes):
        if n.name in fused:
            continue
        md = op_def(n.op)
        if not all(t in stream for t in n.inputs) or not _is3(g, n.output):
            stop = i
            break
        shape_in = g.tensor(n.inputs[0]).shape
        pool = md.is_(Categories.POOL) and getattr(n.op, "value", n.op) in POOL_PIXEL_EMITTERS
        if pool and len(n.inputs) == 1 and _whole_frame(g, n):
            kind = "frame"
        elif (md.is_(Categories.CONV) or pool) and len(n.inputs) == 1:
            if not _anchors_ok(shape_in[1], shape_in[2], _window_geometry(g, n)):
                stop = i  # padding >= kernel: the whole-vector design computes it and what follows
                break
            kind = "window"
        elif (md.is_(Categories.BINARY) and len(n.inputs) == 2 and n.inputs[0] != n.inputs[1]
              and all(g.tensor(t).shape == g.tensor(n.output).shape for t in n.inputs)):
            kind = "join"
        elif md.is_(Categories.ELEMENTWISE) and len(n.inputs) == 1 and g.tensor(n.output).shape == shape_in:
            kind = "window"
        else:
            stop = i
            break
        chain: list[Node] = []
        t = n.output
        while t not in g.outputs and len(readers.get(t, [])) == 1:
            m = readers[t][0]
            if (not op_def(m.op).is_(Categories.ELEMENTWISE) or m.inputs != (t,)
                    or g.tensor(m.output).shape != g.tensor(t).shape):
                break
            chain.append(m)
            fused.add(m.name)
            t = m.output
        stages.append(StreamStage(kind, n, tuple(chain), tuple(n.inputs), t))
        stream.add(t)
    tail = [n for n in nodes[stop:] if n.name not in fused]
    if not tail:
        return StreamPlan(stages, None, [])
    while True:  # the tail must read one streamed tensor: give it stages back until it does
        reads = {t for n in tail for t in n.inputs if t in stream}
        if len(reads) == 1 or not stages:
            break
        st = stages.pop()
        stream.discard(st.output)
        mine = {st.node.name, *(m.name for m in st.chain)}
        tail = [n for n in nodes if n.name in mine or n in tail]
    if not stages:
        return StreamPlan([], g.inputs[0], list(g.nodes))
    return StreamPlan(stages, reads.pop(), tail)


# -------------------------------------------------------------------------------------------- window geometry
def _window_geometry(g: Graph, n: Node) -> tuple[int, int, int, int, int, int]:
    """(kh, kw, sh, sw, ph, pw) of a conv or pool node; (1, 1, 1, 1, 0, 0) for anything else."""
    md = op_def(n.op)
    if md.is_(Categories.CONV):
        kh, kw = n.consts["weight"].codes.shape[2:]
        sh, sw, ph, pw, _, _ = _conv_window(n, g.tensor(n.inputs[0]), g.tensor(n.output), kh, kw)
        return int(kh), int(kw), sh, sw, ph, pw
    if md.is_(Categories.POOL):
        kh, kw = md.attr(n, "kernel")
        sh, sw = md.attr(n, "stride")
        ph, pw = md.attr(n, "padding")
        return int(kh), int(kw), int(sh), int(sw), int(ph), int(pw)
    return 1, 1, 1, 1, 0, 0


def _whole_frame(g: Graph, n: Node) -> bool:
    """A pool whose one window is the whole unpadded frame (a global average or max pool): a running reduction
    stage (``stream_frame.sv.j2``) instead of a line buffer that would hold the frame."""
    kh, kw, _, _, ph, pw = _window_geometry(g, n)
    _, h, w = g.tensor(n.inputs[0]).shape
    return (kh, kw, ph, pw) == (h, w, 0, 0) and tuple(g.tensor(n.output).shape[1:]) == (1, 1)


def _frame_acc_format(op: str, fx: FxFormat, npx: int) -> FxFormat:
    """The running reduction's per-channel format: the exact sum of ``npx`` codes, or the input's own (max)."""
    if op == "maxpool2d":
        return fx
    return FxFormat.for_code_range(fx.min_code * npx, fx.max_code * npx, fx.frac_bits, signed=fx.signed)


def _bits(v: int) -> int:
    return max(1, int(v).bit_length())


def _anchor_plan(h: int, wd: int, geo: tuple[int, ...]) -> tuple[int, int, int, int, int, list[int]]:
    """(HO, WO, e, slots per row, slot of the frame's last pixel, anchor slot per output in raster order).

    Output (oy, ox) is emitted in the slot of its window's bottom-right input pixel (its anchor), so every tap sits
    at a fixed distance from the arriving pixel. Rows take W slots, plus e empty ones when a row's last output would
    share its anchor with the next row's first (an even kernel padded by half of it at stride 1)."""
    kh, kw, sh, sw, ph, pw = geo
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(wd, kw, sw, pw)
    e = max(0, (wo - 1) * sw - sh * wd + 1)
    ws = wd + e
    anchors = [(oy * sh - ph + kh - 1) * ws + ox * sw - pw + kw - 1 for oy in range(ho) for ox in range(wo)]
    return ho, wo, e, ws, (h - 1) * ws + wd - 1, anchors


def _anchors_ok(h: int, wd: int, geo: tuple[int, ...]) -> bool:
    """False when an output has no input pixel at all (padding >= kernel): nothing to emit it with."""
    _, _, _, _, last, anchors = _anchor_plan(h, wd, geo)
    return anchors[0] >= 0 and anchors[-1] - last <= last and all(b > a for a, b in zip(anchors, anchors[1:]))


def _window_params(name: str, kernel: str, comment: str, c: int, h: int, wd: int, ew: int, geo: tuple[int, ...],
                   ob: int, pad_code: int) -> dict[str, Any]:
    """Everything ``stream_window.sv.j2`` needs; UnsupportedError when padding reaches a whole kernel."""
    kh, kw, sh, sw, ph, pw = geo
    ho, wo, e, ws, last_real, anchors = _anchor_plan(h, wd, geo)
    tail = max(0, anchors[-1] - last_real)
    hold = max(0, tail - anchors[0])  # slots between frames when the next frame's first anchor would come too early
    if not _anchors_ok(h, wd, geo):
        raise UnsupportedError(f"{comment}: kernel {kh}x{kw}, stride {sh}x{sw}, padding {ph}x{pw} on a {h}x{wd} "
                               "frame has outputs without input pixels; io='stream' needs padding < kernel")
    lb = (kh - 1) * ws + kw - 1
    ib = c * ew
    yw, xw = _bits(ho - 1), _bits(wo - 1)
    taps = []
    for ky in range(kh):
        lo_y, hi_y = -((ky - ph) // sh), (h - 1 + ph - ky) // sh  # ceil((ph-ky)/sh), floor((h-1+ph-ky)/sh)
        for kx in range(kw):
            lo_x, hi_x = -((kx - pw) // sw), (wd - 1 + pw - kx) // sw
            if lo_y > hi_y or lo_x > hi_x or lo_y > ho - 1 or lo_x > wo - 1 or hi_y < 0 or hi_x < 0:
                cond = "1'b0"
            else:
                conds = ([f"(oy >= {yw}'d{lo_y})"] if lo_y > 0 else []) + \
                        ([f"(oy <= {yw}'d{hi_y})"] if hi_y < ho - 1 else []) + \
                        ([f"(ox >= {xw}'d{lo_x})"] if lo_x > 0 else []) + \
                        ([f"(ox <= {xw}'d{hi_x})"] if hi_x < wo - 1 else [])
                cond = " && ".join(conds) if conds else "1'b1"
            off = (kh - 1 - ky) * ws + (kw - 1 - kx)
            src = "pix" if off == 0 else f"lb[{off * ib - 1}:{(off - 1) * ib}]"
            taps.append({"ky": ky, "kx": kx, "cond": cond, "src": src})
    parts = [f"tap_{ky}_{kx}[{ci * ew + ew - 1}:{ci * ew}]"
             for ci in range(c) for ky in range(kh) for kx in range(kw)]
    mask = (1 << ew) - 1
    pad = sum((pad_code & mask) << (ci * ew) for ci in range(c))
    return {"module": name, "kernel": kernel, "comment": comment, "c": c, "ew": ew, "h": h, "w": wd, "ho": ho,
            "wo": wo, "kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw, "ib": ib, "ob": ob, "lb": lb,
            "tail": tail, "hold": hold, "a0": anchors[0], "row_step": sh * ws, "e": e, "ws": ws, "cw": _bits(ws - 1),
            "last_real": last_real, "slots": last_real + 1 + hold, "lw": _bits(last_real + tail + sh * ws + sw) + 1,
            "yw": yw, "xw": xw, "taps": taps, "win_parts": list(reversed(parts)), "win_bits": len(parts) * ew,
            "pad": f"{ib}'h{pad:x}"}


# ---------------------------------------------------------------------------------------------------- kernels
def _stage_kernel(g: Graph, st: StreamStage, module: str, adder: str, cse_block: int | None
                  ) -> tuple[LayerDesign, int]:
    """The combinational per-pixel kernel of a stage and the pad code of its window."""
    n = st.node
    md = op_def(n.op)
    if st.kind == "window" and md.is_(Categories.CONV):
        return design_conv_pixel(g, n, module, adder, st.chain, cse_block).kernel, 0
    spec = g.tensor(n.inputs[0])
    c, fx = spec.shape[0], spec.fmt
    of = g.tensor(n.output).fmt
    k = LayerDesign(f"{module}_pix", f"per-pixel kernel of {n.op.value} {n.name}", cse_block=cse_block)
    pad = 0
    if st.kind == "join":
        fa, fb = (g.tensor(t).fmt for t in n.inputs)
        xa, xb = k.input_port("a", c, fa), k.input_port("b", c, fb)
        outs = emitter_for(BINARY_EMITTERS, n, "RTL stream")(k, xa, fa, xb, fb, of)
    elif st.kind == "frame":  # the running sum / maximum arrives complete; the pool's own arithmetic follows
        _, h, w = spec.shape
        fa = _frame_acc_format(n.op.value, fx, h * w)
        acc = k.input_port("acc", c, fa)
        if n.op.value == "maxpool2d":
            outs = [k.requant(a, fx.frac_bits - of.frac_bits, of) for a in acc]
        else:
            outs = _avg_of_sums(k, acc, fx, of, n)
    elif md.is_(Categories.POOL):
        kern, padf = emitter_for(POOL_PIXEL_EMITTERS, n, "RTL stream")
        kh, kw = _window_geometry(g, n)[:2]
        win = k.input_port("win", c * kh * kw, fx)
        outs = kern(k, win, c, kh * kw, fx, of, n)
        pad = padf(fx)
    else:
        outs = _elementwise(k, n, k.input_port("win", c, fx), fx, of, list(range(c)))
    for m in st.chain:
        mf = g.tensor(m.output).fmt
        outs = _elementwise(k, m, k.chain(outs, of), of, mf, list(range(c)))
        of = mf
    k.finish(outs, of)
    return k, pad


# --------------------------------------------------------------------------------------------------- assembly
def build_stream_project(graph: Graph, *, register_stages: bool | int = True, top_name: str | None = None,
                         adder: str = "cse", conv_style: str = "pixel", cse_block: int | None = CSE_BLOCK,
                         **vector_options: Any) -> "RtlProject":
    """Render the pixel-streaming design of ``graph`` (an ``rtl.RtlProject``). A graph whose input is not an image
    has nothing to stream: it gets the whole-vector design. ``vector_options`` go to the whole-vector tail."""
    from qfx.backends import rtl as R  # rtl dispatches here: import at call time

    graph.validate()
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedError(f"io='stream' needs exactly one input and one output; graph {graph.name!r} has "
                               f"{len(graph.inputs)} and {len(graph.outputs)} (io='vector' takes several)")
    plan = stream_plan(graph)
    vec_kw = dict(register_stages=register_stages, adder=adder, conv_style=conv_style, cse_block=cse_block,
                  **vector_options)
    if not plan.stages:
        proj = R.build_project(graph, top_name=top_name, **vec_kw)
        proj.info["io"] = "vector"
        return proj
    top = sanitize_one(top_name or graph.name or "qfx_top")
    if top_name is not None and top != top_name:
        raise BadInputError(f"top_name {top_name!r} is not a valid SystemVerilog identifier (try {top!r})")
    env = template_env("rtl")
    header = f"Generated by qfx {R._version()} from model {sanitize_one(graph.name)}; do not edit."
    requant = f"{top}_requant"
    files: dict[str, str] = {f"{requant}.sv": R.render_requant(requant, header)}
    layer_tpl = env.get_template("layer.sv.j2")
    ids = {t: i for i, t in enumerate(graph.tensors)}
    sigs: list[dict[str, Any]] = []
    assigns: list[dict[str, str]] = []
    insts: list[dict[str, Any]] = []
    consumers: dict[str, list[tuple[str, str]]] = {}  # stream tensor -> (valid wire, ready wire) per reader
    ancestors: dict[str, set[str]] = {graph.inputs[0]: {graph.inputs[0]}}  # stream tensor -> itself and its sources
    n_readers: dict[str, int] = {}  # stream tensor -> its readers (stages, the collector, the output port)
    for st in plan.stages:
        for t in st.inputs:
            n_readers[t] = n_readers.get(t, 0) + 1
    last = plan.boundary or graph.outputs[0]
    n_readers[last] = n_readers.get(last, 0) + 1
    lag: dict[str, int] = {}
    lat: dict[str, int] = {}
    pix_bits: dict[str, int] = {}
    layers: list[dict[str, Any]] = []
    adders = mults = 0
    ii = 1

    def stream_sig(t: str) -> str:
        return f"t{ids[t]}"

    def new_stream(t: str, bits: int) -> str:
        p = stream_sig(t)
        sigs.extend([{"name": f"{p}_data", "bits": bits}, {"name": f"{p}_valid", "bits": 1},
                     {"name": f"{p}_ready", "bits": 1}])
        pix_bits[t] = bits
        consumers[t] = []
        return p

    def read(t: str, inst: str, port: str) -> tuple[str, str]:
        v, r = f"{inst}_{port}_valid", f"{inst}_{port}_ready"
        sigs.extend([{"name": v, "bits": 1}, {"name": r, "bits": 1}])
        consumers[t].append((v, r))
        return v, r

    def one_input_stage(mod: str, comment: str, t_in: str, outs: list[dict[str, str]]) -> dict[str, Any]:
        """The instance of a stage reading stream ``t_in`` on its s_* port (a window or a whole-frame pool)."""
        v, r = read(t_in, mod, "s")
        return {"module": mod, "name": mod, "comment": comment,
                "conns": clk + [{"port": "s_data", "sig": f"{stream_sig(t_in)}_data"}, {"port": "s_valid", "sig": v},
                                {"port": "s_ready", "sig": r}] + outs}

    inp = graph.tensor(graph.inputs[0])
    c0, h0, w0 = inp.shape
    in_beat_bits = c0 * inp.fmt.width
    p_in = new_stream(graph.inputs[0], in_beat_bits)
    assigns += [{"lhs": f"{p_in}_data", "rhs": f"s_axis_tdata[{in_beat_bits - 1}:0]"},
                {"lhs": f"{p_in}_valid", "rhs": "s_axis_tvalid"}, {"lhs": "s_axis_tready", "rhs": f"{p_in}_ready"}]
    lag[graph.inputs[0]] = lat[graph.inputs[0]] = 0
    clk = [{"port": "ap_clk", "sig": "ap_clk"}, {"port": "ap_rst_n", "sig": "ap_rst_n"}]

    for si, st in enumerate(plan.stages):
        n = st.node
        mod = f"{top}_s{si}"
        comment = " + ".join(f"{m.op.value} {sanitize_one(m.name)}" for m in (n, *st.chain))
        kern, pad_code = _stage_kernel(graph, st, mod, adder, cse_block)
        files[f"{kern.module}.sv"] = layer_tpl.render(d=kern, header=header, requant=requant)
        adders += kern.n_adders
        mults += kern.n_mults
        out = graph.tensor(st.output)
        ob = out.shape[0] * out.fmt.width
        p_out = new_stream(st.output, ob)
        ancestors[st.output] = {st.output}.union(*(ancestors[t] for t in st.inputs))
        outs = [{"port": "m_data", "sig": f"{p_out}_data"}, {"port": "m_valid", "sig": f"{p_out}_valid"},
                {"port": "m_ready", "sig": f"{p_out}_ready"}]
        spec = graph.tensor(n.inputs[0])
        c, h, wd = spec.shape
        ii = max(ii, h * wd)
        row: dict[str, Any] = {"node": "+".join(m.name for m in (n, *st.chain)),
                               "op": "+".join(m.op.value for m in (n, *st.chain)), "module": mod,
                               "adders": kern.n_adders, "nodes": [m.name for m in (n, *st.chain)]}
        if st.kind == "frame":
            fa = _frame_acc_format(n.op.value, spec.fmt, h * wd)
            f = {"module": mod, "kernel": kern.module, "comment": f"{comment} -> tensor t{ids[st.output]}",
                 "kind": "max" if n.op.value == "maxpool2d" else "avg", "c": c, "ew": spec.fmt.width,
                 "ib": c * spec.fmt.width, "ob": ob, "n": h * wd, "cw": _bits(h * wd - 1), "signed": spec.fmt.signed,
                 "aw": fa.width}
            files[f"{mod}.sv"] = env.get_template("stream_frame.sv.j2").render(f=f, header=header)
            t_in = n.inputs[0]
            insts.append(one_input_stage(mod, f["comment"], t_in, outs))
            lag[st.output] = lag[t_in] + h * wd + 1
            lat[st.output] = lat[t_in] + 1
            row.update({"kind": "frame", "kernel": [h, wd], "accumulator_bits": c * fa.width})
        elif st.kind == "window":
            geo = _window_geometry(graph, n)
            w = _window_params(mod, kern.module, f"{comment} -> tensor t{ids[st.output]}", c, h, wd, spec.fmt.width,
                               geo, ob, pad_code)
            files[f"{mod}.sv"] = env.get_template("stream_window.sv.j2").render(w=w, header=header)
            ii = max(ii, w["slots"])
            t_in = n.inputs[0]
            insts.append(one_input_stage(mod, w["comment"], t_in, outs))
            lag[st.output] = lag[t_in] + w["lb"] + 2
            lat[st.output] = lat[t_in] + w["tail"] + 1
            row.update({"kind": "window", "kernel": [w["kh"], w["kw"]], "line_buffer_pixels": w["lb"],
                        "line_buffer_bits": w["lb"] * w["ib"]})
        else:
            a, b = n.inputs
            lo, hi = (a, b) if lag[a] <= lag[b] else (b, a)
            # pixels the fork before both branches can push ahead of the join: at most what the longer branch holds
            # after the fork (lag counts pixels in flight from the input, an upper bound per stage)
            fork = max(lag[t] for t in ancestors[a] & ancestors[b])
            depth = lag[hi] - fork + 2
            src: dict[str, tuple[str, str, str]] = {}
            # the long branch goes straight in unless its tensor has other readers: then a 2-deep FIFO keeps the
            # join's ready (which depends on both valids) out of the fork's valid logic (no combinational loop)
            for t, dep, fm in ((lo, depth, f"{mod}_fifo"), (hi, 2 if n_readers[hi] > 1 else 0, f"{mod}_fifo_h")):
                if not dep:
                    vh, rh = read(t, mod, "h")
                    src[t] = (f"{stream_sig(t)}_data", vh, rh)
                    continue
                fb = pix_bits[t]
                f = {"module": fm, "comment": f"branch of {comment}: tensor t{ids[t]}", "depth": dep,
                     "bits": fb, "aw": _bits(dep - 1), "cw": _bits(dep)}
                files[f"{fm}.sv"] = env.get_template("stream_fifo.sv.j2").render(f=f, header=header)
                v, r = read(t, fm, "s")
                sigs.extend([{"name": f"{fm}_data", "bits": fb}, {"name": f"{fm}_valid", "bits": 1},
                             {"name": f"{fm}_ready", "bits": 1}])
                insts.append({"module": fm, "name": fm, "comment": f["comment"],
                              "conns": clk + [{"port": "s_data", "sig": f"{stream_sig(t)}_data"},
                                              {"port": "s_valid", "sig": v}, {"port": "s_ready", "sig": r},
                                              {"port": "m_data", "sig": f"{fm}_data"},
                                              {"port": "m_valid", "sig": f"{fm}_valid"},
                                              {"port": "m_ready", "sig": f"{fm}_ready"}]})
                src[t] = (f"{fm}_data", f"{fm}_valid", f"{fm}_ready")
                layers.append({"node": f"fifo:{t}", "op": "fifo", "module": fm, "adders": 0, "kind": "fifo",
                               "fifo_depth": dep, "fifo_bits": dep * fb, "nodes": []})
            j = {"module": mod, "kernel": kern.module, "comment": f"{comment} -> tensor t{ids[st.output]}",
                 "ab": pix_bits[a], "bb": pix_bits[b], "ob": ob}
            files[f"{mod}.sv"] = env.get_template("stream_join.sv.j2").render(j=j, header=header)
            conns = list(clk)
            for port, t in (("a", a), ("b", b)):
                d_, v_, r_ = src[t]
                conns += [{"port": f"{port}_data", "sig": d_}, {"port": f"{port}_valid", "sig": v_},
                          {"port": f"{port}_ready", "sig": r_}]
            insts.append({"module": mod, "name": mod, "comment": j["comment"], "conns": conns + outs})
            lag[st.output] = lag[hi] + 2
            lat[st.output] = max(lat[lo] + 1, lat[hi] + (1 if n_readers[hi] > 1 else 0)) + 1
            row.update({"kind": "join", "fifo_depth": depth})
        layers.append(row)

    info_ports: dict[str, Any] = {}
    if plan.boundary is None:
        out_t = graph.outputs[0]
        os_ = graph.tensor(out_t)
        oc, oh, ow_ = os_.shape
        out_beat_bits = oc * os_.fmt.width
        out_tw = pad8(out_beat_bits)
        v, r = read(out_t, "m_axis", "t")
        assigns += [{"lhs": "m_axis_tvalid", "rhs": v}, {"lhs": r, "rhs": "m_axis_tready"},
                    {"lhs": "m_axis_tdata", "rhs": (f"{{{out_tw - out_beat_bits}'d0, {stream_sig(out_t)}_data}}"
                                                    if out_tw > out_beat_bits else f"{stream_sig(out_t)}_data")}]
        out_beats, out_beat_count = oh * ow_, oc
        latency = lat[out_t] + 1
        n_tail = 0
        info_ports["out_ports"] = [{"tensor": out_t, "prefix": "m_axis", "count": os_.size, "ew": os_.fmt.width,
                                    "signed": os_.fmt.signed, "tw": out_tw, "beats": out_beats, "order": "pixel",
                                    "shape": list(os_.shape), "tlast": True}]
    else:
        bt = plan.boundary
        bs = graph.tensor(bt)
        bc, bh, bw = bs.shape
        npx, ew = bh * bw, bs.fmt.width
        cm = f"{top}_collect"
        parts = [f"vec[{(p * bc + ci) * ew + ew - 1}:{(p * bc + ci) * ew}]" for ci in range(bc) for p in range(npx)]
        k = {"module": cm, "comment": f"frame collector of tensor t{ids[bt]} for the whole-vector layers after it",
             "n": npx, "pb": bc * ew, "vb": bc * npx * ew, "cw": _bits(npx - 1), "parts": list(reversed(parts))}
        files[f"{cm}.sv"] = env.get_template("stream_collect.sv.j2").render(k=k, header=header)
        v, r = read(bt, cm, "s")
        sigs.extend([{"name": f"{cm}_data", "bits": k["vb"]}, {"name": f"{cm}_valid", "bits": 1},
                     {"name": f"{cm}_ready", "bits": 1}])
        insts.append({"module": cm, "name": cm, "comment": k["comment"],
                      "conns": clk + [{"port": "s_data", "sig": f"{stream_sig(bt)}_data"},
                                      {"port": "s_valid", "sig": v}, {"port": "s_ready", "sig": r},
                                      {"port": "m_data", "sig": f"{cm}_data"},
                                      {"port": "m_valid", "sig": f"{cm}_valid"},
                                      {"port": "m_ready", "sig": f"{cm}_ready"}]})
        ii = max(ii, npx)
        tail_g = Graph(f"{graph.name}_tail", (bt,), graph.outputs, dict(graph.tensors), tuple(plan.tail),
                       dict(graph.meta))
        tp = R.build_project(tail_g, top_name=f"{top}_tail", **vec_kw)
        # one file for the whole-vector part (its top, then its layers), so that it synthesizes on its own
        # (``qfx report -j``); it uses the stream's requantizer module (the same template)
        tail_rq = f"{tp.top}_requant"
        layer_texts = [re.sub(rf"\b{tail_rq}\b", requant, text) for fname, text in tp.files.items()
                       if fname not in (f"{tail_rq}.sv", f"{tp.top}.sv")]
        files[f"{tp.top}.sv"] = "\n".join([re.sub(rf"\b{tail_rq}\b", requant, tp.files[f"{tp.top}.sv"]),
                                           "/* verilator lint_off DECLFILENAME */", *layer_texts,
                                           "/* verilator lint_on DECLFILENAME */\n"])
        ti = tp.info
        tdata = f"{cm}_data" if ti["in_tw"] == k["vb"] else f"{{{ti['in_tw'] - k['vb']}'d0, {cm}_data}}"
        insts.append({"module": tp.top, "name": tp.top, "comment": "whole-vector layers: " + ", ".join(
            n.name for n in plan.tail), "conns": clk + [
            {"port": "s_axis_tdata", "sig": tdata}, {"port": "s_axis_tvalid", "sig": f"{cm}_valid"},
            {"port": "s_axis_tready", "sig": f"{cm}_ready"}, {"port": "m_axis_tdata", "sig": "m_axis_tdata"},
            {"port": "m_axis_tvalid", "sig": "m_axis_tvalid"}, {"port": "m_axis_tready", "sig": "m_axis_tready"}]})
        adders += ti.get("adders", 0)
        mults += tp.multipliers
        ii = max(ii, int(ti.get("ii", 1)))
        latency = lat[bt] + 1 + int(ti["latency"])
        os_ = graph.tensor(graph.outputs[0])
        out_beat_bits, out_tw = int(ti["out_bits"]), int(ti["out_tw"])
        out_beats, out_beat_count = 1, os_.size
        n_tail = int(ti.get("stages", 1))
        info_ports["out_ports"] = [{"tensor": graph.outputs[0], "prefix": "m_axis", "count": os_.size,
                                    "ew": os_.fmt.width, "signed": os_.fmt.signed, "tw": out_tw, "beats": 1,
                                    "order": "flat", "tlast": True}]
        layers.append({"node": "collect", "op": "collect", "module": cm, "adders": 0, "kind": "collect",
                       "frame_bits": k["vb"], "nodes": []})
        layers.append({"node": "+".join(n.name for n in plan.tail), "op": "+".join(n.op.value for n in plan.tail),
                       "module": tp.top, "adders": ti.get("adders", 0), "kind": "vector", "ii": ti.get("ii", 1),
                       "latency": ti["latency"], "nodes": [n.name for n in plan.tail]})

    # forks: a stream with several readers advances when all are ready; each reader sees valid only then
    for t, cons in consumers.items():
        p = stream_sig(t)
        if not cons:
            assigns.append({"lhs": f"{p}_ready", "rhs": "1'b1"})
            continue
        assigns.append({"lhs": f"{p}_ready", "rhs": " && ".join(r for _, r in cons)})
        for i, (v, _) in enumerate(cons):
            others = [r for j, (_, r) in enumerate(cons) if j != i]
            assigns.append({"lhs": v, "rhs": " && ".join([f"{p}_valid"] + others)})

    in_tw = pad8(in_beat_bits)
    out_s = graph.tensor(graph.outputs[0])
    info: dict[str, Any] = {
        "top": top, "io": "stream", "latency": latency, "stages": len(plan.stages) + n_tail, "ii": ii,
        "conv_style": conv_style, "adder": adder, "cse_block": cse_block, "register_stages": bool(register_stages),
        "in_count": inp.size, "in_ew": inp.fmt.width, "in_signed": inp.fmt.signed, "in_fmt": inp.fmt.ap_type(),
        "in_bits": in_beat_bits, "in_tw": in_tw, "in_shape": list(inp.shape),
        "in_beats": h0 * w0, "in_beat_count": c0, "in_beat_bits": in_beat_bits,
        "out_count": out_s.size, "out_ew": out_s.fmt.width, "out_signed": out_s.fmt.signed,
        "out_fmt": out_s.fmt.ap_type(), "out_bits": out_beat_bits, "out_tw": out_tw, "out_shape": list(out_s.shape),
        "out_beats": out_beats, "out_beat_count": out_beat_count, "out_beat_bits": out_beat_bits,
        "adders": adders, "layers": layers,
        "in_ports": [{"tensor": graph.inputs[0], "prefix": "s_axis", "count": inp.size, "ew": inp.fmt.width,
                      "signed": inp.fmt.signed, "tw": in_tw, "beats": h0 * w0, "order": "pixel",
                      "shape": list(inp.shape), "tlast": True}],
        **info_ports,
    }
    files[f"{top}.sv"] = env.get_template("stream_top.sv.j2").render(
        header=header, top=top, info=info, sigs=sigs, assigns=assigns, insts=insts, ocw=_bits(out_beats - 1))
    info["rtl_files"] = [f"rtl/{f}" for f in files]
    return R.RtlProject(top, files, info, mults)
