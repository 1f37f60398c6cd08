"""Random informative models -> HLS project -> g++ C simulation: every output code equals the golden interpreter's.

Compilation dominates, so each test compiles a batch of projects into one binary (``run_csim_batch``: the ap_fixed
headers are parsed once) with ``-Werror`` on top of ``-Wall``; each project still runs its own generated testbench.
The models come from ``random_graph(..., informative=True)`` and each one's informativeness is asserted on the
simulated vectors (``qfx.ir.informative``), so a bit-exact pass means something.
"""
from __future__ import annotations

import pytest

from qfx.ir.graph import op_def
from qfx.ir.informative import informativeness
from qfx.ir.interpret import random_inputs
from qfx.ir.random_graph import random_graph
from qfx.ops import Categories

from test_hls_export import HOSTILE, rename

pytestmark = pytest.mark.gxx

N_VECTORS = 1000
VECTOR_SEED = 1

#: (kind, K-hot probability, seeds) of the CI batches and the slow blocks ("any", up to 6 layers)
SWEEP_FAST = [(k, p, range(8) if p == 0 else range(8, 16)) for k in ("mlp", "cnn") for p in (0.0, 1.0)]
SWEEP_SLOW = [("any", 0.5, range(100 + 12 * b, 112 + 12 * b)) for b in range(6)]


def designs(kind: str, khot: float, seeds, max_layers: int = 4) -> list[tuple]:
    """(graph, HLS export options) of one batch; also read by benchmarks/bench_coverage.py."""
    return [(random_graph(s, kind, khot_prob=khot, max_layers=max_layers, informative=True), {}) for s in seeds]


def _check_batch(tmp_path, graphs, **opts):
    from qfx.backends.hls import write_project
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for k, (g, kw) in enumerate(graphs):
        if g.meta.get("informative"):
            rep = informativeness(g, random_inputs(g, N_VECTORS, VECTOR_SEED))
            assert rep.ok, (g.name, rep.violations())
        d = tmp_path / f"p{k}"
        d.mkdir()
        write_project(g, d, **(opts | kw))
        dirs.append(d)
    reports = run_csim_batch(dirs, N_VECTORS, seed=VECTOR_SEED, flags=("-Werror",))
    bad = [(g.name, r.mismatches, r.first_mismatch) for (g, _), r in zip(graphs, reports) if r.mismatches]
    assert not bad, bad
    for (g, _), r in zip(graphs, reports):
        assert r.vectors == N_VECTORS and r.outputs_compared == N_VECTORS * sum(g.tensor(o).size for o in g.outputs)
    return reports


@pytest.mark.parametrize("kind,khot,seeds", SWEEP_FAST,
                         ids=[f"{k}-{'khot' if p else 'plain'}" for k, p, _ in SWEEP_FAST])
def test_random_models_bit_exact(tmp_path, kind, khot, seeds):
    _check_batch(tmp_path, designs(kind, khot, seeds))


@pytest.mark.slow
@pytest.mark.parametrize("kind,khot,seeds", SWEEP_SLOW, ids=[f"block{b}" for b in range(len(SWEEP_SLOW))])
def test_random_models_bit_exact_more(tmp_path, kind, khot, seeds):
    _check_batch(tmp_path, designs(kind, khot, seeds, max_layers=6))


def _cnn_seeds(n: int) -> list[int]:
    """The first ``n`` informative CNN seeds with a residual (binary) op or a pool; together they must also hold a
    K-hot convolution (asserted by the test)."""
    out = []
    for s in range(200):
        g = random_graph(s, "cnn", khot_prob=0.5, informative=True)
        if any(op_def(n.op).is_(Categories.BINARY) or op_def(n.op).is_(Categories.POOL) for n in g.nodes):
            out.append(s)
        if len(out) == n:
            break
    return out


def stream_designs() -> list[tuple]:
    """io=stream CNNs, reuse factors > 1, hostile identifiers; also read by benchmarks/bench_coverage.py."""
    cnn_seeds = _cnn_seeds(5)
    graphs = [(random_graph(s, "cnn", khot_prob=0.5, informative=True), {"io": "stream", "top_name": f"stream_{s}"})
              for s in cnn_seeds]
    graphs += [(random_graph(s, "any", khot_prob=0.5, informative=True), {"reuse_factor": 4, "top_name": f"reuse_{s}"})
               for s in (3, 5, 32)]
    g = random_graph(cnn_seeds[0], "cnn", khot_prob=0.5, informative=True)
    graphs.append((g, {"reuse_factor": {g.nodes[0].name: 3}, "top_name": "reuse_dict"}))
    graphs.append((rename(random_graph(cnn_seeds[1], "cnn", khot_prob=0.5, informative=True), HOSTILE), {}))
    graphs.append((rename(random_graph(cnn_seeds[2], "cnn", khot_prob=0.5, informative=True), HOSTILE),
                   {"io": "stream", "top_name": "hs"}))
    return graphs


def test_stream_io_reuse_and_hostile_names(tmp_path):
    """io=stream CNNs (fan-out through clones for residual adds), reuse factors > 1, hostile identifiers."""
    graphs = stream_designs()
    streamed = [g for g, kw in graphs if kw.get("io") == "stream"]
    cats = {c for g in streamed for n in g.nodes for c in op_def(n.op).categories}
    assert {Categories.BINARY, Categories.POOL, Categories.CONV} <= cats, cats
    assert any(n.attr("khot", 0) for g in streamed for n in g.nodes if op_def(n.op).is_(Categories.CONV))
    _check_batch(tmp_path, graphs)
