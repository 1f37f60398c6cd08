"""Python side of the RTL backend: turns IR nodes into structured, width-annotated signal lists for the templates.

Every internal signal is a signed two's-complement wire whose width comes from exact integer bounds (interval
arithmetic over the input code ranges), so no adder can overflow. Each output element is produced by one
requantization (``<top>_requant``, the hardware twin of ``qfx.fixed.kernels.requantize``) from the exact value,
exactly as ``qfx.fixed.ops`` computes: exact intermediate, one cast. Constant products are shift-and-add terms from
``qfx.backends.adder_graph`` (CSD digits, optionally with common-subexpression sharing); there is no ``*`` by a
constant. The one ``*`` is the ``mul`` op's product of two variables (``LayerDesign.product``), where a DSP block may
be used. Lookup tables (``lut``) are ROMs of output codes (``LayerDesign.rom``), one ``case`` function per table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qfx.backends.adder_graph import CSE_BLOCK, build_adder_graph, signed_width
from qfx.errors import UnsupportedError
from qfx.fixed import kernels as K
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.fixed.ops import conv_out_size
from qfx.ir.graph import Graph, Node, TensorSpec, op_def
from qfx.ops import Categories, emitter_for, with_category

__all__ = ["Sig", "LayerDesign", "design_layer", "FrameSelect", "ConvPixelDesign", "design_conv_pixel", "ADDER_MODES",
           "CONV_STYLES", "LAYER_EMITTERS", "ELEMENTWISE_EMITTERS", "BINARY_EMITTERS", "layer_ports"]

#: ``cse``: adder graph with common-subexpression sharing; ``csd``: each output its own CSD adder tree.
ADDER_MODES = ("cse", "csd")
#: ``pixel``: Conv2d folded over output pixels (one pixel per clock, see ConvPixelDesign); ``parallel``: every output
#: pixel has its own adder graph (II = 1, size grows with the image).
CONV_STYLES = ("pixel", "parallel")


@dataclass(frozen=True)
class Sig:
    """A signed wire (``name``) of ``width`` bits whose value lies in ``[lo, hi]``; ``lo == hi`` is a constant."""

    name: str
    width: int
    lo: int
    hi: int

    @property
    def const(self) -> bool:
        return self.lo == self.hi


def _lit(value: int, width: int) -> str:
    """A ``width``-bit two's-complement literal of ``value`` (unsigned spelling, low bits)."""
    return f"{width}'h{value & ((1 << width) - 1):x}"


@dataclass
class LayerDesign:
    """One combinational layer module: input ports, signal definitions, output element expressions."""

    module: str
    comment: str
    ports: list[dict[str, Any]] = field(default_factory=list)  # {name, bits}
    unpack: list[dict[str, Any]] = field(default_factory=list)  # {name, width, port, lsb, ew, signed}
    items: list[dict[str, Any]] = field(default_factory=list)  # kind: sum | max | relu | clip | cast
    outs: list[str] = field(default_factory=list)  # expressions, one per output element (element width bits)
    out_elem_width: int = 1
    out_bits: int = 1
    n_adders: int = 0
    #: products of two variables (``*``, the only place a DSP block may be inferred)
    n_mults: int = 0
    #: ROM functions (``rom``): {name, in_w, out_w, default, entries: [{key, value}]} (literals)
    roms: list[dict[str, Any]] = field(default_factory=list)
    #: bound of the adder graphs' sharing search (``build_adder_graph``'s ``cse_block``; None: unbounded)
    cse_block: int | None = CSE_BLOCK
    _n: int = 0

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    # ---------------------------------------------------------------- signal builders
    def input_port(self, port: str, n: int, fmt: FxFormat) -> list[Sig]:
        self.ports.append({"name": port, "bits": n * fmt.width})
        sigs = []
        for j in range(n):
            w = fmt.width + (0 if fmt.signed else 1)
            name = f"{port}_{j}"
            self.unpack.append({"name": name, "width": w, "port": port, "lsb": j * fmt.width, "ew": fmt.width,
                                "signed": fmt.signed})
            sigs.append(Sig(name, w, fmt.min_code, fmt.max_code))
        return sigs

    def const(self, value: int) -> Sig:
        return Sig(_lit(value, signed_width(value, value)), signed_width(value, value), value, value)

    def lin(self, terms: list[tuple[Sig, int, bool]], const: int = 0) -> Sig:
        """``sum(+-(sig << shift)) + const`` as one wire (constant-folded when every term is constant)."""
        live = [(s, sh, ng) for s, sh, ng in terms if not (s.const and s.lo == 0)]
        cval = const
        ops = []
        for s, sh, ng in live:
            if s.const:
                cval += (-s.lo if ng else s.lo) << sh
            else:
                ops.append((s, sh, ng))
        if not ops:
            return self.const(cval)
        if len(ops) == 1 and cval == 0 and ops[0][1] == 0 and not ops[0][2]:
            return ops[0][0]
        lo = hi = cval
        for s, sh, ng in ops:
            a, b = (-s.hi, -s.lo) if ng else (s.lo, s.hi)
            lo += a << sh
            hi += b << sh
        w = signed_width(lo, hi)
        name = self.new("s")
        self.items.append({"kind": "sum", "name": name, "width": w,
                           "ops": [{"name": s.name, "shift": sh, "neg": ng} for s, sh, ng in ops],
                           "const": (None if cval == 0 else {"neg": cval < 0, "lit": _lit(abs(cval), w)})})
        self.n_adders += len(ops) - (1 if cval == 0 else 0)
        return Sig(name, w, lo, hi)

    def dot(self, xs: list[Sig], w: np.ndarray, adder: str) -> list[tuple[Sig, int, bool] | None]:
        """``w @ xs`` through an adder graph; returns per output a term ``(sig, shift, neg)`` or None (zero)."""
        w = np.asarray(w, dtype=np.int64).reshape(w.shape[0], -1)
        if adder == "csd" or w.size == 0:
            g = build_adder_graph(w, share=False)
        else:
            g = build_adder_graph(w, share=True, cse_block=self.cse_block)
        vals: list[Sig] = list(xs)
        for nd in g.nodes:
            vals.append(self.lin([(vals[nd.a], nd.a_shift, nd.a_neg), (vals[nd.b], nd.b_shift, nd.b_neg)]))
        return [None if o.src is None else (vals[o.src], o.shift, o.neg) for o in g.outputs]

    def maximum(self, a: Sig, b: Sig) -> Sig:
        if a.const and b.const:
            return self.const(max(a.lo, b.lo))
        w = max(a.width, b.width)
        name = self.new("m")
        self.items.append({"kind": "max", "name": name, "width": w, "a": a.name, "b": b.name})
        return Sig(name, w, max(a.lo, b.lo), max(a.hi, b.hi))

    def relu(self, a: Sig) -> Sig:
        if a.lo >= 0:
            return a
        name = self.new("r")
        self.items.append({"kind": "relu", "name": name, "width": a.width, "a": a.name})
        return Sig(name, a.width, 0, max(a.hi, 0))

    def clip(self, a: Sig, lo: int, hi: int) -> Sig:
        """``min(max(a, lo), hi)`` (numpy.clip order)."""
        t = a
        if lo > a.lo:
            w = max(a.width, signed_width(lo, lo))
            name = self.new("c")
            self.items.append({"kind": "lower", "name": name, "width": w, "a": a.name, "lit": _lit(lo, w).replace("'h", "'sh")})
            t = Sig(name, w, max(a.lo, lo), max(a.hi, lo))
        if hi < t.hi:
            w = max(t.width, signed_width(hi, hi))
            name = self.new("c")
            self.items.append({"kind": "upper", "name": name, "width": w, "a": t.name, "lit": _lit(hi, w).replace("'h", "'sh")})
            t = Sig(name, w, min(t.lo, hi), min(t.hi, hi))
        return t

    def product(self, a: Sig, b: Sig) -> Sig:
        """Exact ``a * b`` of two variables as one signed ``*`` of the exact product width (a constant operand
        becomes CSD shift-adds instead, as every constant product does)."""
        if a.const or b.const:
            c, v = (a.lo, b) if a.const else (b.lo, a)
            return self.lin([(v, sh, sg < 0) for sg, sh in csd_digits(int(c))])
        ends = (a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi)
        lo, hi = min(ends), max(ends)
        w = signed_width(lo, hi)
        name = self.new("p")
        self.items.append({"kind": "mul", "name": name, "width": w, "a": a.name, "b": b.name})
        self.n_mults += 1
        return Sig(name, w, lo, hi)

    def rom(self, x: Sig, fin: FxFormat, codes: np.ndarray, fmt: FxFormat) -> str:
        """Expression (``fmt.width`` bits) for ``codes[x - fin.min_code]``: a ``case`` function over ``x``'s raw
        code bits, registered once per table (same ``codes``) in this module. The most frequent code is the
        ``default`` arm, so saturating tables (sigmoid, tanh) list only their slopes."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if x.const:
            return _lit(int(codes[x.lo - fin.min_code]), fmt.width)
        vals, counts = np.unique(codes, return_counts=True)
        if vals.size == 1:
            return _lit(int(vals[0]), fmt.width)  # a constant table: no ROM, no read
        key = (fin.width, fmt.width, codes.tobytes())
        fn = next((r["name"] for r in self.roms if r["key"] == key), None)
        if fn is None:
            fn = self.new("rom")
            dflt = int(vals[int(np.argmax(counts))])
            raw = [(code - fin.min_code) ^ ((1 << (fin.width - 1)) if fin.signed else 0) for code in
                   range(fin.min_code, fin.max_code + 1)]  # table index -> the input's raw bits
            entries = sorted((r, int(c)) for r, c in zip(raw, codes.tolist()) if int(c) != dflt)
            self.roms.append({"name": fn, "key": key, "in_w": fin.width, "out_w": fmt.width,
                              "default": _lit(dflt, fmt.width),
                              "entries": [{"key": _lit(r, fin.width), "value": _lit(c, fmt.width)} for r, c in entries]})
        name = self.new("t")
        self.items.append({"kind": "rom", "name": name, "width": fmt.width, "fn": fn,
                           "a": f"{x.name}[{fin.width - 1}:0]"})
        return name

    def requant(self, s: Sig, k: int, fmt: FxFormat) -> str:
        """Expression (``fmt.width`` bits) for ``requantize(s, k, fmt)``."""
        ow = fmt.width
        if s.const:
            code = int(K.requantize(np.array([s.lo], dtype=np.int64), k, fmt)[0])
            return _lit(code, ow)
        rounds = k > 0 and fmt.rounding != "TRN"
        tlo = (s.lo >> k) if k > 0 else s.lo << -k
        thi = ((s.hi >> k) + (1 if rounds else 0)) if k > 0 else s.hi << -k
        lo_ok = fmt.min_code + (1 if fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width > 1 else 0)
        safe = lo_ok <= tlo and thi <= fmt.max_code
        if safe and k == 0:
            return f"{s.name}[{ow - 1}:0]" if s.width >= ow else f"{ow}'({s.name})"
        name = self.new("q")
        self.items.append({"kind": "cast", "name": name, "in": s.name, "in_w": s.width, "shift": k, "out_w": ow,
                           "out_signed": int(fmt.signed), "rnd": ROUNDING_MODES.index(fmt.rounding),
                           "ovf": 0 if safe else OVERFLOW_MODES.index(fmt.overflow)})
        return name

    def chain(self, exprs: list[str], fmt: FxFormat) -> list[Sig]:
        """Feed finished output expressions (``fmt.width`` bits each) into further logic as signed wires."""
        bus = self.new("b")
        self.items.append({"kind": "bus", "name": bus, "width": len(exprs) * fmt.width, "parts": list(exprs)})
        w = fmt.width + (0 if fmt.signed else 1)
        sigs = []
        for j in range(len(exprs)):
            name = self.new("e")
            self.items.append({"kind": "slice", "name": name, "width": w, "src": bus, "lsb": j * fmt.width,
                               "ew": fmt.width, "signed": fmt.signed})
            sigs.append(Sig(name, w, fmt.min_code, fmt.max_code))
        return sigs

    def finish(self, outs: list[str], fmt: FxFormat) -> None:
        self.outs = outs
        self.out_elem_width = fmt.width
        self.out_bits = len(outs) * fmt.width


def _lossless_acc(n: Node, fx: FxFormat, w: np.ndarray) -> None:
    """The RTL computes exact sums; refuse accumulators that round or wrap (ops.dense's sequential path)."""
    acc = n.acc_fmt
    if acc is None:
        return
    fw = n.consts["weight"].fmt
    b = n.consts.get("bias")
    pf = fx.frac_bits + fw.frac_bits
    exact_f = pf if b is None else max(pf, b.fmt.frac_bits)
    ok = acc.frac_bits >= exact_f and (w.size == 0 or acc.contains(
        K.lossless_acc_format(w.reshape(w.shape[0], -1), fw, fx, None if b is None else b.codes,
                              None if b is None else b.fmt)))
    if not ok:
        raise UnsupportedError(f"node {n.name!r}: accumulator {acc.ap_type()} is not lossless; the RTL backend "
                               "computes exact sums only")


def _affine(d: LayerDesign, dots: list[tuple[Sig, int, bool] | None], pf: int, bias: np.ndarray | None,
            fb: FxFormat | None, out: FxFormat) -> list[str]:
    """Per output: ``requant(dot << (F - pf) + bias << (F - fb.frac), F - out.frac)`` with F the exact frac bits."""
    f = pf if bias is None or fb is None else max(pf, fb.frac_bits)
    res = []
    for o, t in enumerate(dots):
        c = 0 if bias is None or fb is None else int(bias[o]) << (f - fb.frac_bits)
        k = f - out.frac_bits
        terms = [] if t is None else [(t[0], t[1] + (f - pf), t[2])]
        # factor out common trailing zeros: requant(v, k) == requant(v >> g, k - g) when v is a multiple of 2**g
        g = min([sh for _, sh, _ in terms] + ([(c & -c).bit_length() - 1] if c else []), default=0)
        terms = [(s, sh - g, ng) for s, sh, ng in terms]
        res.append(d.requant(d.lin(terms, c >> g), k - g, out))
    return res


# ------------------------------------------------------------------------------ element-wise emitters (per element)
#: An element-wise emitter: ``(design, node, input wires, input format, output format, channel per element)`` ->
#: one output expression per input wire. Shared by whole layers (``design_layer``) and by the per-pixel kernel of a
#: folded convolution (``design_conv_pixel``), so a fused BN/ReLU computes exactly what a separate layer would.
def _ew_scale_shift(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    s, h = n.consts["scale"], n.consts["shift"]
    pf = fx.frac_bits + s.fmt.frac_bits
    f = max(pf, h.fmt.frac_bits)
    outs = []
    for x, ci in zip(xs, chan):
        terms = [(x, k + (f - pf), sg < 0) for sg, k in csd_digits(int(s.codes.reshape(-1)[ci]))]
        c = int(h.codes.reshape(-1)[ci]) << (f - h.fmt.frac_bits)
        gz = min([k for _, k, _ in terms] + ([(c & -c).bit_length() - 1] if c else []), default=0)
        terms = [(t, k - gz, ng) for t, k, ng in terms]
        outs.append(d.requant(d.lin(terms, c >> gz), f - of.frac_bits - gz, of))
    return outs


def _ew_relu(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    return [d.requant(d.relu(x), fx.frac_bits - of.frac_bits, of) for x in xs]


def _ew_clip(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    lo, hi = int(n.attr("lo")), int(n.attr("hi"))
    return [d.requant(d.clip(x, lo, hi), fx.frac_bits - of.frac_bits, of) for x in xs]


def _ew_cast(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    """Ops that only move elements or change their format: one requantization per element."""
    return [d.requant(x, fx.frac_bits - of.frac_bits, of) for x in xs]


def _ew_lut(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    """Lookup table: one ROM of output codes per table, read once per element. The IR table goes through the node's
    one cast (``qfx.fixed.kernels.cast`` into ``of``) here, so the ROM output is the final code, no requantizer."""
    t = n.consts["table"]
    codes = K.cast(t.codes.reshape(-1), t.fmt, of)
    if codes.size != fx.max_code - fx.min_code + 1:
        raise UnsupportedError(f"node {n.name!r}: table has {codes.size} entries, input format {fx.ap_type()} has "
                               f"{fx.max_code - fx.min_code + 1} codes")
    return [d.rom(x, fx, codes, of) for x in xs]


#: op name -> element-wise emitter; every op in ``Categories.ELEMENTWISE`` needs one
ELEMENTWISE_EMITTERS: dict[str, Any] = {
    "scale_shift": _ew_scale_shift,
    "relu": _ew_relu,
    "clip": _ew_clip,
    "quant": _ew_cast,
    "flatten": _ew_cast,
    "reshape": _ew_cast,
    "lut": _ew_lut,
}


def _elementwise(d: LayerDesign, n: Node, xs: list[Sig], fx: FxFormat, of: FxFormat, chan: list[int]) -> list[str]:
    """Output expressions of the element-wise node ``n`` on ``xs``; ``chan[j]`` is element j's channel."""
    return emitter_for(ELEMENTWISE_EMITTERS, n, "RTL")(d, n, xs, fx, of, chan)


#: A two-operand emitter: ``(design, a wires, a format, b wires, b format, output format, swapped)`` -> one output
#: expression per element pair. ``swapped``: the wires passed as ``a`` are the op's second operand (a folded
#: convolution passes its own pixel first); commutative ops ignore it.
def _add(d: LayerDesign, xa: list[Sig], fa: FxFormat, xb: list[Sig], fb: FxFormat, of: FxFormat,
         swapped: bool = False) -> list[str]:
    """Element-wise exact ``a + b`` (binary points aligned), requantized once to ``of``."""
    f = max(fa.frac_bits, fb.frac_bits)
    return [d.requant(d.lin([(a, f - fa.frac_bits, False), (b, f - fb.frac_bits, False)]), f - of.frac_bits, of)
            for a, b in zip(xa, xb)]


def _sub(d: LayerDesign, xa: list[Sig], fa: FxFormat, xb: list[Sig], fb: FxFormat, of: FxFormat,
         swapped: bool = False) -> list[str]:
    """Element-wise exact ``a - b`` (an adder with the subtrahend negated), requantized once to ``of``."""
    f = max(fa.frac_bits, fb.frac_bits)
    return [d.requant(d.lin([(a, f - fa.frac_bits, swapped), (b, f - fb.frac_bits, not swapped)]), f - of.frac_bits,
                      of) for a, b in zip(xa, xb)]


def _mul(d: LayerDesign, xa: list[Sig], fa: FxFormat, xb: list[Sig], fb: FxFormat, of: FxFormat,
         swapped: bool = False) -> list[str]:
    """Element-wise exact ``a * b``: one variable product per element (``LayerDesign.product``), one requantizer."""
    k = fa.frac_bits + fb.frac_bits - of.frac_bits
    return [d.requant(d.product(a, b), k, of) for a, b in zip(xa, xb)]


#: op name -> two-operand emitter (whole layers and a residual op fused into a folded convolution); every op in
#: ``Categories.BINARY`` needs one
BINARY_EMITTERS: dict[str, Any] = {"add": _add, "sub": _sub, "mul": _mul}


def layer_ports(n_inputs: int) -> list[str]:
    """Input port names of a layer module: ``x``; ``a``, ``b`` for two operands; ``x0``, ``x1``, ... for more."""
    return ["x"] if n_inputs == 1 else ["a", "b"] if n_inputs == 2 else [f"x{i}" for i in range(n_inputs)]


# ------------------------------------------------------------------------------------ layer emitters (whole node)
#: A layer emitter: ``(design, graph, node, input wires per input, adder mode)`` -> one output expression per output
#: element (C, H, W order).
def _bias(n: Node) -> tuple[np.ndarray | None, FxFormat | None]:
    b = n.consts.get("bias")
    return (None, None) if b is None else (b.codes, b.fmt)


def _layer_dense(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    w = n.consts["weight"].codes
    _lossless_acc(n, fx, w)
    fw = n.consts["weight"].fmt
    dots = d.dot(xs[0], w, adder)
    return _affine(d, dots, fx.frac_bits + fw.frac_bits, *_bias(n), of)


def _conv_window(n: Node, spec: TensorSpec, out: TensorSpec, kh: int, kw: int) -> tuple[int, int, int, int, int, int]:
    """Stride, padding and output size of a conv node, checked against its output tensor."""
    (_, h, wd), (ho, wo) = spec.shape, out.shape[1:]
    sh, sw = n.attr("stride", (1, 1))
    ph, pw = n.attr("padding", (0, 0))
    if (ho, wo) != (conv_out_size(h, kh, sh, ph), conv_out_size(wd, kw, sw, pw)):
        raise UnsupportedError(f"node {n.name!r}: output shape {out.shape} does not match the convolution")
    return sh, sw, ph, pw, ho, wo


def _layer_conv2d(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Fully parallel convolution: one adder graph per output pixel (``conv_style="parallel"``)."""
    spec, out = g.tensor(n.inputs[0]), g.tensor(n.output)
    fx, of = spec.fmt, out.fmt
    w = n.consts["weight"].codes
    _lossless_acc(n, fx, w)
    fw = n.consts["weight"].fmt
    o_ch, c, kh, kw = w.shape
    _, h, wd = spec.shape
    sh, sw, ph, pw, ho, wo = _conv_window(n, spec, out, kh, kw)
    zero = d.const(0)
    per_pix: dict[tuple[int, int], list[str]] = {}
    for y in range(ho):
        for x in range(wo):
            win = []
            for ci in range(c):
                for ky in range(kh):
                    for kx in range(kw):
                        iy, ix = y * sh + ky - ph, x * sw + kx - pw
                        inside = 0 <= iy < h and 0 <= ix < wd
                        win.append(xs[0][(ci * h + iy) * wd + ix] if inside else zero)
            dots = d.dot(win, w.reshape(o_ch, -1), adder)
            per_pix[(y, x)] = _affine(d, dots, fx.frac_bits + fw.frac_bits, *_bias(n), of)
    return [per_pix[(y, x)][o] for o in range(o_ch) for y in range(ho) for x in range(wo)]


def _layer_elementwise(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Any ``Categories.ELEMENTWISE`` op as a whole layer; element j belongs to channel ``j // (size / shape[0])``
    (per-channel constants index by it; emitters without constants ignore it)."""
    spec = g.tensor(n.inputs[0])
    per = spec.size // spec.shape[0] if spec.shape and spec.shape[0] else 1
    return _elementwise(d, n, xs[0], spec.fmt, g.tensor(n.output).fmt, [j // per for j in range(len(xs[0]))])


def _layer_binary(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Any ``Categories.BINARY`` op as a whole layer, by its entry in ``BINARY_EMITTERS``."""
    fa, fb = (g.tensor(t).fmt for t in n.inputs)
    return emitter_for(BINARY_EMITTERS, n, "RTL")(d, xs[0], fa, xs[1], fb, g.tensor(n.output).fmt)


def _layer_gather(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Any ``Categories.GATHER`` op by its ``gather_map``: output element i is input element ``map[i]`` of the
    concatenated inputs, requantized to the output format (each source element once, however often it is read),
    or the zero code. With equal formats the requantization is a plain slice: the layer is wiring."""
    of = g.tensor(n.output).fmt
    src = [(x, g.tensor(t).fmt) for t, sigs in zip(n.inputs, xs) for x in sigs]
    m = np.asarray(op_def(n.op).gather_map(g, n), dtype=np.int64).reshape(-1)
    if m.size and (int(m.min()) < -1 or int(m.max()) >= len(src)):
        raise UnsupportedError(f"node {n.name!r}: index map does not fit its {len(src)} input elements")
    done: dict[int, str] = {}
    outs = []
    for j in m.tolist():
        if j not in done:
            x, fx = (d.const(0), of) if j < 0 else src[j]
            done[j] = d.requant(x, fx.frac_bits - of.frac_bits, of)
        outs.append(done[j])
    return outs


def _pool_windows(g: Graph, n: Node, xs: list[Sig]) -> list[list[Sig]]:
    """The in-bounds input wires of every pooling window, in output (C, H, W) order (padding contributes nothing)."""
    c, h, wd = g.tensor(n.inputs[0]).shape
    kh, kw = n.attr("kernel")
    sh, sw = n.attr("stride")
    ph, pw = n.attr("padding", (0, 0))
    ho, wo = g.tensor(n.output).shape[1:]
    return [[xs[(ci * h + iy) * wd + ix]
             for iy in range(y * sh - ph, y * sh - ph + kh) for ix in range(x * sw - pw, x * sw - pw + kw)
             if 0 <= iy < h and 0 <= ix < wd]
            for ci in range(c) for y in range(ho) for x in range(wo)]


def _layer_maxpool2d(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    outs = []
    for win in _pool_windows(g, n, xs[0]):
        while len(win) > 1:  # balanced tree of comparators
            win = [d.maximum(win[i], win[i + 1]) if i + 1 < len(win) else win[i] for i in range(0, len(win), 2)]
        outs.append(d.requant(win[0], fx.frac_bits - of.frac_bits, of))
    return outs


def _layer_avgpool2d(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Window sum times the reciprocal constant ``recip`` (CSD shift-adds), one requantization."""
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    r = n.consts["recip"]
    rcode = int(r.codes.reshape(-1)[0])
    k = fx.frac_bits + r.fmt.frac_bits - of.frac_bits
    outs = []
    for win in _pool_windows(g, n, xs[0]):
        sm = d.dot(win, np.ones((1, len(win)), dtype=np.int64), adder)[0] if win else None
        if sm is None:
            outs.append(d.requant(d.const(0), k, of))
            continue
        ssig = d.lin([sm])
        terms = [(ssig, kk, sg < 0) for sg, kk in csd_digits(rcode)]
        gz = min([kk for _, kk, _ in terms], default=0)
        outs.append(d.requant(d.lin([(t, kk - gz, ng) for t, kk, ng in terms]), k - gz, of))
    return outs


def _rom_sig(d: LayerDesign, x: Sig, fin: FxFormat, codes: np.ndarray, fmt: FxFormat) -> Sig:
    """``codes[x - fin.min_code]`` (a ROM read, ``LayerDesign.rom``) as a signed wire for further arithmetic; its
    range is the table's own (tighter than the format's), so the sums and products after it stay narrow."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    lo, hi = int(codes.min()), int(codes.max())
    if lo == hi or x.const:
        return d.const(lo if lo == hi else int(codes[x.lo - fin.min_code]))
    t = d.rom(x, fin, codes, fmt)
    name = d.new("e")
    w = fmt.width + (0 if fmt.signed else 1)
    d.items.append({"kind": "slice", "name": name, "width": w, "src": t, "lsb": 0, "ew": fmt.width,
                    "signed": fmt.signed})
    return Sig(name, w, lo, hi)


def _layer_softmax(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """Softmax (``qfx.ops.softmax``) over the last axis: one row circuit per row (all rows in parallel, sharing the
    two ROM functions): a comparator tree for the maximum, per element the code distance ``m - x`` addressing the
    exp ROM, an exact adder tree over the exp codes, the sum's bits from ``shift`` up addressing the reciprocal ROM,
    then per element one exact variable product ``e * r`` (``LayerDesign.product``) and one requantization."""
    from qfx.ops.softmax import softmax_row

    fx = g.tensor(n.inputs[0])
    et = n.consts["exp_table"]
    if et.codes.size != 1 << fx.fmt.width:
        raise UnsupportedError(f"node {n.name!r}: exp_table has {et.codes.size} entries, input format "
                               f"{fx.fmt.ap_type()} needs {1 << fx.fmt.width}")
    row = softmax_row(g, n)
    outs: list[str] = []
    for k in range(0, len(xs[0]), row):
        outs += _softmax_row(d, g, n, xs[0][k:k + row])
    return outs


def _softmax_row(d: LayerDesign, g: Graph, n: Node, xv: list[Sig]) -> list[str]:
    """One row of ``_layer_softmax``."""
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    et, rt = n.consts["exp_table"], n.consts["recip_table"]
    shift = int(op_def(n.op).attr(n, "shift"))
    m = list(xv)
    while len(m) > 1:  # balanced tree of comparators
        m = [d.maximum(m[i], m[i + 1]) if i + 1 < len(m) else m[i] for i in range(0, len(m), 2)]
    dist_f = FxFormat(fx.width, fx.width, signed=False)  # the distance m - x as an unsigned integer code
    es = []
    for x in xv:
        dist = d.lin([(m[0], 0, False), (x, 0, True)])
        # the distance lies in [0, 2**W - 1] whatever the interval bounds say: its low W bits address the ROM
        dist = Sig(dist.name, dist.width, 0, min(dist.hi, dist_f.max_code)) if not dist.const else dist
        es.append(_rom_sig(d, dist, dist_f, et.codes, et.fmt))
    tree = list(es)
    while len(tree) > 1:  # balanced adder tree: exact, every node sized from its operands' ranges
        tree = [d.lin([(tree[i], 0, False), (tree[i + 1], 0, False)]) if i + 1 < len(tree) else tree[i]
                for i in range(0, len(tree), 2)]
    s = tree[0]
    if (s.hi >> shift) >= rt.codes.size:
        raise UnsupportedError(f"node {n.name!r}: sum >> {shift} reaches {s.hi >> shift}, beyond the "
                               f"{rt.codes.size}-entry recip_table")
    if s.const or (s.hi >> shift) == 0:
        r = d.const(int(rt.codes[s.lo >> shift]))
    else:
        iw = max(1, (s.hi >> shift).bit_length())  # index bits: s >= 0 and s >> shift < 2**iw
        idx = d.new("i")
        d.items.append({"kind": "slice", "name": idx, "width": iw + 1, "src": s.name, "lsb": shift, "ew": iw,
                        "signed": False})
        codes = np.zeros(1 << iw, dtype=np.int64)
        used = min(codes.size, rt.codes.size)
        codes[:used] = rt.codes[:used]
        codes[used:] = rt.codes[used - 1]  # unreachable (sum bound), keeps the ROM's default arm the common code
        r = _rom_sig(d, Sig(idx, iw + 1, 0, (1 << iw) - 1), FxFormat(iw, iw, signed=False), codes, rt.fmt)
    k = et.fmt.frac_bits + rt.fmt.frac_bits - of.frac_bits
    return [d.requant(d.product(e, r), k, of) for e in es]


def _layer_matmul(d: LayerDesign, g: Graph, n: Node, xs: list[list[Sig]], adder: str) -> list[str]:
    """``matmul`` (``qfx.ops.matmul``): per output element K exact variable products (``LayerDesign.product``),
    one exact sum of them (``LayerDesign.lin``, sized from the products' ranges), one requantization."""
    sa, sb = (g.tensor(t) for t in n.inputs)
    of = g.tensor(n.output).fmt
    m, k = sa.shape[-2:]
    nn = sb.shape[-1]
    batch = sa.size // (m * k) if m * k else 0
    sh = sa.fmt.frac_bits + sb.fmt.frac_bits - of.frac_bits
    outs = []
    for t in range(batch):
        for i in range(m):
            for j in range(nn):
                prods = [d.product(xs[0][(t * m + i) * k + q], xs[1][(t * k + q) * nn + j]) for q in range(k)]
                outs.append(d.requant(d.lin([(p, 0, False) for p in prods]), sh, of))
    return outs


#: op name -> layer emitter (``design_layer``); an op missing here fails with UnsupportedError naming it
LAYER_EMITTERS: dict[str, Any] = {
    "dense": _layer_dense,
    "conv2d": _layer_conv2d,
    "maxpool2d": _layer_maxpool2d,
    "avgpool2d": _layer_avgpool2d,
    "softmax": _layer_softmax,
    "matmul": _layer_matmul,
    **{name: _layer_binary for name in with_category(Categories.BINARY)},
    **{name: _layer_elementwise for name in with_category(Categories.ELEMENTWISE)},
    **{name: _layer_gather for name in with_category(Categories.GATHER)},
}


def design_layer(g: Graph, n: Node, module: str, adder: str = "cse",
                 cse_block: int | None = CSE_BLOCK) -> LayerDesign:
    """Structured description of node ``n`` as a combinational module named ``module``."""
    emit = emitter_for(LAYER_EMITTERS, n, "RTL")
    specs = [g.tensor(t) for t in n.inputs]
    out = g.tensor(n.output)
    d = LayerDesign(module, f"{n.op.value} {n.name}", cse_block=cse_block)
    xs = [d.input_port(p, s.size, s.fmt) for p, s in zip(layer_ports(len(specs)), specs)]
    outs = emit(d, g, n, xs, adder)
    if len(outs) != out.size:
        raise UnsupportedError(f"node {n.name!r}: produced {len(outs)} elements, output has {out.size}")
    d.finish(outs, out.fmt)
    return d


@dataclass
class FrameSelect:
    """Two multiplexer levels picking, for output pixel ``(cy, cx)``, window position ``(ky, kx)`` of every channel
    from the ``(c, h, w)`` frame ``src``: per ``ky`` a row select by ``cy`` into ``<rows>_<ky>`` (``row_arms[ky][y]``,
    ``row_bits`` wide), then per ``(ky, kx)`` a column select by ``cx`` into ``<cols>_<ky>_<kx>`` (``col_arms``,
    channel ``ci`` at bits ``ci*ew``). ``None`` arms are padding: constant zeros."""

    src: str
    rows: str
    cols: str
    row_bits: int
    col_bits: int
    row_arms: list[list[str | None]]
    col_arms: list[list[list[str | None]]]


def _frame_select(src: str, rows: str, cols: str, c: int, h: int, wd: int, ew: int, ho: int, wo: int,
                  kernel: tuple[int, int] = (1, 1), stride: tuple[int, int] = (1, 1),
                  pad: tuple[int, int] = (0, 0)) -> FrameSelect:
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad

    def row(ci: int, r: int) -> str:
        lsb = (ci * h + r) * wd * ew
        return f"{src}[{lsb + wd * ew - 1}:{lsb}]"

    row_arms = [["{" + ", ".join(row(ci, y * sh + ky - ph) for ci in reversed(range(c))) + "}"
                 if 0 <= y * sh + ky - ph < h else None for y in range(ho)] for ky in range(kh)]
    col_arms = [[["{" + ", ".join(f"{rows}_{ky}[{(ci * wd + col) * ew + ew - 1}:{(ci * wd + col) * ew}]"
                                  for ci in reversed(range(c))) + "}" if 0 <= (col := x * sw + kx - pw) < wd else None
                  for x in range(wo)] for kx in range(kw)] for ky in range(kh)]
    return FrameSelect(src, rows, cols, c * wd * ew, c * ew, row_arms, col_arms)


@dataclass
class ConvPixelDesign:
    """A pixel-folded Conv2d: one output pixel (all output channels) per clock from a frame held in registers.

    ``kernel`` is the combinational per-pixel product (window of ``C*KH*KW`` codes -> ``O`` output codes, the same
    adder graph and requantization a dense layer gets). The window comes from ``window`` (rows by ``cy``, then
    columns by ``cx``; padding selects zeros); a fused residual ADD reads its other operand's current pixel through
    ``residual`` (the same selection with a 1x1 window on the frame ``r``, tensor ``residual_input``). Why this and
    not line buffers: qfx's AXI4-Stream interface carries a whole tensor per beat, so the frame is already in
    registers; folding over pixels divides the constant products by ``HO*WO`` while keeping every other layer
    unchanged.
    """

    kernel: LayerDesign
    ho: int
    wo: int
    o: int
    ow: int
    in_bits: int
    cy_w: int
    cx_w: int
    window: FrameSelect
    win_expr: str  # kernel port ``win`` from the window's column wires, element j = (ci*KH + ky)*KW + kx
    residual: FrameSelect | None = None
    residual_input: str | None = None
    res_bits: int = 0

    @property
    def pixels(self) -> int:
        return self.ho * self.wo

    @property
    def out_bits(self) -> int:
        return self.o * self.pixels * self.ow


def design_conv_pixel(g: Graph, n: Node, module: str, adder: str = "cse",
                      fused: tuple[Node, ...] = (), cse_block: int | None = CSE_BLOCK) -> ConvPixelDesign:
    """Structured description of the Conv2d node ``n`` folded over its output pixels (see ConvPixelDesign).

    ``fused``: element-wise nodes (``Categories.ELEMENTWISE``; at most one ``Categories.BINARY`` residual add) that
    follow the convolution, each the only consumer of the previous tensor; they are applied to the current pixel's
    channels inside the kernel (conv -> BN -> ReLU costs one set of requantizers per channel instead of one per
    element of the frame).
    """
    if not op_def(n.op).is_(Categories.CONV):  # pragma: no cover - caller's contract
        raise UnsupportedError(f"node {n.name!r} is not a convolution")
    spec, out = g.tensor(n.inputs[0]), g.tensor(n.output)
    fx, of = spec.fmt, out.fmt
    w = n.consts["weight"].codes
    _lossless_acc(n, fx, w)
    fw = n.consts["weight"].fmt
    b = n.consts.get("bias")
    o_ch, c, kh, kw = w.shape
    _, h, wd = spec.shape
    sh, sw, ph, pw, ho, wo = _conv_window(n, spec, out, kh, kw)
    ew = fx.width
    k = LayerDesign(f"{module}_pix", f"per-pixel kernel of {n.op.value} {n.name}", cse_block=cse_block)
    win = k.input_port("win", c * kh * kw, fx)
    dots = k.dot(win, w.reshape(o_ch, -1), adder)
    outs = _affine(k, dots, fx.frac_bits + fw.frac_bits, None if b is None else b.codes,
                   None if b is None else b.fmt, of)
    prev = n.output
    residual, other = None, None
    for m in fused:
        mf = g.tensor(m.output).fmt
        md = op_def(m.op)
        if md.is_(Categories.BINARY) and prev in m.inputs and residual is None:
            other = m.inputs[1] if m.inputs[0] == prev else m.inputs[0]
            uf = g.tensor(other).fmt
            outs = emitter_for(BINARY_EMITTERS, m, "RTL")(k, k.chain(outs, of), of, k.input_port("res", o_ch, uf), uf,
                                                          mf, swapped=m.inputs[0] != prev)
            residual = _frame_select("r", "rsel", "rpix", o_ch, ho, wo, uf.width, ho, wo)
        elif md.is_(Categories.ELEMENTWISE) and m.inputs == (prev,):
            outs = _elementwise(k, m, k.chain(outs, of), of, mf, list(range(o_ch)))
        else:  # pragma: no cover - caller's contract
            raise UnsupportedError(f"node {m.name!r} cannot be fused into convolution {n.name!r}")
        of, prev = mf, m.output
    k.finish(outs, of)

    window = _frame_select("x", "rowsel", "win", c, h, wd, ew, ho, wo, (kh, kw), (sh, sw), (ph, pw))
    elems = [f"win_{ky}_{kx}[{ci * ew + ew - 1}:{ci * ew}]"
             for ci in range(c) for ky in range(kh) for kx in range(kw)]
    win_expr = "{" + ", ".join(reversed(elems)) + "}"
    return ConvPixelDesign(kernel=k, ho=ho, wo=wo, o=o_ch, ow=of.width, in_bits=spec.size * ew,
                           cy_w=max(1, ho.bit_length()), cx_w=max(1, (wo - 1).bit_length()), window=window,
                           win_expr=win_expr, residual=residual, residual_input=other,
                           res_bits=0 if other is None else g.tensor(other).size * g.tensor(other).fmt.width)
