"""``qfx demo`` on a loaded machine: the torch thread count it picks, and the resource stage's timeout message."""
from __future__ import annotations

import pytest

from qfx import demo
from qfx.errors import QfxError


@pytest.mark.parametrize("cores,load,want", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 9.0, 1), (16, 3.0, 2),
                                             (1, 0.0, 1)])
def test_auto_threads_follows_the_load(monkeypatch, cores, load, want):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (load, load, load))
    assert demo.auto_threads() == want


def test_auto_threads_without_loadavg(monkeypatch):
    def boom():
        raise OSError("no load average")

    monkeypatch.setattr(demo.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(demo.os, "getloadavg", boom)
    assert demo.auto_threads() == 2


def test_synth_timeout_message_names_the_budget(monkeypatch, tmp_path):
    (tmp_path / "rtl").mkdir()
    (tmp_path / "rtl" / "cosim.json").write_text("{}")

    def slow(project, timeout, quiet):  # a later layer's run got only what was left of the budget
        raise QfxError("Yosys synthesis exceeded 36 s (log: /tmp/x/synth.log)")

    monkeypatch.setattr(demo, "_resources", slow)
    cfg = demo.DemoConfig(synth_timeout=240.0)
    res = demo._stage_resources(cfg, tmp_path, [], True)
    assert res.status == "skipped"
    assert "240 s budget" in res.detail and "36 s" not in res.detail
    assert "/tmp/x/synth.log" in res.detail and "--synth-timeout" in res.detail
    assert "\n" not in res.detail
