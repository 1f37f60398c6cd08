"""The front door for a user's own model: ``qfx.export`` (one call to ONNX, HLS or RTL) and ``qfx.save``.

Why: a model that is not one of the bundled digits kinds could be exported only through an undocumented IR-JSON
detour (``capture(...).save()``, then ``qfx export m.json``), and ``qfx export`` read ``.pt`` files only for the
bundled kinds. ``export`` runs what ``qfx export`` runs (capture, the pass flow, the atomic writer of
``qfx.commands.export``); ``save`` writes a checkpoint that embeds the captured IR, so ``qfx export model.pt`` works
for any model without its Python class.

    model = qfx.quantize_model(MyNet(), qfx.QFXConfig(weight_width=6), calib_data=x[:512])
    ...                                              # ordinary training loop
    qfx.export(model, x[:1], "hls", "prj_hls", clock_ns=4)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qfx.errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from qfx.ir.graph import Graph

__all__ = ["export", "save", "capture_model"]


def capture_model(model: "torch.nn.Module", example_input: "torch.Tensor", name: str | None = None) -> "Graph":
    """The IR of a quantized model, captured in eval mode (the model's mode is restored afterwards).

    ``example_input`` is batch-first (``x[:1]`` will do): it gives the per-sample input shape. A float model is
    refused with what to do first. ``name`` defaults to the model's class (``qfx.ir.from_torch.capture``).
    """
    import torch

    from qfx.ir.from_torch import capture

    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for e in (example_input if isinstance(example_input, (tuple, list)) else [example_input]):  # one per input
        if not isinstance(e, torch.Tensor) or e.ndim < 2:
            raise BadInputError("example_input must be a batch-first tensor such as x[:1] (it gives the input "
                                f"shape; a tuple of them for several inputs), got {type(e).__name__}"
                                + (f" of shape {tuple(e.shape)}" if isinstance(e, torch.Tensor) else ""))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return capture(model, example_input, name=name)
    finally:
        model.train(was)


def export(model: "torch.nn.Module", example_input: "torch.Tensor", target: str, output: str | os.PathLike[str],
           force: bool = False, *, name: str | None = None, **options: Any) -> Path:
    """Export a quantized model to ``target`` ("onnx", "hls" or "rtl") at ``output``; returns the path written.

    Options and the output path are checked first (``qfx.commands.export.check_options``: ``part``, ``clock_ns``,
    ``reuse_factor``, ``io`` for HLS; ``register_stages``, ``conv_style`` for RTL), then the model is captured
    (``capture_model``), the pass flow runs, and the output is written atomically: nothing is left behind on
    failure, and an existing output is replaced only with ``force``. ``name`` names the design (default: the
    model's class).
    """
    from qfx.commands.export import check_options, check_output, export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow

    out = Path(output).expanduser().absolute()
    options = check_options(target, options)
    check_output(target, out, force)
    graph = capture_model(model, example_input, name=name)
    res = run_flow(graph, DEFAULT_FLOW)
    return export_graph(res.graph, target, out, force=force, **options)


def save(model: "torch.nn.Module", example_input: "torch.Tensor", path: str | os.PathLike[str],
         force: bool = False) -> Path:
    """Write a checkpoint of a quantized model that ``qfx export`` (and ``qfx.ir.load.load_graph``) read.

    It holds the captured IR (JSON text), the ``state_dict``, the ``QFXConfig`` and the input shape: plain data
    that loads with ``torch.load(weights_only=True)``, no pickled classes. The IR is captured now, so the model's
    class is not needed to export it later. Written atomically; an existing file is replaced only with ``force``.
    """
    from qfx import __version__
    from qfx.ir.from_torch import sanitize
    from qfx.nn.convert import QFXConfig
    from qfx.nn.train import CHECKPOINT_VERSION, save_checkpoint
    from qfx.outdir import check_writable

    dest = Path(path).expanduser().absolute()
    check_writable(dest, force)
    graph = capture_model(model, example_input, name=sanitize(dest.stem))
    cfg = getattr(model, "qfx_config", None)
    ck = {
        "qfx_checkpoint": CHECKPOINT_VERSION,
        "model_kind": None,
        "model_class": str(graph.meta.get("captured_from", type(model).__name__)),
        "qfx_version": __version__,
        "ir": graph.to_json(),
        "input_shape": [int(s) for s in (example_input[0] if isinstance(example_input, (tuple, list)) else example_input).shape[1:]],
        "config": cfg.to_dict() if isinstance(cfg, QFXConfig) else None,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    return save_checkpoint(ck, dest, force=force)
