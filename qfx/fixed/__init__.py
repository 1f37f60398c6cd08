"""Fixed-point format core: formats and the integer kernels every executor is checked against."""
from qfx.fixed.format import MAX_WIDTH, OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.fixed import kernels

__all__ = ["FxFormat", "ROUNDING_MODES", "OVERFLOW_MODES", "MAX_WIDTH", "kernels"]
