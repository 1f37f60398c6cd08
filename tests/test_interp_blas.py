"""The golden dense / conv2d on float64 BLAS (where provably exact) against the int64 path, and the requantize
fast path against the general one.

``qfx.fixed.kernels.int_matmul`` sums products in float64 only when ``max|x| * max_o sum_k |w[o, k]|`` is at most
2**53 (every partial sum is then an integer a double holds exactly, whatever order or FMA the BLAS uses); the tests
force the int64 path by setting that limit to -1 and require the same codes, for every format and mode, including
sums right at 2**53 and just beyond it (where float64 would round).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx.fixed import kernels as K
from qfx.fixed import ops
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat

SETTINGS = settings(max_examples=120, deadline=None)


def int64_only(monkeypatch):
    monkeypatch.setattr(K, "F64_EXACT", -1)


@st.composite
def fmt(draw, lo_w=1, hi_w=20, signed=None):
    w = draw(st.integers(lo_w, hi_w))
    s = draw(st.booleans()) if signed is None else signed
    if not s:
        w = min(w, 63)
    return FxFormat(w, draw(st.integers(-6, w + 6)), s, draw(st.sampled_from(ROUNDING_MODES)),
                    draw(st.sampled_from(OVERFLOW_MODES)))


def codes(rng: np.random.Generator, f: FxFormat, shape) -> np.ndarray:
    return rng.integers(f.min_code, f.max_code, size=shape, endpoint=True, dtype=np.int64)


@SETTINGS
@given(fmt(), fmt(2, 12), fmt(), st.one_of(st.none(), fmt(4, 30)), st.integers(0, 2**32 - 1),
       st.sampled_from(["none", "lossless", "narrow"]), st.integers(1, 40), st.integers(1, 9))
def test_dense_blas_equals_int64(fx, fw, out, fb, seed, acc_kind, n_in, n_out):
    rng = np.random.default_rng(seed)
    x, w = codes(rng, fx, (7, n_in)), codes(rng, fw, (n_out, n_in))
    b = None if fb is None else codes(rng, fb, (n_out,))
    if acc_kind == "none":
        acc = None
    else:
        acc = K.lossless_acc_format(w, fw, fx, b, fb)
        if acc_kind == "narrow":  # rounds and/or wraps: the sequential accumulator
            acc = FxFormat(max(2, acc.width - 3), acc.int_bits - 1, True, "RND", "WRAP")
    got = ops.dense(x, fx, w, fw, out, b, fb, acc)
    with pytest.MonkeyPatch.context() as mp:
        int64_only(mp)
        want = ops.dense(x, fx, w, fw, out, b, fb, acc)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    # the lossless accumulator gives what one cast of the exact Python-integer sum gives
    if acc_kind != "narrow":
        f = fx.frac_bits + fw.frac_bits if b is None else max(fx.frac_bits + fw.frac_bits, fb.frac_bits)
        exact = [[sum(int(x[r, k]) * int(w[o, k]) for k in range(n_in)) << (f - fx.frac_bits - fw.frac_bits)
                  for o in range(n_out)] for r in range(7)]
        if b is not None:
            exact = [[v + (int(b[o]) << (f - fb.frac_bits)) for o, v in enumerate(row)] for row in exact]
        if all(abs(v) < 2**63 for row in exact for v in row):
            ref = K.cast(np.array(exact, dtype=np.int64), FxFormat(64, 64 - f), out)
            assert np.array_equal(got, ref)


@SETTINGS
@given(fmt(2, 16), fmt(2, 10), fmt(), st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 2), st.integers(0, 2), st.booleans(), st.booleans())
def test_conv2d_blas_equals_int64(fx, fw, out, seed, c, o, k, stride, pad, bias, small_chunks):
    rng = np.random.default_rng(seed)
    h, wd = int(rng.integers(k, k + 5)), int(rng.integers(k, k + 5))
    x, w = codes(rng, fx, (5, c, h, wd)), codes(rng, fw, (o, c, k, k))
    fb = FxFormat(24, 10) if bias else None
    b = codes(rng, fb, (o,)) if bias else None
    acc = K.lossless_acc_format(w.reshape(o, -1), fw, fx, b, fb) if seed % 3 else None
    narrow = seed % 3 == 2  # an accumulator that rounds and wraps: the sequential loop, terms in (C, kh, kw) order
    if narrow:
        acc = FxFormat(max(2, acc.width - 3), acc.int_bits - 1, True, "RND", "WRAP")
    with pytest.MonkeyPatch.context() as mp:
        if small_chunks:  # one image per chunk: chunk boundaries inside the batch
            mp.setattr(ops, "_CHUNK_BYTES", 8)
        got = ops.conv2d(x, fx, w, fw, out, b, fb, (stride, stride), (pad, pad), acc)
    with pytest.MonkeyPatch.context() as mp:
        int64_only(mp)
        want = ops.conv2d(x, fx, w, fw, out, b, fb, (stride, stride), (pad, pad), acc)
    assert np.array_equal(got, want)
    cols = ops.im2col(x, (k, k), (stride, stride), (pad, pad))
    if narrow:  # the ap_fixed accumulation loop over the (C, kh, kw)-ordered window
        flat = np.ascontiguousarray(cols).reshape(cols.shape[0], cols.shape[1], cols.shape[2], -1)
        seq = K.cast(K.matmul(flat, fx, w.reshape(o, -1), fw, acc, b, fb), acc, out).transpose(0, 3, 1, 2)
        assert np.array_equal(got, seq)
        return
    # and against the direct definition: windows (C, kh, kw order) times weights, summed in Python integers
    prod = np.einsum("nhwckl,ockl->nohw", cols.astype(object), w.astype(object))
    f = fx.frac_bits + fw.frac_bits if b is None else max(fx.frac_bits + fw.frac_bits, fb.frac_bits)
    prod = prod * (1 << (f - fx.frac_bits - fw.frac_bits))
    if b is not None:
        prod = prod + (b.astype(object) * (1 << (f - fb.frac_bits)))[None, :, None, None]
    ref = K.cast(prod.astype(np.int64), FxFormat(64, 64 - f), out)
    assert np.array_equal(got, ref)


def test_bound_exactly_2_pow_53_uses_floats_and_is_exact(monkeypatch):
    calls = []
    real = np.matmul

    def spy(a, b, *args, **kw):
        calls.append(a.dtype)
        return real(a, b, *args, **kw)

    x = np.array([[1 << 26, 1 << 26], [-(1 << 26), -(1 << 26)], [(1 << 26) - 1, 1 << 26]], dtype=np.int64)
    w = np.array([[1 << 26, 1 << 26], [1 << 26, -(1 << 26)]], dtype=np.int64)
    assert K.dot_bound(K.amax(x), w) == 1 << 53
    monkeypatch.setattr(K.np, "matmul", spy)
    got = K.int_matmul(x, w)
    assert calls == [np.float64]  # the float64 BLAS path
    want = [[sum(int(a) * int(b) for a, b in zip(r, c)) for c in w] for r in x]
    assert got.tolist() == want and got[0, 0] == 1 << 53 and got[1, 0] == -(1 << 53)


def test_bound_just_above_2_pow_53_uses_int64():
    # 2**53 + 2**27 + 2**26 + 1 is odd and above 2**53: float64 would round it; the int64 path must be taken
    x = np.array([[(1 << 27) + 1]], dtype=np.int64)
    w = np.array([[(1 << 26) + 1]], dtype=np.int64)
    assert K.dot_bound(K.amax(x), w) > 1 << 53
    got = K.int_matmul(x, w)
    assert int(got[0, 0]) == ((1 << 27) + 1) * ((1 << 26) + 1)
    assert float(x[0, 0]) * float(w[0, 0]) != int(got[0, 0])  # what a float path would have got wrong
    # a sum of many terms crossing 2**53 only in its partial sums
    xs = np.full((1, 4), 1 << 26, dtype=np.int64)
    ws = np.array([[1 << 25, 1 << 25, 1 << 25, (1 << 25) + 1]], dtype=np.int64)
    assert K.dot_bound(K.amax(xs), ws) == (1 << 53) + (1 << 26)
    assert int(K.int_matmul(xs, ws)[0, 0]) == sum((1 << 26) * int(v) for v in ws[0])


def test_dense_at_the_bound_through_ops(monkeypatch):
    fx, fw = FxFormat(28, 28), FxFormat(28, 28)
    x = np.array([[(1 << 26), (1 << 26)], [(1 << 26) - 3, -(1 << 26)]], dtype=np.int64)
    w = np.array([[1 << 26, 1 << 26]], dtype=np.int64)
    out = FxFormat(64, 64)
    got = ops.dense(x, fx, w, fw, out)
    int64_only(monkeypatch)
    assert np.array_equal(got, ops.dense(x, fx, w, fw, out))
    assert int(got[0, 0]) == 1 << 53


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(-70, 70), fmt(1, 64), st.sampled_from([1, 10, 40, 62]))
def test_requantize_fast_path_equals_general(seed, k, f, mag):
    rng = np.random.default_rng(seed)
    m = rng.integers(-(1 << mag), 1 << mag, size=200, dtype=np.int64)
    m[:4] = [0, 1, -1, (1 << mag) - 1]
    fast = K.requantize(m, k, f)  # scalar k: the fast path where it applies
    general = K.requantize(m, np.full(m.shape, k, dtype=np.int64), f)  # array k: the general path
    assert np.array_equal(fast, general)


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("overflow", OVERFLOW_MODES)
def test_requantize_ties_and_extremes(rounding, overflow):
    f = FxFormat(6, 3, True, rounding, overflow)
    for k in (1, 2, 3, 5, 62):
        base = np.arange(-40, 41, dtype=np.int64)
        m = np.concatenate([base << k, (base << k) + (1 << (k - 1)), (base << k) - (1 << (k - 1)),
                            np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min + 1], dtype=np.int64)])
        assert np.array_equal(K.requantize(m, k, f), K.requantize(m, np.full(m.shape, k), f)), k


def test_single_thread_blas_context_is_harmless():
    with K.single_thread_blas():
        a = np.arange(6.0).reshape(2, 3)
        assert np.array_equal(a @ a.T, np.array([[5.0, 14.0], [14.0, 50.0]]))
