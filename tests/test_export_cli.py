"""``qfx export`` end to end: targets, atomic outputs, --force, backends, and bad input (exit 2, nothing written)."""
from __future__ import annotations

import importlib.util
import re
import sys
import types

import numpy as np
import onnx
import pytest

from qfx.cli import main
from qfx.errors import BadInputError, UnsupportedError
from qfx.ir import Graph, random_inputs, run
from qfx.ir.load import load_graph
from qfx.ir.random_graph import random_graph
from qfx.onnx import export_onnx, run_onnx_codes


@pytest.fixture
def ir_json(tmp_path):
    p = tmp_path / "model.json"
    random_graph(11, kind="cnn").save(p)
    return p


def test_export_json_to_onnx_and_back(tmp_path, ir_json, capsys):
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", str(ir_json), "--target", "onnx", "-o", str(out), "--name", "net"]) == 0
    text = capsys.readouterr().out
    assert "[size_accumulators]" in text and "wrote onnx export of 'net'" in text
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    g = load_graph(out)
    assert g.name == "net"
    ref = Graph.load(ir_json)
    x = random_inputs(ref, 40)
    np.testing.assert_array_equal(run_onnx_codes(out, g, x), run(ref, x))
    # onnx -> onnx via the alias --to is a fixed point
    out2 = tmp_path / "m2.onnx"
    assert main(["export", str(out), "--to", "onnx", "-o", str(out2), "-q", "--name", "net"]) == 0
    assert load_graph(out2).to_json_dict() == g.to_json_dict()


def test_refuses_overwrite_without_force(tmp_path, ir_json, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(ir_json), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["export", str(ir_json), "--to", "onnx", "-o", str(out), "-q", "--force"]) == 0
    assert out.read_bytes() != b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"", "is empty"),
    (b"\x08\x07garbage\xff", "not a valid ONNX file|no ONNX graph"),
])
def test_bad_model_files_exit_2_nothing_written(tmp_path, capsys, content, match):
    src = tmp_path / "in.onnx"
    if content is not None:
        src.write_bytes(content)
    out = tmp_path / "out.onnx"
    assert main(["export", str(src), "--to", "onnx", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    import re

    assert re.search(match, err)
    assert not out.exists()


def test_truncated_onnx_and_bad_suffix(tmp_path, capsys):
    good = export_onnx(random_graph(2), tmp_path / "good.onnx")
    data = good.read_bytes()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "o.onnx"
    assert main(["export", str(bad), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert not out.exists()
    weird = tmp_path / "model.txt"
    weird.write_text("x")
    assert main(["export", str(weird), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert "unknown model file type '.txt'" in capsys.readouterr().err and not out.exists()


def test_formats_out_of_range_in_json(tmp_path, capsys):
    g = random_graph(3).to_json_dict()
    g["tensors"][0]["fmt"]["width"] = 99
    import json

    src = tmp_path / "bad.json"
    src.write_text(json.dumps(g))
    out = tmp_path / "o.onnx"
    assert main(["export", str(src), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert "width" in capsys.readouterr().err and not out.exists()


def test_wide_format_not_exact_in_double(tmp_path, capsys):
    """A 60-bit activation cannot be carried exactly by float64 ONNX: clear error, nothing written."""
    g = random_graph(3, kind="mlp").to_json_dict()
    g["tensors"][-1]["fmt"]["width"] = 60  # the output: accumulators stay small, the value needs 60 bits
    import json

    src = tmp_path / "wide.json"
    src.write_text(json.dumps(g))
    out = tmp_path / "o.onnx"
    assert main(["export", str(src), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert "53" in capsys.readouterr().err and not out.exists()


def test_target_options_checked(tmp_path, ir_json, capsys):
    out = tmp_path / "o.onnx"
    assert main(["export", str(ir_json), "--to", "onnx", "-o", str(out), "--part", "xc7", "-q"]) == 2
    assert "--part" in capsys.readouterr().err and not out.exists()


def test_backend_target_with_fake_backend(tmp_path, ir_json, monkeypatch, capsys):
    """hls/rtl call qfx.backends.<target>.write_project into an empty temp folder that is renamed into place."""
    calls = {}

    def write_project(graph, outdir, **options):
        assert outdir.is_dir() and not any(outdir.iterdir())
        calls["options"] = options
        (outdir / "top.sv").write_text(f"// {graph.name}\n")

    def failing(graph, outdir, **options):
        (outdir / "half.sv").write_text("partial")
        raise BadInputError("backend refused the graph")

    fake = types.ModuleType("qfx.backends.rtl")
    fake.write_project = write_project
    monkeypatch.setitem(sys.modules, "qfx.backends.rtl", fake)
    out = tmp_path / "rtl"
    assert main(["export", str(ir_json), "--target", "rtl", "-o", str(out), "--register-stages", "0", "-q"]) == 0
    assert calls["options"] == {"register_stages": 0} and (out / "top.sv").exists()
    fake.write_project = failing
    out2 = tmp_path / "rtl2"
    assert main(["export", str(ir_json), "--target", "rtl", "-o", str(out2), "-q"]) == 2
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rtl2")]
    capsys.readouterr()


def test_missing_backend_is_unsupported(tmp_path, ir_json, monkeypatch):
    from qfx.commands import export as cmd

    monkeypatch.setitem(sys.modules, "qfx.backends.hls", None)  # import fails as if absent
    with pytest.raises((UnsupportedError, ImportError)):
        cmd._backend("hls")


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--target" in out and "--register-stages" in out and "--io" in out


# ---------------------------------------------------------------------------------------------- load_graph
def test_load_graph_errors(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_graph(tmp_path / "x.json")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(BadInputError, match="folder"):
        load_graph(tmp_path / "d.onnx")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not a qfx IR JSON"):
        load_graph(tmp_path / "bad.json")
    (tmp_path / "bad.pt").write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(BadInputError):
        load_graph(tmp_path / "bad.pt")


@pytest.mark.skipif(importlib.util.find_spec("qfx.nn.train") is None, reason="qfx.nn.train not available")
def test_load_checkpoint_and_export(tmp_path):
    """A qfx checkpoint (.pt) -> capture -> ONNX: bit-exact with the model's exact mode."""
    import torch

    import qfx.nn as qnn
    from qfx.models import build_model
    from qfx.nn.train import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    calib = torch.rand(128, 1, 8, 8) * 16
    cfg = qnn.QFXConfig()
    model = qnn.quantize_model(build_model("mlp"), cfg, calib_data=calib)
    ck = {"qfx_checkpoint": CHECKPOINT_VERSION, "model_kind": "mlp", "config": model.qfx_config.to_dict(),
          "state_dict": model.state_dict()}
    pt = save_checkpoint(ck, tmp_path / "mlp.pt")
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(pt), "--to", "onnx", "-o", str(out), "-q"]) == 0
    g = load_graph(out)
    m = load_checkpoint(pt)
    x = torch.rand(64, 1, 8, 8) * 16
    with qnn.mode(m, "exact"):
        y = m(x).numpy()
    codes = g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy())
    np.testing.assert_array_equal(g.tensor(g.outputs[0]).fmt.from_int(run_onnx_codes(out, g, codes)), y)


@pytest.mark.skipif(importlib.util.find_spec("qfx.backends.hls") is None, reason="qfx.backends.hls not available")
def test_real_hls_backend_from_onnx(tmp_path, capsys):
    """An ONNX file (qfx-exported) to an HLS project through the real backend; options pass through."""
    src = export_onnx(random_graph(12, kind="cnn"), tmp_path / "m.onnx")
    out = tmp_path / "prj"
    rc = main(["export", str(src), "--to", "hls", "-o", str(out), "-q", "--io", "stream", "--clock-ns", "4"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_dir() and any(out.iterdir())
    assert main(["export", str(src), "--to", "hls", "-o", str(out), "-q"]) == 2  # exists, no --force


# ---------------------------------------------------------------------------------------------- issue 13
@pytest.mark.parametrize("args,flag", [
    (["--to", "hls", "--clock-ns", "-1"], "--clock-ns must be a positive number"),
    (["--to", "hls", "--reuse-factor", "0"], "--reuse-factor must be an integer >= 1"),
    (["--to", "rtl", "--register-stages", "-2"], "--register-stages must be 0"),
    (["--to", "onnx", "--part", "xc7"], "--part do.es. not apply to --target onnx"),
])
def test_option_values_checked_before_the_pass_report(tmp_path, ir_json, capsys, args, flag):
    out = tmp_path / "out"
    assert main(["export", str(ir_json), "-o", str(out), *args]) == 2
    cap = capsys.readouterr()
    assert re.search(flag, cap.err) and cap.err.count("\n") == 1
    assert "[size_accumulators]" not in cap.out and not out.exists()  # nothing loaded, reported or written


def test_onnx_output_needs_onnx_suffix(tmp_path, ir_json, capsys):
    out = tmp_path / "exported.json"
    assert main(["export", str(ir_json), "--to", "onnx", "-o", str(out), "-q"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("target", ["hls", "rtl"])
def test_write_project_creates_the_folder_and_refuses_a_full_one(tmp_path, target):
    import importlib

    write_project = importlib.import_module(f"qfx.backends.{target}").write_project
    g = random_graph(5, kind="mlp")
    out = tmp_path / "new" / "prj"
    write_project(g, out)
    assert (out / "model.json").is_file()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not an? ?empty|not empty"):
        write_project(g, full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
