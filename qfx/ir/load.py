"""Load a model file of any kind qfx reads as a ``Graph``: IR JSON, ONNX (import) or a qfx checkpoint (capture)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

from qfx.errors import BadInputError, QfxError, UnsupportedError
from qfx.ir.graph import Graph

__all__ = ["load_graph", "SUFFIXES"]

SUFFIXES = (".json", ".onnx", ".pt", ".pth")


def load_graph(path: str | os.PathLike[str], name: str | None = None) -> Graph:
    """``.json`` (qfx IR), ``.onnx`` (qfx/QONNX/plain import), ``.pt``/``.pth`` (qfx checkpoint, captured)."""
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


def _load_checkpoint(p: Path) -> Graph:
    try:
        train = importlib.import_module("qfx.nn.train")
    except ImportError:
        raise UnsupportedError("loading .pt checkpoints needs qfx.nn.train, which is not available") from None
    try:
        model, info = train.load_checkpoint(p, with_info=True)
    except QfxError:
        raise
    except Exception as exc:  # torch.load raises many types on corrupt files
        msg = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise BadInputError(f"cannot load checkpoint {p}: {type(exc).__name__}: {msg}") from None
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
