"""Random models -> HLS project -> g++ C simulation: every output code equals the golden interpreter's.

Compilation dominates, so each test compiles a batch of projects into one binary (``run_csim_batch``: the ap_fixed
headers are parsed once) with ``-Werror`` on top of ``-Wall``; each project still runs its own generated testbench.
"""
from __future__ import annotations

import pytest

from qfx.backends.hls import write_project
from qfx.ir.random_graph import random_graph
from qfx.sim.csim import run_csim_batch

from test_hls_export import HOSTILE, rename

pytestmark = pytest.mark.gxx

N_VECTORS = 1000


def _check_batch(tmp_path, graphs, **opts):
    dirs = []
    for k, (g, kw) in enumerate(graphs):
        d = tmp_path / f"p{k}"
        d.mkdir()
        write_project(g, d, **(opts | kw))
        dirs.append(d)
    reports = run_csim_batch(dirs, N_VECTORS, seed=1, flags=("-Werror",))
    bad = [(g.name, r.mismatches, r.first_mismatch) for (g, _), r in zip(graphs, reports) if r.mismatches]
    assert not bad, bad
    for (g, _), r in zip(graphs, reports):
        assert r.vectors == N_VECTORS and r.outputs_compared == N_VECTORS * sum(g.tensor(o).size for o in g.outputs)
    return reports


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("khot", [0.0, 1.0], ids=["plain", "khot"])
def test_random_models_bit_exact(tmp_path, kind, khot):
    seeds = range(8) if khot == 0 else range(8, 16)
    _check_batch(tmp_path, [(random_graph(s, kind, khot_prob=khot), {}) for s in seeds])


@pytest.mark.slow
@pytest.mark.parametrize("block", range(6))
def test_random_models_bit_exact_more(tmp_path, block):
    seeds = range(100 + 12 * block, 112 + 12 * block)
    _check_batch(tmp_path, [(random_graph(s, "any", khot_prob=0.5, max_layers=6), {}) for s in seeds])


def test_stream_io_reuse_and_hostile_names(tmp_path):
    """io=stream CNNs (fan-out through clones for residual adds), reuse factors > 1, hostile identifiers."""
    cnn_seeds = [5, 9, 19, 21, 32]  # residual adds, K-hot convs, pools among them
    graphs = [(random_graph(s, "cnn", khot_prob=0.5), {"io": "stream", "top_name": f"stream_{s}"}) for s in cnn_seeds]
    graphs += [(random_graph(s, "any", khot_prob=0.5), {"reuse_factor": 4, "top_name": f"reuse_{s}"})
               for s in (3, 5, 32)]
    g = random_graph(32, "cnn", khot_prob=0.5)
    graphs.append((g, {"reuse_factor": {g.nodes[0].name: 3}, "top_name": "reuse_dict"}))
    graphs.append((rename(random_graph(5, "cnn", khot_prob=0.5), HOSTILE), {}))
    graphs.append((rename(random_graph(19, "cnn", khot_prob=0.5), HOSTILE), {"io": "stream", "top_name": "hs"}))
    _check_batch(tmp_path, graphs)
