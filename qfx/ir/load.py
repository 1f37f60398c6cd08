"""Load a model file of any kind qfx reads as a ``Graph``: IR JSON, ONNX (import) or a qfx checkpoint (capture)."""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

from qfx.errors import BadInputError, QfxError, UnsupportedError
from qfx.ir.graph import Graph

__all__ = ["load_graph", "read_checkpoint", "SUFFIXES"]

SUFFIXES = (".json", ".onnx", ".pt", ".pth")


def load_graph(path: str | os.PathLike[str], name: str | None = None) -> Graph:
    """``.json`` (qfx IR), ``.onnx`` (qfx/QONNX/plain import), ``.pt``/``.pth`` (a ``qfx.save`` checkpoint: its
    embedded IR; a ``qfx train`` checkpoint: the bundled model rebuilt and captured)."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise BadInputError(f"unknown model file type {p.suffix or '(none)'!r} for {p}; expected one of "
                            f"{', '.join(SUFFIXES)}")
    if not p.exists():
        raise BadInputError(f"model file {p} does not exist")
    if p.is_dir():
        raise BadInputError(f"model path {p} is a folder, expected a file")
    if suffix == ".json":
        g = Graph.load(p)
    elif suffix == ".onnx":
        from qfx.onnx.importer import import_onnx

        g = import_onnx(p)
    else:
        g = _load_checkpoint(p)
    return g.replace(name=name) if name else g


#: per-sample input shape of the models ``qfx train`` builds, by kind (qfx.models.INPUT_SHAPES wins if defined)
_DEFAULT_INPUT_SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 8, 8)}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_checkpoint(p: Path) -> Any:
    """``torch.load(p, weights_only=True)`` with one-line errors: a whole pickled model (``torch.save(model)``)
    is refused with what to use instead, never unpickled (that could run arbitrary code)."""
    import pickle

    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise BadInputError(f"{p} holds pickled Python objects (torch.save(model) pickles the whole model), "
                                "which qfx does not unpickle because that can run arbitrary code; write the "
                                "checkpoint with qfx.save(model, example_input, path) instead") from None
        raise BadInputError(f"cannot read checkpoint {p}: {_one_line(exc)}") from None
    except Exception as exc:  # torch.load raises many types on corrupt files
        raise BadInputError(f"cannot read checkpoint {p}: {type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return lines[0][:160] if lines else type(exc).__name__


def _load_checkpoint(p: Path) -> Graph:
    ck = read_checkpoint(p)
    if not isinstance(ck, dict) or "qfx_checkpoint" not in ck:
        plain = isinstance(ck, dict) and ck and all(hasattr(v, "shape") for v in ck.values())
        raise BadInputError(f"{p} holds {'a plain state_dict' if plain else 'no qfx checkpoint'}; write one with "
                            "qfx.save(model, example_input, path) (it embeds the model's IR)")
    if ck.get("ir") is not None:  # written by qfx.save: the IR was captured when it was saved
        try:
            return Graph.from_json(ck["ir"]).validate()
        except QfxError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file
            raise BadInputError(f"checkpoint {p} holds an unreadable IR: {_one_line(exc)}") from None
    try:
        train = importlib.import_module("qfx.nn.train")
    except ImportError:
        raise UnsupportedError("loading .pt checkpoints needs qfx.nn.train, which is not available") from None
    try:
        model, info = train.load_checkpoint(p, with_info=True)
    except QfxError:
        raise
    except Exception as exc:  # torch.load raises many types on corrupt files
        raise BadInputError(f"cannot load checkpoint {p}: {type(exc).__name__}: {_one_line(exc)}") from None
    import torch

    from qfx.ir.from_torch import capture

    example = getattr(model, "example_input", None)
    if example is None:
        kind = info.get("model_kind") if isinstance(info, dict) else None
        try:
            shapes = dict(getattr(importlib.import_module("qfx.models"), "INPUT_SHAPES", {}))
        except ImportError:
            shapes = {}
        shape = shapes.get(kind) or _DEFAULT_INPUT_SHAPES.get(kind)
        if shape is None:
            raise UnsupportedError(f"checkpoint {p}: unknown input shape for model kind {kind!r}")
        example = torch.zeros((1, *shape))
    return capture(model, example, name=p.stem)
