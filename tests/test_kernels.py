"""Integer kernels: casts, products, sums, the sequential accumulator, the lossless fast path, int64 guards.

Expected values are worked out by hand from the ap_fixed definitions (see test_format.py for the mode tables);
the header itself is consulted in test_apfixed.py.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx.errors import FormatError, OverflowRiskError
from qfx.fixed import kernels
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from test_format import ref_code_fraction  # the independent Fraction reference


def _c(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


# ----------------------------------------------------------------------------------------------- cast tables
# source ap_fixed<8,6> (F = 2: codes are quarters) -> destination ap_fixed<6,6,Q> (F = 0)
#   code:  -10 (-2.5) -6 (-1.5) -2 (-0.5) 2 (0.5) 6 (1.5) 10 (2.5) -3 (-0.75) 3 (0.75) -5 (-1.25) 5 (1.25)
CAST_SRC = _c(-10, -6, -2, 2, 6, 10, -3, 3, -5, 5)
CAST_WANT = {
    "TRN":         [-3, -2, -1, 0, 1, 2, -1, 0, -2, 1],
    "TRN_ZERO":    [-2, -1, 0, 0, 1, 2, 0, 0, -1, 1],
    "RND":         [-2, -1, 0, 1, 2, 3, -1, 1, -1, 1],
    "RND_ZERO":    [-2, -1, 0, 0, 1, 2, -1, 1, -1, 1],
    "RND_MIN_INF": [-3, -2, -1, 0, 1, 2, -1, 1, -1, 1],
    "RND_INF":     [-3, -2, -1, 1, 2, 3, -1, 1, -1, 1],
    "RND_CONV":    [-2, -2, 0, 0, 2, 2, -1, 1, -1, 1],
}


@pytest.mark.parametrize("mode", ROUNDING_MODES)
def test_cast_rounding_table(mode: str) -> None:
    got = kernels.cast(CAST_SRC, FxFormat(8, 6), FxFormat(6, 6, rounding=mode))
    assert got.tolist() == CAST_WANT[mode]
    # dropping many more bits than needed: same answers from ap_fixed<40,6> (F = 34)
    got2 = kernels.cast(CAST_SRC << 32, FxFormat(40, 6), FxFormat(6, 6, rounding=mode))
    assert got2.tolist() == CAST_WANT[mode]


def test_cast_sticky_bits_far_below_half() -> None:
    # 0.5 + 2**-40 is above the tie: every RND mode rounds up, TRN modes do not
    src, code = FxFormat(48, 4), (1 << 43) + 1  # F = 44: 2**43 is 0.5
    for mode in ROUNDING_MODES:
        want = 0 if mode in ("TRN", "TRN_ZERO") else 1
        assert int(kernels.cast(_c(code), src, FxFormat(8, 8, rounding=mode))[0]) == want, mode


@pytest.mark.parametrize("overflow,want", [
    ("WRAP", [7, -8, -7, 7, -8, 0, 4]),
    ("SAT", [7, 7, 7, -8, -8, 7, 7]),
    ("SAT_ZERO", [7, 0, 0, 0, -8, 0, 0]),
    ("SAT_SYM", [7, 7, 7, -7, -7, 7, 7]),
])
def test_cast_overflow_table(overflow: str, want: list[int]) -> None:
    # ap_fixed<10,10> integers 7, 8, 9, -9, -8, 16, 100 into ap_fixed<4,4> (-8..7)
    got = kernels.cast(_c(7, 8, 9, -9, -8, 16, 100), FxFormat(10, 10), FxFormat(4, 4, overflow=overflow))
    assert got.tolist() == want


def test_cast_left_shift_far() -> None:
    # code 3 of ap_fixed<4,4> into a format with 70 more fractional bits: exact shift beyond 64 bits
    dst_sat = FxFormat(64, -6, overflow="SAT")  # F = 70
    assert int(kernels.cast(_c(3), FxFormat(4, 4), dst_sat)[0]) == dst_sat.max_code
    assert int(kernels.cast(_c(-3), FxFormat(4, 4), dst_sat)[0]) == dst_sat.min_code
    assert int(kernels.cast(_c(3), FxFormat(4, 4), FxFormat(64, -6))[0]) == 0  # WRAP keeps the low 64 bits: all 0
    assert int(kernels.cast(_c(0), FxFormat(4, 4), dst_sat)[0]) == 0
    # a shift that just fits: 1 << 62 in ap_fixed<64,2> (F = 62) from 1.0
    assert int(kernels.cast(_c(1), FxFormat(4, 4), FxFormat(64, 2))[0]) == 1 << 62


def test_unsigned_and_mixed_casts() -> None:
    u = FxFormat(8, 4, signed=False)  # 0..15.9375
    assert kernels.cast(_c(255), u, FxFormat(8, 4)).tolist() == [-1]  # WRAP: 0xFF read as signed
    assert kernels.cast(_c(255), u, FxFormat(8, 4, overflow="SAT")).tolist() == [127]
    assert kernels.cast(_c(-1, -128, 5), FxFormat(8, 4), FxFormat(8, 4, signed=False, overflow="SAT")).tolist() == [0, 0, 5]
    assert kernels.cast(_c(-1), FxFormat(8, 4), FxFormat(8, 4, signed=False)).tolist() == [255]


# ----------------------------------------------------------------------------------------------- arithmetic
def test_mul_add_sub_exact() -> None:
    fa, fb = FxFormat(8, 3), FxFormat(6, 2, signed=False)  # F = 5, F = 4
    a, b = _c(-128, 127, -1), _c(63, 0, 63)
    p, fp = kernels.mul(a, fa, b, fb)
    assert fp == FxFormat(14, 5) and p.tolist() == [-128 * 63, 0, -63]
    s, fs = kernels.add(a, fa, b, fb)  # align b to F = 5: codes * 2
    assert fs == FxFormat(9, 4) and s.tolist() == [-128 + 126, 127, -1 + 126]
    d, fd = kernels.sub(a, fa, b, fb)
    assert fd == FxFormat(9, 4) and d.tolist() == [-128 - 126, 127, -1 - 126]
    # unsigned - unsigned is signed
    d2, fd2 = kernels.sub(_c(0), FxFormat(4, 2, signed=False), _c(15), FxFormat(4, 2, signed=False))
    assert fd2.signed and d2.tolist() == [-15]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mul_add_then_cast_matches_rationals(data: st.DataObject) -> None:
    """Product/sum then cast, against exact rational arithmetic and a rational rounding of the result."""
    def fmt(maxw: int) -> FxFormat:
        s = data.draw(st.booleans())
        return FxFormat(data.draw(st.integers(1, maxw)), data.draw(st.integers(-8, 20)), s)

    fa, fb = fmt(24), fmt(24)
    dst = FxFormat(data.draw(st.integers(1, 40)), data.draw(st.integers(-8, 40)), data.draw(st.booleans()),
                   data.draw(st.sampled_from(ROUNDING_MODES)), data.draw(st.sampled_from(OVERFLOW_MODES)))
    a = data.draw(st.integers(fa.min_code, fa.max_code))
    b = data.draw(st.integers(fb.min_code, fb.max_code))
    va = Fraction(a) * Fraction(2) ** -fa.frac_bits
    vb = Fraction(b) * Fraction(2) ** -fb.frac_bits
    for op, exact in ((kernels.mul, va * vb), (kernels.add, va + vb), (kernels.sub, va - vb)):
        r, fr = op(_c(a), fa, _c(b), fb)
        assert Fraction(int(r[0])) * Fraction(2) ** -fr.frac_bits == exact
        assert int(kernels.cast(r, fr, dst)[0]) == ref_code_fraction(exact, dst)


# ----------------------------------------------------------------------------------------------- matmul
def test_matmul_is_sequential_not_one_cast() -> None:
    """acc += x*w with a narrow saturating accumulator: 0 -> 3 -> 6 saturates to 3 -> 3-5 = -2. One cast of the
    exact sum (1) would differ; ap_fixed's loop gives -2."""
    f4 = FxFormat(4, 4)
    x, w = _c(3, 3, -5)[None, :], _c(1, 1, 1)[None, :]
    assert kernels.matmul(x, f4, w, f4, FxFormat(3, 3, overflow="SAT")).tolist() == [[-2]]
    assert kernels.matmul(x, f4, w, f4, FxFormat(3, 3)).tolist() == [[1]]  # WRAP: 6 -> -2, -2-5 = -7 -> 1
    # SAT_SYM accumulator: 3, 6 -> 3, then -5 -> -2; going down -4 -> -3 (symmetric range)
    assert kernels.matmul(_c(-3, -3)[None, :], f4, _c(1, 1)[None, :], f4, FxFormat(3, 3, overflow="SAT_SYM")).tolist() == [[-3]]


def test_matmul_rounding_accumulator_rounds_every_step() -> None:
    # x = 0.5 (ap_fixed<4,3>, F=1), w = 1: acc ap_fixed<4,4,RND> (integers): 0.5 -> 1, 1.5 -> 2, 2.5 -> 3
    fx, fw, acc = FxFormat(4, 3), FxFormat(4, 4), FxFormat(4, 4, rounding="RND")
    assert kernels.matmul(_c(1, 1, 1)[None, :], fx, _c(1, 1, 1)[None, :], fw, acc).tolist() == [[3]]
    # exact sum 1.5 cast once would be 2
    assert kernels.cast(_c(3), FxFormat(8, 7), acc).tolist() == [2]


def test_matmul_bias_initialises_accumulator() -> None:
    f4 = FxFormat(4, 4)
    acc = FxFormat(4, 4, overflow="SAT")  # -8..7
    fb = FxFormat(6, 6)
    # bias 20 saturates to 7 when loaded, then +(-2) -> 5
    assert kernels.matmul(_c(-2)[None, :], f4, _c(1)[None, :], f4, acc, _c(20), fb).tolist() == [[5]]


def test_matmul_lossless_path_equals_exact_dot() -> None:
    rng = np.random.default_rng(3)
    fx, fw, fb = FxFormat(8, 3), FxFormat(6, 1, signed=False), FxFormat(10, 5)
    w = rng.integers(fw.min_code, fw.max_code + 1, size=(5, 9))
    x = rng.integers(fx.min_code, fx.max_code + 1, size=(4, 9))
    b = rng.integers(fb.min_code, fb.max_code + 1, size=5)
    acc = kernels.lossless_acc_format(w, fw, fx, b, fb)
    got = kernels.matmul(x, fx, w, fw, acc, b, fb)
    # by hand: product F = 5 + 5 = 10, bias F = 5 -> shift bias by 5
    want = x @ w.T + (b << 5)[None, :]
    np.testing.assert_array_equal(got, want << (acc.frac_bits - 10))
    # the worst case fits the accumulator: all max inputs against the row with the largest |w|
    assert acc.contains(FxFormat(fx.width + fw.width, fx.int_bits + fw.int_bits, True)) or acc.max_code >= 0


def test_lossless_acc_format_by_interval() -> None:
    fx, fw = FxFormat(4, 4), FxFormat(4, 4)  # x in [-8, 7]
    w = _c(2, -3)[None, :]  # y = 2x0 - 3x1 in [2*-8 - 3*7, 2*7 - 3*-8] = [-37, 38]
    acc = kernels.lossless_acc_format(w, fw, fx)
    assert acc == FxFormat(7, 7)  # [-64, 63] is the narrowest signed range holding [-37, 38]


def test_int64_overflow_is_detected() -> None:
    f = FxFormat(32, 32)
    x = np.full((1, 4), f.max_code, dtype=np.int64)
    w = np.full((1, 4), f.max_code, dtype=np.int64)
    with pytest.raises(OverflowRiskError, match="int64"):
        kernels.matmul(x, f, w, f, FxFormat(64, 64))
    with pytest.raises(OverflowRiskError):
        kernels.exact_dot(x, f, w, f)
    with pytest.raises(FormatError, match="wider than"):
        kernels.mul(_c(1), FxFormat(40, 3), _c(1), FxFormat(30, 3))
    with pytest.raises(OverflowRiskError):
        kernels.cast(np.array([1], dtype=np.uint64), FxFormat(8, 8), FxFormat(8, 8))
    with pytest.raises(FormatError, match="integer"):
        kernels.cast(np.array([1.5]), FxFormat(8, 8), FxFormat(8, 8))


def test_matmul_shape_mismatch() -> None:
    f = FxFormat(4, 4)
    with pytest.raises(FormatError, match="disagree"):
        kernels.matmul(np.zeros((2, 3), dtype=np.int64), f, np.zeros((4, 5), dtype=np.int64), f, FxFormat(16, 16))


def test_requantize_extreme_shifts() -> None:
    m = _c(-(2**63), 2**63 - 1, -1, 1, 0)
    # drop 100 bits: TRN floors to -1 for negatives, RND_INF sends |m| < half to 0
    assert kernels.requantize(m, 100, FxFormat(8, 8)).tolist() == [-1, 0, -1, 0, 0]
    assert kernels.requantize(m, 100, FxFormat(8, 8, rounding="RND_INF")).tolist() == [0, 0, 0, 0, 0]
    assert kernels.requantize(m, 100, FxFormat(8, 8, rounding="TRN_ZERO")).tolist() == [0, 0, 0, 0, 0]
    # drop exactly 63 / 64 bits of the extremes: -2**63 / 2**63 = -1 exactly, / 2**64 = -0.5 (a tie)
    assert kernels.requantize(m[:1], 63, FxFormat(8, 8, rounding="RND")).tolist() == [-1]
    assert kernels.requantize(m[:1], 64, FxFormat(8, 8, rounding="RND")).tolist() == [0]
    assert kernels.requantize(m[:1], 64, FxFormat(8, 8, rounding="RND_INF")).tolist() == [-1]
    assert kernels.requantize(m[:1], 64, FxFormat(8, 8, rounding="RND_CONV")).tolist() == [0]
    # shift left by 200: only zero survives; SAT saturates by sign
    sat = FxFormat(8, 8, overflow="SAT")
    assert kernels.requantize(m, -200, sat).tolist() == [-128, 127, -128, 127, 0]
    assert kernels.requantize(m, -200, FxFormat(8, 8)).tolist() == [0, 0, 0, 0, 0]


def test_relu() -> None:
    assert kernels.relu(_c(-3, 0, 5)).tolist() == [0, 0, 5]
