"""Random valid IR graphs (random layer stacks, shapes, formats, modes, K-hot) for differential testing.

Used by tests and benchmarks of every executor: golden interpreter, onnxruntime, C simulation, RTL simulation.

Layers come from ``GENERATORS``, one ``Generator`` per name that an op lists in ``OpDef.generators``: the op it
emits, the input ranks it accepts, its draw weight, and its build functions. Nothing here switches on op types;
structure (what may branch, what closes a CNN) is chosen by category (``qfx.ops.Categories``).
``tests/test_random_graph.py`` fails when a registered op has no generator.

Two streams:

* ``random_graph(seed, kind, ...)`` (``informative=False``, the default): uniform random formats and codes, the
  same graphs for the same arguments as before the op registry (``benchmarks/gen_baseline.py`` and many tests pin
  seeds; each generator keeps its ``legacy`` function and menu slots for that). Many of these saturate or give one
  constant output over the test vectors, which is why the differential tests use the other stream.
* ``informative=True``: every cast's format is calibrated on data (the graph's own test vectors), biases, BN shifts
  and clip bounds come from data quantiles, each layer is redrawn when its output is degenerate, and the whole graph
  is redrawn until ``qfx.ir.informative`` finds no violated target (``Targets``: at most 10 % overflowed codes per
  tensor, at most 75 % zeros, every output element at least min(50, 2**(W-1)) distinct codes over the vectors).
  These graphs also ask for the extended edge vectors (``meta["edge_inputs"] = "full"``, see ``edge_inputs``).
* ``informative=True, focus=Focus(op, rounding, overflow, signed)``: an informative graph aimed at one coverage cell
  (``benchmarks/bench_coverage.py``'s targeted sweep): that op at the first layer it fits, its output cast in those
  modes with some overflow and rounding ties. Graphs without ``focus`` are unaffected (their own rng stream).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import numpy as np

from qfx.errors import BadInputError, QfxError
from qfx.fixed.csd import khot_project
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import avgpool_format, conv_out_size, scale_shift_format
from qfx.ir.graph import Constant, Graph, Node, TensorSpec, op_def
from qfx.ir.interpret import FULL_EDGES, random_inputs
from qfx.ops import REGISTRY, Categories as C

__all__ = ["random_graph", "random_format", "Generator", "GENERATORS", "N_CALIBRATION", "GenerationError",
           "Focus"]

#: test vectors the informative stream calibrates formats on and checks its targets over
N_CALIBRATION = 300


class GenerationError(QfxError):
    """The informative stream found no graph meeting its targets (should not happen; raise the attempts)."""


def random_format(rng: np.random.Generator, wmin: int = 2, wmax: int = 10, signed: bool | None = None) -> FxFormat:
    w = int(rng.integers(wmin, wmax, endpoint=True))
    i = int(rng.integers(-2, w + 3))
    s = bool(rng.integers(0, 2)) if signed is None else signed
    if not s and w < 1:
        w = 1
    return FxFormat(w, i, s, str(rng.choice(ROUNDING_MODES)), str(rng.choice(OVERFLOW_MODES)))


# ================================================================================================ generator table

@dataclass(frozen=True)
class Generator:
    """How random graphs produce one op.

    ``informed(b, x, **kw)`` appends the op (and any branch it needs) to an ``_Informed`` builder reading tensor
    ``x`` and returns the new tensor, or None when the op does not fit ``x`` (then another generator is drawn).
    Keywords: ``same_shape=True`` (output shape = input shape; LINEAR generators honour it, for branches of binary
    ops) and ``final=True`` (this node produces the graph output). ``legacy(b, x, khot, head=False)`` is the
    seed-compatible draw of ``informative=False`` graphs; ``legacy_slots`` its positions in the per-rank menu.
    """

    op: str
    ranks: frozenset[int]
    informed: Callable[..., str | None]
    weight: float = 1.0
    legacy: Callable[..., str] | None = None
    legacy_slots: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    #: turns a (C, H, W) tensor into a vector (closes a CNN front end)
    to_vector: bool = False


class Focus(NamedTuple):
    """A targeted informative graph (coverage sweeps): generator ``op`` is drawn at the first layer it fits and
    its output cast gets these modes and signedness, with some overflow and rounding (``_Informed.pick``)."""

    op: str
    rounding: str
    overflow: str
    signed: bool


# ================================================================================================ legacy stream

class _Builder:
    def __init__(self, rng: np.random.Generator, max_width: int) -> None:
        self.rng = rng
        self.max_width = max_width
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []

    def tensor(self, shape: tuple[int, ...], fmt: FxFormat) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = TensorSpec(name, shape, fmt)
        return name

    def out_fmt(self) -> FxFormat:
        return random_format(self.rng, 2, self.max_width)

    def weights(self, shape: tuple[int, ...], khot: int) -> Constant:
        fw = random_format(self.rng, 2, 8, signed=True)
        codes = self.rng.integers(fw.min_code, fw.max_code, size=shape, endpoint=True, dtype=np.int64)
        if khot:
            codes = khot_project(codes, khot, fw.min_code, fw.max_code)
        return Constant(codes, fw)

    def bias(self, n: int) -> Constant:
        fb = random_format(self.rng, 2, 10, signed=True)
        return Constant(self.rng.integers(fb.min_code, fb.max_code, size=(n,), endpoint=True, dtype=np.int64), fb)

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], consts=None, attrs=None, acc=None,
            fmt: FxFormat | None = None) -> str:
        out = self.tensor(shape, fmt or self.out_fmt())
        idx = len(self.nodes)
        self.nodes.append(Node(f"n{idx}_{op}", op, tuple(inputs), out, consts or {}, attrs or {}, acc,
                               source=f"layer{idx}"))
        return out

    def dense(self, x: str, m: int, khot: int, op: str = "dense") -> str:
        spec = self.tensors[x]
        w = self.weights((m, spec.size), khot)
        b = self.bias(m) if self.rng.random() < 0.7 else None
        consts = {"weight": w} | ({"bias": b} if b else {})
        acc = lossless_acc_format(w.codes, w.fmt, spec.fmt, b.codes if b else None, b.fmt if b else None)
        return self.add(op, [x], (m,), consts, {"khot": khot}, acc)

    def conv(self, x: str, o: int, khot: int, op: str = "conv2d") -> str:
        c, h, wd = self.tensors[x].shape
        k = int(self.rng.choice([1, 2, 3]))
        k = min(k, h, wd)
        pad = int(self.rng.integers(0, (k - 1) // 2 + 1))
        st = int(self.rng.choice([1, 1, 2]))
        w = self.weights((o, c, k, k), khot)
        b = self.bias(o) if self.rng.random() < 0.7 else None
        consts = {"weight": w} | ({"bias": b} if b else {})
        acc = lossless_acc_format(w.codes.reshape(o, -1), w.fmt, self.tensors[x].fmt, b.codes if b else None,
                                  b.fmt if b else None)
        shape = (o, conv_out_size(h, k, st, pad), conv_out_size(wd, k, st, pad))
        return self.add(op, [x], shape, consts, {"stride": (st, st), "padding": (pad, pad), "khot": khot}, acc)

    def scale_shift(self, x: str, op: str = "scale_shift") -> str:
        spec = self.tensors[x]
        c = spec.shape[0]
        s = self.weights((c,), 0)
        h = self.bias(c)
        return self.add(op, [x], spec.shape, {"scale": s, "shift": h}, {}, scale_shift_format(spec.fmt, s.fmt, h.fmt))

    def maxpool(self, x: str, op: str) -> str:
        c, h, w = self.tensors[x].shape
        k = 2 if min(h, w) >= 2 else 1
        shape = (c, conv_out_size(h, k, k, 0), conv_out_size(w, k, k, 0))
        attrs = {"kernel": (k, k), "stride": (k, k), "padding": (0, 0)}
        return self.add(op, [x], shape, {}, attrs, fmt=self.tensors[x].fmt if self.rng.random() < 0.5 else None)

    def avgpool(self, x: str, op: str) -> str:
        c, h, w = self.tensors[x].shape
        k = 2 if min(h, w) >= 2 else 1
        shape = (c, conv_out_size(h, k, k, 0), conv_out_size(w, k, k, 0))
        attrs = {"kernel": (k, k), "stride": (k, k), "padding": (0, 0)}
        fr = FxFormat(1, 1 - 2 * (k.bit_length() - 1), signed=False)  # code 1 == 1/(k*k) for k in {1, 2}
        recip = Constant(np.array([1], dtype=np.int64), fr)
        return self.add(op, [x], shape, {"recip": recip}, attrs, avgpool_format(self.tensors[x].fmt, fr, k * k))

    def clip(self, x: str, op: str) -> str:
        spec = self.tensors[x]
        f = spec.fmt
        lo = int(self.rng.integers(f.min_code, 1)) if f.signed else 0
        hi = int(self.rng.integers(max(lo, 0), f.max_code, endpoint=True))
        return self.add(op, [x], spec.shape, attrs={"lo": lo, "hi": hi})

    def residual(self, x: str, khot: int, op: str) -> str:
        """x + linear(x) with x's shape: 3x3 (pad 1) or 1x1 conv for images, a square dense layer for vectors."""
        spec = self.tensors[x]
        if len(spec.shape) == 3:
            c = spec.shape[0]
            w = self.weights((c, c, 3, 3), khot) if min(spec.shape[1:]) >= 3 else self.weights((c, c, 1, 1), khot)
            k = w.codes.shape[2]
            acc = lossless_acc_format(w.codes.reshape(c, -1), w.fmt, spec.fmt)
            linear = _first(C.LINEAR, 3).op
            y = self.add(linear, [x], spec.shape, {"weight": w}, {"stride": (1, 1), "padding": ((k - 1) // 2,) * 2,
                                                                  "khot": khot}, acc)
        else:
            y = self.dense(x, spec.shape[0], khot, _first(C.LINEAR, 1).op)
        return self.add(op, [x, y], spec.shape)


def _legacy_graph(seed: int, kind: str, max_layers: int, khot_prob: float, max_width: int) -> Graph:
    rng = np.random.default_rng(seed)
    if kind == "any":
        kind = "cnn" if rng.random() < 0.5 else "mlp"
    b = _Builder(rng, max_width)
    if kind == "cnn":
        shape: tuple[int, ...] = (int(rng.integers(1, 3, endpoint=True)), int(rng.integers(4, 7)), int(rng.integers(4, 7)))
    else:
        shape = (int(rng.integers(2, 16, endpoint=True)),)
    x = b.tensor(shape, random_format(rng, 2, 8))
    inp = x
    layers = int(rng.integers(1, max_layers, endpoint=True))
    menus = {r: _legacy_menu(r) for r in (1, 3)}
    for _ in range(layers):
        khot = int(rng.integers(1, 3, endpoint=True)) if rng.random() < khot_prob else 0
        choice = str(rng.choice(menus[len(b.tensors[x].shape)]))
        x = GENERATORS[choice].legacy(b, x, khot)
        if len(b.tensors[x].shape) == 3 and rng.random() < 0.25:
            x = _vectorizer().legacy(b, x, 0)
    if len(b.tensors[x].shape) == 3:
        x = _vectorizer().legacy(b, x, 0)
        x = _first(C.LINEAR, 1).legacy(b, x, 0, head=True)
    g = Graph(f"random_{kind}_{seed}", (inp,), (x,), b.tensors, tuple(b.nodes), {"generator": "qfx.ir.random_graph",
                                                                                  "seed": seed})
    return g.validate()


def _legacy_menu(rank: int) -> list[str]:
    """Generator names in slot order: the menu ``rng.choice`` draws from (as literal lists did before)."""
    slots = sorted((s, name) for name, gen in GENERATORS.items() for s in gen.legacy_slots.get(rank, ()))
    return [name for _, name in slots]


# ================================================================================================ informative stream

#: share of overflowed codes a calibrated format may have (the largest share <= the target, over power-of-two
#: ranges): overflow in most layers exercises the overflow modes, a third of the layers never overflow
_OVERFLOW_TARGETS = (0.0, 0.03, 0.08)
#: a layer's output is redrawn when more of its codes are zero than this (relu of mostly negative data, ...)
_LAYER_MAX_ZERO = 0.7
_LAYER_MAX_OVERFLOW = 0.09
#: share of element-moving layers (pools, flatten, reshape, gathers) that keep their input format (a wire); the
#: others cast to a calibrated format, which exercises rounding and overflow on them too
_KEEP_FORMAT = 0.25
#: size limits that keep RTL builds of informative graphs about as small as the seed-compatible ones
_MAX_ELEMENTS = 160
_MAX_WEIGHTS = 1600


class _Reject(Exception):
    """A layer draw gave degenerate data; the caller rolls back and draws again."""


class _Informed:
    """Builds a graph node by node on calibration data: every new node is run at once (golden functions), its
    format chosen from its exact values, and its output checked."""

    def __init__(self, rng: np.random.Generator, max_width: int, khot_prob: float, shape: tuple[int, ...],
                 fin: FxFormat, focus: "Focus | None" = None) -> None:
        self.rng = rng
        self.focus = focus
        self.max_width = max_width
        self.khot_prob = khot_prob
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.inp = self.tensor(shape, fin)
        stub = Graph("stub", (self.inp,), (self.inp,), self.tensors, (), {"edge_inputs": FULL_EDGES})
        self.env: dict[str, np.ndarray] = {self.inp: random_inputs(stub, N_CALIBRATION, seed=0)}

    # ---------------------------------------------------------------- bookkeeping
    def tensor(self, shape: tuple[int, ...], fmt: FxFormat) -> str:
        name = f"t{len(self.tensors)}"
        self.tensors[name] = TensorSpec(name, shape, fmt)
        return name

    def mark(self) -> tuple[int, int]:
        return len(self.tensors), len(self.nodes)

    def rollback(self, mark: tuple[int, int]) -> None:
        for name in list(self.tensors)[mark[0]:]:
            del self.tensors[name]
            self.env.pop(name, None)
        del self.nodes[mark[1]:]

    def spec(self, x: str) -> TensorSpec:
        return self.tensors[x]

    def codes(self, x: str) -> np.ndarray:
        return self.env[x]

    def values(self, x: str) -> np.ndarray:
        return self.spec(x).fmt.from_int(self.env[x])

    def _graph(self, out: str, extra: Node | None = None) -> Graph:
        nodes = tuple(self.nodes) + ((extra,) if extra else ())
        return Graph("partial", (self.inp,), (out,), self.tensors, nodes)

    # ---------------------------------------------------------------- nodes
    def exact(self, op: str, inputs: list[str], shape: tuple[int, ...], consts=None, attrs=None,
              acc: FxFormat | None = None) -> tuple[np.ndarray, int]:
        """(exact values the node would produce before its cast, float64 batch-first; the fraction bits holding
        them), without adding the node."""
        from qfx.ir.informative import exact_frac, probe_format

        out = f"t{len(self.tensors)}"
        node = Node("probe", op, tuple(inputs), out, consts or {}, attrs or {}, acc)
        self.tensors[out] = TensorSpec(out, shape, probe_format(0))
        try:
            g = self._graph(out, node)
            f = exact_frac(g, node)
            fmt = probe_format(max(-200, min(40, f)))
            xs = [self.env[t] for t in inputs]
            y = op_def(op).golden(g, node, xs, [self.tensors[t].fmt for t in inputs], fmt)
            return fmt.from_int(y), f
        finally:
            del self.tensors[out]

    def emit(self, op: str, inputs: list[str], shape: tuple[int, ...], consts=None, attrs=None,
             acc: FxFormat | None = None, fmt: FxFormat | None = None, final: bool = False,
             signed: bool | None = None) -> str:
        """Append a node; its format is ``fmt`` or calibrated on its exact values. Raises ``_Reject`` when the
        output overflows or is zero too often, or (outside padding ops) an element never changes."""
        from qfx.ir.informative import cast_stats

        if int(np.prod(shape)) > _MAX_ELEMENTS:
            raise _Reject(op)
        if fmt is None:
            v, f = self.exact(op, inputs, shape, consts, attrs, acc)
            fmt = self.pick(v, final=final, signed=signed, exact=f, op=op)
        out = self.tensor(shape, fmt)
        idx = len(self.nodes)
        node = Node(f"n{idx}_{op}", op, tuple(inputs), out, consts or {}, attrs or {}, acc, source=f"layer{idx}")
        g = self._graph(out, node)
        xs = [self.env[t] for t in inputs]
        y = op_def(op).golden(g, node, xs, [self.tensors[t].fmt for t in inputs], fmt)
        st = cast_stats(g, node, xs, fmt)
        flat = y.reshape(len(y), -1)
        if st["overflow"] > _LAYER_MAX_OVERFLOW or np.mean(flat == 0) > _LAYER_MAX_ZERO:
            del self.tensors[out]
            raise _Reject(op)
        if not op_def(op).is_(C.GATHER) and (flat.min(axis=0) == flat.max(axis=0)).any():
            del self.tensors[out]
            raise _Reject(op)  # an element that never changes hides every fault behind it
        if len(np.unique(flat)) < min(8, 1 << (fmt.width - 1)):
            del self.tensors[out]
            raise _Reject(op)  # a bottleneck: few codes left to carry a fault to the outputs
        self.nodes.append(node)
        self.env[out] = y
        return out

    # ---------------------------------------------------------------- choices
    def khot(self) -> int:
        return int(self.rng.integers(1, 3, endpoint=True)) if self.rng.random() < self.khot_prob else 0

    def modes(self) -> tuple[str, str]:
        return str(self.rng.choice(ROUNDING_MODES)), str(self.rng.choice(OVERFLOW_MODES))

    def keep(self, op: str, final: bool) -> bool:
        """Whether an element-moving layer keeps its input format (never for the focus op: it must cast)."""
        keep = not final and self.rng.random() < _KEEP_FORMAT
        return keep and not (self.focus is not None and self.focus.op == op)

    def pick(self, v: np.ndarray, final: bool = False, signed: bool | None = None, exact: int | None = None,
             wmin: int = 2, wmax: int | None = None, op: str | None = None) -> FxFormat:
        """A format for values ``v``: the integer bits chosen so that a random small share (none, up to 3 %, up to
        8 %) overflows, signed unless at most 6 % of the values are negative, width random (sometimes just 1-2 bits
        short of exact, so rounding ties are frequent; 2-3 bits rarely), modes random. The output of the focus op
        (``Focus``) gets the focus's modes and signedness, a non-zero overflow share and, where the exact
        fraction bits are known, a width one bit short of the values' own resolution (rounding with ties)."""
        rng = self.rng
        forced = self.focus if self.focus is not None and op == self.focus.op else None
        wmax = min(wmax or self.max_width, self.max_width)
        wmin = min(max(wmin, 7 if final else 2), wmax)
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        neg = float(np.mean(v < 0)) if v.size else 0.0
        if forced is not None:
            signed = forced.signed
        if signed is None:  # unsigned when (almost) all values are >= 0; the few negatives then overflow
            signed = True if neg > 0.06 else bool(rng.random() < 0.4)
        q = float(rng.choice(_OVERFLOW_TARGETS[1:] if forced is not None else _OVERFLOW_TARGETS))
        if not signed:
            q = max(q, neg)
        lo_i, hi_i = -60, 60
        while lo_i < hi_i:  # smallest int_bits with share outside the range <= q (monotone in int_bits)
            mid = (lo_i + hi_i) // 2
            top = np.ldexp(1.0, mid - 1) if signed else np.ldexp(1.0, mid)
            bot = -np.ldexp(1.0, mid - 1) if signed else 0.0
            if np.mean((v < bot) | (v >= top)) <= q:
                hi_i = mid
            else:
                lo_i = mid + 1
        ib = lo_i
        if forced is not None and exact is not None:
            f = exact  # the values' own resolution (may be coarser than the exact fraction bits): one bit short
            while f > -60 and v.size and np.all(np.ldexp(v, f - 1) == np.round(np.ldexp(v, f - 1))):
                f -= 1
            w = max(ib + f - 1, 1)
        elif exact is not None and rng.random() < 0.3:
            w = ib + exact - int(rng.integers(1, 2, endpoint=True))
        elif wmin <= 3 and (rng.random() < 0.15 or wmax < 4):  # tiny formats, rarely: each is a bottleneck
            w = int(rng.integers(wmin, min(3, wmax), endpoint=True))
        else:
            w = int(rng.integers(max(wmin, 4), wmax, endpoint=True))
        w = max(wmin, min(wmax, w, 63 if not signed else 64))
        r, o = self.modes() if forced is None else (forced.rounding, forced.overflow)
        return FxFormat(w, ib, signed, r, o)

    def offsets(self, v: np.ndarray, axis_size: int) -> np.ndarray:
        """Per-channel offsets that move a random quantile (20 to 80 %; a quarter of the time 0 to 5 %) of each
        channel to zero: biases and BN shifts chosen so that the following cast and any ReLU see both signs, or
        almost only positive values (an unsigned cast whose few negatives overflow)."""
        u = self.rng.uniform(0.2, 0.8, size=axis_size)
        if self.rng.random() < 0.25:  # (almost) all positive: lets the next cast be unsigned
            u = self.rng.uniform(0.0, 0.05, size=axis_size)
        per = v.reshape(len(v), axis_size, -1).transpose(1, 0, 2).reshape(axis_size, -1)
        return -np.array([np.quantile(per[j], u[j]) for j in range(axis_size)])

    def constant_for(self, values: np.ndarray, wmin: int = 3, wmax: int = 10) -> Constant:
        """A signed constant format holding ``values`` (random width) and their nearest codes."""
        w = int(self.rng.integers(wmin, wmax, endpoint=True))
        m = float(np.max(np.abs(values))) if values.size else 0.0
        ib = int(np.floor(np.log2(m))) + 2 if m > 0 else 1
        r, o = self.modes()
        f = FxFormat(w, ib, True, r, o)
        return Constant(np.clip(np.round(np.ldexp(values, f.frac_bits)), f.min_code, f.max_code).astype(np.int64), f)

    def weights(self, shape: tuple[int, ...], khot: int, axis0_nonzero: bool = True) -> Constant:
        """Uniform codes of a random signed 2..8-bit format; every output row has a non-zero weight."""
        fw = random_format(self.rng, 2, 8, signed=True)
        codes = self.rng.integers(fw.min_code, fw.max_code, size=shape, endpoint=True, dtype=np.int64)
        if khot:
            codes = khot_project(codes, khot, fw.min_code, fw.max_code)
        rows = codes.reshape(shape[0], -1)
        for j in np.flatnonzero(~rows.any(axis=1)) if axis0_nonzero else ():
            rows[j, int(self.rng.integers(rows.shape[1]))] = fw.max_code if khot == 0 else 1
        return Constant(rows.reshape(shape), fw)


# ---------------------------------------------------------------------------------------------- informed generators

def _linear(b: _Informed, x: str, op: str, w: Constant, shape: tuple[int, ...], attrs: dict, final: bool) -> str:
    """Weights -> (random) bias from the pre-bias data -> lossless accumulator -> calibrated cast."""
    fx = b.spec(x).fmt
    o = w.codes.shape[0]
    wc = w.codes.reshape(o, -1)
    consts = {"weight": w}
    if b.rng.random() < 0.7:
        acc0 = lossless_acc_format(wc, w.fmt, fx)
        v, _ = b.exact(op, [x], shape, consts, attrs, acc0)
        consts["bias"] = b.constant_for(b.offsets(v, o))
    bc = consts.get("bias")
    acc = lossless_acc_format(wc, w.fmt, fx, bc.codes if bc else None, bc.fmt if bc else None)
    return b.emit(op, [x], shape, consts, attrs, acc, final=final)


def _gen_dense(b: _Informed, x: str, op: str, same_shape: bool = False, final: bool = False) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 1:
        return None
    m = spec.size if same_shape else int(b.rng.integers(1, 8 if final else 16, endpoint=True))
    if m * spec.size > _MAX_WEIGHTS:
        return None
    khot = b.khot()
    return _linear(b, x, op, b.weights((m, spec.size), khot), (m,), {"khot": khot}, final)


def _gen_conv(b: _Informed, x: str, op: str, same_shape: bool = False, final: bool = False) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    c, h, wd = spec.shape
    rng = b.rng
    if same_shape:
        k = int(rng.choice([1, 3])) if min(h, wd) >= 3 else 1
        kh = kw = k
        st, pd, o = (1, 1), ((k - 1) // 2,) * 2, c
    else:
        o = int(rng.integers(1, 4, endpoint=True))
        kh = min(int(rng.choice([1, 2, 3, 3])), h)
        kw = kh if rng.random() < 0.75 else int(rng.choice([1, 2, 3]))
        kw = min(kw, wd)
        s = int(rng.choice([1, 1, 2]))
        st = (s, s) if rng.random() < 0.8 else (s, 3 - s)
        pd = (int(rng.integers(0, kh // 2, endpoint=True)), int(rng.integers(0, kw // 2, endpoint=True)))
    try:
        shape = (o, conv_out_size(h, kh, st[0], pd[0]), conv_out_size(wd, kw, st[1], pd[1]))
    except QfxError:
        return None
    if o * c * kh * kw * shape[1] * shape[2] > 1.5 * _MAX_WEIGHTS:  # the parallel RTL unrolls every pixel
        return None
    khot = b.khot()
    attrs = {"stride": st, "padding": pd, "khot": khot}
    return _linear(b, x, op, b.weights((o, c, kh, kw), khot), shape, attrs, final)


def _gen_scale_shift(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    c = spec.shape[0]
    fs = random_format(b.rng, 2, 8, signed=True)
    codes = b.rng.integers(fs.min_code, fs.max_code, size=(c,), endpoint=True, dtype=np.int64)
    codes[codes == 0] = fs.max_code
    s = Constant(codes, fs)
    prod = b.values(x) * fs.from_int(codes).reshape((1, c) + (1,) * (len(spec.shape) - 1))
    h = b.constant_for(b.offsets(prod, c), 2, 10)
    return b.emit(op, [x], spec.shape, {"scale": s, "shift": h}, {}, scale_shift_format(spec.fmt, fs, h.fmt),
                  final=final)


def _gen_relu(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    neg = float(np.mean(b.codes(x) < 0))
    if not 0.1 <= neg <= 0.7:  # mostly positive: relu would be the identity; mostly negative: mostly zero
        return None
    return b.emit(op, [x], b.spec(x).shape, final=final)


def _gen_clip(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    c = b.codes(x).reshape(-1)
    # plateaus of 1-20 %: a calibrated output range may cut them; aimed at (a Focus), 1-3 %, which a calibrated range
    # with a few % overflow can leave outside (a wide plateau at a bound makes overflow all or nothing)
    aimed = b.focus is not None and b.focus.op == op
    lo = int(np.quantile(c, b.rng.uniform(0.01, 0.03 if aimed else 0.2)))
    hi = int(np.quantile(c, b.rng.uniform(0.97 if aimed else 0.8, 0.99)))
    if lo >= hi:
        return None
    return b.emit(op, [x], b.spec(x).shape, attrs={"lo": lo, "hi": hi}, final=final)


def _gen_cast(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    """A plain requantization (or any no-attribute element-wise op): a calibrated new format."""
    return b.emit(op, [x], b.spec(x).shape, final=final)


def _window(b: _Informed, h: int, w: int, kmax: int = 3) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    rng = b.rng
    kh = min(int(rng.integers(1, kmax, endpoint=True)), h)
    kw = kh if rng.random() < 0.7 else min(int(rng.integers(1, kmax, endpoint=True)), w)
    kw = min(kw, w)
    if kh * kw == 1:
        kh, kw = min(2, h), min(2, w)
    st = (int(rng.integers(1, kh, endpoint=True)), int(rng.integers(1, kw, endpoint=True)))
    if rng.random() < 0.5:
        st = (kh, kw)
    pd = (int(rng.integers(0, (kh - 1) // 2, endpoint=True)), int(rng.integers(0, (kw - 1) // 2, endpoint=True)))
    return (kh, kw), st, pd


def _gen_maxpool(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    c, h, w = spec.shape
    k, st, pd = _window(b, h, w)
    if k == (1, 1):
        return None
    shape = (c, conv_out_size(h, k[0], st[0], pd[0]), conv_out_size(w, k[1], st[1], pd[1]))
    attrs = {"kernel": k, "stride": st, "padding": pd}
    keep = b.keep(op, final)
    return b.emit(op, [x], shape, {}, attrs, fmt=spec.fmt if keep else None, final=final)


def _gen_avgpool(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    c, h, w = spec.shape
    k, st, pd = _window(b, h, w)
    n = k[0] * k[1]
    if n == 1:
        return None
    wr = int(b.rng.integers(3, 10, endpoint=True))
    e = int(np.ceil(np.log2(n)))  # 1/n in [2**-e, 2**(1-e)): unsigned, int bits 1 - e
    fr = FxFormat(wr, 1 - e, signed=False)
    code = min(fr.max_code, int(round(np.ldexp(1.0 / n, fr.frac_bits))))
    recip = Constant(np.array([code], dtype=np.int64), fr)
    shape = (c, conv_out_size(h, k[0], st[0], pd[0]), conv_out_size(w, k[1], st[1], pd[1]))
    attrs = {"kernel": k, "stride": st, "padding": pd}
    return b.emit(op, [x], shape, {"recip": recip}, attrs, avgpool_format(spec.fmt, fr, n), final=final)


def _branch(b: _Informed, x: str) -> str | None:
    """A same-shape branch of ``x`` for a binary op: a LINEAR layer or a one-input element-wise op (not a
    wiring op), drawn from the generator table."""
    rank = len(b.spec(x).shape)
    cands = [(n, g) for n, g in _available().items() if rank in g.ranks and _branchable(g.op)]
    w = np.array([g.weight for _, g in cands])
    for i in b.rng.choice(len(cands), size=len(cands), replace=False, p=w / w.sum()):
        name, g = cands[int(i)]
        m = b.mark()
        try:
            y = g.informed(b, x, g.op, same_shape=True)
        except (_Reject, QfxError):
            b.rollback(m)
            continue
        if y is not None and b.spec(y).shape == b.spec(x).shape:
            return y
        b.rollback(m)
    return None


def _branchable(op: str) -> bool:
    d = op_def(op)
    return d.n_inputs == 1 and (d.is_(C.LINEAR) or (d.is_(C.ELEMENTWISE) and not d.is_(C.WIRING)))


def _gen_binary(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    """x (op) branch(x): residual add, difference, gating product."""
    y = _branch(b, x)
    if y is None:
        return None
    pair = [x, y] if b.rng.random() < 0.7 else [y, x]
    return b.emit(op, pair, b.spec(x).shape, final=final)


def _gen_matmul(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    """x @ branch(x) over the last two axes of a (C, H, H) tensor (square, so the product keeps the shape)."""
    from qfx.ops.matmul import matmul_acc_format

    spec = b.spec(x)
    if len(spec.shape) != 3 or spec.shape[1] != spec.shape[2]:
        return None
    y = _branch(b, x)
    if y is None:
        return None
    pair = [x, y] if b.rng.random() < 0.5 else [y, x]
    fa, fb = (b.spec(t).fmt for t in pair)
    return b.emit(op, pair, spec.shape, acc=matmul_acc_format(fa, fb, spec.shape[2]), final=final)


def _gen_flatten(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    keep = b.keep(op, final)
    return b.emit(op, [x], (spec.size,), fmt=spec.fmt if keep else None, final=final)


def _gen_reshape(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    n = spec.size
    cands: list[tuple[int, ...]] = []
    if len(spec.shape) == 3:
        c, h, w = spec.shape
        if h != w:
            cands.append((c, w, h))
        if c > 1:
            cands.append((1, c * h, w))
        if not cands:
            cands.append((n,))
    else:
        cands += [(1, a, n // a) for a in range(2, n) if n % a == 0 and n // a >= 2 and a <= 8 and n // a <= 8]
    if not cands:
        return None
    shape = cands[int(b.rng.integers(len(cands)))]
    keep = b.keep(op, final)
    return b.emit(op, [x], shape, {}, {"shape": shape}, fmt=spec.fmt if keep else None, final=final)


def _gen_concat(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    y = _branch(b, x)
    if y is None:
        return None
    ax = int(b.rng.integers(0, len(spec.shape)))
    if len(spec.shape) == 3 and spec.shape[ax] * 2 > 10:
        ax = 0
    shape = list(spec.shape)
    shape[ax] *= 2
    return b.emit(op, [x, y], tuple(shape), {}, {"axis": ax}, final=final)


def _gen_upsample(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    c, h, w = spec.shape
    opts = [(sh, sw) for sh in (1, 2) for sw in (1, 2) if (sh, sw) != (1, 1) and h * sh <= 10 and w * sw <= 10]
    if not opts:
        return None
    s = opts[int(b.rng.integers(len(opts)))]
    keep = b.keep(op, final)
    return b.emit(op, [x], (c, h * s[0], w * s[1]), {}, {"scale": s}, fmt=spec.fmt if keep else None, final=final)


def _gen_zeropad(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    c, h, w = spec.shape
    p = tuple(int(v) for v in b.rng.integers(0, 1, size=4, endpoint=True))
    if not any(p):
        p = (1, 0, 0, 1)
    keep = b.keep(op, final)
    return b.emit(op, [x], (c, h + p[0] + p[1], w + p[2] + p[3]), {}, {"pads": p},
                  fmt=spec.fmt if keep else None, final=final)


def _gen_transpose(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3:
        return None
    perms = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
    p = perms[int(b.rng.integers(len(perms)))]
    keep = b.keep(op, final)
    return b.emit(op, [x], tuple(spec.shape[i] for i in p), {}, {"perm": p}, fmt=spec.fmt if keep else None,
                  final=final)


def _gen_slice(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    spec = b.spec(x)
    if len(spec.shape) != 3 or spec.shape[1] < 2:
        return None
    c, h, w = spec.shape
    keep = b.keep(op, final)
    return b.emit(op, [x], (c, (h + 1) // 2, w), {}, {"starts": (0, 0, 0), "stops": (c, h, w), "steps": (1, 2, 1)},
                  fmt=spec.fmt if keep else None, final=final)


def _gen_lut(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    from qfx.fixed.tables import FUNCTIONS, build_table, evaluate

    spec = b.spec(x)
    if spec.fmt.width > 8:  # one table entry per input code
        return None
    fn = str(b.rng.choice(sorted(FUNCTIONS)))
    used = evaluate(fn, b.values(x).reshape(-1))
    if not np.all(np.isfinite(used)):
        return None
    tf = b.pick(used, wmin=6, wmax=12)  # the table's own format, calibrated on the values the data reach
    table = Constant(build_table(fn, spec.fmt, tf), tf)
    return b.emit(op, [x], spec.shape, {"table": table}, {"fn": fn}, final=final)


def _gen_softmax(b: _Informed, x: str, op: str, final: bool = False, **_: object) -> str | None:
    """Softmax over a vector: output format calibrated on the float softmax, tables built for it
    (``qfx.ops.softmax.softmax_tables``; imported here only, the op module may not be registered)."""
    from qfx.ops.softmax import softmax_tables

    spec = b.spec(x)
    if len(spec.shape) != 1 or spec.size < 2 or spec.fmt.width > 8:
        return None
    v = b.values(x)
    e = np.exp(v - v.max(axis=1, keepdims=True))
    of = b.pick(e / e.sum(axis=1, keepdims=True), final=final, signed=False, wmin=6, op=op)
    et, rt, shift = softmax_tables(spec.size, spec.fmt, of)
    return b.emit(op, [x], spec.shape, {"exp_table": et, "recip_table": rt}, {"shift": shift}, fmt=of, final=final)


# ================================================================================================ the table

def _legacy_unary(b: _Builder, x: str, khot: int, op: str) -> str:
    return b.add(op, [x], b.tensors[x].shape)


def _legacy_flatten(b: _Builder, x: str, khot: int, op: str) -> str:
    return b.add(op, [x], (b.tensors[x].size,), fmt=b.tensors[x].fmt)


def _bind(fn: Callable[..., str], op: str) -> Callable[..., str]:
    def call(b, x, khot, head=False):
        return fn(b, x, khot, op, head) if fn is _legacy_dense else fn(b, x, khot, op)
    return call


def _legacy_dense(b: _Builder, x: str, khot: int, op: str, head: bool = False) -> str:
    return b.dense(x, int(b.rng.integers(1, 8 if head else 16, endpoint=True)), khot, op)


def _legacy_conv(b: _Builder, x: str, khot: int, op: str) -> str:
    return b.conv(x, int(b.rng.integers(1, 4, endpoint=True)), khot, op)


def _mk(op: str, ranks: tuple[int, ...], informed: Callable[..., str | None], weight: float = 1.0,
        legacy: Callable[..., str] | None = None, slots: Mapping[int, tuple[int, ...]] | None = None,
        to_vector: bool = False) -> Generator:
    return Generator(op, frozenset(ranks), informed, weight, _bind(legacy, op) if legacy else None,
                     MappingProxyType(dict(slots or {})), to_vector)


#: generator name (as ``OpDef.generators`` lists it) -> Generator. ``legacy_slots`` reproduce the menus of the
#: seed-compatible stream: images ["conv2d" x2, scale_shift, relu, maxpool2d, avgpool2d, add, clip, quant], vectors
#: ["dense" x2, relu, add, scale_shift, quant]; ops without slots appear only in informative graphs.
GENERATORS: dict[str, Generator] = {
    "dense": _mk("dense", (1,), _gen_dense, 2.0, _legacy_dense, {1: (0, 1)}),
    "conv2d": _mk("conv2d", (3,), _gen_conv, 3.0, _legacy_conv, {3: (0, 1)}),
    "scale_shift": _mk("scale_shift", (1, 3), _gen_scale_shift, 1.0,
                       lambda b, x, k, op: b.scale_shift(x, op), {3: (2,), 1: (4,)}),
    "relu": _mk("relu", (1, 3), _gen_relu, 1.0, _legacy_unary, {3: (3,), 1: (2,)}),
    "clip": _mk("clip", (1, 3), _gen_clip, 0.7, lambda b, x, k, op: b.clip(x, op), {3: (7,)}),
    "quant": _mk("quant", (1, 3), _gen_cast, 0.7, _legacy_unary, {3: (8,), 1: (5,)}),
    "add": _mk("add", (1, 3), _gen_binary, 1.0, lambda b, x, k, op: b.residual(x, k, op), {3: (6,), 1: (3,)}),
    "sub": _mk("sub", (1, 3), _gen_binary, 0.6),
    "mul": _mk("mul", (1, 3), _gen_binary, 0.6),
    "maxpool2d": _mk("maxpool2d", (3,), _gen_maxpool, 1.3, lambda b, x, k, op: b.maxpool(x, op), {3: (4,)}),
    "avgpool2d": _mk("avgpool2d", (3,), _gen_avgpool, 1.3, lambda b, x, k, op: b.avgpool(x, op), {3: (5,)}),
    "flatten": _mk("flatten", (3,), _gen_flatten, 0.3, _legacy_flatten, to_vector=True),
    "reshape": _mk("reshape", (1, 3), _gen_reshape, 0.5),
    "concat": _mk("concat", (1, 3), _gen_concat, 0.5),
    "upsample2d": _mk("upsample2d", (3,), _gen_upsample, 0.6),
    "zeropad2d": _mk("zeropad2d", (3,), _gen_zeropad, 0.6),
    "transpose": _mk("transpose", (3,), _gen_transpose, 0.6),
    "slice": _mk("slice", (3,), _gen_slice, 0.4),
    "lut": _mk("lut", (1, 3), _gen_lut, 0.7),
    "softmax": _mk("softmax", (1,), _gen_softmax, 0.5),
    "matmul": _mk("matmul", (3,), _gen_matmul, 0.4),
}


def _available() -> dict[str, Generator]:
    """Generators whose op is registered (the table may name ops a build does not have)."""
    return {n: g for n, g in GENERATORS.items() if g.op in REGISTRY and n in REGISTRY[g.op].generators}


def _first(category: str, rank: int) -> Generator:
    """The first generator (table order) of an op in ``category`` accepting ``rank``."""
    return next(g for g in _available().values() if rank in g.ranks and op_def(g.op).is_(category))


def _vectorizer() -> Generator:
    return next(g for g in _available().values() if g.to_vector and op_def(g.op).is_(C.WIRING))


def _informed_graph(seed: int, kind: str, attempt: int, max_layers: int, khot_prob: float,
                    max_width: int, focus: Focus | None = None) -> Graph | None:
    rng = np.random.default_rng([seed, attempt, 0x1F0] if focus is None else [seed, attempt, 0x1F1])
    if kind == "cnn":
        shape: tuple[int, ...] = (int(rng.integers(1, 3, endpoint=True)), int(rng.integers(4, 7)),
                                  int(rng.integers(4, 7)))
    else:
        shape = (int(rng.integers(3, 16, endpoint=True)),)
    fin = random_format(rng, 3, min(8, max(3, max_width)))
    b = _Informed(rng, max(max_width, 4), khot_prob, shape, fin, focus)
    x = b.inp
    layers = int(rng.integers(1, max_layers, endpoint=True) if focus is None else rng.integers(2, max(max_layers, 2),
                                                                                              endpoint=True))
    gens = _available()
    conv = {n: g for n, g in gens.items() if op_def(g.op).is_(C.CONV)}
    aim = {focus.op: gens[focus.op]} if focus is not None and focus.op in gens else {}
    placed = focus is None
    for i in range(layers):
        final = i == layers - 1 and kind == "mlp"
        first = i == 0 and kind == "cnn" and rng.random() < 0.5  # a CNN starts with a convolution half the time
        menu = conv if first else gens
        if not placed and not first and not final and len(b.spec(x).shape) in aim[focus.op].ranks:
            menu = aim  # the focus op, at the first layer it fits (not the head: the head casts to >= 7 bits)
        x_new = _draw_layer(b, x, menu, final)
        if x_new is None:
            return None
        placed = placed or menu is aim
        x = x_new
        if kind == "mlp" and len(b.spec(x).shape) == 3 and final:
            return None
    if not placed:
        return None
    if kind == "cnn" and not any(op_def(n.op).is_(C.CONV) for n in b.nodes):
        return None  # a "cnn" has at least one convolution
    if len(b.spec(x).shape) == 3 or kind == "cnn":
        m = b.mark()
        try:
            if len(b.spec(x).shape) == 3:
                v = _vectorizer()
                x = v.informed(b, x, v.op)
            head = _first(C.LINEAR, 1)
            x = head.informed(b, x, head.op, final=True)
        except (_Reject, QfxError):
            b.rollback(m)
            return None
        if x is None:
            return None
    meta = {"generator": "qfx.ir.random_graph", "seed": seed, "informative": True, "attempt": attempt,
            "edge_inputs": FULL_EDGES}
    name = f"info_{kind}_{seed}"
    if focus is not None:
        meta["focus"] = list(focus)
        name += f"_{focus.op}_{focus.rounding}_{focus.overflow}_{'s' if focus.signed else 'u'}".lower()
    g = Graph(name, (b.inp,), (x,), dict(b.tensors), tuple(b.nodes), meta)
    return g.validate()


def _draw_layer(b: _Informed, x: str, gens: dict[str, Generator], final: bool) -> str | None:
    rank = len(b.spec(x).shape)
    cands = [(n, g) for n, g in gens.items() if rank in g.ranks]
    w = np.array([g.weight for _, g in cands])
    for _ in range(12):
        name, g = cands[int(b.rng.choice(len(cands), p=w / w.sum()))]
        m = b.mark()
        try:
            y = g.informed(b, x, g.op, final=final)
        except (_Reject, QfxError):  # degenerate data, or a draw the op rejects (sizes, int64 bounds)
            y = None
        if y is not None:
            return y
        b.rollback(m)
    return None


def random_graph(seed: int, kind: str = "any", max_layers: int = 4, khot_prob: float = 0.3,
                 max_width: int = 12, informative: bool = False, max_attempts: int = 400,
                 focus: Focus | None = None) -> Graph:
    """A random, valid graph. ``kind``: ``mlp`` (dense stacks), ``cnn`` (conv front end), or ``any``.

    ``informative=True``: formats, biases, shifts and bounds calibrated on data and the graph redrawn until it meets
    ``qfx.ir.informative.TARGETS`` over its ``N_CALIBRATION`` test vectors (``random_inputs(g, 300, seed=0)``,
    extended edges); the graph is named ``info_<kind>_<seed>`` and ``meta["informative"]`` records the figures.
    ``focus`` (informative only): a graph aimed at one op x rounding x overflow x signedness cell (``Focus``; the
    graphs of other seeds and of ``focus=None`` are unaffected); ``kind`` "any" then follows the op's input rank.
    """
    if not informative:
        if focus is not None:
            raise BadInputError("focus needs informative=True")
        return _legacy_graph(seed, kind, max_layers, khot_prob, max_width)
    if focus is not None:
        focus = Focus(str(focus[0]), str(focus[1]), str(focus[2]), bool(focus[3]))
        if focus.op not in _available():
            raise BadInputError(f"focus: no generator {focus.op!r} (registered: {', '.join(sorted(_available()))})")
        if focus.rounding not in ROUNDING_MODES or focus.overflow not in OVERFLOW_MODES:
            raise BadInputError(f"focus: unknown modes {focus.rounding!r}, {focus.overflow!r}")
    return _informative_graph(int(seed), str(kind), int(max_layers), float(khot_prob), int(max_width),
                              int(max_attempts), focus)


@functools.lru_cache(maxsize=512)
def _informative_graph(seed: int, kind: str, max_layers: int, khot_prob: float, max_width: int,
                       max_attempts: int, focus: Focus | None = None) -> Graph:
    """The informative stream (cached: graphs are immutable and tests and sweeps ask for the same seeds often)."""
    from qfx.ir.informative import GENERATION_TARGETS, MUTATION_KINDS, design_mutations, detects, informativeness
    from qfx.ir.interpret import run

    if kind == "any" and focus is not None:
        ranks = _available()[focus.op].ranks
        kind = "mlp" if 3 not in ranks else ("cnn" if 1 not in ranks or seed % 2 else "mlp")
    if kind == "any":
        kind = "cnn" if np.random.default_rng(seed).random() < 0.5 else "mlp"
    if kind not in ("cnn", "mlp"):
        raise BadInputError(f"kind must be 'cnn', 'mlp' or 'any', got {kind!r}")
    for attempt in range(max_attempts):
        g = _informed_graph(seed, kind, attempt, max_layers, khot_prob, max_width, focus)
        if g is None:
            continue
        x = random_inputs(g, N_CALIBRATION, seed=0)
        rep = informativeness(g, x, GENERATION_TARGETS)
        if not rep.ok:
            continue
        ref = run(g, x)
        muts = design_mutations(g)
        if len(muts) == len(MUTATION_KINDS) - (not any(n.consts for n in g.nodes)) and \
                all(detects(g, x, m, ref) for m in muts.values()):
            return g.replace(meta=dict(g.meta) | {"informativeness": rep.summary()})
    what = f" aimed at {tuple(focus)}" if focus is not None else ""
    raise GenerationError(f"no informative {kind} graph{what} for seed {seed} in {max_attempts} attempts")
