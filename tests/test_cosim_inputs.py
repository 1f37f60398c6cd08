"""``run_cosim(..., inputs=)`` / ``run_cosim_many(..., inputs=)``: the given vectors are the ones simulated, bad ones
are refused with one line before anything is built; cosim.json's ``ii`` reaches the report and the tb timeout."""
from __future__ import annotations

import json

import numpy as np
import pytest

from qfx.backends.rtl import write_project
from qfx.errors import BadInputError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.ir.interpret import random_inputs, run
from qfx.resources import data_dir
from qfx.sim.cosim import run_cosim, run_cosim_many, unpack_words


def _graph(name: str, seed: int, n_in: int = 5, n_out: int = 3) -> Graph:
    """Dense + ReLU with a signed 6-bit input and a wide output: every input code change shows in the output."""
    rng = np.random.default_rng(seed)
    fx, fw, fb = FxFormat(6, 2), FxFormat(6, 1), FxFormat(8, 3)
    w = rng.integers(fw.min_code, fw.max_code, (n_out, n_in), endpoint=True)
    w[w == 0] = 5
    b = rng.integers(fb.min_code, fb.max_code, (n_out,), endpoint=True)
    acc = lossless_acc_format(w, fw, fx, b, fb)
    t = {"x": TensorSpec("x", (n_in,), fx), "y": TensorSpec("y", (n_out,), acc),
         "r": TensorSpec("r", (n_out,), acc)}
    nodes = (Node("fc", Op.DENSE, ("x",), "y", {"weight": Constant(w, fw), "bias": Constant(b, fb)}, {}, acc),
             Node("relu", Op.RELU, ("y",), "r"))
    return Graph(name, ("x",), ("r",), t, nodes).validate()


def _project(tmp_path, name: str, seed: int, **kw):
    g = _graph(name, seed, **kw)
    d = tmp_path / name
    d.mkdir()
    write_project(g, d)
    return g, d


def test_bad_inputs_refused_before_build(tmp_path, monkeypatch):
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    g, d = _project(tmp_path, "bad_in", 1)
    f = g.tensor("x").fmt
    ok = random_inputs(g, 4, 0)
    cases = {
        "dtype float64": ok.astype(np.float64),
        "dtype bool": ok > 0,
        "shape (4, 6)": np.zeros((4, 6), dtype=np.int64),
        "shape (5,)": ok[0],
        "no vectors": np.zeros((0, 5), dtype=np.int64),
        f"code {f.max_code + 1} outside": np.where(np.arange(5) == 2, f.max_code + 1, ok),
        f"code {f.min_code - 1} outside": np.where(np.arange(5) == 4, f.min_code - 1, ok),
    }
    for needle, x in cases.items():
        with pytest.raises(BadInputError) as ei:
            run_cosim(d, inputs=x, work_dir=tmp_path / "w")
        msg = str(ei.value)
        assert needle in msg and "\n" not in msg, (needle, msg)
    with pytest.raises(BadInputError, match="2 arrays for 1 projects"):
        run_cosim_many([d], inputs=[ok, ok])
    with pytest.raises(BadInputError, match="one array"):
        run_cosim_many([d], inputs=ok)
    info = json.loads((d / "cosim.json").read_text())
    for bad in (0, -2, "2", 1.5, True):
        (d / "cosim.json").write_text(json.dumps({**info, "ii": bad}))
        with pytest.raises(BadInputError, match='"ii" must be a positive integer'):
            run_cosim(d, n_vectors=3)
    # nothing was built or simulated for any refused call
    assert not (tmp_path / "w").exists()
    assert not any((tmp_path / "cache").glob("verilator/*"))


def test_cycle_limit_scales_with_ii():
    import sys

    sys.path.insert(0, str(data_dir("tb")))
    try:
        from qfx_cosim_tb import cycle_limit
    finally:
        sys.path.remove(str(data_dir("tb")))
    for n in (1, 37, 1000):
        for lat in (0, 5, 300):
            prev = 0
            for ii in (1, 2, 7, 64, 1000):
                lim = cycle_limit(n, lat, ii)
                # at least twice the stall-free streaming time, and never shorter for a slower design
                assert lim >= 2 * (ii * n + lat) and lim > prev
                prev = lim
    assert cycle_limit(1000, 5, 1) >= 50 * 1000  # the margin for one beat per cycle stays as wide as before


@pytest.mark.verilator
def test_given_inputs_are_the_simulated_ones(tmp_path, monkeypatch):
    """Two designs in one build: one streams given vectors (N differs from n_vectors), one random ones with a
    cosim.json ``ii`` of 3. The outputs the RTL produced equal qfx.ir.run of the GIVEN vectors, which differ from
    the outputs of the vectors cosim would have drawn itself."""
    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    g1, d1 = _project(tmp_path, "given_a", 2)
    g2, d2 = _project(tmp_path, "given_b", 3, n_in=4, n_out=2)
    info2 = json.loads((d2 / "cosim.json").read_text())
    (d2 / "cosim.json").write_text(json.dumps({**info2, "ii": 3}))
    f = g1.tensor("x").fmt
    rng = np.random.default_rng(99)
    x = rng.integers(f.min_code, f.max_code, (23, 5), endpoint=True).astype(np.int32)  # any integer dtype
    x[0], x[1] = f.max_code, f.min_code
    want = np.asarray(run(g1, x.astype(np.int64)))
    drawn = np.asarray(run(g1, random_inputs(g1, len(x), 7)))
    assert not np.array_equal(want, drawn)
    work = tmp_path / "work"
    r1, r2 = run_cosim_many([d1, d2], n_vectors=40, seed=7, work_dir=work, inputs=[x, None])
    assert r1.ok and r2.ok, (r1.first_mismatch, r2.first_mismatch)
    assert (r1.vectors, r1.received, r1.outputs_compared) == (23, 23, 23 * 3)
    assert (r2.vectors, r2.received, r2.outputs_compared) == (40, 40, 40 * 2)
    assert (r1.ii, r2.ii) == (1, 3) and r1.extra["inputs"] == "given" and r2.extra["inputs"] == "edge + random"
    got = json.loads((work / "results.json").read_text())["duts"][0]["got"]
    info1 = json.loads((d1 / "cosim.json").read_text())
    got = unpack_words([int(v, 16) for v in got], info1["out_count"], info1["out_ew"], info1["out_signed"])
    np.testing.assert_array_equal(got, want)
    conf = json.loads((work / "cosim_config.json").read_text())
    assert [c["ii"] for c in conf["duts"]] == [1, 3]
    assert json.loads((d1 / "cosim_report.json").read_text())["vectors"] == 23
    # fresh builds say where their time went (both steps, wall and CPU)
    b = r1.extra["build"]
    assert b["verilate_s"] > 0 and b["make_cpu_s"] > 0 and b["runtime_reused"] is False
