"""Layer-level integer ops on int64 codes: the golden semantics every executor must reproduce.

Each op computes its result exactly (in a lossless intermediate format) and then casts **once** to the output
format with that format's rounding and overflow. Layers in ``exact`` mode and the IR interpreter both call these
functions, so there is one definition. Shapes carry a leading batch dimension; images are NCHW.
"""
from __future__ import annotations

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


def dense(x: np.ndarray, fx: FxFormat, w: np.ndarray, fw: FxFormat, out: FxFormat,
          b: np.ndarray | None = None, fb: FxFormat | None = None, acc: FxFormat | None = None) -> np.ndarray:
    """``out(acc(b) + sum_k x[..., k] * w[o, k])`` — ``w`` is (out_features, in_features) like torch."""
    if acc is None:  # exact sum in int64 (bound-checked), then one cast
        s, fs = K.exact_dot(x, fx, w, fw, b, fb)
        return K.cast(s, fs, out)
    a = K.matmul(x, fx, w, fw, acc, b, fb)
    return K.cast(a, acc, out)


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
    o = w.shape[0]
    w2 = np.asarray(w, dtype=_I64).reshape(o, -1)
    cols = im2col(np.asarray(x, dtype=_I64), (w.shape[2], w.shape[3]), stride, padding)
    n, ho, wo = cols.shape[:3]
    flat = np.ascontiguousarray(cols).reshape(n, ho, wo, -1)
    y = dense(flat, fx, w2, fw, out, b, fb, acc)  # (N, Ho, Wo, O)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


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
