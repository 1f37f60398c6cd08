"""IR passes: named pass objects grouped into explicit flows.

Each pass takes a ``Graph`` and returns ``(graph, report_lines)``; graphs are immutable, so a pass returns a new one.
``run_flow(graph, names)`` runs passes in order and collects the reports; ``DEFAULT_FLOW`` is what ``qfx export``
runs before any backend sees the graph.

Passes:

* ``check_formats`` — every tensor has a format, constants fit theirs, widths within the exact-path limits,
  per-op shape rules (dense/conv weight shapes, pool/conv output sizes, add operand shapes, flatten/reshape sizes).
* ``size_accumulators`` — re-derives each dense/conv accumulator by interval analysis over the actual weight codes
  (``qfx.fixed.kernels.lossless_acc_format``) and replaces one that could overflow or drop bits; scale_shift and
  avgpool accumulators are re-derived from their exact formulas. Reports the old and new format per node.
* ``fold_scale_shift`` — folds a ``scale_shift`` into the preceding dense/conv only when bit-exact (see
  ``_try_fold``); otherwise leaves it and says why.
* ``simplify_reshapes`` — collapses chains of format-preserving reshape/flatten nodes into one and drops a
  reshape back to the original shape (1-D layers put a pair around every 2-D op).
* ``remove_dead`` — drops nodes whose outputs never reach a graph output, and unused tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from qfx.errors import BadInputError, FormatError, OverflowRiskError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, op_def
from qfx.ops import Categories
from qfx.ops.base import node_error as _err

__all__ = ["Pass", "PASSES", "DEFAULT_FLOW", "run_flow", "summary", "required_acc", "acc_is_lossless",
           "FlowResult"]

Report = list[str]


@dataclass(frozen=True)
class Pass:
    """A named graph transformation (or check) with a one-line description."""

    name: str
    doc: str
    fn: Callable[[Graph], tuple[Graph, Report]]

    def __call__(self, graph: Graph) -> tuple[Graph, Report]:
        return self.fn(graph)


@dataclass(frozen=True)
class FlowResult:
    graph: Graph
    reports: dict[str, Report]

    def text(self) -> str:
        return "\n".join(f"[{k}] {line}" for k, lines in self.reports.items() for line in lines)


# ------------------------------------------------------------------------------------------------ helpers
def required_acc(graph: Graph, n: Node) -> FxFormat | None:
    """The lossless accumulator a node needs (None for ops without one): its op's ``required_acc`` rule."""
    d = op_def(n.op)
    return d.required_acc(graph, n) if d.required_acc is not None else None


def acc_is_lossless(graph: Graph, n: Node) -> bool:
    """True when ``n.acc_fmt`` holds every partial sum exactly (so accumulation order cannot matter)."""
    need = required_acc(graph, n)
    if need is None:
        return True
    if n.acc_fmt is None:
        return False
    if op_def(n.op).acc_rule == "equal":
        return True  # the golden op computes exactly; acc_fmt is informational there
    return n.acc_fmt.contains(need)


# ------------------------------------------------------------------------------------------------ check_formats
def _check_formats(g: Graph) -> tuple[Graph, Report]:
    g.validate()
    rep: Report = []
    for name, t in g.tensors.items():
        if not isinstance(t.fmt, FxFormat):
            raise FormatError(f"tensor {name!r} has no fixed-point format")
        if t.name != name:
            raise BadInputError(f"tensor record {name!r} is named {t.name!r}")
    for n in g.nodes:
        for k, c in n.consts.items():
            if not isinstance(c, Constant):
                raise _err(n, f"constant {k!r} is not a Constant")
        _check_shapes(g, n)
    rep.append(f"{len(g.nodes)} nodes, {len(g.tensors)} tensors: formats and shapes ok")
    return g, rep


def _check_shapes(g: Graph, n: Node) -> None:
    op_def(n.op).check(g, n)


# ------------------------------------------------------------------------------------------------ accumulators
def _size_accumulators(g: Graph) -> tuple[Graph, Report]:
    rep: Report = []
    nodes = []
    for n in g.nodes:
        try:
            need = required_acc(g, n)
        except FormatError as exc:
            raise FormatError(f"node {n.name!r}: no lossless accumulator fits the 64-bit exact path ({exc})") from None
        if need is None:
            nodes.append(n)
            continue
        old = n.acc_fmt
        if op_def(n.op).acc_rule == "contains":
            ok = old is not None and old.contains(need)
        else:
            ok = old is not None and old == need
        if ok:
            rep.append(f"{n.name}: acc {old.ap_type()} ok (needs {need.ap_type()})")
            nodes.append(n)
        else:
            why = "missing" if old is None else f"{old.ap_type()} could overflow or drop bits"
            rep.append(f"{n.name}: acc {why}; set to {need.ap_type()}")
            nodes.append(n.replace(acc_fmt=need))
    return g.replace(nodes=tuple(nodes)), rep


def _check_accumulators(g: Graph) -> tuple[Graph, Report]:
    """Like size_accumulators but refuses instead of replacing (for graphs whose accumulators are contractual)."""
    rep: Report = []
    for n in g.nodes:
        if not acc_is_lossless(g, n):
            raise OverflowRiskError(f"node {n.name!r}: accumulator {n.acc_fmt} can overflow; "
                                    f"it needs {required_acc(g, n)}")
        if n.acc_fmt is not None:
            rep.append(f"{n.name}: acc {n.acc_fmt.ap_type()} lossless")
    return g, rep


# ------------------------------------------------------------------------------------------------ BN folding
def _try_fold(g: Graph, prev: Node, bn: Node) -> tuple[Node | None, str]:
    """Fold ``bn(prev(x))`` into one dense/conv node when the result is provably identical bit for bit.

    ``prev`` casts its exact sum once to its output format T, then ``bn`` computes ``T(s)*scale + shift`` exactly
    and casts to the final format. Folding computes ``s*scale + shift`` exactly and casts once. The two agree for
    every input when the intermediate cast to T is lossless: T must contain ``prev``'s accumulator. New weight
    codes ``w*scale`` and bias ``b*scale + shift`` must fit int64 and the node's exact path.
    """
    t = g.tensor(prev.output)
    if len(g.consumers(prev.output)) != 1 or prev.output in g.outputs:
        return None, f"{prev.name} output is also used elsewhere"
    if prev.acc_fmt is None or not acc_is_lossless(g, prev):
        return None, f"{prev.name} accumulator is not lossless"
    if not t.fmt.contains(required_acc(g, prev)):
        return None, (f"intermediate cast to {t.fmt.ap_type()} is lossy (sum needs "
                      f"{required_acc(g, prev).ap_type()})")
    w, b = prev.consts["weight"], prev.consts.get("bias")
    sc, sh = bn.consts["scale"], bn.consts["shift"]
    o = w.codes.shape[0]
    if sc.codes.size != o:
        return None, "scale does not match output channels"
    if sc.fmt.width > 16:  # e.g. an imported dyadic requantizer: folding would widen every weight by as much
        return None, f"scale has {sc.fmt.width} bits; kept as a per-channel requantizer (cheaper than wider weights)"
    scale = sc.codes.reshape(-1).astype(object)
    shift = sh.codes.reshape(-1).astype(object)
    wbshape = (o,) + (1,) * (w.codes.ndim - 1)
    wnew = w.codes.astype(object) * scale.reshape(wbshape)
    fw_new_frac = w.fmt.frac_bits + sc.fmt.frac_bits
    # bias: b*scale (frac fb+fs) + shift (frac fsh), common frac
    fb_frac = max((b.fmt.frac_bits + sc.fmt.frac_bits) if b else sh.fmt.frac_bits, sh.fmt.frac_bits)
    bnew = np.array([(shift[i] << (fb_frac - sh.fmt.frac_bits)) for i in range(o)], dtype=object)
    if b:
        bb = b.codes.reshape(-1).astype(object) * scale
        bnew = bnew + np.array([v << (fb_frac - b.fmt.frac_bits - sc.fmt.frac_bits) for v in bb], dtype=object)
    try:
        fw_new = FxFormat.for_code_range(min(0, int(wnew.min())), max(0, int(wnew.max())), fw_new_frac, signed=True)
        fb_new = FxFormat.for_code_range(min(0, int(bnew.min())), max(0, int(bnew.max())), fb_frac, signed=True)
        wc = Constant(np.array(wnew.tolist(), dtype=np.int64).reshape(w.codes.shape), fw_new)
        bc = Constant(np.array(bnew.tolist(), dtype=np.int64).reshape(o), fb_new)
        fx = g.tensor(prev.inputs[0]).fmt
        acc = lossless_acc_format(wc.codes.reshape(o, -1), fw_new, fx, bc.codes, fb_new)
    except (FormatError, OverflowRiskError, OverflowError) as exc:
        return None, f"folded constants do not fit the exact path ({exc})"
    if acc.width > 62:
        return None, f"folded accumulator {acc.ap_type()} too wide"
    attrs = dict(prev.attrs)
    if attrs.get("khot"):
        attrs["khot"] = 0  # products by scale break the K-hot structure
    node = prev.replace(output=bn.output, consts={"weight": wc, "bias": bc}, acc_fmt=acc, attrs=attrs,
                        source=prev.source or bn.source)
    return node, "folded"


def _fold_scale_shift(g: Graph) -> tuple[Graph, Report]:
    rep: Report = []
    nodes = list(g.nodes)
    tensors = dict(g.tensors)
    i = 0
    while i < len(nodes):
        bn = nodes[i]
        if op_def(bn.op).is_(Categories.AFFINE):
            cur = g.replace(nodes=tuple(nodes), tensors=tensors)
            prev = cur.producer(bn.inputs[0])
            if prev is None or not op_def(prev.op).is_(Categories.LINEAR):
                rep.append(f"{bn.name}: kept (input is not produced by dense/conv2d)")
            else:
                new, why = _try_fold(cur, prev, bn)
                if new is None:
                    rep.append(f"{bn.name}: kept ({why})")
                else:
                    j = nodes.index(prev)
                    nodes[j] = new
                    del nodes[i]
                    tensors.pop(prev.output, None)
                    rep.append(f"{bn.name}: folded into {prev.name} (exact: intermediate cast lossless)")
                    continue
        i += 1
    if not rep:
        rep.append("no scale_shift nodes")
    return g.replace(nodes=tuple(nodes), tensors=tensors).validate(), rep


# ------------------------------------------------------------------------------------------------ reshapes
def _is_pure_reshape(g: Graph, n: Node) -> bool:
    """A reshape/flatten whose output format equals its input's: it only renames elements (C order)."""
    return (n.op in ("reshape", "flatten") and g.tensor(n.inputs[0]).fmt == g.tensor(n.output).fmt)


def _simplify_reshapes(g: Graph) -> tuple[Graph, Report]:
    """Chains of pure reshapes collapse into one (1-D layers add a pair around every 2-D op); a reshape back to
    its input's shape disappears. Graph outputs and formats are untouched."""
    nodes = list(g.nodes)
    rep: Report = []
    changed = True
    while changed:
        changed = False
        cur = g.replace(nodes=tuple(nodes))
        for i, b in enumerate(nodes):
            if not _is_pure_reshape(cur, b):
                continue
            a = cur.producer(b.inputs[0])
            if a is None or not _is_pure_reshape(cur, a) or a.output in g.outputs or len(cur.consumers(a.output)) != 1:
                continue
            src = a.inputs[0]
            shape = cur.tensor(b.output).shape
            if cur.tensor(src).shape == shape and b.output not in g.outputs:  # reshape there and back: drop both
                nodes = [n.replace(inputs=tuple(src if t == b.output else t for t in n.inputs))
                         for n in nodes if n is not a and n is not b]
                rep.append(f"{a.name} + {b.name}: removed (reshape there and back)")
            else:
                op = "flatten" if len(shape) == 1 else "reshape"
                merged = b.replace(op=op, inputs=(src,), attrs={} if op == "flatten" else {"shape": shape})
                nodes = [merged if n is b else n for n in nodes if n is not a]
                rep.append(f"{a.name} + {b.name}: merged into one {op}")
            changed = True
            break
    used = set(g.inputs) | set(g.outputs) | {t for n in nodes for t in (*n.inputs, n.output)}
    tensors = {k: v for k, v in g.tensors.items() if k in used}
    return g.replace(nodes=tuple(nodes), tensors=tensors), rep or ["no reshape chains"]


# ------------------------------------------------------------------------------------------------ dead nodes
def _remove_dead(g: Graph) -> tuple[Graph, Report]:
    live = set(g.outputs)
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if n.output in live:
            keep.append(n)
            live.update(n.inputs)
    keep.reverse()
    dropped = [n.name for n in g.nodes if n not in keep]
    used = set(g.inputs) | set(g.outputs) | {t for n in keep for t in (*n.inputs, n.output)}
    tensors = {k: v for k, v in g.tensors.items() if k in used}
    rep = [f"removed {len(dropped)} dead node(s): {', '.join(dropped)}"] if dropped else ["no dead nodes"]
    return g.replace(nodes=tuple(keep), tensors=tensors), rep


PASSES: dict[str, Pass] = {p.name: p for p in (
    Pass("check_formats", "every tensor has a format; constants fit; shapes agree", _check_formats),
    Pass("size_accumulators", "re-derive lossless accumulators by interval analysis; widen unsafe ones",
         _size_accumulators),
    Pass("check_accumulators", "refuse accumulators that could overflow", _check_accumulators),
    Pass("fold_scale_shift", "fold scale_shift into the preceding dense/conv when bit-exact", _fold_scale_shift),
    Pass("remove_dead", "drop nodes and tensors that do not reach an output", _remove_dead),
    Pass("simplify_reshapes", "collapse chains of pure reshapes; drop reshapes there and back", _simplify_reshapes),
)}

DEFAULT_FLOW: tuple[str, ...] = ("check_formats", "remove_dead", "simplify_reshapes", "size_accumulators",
                                 "fold_scale_shift", "check_formats")


def run_flow(graph: Graph, names: Sequence[str] | Iterable[str] = DEFAULT_FLOW) -> FlowResult:
    """Run the named passes in order; returns the final graph and each pass's report lines."""
    reports: dict[str, Report] = {}
    for i, name in enumerate(names):
        p = PASSES.get(name)
        if p is None:
            raise BadInputError(f"unknown pass {name!r}; known: {', '.join(PASSES)}")
        graph, rep = p(graph)
        key = name if name not in reports else f"{name}#{i}"
        reports[key] = rep
    return FlowResult(graph, reports)


def summary(graph: Graph) -> str:
    """A text table: node, op, input/output/weight/accumulator formats and K-hot."""
    rows = [("node", "op", "in", "out", "weight", "acc", "khot")]
    for n in graph.nodes:
        w = n.consts.get("weight") or n.consts.get("scale")
        rows.append((n.name, n.op.value, ",".join(graph.tensor(t).fmt.ap_type() for t in n.inputs),
                     graph.tensor(n.output).fmt.ap_type(), w.fmt.ap_type() if w else "-",
                     n.acc_fmt.ap_type() if n.acc_fmt else "-", str(n.attr("khot", 0) or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
