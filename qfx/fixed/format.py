"""``FxFormat``: the one definition of an ``ap_fixed``/``ap_ufixed`` format in qfx.

A value of format ``ap_fixed<W, I>`` is ``code * 2**(I - W)`` where ``code`` is a W-bit two's complement
integer (an unsigned W-bit integer for ``ap_ufixed``). ``I`` may be negative or larger than ``W``.
Every executor in qfx (torch emulation, the IR interpreter, ONNX functions, generated C++ and SystemVerilog)
derives its rounding, overflow and result formats from this module and ``qfx.fixed.kernels``.

Codes are carried as ``int64``; therefore signed formats may be up to 64 bits wide and unsigned formats up to 63.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qfx.errors import FormatError

__all__ = ["FxFormat", "ROUNDING_MODES", "OVERFLOW_MODES", "MAX_WIDTH"]

#: Rounding modes, named as Vitis HLS names them without the ``AP_`` prefix.
ROUNDING_MODES: tuple[str, ...] = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_MIN_INF", "RND_INF", "RND_CONV")
#: Overflow modes, named as Vitis HLS names them without the ``AP_`` prefix.
OVERFLOW_MODES: tuple[str, ...] = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")
MAX_WIDTH = 64
#: Bound on |int_bits|: far beyond any useful format, small enough that 2**(I-W) stays a normal double.
MAX_ABS_INT_BITS = 512

_AP_TYPE_RE = re.compile(
    r"^\s*ap_(u?)fixed\s*<\s*(-?\d+)\s*,\s*(-?\d+)\s*(?:,\s*(?:AP_)?(\w+)\s*)?(?:,\s*(?:AP_)?(\w+)\s*)?(?:,\s*\d+\s*)?>\s*$"
)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


@dataclass(frozen=True)
class FxFormat:
    """Format of an ``ap_fixed<W,I,Q,O>`` (``signed=True``) or ``ap_ufixed<W,I,Q,O>`` value.

    >>> f = FxFormat(8, 3, rounding="RND_CONV", overflow="SAT")
    >>> f.ap_type()
    'ap_fixed<8,3,AP_RND_CONV,AP_SAT>'
    >>> float(f.quantize(1.03125)), f.min, f.max, f.step
    (1.03125, -4.0, 3.96875, 0.03125)
    """

    width: int
    int_bits: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    def __post_init__(self) -> None:
        for name in ("width", "int_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise FormatError(f"FxFormat {name} must be an integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.signed, (bool, np.bool_)):
            raise FormatError(f"FxFormat signed must be a bool, got {self.signed!r}")
        object.__setattr__(self, "signed", bool(self.signed))
        max_w = MAX_WIDTH if self.signed else MAX_WIDTH - 1
        if not 1 <= self.width <= max_w:
            kind = "signed" if self.signed else "unsigned"
            raise FormatError(f"FxFormat width must be in 1..{max_w} for {kind} formats (int64 codes), got {self.width}")
        if abs(self.int_bits) > MAX_ABS_INT_BITS:
            raise FormatError(f"FxFormat int_bits must be in -{MAX_ABS_INT_BITS}..{MAX_ABS_INT_BITS}, got {self.int_bits}")
        r = str(self.rounding).upper().removeprefix("AP_")
        o = str(self.overflow).upper().removeprefix("AP_")
        if r not in ROUNDING_MODES:
            raise FormatError(f"FxFormat rounding must be one of {', '.join(ROUNDING_MODES)}; got {self.rounding!r}")
        if o not in OVERFLOW_MODES:
            raise FormatError(f"FxFormat overflow must be one of {', '.join(OVERFLOW_MODES)}; got {self.overflow!r}")
        object.__setattr__(self, "rounding", r)
        object.__setattr__(self, "overflow", o)

    # ---------------------------------------------------------------- geometry
    @property
    def frac_bits(self) -> int:
        """Bits right of the binary point (``W - I``); negative when the LSB weighs more than 1."""
        return self.width - self.int_bits

    @property
    def min_code(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_code(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def step(self) -> float:
        """Weight of one LSB, ``2**(I-W)``."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def min(self) -> float:
        return math.ldexp(float(self.min_code), -self.frac_bits)

    @property
    def max(self) -> float:
        """Largest value (rounded to a double when W > 53)."""
        return math.ldexp(float(self.max_code), -self.frac_bits)

    # ---------------------------------------------------------------- naming
    def ap_type(self) -> str:
        """C++ type as Vitis HLS spells it, trailing default modes (AP_TRN, AP_WRAP) dropped."""
        base = f"ap_{'' if self.signed else 'u'}fixed<{self.width},{self.int_bits}"
        if self.overflow != "WRAP":
            return f"{base},AP_{self.rounding},AP_{self.overflow}>"
        if self.rounding != "TRN":
            return f"{base},AP_{self.rounding}>"
        return base + ">"

    def __str__(self) -> str:
        return self.ap_type()

    @classmethod
    def parse(cls, text: str) -> "FxFormat":
        """Inverse of :meth:`ap_type` (also accepts ``ap_fixed<8,3,RND,SAT>`` and a trailing saturation-bits arg)."""
        m = _AP_TYPE_RE.match(text)
        if not m:
            raise FormatError(f"cannot parse fixed-point type {text!r}; expected e.g. 'ap_fixed<8,3,AP_RND,AP_SAT>'")
        u, w, i, r, o = m.groups()
        return cls(int(w), int(i), signed=not u, rounding=r or "TRN", overflow=o or "WRAP")

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "int_bits": self.int_bits, "signed": self.signed,
                "rounding": self.rounding, "overflow": self.overflow}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FxFormat":
        try:
            return cls(d["width"], d["int_bits"], d.get("signed", True), d.get("rounding", "TRN"), d.get("overflow", "WRAP"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"bad format record {d!r}: {exc}") from None

    def with_modes(self, rounding: str | None = None, overflow: str | None = None) -> "FxFormat":
        return replace(self, rounding=rounding or self.rounding, overflow=overflow or self.overflow)

    # ---------------------------------------------------------------- result formats (ap_fixed's own rules)
    def mul_format(self, other: "FxFormat") -> "FxFormat":
        """Full-precision product type: ``<W1+W2, I1+I2>``, signed if either is (AP_TRN, AP_WRAP)."""
        return _result(self.width + other.width, self.int_bits + other.int_bits, self.signed or other.signed)

    def add_format(self, other: "FxFormat") -> "FxFormat":
        """Full-precision sum type, as ``ap_fixed_base::RType::plus``."""
        i = max(self.int_bits + (other.signed and not self.signed), other.int_bits + (self.signed and not other.signed)) + 1
        f = max(self.frac_bits, other.frac_bits)
        return _result(i + f, i, self.signed or other.signed)

    def sub_format(self, other: "FxFormat") -> "FxFormat":
        """Full-precision difference type (always signed), as ``RType::minus``."""
        i = max(self.int_bits + (other.signed and not self.signed), other.int_bits + (self.signed and not other.signed)) + 1
        f = max(self.frac_bits, other.frac_bits)
        return _result(i + f, i, True)

    def accum_format(self, other: "FxFormat", n: int) -> "FxFormat":
        """Worst-case format of a sum of ``n`` products ``self * other`` (no overflow for any codes)."""
        if n < 1:
            raise FormatError(f"accumulator needs n >= 1 terms, got {n}")
        p = self.mul_format(other)
        lo = n * min(self.min_code * other.max_code, self.max_code * other.min_code, self.min_code * other.min_code)
        hi = n * max(self.max_code * other.max_code, self.min_code * other.min_code)
        return FxFormat.for_code_range(min(lo, 0), hi, p.frac_bits)

    @classmethod
    def for_code_range(cls, lo: int, hi: int, frac_bits: int, signed: bool | None = None,
                       rounding: str = "TRN", overflow: str = "WRAP") -> "FxFormat":
        """Narrowest format holding every code in ``[lo, hi]`` at ``frac_bits`` fractional bits.

        Used for accumulator sizing by interval analysis: ``lo``/``hi`` are exact integer bounds.
        """
        lo, hi = int(lo), int(hi)
        if lo > hi:
            raise FormatError(f"empty code range [{lo}, {hi}]")
        if signed is None:
            signed = lo < 0
        if signed:
            w = max(1, max((hi).bit_length(), (-lo - 1).bit_length() if lo < 0 else 0) + 1)
        else:
            if lo < 0:
                raise FormatError(f"unsigned format cannot hold negative code {lo}")
            w = max(1, hi.bit_length())
        return cls(w, w - frac_bits, signed, rounding, overflow)

    def contains(self, other: "FxFormat") -> bool:
        """True when every value of ``other`` is exactly representable in ``self``."""
        if other.frac_bits > self.frac_bits:
            return False
        sh = self.frac_bits - other.frac_bits
        return self.min_code <= (other.min_code << sh) and (other.max_code << sh) <= self.max_code

    # ---------------------------------------------------------------- conversion
    def to_int(self, x: Any) -> Any:
        """Raw code (int64) that ``ap_fixed`` holds after ``T y = x;`` with ``x`` converted to double."""
        if _is_torch(x):
            import torch

            return torch.from_numpy(self.to_int(x.detach().to("cpu", torch.float64).numpy())).to(x.device)
        from qfx.fixed.kernels import codes_from_double

        arr = np.asarray(x, dtype=np.float64)
        out = codes_from_double(arr, self)
        return out if isinstance(x, np.ndarray) else (out if out.ndim else np.int64(out))

    def from_int(self, codes: Any) -> Any:
        """Value of codes as float64 (exact whenever |code| < 2**53)."""
        if _is_torch(codes):
            import torch

            return torch.from_numpy(self.from_int(codes.detach().cpu().numpy())).to(codes.device)
        c = np.asarray(codes, dtype=np.int64)
        return np.ldexp(c.astype(np.float64), -self.frac_bits)

    def quantize(self, x: Any) -> Any:
        """Value ``ap_fixed`` holds after ``T y = x;``, returned as the same kind of object as ``x``.

        For torch tensors the dtype and device are kept; float32/float16 results are exact when W fits their
        significand (24/11 bits), otherwise they are the exact value rounded to that dtype.
        """
        if _is_torch(x):
            import torch

            dtype = x.dtype if x.is_floating_point() else torch.float64
            y = self.from_int(self.to_int(x.detach().to("cpu", torch.float64).numpy()))
            return torch.from_numpy(y).to(device=x.device, dtype=dtype)
        if isinstance(x, np.ndarray):
            dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
            return self.from_int(self.to_int(x)).astype(dtype, copy=False)
        return float(self.from_int(self.to_int(x)))


def _result(width: int, int_bits: int, signed: bool) -> FxFormat:
    max_w = MAX_WIDTH if signed else MAX_WIDTH - 1
    if width > max_w:
        raise FormatError(
            f"result format ap_{'' if signed else 'u'}fixed<{width},{int_bits}> is wider than the {max_w}-bit int64 code path"
        )
    return FxFormat(width, int_bits, signed)
