"""Run a qfx-exported ONNX model in stock onnxruntime on integer codes (values in, values out, exactly)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from qfx.errors import BadInputError, MismatchError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph

__all__ = ["ort_session", "run_onnx_codes", "values_to_codes"]


def values_to_codes(values: np.ndarray, fmt: FxFormat, what: str = "output") -> np.ndarray:
    """Exact inverse of ``fmt.from_int``: raises MismatchError if a value is not a code of ``fmt``."""
    v = np.asarray(values, dtype=np.float64)
    scaled = np.ldexp(v, fmt.frac_bits)
    if not np.all(np.isfinite(scaled)) or not np.array_equal(scaled, np.floor(scaled)):
        raise MismatchError(f"{what} holds values that are not codes of {fmt.ap_type()}")
    codes = scaled.astype(np.int64)
    if codes.size and (codes.min() < fmt.min_code or codes.max() > fmt.max_code):
        raise MismatchError(f"{what} holds values outside {fmt.ap_type()}")
    return codes


def ort_session(model: "str | os.PathLike[str] | bytes"):
    """A CPU onnxruntime session (graph optimizations on: they must not change exact results)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(Path(model))
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_onnx_codes(model: "str | os.PathLike[str] | bytes", graph: Graph, codes: np.ndarray, session=None) -> np.ndarray:
    """Feed input codes (as exact values) to onnxruntime and return the first output's codes."""
    sess = session or ort_session(model)
    spec = graph.tensor(graph.inputs[0])
    x = np.asarray(codes, dtype=np.int64)
    if x.shape[1:] != spec.shape:
        raise BadInputError(f"input codes have shape {x.shape[1:]} per sample, expected {spec.shape}")
    out = sess.run(None, {sess.get_inputs()[0].name: spec.fmt.from_int(x)})[0]
    return values_to_codes(out, graph.tensor(graph.outputs[0]).fmt)
