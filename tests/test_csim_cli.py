"""``qfx csim`` command: success report, JSON, and clean one-line errors with the documented exit codes."""
from __future__ import annotations

import json

import pytest

from qfx.backends.hls import write_project
from qfx.cli import main
from qfx.ir.random_graph import random_graph


@pytest.mark.gxx
def test_csim_ok_json_and_report(tmp_path, capsys):
    g = random_graph(2, "mlp")
    write_project(g, tmp_path)
    assert main(["csim", str(tmp_path), "-n", "300", "--seed", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["vectors"] == 300 and out["mismatches"] == 0 and out["seed"] == 4
    assert out["outputs_compared"] == 300 * g.tensor(g.outputs[0]).size
    assert json.loads((tmp_path / "csim_report.json").read_text())["mismatches"] == 0
    assert main(["csim", str(tmp_path), "-n", "10", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_not_a_folder(tmp_path, capsys):
    assert main(["csim", str(tmp_path / "nope")]) == 2
    assert "not a folder" in _err(capsys)


def test_missing_model_json(tmp_path, capsys):
    assert main(["csim", str(tmp_path)]) == 2
    assert "model.json" in _err(capsys)


def test_bad_model_json(tmp_path, capsys):
    (tmp_path / "model.json").write_text("{not json")
    assert main(["csim", str(tmp_path)]) == 2
    _err(capsys)


def test_project_without_testbench(tmp_path, capsys):
    random_graph(1, "mlp").save(tmp_path / "model.json")
    assert main(["csim", str(tmp_path)]) == 2
    assert "tb_" in _err(capsys)


def test_bad_vector_count(tmp_path, capsys):
    write_project(random_graph(1, "mlp"), tmp_path)
    assert main(["csim", str(tmp_path), "-n", "0"]) == 2
    _err(capsys)


def test_missing_compiler(tmp_path, capsys, monkeypatch):
    write_project(random_graph(1, "mlp"), tmp_path)
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    assert main(["csim", str(tmp_path)]) == 3
    assert "install" in _err(capsys)


def test_missing_headers(tmp_path, capsys):
    write_project(random_graph(1, "mlp"), tmp_path / "p") if (tmp_path / "p").mkdir() is None else None
    assert main(["csim", str(tmp_path / "p"), "--ap-include", str(tmp_path)]) == 3
    assert "ap_fixed.h" in _err(capsys)
