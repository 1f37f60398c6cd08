"""qfx: trainable fixed-point quantization for PyTorch, exported bit-exactly to HLS C++ and SystemVerilog."""
from qfx.errors import QfxError
from qfx.fixed import OVERFLOW_MODES, ROUNDING_MODES, FxFormat

__version__ = "0.1.0"

__all__ = ["FxFormat", "ROUNDING_MODES", "OVERFLOW_MODES", "QfxError", "__version__"]
