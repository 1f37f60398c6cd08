"""Layer-level integer ops on int64 codes: the golden semantics every executor must reproduce.

Each op computes its result exactly (in a lossless intermediate format) and then casts **once** to the output
format with that format's rounding and overflow. Layers in ``exact`` mode and the IR interpreter both call these
functions, so there is one definition. Shapes carry a leading batch dimension; images are NCHW.
"""
from __future__ import annotations

import contextlib

import numpy as np

from qfx.errors import FormatError
from qfx.fixed import kernels as K
from qfx.fixed.format import FxFormat

__all__ = [
    "dense",
    "conv2d",
    "scale_shift",
    "scale_shift_format",
    "add",
    "relu",
    "clip",
    "maxpool2d",
    "avgpool2d",
    "avgpool_format",
    "im2col",
    "conv_out_size",
]

_I64 = np.int64
#: dense rows / im2col windows are processed in chunks of about this many bytes of operand (cache-sized: no
#: large temporaries, whose page faults cost more than the arithmetic on a batch of thousands of vectors)
_CHUNK_BYTES = 1 << 20


def dense(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, out: FxFormat,
          b: np.ndarray | None = None, fb: FxFormat | None = None, acc: FxFormat | None = None) -> np.ndarray:
    """``out(acc(b) + sum_k x[..., k] * w[o, k])`` — ``w`` is (out_features, in_features) like torch.

    The products are summed with float64 BLAS where the bound ``max|x| * max_o sum_k |w[o, k]|`` proves every
    partial sum an integer of magnitude <= 2**53 (exact), in int64 otherwise (``qfx.fixed.kernels.int_matmul``).
    """
    xi = K._as_codes(x)
    return _dense(xi, fx, K._as_codes(w), fw, out, b, fb, acc, K.amax(xi))


def _dense(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, out: FxFormat, b: np.ndarray | None,
           fb: FxFormat | None, acc: FxFormat | None, amax_x: int) -> np.ndarray:
    """``dense`` on int64 codes, or on float64 integer codes (the convolution's im2col), with max|x| known."""
    if x.shape[-1] != w.shape[1]:
        raise FormatError(f"dot shapes disagree: x has {x.shape[-1]} columns, w has {w.shape[1]}")
    if acc is None or K.acc_is_lossless(amax_x, fx, w, fw, acc, b, fb):
        # the exact sum, cast once (with a lossless acc, casting to acc first would change nothing)
        K.check_dot(amax_x, fx, w, fw, b, fb)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        y = np.empty((x2.shape[0], w.shape[0]), dtype=_I64)
        step = max(1, _CHUNK_BYTES // max(1, x2.shape[1] * 8))
        with K.single_thread_blas() if x2.shape[0] > step else contextlib.nullcontext():
            for i in range(0, x2.shape[0], step):  # elementwise after the products: chunks give the same codes
                y[i:i + step] = _finish_cast(K.int_matmul(x2[i:i + step], w, amax_x), fx, fw, b, fb, out)
        return y.reshape(lead + (w.shape[0],))
    a = K._matmul_sequential(x, fx, w, fw, acc, b, fb)
    return K.cast(a, acc, out)


def _finish_cast(prod: np.ndarray, fx: FxFormat, fw: FxFormat, b: np.ndarray | None, fb: FxFormat | None,
                 out: FxFormat) -> np.ndarray:
    """``out`` codes of ``b + prod`` (``prod`` = the exact int64 products ``x @ w.T``)."""
    s, fs = K.finish_dot(prod, fx, fw, b, fb)
    return K.cast(s, fs, out)


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    n = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    if n < 1:
        raise FormatError(f"convolution/pool window {kernel} (stride {stride}, pad {pad}) does not fit input size {size}")
    return n


def im2col(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
           pad_value: int = 0) -> np.ndarray:
    """(N, C, H, W) -> (N, Ho, Wo, C, kh, kw) windows (a view where possible). Padding uses ``pad_value`` codes."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, kh, sh, 0), conv_out_size(w, kw, sw, 0)
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, ho, wo, c, kh, kw), strides=(s[0], s[2] * sh, s[3] * sw, s[1], s[2], s[3]), writeable=False
    )


def conv2d(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, out: FxFormat,
           b: np.ndarray | None = None, fb: FxFormat | None = None, stride: tuple[int, int] = (1, 1),
           padding: tuple[int, int] = (0, 0), acc: FxFormat | None = None) -> np.ndarray:
    """2-D convolution (groups=1, zero padding), weights (O, C, kh, kw); returns (N, O, Ho, Wo) codes of ``out``."""
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    wi = K._as_codes(np.asarray(w))
    xi = K._as_codes(np.asarray(x))
    if xi.ndim != 4 or wi.ndim != 4 or xi.shape[1] != wi.shape[1]:
        raise FormatError(f"conv2d shapes disagree: input {xi.shape}, weight {wi.shape}")
    # windows in (kh, kw, C) order from a channels-last copy of the input: the gather copies runs of C values
    # (the (C, kh, kw) order copies runs of kw); the weights are reordered to match, the sums are the same
    w2 = np.ascontiguousarray(wi.transpose(0, 2, 3, 1)).reshape(o, -1)
    amax_x = K.amax(xi)  # zero padding adds no larger value
    if acc is None or K.acc_is_lossless(amax_x, fx, w2, fw, acc, b, fb):
        # one cast of the exact sum (what casting to a lossless acc first, then to out, gives)
        K.check_dot(amax_x, fx, w2, fw, b, fb)
        return _conv_exact(xi, w2, (kh, kw), stride, padding, amax_x, fx, fw, b, fb, out)
    # an accumulator that rounds or wraps: the sequential ap_fixed loop, terms in (C, kh, kw) order as generated code
    cols = im2col(xi, (kh, kw), stride, padding)
    n, ho, wo = cols.shape[:3]
    flat = np.ascontiguousarray(cols).reshape(n, ho, wo, -1)
    y = K.cast(K._matmul_sequential(flat, fx, wi.reshape(o, -1), fw, acc, b, fb), acc, out)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def _conv_exact(x: np.ndarray, w2: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
                pad: tuple[int, int], amax_x: int, fx: FxFormat, fw: FxFormat, b: np.ndarray | None,
                fb: FxFormat | None, out: FxFormat) -> np.ndarray:
    """(N, O, Ho, Wo) ``out`` codes of ``b + windows @ w2.T``, computed in cache-sized chunks of images: the
    window gather, the exact products (float64 BLAS where the bound allows), the bias and the cast all stay in
    cache and no large temporaries are allocated (the cast is elementwise: chunking changes no code)."""
    dtype = np.float64 if K.dot_bound(amax_x, w2) <= K.F64_EXACT else _I64
    cols = _windows_nhwc(x, dtype, kernel, stride, pad)
    n, ho, wo = cols.shape[:3]
    k, o = w2.shape[1], w2.shape[0]
    y = np.empty((n, o, ho, wo), dtype=_I64)
    step = max(1, _CHUNK_BYTES // max(1, ho * wo * k * 8))
    with K.single_thread_blas() if n > step else contextlib.nullcontext():
        for i in range(0, n, step):
            blk = np.ascontiguousarray(cols[i:i + step]).reshape(-1, k)
            prod = K.int_matmul(blk, w2, amax_x).reshape(-1, ho, wo, o)
            y[i:i + step] = _finish_cast(prod, fx, fw, b, fb, out).transpose(0, 3, 1, 2)
    return y


def _windows_nhwc(x: np.ndarray, dtype: type, kernel: tuple[int, int], stride: tuple[int, int],
                  pad: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) codes -> (N, Ho, Wo, kh, kw, C) windows (a view of a zero-padded channels-last copy)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape
    ho, wo = conv_out_size(h, kh, sh, ph), conv_out_size(w, kw, sw, pw)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=dtype)
    xp[:, ph:ph + h, pw:pw + w, :] = x.transpose(0, 2, 3, 1)
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, shape=(n, ho, wo, kh, kw, c), strides=(s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]), writeable=False
    )


def scale_shift_format(fx: FxFormat, fs: FxFormat, fsh: FxFormat) -> FxFormat:
    """Lossless format of ``x * scale + shift`` (ap_fixed product then sum rules)."""
    return fx.mul_format(fs).add_format(fsh)


def scale_shift(x: np.ndarray, fx: FxFormat, scale: np.ndarray, fs: FxFormat, shift: np.ndarray, fsh: FxFormat,
                out: FxFormat) -> np.ndarray:
    """Per-channel ``out(x * scale[c] + shift[c])`` — BatchNorm in fixed point; channel axis is 1."""
    x = np.asarray(x, dtype=_I64)
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    p, fp = K.mul(x, fx, np.asarray(scale, dtype=_I64).reshape(bshape), fs)
    s, f = K.add(p, fp, np.asarray(shift, dtype=_I64).reshape(bshape), fsh)
    return K.cast(s, f, out)


def add(a: np.ndarray, fa: FxFormat, b: np.ndarray, fb: FxFormat, out: FxFormat) -> np.ndarray:
    """Residual add: exact ``a + b`` (binary points aligned as ap_fixed does), cast once to ``out``."""
    s, f = K.add(a, fa, b, fb)
    return K.cast(s, f, out)


def relu(x: np.ndarray, fx: FxFormat, out: FxFormat) -> np.ndarray:
    return K.cast(K.relu(x), fx, out)


def clip(x: np.ndarray, fx: FxFormat, lo_code: int, hi_code: int, out: FxFormat) -> np.ndarray:
    """``out(min(max(x, lo), hi))`` with bounds given as codes of ``fx``."""
    return K.cast(np.clip(np.asarray(x, dtype=_I64), lo_code, hi_code), fx, out)


def maxpool2d(x: np.ndarray, fx: FxFormat, out: FxFormat, kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Max over windows; padding never wins (padded with the smallest code)."""
    cols = im2col(np.asarray(x, dtype=_I64), kernel, stride, padding, pad_value=np.iinfo(np.int64).min)
    m = cols.max(axis=(4, 5))  # (N, Ho, Wo, C)
    return K.cast(np.ascontiguousarray(m.transpose(0, 3, 1, 2)), fx, out)


def avgpool_format(fx: FxFormat, frecip: FxFormat, window: int) -> FxFormat:
    """Lossless format of ``sum(window values) * recip``."""
    s = FxFormat.for_code_range(fx.min_code * window, fx.max_code * window, fx.frac_bits)
    return s.mul_format(frecip)


def avgpool2d(x: np.ndarray, fx: FxFormat, out: FxFormat, kernel: tuple[int, int], stride: tuple[int, int],
              recip: int, frecip: FxFormat, padding: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``out(sum(window) * recip)`` — ``recip`` is the code of 1/(kh*kw) in ``frecip`` (exact for powers of two)."""
    cols = im2col(np.asarray(x, dtype=_I64), kernel, stride, padding)
    window = kernel[0] * kernel[1]
    sfmt = FxFormat.for_code_range(fx.min_code * window, fx.max_code * window, fx.frac_bits)
    s = cols.sum(axis=(4, 5), dtype=_I64)
    p, fp = K.mul(s, sfmt, np.int64(recip), frecip)
    return K.cast(np.ascontiguousarray(p.transpose(0, 3, 1, 2)), fp, out)
