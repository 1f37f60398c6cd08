"""FxFormat: names, validation, geometry, and ``quantize`` against hand tables and an independent Fraction reference.

Expected values in the tables are derived from the mode definitions (Vitis HLS user guide, ap_fixed quantization
and overflow modes) by hand, not produced by qfx; ``ref_code`` is a second implementation written from the same
definitions with Python ``Fraction`` arithmetic, deliberately unlike ``kernels.requantize`` (no bit masks, no int64).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx.errors import FormatError
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat

# ----------------------------------------------------------------------------------------------- names
AP_TYPES = [
    (FxFormat(8, 3), "ap_fixed<8,3>"),
    (FxFormat(8, 3, rounding="RND"), "ap_fixed<8,3,AP_RND>"),
    (FxFormat(8, 3, overflow="SAT"), "ap_fixed<8,3,AP_TRN,AP_SAT>"),
    (FxFormat(8, 3, rounding="RND_CONV", overflow="SAT_SYM"), "ap_fixed<8,3,AP_RND_CONV,AP_SAT_SYM>"),
    (FxFormat(6, 0, signed=False), "ap_ufixed<6,0>"),
    (FxFormat(6, -2, signed=False, rounding="TRN_ZERO"), "ap_ufixed<6,-2,AP_TRN_ZERO>"),
    (FxFormat(4, 10, overflow="SAT_ZERO"), "ap_fixed<4,10,AP_TRN,AP_SAT_ZERO>"),
    (FxFormat(64, 64), "ap_fixed<64,64>"),
    (FxFormat(1, 1, rounding="RND_MIN_INF", overflow="WRAP"), "ap_fixed<1,1,AP_RND_MIN_INF>"),
]


@pytest.mark.parametrize("fmt,text", AP_TYPES, ids=[t for _f, t in AP_TYPES])
def test_ap_type_exact(fmt: FxFormat, text: str) -> None:
    assert fmt.ap_type() == text
    assert str(fmt) == text
    assert FxFormat.parse(text) == fmt


@pytest.mark.parametrize("text,fmt", [
    ("ap_fixed<8,3,RND,SAT>", FxFormat(8, 3, True, "RND", "SAT")),
    ("  ap_ufixed < 12 , -3 , AP_RND_INF , AP_SAT_SYM , 0 >  ", FxFormat(12, -3, False, "RND_INF", "SAT_SYM")),
    ("ap_fixed<16,6,AP_TRN,AP_WRAP>", FxFormat(16, 6)),
    ("ap_fixed<5,5,AP_rnd_conv>", FxFormat(5, 5, rounding="RND_CONV")),
])
def test_parse_variants(text: str, fmt: FxFormat) -> None:
    assert FxFormat.parse(text) == fmt


@pytest.mark.parametrize("text", ["ap_int<8>", "ap_fixed<8>", "ap_fixed<8,3,AP_FOO>", "fixed<8,3>", "ap_fixed<0,0>"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(FormatError):
        FxFormat.parse(text)


# ----------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,field,allowed", [
    (dict(width=0, int_bits=0), "width", "1..64"),
    (dict(width=65, int_bits=3), "width", "1..64"),
    (dict(width=64, int_bits=3, signed=False), "width", "1..63"),
    (dict(width=8, int_bits=600), "int_bits", "-512..512"),
    (dict(width=8, int_bits=-600), "int_bits", "-512..512"),
    (dict(width=8.0, int_bits=3), "width", "integer"),
    (dict(width=8, int_bits=True), "int_bits", "integer"),
    (dict(width=8, int_bits=3, signed="yes"), "signed", "bool"),
    (dict(width=8, int_bits=3, rounding="ROUND"), "rounding", ", ".join(ROUNDING_MODES)),
    (dict(width=8, int_bits=3, overflow="CLAMP"), "overflow", ", ".join(OVERFLOW_MODES)),
])
def test_validation_names_field_and_allowed_values(kwargs: dict, field: str, allowed: str) -> None:
    with pytest.raises(ValueError) as ei:
        FxFormat(**kwargs)
    msg = str(ei.value)
    assert isinstance(ei.value, FormatError)
    assert field in msg and allowed in msg and "\n" not in msg


def test_modes_accept_ap_prefix_and_lower_case() -> None:
    assert FxFormat(8, 3, rounding="ap_rnd", overflow="AP_SAT") == FxFormat(8, 3, rounding="RND", overflow="SAT")


def test_dict_round_trip_and_bad_record() -> None:
    f = FxFormat(12, -3, False, "RND_INF", "SAT_SYM")
    assert FxFormat.from_dict(f.to_dict()) == f
    assert FxFormat.from_dict({"width": 4, "int_bits": 2}) == FxFormat(4, 2)
    with pytest.raises(FormatError, match="bad format record"):
        FxFormat.from_dict({"width": 4})
    with pytest.raises(FormatError):
        FxFormat.from_dict({"width": 4, "int_bits": 2, "rounding": "NOPE"})


def test_frozen_and_hashable() -> None:
    f = FxFormat(8, 3)
    with pytest.raises(Exception):
        f.width = 9  # type: ignore[misc]
    assert len({f, FxFormat(8, 3), FxFormat(8, 3, rounding="TRN", overflow="WRAP")}) == 1
    assert f.with_modes("RND", "SAT") == FxFormat(8, 3, True, "RND", "SAT")
    assert f.with_modes(overflow="SAT").rounding == "TRN"


# ----------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("fmt,lo,hi,step,F", [
    (FxFormat(8, 3), -4.0, 3.96875, 0.03125, 5),
    (FxFormat(8, 3, signed=False), 0.0, 7.96875, 0.03125, 5),
    (FxFormat(4, -2), -0.125, 0.109375, 0.015625, 6),  # all fractional: |x| < 2**(I-1)
    (FxFormat(3, 6), -32.0, 24.0, 8.0, -3),  # LSB weighs 8
    (FxFormat(1, 1), -1.0, 0.0, 1.0, 0),
    (FxFormat(1, 0, signed=False), 0.0, 0.5, 0.5, 1),
])
def test_geometry(fmt: FxFormat, lo: float, hi: float, step: float, F: int) -> None:
    assert (fmt.min, fmt.max, fmt.step, fmt.frac_bits) == (lo, hi, step, F)


def test_code_limits_at_64_bits() -> None:
    assert FxFormat(64, 0).min_code == -(2**63) and FxFormat(64, 0).max_code == 2**63 - 1
    assert FxFormat(63, 0, signed=False).max_code == 2**63 - 1


def test_for_code_range_and_contains() -> None:
    assert FxFormat.for_code_range(-5, 3, 2) == FxFormat(4, 2)  # [-8, 7] holds [-5, 3]
    assert FxFormat.for_code_range(-8, 7, 0) == FxFormat(4, 4)
    assert FxFormat.for_code_range(-9, 7, 0) == FxFormat(5, 5)
    assert FxFormat.for_code_range(0, 8, 3) == FxFormat(4, 1, signed=False)
    assert FxFormat.for_code_range(0, 0, 0) == FxFormat(1, 1, signed=False)
    with pytest.raises(FormatError):
        FxFormat.for_code_range(3, 2, 0)
    with pytest.raises(FormatError):
        FxFormat.for_code_range(-1, 2, 0, signed=False)
    assert FxFormat(8, 4).contains(FxFormat(6, 3))
    assert FxFormat(8, 4).contains(FxFormat(6, 3, signed=False))  # [0, 7.9375] inside [-8, 7.9375]
    assert not FxFormat(8, 4).contains(FxFormat(6, 1))  # more fractional bits
    assert FxFormat(9, 5).contains(FxFormat(8, 4, signed=False)) and not FxFormat(8, 4).contains(FxFormat(8, 4, False))


def test_result_formats_by_hand() -> None:
    """Hand-derived from the header's RType rules (product: W1+W2, I1+I2; sum: one carry bit over the wider
    integer part, +1 for an unsigned operand meeting a signed one; difference always signed)."""
    a, b = FxFormat(8, 3), FxFormat(6, 2, signed=False)
    assert a.mul_format(b) == FxFormat(14, 5)
    assert a.add_format(b) == FxFormat(9, 4)  # I = max(3, 2+1) + 1, F = max(5, 4)
    assert a.sub_format(b) == FxFormat(9, 4)
    u, v = FxFormat(4, 2, signed=False), FxFormat(6, 1, signed=False)
    assert u.mul_format(v) == FxFormat(10, 3, signed=False)
    assert u.add_format(v) == FxFormat(8, 3, signed=False)
    assert u.sub_format(v) == FxFormat(8, 3, signed=True)
    assert FxFormat(4, -3).add_format(FxFormat(4, 8)) == FxFormat(16, 9)  # F = max(7, -4), I = max(-3, 8) + 1
    with pytest.raises(FormatError, match="wider than"):
        FxFormat(40, 3).mul_format(FxFormat(30, 3))
    acc = FxFormat(8, 3).accum_format(FxFormat(8, 3), 4)
    assert acc.frac_bits == 10 and acc.contains(FxFormat(8, 3).mul_format(FxFormat(8, 3)))
    assert acc.max_code >= 4 * 128 * 128 and acc.min_code <= 4 * -128 * 127


# ----------------------------------------------------------------------------------------------- rounding tables
# x (in LSBs of a format with frac_bits = 0) -> expected code per mode, from the definitions:
#  TRN floor | TRN_ZERO toward 0 | RND nearest, ties up | RND_ZERO ties toward 0 | RND_MIN_INF ties down
#  RND_INF ties away from 0 | RND_CONV ties to even
ROUND_TABLE = {
    #         TRN TRN_ZERO RND RND_ZERO RND_MIN_INF RND_INF RND_CONV
    -2.5:   (-3, -2, -2, -2, -3, -3, -2),
    -1.5:   (-2, -1, -1, -1, -2, -2, -2),
    -0.5:   (-1, 0, 0, 0, -1, -1, 0),
    0.5:    (0, 0, 1, 0, 0, 1, 0),
    1.5:    (1, 1, 2, 1, 1, 2, 2),
    2.5:    (2, 2, 3, 2, 2, 3, 2),
    -1.25:  (-2, -1, -1, -1, -1, -1, -1),
    -0.75:  (-1, 0, -1, -1, -1, -1, -1),
    0.75:   (0, 0, 1, 1, 1, 1, 1),
    1.25:   (1, 1, 1, 1, 1, 1, 1),
    -0.25:  (-1, 0, 0, 0, 0, 0, 0),
    3.0:    (3, 3, 3, 3, 3, 3, 3),
    -3.0:   (-3, -3, -3, -3, -3, -3, -3),
}


@pytest.mark.parametrize("mode_idx,mode", list(enumerate(ROUNDING_MODES)))
def test_rounding_table(mode_idx: int, mode: str) -> None:
    f = FxFormat(8, 8, rounding=mode)
    for x, want in ROUND_TABLE.items():
        assert int(f.to_int(x)) == want[mode_idx], (mode, x)
        # the same ties scaled: frac_bits = 3, and int_bits > width (LSB = 4)
        assert int(FxFormat(8, 5, rounding=mode).to_int(x / 8)) == want[mode_idx], (mode, x)
        assert int(FxFormat(6, 8, rounding=mode).to_int(x * 4)) == want[mode_idx], (mode, x)


def test_rounding_table_unsigned() -> None:
    for mode_idx, mode in enumerate(ROUNDING_MODES):
        f = FxFormat(8, 8, signed=False, rounding=mode)
        for x in (0.5, 1.5, 2.5, 0.75, 1.25):
            assert int(f.to_int(x)) == ROUND_TABLE[x][mode_idx], (mode, x)


# x -> expected code of ap_fixed<4,4,TRN,O> (codes -8..7) / ap_ufixed<4,4,TRN,O> (0..15), per overflow mode
OVERFLOW_TABLE_SIGNED = {
    #        WRAP SAT SAT_ZERO SAT_SYM
    7.0:   (7, 7, 7, 7),
    8.0:   (-8, 7, 0, 7),
    9.0:   (-7, 7, 0, 7),
    -8.0:  (-8, -8, -8, -7),  # symmetric range [-7, 7]: the most negative code itself becomes -7
    -9.0:  (7, -8, 0, -7),
    16.0:  (0, 7, 0, 7),
    -17.0: (-1, -8, 0, -7),
    100.0: (4, 7, 0, 7),
    -7.5:  (-8, -8, -8, -7),  # floor(-7.5) = -8 is in range for SAT but not for SAT_SYM
}
OVERFLOW_TABLE_UNSIGNED = {
    15.0:  (15, 15, 15, 15),
    16.0:  (0, 15, 0, 15),
    -1.0:  (15, 0, 0, 0),
    -0.5:  (15, 0, 0, 0),
    33.0:  (1, 15, 0, 15),
}


@pytest.mark.parametrize("o_idx,overflow", list(enumerate(OVERFLOW_MODES)))
def test_overflow_table(o_idx: int, overflow: str) -> None:
    for x, want in OVERFLOW_TABLE_SIGNED.items():
        assert int(FxFormat(4, 4, overflow=overflow).to_int(x)) == want[o_idx], (overflow, x)
    for x, want in OVERFLOW_TABLE_UNSIGNED.items():
        assert int(FxFormat(4, 4, signed=False, overflow=overflow).to_int(x)) == want[o_idx], (overflow, x)


def test_rounding_into_overflow() -> None:
    assert int(FxFormat(4, 4, rounding="RND", overflow="SAT").to_int(7.5)) == 7  # rounds to 8, saturates
    assert int(FxFormat(4, 4, rounding="RND", overflow="WRAP").to_int(7.5)) == -8
    assert int(FxFormat(4, 4, rounding="RND", overflow="SAT_ZERO").to_int(7.5)) == 0
    assert int(FxFormat(4, 4, rounding="TRN_ZERO", overflow="SAT_SYM").to_int(-8.5)) == -7
    assert int(FxFormat(4, 4, rounding="RND", overflow="SAT_SYM").to_int(-8.5)) == -7


def test_one_bit_sat_sym_behaves_like_sat() -> None:
    """ap_fixed<1,I,Q,AP_SAT_SYM>: the header's underflow writes code -1, so SAT_SYM = SAT at W = 1."""
    f = FxFormat(1, 1, overflow="SAT_SYM")
    assert [int(f.to_int(x)) for x in (-5.0, -1.0, -0.5, 0.0, 0.75, 3.0)] == [-1, -1, -1, 0, 0, 0]


def test_special_doubles() -> None:
    """inf is 2**1024 and NaN is (1.frac)*2**1024 with its sign bit, as the header's double constructor reads them."""
    sat, wrap = FxFormat(8, 3, overflow="SAT"), FxFormat(8, 3)
    assert int(sat.to_int(math.inf)) == 127 and int(sat.to_int(-math.inf)) == -128
    assert int(sat.to_int(math.nan)) == 127 and int(sat.to_int(-math.nan)) == -128
    assert int(wrap.to_int(math.inf)) == 0 and int(wrap.to_int(math.nan)) == 0
    assert int(sat.to_int(-0.0)) == 0 and int(FxFormat(8, 3, rounding="TRN").to_int(-5e-324)) == -1
    assert int(FxFormat(8, 3, rounding="TRN_ZERO").to_int(-5e-324)) == 0
    assert int(FxFormat(64, 1, overflow="SAT").to_int(1e300)) == 2**63 - 1


def test_quantize_keeps_container_types() -> None:
    f = FxFormat(8, 3, rounding="RND")
    x32 = np.array([0.3, -1.01], dtype=np.float32)
    assert f.quantize(x32).dtype == np.float32
    assert isinstance(f.quantize(0.3), float) and f.quantize(0.3) == 0.3125
    assert isinstance(f.to_int(0.3), np.int64)
    np.testing.assert_array_equal(f.from_int(f.to_int(np.array([0.3, -1.01]))), [0.3125, -1.0])


# ----------------------------------------------------------------------------------------------- reference
def ref_code(x: float, f: FxFormat) -> int:
    """Code of ``f`` for the finite double ``x``, from the mode definitions with exact rationals."""
    return ref_code_fraction(Fraction(x), f)


def ref_code_fraction(value: Fraction, f: FxFormat) -> int:
    """Code of ``f`` for an exact rational ``value`` (round per ``f.rounding``, then ``f.overflow``)."""
    v = value * Fraction(2) ** f.frac_bits  # value in LSBs
    fl = math.floor(v)
    rem = v - fl
    half = Fraction(1, 2)
    r = f.rounding
    if r == "TRN" or rem == 0:
        c = fl
    elif r == "TRN_ZERO":
        c = fl if v > 0 else fl + 1
    elif rem != half:
        c = fl + (rem > half)
    else:  # exact tie
        c = {"RND": fl + 1, "RND_ZERO": fl + (v < 0), "RND_MIN_INF": fl, "RND_INF": fl + (v > 0),
             "RND_CONV": fl + (fl % 2)}[r]
    lo, hi = f.min_code, f.max_code
    if f.overflow == "WRAP":
        m = 1 << f.width
        return (c - lo) % m + lo
    if f.overflow == "SAT_SYM" and f.signed and f.width > 1:
        lo = -hi
    if lo <= c <= hi:
        return c
    if f.overflow == "SAT_ZERO":
        return 0
    return hi if c > hi else lo


@st.composite
def format_and_double(draw: st.DrawFn) -> tuple[FxFormat, float]:
    signed = draw(st.booleans())
    w = draw(st.integers(1, 64 if signed else 63))
    i = draw(st.integers(-80, 80))
    f = FxFormat(w, i, signed, draw(st.sampled_from(ROUNDING_MODES)), draw(st.sampled_from(OVERFLOW_MODES)))
    F = f.frac_bits
    x = draw(st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=f.min * 3 - 1, max_value=f.max * 3 + 1, allow_nan=False),
        st.tuples(st.integers(-(1 << 53), 1 << 53), st.integers(-3, 3)).map(lambda t: math.ldexp(t[0], t[1] - F)),
        st.integers(max(f.min_code, -(1 << 51)), min(f.max_code, 1 << 51)).map(lambda k: math.ldexp(2 * k + 1, -F - 1)),
    ))
    return f, x


@settings(max_examples=800, deadline=None)
@given(fx=format_and_double())
def test_quantize_matches_fraction_reference(fx: tuple[FxFormat, float]) -> None:
    f, x = fx
    want = ref_code(x, f)
    assert int(f.to_int(x)) == want
    if abs(want) < (1 << 53):
        assert f.quantize(x) == math.ldexp(want, -f.frac_bits)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_quantize_vectorised_equals_scalar(data: st.DataObject) -> None:
    f, _ = data.draw(format_and_double())
    xs = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=30))
    got = f.to_int(np.array(xs))
    assert got.dtype == np.int64
    assert [int(g) for g in got] == [ref_code(x, f) for x in xs]
