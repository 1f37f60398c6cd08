"""The bounded adder-graph search (``cse_block``) changes the generated RTL of wide layers but never its bits:
cocotb + Verilator against the golden interpreter, with tiny blocks so that every layer goes through several blocks
and merge rounds (dense layers and the per-pixel kernel of folded convolutions)."""
from __future__ import annotations

import json

import pytest

from qfx.backends.rtl import build_project, write_project
from qfx.errors import BadInputError
from qfx.ir.random_graph import random_graph

N_VECTORS = 200


def test_cse_block_reaches_the_design_and_is_checked():
    g = random_graph(7, kind="mlp")  # dense layers of 16, 5 and 7 inputs: blocks of 4 change them
    default, tiny = build_project(g), build_project(g, cse_block=4)
    assert tiny.info["cse_block"] == 4 and default.info["cse_block"] == 64
    assert tiny.files != default.files and tiny.info["adders"] != default.info["adders"]
    with pytest.raises(BadInputError, match="cse_block"):
        build_project(g, cse_block=1)


@pytest.mark.verilator
def test_bounded_cse_designs_bit_exact(tmp_path):
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for kind, seed, block in (("mlp", 7, 4), ("mlp", 19, 8), ("cnn", 101, 3)):
        g = random_graph(seed, kind=kind)
        d = tmp_path / f"{kind}{seed}"
        write_project(g, d, cse_block=block)
        assert json.loads((d / "cosim.json").read_text())["cse_block"] == block
        dirs.append(d)
    reps = run_cosim_many(dirs, N_VECTORS, seed=5, backpressure=True, work_dir=tmp_path / "work")
    bad = [(r.top, r.mismatches, r.first_mismatch) for r in reps if not r.ok]
    assert not bad, bad
    assert all(r.outputs_compared > 0 and r.received == N_VECTORS for r in reps)
