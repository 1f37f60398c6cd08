"""Independent Python-int/Fraction reference semantics for the qfx.nn tests (no qfx.fixed kernels used).

A format is given as (width, int_bits, signed, rounding, overflow); values are exact ``Fraction``s.
"""
from __future__ import annotations

from fractions import Fraction
import math


def round_code(t: Fraction, rounding: str) -> int:
    """Round the exact LSB count ``t`` to an integer with an ap_fixed rounding mode."""
    fl = math.floor(t)
    r = t - fl
    half = Fraction(1, 2)
    if rounding == "TRN":
        return fl
    if rounding == "TRN_ZERO":
        return fl if t >= 0 else math.ceil(t)
    if r != half:
        return fl + (1 if r > half else 0)
    # exact tie
    return {
        "RND": fl + 1,
        "RND_ZERO": fl + 1 if t < 0 else fl,
        "RND_MIN_INF": fl,
        "RND_INF": fl + 1 if t > 0 else fl,
        "RND_CONV": fl + (fl & 1),
    }[rounding]


def code_range(width: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)


def overflow_code(c: int, width: int, signed: bool, overflow: str) -> int:
    lo, hi = code_range(width, signed)
    if overflow == "SAT_SYM" and signed and width > 1:
        lo += 1  # symmetric range [-max, max]: the most negative code saturates to -max as well
    if lo <= c <= hi:
        return c
    if overflow == "WRAP":
        c &= (1 << width) - 1
        return c - (1 << width) if signed and c >= (1 << (width - 1)) else c
    if overflow == "SAT_ZERO":
        return 0
    if c > hi:
        return hi
    return lo


def quant_code(v: Fraction, fmt) -> int:
    w, i, s, r, o = fmt
    return overflow_code(round_code(v * Fraction(2) ** (w - i), r), w, s, o)


def quant_value(v: Fraction, fmt) -> Fraction:
    return Fraction(quant_code(v, fmt)) * Fraction(2) ** (fmt[1] - fmt[0])


def khot_code(c: int, k: int, lo: int, hi: int) -> int:
    """Greedy K-hot projection: nearest power of two to the residual (ties to the larger), clipped to the largest
    in-range K-hot values."""

    def greedy(n: int) -> int:
        acc = 0
        for _ in range(k):
            r = n - acc
            if r == 0:
                break
            m = abs(r)
            e = m.bit_length() - 1
            if 2 * (m - (1 << e)) >= (1 << e):
                e += 1
            acc += (1 if r > 0 else -1) << e
        return acc

    def nz(n: int) -> int:  # fewest signed-digit terms (CSD weight)
        n, cnt = abs(n), 0
        while n:
            if n & 1:
                cnt += 1
                n = (n + 1) if (n & 3) == 3 else (n - 1)
            n >>= 1
        return cnt

    def top(n: int) -> int:
        out = 0
        for _ in range(k):
            if n <= 0:
                break
            b = 1 << (n.bit_length() - 1)
            out, n = out + b, n - b
        return out

    hk = hi if nz(hi) <= k else top(hi)
    lk = lo if nz(lo) <= k else -top(-lo)
    return min(max(greedy(c), lk), hk)


# ---------------------------------------------------------------- hand-written tables for the reference itself
import pytest  # noqa: E402

_TIES = [Fraction(5, 2), Fraction(3, 2), Fraction(-3, 2), Fraction(-5, 2), Fraction(7, 4), Fraction(-7, 4)]
_TABLE = {  # value in LSBs -> code, per mode (from the Vitis HLS quantization mode definitions)
    "TRN": [2, 1, -2, -3, 1, -2],
    "TRN_ZERO": [2, 1, -1, -2, 1, -1],
    "RND": [3, 2, -1, -2, 2, -2],
    "RND_ZERO": [2, 1, -1, -2, 2, -2],
    "RND_MIN_INF": [2, 1, -2, -3, 2, -2],
    "RND_INF": [3, 2, -2, -3, 2, -2],
    "RND_CONV": [2, 2, -2, -2, 2, -2],
}


@pytest.mark.parametrize("mode", sorted(_TABLE))
def test_reference_rounding_table(mode):
    assert [round_code(t, mode) for t in _TIES] == _TABLE[mode]


def test_reference_overflow_table():
    # ap_fixed<4,4>: codes -8..7
    assert [overflow_code(c, 4, True, "WRAP") for c in (8, 9, -9, 23)] == [-8, -7, 7, 7]
    assert [overflow_code(c, 4, True, "SAT") for c in (8, -9, -8)] == [7, -8, -8]
    assert [overflow_code(c, 4, True, "SAT_SYM") for c in (8, -9, -8, -7)] == [7, -7, -7, -7]
    assert [overflow_code(c, 1, True, "SAT_SYM") for c in (1, -1, -2)] == [0, -1, -1]  # W=1: like SAT
    assert [overflow_code(c, 4, True, "SAT_ZERO") for c in (8, -9, 7)] == [0, 0, 7]
    assert [overflow_code(c, 3, False, "WRAP") for c in (8, -1, 9)] == [0, 7, 1]


def test_reference_khot_table():
    # 8-bit signed codes: 7 = 8-1 and 127 = 128-1 are 2-hot; K=1: 127 -> 128 overflows -> 64 (top bit);
    # 93 -> 64 (nearest), residual 29 -> 32: 96
    assert khot_code(7, 2, -128, 127) == 7
    assert khot_code(127, 2, -128, 127) == 127
    assert khot_code(127, 1, -128, 127) == 64
    assert khot_code(93, 2, -128, 127) == 96
    assert khot_code(-128, 1, -128, 127) == -128
    assert khot_code(3, 1, -128, 127) == 4  # tie between 2 and 4 -> larger
