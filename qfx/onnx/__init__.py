"""ONNX export (exact float64 graphs with the qfx.FixedQuant local function) and import (qfx, QONNX, plain)."""
from qfx.onnx.export import export_onnx, to_onnx_model
from qfx.onnx.importer import import_model, import_onnx
from qfx.onnx.runtime import run_onnx_codes

__all__ = ["export_onnx", "to_onnx_model", "import_onnx", "import_model", "run_onnx_codes"]
