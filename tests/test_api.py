"""``qfx.export`` / ``qfx.save``: a user's own model to ONNX, HLS and RTL in one call, checkpoints ``qfx export``
reads for any model, clean refusals (float models, pickled models, bad options), and outputs under the umask."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
import qfx.nn as qn
from qfx.cli import main
from qfx.errors import BadInputError, OutputExistsError
from qfx.ir import run
from qfx.ir.load import load_graph


class Tiny(nn.Module):
    """Functional code the way people write it: F.relu, a residual `+`, a global mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = F.relu(self.conv(x))
        h = h + self.conv2(h)
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 6, 6)
    q = qfx.quantize_model(Tiny(), qfx.QFXConfig(weight_width=6, act_width=6), x)
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    for _ in range(2):  # "train": a couple of steps, so nothing below depends on the calibration alone
        opt.zero_grad()
        F.cross_entropy(q(x), torch.arange(64) % 4).backward()
        opt.step()
    return q, x


def _exact(q, x):
    was = q.training
    q.eval()
    with qn.mode(q, "exact"):
        y = q(x).numpy()
    q.train(was)
    return y


def test_public_names():
    assert {"quantize_model", "QFXConfig", "export", "save"} <= set(qfx.__all__)
    ns: dict = {}
    exec("from qfx import *", ns)
    assert ns["export"] is qfx.api.export and ns["QFXConfig"] is qfx.nn.QFXConfig


def test_export_onnx_is_bit_exact_and_leaves_mode(tmp_path, trained):
    from qfx.onnx import run_onnx_codes

    q, x = trained
    q.train()
    path = qfx.export(q, x[:1], "onnx", tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx" and q.training  # exported in eval mode, the caller's mode restored
    g = load_graph(path)
    assert g.name == "Tiny"
    codes = g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy())
    np.testing.assert_array_equal(g.tensor(g.outputs[0]).fmt.from_int(run_onnx_codes(path, g, codes)), _exact(q, x))
    with pytest.raises(OutputExistsError):
        qfx.export(q, x[:1], "onnx", path)
    assert qfx.export(q, x[:1], "onnx", path, force=True) == path


def test_export_hls_and_rtl_folders(tmp_path, trained):
    q, x = trained
    hls = qfx.export(q, x[:1], "hls", tmp_path / "a" / "prj_hls", clock_ns=4, io="stream", name="tiny")
    assert (hls / "model.json").is_file() and "tiny" in (hls / "build_prj.tcl").read_text()
    rtl = qfx.export(q, x[:1], "rtl", tmp_path / "prj_rtl", register_stages=1)
    assert json.loads((rtl / "cosim.json").read_text()) and list((rtl / "rtl").glob("*.sv"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "prj_rtl"]  # no temporary folders left


@pytest.mark.parametrize("target,options,match", [
    ("hls", {"clock_ns": -1}, "clock_ns must be a positive number"),
    ("hls", {"reuse_factor": 0}, "reuse_factor must be an integer >= 1"),
    ("rtl", {"register_stages": -2}, "register_stages must be 0"),
    ("rtl", {"part": "xc7"}, "part do.es. not apply to target rtl"),
    ("onnx", {"io": "stream"}, "io do.es. not apply"),
    ("verilog", {}, "unknown target 'verilog'"),
])
def test_bad_options_refused_before_capture(tmp_path, target, options, match):
    """Checked first: a float model (which capture would refuse) still gets the option error."""
    with pytest.raises(BadInputError, match=match):
        qfx.export(Tiny(), torch.zeros(1, 1, 6, 6), target, tmp_path / "out", **options)
    assert not list(tmp_path.iterdir())


def test_float_model_and_bad_example(tmp_path, trained):
    with pytest.raises(BadInputError, match=r"float model .*quantize it first with qfx.quantize_model"):
        qfx.export(Tiny(), torch.zeros(1, 1, 6, 6), "onnx", tmp_path / "f.onnx")
    q, _ = trained
    with pytest.raises(BadInputError, match="batch-first tensor"):
        qfx.export(q, [1, 2, 3], "onnx", tmp_path / "f.onnx")
    with pytest.raises(BadInputError, match=r"'m.json' must end in .onnx"):
        qfx.export(q, torch.zeros(1, 1, 6, 6), "onnx", tmp_path / "m.json")
    assert not list(tmp_path.iterdir())


def test_save_then_cli_export_any_model(tmp_path, trained, capsys):
    from qfx.onnx import run_onnx_codes

    q, x = trained
    pt = qfx.save(q, x[:1], tmp_path / "tiny.pt")
    ck = torch.load(pt, weights_only=True)  # plain data: no pickled classes
    assert ck["model_class"] == "Tiny" and ck["input_shape"] == [1, 6, 6] and ck["config"]["act_width"] == 6
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(pt), "--to", "onnx", "-o", str(out), "-q"]) == 0, capsys.readouterr().err
    g = load_graph(pt)
    assert g.name == "tiny"
    codes = g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy())
    y = _exact(q, x)
    np.testing.assert_array_equal(g.tensor(g.outputs[0]).fmt.from_int(run(g, codes)), y)
    np.testing.assert_array_equal(g.tensor(g.outputs[0]).fmt.from_int(run_onnx_codes(out, g, codes)), y)
    with pytest.raises(OutputExistsError):
        qfx.save(q, x[:1], pt)


@pytest.mark.parametrize("kind", ["pickled", "state_dict"])
def test_non_qfx_checkpoints_one_clean_line(tmp_path, trained, capsys, kind):
    q, _ = trained
    pt = tmp_path / "m.pt"
    torch.save(q if kind == "pickled" else q.state_dict(), pt)
    assert main(["export", str(pt), "--to", "onnx", "-o", str(tmp_path / "m.onnx"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "qfx.save(model, example_input, path)" in err
    assert ("pickled" if kind == "pickled" else "plain state_dict") in err
    assert not (tmp_path / "m.onnx").exists()


def test_outputs_follow_the_umask(tmp_path, trained):
    q, x = trained
    old = os.umask(0o027)
    try:
        f = qfx.export(q, x[:1], "onnx", tmp_path / "m.onnx")
        d = qfx.export(q, x[:1], "hls", tmp_path / "prj")
        pt = qfx.save(q, x[:1], tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640 and stat.S_IMODE(pt.stat().st_mode) == 0o640
    assert stat.S_IMODE(d.stat().st_mode) == 0o750


@pytest.mark.gxx
def test_global_average_pool_hls_is_bit_exact(tmp_path, trained):
    """x.mean((2, 3)) over 6x6 is an avgpool2d with a non-power-of-two window (recip 1/36 rounded), which the
    random graphs (2x2 windows only) never produce: the C simulation must still match the interpreter."""
    from qfx.sim.csim import run_csim

    q, x = trained
    prj = qfx.export(q, x[:1], "hls", tmp_path / "prj")
    g = load_graph(prj / "model.json")
    pool = [n for n in g.nodes if n.op.value == "avgpool2d"]
    assert pool and tuple(pool[0].attrs["kernel"]) == (6, 6)
    rep = run_csim(prj, n_vectors=300, seed=1)
    assert rep.passed and rep.mismatches == 0
