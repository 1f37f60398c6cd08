"""Signed-power-of-two decompositions of integer codes: CSD digits and the K-hot projection.

A K-hot weight has at most K non-zero signed power-of-two terms, so ``x * w`` becomes K shifts and adds. The HLS
and RTL backends emit these terms; the K-hot quantizer projects codes onto them with ``khot_project``.
"""
from __future__ import annotations

import numpy as np

from qfx.errors import FormatError

__all__ = ["csd_digits", "csd_weight", "khot_project", "khot_terms"]

_I64 = np.int64


def csd_digits(code: int) -> list[tuple[int, int]]:
    """Canonical signed digits of ``code`` as ``(sign, shift)`` pairs, LSB first: ``code == sum(s << k)``.

    CSD has no two adjacent non-zero digits and the fewest non-zero digits of any signed-digit form.
    """
    n = int(code)
    out: list[tuple[int, int]] = []
    k = 0
    while n:
        if n & 1:
            d = 2 - (n & 3)  # +1 if n % 4 == 1, -1 if n % 4 == 3
            out.append((d, k))
            n -= d
        n >>= 1
        k += 1
    return out


def csd_weight(codes: np.ndarray) -> np.ndarray:
    """Number of non-zero CSD digits of each code (the adders a constant multiply costs, plus one)."""
    flat = np.asarray(codes, dtype=_I64).reshape(-1)
    return np.array([len(csd_digits(int(c))) for c in flat], dtype=_I64).reshape(np.shape(codes))


def _nearest_pow2_exponent(mag: np.ndarray) -> np.ndarray:
    """Exponent e of the power of two nearest to each positive integer ``mag`` (ties to the larger), exactly."""
    e = np.zeros(mag.shape, dtype=_I64)
    m = mag.copy()
    for _ in range(64):  # floor(log2(mag)) by repeated halving: integer only
        more = m > 1
        if not more.any():
            break
        e += more
        m = np.where(more, m >> 1, m)
    lo = np.left_shift(_I64(1), e)
    up = (mag - lo) * 2 >= lo  # mag >= 1.5 * lo  ->  2**(e+1) is at least as near
    return e + up


def _top_bits(n: int, k: int) -> int:
    """``n`` (>= 0) with only its ``k`` most significant set bits kept: the largest k-hot value <= n."""
    out = 0
    for _ in range(k):
        if n <= 0:
            break
        b = 1 << (n.bit_length() - 1)
        out, n = out + b, n - b
    return out


def khot_project(codes: np.ndarray, k: int, min_code: int | None = None, max_code: int | None = None) -> np.ndarray:
    """Codes with at most ``k`` signed power-of-two terms, chosen greedily term by term.

    Each step adds the signed power of two nearest to the remaining residual (ties to the larger magnitude).
    Results beyond ``[min_code, max_code]`` (only possible at the very top of the range, e.g. 127 -> 128 for k=1)
    are replaced by the largest in-range k-hot value on that side. Greedy is what the K-hot quantizer trains with;
    the result is a deterministic integer function of the codes.
    """
    if k < 1:
        raise FormatError(f"K-hot needs k >= 1, got {k}")
    c = np.asarray(codes, dtype=_I64)
    acc = np.zeros_like(c)
    for _ in range(k):
        r = c - acc
        mag = np.abs(r)
        nz = mag > 0
        e = _nearest_pow2_exponent(np.where(nz, mag, 1))
        acc = np.where(nz, acc + np.where(r < 0, -1, 1) * np.left_shift(_I64(1), e), acc)
    if max_code is not None:
        hi = max_code if len(csd_digits(max_code)) <= k else _top_bits(max_code, k)
        acc = np.minimum(acc, hi)
    if min_code is not None:
        lo = min_code if len(csd_digits(min_code)) <= k else -_top_bits(-min_code, k)
        acc = np.maximum(acc, lo)
    return acc


def khot_terms(code: int) -> list[tuple[int, int]]:
    """Signed power-of-two terms ``(sign, shift)`` of a code (its CSD digits, the fewest possible)."""
    return csd_digits(code)
