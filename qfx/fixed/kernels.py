"""Integer kernels of the exact path: every rounding and overflow in qfx happens in ``requantize``.

All functions take and return ``int64`` NumPy code arrays plus their ``FxFormat``; no float arithmetic is used
(doubles entering through ``codes_from_double`` are decomposed into integer mantissa and exponent bits).
Computations whose exact result might not fit in int64 raise ``OverflowRiskError`` instead of wrapping.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfx.errors import FormatError, OverflowRiskError
from qfx.fixed.format import FxFormat

__all__ = [
    "requantize",
    "codes_from_double",
    "cast",
    "mul",
    "add",
    "sub",
    "relu",
    "matmul",
    "dot_acc_format",
    "lossless_acc_format",
    "exact_dot",
    "matmul_exact",
    "acc_is_lossless",
    "check_dot",
    "finish_dot",
    "int_matmul",
    "amax",
    "dot_bound",
    "F64_EXACT",
    "check_fits_int64",
]

_I64 = np.int64
_U64 = np.uint64


def _as_codes(x: np.ndarray | int | Sequence[int]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == np.uint64:
        raise OverflowRiskError("uint64 codes are not supported; codes must be int64")
    if not np.issubdtype(a.dtype, np.integer):
        raise FormatError(f"codes must be an integer array, got dtype {a.dtype}")
    return a.astype(_I64, copy=False)


def _round_increment(m: np.ndarray, k: np.ndarray, q: np.ndarray, rounding: str) -> np.ndarray:
    """0/1 increment to add to ``q = floor(m / 2**k)`` (k >= 1) for ``rounding``.

    The remainder is compared with half an LSB using integers only; for k >= 64 the remainder's relation to the
    half is fixed by the sign of m (|m| <= 2**63 <= half, equal only for m = -2**63 at k = 64: a tie).
    """
    small = k <= 63
    ks = np.where(small, k, 1).astype(_I64)
    mask = (np.left_shift(_I64(1), ks - 1) - 1) * 2 + 1  # 2**k - 1 without overflowing at k = 63
    rem = np.bitwise_and(m, mask)
    half = np.left_shift(_I64(1), ks - 1)
    nonzero = np.where(small, rem != 0, m != 0)
    # k = 64 and m = -2**63: remainder 2**64 - 2**63 is exactly the half (a tie), the one case |m| reaches it
    tie64 = (k == 64) & (m == np.iinfo(_I64).min)
    gt_half = np.where(small, rem > half, (m < 0) & ~tie64)
    eq_half = np.where(small, rem == half, tie64)
    neg = m < 0
    if rounding == "TRN":
        inc = np.zeros(m.shape, dtype=bool)
    elif rounding == "TRN_ZERO":
        inc = nonzero & neg
    elif rounding == "RND":
        inc = gt_half | eq_half
    elif rounding == "RND_ZERO":
        inc = gt_half | (eq_half & neg)
    elif rounding == "RND_MIN_INF":
        inc = gt_half
    elif rounding == "RND_INF":
        inc = gt_half | (eq_half & ~neg)
    elif rounding == "RND_CONV":
        inc = gt_half | (eq_half & (np.bitwise_and(q, 1) == 1))
    else:  # pragma: no cover - FxFormat validates modes
        raise FormatError(f"unknown rounding mode {rounding}")
    return inc.astype(_I64)


def requantize(m: np.ndarray, k: np.ndarray | int, fmt: FxFormat) -> np.ndarray:
    """Codes of ``fmt`` for the exact values ``m * 2**-k`` LSBs of ``fmt`` (``m`` int64, ``k`` any integer).

    ``k > 0`` drops ``k`` bits with ``fmt.rounding``; ``k < 0`` shifts left (exactly, however far).
    Then ``fmt.overflow`` maps values outside the code range. This is the single place where qfx rounds.
    """
    m = _as_codes(m)
    if np.ndim(k) == 0 and m.ndim > 0 and m.size:
        t = _requantize_in_range(m, int(k), fmt)
        if t is not None:
            return t
    k = np.broadcast_to(np.asarray(k, dtype=_I64), m.shape) if np.ndim(k) else np.full(m.shape, int(k), dtype=_I64)
    m, k = np.broadcast_arrays(m, k)
    if m.ndim == 0:  # 0-d arrays compute as NumPy scalars, which warn on the intended int64 wrap-arounds below
        return requantize(m.reshape(1), k.reshape(1), fmt).reshape(())
    right = k > 0
    # -- right shift with rounding (result always fits: |q| <= 2**62)
    kr = np.where(right, k, 1)
    q = np.right_shift(m, np.minimum(kr, 63))
    q = q + _round_increment(m, kr, q, fmt.rounding)
    # -- left shift: exact when it fits in int64, otherwise only its low 64 bits are known (enough for WRAP)
    s = np.where(right, 0, -k)
    s63 = np.minimum(s, 63)
    lim = np.left_shift(_I64(1), 63 - s63)  # 2**(63-s); at s = 0 this wraps to -2**63, handled below
    fits = np.where(s == 0, True, (m >= -lim) & (m <= lim - 1))
    fits &= (s < 64) | (m == 0)
    shifted = np.left_shift(np.where(fits, m, 0), s63)
    t = np.where(right, q, shifted)
    fits = right | fits
    low = np.where(right, q.view(_U64), np.where(s < 64, np.left_shift(m.view(_U64), np.minimum(s, 63).astype(_U64)), _U64(0)))
    neg = np.where(right, q < 0, m < 0)
    return _overflow(t, fits, low, neg, fmt)


def _requantize_in_range(m: np.ndarray, k: int, fmt: FxFormat) -> np.ndarray | None:
    """Fast path of ``requantize`` for one shift ``k``; None where the general path must run.

    Same arithmetic as the general path (floor shift plus the rounding increment) whenever the shifted value is
    exact in int64 (right shifts up to 62 bits, left shifts that fit); the overflow mode is then a clip (SAT,
    SAT_SYM), a zeroing (SAT_ZERO) or a sign/zero extension of the low W bits (WRAP), which is what ``_overflow``
    computes for such values. Casts in the interpreter mostly take this path.
    """
    if k == 0:
        t = m
    elif k < 0:
        s = -k
        if s >= 63 or m.min() < -(1 << (63 - s)) or m.max() > (1 << (63 - s)) - 1:
            return None
        t = np.left_shift(m, _I64(s))
    elif k <= 62:
        if fmt.rounding == "RND" and k >= 2:
            # floor(m / 2**k + 1/2) = floor((floor(m / 2**(k-1)) + 1) / 2): the same value as the shift plus
            # _round_increment's "remainder >= half", in three in-place passes (no overflow: |m >> (k-1)| < 2**62)
            t = np.right_shift(m, _I64(k - 1))
            np.add(t, _I64(1), out=t)
            np.right_shift(t, _I64(1), out=t)
        else:
            q = np.right_shift(m, _I64(k))
            t = q if fmt.rounding == "TRN" else q + _round_increment(m, np.int64(k), q, fmt.rounding)
    else:
        return None
    lo = fmt.min_code + 1 if (fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width > 1) else fmt.min_code
    hi = fmt.max_code
    tmin, tmax = int(t.min()), int(t.max())
    if tmin >= lo and tmax <= hi:
        return t if t is not m else m.copy()
    if t is m:
        t = m.copy()
    # t is a fresh array from here: the overflow mapping works in place (fewer large allocations)
    if fmt.overflow in ("SAT", "SAT_SYM"):
        return np.clip(t, lo, hi, out=t)
    if fmt.overflow == "SAT_ZERO":
        t[(t < lo) | (t > hi)] = 0
        return t
    # WRAP: the low W bits, sign-extended (signed) or zero-extended (unsigned), as _overflow does
    sh = _U64(64 - fmt.width)
    u = t.view(_U64)
    np.left_shift(u, sh, out=u)
    if fmt.signed:
        np.right_shift(t, sh.astype(_I64), out=t)
    else:
        np.right_shift(u, sh, out=u)
    return t


def _overflow(t: np.ndarray, fits: np.ndarray, low: np.ndarray, neg: np.ndarray, fmt: FxFormat) -> np.ndarray:
    lo, hi = fmt.min_code, fmt.max_code
    if fmt.overflow == "SAT_SYM" and fmt.signed and fmt.width > 1:
        # ap_fixed's symmetric range is [-max, max]: the most negative code itself also becomes -max. At W = 1 the
        # header's underflow sets code -1 (1 << 0 | 1), i.e. it behaves like SAT; checked against the headers.
        lo = lo + 1
    in_range = fits & (t >= lo) & (t <= hi)
    if fmt.overflow == "WRAP":
        sh = _U64(64 - fmt.width)
        top = np.left_shift(low, sh)  # keep the low W bits at the top, then shift back with sign/zero fill
        wrapped = np.right_shift(top.view(_I64), sh.astype(_I64)) if fmt.signed else np.right_shift(top, sh).view(_I64)
        return np.where(in_range, t, wrapped).astype(_I64)
    if fmt.overflow == "SAT_ZERO":
        return np.where(in_range, t, 0).astype(_I64)
    return np.where(in_range, t, np.where(neg, lo, hi)).astype(_I64)


#: elements per piece when a large array is converted (a few MB per temporary)
_CHUNK = 1 << 18


def codes_from_double(x: np.ndarray, fmt: FxFormat) -> np.ndarray:
    """Codes ``ap_fixed`` assigns from doubles: raw IEEE bits to integer mantissa/exponent, then ``requantize``."""
    x = np.asarray(x, dtype=np.float64)
    if x.size > _CHUNK:  # the general path makes ~20 temporaries: in cache-sized pieces, not gigabytes at once
        flat = np.ascontiguousarray(x).reshape(-1)
        out = np.empty(flat.shape, dtype=_I64)
        for i in range(0, flat.size, _CHUNK):
            out[i:i + _CHUNK] = codes_from_double(flat[i:i + _CHUNK], fmt)
        return out.reshape(x.shape)
    bits = np.ascontiguousarray(x).view(_U64).reshape(x.shape)  # ascontiguousarray makes 0-d arrays 1-d
    sign = (bits >> _U64(63)).astype(bool)
    expf = ((bits >> _U64(52)) & _U64(0x7FF)).astype(_I64)
    frac = (bits & _U64((1 << 52) - 1)).astype(_I64)
    mant = np.where(expf > 0, frac | (_I64(1) << _I64(52)), frac)
    e = np.where(expf > 0, expf - 1075, -1074)
    m = np.where(sign, -mant, mant)
    # value = m * 2**e = m * 2**(e + F) LSBs  ->  k = -(e + F)
    return requantize(m, -(e + fmt.frac_bits), fmt)


def cast(codes: np.ndarray, src: FxFormat, dst: FxFormat) -> np.ndarray:
    """``dst y = (src)x;`` on codes."""
    return requantize(_as_codes(codes), src.frac_bits - dst.frac_bits, dst)


def check_fits_int64(bound: int, what: str) -> None:
    """Raise ``OverflowRiskError`` when an exact |result| bound does not fit in int64."""
    if bound > (1 << 63) - 1:
        raise OverflowRiskError(f"{what} may reach {bound.bit_length()} bits, beyond the int64 exact path")


def mul(a: np.ndarray, fa: FxFormat, b: np.ndarray, fb: FxFormat) -> tuple[np.ndarray, FxFormat]:
    """Exact product in ``fa.mul_format(fb)``."""
    f = fa.mul_format(fb)
    return _as_codes(a) * _as_codes(b), f


def _align(a: np.ndarray, fa: FxFormat, f: FxFormat) -> np.ndarray:
    return np.left_shift(_as_codes(a), _I64(f.frac_bits - fa.frac_bits))


def add(a: np.ndarray, fa: FxFormat, b: np.ndarray, fb: FxFormat) -> tuple[np.ndarray, FxFormat]:
    """Exact sum in ``fa.add_format(fb)``."""
    f = fa.add_format(fb)
    return _align(a, fa, f) + _align(b, fb, f), f


def sub(a: np.ndarray, fa: FxFormat, b: np.ndarray, fb: FxFormat) -> tuple[np.ndarray, FxFormat]:
    """Exact difference in ``fa.sub_format(fb)``."""
    f = fa.sub_format(fb)
    return _align(a, fa, f) - _align(b, fb, f), f


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(_as_codes(a), 0)


def dot_acc_format(fx: FxFormat, fw: FxFormat, n: int, fb: FxFormat | None = None) -> FxFormat:
    """Worst-case lossless accumulator for ``n`` products ``fx*fw`` plus an optional bias of format ``fb``."""
    acc = fx.accum_format(fw, n)
    if fb is None:
        return acc
    f = max(acc.frac_bits, fb.frac_bits)
    lo = (acc.min_code << (f - acc.frac_bits)) + (fb.min_code << (f - fb.frac_bits))
    hi = (acc.max_code << (f - acc.frac_bits)) + (fb.max_code << (f - fb.frac_bits))
    return FxFormat.for_code_range(min(lo, 0), hi, f)


def lossless_acc_format(w: np.ndarray, fw: FxFormat, fx: FxFormat, bias: np.ndarray | None = None,
                        fb: FxFormat | None = None) -> FxFormat:
    """Narrowest accumulator that cannot overflow, by interval analysis over the actual weight codes.

    ``w`` has shape (out, n): row ``o`` is the weight vector of output ``o``. Inputs range over all codes of ``fx``.
    """
    w = _as_codes(w).reshape(w.shape[0], -1)
    f = fx.frac_bits + fw.frac_bits
    if fb is not None:
        f = max(f, fb.frac_bits)
    sh = f - fx.frac_bits - fw.frac_bits
    x0, x1 = fx.min_code, fx.max_code
    # sum_i min(w_i*x0, w_i*x1) = x0 * (sum of positive w) + x1 * (sum of negative w), as x0 <= x1; the row sums
    # in int64 when they cannot overflow, the products with the input range in Python ints (exact at any width)
    wide = amax(w) * max(1, w.shape[1]) >= (1 << 62)
    wi = w.astype(object) if wide else w
    pos = np.where(wi > 0, wi, 0).sum(axis=1).astype(object)
    neg = np.where(wi < 0, wi, 0).sum(axis=1).astype(object)
    lo = (pos * x0 + neg * x1) * (1 << sh)
    hi = (pos * x1 + neg * x0) * (1 << sh)
    if bias is not None and fb is not None:
        bv = np.asarray(bias).reshape(-1).astype(object) * (1 << (f - fb.frac_bits))
        lo, hi = lo + bv, hi + bv
    lo_all = min(0, int(lo.min())) if lo.size else 0
    hi_all = max(0, int(hi.max())) if hi.size else 0
    return FxFormat.for_code_range(lo_all, hi_all, f, signed=True if lo_all < 0 or fx.signed or fw.signed else None)


#: integers of magnitude up to 2**53 are exact doubles: sums and products of them that stay in that range are
#: computed exactly by float64 arithmetic, in any order, with or without fused multiply-add
F64_EXACT = 1 << 53


def amax(x: np.ndarray) -> int:
    """max |x| of an integer (or integer-valued) array as a Python int, without a |x| temporary."""
    if x.size == 0:
        return 0
    return max(int(x.max()), -int(x.min()))


def dot_bound(amax_x: int, w: np.ndarray) -> int:
    """Bound on |every partial sum| of ``x[..., :] * w[o, :]`` for |x| <= ``amax_x``: amax_x * max_o sum|w[o]|."""
    return amax_x * (int(np.abs(w).sum(axis=1).max(initial=0)) if w.size else 0)


_BLAS_CONTROLLER: list = []


def single_thread_blas():
    """Context manager: the BLAS runs one thread inside (restored after). The interpreter's products are many
    cache-sized GEMMs; BLAS threads synchronising on each cost more CPU than they save (and a loaded machine
    makes them wait for each other). A no-op where threadpoolctl is unavailable."""
    import contextlib

    if not _BLAS_CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER.append(ThreadpoolController())
        except Exception:  # noqa: BLE001 - optional speed-up only
            _BLAS_CONTROLLER.append(None)
    ctl = _BLAS_CONTROLLER[0]
    if ctl is None:
        return contextlib.nullcontext()
    try:
        return ctl.limit(limits=1, user_api="blas")
    except Exception:  # noqa: BLE001
        return contextlib.nullcontext()


def int_matmul(x: np.ndarray, w: np.ndarray, amax_x: int | None = None) -> np.ndarray:
    """Exact ``x @ w.T`` as int64 (``x`` int64 codes, or float64 holding integer codes; ``w`` int64 (out, n)).

    Float64 BLAS where ``dot_bound`` proves every partial sum an integer of magnitude <= 2**53 (then every
    intermediate is exact whatever order or FMA the BLAS uses); int64 arithmetic otherwise (the caller has checked
    that int64 cannot overflow).
    """
    if amax_x is None:
        amax_x = amax(x)
    if dot_bound(amax_x, w) <= F64_EXACT:
        xf = x if x.dtype == np.float64 else x.astype(np.float64)
        return np.matmul(xf, w.T.astype(np.float64)).astype(_I64)
    xi = x if x.dtype == _I64 else x.astype(_I64)
    return np.matmul(xi, w.T)


def matmul(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, acc: FxFormat,
           bias: np.ndarray | None = None, fb: FxFormat | None = None) -> np.ndarray:
    """``y[..., o] = acc(bias[o]); for k: y += x[..., k] * w[o, k]`` with ap_fixed semantics, in ``acc`` codes.

    This is exactly the C++ loop ``acc_t a = b[o]; for (k...) a += x[k] * w[o][k];``: each ``+=`` forms the
    full-precision sum and casts it to ``acc``. When ``acc`` cannot overflow and keeps every fractional bit
    (the accumulators qfx derives), that equals one cast of the exact sum, which is computed directly.
    """
    x = _as_codes(x)
    w = _as_codes(w)
    exact = matmul_exact(x, fx, w, fw, acc, bias, fb)
    if exact is not None:
        return cast(exact[0], exact[1], acc)
    return _matmul_sequential(x, fx, w, fw, acc, bias, fb)


def matmul_exact(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, acc: FxFormat,
                 bias: np.ndarray | None = None, fb: FxFormat | None = None, amax_x: int | None = None
                 ) -> tuple[np.ndarray, FxFormat] | None:
    """The exact sum ``(codes, format)`` when ``acc`` is lossless for it (then ``cast(sum, acc)`` is ``matmul``
    and a later cast from ``acc`` equals one cast of the sum); None when ``acc`` rounds or may overflow.
    ``x`` may be float64 holding integer codes (the conv path); ``amax_x`` = max|x| if known."""
    n = w.shape[1]
    if x.shape[-1] != n:
        raise FormatError(f"matmul shapes disagree: x has {x.shape[-1]} columns, w has {n}")
    if amax_x is None:
        amax_x = amax(x)
    if acc_is_lossless(amax_x, fx, w, fw, acc, bias, fb):
        return _exact_dot(x, fx, w, fw, bias, fb, amax_x)
    return None


def acc_is_lossless(amax_x: int, fx: FxFormat, w: np.ndarray, fw: FxFormat, acc: FxFormat,
                    bias: np.ndarray | None = None, fb: FxFormat | None = None) -> bool:
    """``matmul``'s test: the exact sum fits int64 (else OverflowRiskError) and ``acc`` holds it without loss."""
    p = fx.mul_format(fw)
    exact_f = p.frac_bits if fb is None else max(p.frac_bits, fb.frac_bits)
    row_abs = np.abs(w).sum(axis=1) if w.size else np.zeros(w.shape[0], dtype=_I64)
    bmax = 0 if bias is None else amax(_as_codes(bias))
    bound = (amax_x * int(row_abs.max(initial=0))) << (exact_f - p.frac_bits)
    bound += bmax << (exact_f - (fb.frac_bits if fb else exact_f))
    check_fits_int64(bound, f"matmul with {w.shape[1]} terms")
    return acc.frac_bits >= exact_f and _fits_range(acc, exact_f, fx, fw, w, bias, fb)


def _matmul_sequential(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, acc: FxFormat,
                       bias: np.ndarray | None, fb: FxFormat | None) -> np.ndarray:
    """The ap_fixed accumulation loop, one cast per term, vectorised over everything but k."""
    x = x if x.dtype == _I64 else x.astype(_I64)
    p = fx.mul_format(fw)
    n = w.shape[1]
    out_shape = x.shape[:-1] + (w.shape[0],)
    a = np.zeros(out_shape, dtype=_I64)
    if bias is not None and fb is not None:
        a = cast(np.broadcast_to(_as_codes(bias), out_shape), fb, acc)
    for k in range(n):
        prod = x[..., k : k + 1] * w[:, k]
        s, fs = add(a, acc, prod, p)
        a = cast(s, fs, acc)
    return a


def exact_dot(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, bias: np.ndarray | None = None,
              fb: FxFormat | None = None) -> tuple[np.ndarray, FxFormat]:
    """Exact ``bias + x @ w.T`` as int64 codes of a 64-bit format (raises OverflowRiskError if it cannot fit)."""
    x, w = _as_codes(x), _as_codes(w)
    if x.shape[-1] != w.shape[1]:
        raise FormatError(f"dot shapes disagree: x has {x.shape[-1]} columns, w has {w.shape[1]}")
    return _exact_dot(x, fx, w, fw, bias, fb, amax(x))


def _exact_dot(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, bias: np.ndarray | None,
               fb: FxFormat | None, amax_x: int) -> tuple[np.ndarray, FxFormat]:
    check_dot(amax_x, fx, w, fw, bias, fb)
    return finish_dot(int_matmul(x, w, amax_x), fx, fw, bias, fb)


def check_dot(amax_x: int, fx: FxFormat, w: np.ndarray, fw: FxFormat, bias: np.ndarray | None = None,
              fb: FxFormat | None = None) -> None:
    """``exact_dot``'s guard: OverflowRiskError when ``bias + x @ w.T`` (|x| <= amax_x) may not fit int64."""
    pf = fx.frac_bits + fw.frac_bits
    f = pf if fb is None or bias is None else max(pf, fb.frac_bits)
    row = int(np.abs(w).sum(axis=1).max(initial=0)) if w.size else 0
    bmax = 0 if bias is None or fb is None else amax(_as_codes(bias)) << (f - fb.frac_bits)
    check_fits_int64(((amax_x * row) << (f - pf)) + bmax, f"dot product of {w.shape[1]} terms")


def finish_dot(s: np.ndarray, fx: FxFormat, fw: FxFormat, bias: np.ndarray | None = None,
               fb: FxFormat | None = None) -> tuple[np.ndarray, FxFormat]:
    """``exact_dot``'s result from the int64 products ``s = x @ w.T``: aligned with the bias and added to it."""
    pf = fx.frac_bits + fw.frac_bits
    f = pf if fb is None or bias is None else max(pf, fb.frac_bits)
    if f != pf:
        s = s << _I64(f - pf)
    if bias is not None and fb is not None:
        s = s + (_as_codes(bias) << _I64(f - fb.frac_bits))  # broadcasts over the last axis
    return s, FxFormat(64, 64 - f)


def _fits_range(acc: FxFormat, f: int, fx: FxFormat, fw: FxFormat, w: np.ndarray, bias: np.ndarray | None,
                fb: FxFormat | None) -> bool:
    if acc.contains(dot_acc_format(fx, fw, max(w.shape[1], 1), fb if bias is not None else None)):
        return True
    return w.size == 0 or acc.contains(lossless_acc_format(w, fw, fx, bias, fb))
