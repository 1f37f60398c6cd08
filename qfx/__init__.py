"""qfx: trainable fixed-point quantization for PyTorch, exported bit-exactly to HLS C++ and SystemVerilog."""
from qfx.errors import QfxError
from qfx.fixed import OVERFLOW_MODES, ROUNDING_MODES, FxFormat

__version__ = "0.1.0"

__all__ = ["FxFormat", "ROUNDING_MODES", "OVERFLOW_MODES", "QfxError", "__version__"]

_LAZY = {"quantize_model": "qfx.nn.convert", "QFXConfig": "qfx.nn.convert"}  # torch imported only when used


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qfx' has no attribute {name!r}")
