"""Is a test model informative? Per-tensor statistics over test vectors, the targets random models must meet, and
IR-level mutations (a changed constant, a shifted cast, a wrong window/row selection) to prove that the vectors
would see a wrong design.

A differential test only checks what its data exercise: a model whose output saturates or stays constant over the
test vectors agrees with a wrong implementation just as well as with a right one. ``informativeness`` measures, for
every tensor a node produces, how often its cast overflowed, how often it rounded and hit an exact tie, how many of
its codes are zero, and for every output element how many distinct codes it took. ``random_graph(...,
informative=True)`` redraws until ``GENERATION_TARGETS`` (the targets below with a margin: at most 9 % overflow,
70 % zeros, 15 % more distinct codes) hold on its calibration vectors, so other test vectors meet ``TARGETS``.

Targets (``Targets``): at most 10 % of the codes of any node's output overflowed their format (saturated or
wrapped); at most 75 % zero codes; every graph output element takes at least ``required_distinct(fmt)`` =
min(50, 2**(W-1)) distinct codes over the vectors (half the codes of a W-bit format, capped at 50: 50 for W >= 7,
32 for W = 6, 16 for W = 5, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qfx.errors import BadInputError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Constant, Graph, Node, op_def
from qfx.ir.interpret import run_all

__all__ = ["Targets", "TARGETS", "GENERATION_TARGETS", "TensorStats", "Report", "informativeness", "required_distinct", "exact_frac",
           "probe_format", "cast_stats", "Mutation", "MUTATION_KINDS", "mutation_sites", "pick_mutations",
           "run_mutated", "detects", "design_mutations", "excites"]


@dataclass(frozen=True)
class Targets:
    """What an informative model must satisfy over its test vectors."""

    max_overflow: float = 0.10
    max_zero: float = 0.75
    distinct_cap: int = 50
    #: factor on the required distinct counts (the generator asks for a margin, so other vectors pass too)
    distinct_margin: float = 1.0


TARGETS = Targets()
#: what ``random_graph(informative=True)`` demands on its calibration vectors: the targets with some margin
GENERATION_TARGETS = Targets(max_overflow=0.09, max_zero=0.7, distinct_margin=1.15)


def required_distinct(fmt: FxFormat, cap: int = TARGETS.distinct_cap) -> int:
    """Distinct codes an output element must take: half the format's codes, at most ``cap``."""
    return int(min(cap, 1 << max(0, min(fmt.width - 1, 20))))


# ------------------------------------------------------------------------------------------------ probes

def exact_frac(g: Graph, n: Node) -> int:
    """Fraction bits that hold the node's exact (pre-cast) result: its accumulator's, else those of its operands
    (summed for several operands, which covers products)."""
    if n.acc_fmt is not None:
        return n.acc_fmt.frac_bits
    fr = [g.tensor(t).fmt.frac_bits for t in n.inputs] + [c.fmt.frac_bits for c in n.consts.values()]
    return fr[0] if len(fr) == 1 else sum(max(0, f) for f in fr)


def probe_format(frac: int, width: int = 62, rounding: str = "TRN") -> FxFormat:
    """A wide signed saturating format with ``frac`` fraction bits: the golden function cast to it shows the exact
    value (or its rounding at that position) instead of the node's real cast."""
    return FxFormat(width, width - frac, True, rounding, "SAT")


def _golden(g: Graph, n: Node, xs: list[np.ndarray], fmt: FxFormat) -> np.ndarray:
    return op_def(n.op).golden(g, n, xs, [g.tensor(t).fmt for t in n.inputs], fmt)


def cast_stats(g: Graph, n: Node, xs: list[np.ndarray], fmt: FxFormat) -> dict[str, float]:
    """Shares of the node's output elements whose cast to ``fmt`` overflowed, rounded, and hit an exact tie."""
    # same fraction bits and rounding, 24 more integer bits: the rounded value before overflow handling
    wide = FxFormat(min(62, fmt.width + 24), min(62, fmt.width + 24) - fmt.frac_bits, True, fmt.rounding, "SAT")
    cw = _golden(g, n, xs, wide)
    over = (cw < fmt.min_code) | (cw > fmt.max_code)
    if fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width > 1:
        over |= cw == fmt.min_code
    d = min(exact_frac(g, n) - fmt.frac_bits, 48 - fmt.width)
    if d >= 1:
        fine = _golden(g, n, xs, probe_format(fmt.frac_bits + d))
        low = fine & ((1 << d) - 1)
        inexact, tie = float(np.mean(low != 0)), float(np.mean(low == (1 << (d - 1))))
    else:
        inexact = tie = 0.0
    return {"overflow": float(np.mean(over)) if over.size else 0.0, "inexact": inexact, "ties": tie}


# ------------------------------------------------------------------------------------------------ report

@dataclass(frozen=True)
class TensorStats:
    """One node's output over the test vectors."""

    tensor: str
    node: str
    op: str
    fmt: FxFormat
    overflow: float  # share of codes whose exact value was outside the format (saturated or wrapped)
    zero: float  # share of zero codes
    inexact: float  # share of casts that rounded
    ties: float  # share of casts at an exact rounding tie
    distinct_min: int  # fewest distinct codes any element took
    distinct: int  # distinct codes over all elements and vectors
    constant_elements: int  # elements that took one code only


@dataclass
class Report:
    """``informativeness`` result: stats per produced tensor, in node order."""

    graph: str
    vectors: int
    outputs: tuple[str, ...]
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    targets: Targets = TARGETS

    def violations(self) -> list[str]:
        """One line per missed target (empty: informative)."""
        t = self.targets
        out = []
        for s in self.tensors.values():
            where = f"{s.tensor} ({s.op} {s.node}, {s.fmt.ap_type()})"
            if s.overflow > t.max_overflow:
                out.append(f"{where}: {s.overflow:.0%} of codes overflowed (max {t.max_overflow:.0%})")
            if s.zero > t.max_zero:
                out.append(f"{where}: {s.zero:.0%} of codes are zero (max {t.max_zero:.0%})")
            need = int(np.ceil(required_distinct(s.fmt, t.distinct_cap) * t.distinct_margin))
            if s.tensor in self.outputs and s.distinct_min < need:
                out.append(f"{where}: an output element takes only {s.distinct_min} distinct codes over "
                           f"{self.vectors} vectors (need {need})")
        return out

    @property
    def ok(self) -> bool:
        return not self.violations()

    def summary(self) -> dict[str, Any]:
        """Worst figures over the graph (for meta data and reports)."""
        st = list(self.tensors.values())
        outs = [s for s in st if s.tensor in self.outputs]
        return {"vectors": self.vectors, "max_overflow": round(max((s.overflow for s in st), default=0.0), 4),
                "max_zero": round(max((s.zero for s in st), default=0.0), 4),
                "min_output_distinct": min((s.distinct_min for s in outs), default=0)}


def informativeness(graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray],
                    targets: Targets = TARGETS) -> Report:
    """Statistics of every node's output over ``inputs`` (input codes, batch-first) against ``targets``."""
    env = run_all(graph, inputs)
    n_vec = len(next(iter(env.values())))
    rep = Report(graph.name, n_vec, tuple(graph.outputs), targets=targets)
    for n in graph.nodes:
        y = env[n.output].reshape(n_vec, -1)
        fmt = graph.tensor(n.output).fmt
        cs = cast_stats(graph, n, [env[t] for t in n.inputs], fmt)
        per = [len(np.unique(y[:, j])) for j in range(y.shape[1])]
        rep.tensors[n.output] = TensorStats(
            n.output, n.name, n.op.value, fmt, cs["overflow"], float(np.mean(y == 0)) if y.size else 0.0,
            cs["inexact"], cs["ties"], int(min(per, default=0)), int(len(np.unique(y))),
            int(sum(1 for p in per if p <= 1)))
    return rep


# ------------------------------------------------------------------------------------------------ mutations

#: constant: one constant code (weight, bias, scale, shift, reciprocal, table entry) one step off, or a clip bound
#: one output step off (the bound moved by one LSB of the output format, at least one input code); shift: one node's
#: cast one bit off (the exact value doubled before rounding and overflow, as a requantizer with a shift one too
#: small computes); select: one node reads a wrong element (a row of one input channel replaced by the next row, as
#: a wrong row-mux arm does, or a vector element by its neighbour)
MUTATION_KINDS = ("constant", "shift", "select")


@dataclass(frozen=True)
class Mutation:
    """One fault injected into one node of a graph."""

    kind: str
    node: str
    detail: str
    key: str = ""  # constant name or attribute (constant); unused otherwise
    index: tuple[int, ...] = ()  # element index (constant); positions replaced, then their sources (select)
    delta: int = 0


def _const_step(code: int, fmt: FxFormat) -> int:
    return 1 if code < fmt.max_code else -1


def mutation_sites(graph: Graph, kind: str, bounds: bool = True) -> list[Mutation]:
    """Every place ``kind`` can be injected, node by node (positions in flat C order); ``bounds=False`` leaves out
    value attributes (clip bounds), keeping the constant arrays every backend emits as data."""
    out: list[Mutation] = []
    for n in graph.nodes:
        if kind == "constant":
            for k, c in n.consts.items():
                flat = c.codes.reshape(-1)
                for i, code in enumerate(flat.tolist()):
                    d = _const_step(code, c.fmt)
                    out.append(Mutation(kind, n.name, f"{k}[{i}] {code} -> {code + d}", k, (i,), d))
            for k, v in (n.attrs.items() if bounds else ()):
                d = op_def(n.op).attr_spec(k)
                if d is not None and d.kind == "int" and d.required:  # value attributes (clip bounds), not flags
                    f, fo = graph.tensor(n.inputs[0]).fmt, graph.tensor(n.output).fmt
                    step = 1 << max(0, min(f.frac_bits - fo.frac_bits, 62))
                    step = step if v + step <= f.max_code else -step
                    out.append(Mutation(kind, n.name, f"{k} {v} -> {v + step}", k, (), step))
        elif kind == "shift":
            f = graph.tensor(n.output).fmt
            out.append(Mutation(kind, n.name, f"cast to {f.ap_type()} one bit off (value x2)"))
        elif kind == "select":
            shape = graph.tensor(n.inputs[0]).shape
            size = int(np.prod(shape))
            if size < 2:
                continue
            if len(shape) == 3 and shape[1] > 1:
                c_, h, w = shape
                for ch in range(c_):
                    for r in range(h):
                        r2 = r + 1 if r + 1 < h else r - 1
                        a, b = (ch * h + r) * w, (ch * h + r2) * w
                        out.append(Mutation(kind, n.name, f"input channel {ch}: row {r} reads row {r2}", "",
                                            tuple(range(a, a + w)) + tuple(range(b, b + w))))
            else:
                for i in range(size):
                    j = i + 1 if i + 1 < size else i - 1
                    out.append(Mutation(kind, n.name, f"input element {i} reads element {j}", "", (i, j)))
        else:
            raise BadInputError(f"unknown mutation kind {kind!r}; known: {', '.join(MUTATION_KINDS)}")
    return out


def pick_mutations(graph: Graph, seed: int, inputs: np.ndarray | None = None,
                   node: str | None = None, min_share: float = 0.02) -> dict[str, Mutation]:
    """One site per kind: a node drawn uniformly among those with a site (``node`` prefers one), then a site of it
    (constants: constant arrays only, see ``mutation_sites``).

    With ``inputs``, only sites that change their own node's output for at least ``min_share`` of those vectors
    count: a fault the data cannot even excite locally (a row a stride never reads) is an equivalent mutant, not a
    test weakness, and one excited by a handful of vectors only (a rarely indexed table entry) would not carry over
    to other vectors.
    """
    rng = np.random.default_rng(seed)
    env = run_all(graph, inputs) if inputs is not None else None
    order = [n.name for n in graph.nodes]
    picked = {}
    for kind in MUTATION_KINDS:
        sites = mutation_sites(graph, kind, bounds=False)
        by_node: dict[str, list[Mutation]] = {}
        for s in sites:
            by_node.setdefault(s.node, []).append(s)
        nodes = sorted(by_node, key=order.index)
        if node in by_node:
            nodes = [node]
        for at in [nodes[int(i)] for i in rng.permutation(len(nodes))]:
            cand = by_node[at]
            found = None
            for i in rng.permutation(len(cand)):
                m = cand[int(i)]
                if env is None or excites(graph, env, m, min_share):
                    found = m
                    break
            if found is not None:
                picked[kind] = found
                break
    return picked


def excites(graph: Graph, env: Mapping[str, np.ndarray], m: Mutation, min_share: float = 0.0) -> bool:
    """True when ``m`` changes its own node's output, for more than ``min_share`` of the vectors in ``env``
    (``run_all``)."""
    n = graph.node(m.node)
    y = _apply(graph, n, [env[t] for t in n.inputs], m)
    ref = env[n.output]
    changed = (y != ref).reshape(len(ref), -1).any(axis=1)
    return bool(changed.any()) and float(changed.mean()) >= min_share


def _apply(graph: Graph, n: Node, xs: list[np.ndarray], m: Mutation | None) -> np.ndarray:
    """The node's output codes with ``m`` injected (``m`` None or for another node: the true output)."""
    fmt = graph.tensor(n.output).fmt
    if m is not None and n.name == m.node:
        if m.kind == "constant":
            n = _mutated_node(graph, n, m)
        elif m.kind == "shift":
            fmt = FxFormat(fmt.width, fmt.int_bits - 1, fmt.signed, fmt.rounding, fmt.overflow)
        else:
            x = xs[0].reshape(len(xs[0]), -1).copy()
            half = len(m.index) // 2
            x[:, list(m.index[:half])] = x[:, list(m.index[half:])]
            xs = [x.reshape(xs[0].shape)] + list(xs[1:])
    return _golden(graph, n, xs, fmt)


def _mutated_node(g: Graph, n: Node, m: Mutation) -> Node:
    if m.key in n.consts:
        c = n.consts[m.key]
        codes = c.codes.reshape(-1).copy()
        codes[m.index[0]] += m.delta
        consts = dict(n.consts) | {m.key: Constant(codes.reshape(c.codes.shape), c.fmt)}
        n2 = n.replace(consts=consts)
        d = op_def(n.op)
        if d.needs_acc and d.required_acc is not None:  # the exact result needs the (lossless) sum's new bounds
            n2 = n2.replace(acc_fmt=d.required_acc(g, n2))
        return n2
    return n.replace(attrs=dict(n.attrs) | {m.key: n.attrs[m.key] + m.delta})


def run_mutated(graph: Graph, inputs: np.ndarray, m: Mutation) -> np.ndarray | dict[str, np.ndarray]:
    """Output codes of ``graph`` with ``m`` injected (the golden interpreter, one node changed)."""
    env: dict[str, np.ndarray] = {graph.inputs[0]: np.asarray(inputs, dtype=np.int64)}
    for n in graph.nodes:
        env[n.output] = _apply(graph, n, [env[t] for t in n.inputs], m)
    if len(graph.outputs) == 1:
        return env[graph.outputs[0]]
    return {o: env[o] for o in graph.outputs}


def design_mutations(graph: Graph) -> dict[str, Mutation]:
    """The mutations a random design is tested with: ``pick_mutations`` seeded by the graph's seed, on its
    calibration vectors (``random_inputs(graph, 300, seed=0)``). Informative random graphs are drawn so that these
    are visible at the outputs on those vectors; tests check them on other vectors and in generated code."""
    from qfx.ir.interpret import random_inputs

    return pick_mutations(graph, int(graph.meta.get("seed", 0)), random_inputs(graph, 300, seed=0))


def detects(graph: Graph, inputs: np.ndarray, m: Mutation, reference: Any = None) -> bool:
    """True when some output code differs from the unmutated graph's over ``inputs``."""
    from qfx.ir.interpret import run

    ref = run(graph, inputs) if reference is None else reference
    got = run_mutated(graph, inputs, m)
    if isinstance(ref, dict):
        return any(not np.array_equal(ref[k], got[k]) for k in ref)
    return not np.array_equal(ref, got)
