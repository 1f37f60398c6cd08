"""Random models -> SystemVerilog -> cocotb + Verilator with random AXI-Stream stalls: every output bit equals the
golden interpreter's. Many models share one Verilator build (``run_cosim_many``) to keep the suite fast."""
from __future__ import annotations

import pytest

from qfx.backends.rtl import write_project
from qfx.ir.random_graph import random_graph
from qfx.sim.cosim import run_cosim_many

pytestmark = pytest.mark.verilator

N_VECTORS = 300


def _batch(tmp_path, kind: str, seeds, **kw):
    dirs = []
    for i, s in enumerate(seeds):
        g = random_graph(s, kind=kind, khot_prob=(0.0, 0.5, 1.0)[i % 3])
        d = tmp_path / f"p{s}"
        d.mkdir()
        write_project(g, d, register_stages=(i % 4 != 3), adder=("cse", "csd")[i % 5 == 4], **kw)
        dirs.append(d)
    reps = run_cosim_many(dirs, N_VECTORS, seed=11, backpressure=True, work_dir=tmp_path / "work")
    bad = [(r.top, r.mismatches, r.received, r.first_mismatch) for r in reps if not r.ok]
    assert not bad, bad
    assert all(r.outputs_compared > 0 and r.received == N_VECTORS for r in reps)
    return reps


@pytest.mark.parametrize("kind,count", [("mlp", 12), ("cnn", 8)])
def test_random_models_bit_exact(tmp_path, kind, count):
    """20 models in the default run (convolutions are unrolled per pixel, so CNN builds cost more)."""
    _batch(tmp_path, kind, range(100, 100 + count))


@pytest.mark.slow
@pytest.mark.parametrize("kind,start", [("mlp", 200), ("cnn", 200), ("mlp", 300), ("cnn", 300)])
def test_more_random_models_bit_exact(tmp_path, kind, start):
    _batch(tmp_path, kind, range(start, start + 16))
