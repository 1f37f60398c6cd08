"""Conventions every ``qfx`` subcommand keeps: --help with an example (exit 0), --version, usage errors as one line
with exit 2, unwritable outputs as one line with exit 2, a missing tool as exit 3 with an install hint, and never a
traceback on stderr."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from qfx.cli import COMMANDS

QFX = [sys.executable, "-m", "qfx"]
PRESENT = [c for c in COMMANDS if importlib.util.find_spec(f"qfx.commands.{c}") is not None]


def _qfx(args, env=None, timeout=300):
    res = subprocess.run(QFX + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def ir_model(tmp_path_factory):
    """A small IR model file (export needs no tool)."""
    from qfx.ir.random_graph import random_graph

    p = tmp_path_factory.mktemp("model") / "m.json"
    random_graph(4, "mlp", khot_prob=0.0).save(p)
    return p


def test_all_commands_present():
    assert PRESENT == list(COMMANDS), f"missing subcommand modules: {sorted(set(COMMANDS) - set(PRESENT))}"


@pytest.mark.parametrize("cmd", PRESENT)
def test_help_has_example(cmd):
    res = _qfx([cmd, "--help"])
    assert res.returncode == 0
    assert res.stdout.startswith(f"usage: qfx {cmd}")
    assert "example" in res.stdout.lower(), f"'qfx {cmd} --help' shows no example"
    assert f"qfx {cmd}" in res.stdout.split("example", 1)[1]


def test_top_level_help_lists_commands():
    res = _qfx(["--help"])
    assert res.returncode == 0
    for cmd in PRESENT:
        assert cmd in res.stdout


def test_version():
    from qfx import __version__

    res = _qfx(["--version"])
    assert res.returncode == 0 and res.stdout.strip() == f"qfx {__version__}"


@pytest.mark.parametrize("args", [["frobnicate"], ["--frobnicate"], ["export", "--frobnicate", "x.json"],
                                  ["demo", "--frobnicate"], ["csim"], ["demo", "--epochs", "many"]])
def test_usage_errors_one_line_exit_2(args):
    res = _qfx(args)
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert line.startswith("qfx") and "error" in line


def test_no_command_exits_2():
    assert _qfx([]).returncode == 2


def test_unwritable_output_export(tmp_path, ir_model):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder\n")
    for target, out in (("hls", blocker / "out"), ("onnx", blocker / "out.onnx")):
        res = _qfx(["export", str(ir_model), "--target", target, "-o", str(out), "--quiet"])
        assert res.returncode == 2, (target, res.stdout, res.stderr)
        assert str(blocker) in _one_line(res.stderr)
    assert blocker.read_text() == "a regular file, not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_unwritable_output_demo(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x\n")
    res = _qfx(["demo", "-o", str(blocker / "out"), "--quiet"], timeout=120)  # fails before any training
    assert res.returncode == 2
    assert str(blocker) in _one_line(res.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_missing_gxx_exit_3_with_hint(tmp_path, ir_model):
    proj = tmp_path / "prj"
    assert _qfx(["export", str(ir_model), "--target", "hls", "-o", str(proj), "--quiet"]).returncode == 0
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "QFX_DEBUG")}
    env["PATH"] = str(empty)
    res = _qfx(["csim", str(proj), "-n", "10"], env=env)
    assert res.returncode == 3
    line = _one_line(res.stderr)
    assert "g++" in line and "install" in line


def test_existing_output_exit_2(tmp_path, ir_model):
    out = tmp_path / "prj"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    res = _qfx(["export", str(ir_model), "--target", "hls", "-o", str(out), "--quiet"])
    assert res.returncode == 2 and "--force" in _one_line(res.stderr)
    assert (out / "keep.txt").read_text() == "mine\n" and len(list(out.iterdir())) == 1


# ---------------------------------------------------------------------------------------------- issue 13
def test_exit_3_means_missing_tool_only():
    """Generated code that does not build is bad input (2), never 'missing tool' (3)."""
    from qfx.errors import BuildError, HdlBuildError, MissingToolError, exit_code

    assert exit_code(BuildError("g++ failed")) == 2 and exit_code(HdlBuildError("verilator failed")) == 2
    assert exit_code(MissingToolError("no g++")) == 3


@pytest.mark.gxx
def test_generated_code_that_does_not_build_exits_2_with_log(tmp_path, ir_model):
    proj = tmp_path / "prj"
    assert _qfx(["export", str(ir_model), "--target", "hls", "-o", str(proj), "--quiet"]).returncode == 0
    (proj / "firmware" / "weights.h").write_text("this is not C++;\n")  # a broken (hand-edited) project
    res = _qfx(["csim", str(proj), "-n", "10"])
    assert res.returncode == 2
    line = _one_line(res.stderr)
    assert "g++ failed" in line and "full log:" in line
    assert os.path.isfile(line.rsplit("full log: ", 1)[1].rstrip(")"))


def test_csim_names_real_flags(tmp_path):
    line = _one_line(_qfx(["csim", str(tmp_path / "missing")]).stderr)
    assert "--target hls" in line and "--hls'" not in line


def test_no_progress_bar_in_piped_logs(capsys, monkeypatch):
    """stderr is not a terminal under pytest: a tqdm bar would write hundreds of '\\r' updates there."""
    import qfx.nn.train as tr

    def steps(model, opt, x, y, epochs, batch, gen, on_epoch=None, progress=None):  # the loop, minus the maths
        for _ in range(epochs * 30):
            if progress:
                progress(1)

    monkeypatch.setattr(tr, "fit_epochs", steps)
    tr.train_model("mlp", bits=4, epochs=1, float_epochs=1, quiet=False, threads=1)
    assert capsys.readouterr().err == ""


def test_report_json_follows_the_umask(tmp_path, monkeypatch):
    """report.json came from mkstemp (0600 whatever the umask); it is an ordinary output file."""
    import stat

    from qfx.cli import main

    class Rep:
        def to_dict(self):
            return {"total": {"LUT": 1}}

        def table(self):
            return "LUT 1"

    monkeypatch.setattr("qfx.report.resources.report_project", lambda *a, **k: Rep())
    old = os.umask(0o002)
    try:
        assert main(["report", str(tmp_path), "--quiet"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o664
