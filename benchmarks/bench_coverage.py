"""What the random-model test sweeps exercise with non-degenerate data: op x rounding x overflow x signedness, conv and
pool windows (kernel, stride, padding) by RTL conv style, K-hot on/off, and the interpreter-level mutation rates.

    python benchmarks/bench_coverage.py            # CI sweeps and slow sweeps, then the targeted sweep, Markdown
    python benchmarks/bench_coverage.py --ci-only  # only what the default (CI) run exercises (+ targeted sweep)
    python benchmarks/bench_coverage.py --no-targeted  # the test sweeps only
    python benchmarks/bench_coverage.py --compare  # seed-compatible vs informative graphs on the cosim seeds

The sweeps are read from the tests themselves (``designs()`` / seed lists of tests/test_cosim_random.py,
test_csim_random.py, test_differential.py, test_mutation_random.py), each with its own test vectors (count and
seed), so the tables describe exactly what those tests simulate. A node counts as exercised only when its output is
not degenerate on those vectors (at most 10 % overflowed codes, at most 75 % zeros, no element stuck at one code);
"rounded" means at least one of its casts dropped non-zero bits, "tie" at least one exact rounding tie,
"overflowed" at least one value outside the format (saturated or wrapped).

The targeted sweep then aims informative graphs (``random_graph(..., focus=Focus(...))``) at every op x rounding
and op x overflow x sign cell the test sweeps left empty, checks each against onnxruntime, and prints what it filled
(``+n`` in the tables) and any cell still empty with the reason.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from qfx.errors import QfxError  # noqa: E402
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES  # noqa: E402
from qfx.ir.graph import op_def  # noqa: E402
from qfx.ir.informative import (MUTATION_KINDS, TARGETS, design_mutations, detects, excites,  # noqa: E402
                                informativeness, mutation_sites)
from qfx.ir.interpret import random_inputs, run, run_all  # noqa: E402
from qfx.ops import Categories  # noqa: E402

_SHORT_R = {"TRN": "TRN", "TRN_ZERO": "TRN_Z", "RND": "RND", "RND_ZERO": "RND_Z", "RND_MIN_INF": "RND_MI",
            "RND_INF": "RND_INF", "RND_CONV": "CONV"}


def sweeps(ci_only: bool) -> list[tuple[str, bool, list[tuple], int, int, str]]:
    """(name, slow?, [(graph, export options)], vectors, vector seed, backend) of every random-model test batch."""
    import test_cosim_random as cr
    import test_csim_random as cs
    import test_differential as df
    import test_mutation_random as mr

    out = []
    for slow, sw in ((False, cr.SWEEP_FAST), (True, cr.SWEEP_SLOW)):
        for kind, seeds in sw:
            out.append((f"cosim_random {kind} {seeds.start}-{seeds.stop - 1}", slow, cr.designs(kind, seeds),
                        cr.N_VECTORS, cr.VECTOR_SEED, "rtl"))
    for slow, sw in ((False, cs.SWEEP_FAST), (True, cs.SWEEP_SLOW)):
        for kind, p, seeds in sw:
            out.append((f"csim_random {kind} khot={p} {seeds.start}-{seeds.stop - 1}", slow,
                        cs.designs(kind, p, seeds, max_layers=6 if slow else 4), cs.N_VECTORS, cs.VECTOR_SEED, "hls"))
    out.append(("csim_random stream/reuse/hostile", False, cs.stream_designs(), cs.N_VECTORS, cs.VECTOR_SEED, "hls"))
    out.append(("differential FAST", False, df.designs(df.FAST), df.N_VECTORS, df.SEED, "all"))
    for b, blk in enumerate(df.SLOW_BLOCKS):
        out.append((f"differential slow block {b}", True, df.designs(blk), df.N_VECTORS, df.SEED, "all"))
    out.append(("mutation IR", False, [(mr._design(s, k), {}) for s, k in mr.IR_DESIGNS], mr.N_VECTORS, mr.SEED, "ir"))
    out.append(("mutation C-sim", False, [(mr._design(s, k), {}) for s, k in mr.CSIM_FAST], mr.N_VECTORS, mr.SEED,
                "hls"))
    out.append(("mutation C-sim slow", True, [(mr._design(s, k), {}) for s, k in mr.CSIM_SLOW], mr.N_VECTORS,
                mr.SEED, "hls"))
    out.append(("mutation RTL", False, [(mr._design(s, k), {"conv_style": st}) for s, k, st in mr.RTL_FAST],
                mr.N_VECTORS, mr.SEED, "rtl"))
    out.append(("mutation RTL slow", True, [(mr._design(s, k), {"conv_style": st}) for blk in mr.RTL_SLOW
                                            for s, k, st in blk], mr.N_VECTORS, mr.SEED, "rtl"))
    return [s for s in out if not (ci_only and s[1])]


def _degenerate(g, n, st) -> bool:
    return (st.overflow > TARGETS.max_overflow or st.zero > TARGETS.max_zero
            or (st.constant_elements > 0 and not op_def(n.op).is_(Categories.GATHER)))


def _new_data() -> dict:
    return {"rounded": Counter(), "tie": Counter(), "overflowed": Counter(), "combo": defaultdict(set),
            "nodes": Counter(), "degenerate": Counter(), "window": Counter(), "khot": Counter(), "io": Counter(),
            "designs": Counter(), "mut": Counter(), "mut_det": Counter(), "sites": Counter(), "sites_det": Counter(),
            "sweeps": []}


def _cells(data, g, rep) -> None:
    """Count the op x mode cells the non-degenerate nodes of ``g`` exercise (``rep``: its informativeness)."""
    for n in g.nodes:
        st = rep.tensors[n.output]
        op = n.op.value
        data["nodes"][op] += 1
        if _degenerate(g, n, st):
            data["degenerate"][op] += 1
            continue
        f = st.fmt
        sg = "s" if f.signed else "u"
        if st.inexact > 0:
            data["rounded"][(op, f.rounding)] += 1
        if st.ties > 0:
            data["tie"][(op, f.rounding)] += 1
        if st.overflow > 0:
            data["overflowed"][(op, f.overflow, sg)] += 1
        if st.inexact > 0 and st.overflow > 0:
            data["combo"][op].add((f.rounding, f.overflow, sg))


def collect(ci_only: bool) -> dict:
    data = _new_data()
    for name, slow, items, nvec, vseed, backend in sweeps(ci_only):
        data["sweeps"].append((name, slow, len(items), nvec, vseed, backend))
        for g, opts in items:
            x = random_inputs(g, nvec, seed=vseed)
            rep = informativeness(g, x)
            data["designs"]["slow" if slow else "ci"] += 1
            if backend in ("hls", "all"):
                data["io"][("hls", opts.get("io", "parallel"))] += 1
            if backend in ("rtl", "all"):
                data["io"][("rtl", opts.get("conv_style", "pixel"))] += 1
            _cells(data, g, rep)
            for n in g.nodes:
                st = rep.tensors[n.output]
                op = n.op.value
                if _degenerate(g, n, st):
                    continue
                d = op_def(n.op)
                if d.is_(Categories.CONV) or d.is_(Categories.POOL):
                    k = n.consts["weight"].codes.shape[2:] if "weight" in n.consts else d.attr(n, "kernel")
                    style = opts.get("conv_style", "pixel") if backend in ("rtl", "all") and d.is_(Categories.CONV) \
                        else "-"
                    data["window"][(op, f"{k[0]}x{k[1]}", tuple(d.attr(n, "stride")), tuple(d.attr(n, "padding")),
                                    style)] += 1
                if d.is_(Categories.LINEAR):
                    data["khot"][(op, int(n.attr("khot", 0) or 0))] += 1
            if name.startswith("mutation IR"):
                ref = run(g, x)
                for kind, m in design_mutations(g).items():
                    data["mut"][kind] += 1
                    data["mut_det"][kind] += detects(g, x, m, ref)
                env = run_all(g, x)
                for kind in MUTATION_KINDS:
                    for m in mutation_sites(g, kind)[::7]:  # every 7th site of every kind: per-op rates
                        if not excites(g, env, m):
                            continue  # not even the node's own output changes: an equivalent mutant
                        op = g.node(m.node).op.value
                        data["sites"][(op, kind)] += 1
                        data["sites_det"][(op, kind)] += detects(g, x, m, ref)
    return data


def gap_cells(data) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """(op, rounding) cells without a rounded node with a tie, (op, overflow, sign) cells without an overflowed
    node, over the ops that have a random-graph generator."""
    from qfx.ir.random_graph import _available

    ops = sorted(_available())
    rnd = [(op, r) for op in ops for r in ROUNDING_MODES if not data["tie"][(op, r)]]
    ovf = [(op, o, s) for op in ops for o in OVERFLOW_MODES for s in ("s", "u") if not data["overflowed"][(op, o, s)]]
    return rnd, ovf


#: seeds tried per empty cell by the targeted sweep before the cell counts as not reachable
TARGET_SEEDS = 6
TARGET_VECTORS, TARGET_VECTOR_SEED = 300, 7


def targeted(data) -> dict:
    """The targeted sweep: for every cell the test sweeps left empty, informative graphs aimed at it
    (``random_graph(..., focus=Focus(op, rounding, overflow, signed))``, seeds 0.. until the cell is hit on
    fresh vectors), each checked against onnxruntime (its exported ONNX model, bit for bit) so the filled cells are
    cells two executors agree on. Returns its own counters; cells still empty are listed with the reason
    (``GenerationError``/op refusal or data that never reached the cell)."""
    from qfx.ir.random_graph import Focus, random_graph
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    import numpy as np

    tdata = _new_data()
    rnd, ovf = gap_cells(data)
    aims = [((op, r), lambda s, op=op, r=r: Focus(op, r, OVERFLOW_MODES[s % 4], s % 3 != 1)) for op, r in rnd]
    aims += [((op, o, sg), lambda s, op=op, o=o, sg=sg: Focus(op, ROUNDING_MODES[s % 7], o, sg == "s"))
             for op, o, sg in ovf]
    designs = mismatches = 0
    errors: dict[tuple, str] = {}
    for cell, make in aims:
        hit = (tdata["tie"] if len(cell) == 2 else tdata["overflowed"])
        for seed in range(TARGET_SEEDS):
            if hit[cell]:
                break
            try:
                g = random_graph(seed, "any", max_layers=4, informative=True, focus=make(seed), max_attempts=60)
            except QfxError as e:
                errors[cell] = f"{type(e).__name__}: {str(e)[:120]}"
                continue
            x = random_inputs(g, TARGET_VECTORS, seed=TARGET_VECTOR_SEED)
            designs += 1
            gold = np.asarray(run(g, x))
            got = run_onnx_codes(to_onnx_model(g).SerializeToString(), g, x)
            if not np.array_equal(got, gold):
                mismatches += 1
                errors[cell] = f"onnxruntime differs from the interpreter on {g.name}"
                continue
            _cells(tdata, g, informativeness(g, x))
    tdata["targeted"] = {"designs": designs, "mismatches": mismatches, "errors": errors}
    return tdata


def _ops(data) -> list[str]:
    return sorted(data["nodes"])


def _cell(tests: str, extra: str | None) -> str:
    return tests if extra is None else f"{tests} +{extra}"


def report(data, elapsed: float, tdata: dict | None = None) -> str:
    lines = []
    tdata = tdata or _new_data()
    ci, slow = data["designs"]["ci"], data["designs"]["slow"]
    lines.append(f"Sweeps: {len(data['sweeps'])} batches, {ci} designs in CI + {slow} in slow sweeps "
                 f"({elapsed:.0f} s to generate and analyse).\n")
    lines.append("| sweep | slow | designs | vectors (seed) | executors |")
    lines.append("|---|---|---|---|---|")
    for name, sl, n, nv, vs, be in data["sweeps"]:
        lines.append(f"| {name} | {'yes' if sl else ''} | {n} | {nv} ({vs}) | {be} |")
    ops = _ops(data)
    lines.append("\n**Nodes per op** (exercised = not degenerate on the test vectors):\n")
    lines.append("| op | nodes | degenerate | full (rounding, overflow, sign) combos with both rounding and overflow |")
    lines.append("|---|---|---|---|")
    for op in ops:
        lines.append(f"| {op} | {data['nodes'][op]} | {data['degenerate'][op]} | {len(data['combo'][op])} / 56 |")
    lines.append("\n**Rounding modes** (nodes whose cast rounded / hit an exact tie):\n")
    lines.append("| op | " + " | ".join(_SHORT_R[r] for r in ROUNDING_MODES) + " |")
    lines.append("|---|" + "---|" * len(ROUNDING_MODES))
    ops = sorted(set(ops) | set(tdata["nodes"]))
    for op in ops:
        cells = [_cell(f"{data['rounded'][(op, r)]}/{data['tie'][(op, r)]}",
                       f"{tdata['rounded'][(op, r)]}/{tdata['tie'][(op, r)]}" if tdata["tie"][(op, r)] else None)
                 for r in ROUNDING_MODES]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("\n**Overflow modes x signedness** (nodes with at least one overflowed value; s signed, "
                 "u unsigned):\n")
    cols = [(o, s) for o in OVERFLOW_MODES for s in ("s", "u")]
    lines.append("| op | " + " | ".join(f"{o} {s}" for o, s in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(
            _cell(str(data["overflowed"][(op, o, s)]),
                  str(tdata["overflowed"][(op, o, s)]) if tdata["overflowed"][(op, o, s)] else None)
            for o, s in cols) + " |")
    lines.append("\n**Windows** (conv / pool nodes by kernel, stride, padding; RTL conv style where an RTL sweep "
                 "exported it, - otherwise):\n")
    lines.append("| op | kernel | stride | padding | RTL style | nodes |")
    lines.append("|---|---|---|---|---|---|")
    for (op, k, st, pd, style), c in sorted(data["window"].items()):
        lines.append(f"| {op} | {k} | {st[0]},{st[1]} | {pd[0]},{pd[1]} | {style} | {c} |")
    lines.append("\n**K-hot** (LINEAR nodes by K; 0 = plain weights) and **export options**:\n")
    lines.append("| op | " + " | ".join(f"K={k}" for k in range(4)) + " |")
    lines.append("|---|---|---|---|---|")
    for op in sorted({op for op, _ in data["khot"]}):
        lines.append(f"| {op} | " + " | ".join(str(data["khot"][(op, k)]) for k in range(4)) + " |")
    lines.append("\n" + ", ".join(f"{be} {opt}: {c} designs" for (be, opt), c in sorted(data["io"].items())) + "\n")
    if data["mut"]:
        lines.append("**Interpreter-level mutations** (the mutation sweep's designs, vectors seed 7): design picks "
                     + ", ".join(f"{k} {data['mut_det'][k]}/{data['mut'][k]}" for k in MUTATION_KINDS)
                     + "; every 7th site of every node (those that change the node's own output):\n")
        lines.append("| op | " + " | ".join(MUTATION_KINDS) + " |")
        lines.append("|---|---|---|---|")
        for op in sorted({op for op, _ in data["sites"]}):
            cells = [f"{data['sites_det'][(op, k)]}/{data['sites'][(op, k)]}" if data["sites"][(op, k)] else "n/a"
                     for k in MUTATION_KINDS]
            lines.append(f"| {op} | " + " | ".join(cells) + " |")
    rnd, ovf = gap_cells(data)
    lines.append(f"\n**Gaps of the test sweeps** ({len(rnd) + len(ovf)} of "
                 f"{len(ops) * (len(ROUNDING_MODES) + len(cols))} cells: no rounded node with a tie, or no overflowed "
                 "node): " + ("; ".join([f"{op} {_SHORT_R[r]}" for op, r in rnd] + [" ".join(c) for c in ovf])
                             or "none") + "\n")
    if "targeted" in tdata:
        t = tdata["targeted"]
        left = [c for c in rnd if not tdata["tie"][c]] + [c for c in ovf if not tdata["overflowed"][c]]
        lines.append(f"**Targeted sweep** (coverage run only: `random_graph(seed, focus=Focus(op, rounding, overflow, "
                     f"signed))`, up to {TARGET_SEEDS} seeds per empty cell, {TARGET_VECTORS} vectors seed "
                     f"{TARGET_VECTOR_SEED}, each design also through onnxruntime): {t['designs']} designs, "
                     f"{t['mismatches']} onnxruntime mismatches; cells filled shown as `+n` above; "
                     f"{len(left)} cells left" + (": " + "; ".join(
                         f"{' '.join(c)} ({t['errors'].get(c, 'generated, never reached')})" for c in left)
                         if left else "") + "\n")
    return "\n".join(lines)


def compare() -> str:
    """The 84 models of tests/test_cosim_random.py (CI + slow seeds, 300 vectors, seed 11) drawn from the
    seed-compatible stream (what that test used before) and from the informative stream."""
    import numpy as np

    from qfx.ir.informative import pick_mutations
    from qfx.ir.random_graph import random_graph
    import test_cosim_random as cr

    rows = ["| stream | models | an output element constant | meeting the targets | conv models: every output "
            ">= 100 distinct | design mutations detected (constant, shift, select) |", "|---|---|---|---|---|---|"]
    for informative in (False, True):
        n = const = ok = conv = conv100 = 0
        tot, det = Counter(), Counter()
        for kind, seeds in cr.SWEEP_FAST + cr.SWEEP_SLOW:
            for i, s in enumerate(seeds):
                g = random_graph(s, kind=kind, khot_prob=(0.0, 0.5, 1.0)[i % 3], informative=informative)
                x = random_inputs(g, cr.N_VECTORS, cr.VECTOR_SEED)
                ref = run(g, x)
                y = np.asarray(ref).reshape(len(x), -1)
                per = [len(np.unique(y[:, j])) for j in range(y.shape[1])]
                n += 1
                const += min(per) == 1
                ok += informativeness(g, x).ok
                if any(op_def(q.op).is_(Categories.CONV) for q in g.nodes):
                    conv += 1
                    conv100 += min(per) >= 100
                picks = design_mutations(g) if informative else pick_mutations(g, s, random_inputs(g, 300, 0))
                for k, m in picks.items():
                    tot[k] += 1
                    det[k] += detects(g, x, m, ref)
        rows.append(f"| {'informative' if informative else 'seed-compatible (before)'} | {n} | {const} | {ok} | "
                    f"{conv100} of {conv} | " + ", ".join(f"{det[k]}/{tot[k]}" for k in MUTATION_KINDS) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ci-only", action="store_true", help="only the sweeps the default (CI) test run executes")
    ap.add_argument("--compare", action="store_true", help="only the before/after table on the cosim seeds")
    ap.add_argument("--no-targeted", action="store_true", help="skip the targeted sweep of the cells the tests miss")
    args = ap.parse_args()
    if args.compare:
        print(compare())
        return
    t0 = time.time()
    data = collect(args.ci_only)
    tdata = None if args.no_targeted else targeted(data)
    print(report(data, time.time() - t0, tdata))


if __name__ == "__main__":
    main()
