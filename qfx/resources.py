"""Where the bundled data folders (templates/, hls/, tb/) live, installed or in a source checkout."""
from __future__ import annotations

from pathlib import Path

from qfx.errors import MissingToolError

__all__ = ["data_dir", "DATA_DIRS"]

DATA_DIRS = ("templates", "hls", "tb")
_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Path of a bundled folder: ``qfx/_data/<name>`` in a wheel, ``<repo>/<name>`` in an editable checkout."""
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data folder {name!r}; expected one of {', '.join(DATA_DIRS)}")
    for cand in (_PKG / "_data" / name, _PKG.parent / name):
        if cand.is_dir():
            return cand
    raise MissingToolError(f"qfx data folder {name!r} not found next to {_PKG}; reinstall qfx")
