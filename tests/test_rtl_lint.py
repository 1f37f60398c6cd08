"""Generated SystemVerilog is lint-clean (Verilator -Wall, no warnings at all) and Yosys 0.23 reads it; lint
waivers are pragmas, never logic, and no generated line is long."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from qfx.backends.rtl import write_project
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.ir.random_graph import random_graph
from qfx.sim.toolchain import find_verilator, verilator_env

MAX_LINE = 4000

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


def _big_dense(n: int = 48, m: int = 24) -> Graph:
    """One dense n -> m layer of random 8-bit weights: ~1,700 wires in one module."""
    rng = np.random.default_rng(0)
    fx, fw, fb = FxFormat(8, 3), FxFormat(8, 1), FxFormat(8, 3)
    w = rng.integers(fw.min_code, fw.max_code, (m, n), endpoint=True)
    b = rng.integers(fb.min_code, fb.max_code, (m,), endpoint=True)
    acc = lossless_acc_format(w, fw, fx, b, fb)
    t = {"x": TensorSpec("x", (n,), fx), "y": TensorSpec("y", (m,), FxFormat(10, 5, rounding="RND", overflow="SAT"))}
    node = Node("fc", Op.DENSE, ("x",), "y", {"weight": Constant(w, fw), "bias": Constant(b, fb)}, {}, acc)
    return Graph("big_dense", ("x",), ("y",), t, (node,)).validate()


def _lines_and_wires(tmp_path, adder: str = "cse"):
    g = _big_dense()
    write_project(g, tmp_path, adder=adder)
    import json

    info = json.loads((tmp_path / "cosim.json").read_text())
    files = [tmp_path / f for f in info["rtl_files"]]
    layer = (tmp_path / "rtl" / "big_dense_l0.sv").read_text()
    wires = re.findall(r"^\s*logic(?: signed)? \[\d+:0\] (\w+);", layer, re.M)
    return info["top"], files, wires


@pytest.mark.parametrize("adder", ["cse", "csd"])
def test_no_long_lines_and_no_lint_logic_in_a_big_dense_layer(tmp_path, adder):
    """A layer with ~1,700 wires: every generated line stays under 4,000 characters (the former lint-only
    ``assign unused = ^{...every wire...}`` line would have been over 10,000 here, 200,000 in the digits MLP), and
    the unused-bit waivers are Verilator pragmas, not logic a simulator evaluates."""
    _, files, wires = _lines_and_wires(tmp_path, adder)
    assert sum(len(w) + 2 for w in wires) > 2 * MAX_LINE  # so the old reduction line would have failed this test
    for f in files:
        text = f.read_text()
        longest = max(map(len, text.splitlines()))
        assert longest <= MAX_LINE, (f.name, longest)
        assert not re.search(r"assign\s+unused", text), f.name
        # every lint_off has its lint_on
        assert text.count("verilator lint_off UNUSEDSIGNAL") == text.count("verilator lint_on UNUSEDSIGNAL"), f.name


@pytest.mark.verilator
def test_big_dense_layer_lint_wall_clean(tmp_path):
    top, files, _ = _lines_and_wires(tmp_path)
    r = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", top, *map(str, files)],
                       env=verilator_env(), capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "%Warning" not in out and "%Error" not in out, out[:3000]
