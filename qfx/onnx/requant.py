"""Dyadic requantization: non-power-of-two scales as an integer multiply and shift (HAWQ-V3's dyadic numbers).

A QONNX tensor is ``code * scale`` with any positive float ``scale`` (per tensor or per channel). qfx tensors are
``code * 2**-F``. The importer keeps a non-power-of-two scale *outside* the IR: an activation is an IR tensor ``t``
plus a per-channel affine view ``real = t * m + h`` (BatchNorm, bias, pre-processing and input scales all fold into
``m`` and ``h`` as float64 arithmetic). Only where the model rounds — a ``Quant`` with scale ``s`` and ``b`` bits —
does the view become hardware: one ``scale_shift`` node computes

    code = round_and_clamp(t * M + H),   M = m / s,   H = h / s   (per channel)

with ``M`` and ``H`` replaced by dyadic numbers ``M0 * 2**-n`` (``dyadic``): ``M`` keeps ``REQUANT_BITS``
significant bits (24 by default, float32's precision, since QONNX executes in float32), ``H`` is rounded to the
LSB of the product ``t * M``. The requantizer is an ordinary ``scale_shift`` op, so the golden interpreter,
onnxruntime, the HLS C++ and the RTL compute the identical integer result (bit-exact among qfx executors by
construction). Against QONNX's own float32 execution the result differs only where ``t * m / s + h / s`` lies
within about ``2**-REQUANT_BITS`` (relative) of a rounding boundary; ``benchmarks/bench_onnx_zoo.py`` measures the
share of equal output codes. When ``M`` and ``H`` are already dyadic with few bits (power-of-two scales), the
requantizer is exact and, with ``M == 1`` and ``H == 0``, it is just the output cast of the previous node.
"""
from __future__ import annotations

import math

import numpy as np

from qfx.errors import FormatError
from qfx.fixed.format import FxFormat

__all__ = ["REQUANT_BITS", "dyadic", "is_pow2", "pow2_exponent", "Dyadic"]

#: significant bits of a requantization multiplier (float32 has 24)
REQUANT_BITS = 24
#: widest constant code a requantizer uses (keeps x * M + H inside the 53-bit exact ONNX path for typical x)
MAX_REQUANT_WIDTH = 40


def is_pow2(v: np.ndarray) -> bool:
    """All values positive powers of two (exactly)."""
    a = np.asarray(v, dtype=np.float64).ravel()
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        return False
    return bool(np.all(np.frexp(a)[0] == 0.5))


def pow2_exponent(v: float) -> int:
    """``e`` with ``v == 2**e`` (caller checked ``is_pow2``)."""
    return int(np.frexp(np.float64(v))[1]) - 1


class Dyadic:
    """``codes * 2**-frac`` approximating float ``values``; ``exact`` when nothing was rounded."""

    def __init__(self, values: np.ndarray, codes: np.ndarray, frac: int) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.codes = np.asarray(codes, dtype=np.int64)
        self.frac = int(frac)
        self.approx = np.ldexp(self.codes.astype(np.float64), -self.frac)
        self.exact = bool(np.array_equal(self.approx, self.values))

    def fmt(self) -> FxFormat:
        return FxFormat.for_code_range(min(0, int(self.codes.min(initial=0))), max(0, int(self.codes.max(initial=0))),
                                       self.frac, signed=True)


def _exact_frac(v: np.ndarray) -> int | None:
    """Smallest F with every value * 2**F an integer (None for values needing more than 62 bits)."""
    nz = v[v != 0]
    if nz.size == 0:
        return 0
    mant, exp = np.frexp(nz)
    mi = np.ldexp(mant, 53).astype(np.int64)
    tz = np.frexp((mi & -mi).astype(np.float64))[1] - 1
    frac = int((53 - exp - tz).max())
    top = int(np.frexp(np.abs(nz).max())[1])
    return frac if frac + top <= 62 else None


def dyadic(values: np.ndarray, bits: int = REQUANT_BITS, frac: int | None = None) -> Dyadic:
    """Dyadic numbers for ``values``: exact when they need at most ``bits`` significant bits (or ``frac`` is given
    and suffices); otherwise the largest magnitude keeps ``bits`` significant bits (round to nearest)."""
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise FormatError("requantization constant is not finite")
    if not np.any(v):
        return Dyadic(v, np.zeros(v.shape, dtype=np.int64), 0 if frac is None else frac)
    top = int(np.frexp(np.abs(v).max())[1])  # |v| < 2**top
    if frac is None:
        ef = _exact_frac(v)
        frac = ef if ef is not None and ef + top <= bits else bits - top
    if frac + top > 62:
        raise FormatError(f"requantization constant needs {frac + top} bits")
    codes = np.round(np.ldexp(v, frac)).astype(np.int64)
    nz = codes[codes != 0]
    if nz.size:  # drop common trailing zero bits: 4.0000001 rounded to 24 bits is the 1-bit code of 4
        tz = int(np.min(nz & -nz)).bit_length() - 1
        codes, frac = codes >> tz, frac - tz
    return Dyadic(v, codes, frac)


def scale_bits_for(x_fmt: FxFormat, bits: int = REQUANT_BITS) -> int:
    """Significant bits for a multiplier of ``x_fmt`` values so that ``x * M + H`` fits the 53-bit exact path."""
    return max(8, min(bits, 52 - x_fmt.width - 2))


def log2_floor(v: float) -> int:
    return int(math.floor(math.log2(v)))
