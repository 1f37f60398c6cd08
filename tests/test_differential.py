"""Whole random models through all four executors: golden interpreter, onnxruntime, C simulation, RTL co-simulation.

Every executor gets the same input vectors (``random_inputs(graph, N, seed)``: edge vectors first, then random codes;
``qfx.sim.csim`` and ``qfx.sim.cosim`` draw exactly these for the same ``seed``) and every output code must equal the
golden interpreter's, hence all four agree bit for bit. Builds are batched: one g++ binary for all projects of a
test (``run_csim_batch``) and one Verilator build driving every design at once (``run_cosim_many``).

The models are informative (``random_graph(..., informative=True)``; asserted on the test vectors with
``qfx.ir.informative``), so agreement is not the agreement of constant or saturated outputs. CNN designs alternate
pixel-folded and fully parallel RTL convolutions. A representative subset runs unmarked (CI); 48 more models run
under ``slow``.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from qfx.ir.graph import op_def
from qfx.ir.informative import informativeness
from qfx.ir.interpret import random_inputs, run
from qfx.ir.random_graph import random_graph
from qfx.ops import Categories

N_VECTORS = 300
SEED = 7



def _representative() -> list[tuple[int, str, float]]:
    """(seed, kind, khot probability): CNNs and MLPs, K-hot and plain, and the first CNN from seed 20 on with a
    binary op (residual add) and a pool, so the subset stays representative whatever the generator table draws."""
    fixed = [(3, "cnn", 0.0), (11, "cnn", 1.0), (4, "mlp", 0.0), (12, "mlp", 1.0)]
    for s in range(20, 200):
        g = random_graph(s, "cnn", khot_prob=0.5, max_layers=5, informative=True)
        if {Categories.BINARY, Categories.POOL} <= {c for n in g.nodes for c in op_def(n.op).categories}:
            return fixed + [(s, "cnn", 0.5)]
    raise AssertionError("no informative CNN with a binary op and a pool in seeds 20..199")


FAST = _representative()
SLOW_BLOCKS = [[(s, "any", 0.4) for s in range(200 + 12 * b, 212 + 12 * b)] for b in range(4)]


def _require(module: str) -> None:
    """Skip visibly when an executor's module is not installed; in CI that is a failure, never a skip."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing: the differential test needs every executor")
        pytest.skip(f"{module} is not installed")


def _graphs(spec):
    return [random_graph(s, kind, khot_prob=p, max_layers=5, informative=True) for s, kind, p in spec]


def designs(spec) -> list[tuple]:
    """(graph, RTL export options) of a block; also read by benchmarks/bench_coverage.py."""
    return [(g, {"conv_style": ("pixel", "parallel")[k % 2]}) for k, g in enumerate(_graphs(spec))]


def _four_way(tmp_path, graphs) -> None:
    _require("qfx.sim.csim")
    _require("qfx.sim.cosim")
    from qfx.backends import hls, rtl
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes
    from qfx.sim.cosim import run_cosim_many
    from qfx.sim.csim import run_csim_batch

    assert len({g.name for g in graphs}) == len(graphs)
    hls_dirs, rtl_dirs = [], []
    for k, g in enumerate(graphs):
        x = random_inputs(g, N_VECTORS, SEED)
        rep = informativeness(g, x)
        assert rep.ok, (g.name, rep.violations())
        gold = np.asarray(run(g, x))
        # onnxruntime on the exported model, same vectors
        got = run_onnx_codes(to_onnx_model(g).SerializeToString(), g, x)
        assert np.array_equal(got, gold), f"{g.name}: onnxruntime differs from the golden interpreter"
        for backend, dirs, name in ((hls, hls_dirs, "hls"), (rtl, rtl_dirs, "rtl")):
            d = tmp_path / f"{name}{k}"
            d.mkdir()
            backend.write_project(g, d, **({"conv_style": ("pixel", "parallel")[k % 2]} if name == "rtl" else {}))
            dirs.append(d)
    csim = run_csim_batch(hls_dirs, N_VECTORS, seed=SEED)
    cosim = run_cosim_many(rtl_dirs, N_VECTORS, seed=SEED, backpressure=True, work_dir=tmp_path / "cosim")
    bad = []
    for g, c, r in zip(graphs, csim, cosim):
        n_out = N_VECTORS * sum(g.tensor(o).size for o in g.outputs)
        assert c.vectors == N_VECTORS and c.outputs_compared == n_out, (g.name, c.to_dict())
        assert r.vectors == N_VECTORS and r.received == N_VECTORS, (g.name, r.to_dict())
        if c.mismatches:
            bad.append((g.name, "csim", c.mismatches, c.first_mismatch))
        if not r.ok:
            bad.append((g.name, "rtl", r.mismatches, r.first_mismatch, r.timed_out))
    assert not bad, bad


@pytest.mark.gxx
@pytest.mark.verilator
def test_four_executors_agree_representative(tmp_path):
    graphs = _graphs(FAST)
    cats = {c for g in graphs for n in g.nodes for c in op_def(n.op).categories}
    # the subset is only representative if it exercises these (a change of the generator table fails here)
    assert {Categories.CONV, Categories.LINEAR, Categories.BINARY, Categories.POOL} <= cats, cats
    assert any(n.attr("khot", 0) for g in graphs for n in g.nodes)
    _four_way(tmp_path, graphs)


@pytest.mark.slow
@pytest.mark.gxx
@pytest.mark.verilator
@pytest.mark.parametrize("block", range(len(SLOW_BLOCKS)))
def test_four_executors_agree_more(tmp_path, block):
    _four_way(tmp_path, _graphs(SLOW_BLOCKS[block]))


def test_model_count():
    """At least 50 random models in all (the brief of the differential layer of the testing pyramid)."""
    assert len(FAST) + sum(map(len, SLOW_BLOCKS)) >= 50
