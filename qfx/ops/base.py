"""``OpDef``: everything qfx knows about one IR op, in one record.

An op module (``qfx/ops/<op>.py``) builds one ``OpDef`` and calls ``register``. Every executor and backend looks the
op up here instead of switching on its type: ``Graph.validate`` reads the schema, the ``check_formats`` pass calls
``check``, ``size_accumulators`` calls ``required_acc`` and ``acc_rule``, the interpreter calls ``golden``, and the
RTL backend asks ``categories``. Backends keep their own per-op emitter tables keyed by ``OpDef.name`` (hls4ml keeps
per-layer templates in its backends the same way); ``emitter_for`` is the one lookup they use, and it fails loudly
with the op, the node and the backend when an emitter is missing. ``tests/test_op_registry.py`` fails when a
registered op lacks an emitter in any table, a generator, or a golden function.

Op modules import nothing from ``qfx.ir`` at module level (``qfx.ir.graph`` builds its ``Op`` enum from this
registry), so the dependency points one way: ir -> ops -> fixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from qfx.errors import BadInputError, FormatError, UnsupportedError
from qfx.fixed.format import FxFormat

if TYPE_CHECKING:  # pragma: no cover
    from qfx.ir.graph import Graph, Node

__all__ = ["AttrSpec", "OpDef", "register", "REGISTRY", "get", "names", "emitter_for", "node_error", "pair",
           "Categories", "Golden", "gather_golden",
           "rand_fmt", "rand_codes", "one_node_graph", "sample_shape"]

#: golden function: (graph, node, input code arrays batch-first, input formats, output format) -> output codes
Golden = Callable[["Graph", "Node", list[np.ndarray], list[FxFormat], FxFormat], np.ndarray]


class Categories:
    """Category names ops declare; backends select ops by category, never by listing op names."""

    #: weights (+ bias) with a lossless accumulator: dense layers and convolutions (BN folds into these)
    LINEAR = "linear"
    #: one output element from one input element and per-channel constants (fusable after a folded conv)
    ELEMENTWISE = "elementwise"
    #: element-wise ops the pixel-folded RTL conv kernel fuses after itself (same shape, one reader)
    FUSABLE = "fusable"
    #: only moves elements (reshape/flatten/requantize): a wire when formats agree
    WIRING = "wiring"
    #: two-operand same-shape element-wise op (residual add)
    BINARY = "binary"
    #: windowed reduction over (C, H, W)
    POOL = "pool"
    #: a convolution whose RTL can fold over output pixels
    CONV = "conv"
    #: moves elements only (an index map, ``OpDef.gather_map``): concat, upsample, zero padding, transposes
    GATHER = "gather"
    #: element-wise lookup table (``lut``): sigmoid, tanh, GELU, ... defined once by their table
    TABLE = "table"
    #: scale/shift in fixed point (BatchNorm); folds into the preceding LINEAR op when exact
    AFFINE = "affine"


@dataclass(frozen=True)
class AttrSpec:
    """One attribute: its type ("int", "pair", "ints"), default (None = required unless ``optional``)."""

    name: str
    kind: str
    default: Any = None
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class OpDef:
    """One op: schema, shape/format rules, golden semantics, categories, generator and torch twin."""

    name: str
    doc: str
    n_inputs: int
    golden: Golden
    check: Callable[["Graph", "Node"], None]
    consts: frozenset[str] = frozenset()
    optional_consts: frozenset[str] = frozenset()
    attrs: tuple[AttrSpec, ...] = ()
    needs_acc: bool = False
    #: the lossless accumulator the node needs (None: op has none)
    required_acc: Callable[["Graph", "Node"], FxFormat | None] | None = None
    #: "contains": acc_fmt must contain required_acc (it sets the sum's type); "equal": acc_fmt is informational and
    #: the golden op computes exactly, so size_accumulators sets it to the required format
    acc_rule: str = "contains"
    categories: frozenset[str] = frozenset()
    #: the qfx torch module that produces this op, and the float torch modules/functions that convert to it
    torch_twin: str = ""
    torch_float: tuple[str, ...] = ()
    #: seeds: names of random-graph generator hooks (qfx.ir.random_graph) that emit this op
    generators: tuple[str, ...] = ()
    #: support header the HLS project needs for this op ("" = none beyond qfx_types.h)
    hls_header: str = ""
    #: ``n_inputs`` is the minimum and more are allowed (concat)
    variadic: bool = False
    #: for ops that only move elements: (graph, node) -> int64 index per output element (C order) into the
    #: concatenation of the flattened inputs, -1 for a zero; every backend implements all such ops with one
    #: generic gather emitter, and the golden function is derived from it (``gather_golden``)
    gather_map: Callable[["Graph", "Node"], np.ndarray] | None = None
    #: a random one-node graph of this op (random shapes, formats, modes, attributes) for the every-op test
    sample: Callable[[np.random.Generator], "Graph"] | None = None

    def attr_spec(self, key: str) -> AttrSpec | None:
        return next((a for a in self.attrs if a.name == key), None)

    def is_(self, category: str) -> bool:
        return category in self.categories

    def validate_node(self, n: "Node") -> None:
        """Schema check: arity, constants, attributes (names and types), accumulator presence."""
        if len(n.inputs) != self.n_inputs and not (self.variadic and len(n.inputs) > self.n_inputs):
            need = f"at least {self.n_inputs}" if self.variadic else str(self.n_inputs)
            raise BadInputError(f"node {n.name!r} ({self.name}) takes {need} input(s), got {len(n.inputs)}")
        missing = self.consts - set(n.consts)
        extra = set(n.consts) - self.consts - self.optional_consts
        if missing or extra:
            raise BadInputError(f"node {n.name!r} ({self.name}) constants: missing {sorted(missing)}, "
                                f"unexpected {sorted(extra)}")
        if self.needs_acc and n.acc_fmt is None:
            raise BadInputError(f"node {n.name!r} ({self.name}) has no accumulator format")
        known = {a.name for a in self.attrs}
        unknown = sorted(set(n.attrs) - known)
        if unknown:
            raise BadInputError(f"node {n.name!r} ({self.name}) has unknown attribute(s) {', '.join(unknown)}; "
                                f"{self.name} takes {', '.join(sorted(known)) or 'none'}")
        for a in self.attrs:
            v = n.attrs.get(a.name)
            if v is None:
                if a.required:
                    raise BadInputError(f"node {n.name!r} ({self.name}) needs attribute {a.name!r}")
                continue
            _check_attr_type(n, self.name, a, v)

    def attr(self, n: "Node", key: str) -> Any:
        """Attribute value with the schema's default (a default naming another attribute takes its value)."""
        a = self.attr_spec(key)
        if a is None:
            raise KeyError(f"{self.name} has no attribute {key!r}")
        v = n.attrs.get(key)
        if v is None:
            v = a.default
            if isinstance(v, str) and self.attr_spec(v) is not None:
                v = self.attr(n, v)
        return v


def _check_attr_type(n: "Node", op: str, a: AttrSpec, v: Any) -> None:
    def bad(what: str) -> BadInputError:
        return BadInputError(f"node {n.name!r} ({op}): attribute {a.name} must be {what}, got {v!r}")

    if a.kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise bad("an integer")
    elif a.kind == "pair":
        if not isinstance(v, tuple) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in v):
            raise bad("two integers")
    elif a.kind == "ints":
        if not isinstance(v, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise bad("a list of integers")
    elif a.kind == "str":
        if not isinstance(v, str):
            raise bad("a string")
    else:  # pragma: no cover - op modules declare only the kinds above
        raise AssertionError(f"unknown attribute kind {a.kind!r}")


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise AssertionError(f"op {op.name!r} registered twice")
    if op.acc_rule not in ("contains", "equal"):
        raise AssertionError(f"op {op.name!r}: acc_rule must be 'contains' or 'equal'")
    if op.needs_acc and op.required_acc is None:
        raise AssertionError(f"op {op.name!r} needs an accumulator but has no required_acc rule")
    REGISTRY[op.name] = op
    return op


def get(name: Any) -> OpDef:
    key = getattr(name, "value", name)
    try:
        return REGISTRY[key]
    except KeyError:
        raise UnsupportedError(f"unknown op {key!r}; registered ops: {', '.join(sorted(REGISTRY))}") from None


def names() -> list[str]:
    return list(REGISTRY)


def emitter_for(table: Mapping[str, Any], n: "Node", backend: str) -> Any:
    """The backend's emitter for ``n``'s op; UnsupportedError naming op, node and backend when it has none."""
    key = getattr(n.op, "value", n.op)
    try:
        return table[key]
    except KeyError:
        raise UnsupportedError(f"the {backend} backend has no emitter for op {key!r} (node {n.name!r})") from None


# ------------------------------------------------------------------------------------------------ shared helpers
def gather_golden(g: "Graph", n: "Node", xs: list[np.ndarray], fin: list[FxFormat], out: FxFormat) -> np.ndarray:
    """Golden function of a gather op: every input cast to the output format, flattened and concatenated (with one
    zero code appended), then picked by the op's ``gather_map``."""
    from qfx.fixed import kernels as K

    batch = np.asarray(xs[0]).shape[0]
    parts = [K.cast(np.asarray(x, dtype=np.int64).reshape(batch, -1), f, out) for x, f in zip(xs, fin)]
    parts.append(np.zeros((batch, 1), dtype=np.int64))
    flat = np.concatenate(parts, axis=1)
    idx = get(n.op).gather_map(g, n)
    idx = np.where(idx < 0, flat.shape[1] - 1, idx)
    return flat[:, idx].reshape((batch,) + g.tensor(n.output).shape)


# ------------------------------------------------------------------------------------------------ samples
def rand_fmt(rng: np.random.Generator, wmin: int = 2, wmax: int = 10, signed: bool | None = None,
             int_bits: int | None = None) -> FxFormat:
    """A random format (any rounding and overflow mode); ``int_bits`` centres the binary point near a range."""
    from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES

    w = int(rng.integers(wmin, wmax, endpoint=True))
    s = bool(rng.integers(0, 2)) if signed is None else signed
    i = int(rng.integers(-2, w + 3)) if int_bits is None else int(int_bits) + int(rng.integers(-1, 2))
    return FxFormat(w, i, s, str(rng.choice(ROUNDING_MODES)), str(rng.choice(OVERFLOW_MODES)))


def rand_codes(rng: np.random.Generator, fmt: FxFormat, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(fmt.min_code, fmt.max_code, size=shape, endpoint=True, dtype=np.int64)


def sample_shape(rng: np.random.Generator) -> tuple[int, ...]:
    """A random per-sample shape: a vector or a small (C, H, W) image."""
    if rng.random() < 0.5:
        return (int(rng.integers(1, 12, endpoint=True)),)
    return (int(rng.integers(1, 3, endpoint=True)), int(rng.integers(1, 4, endpoint=True)),
            int(rng.integers(1, 4, endpoint=True)))


def one_node_graph(op: str, inputs: Sequence[tuple[tuple[int, ...], FxFormat]], out_shape: tuple[int, ...],
                   out_fmt: FxFormat, consts: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None,
                   acc: FxFormat | None = None) -> "Graph":
    """A validated graph of one ``op`` node reading graph inputs ``x0, x1, ...`` and writing ``y``."""
    from qfx.ir.graph import Graph, Node, TensorSpec

    tensors = {f"x{i}": TensorSpec(f"x{i}", shp, f) for i, (shp, f) in enumerate(inputs)}
    tensors["y"] = TensorSpec("y", out_shape, out_fmt)
    node = Node(f"{op}_0", op, tuple(tensors)[:-1], "y", consts or {}, attrs or {}, acc, source=f"sample {op}")
    return Graph(f"sample_{op}", tuple(tensors)[:-1], ("y",), tensors, (node,)).validate()


def node_error(n: "Node", msg: str) -> BadInputError:
    return BadInputError(f"node {n.name!r} ({getattr(n.op, 'value', n.op)}): {msg}")


def pair(v: Any, what: str, n: "Node") -> tuple[int, int]:
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        raise node_error(n, f"attribute {what} must be two integers, got {v!r}") from None
    if len(t) != 2:
        raise node_error(n, f"attribute {what} must be two integers, got {v!r}")
    return t


def same_shape(g: "Graph", n: "Node") -> None:
    x, y = g.tensor(n.inputs[0]).shape, g.tensor(n.output).shape
    if y != x:
        raise node_error(n, f"output shape {y} differs from input {x}")


def window_shape(g: "Graph", n: "Node", kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 channels: int) -> tuple[int, int, int]:
    """Expected (channels, Ho, Wo) of a 2-D window op over the node's (C, H, W) input."""
    from qfx.fixed.ops import conv_out_size

    x = g.tensor(n.inputs[0]).shape
    try:
        return (channels, conv_out_size(x[1], kernel[0], stride[0], padding[0]),
                conv_out_size(x[2], kernel[1], stride[1], padding[1]))
    except FormatError as exc:
        raise node_error(n, str(exc)) from None


def const_codes(n: "Node", key: str) -> tuple[np.ndarray | None, FxFormat | None]:
    c = n.consts.get(key)
    return (None, None) if c is None else (c.codes, c.fmt)

