"""Mutation tests on informative random designs: each design's three faults (a changed constant, a shift off by one,
a wrong window/row selection) must be seen by the interpreter comparison, C simulation and RTL co-simulation.

Faults, per level (``qfx.ir.informative.design_mutations`` picks one site per kind and design):

* interpreter: the golden result with the fault injected (``run_mutated``), compared with the true golden result;
* C simulation (generated C++ edited): *constant* the same code one step off in ``weights.h``; *select* the same
  wrong element (the node's call reads a copy of its input with the element/row replaced, injected in the top
  function); *shift* the node's output typedef with its binary point one bit to the right (``ap_fixed<W,I-1>``);
* co-simulation (generated SystemVerilog edited): *select* the same wrong element/row, by replacing the bit slices
  of the layer's input (element wires, or a pixel-folded convolution's row-mux arms); *shift* one requantizer's
  ``SHIFT`` one smaller (the value doubled before rounding); *constant* one CSD digit of a constant multiply
  (``<<< k`` -> ``<<< k+1``).

The interpreter and select/constant C++ faults are the same fault, so the generator's guarantee (informative graphs
show their design mutations on their calibration vectors) is re-checked on other vectors; the other generated-code
faults are independent of it. A small set runs in CI; ``slow`` runs more designs (C simulation builds all projects
into one binary, co-simulation all designs into one Verilator build).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qfx.ir.graph import Graph, op_def
from qfx.ir.informative import MUTATION_KINDS, Mutation, design_mutations, detects, pick_mutations
from qfx.ir.interpret import random_inputs, run
from qfx.ir.random_graph import random_graph

N_VECTORS = 300
SEED = 7  # test vectors: not the calibration vectors (seed 0) the designs were drawn on

#: (seed, kind) of the designs; CI runs the first few of each list
IR_DESIGNS = [(s, k) for k in ("mlp", "cnn") for s in range(20)]
CSIM_FAST = [(100, "mlp"), (100, "cnn"), (101, "cnn")]
CSIM_SLOW = [(s, k) for k in ("mlp", "cnn") for s in range(102, 110)]
RTL_FAST = [(100, "cnn", "pixel")]
RTL_SLOW = [[(s, k, st) for k, st in (("mlp", "pixel"), ("cnn", "pixel"), ("cnn", "parallel"))]
            for s in range(101, 105)]


def _design(seed: int, kind: str) -> Graph:
    return random_graph(seed, kind, informative=True, khot_prob=0.4)


# ================================================================================================ interpreter

def test_ir_design_mutations_detected_and_legacy_graphs_weaker():
    """Every informative design's three mutations change an output on the test vectors; on seed-compatible
    (uniform random) graphs the same kind of pick is missed often: the problem this stream fixes."""
    hit = Counter()
    for seed, kind in IR_DESIGNS:
        g = _design(seed, kind)
        x = random_inputs(g, N_VECTORS, seed=SEED)
        ref = run(g, x)
        muts = design_mutations(g)
        assert set(muts) >= {"shift", "select"}, (g.name, muts)
        for k, m in muts.items():
            assert detects(g, x, m, ref), (g.name, m)
            hit[k] += 1
    assert hit["constant"] >= len(IR_DESIGNS) * 3 // 4
    missed = total = 0
    for seed, kind in IR_DESIGNS:
        g = random_graph(seed, kind)
        x = random_inputs(g, N_VECTORS, seed=SEED)
        ref = run(g, x)
        for m in pick_mutations(g, seed, x).values():
            total += 1
            missed += not detects(g, x, m, ref)
    assert missed / total > 0.1, (missed, total)


def test_ir_every_op_kind_is_sensitive():
    """A mutation of each kind in every node of every design (not only the designs' picks): each op kind seen has
    each applicable fault kind detected, and at least 97 % of all these mutations are detected."""
    tot, det = Counter(), Counter()
    for seed, kind in IR_DESIGNS[::2]:
        g = _design(seed, kind)
        x = random_inputs(g, N_VECTORS, seed=SEED)
        ref = run(g, x)
        for n in g.nodes:
            for k, m in pick_mutations(g, seed, x, node=n.name).items():
                if m.node == n.name:
                    tot[(n.op.value, k)] += 1
                    det[(n.op.value, k)] += detects(g, x, m, ref)
    assert all(det[key] > 0 for key in tot), {key: (det[key], tot[key]) for key in tot if not det[key]}
    assert sum(det.values()) >= 0.97 * sum(tot.values()), (sum(det.values()), sum(tot.values()))
    ops = {op for op, _ in tot}
    assert {"dense", "conv2d"} <= ops and len(ops) >= 6, ops


# ================================================================================================ C++ mutants

_ARRAY = re.compile(r"static const [\w ]+ (\w+)\[(\d+)\] = \{\n(.*?)\n\};", re.S)


def hls_mutate(project: Path, g: Graph, m: Mutation) -> str:
    """Inject ``m`` into the generated C++ of ``project`` (see the module docstring); returns what was changed."""
    fw = project / "firmware"
    node = g.node(m.node)
    if m.kind == "constant":
        p = fw / "weights.h"
        text = p.read_text()
        codes = node.consts[m.key].codes.reshape(-1)
        for a in _ARRAY.finditer(text):
            lits = [v.strip().rstrip("L") for v in a.group(3).replace("\n", " ").split(",") if v.strip()]
            if a.group(1).startswith(node.name) and len(lits) == codes.size and \
                    [int(v) for v in lits] == codes.tolist():
                lits[m.index[0]] = str(int(codes[m.index[0]]) + m.delta)
                p.write_text(text[:a.start(3)] + "    " + ", ".join(lits) + "," + text[a.end(3):])
                return f"{a.group(1)}[{m.index[0]}] {codes[m.index[0]]} -> {codes[m.index[0]] + m.delta}"
        # K-hot weights are stored as signed power-of-two digits (+-(s+1) = +-2**s, K slots per weight): one digit
        # of the same weight gets the next power of two (a zero weight gets digit 2**0, i.e. exactly one step)
        for a in _ARRAY.finditer(text):
            k = re.search(r"K-hot weights of " + re.escape(node.name) + r" .*? x (\d+):[^\n]*\n$",
                          text[max(0, a.start() - 400):a.start()])
            lits = [int(v.strip().rstrip("L")) for v in a.group(3).replace("\n", " ").split(",") if v.strip()]
            if k and a.group(1).startswith(node.name) and len(lits) == codes.size * int(k.group(1)):
                slots = range(m.index[0] * int(k.group(1)), (m.index[0] + 1) * int(k.group(1)))
                j = next((i for i in slots if lits[i]), slots[0])
                old = lits[j]
                lits[j] = old + (1 if old > 0 else -1) if old else 1
                p.write_text(text[:a.start(3)] + "    " + ", ".join(map(str, lits)) + "," + text[a.end(3):])
                return f"{a.group(1)}[{j}] (K-hot digit of weight {m.index[0]}) {old} -> {lits[j]}"
        # a constant emitted in another form of the same size (a ROM of output codes for a table): that entry
        for a in _ARRAY.finditer(text):
            lits = [int(v.strip().rstrip("L")) for v in a.group(3).replace("\n", " ").split(",") if v.strip()]
            if a.group(1).startswith(node.name) and len(lits) == codes.size:
                i = m.index[0]
                lits[i] += 1 if lits[i] <= 0 else -1
                p.write_text(text[:a.start(3)] + "    " + ", ".join(map(str, lits)) + "," + text[a.end(3):])
                return f"{a.group(1)}[{i}] (emitted form of {m.key}[{i}]) one step off"
        raise AssertionError(f"no weights.h array holds {node.name}.{m.key}")
    if m.kind == "shift":
        p = fw / "parameters.h"
        text = p.read_text()
        pat = re.compile(r"(typedef ap_u?fixed<(\d+),)(-?\d+)([^;]*;\s*// tensor " + re.escape(node.output) + r" \[)")
        hit = pat.search(text)
        assert hit, f"no typedef of tensor {node.output}"
        p.write_text(text[:hit.start(3)] + str(int(hit.group(3)) - 1) + text[hit.end(3):])
        return f"typedef of {node.output}: int bits {hit.group(3)} -> {int(hit.group(3)) - 1}"
    # select: the node's call reads a copy of its first input with the positions replaced
    srcs = [f for f in fw.glob("*.cpp") if not f.stem.endswith("_axis")]
    assert len(srcs) == 1, srcs
    p = srcs[0]
    text = p.read_text()
    call = re.compile(r"// " + re.escape(node.name) + r" \(.*?\n([ \t]*)qfx::\w+<(\w+),.*?>\((\w+)", re.S)
    hit = call.search(text)
    assert hit, f"no call of {node.name}"
    ind, ty, arg = hit.group(1), hit.group(2), hit.group(3)
    size = g.tensor(node.inputs[0]).size
    half = len(m.index) // 2
    lines = [f"{ty} qfx_mut[{size}];",
             f"for (unsigned qfx_i = 0; qfx_i < {size}; qfx_i++) qfx_mut[qfx_i] = {arg}[qfx_i];"]
    lines += [f"qfx_mut[{a}] = {arg}[{b}];" for a, b in zip(m.index[:half], m.index[half:])]
    inject = "".join(f"{ind}{ln}\n" for ln in lines)
    p.write_text(text[:hit.start(1)] + inject + text[hit.start(1):hit.start(3)] + "qfx_mut" + text[hit.end(3):])
    return f"{node.name} reads {m.detail}"


def _csim_mutants(tmp_path: Path, designs) -> None:
    from qfx.backends.hls import write_project
    from qfx.sim.csim import run_csim_batch

    dirs, cases = [], []
    for seed, kind in designs:
        g = _design(seed, kind)
        muts = design_mutations(g)
        for k in ("original",) + tuple(muts):
            d = tmp_path / f"{g.name}_{k}"
            d.mkdir()
            write_project(g, d, top_name=f"m_{g.name}_{k}")
            what = hls_mutate(d, g, muts[k]) if k in muts else ""
            dirs.append(d)
            cases.append((g, k, muts.get(k), what))
    reps = run_csim_batch(dirs, N_VECTORS, seed=SEED)
    bad = [(g.name, k, what, r.mismatches) for (g, k, _, what), r in zip(cases, reps)
           if (r.mismatches == 0) != (k == "original")]
    rate = Counter(k for (_, k, _, _), r in zip(cases, reps) if k != "original" and r.mismatches)
    print("C-sim mutants detected:", dict(rate), "of", dict(Counter(k for _, k, _, _ in cases if k != "original")))
    assert not bad, bad


@pytest.mark.gxx
def test_csim_mutations_detected(tmp_path):
    _csim_mutants(tmp_path, CSIM_FAST)


@pytest.mark.slow
@pytest.mark.gxx
def test_csim_mutations_detected_more(tmp_path):
    _csim_mutants(tmp_path, CSIM_SLOW)


# ================================================================================================ RTL mutants

_PORT = re.compile(r"input\s+logic\s+\[(\d+):0\]\s+(\w+)")
_NOT_DATA = {"ap_clk", "ap_rst_n", "en", "step"}


def _layers(project: Path) -> list[dict]:
    return json.loads((project / "cosim.json").read_text())["layers"]


def _module_files(project: Path, module: str) -> list[Path]:
    return [f for f in (project / "rtl" / f"{module}.sv", project / "rtl" / f"{module}_pix.sv") if f.is_file()]


def _slice_map(g: Graph, node: str, m: Mutation, port_bits: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Bit slices (hi, lo) of a layer's first input that ``m`` redirects: per element, and per whole row."""
    spec = g.tensor(g.node(node).inputs[0])
    ew = port_bits // spec.size
    half = len(m.index) // 2
    a, b = m.index[:half], m.index[half:]
    out = {((i + 1) * ew - 1, i * ew): ((j + 1) * ew - 1, j * ew) for i, j in zip(a, b)}
    if len(spec.shape) == 3 and half == spec.shape[2]:
        out[((a[0] + half) * ew - 1, a[0] * ew)] = ((b[0] + half) * ew - 1, b[0] * ew)
    return out


def rtl_mutate(project: Path, g: Graph, m: Mutation, x: np.ndarray, seed: int) -> tuple[str, str] | None:
    """Inject a ``m.kind`` fault into the RTL layer computing ``m.node`` (or the nearest layer that has a site of
    that kind); returns (op of the mutated layer, what was changed), None when no layer has such a site."""
    layers = _layers(project)
    start = next(i for i, L in enumerate(layers) if m.node in L["nodes"])
    order = layers[start:] + layers[:start][::-1]
    rng = np.random.default_rng(seed)
    ref = run(g, x)
    for L in order:
        files = _module_files(project, L["module"])
        if m.kind == "select":
            first = L["nodes"][0]
            cand = pick_mutations(g, seed, x, node=first).get("select")
            if cand is None or cand.node != first or not detects(g, x, cand, ref):
                continue
            f = files[0]
            text = f.read_text()
            port = next((p for p in _PORT.finditer(text) if p.group(2) not in _NOT_DATA), None)
            if port is None:
                continue
            name, bits = port.group(2), int(port.group(1)) + 1
            smap = _slice_map(g, first, cand, bits)
            pat = re.compile(r"\b" + re.escape(name) + r"\[(\d+):(\d+)\]")
            count = 0

            def sub(mt: re.Match) -> str:
                nonlocal count
                key = (int(mt.group(1)), int(mt.group(2)))
                if key in smap and mt.start() > port.end():
                    count += 1
                    return f"{name}[{smap[key][0]}:{smap[key][1]}]"
                return mt.group(0)

            new = pat.sub(sub, text)
            if count:
                f.write_text(new)
                return L["op"], f"{f.name}: {cand.detail} ({count} slices)"
        elif m.kind == "shift":
            for f in files:
                text = f.read_text()
                sites = list(re.finditer(r"\.SHIFT\((-?\d+)\)", text))
                if sites:
                    s = sites[int(rng.integers(len(sites)))]
                    f.write_text(text[:s.start(1)] + str(int(s.group(1)) - 1) + text[s.end(1):])
                    return L["op"], f"{f.name}: requantizer SHIFT {s.group(1)} -> {int(s.group(1)) - 1}"
        else:
            for f in files:  # a ROM entry (tables), one step off
                text = f.read_text()
                rom = list(re.finditer(r"(\d+)'h([0-9a-f]+): (rom\d+) = (\d+)'h([0-9a-f]+);", text))
                if rom:  # the entry of the IR fault's table index when this layer computes that node
                    fin = g.tensor(g.node(m.node).inputs[0]).fmt
                    keys: list[str] = []  # a table over input codes is keyed by their raw bits, others by index
                    if m.index and m.node in L["nodes"]:
                        keys = [format((m.index[0] + fin.min_code) & ((1 << fin.width) - 1), "x"),
                                format(m.index[0], "x")]
                    same = [r for key in keys for r in rom if r.group(2) == key]
                    s = same[0] if same else rom[int(rng.integers(len(rom)))]
                    w = int(s.group(4))
                    v = (int(s.group(5), 16) + 1) % (1 << w)
                    f.write_text(text[:s.start(5)] + format(v, "x") + text[s.end(5):])
                    return L["op"], f"{f.name}: {s.group(3)}[{s.group(1)}'h{s.group(2)}] {s.group(5)} -> {v:x}"
            for f in files:
                text = f.read_text()
                sites = list(re.finditer(r"\(\d+'\((?:x|win)_\d+\)( <<< (\d+))?\)", text))
                if sites:
                    s = max(sites, key=lambda t: int(t.group(2) or 0))
                    k = int(s.group(2) or 0)
                    term = s.group(0)
                    new = term.replace(f" <<< {k})", f" <<< {k + 1})") if s.group(1) else term[:-1] + " <<< 1)"
                    f.write_text(text[:s.start()] + new + text[s.end():])
                    return L["op"], f"{f.name}: {term} -> {new}"
    return None  # no layer has a site of this kind (a single table layer has no requantizer): not applicable


def _rtl_mutants(tmp_path: Path, designs, originals: bool) -> None:
    from qfx.backends.rtl import write_project
    from qfx.sim.cosim import run_cosim_many

    dirs, cases = [], []
    for seed, kind, style in designs:
        g = _design(seed, kind)
        x = random_inputs(g, N_VECTORS, seed=SEED)
        muts = design_mutations(g)
        muts.setdefault("constant", Mutation("constant", next(n.name for n in g.nodes if n.consts) if any(
            n.consts for n in g.nodes) else g.nodes[0].name, ""))
        for k in (("original",) if originals else ()) + MUTATION_KINDS:
            d = tmp_path / f"{g.name}_{style}_{k}"
            d.mkdir()
            write_project(g, d, conv_style=style, top_name=f"m_{g.name}_{style}_{k}")
            what = ("", "") if k == "original" else rtl_mutate(d, g, muts[k], x, seed)
            if what is None:
                print(f"RTL: {g.name} has no site for a {k} fault")
                continue
            dirs.append(d)
            cases.append((g.name, k, what))
    reps = run_cosim_many(dirs, N_VECTORS, seed=SEED, backpressure=True, work_dir=tmp_path / "work")
    bad = [(name, k, what, r.mismatches, r.received) for (name, k, what), r in zip(cases, reps)
           if r.ok != (k == "original")]
    per_op = Counter((what[0], k) for (_, k, what), r in zip(cases, reps) if k != "original" and not r.ok)
    print("RTL mutants detected by (layer op, kind):", dict(per_op))
    assert not bad, bad


@pytest.mark.verilator
def test_rtl_mutations_detected(tmp_path):
    _rtl_mutants(tmp_path, RTL_FAST, originals=False)


@pytest.mark.slow
@pytest.mark.verilator
@pytest.mark.parametrize("block", range(len(RTL_SLOW)))
def test_rtl_mutations_detected_more(tmp_path, block):
    _rtl_mutants(tmp_path, RTL_SLOW[block], originals=True)


def test_mutators_change_generated_code(tmp_path):
    """The C++ and RTL mutators edit exactly one site (no tool needed): the fault is in the files the builds read."""
    from qfx.backends import hls, rtl

    g = _design(100, "cnn")
    x = random_inputs(g, N_VECTORS, seed=SEED)
    muts = design_mutations(g)
    for k, m in muts.items():
        d = tmp_path / f"h_{k}"
        d.mkdir()
        hls.write_project(g, d)
        before = {f: f.read_text() for f in (d / "firmware").iterdir()}
        hls_mutate(d, g, m)
        changed = [f for f, t in before.items() if f.read_text() != t]
        assert len(changed) == 1, (k, changed)
        d = tmp_path / f"r_{k}"
        d.mkdir()
        rtl.write_project(g, d, conv_style="pixel")
        before = {f: f.read_text() for f in (d / "rtl").iterdir()}
        op, what = rtl_mutate(d, g, m, x, 100)
        assert op and what
        assert sum(f.read_text() != t for f, t in before.items()) == 1, (k, what)
    assert any(op_def(n.op).is_("conv") for n in g.nodes)
