"""``qfx demo`` end to end (reduced epochs and vectors): exit status, summary.json, a self-contained report.html,
atomic output that a second run without --force leaves untouched."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

QFX = [sys.executable, "-m", "qfx"]
FAST = ["--bits", "6", "--epochs", "1", "--float-epochs", "2", "--vectors", "120", "--sweep", "none", "--quiet",
        "--skip", "rtl", "--threads", "1"]
# RTL co-simulation of the demo model costs a Verilator build of minutes; test_demo_stages runs the demo's RTL stage
# on a small model, test_differential runs many models through cosim.


def _qfx(args, timeout=600, env=None):
    return subprocess.run(QFX + args, capture_output=True, text=True, timeout=timeout, env=env)


def _tree(d):
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    res = _qfx(["demo", "--model", "mlp", "-o", str(out)] + FAST)
    return out, res


def test_demo_exit_and_summary(demo_run):
    out, res = demo_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    s = json.loads((out / "summary.json").read_text())
    acc = s["accuracy"]
    for k in ("float", "qat", "ptq"):
        assert 0.5 < acc[k] <= 1.0, (k, acc[k])  # 10 classes: chance is 0.1; even 1-2 epochs learn digits
    assert acc["test_images"] == 450
    assert s["vectors"] == {"total": 120, "from_test_set": 120}
    levels = {lv["name"]: lv for lv in s["levels"]}
    assert list(levels) == ["emulation", "onnxruntime", "csim", "rtl"]
    ran = [lv for lv in levels.values() if lv["status"] not in ("skipped", "unavailable")]
    assert levels["emulation"]["status"] == "ok" and levels["onnxruntime"]["status"] == "ok"
    for lv in ran:
        assert lv["status"] == "ok" and lv["mismatches"] == 0 and lv["outputs_compared"] == lv["vectors"] * 10, lv
    if os.environ.get("CI"):  # CI installs every tool: nothing may be skipped there
        assert len(ran) == 3, [(lv["name"], lv["detail"]) for lv in levels.values()]
    # the formats table is the exported graph's: every dense layer has weight and accumulator formats
    dense = [r for r in s["layers"] if r["op"] == "dense"]
    assert len(dense) == 3 and all(r["weight"].startswith("ap_") and r["acc"].startswith("ap_") for r in dense)
    # the printed summary is the one from summary.txt, with every level named
    assert res.stdout.strip() == (out / "summary.txt").read_text().strip()
    for word in ("emulation", "onnxruntime", "C-sim", "RTL", "resources", "PTQ", "QAT"):
        assert word in res.stdout
    assert levels["rtl"]["detail"] == "left out (--skip rtl)"
    for name in ("model.pt", "model.json", "model.onnx", "hls", "summary.json", "report.html"):
        assert (out / name).exists(), name


def test_demo_report_self_contained(demo_run):
    out, res = demo_run
    html = (out / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", html), "reference to an external resource"
    assert "<script" not in html.lower()
    assert html.count("<svg") >= 3  # int bits over training, weight histograms, accuracy vs bits
    assert "net.0.weight" in html or "net_1" in html or "weight" in html


def test_demo_refuses_existing_output(demo_run):
    out, first = demo_run
    assert first.returncode == 0
    before = _tree(out)
    res = _qfx(["demo", "--model", "mlp", "-o", str(out)] + FAST, timeout=120)
    assert res.returncode == 2
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert _tree(out) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_demo_bad_arguments(tmp_path):
    for args in (["--bits", "1"], ["--vectors", "0"], ["--skip", "everything"], ["--khot", "0"]):
        res = _qfx(["demo", "-o", str(tmp_path / "x")] + args, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_demo_default_cnn(tmp_path):
    """The default model (CNN) with 1000 vectors: every level, RTL co-simulation of the pixel-folded design
    included, is bit-exact, and the resource report ran (0 DSP: constants are shift-and-add)."""
    out = tmp_path / "cnn"
    res = _qfx(["demo", "-o", str(out), "--epochs", "1", "--float-epochs", "2", "--sweep", "none", "--quiet",
                "--json"], timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads(res.stdout)
    assert s == json.loads((out / "summary.json").read_text())
    assert s["config"]["model"] == "cnn" and s["vectors"] == {"total": 1000, "from_test_set": 450}
    levels = {lv["name"]: lv for lv in s["levels"]}
    assert levels["emulation"]["status"] == levels["onnxruntime"]["status"] == "ok"
    assert levels["csim"]["status"] in ("ok", "skipped")
    rtl = levels["rtl"]
    assert rtl["status"] == "ok" and rtl["mismatches"] == 0, rtl
    assert s["resources"]["status"] == "ok" and s["resources"]["extra"]["total"]["dsp"] == 0, s["resources"]
    assert {r["op"] for r in s["layers"]} >= {"conv2d", "add", "maxpool2d", "dense"}
