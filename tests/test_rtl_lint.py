"""Generated SystemVerilog is lint-clean (Verilator -Wall, no warnings at all) and Yosys 0.23 reads it."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from qfx.backends.rtl import write_project
from qfx.ir.random_graph import random_graph
from qfx.sim.toolchain import find_verilator, verilator_env

CASES = [(s, kind, kh, stages, adder) for s, kind, kh, stages, adder in [
    (0, "mlp", 0.0, True, "cse"), (1, "cnn", 0.0, True, "cse"), (2, "mlp", 1.0, True, "csd"),
    (3, "cnn", 1.0, False, "cse"), (4, "cnn", 0.3, True, "csd"), (5, "mlp", 0.3, False, "cse"),
    (6, "cnn", 0.0, True, "cse"), (7, "mlp", 0.5, True, "cse")]]


def _project(tmp_path, seed, kind, khot, stages, adder):
    g = random_graph(seed, kind=kind, khot_prob=khot)
    write_project(g, tmp_path, register_stages=stages, adder=adder)
    import json

    info = json.loads((tmp_path / "cosim.json").read_text())
    return info["top"], [tmp_path / f for f in info["rtl_files"]]


@pytest.mark.verilator
@pytest.mark.parametrize("seed,kind,khot,stages,adder", CASES)
def test_verilator_lint_wall_clean(tmp_path, seed, kind, khot, stages, adder):
    top, files = _project(tmp_path, seed, kind, khot, stages, adder)
    r = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", top, *map(str, files)],
                       env=verilator_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[:3000]
    out = r.stdout + r.stderr
    assert "%Warning" not in out and "%Error" not in out, out[:3000]


@pytest.mark.yosys
@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not on PATH")
@pytest.mark.parametrize("seed,kind,khot,stages,adder", CASES[:4])
def test_yosys_reads_and_elaborates(tmp_path, seed, kind, khot, stages, adder):
    top, files = _project(tmp_path, seed, kind, khot, stages, adder)
    script = f"read_verilog -sv {' '.join(map(str, files))}; hierarchy -check -top {top}; proc; check -assert"
    r = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
