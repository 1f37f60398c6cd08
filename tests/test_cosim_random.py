"""Random informative models -> SystemVerilog -> cocotb + Verilator with random AXI-Stream stalls: every output bit
equals the golden interpreter's. Many models share one Verilator build (``run_cosim_many``) to keep the suite fast.

The models come from ``random_graph(..., informative=True)``: formats calibrated on data, so outputs take many
distinct values and intermediate casts round, tie and sometimes overflow instead of saturating or staying constant
(checked here on the simulated vectors with ``qfx.ir.informative``). Convolutional designs alternate pixel-folded and
fully parallel convolutions; register stages, adder styles and K-hot probabilities vary by position.
"""
from __future__ import annotations

import pytest

from qfx.ir.informative import informativeness
from qfx.ir.interpret import random_inputs
from qfx.ir.random_graph import random_graph

pytestmark = pytest.mark.verilator

N_VECTORS = 300
VECTOR_SEED = 11

#: (kind, seeds) of the CI run (20 models) and of the slow run
SWEEP_FAST = [("mlp", range(100, 112)), ("cnn", range(100, 108))]
SWEEP_SLOW = [("mlp", range(200, 216)), ("cnn", range(200, 216)), ("mlp", range(300, 316)), ("cnn", range(300, 316))]


def designs(kind: str, seeds) -> list[tuple]:
    """(graph, RTL export options) of one batch; also read by benchmarks/bench_coverage.py."""
    out = []
    for i, s in enumerate(seeds):
        g = random_graph(s, kind=kind, khot_prob=(0.0, 0.5, 1.0)[i % 3], informative=True)
        out.append((g, {"register_stages": i % 4 != 3, "adder": ("cse", "csd")[i % 5 == 4],
                        "conv_style": ("pixel", "parallel")[i % 2]}))
    return out


def _batch(tmp_path, kind: str, seeds):
    from qfx.backends.rtl import write_project
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for g, opts in designs(kind, seeds):
        rep = informativeness(g, random_inputs(g, N_VECTORS, VECTOR_SEED))
        assert rep.ok, (g.name, rep.violations())
        d = tmp_path / g.name
        d.mkdir()
        write_project(g, d, **opts)
        dirs.append(d)
    reps = run_cosim_many(dirs, N_VECTORS, seed=VECTOR_SEED, backpressure=True, work_dir=tmp_path / "work")
    bad = [(r.top, r.mismatches, r.received, r.first_mismatch) for r in reps if not r.ok]
    assert not bad, bad
    assert all(r.outputs_compared > 0 and r.received == N_VECTORS for r in reps)
    return reps


@pytest.mark.parametrize("kind,seeds", SWEEP_FAST, ids=[k for k, _ in SWEEP_FAST])
def test_random_models_bit_exact(tmp_path, kind, seeds):
    """20 models in the default run (fully parallel convolutions unroll every pixel, so CNN builds cost more)."""
    _batch(tmp_path, kind, seeds)


@pytest.mark.slow
@pytest.mark.parametrize("kind,seeds", SWEEP_SLOW, ids=[f"{k}{s.start}" for k, s in SWEEP_SLOW])
def test_more_random_models_bit_exact(tmp_path, kind, seeds):
    _batch(tmp_path, kind, seeds)
