"""``FixedQuant``: a fixed-point quantizer with a fixed width W and a learned binary point (integer bits I).

Train mode (float32 fake quantization)
--------------------------------------
``m = x * 2**(W-I)`` is the value in LSBs; it is rounded with the format's rounding mode, mapped with its overflow
mode and scaled back: ``y = q * 2**(I-W)``. Every rounding mode of ``qfx.fixed`` is reproduced with float ops that
are exact for float32 inputs (power-of-two scaling is exact; ``m - floor(m)`` is exact; ``torch.round`` is
round-half-even = ``RND_CONV``), every overflow mode too (``WRAP`` by an exact ``remainder`` by ``2**W``, not by
saturation). For the saturating modes the input is clamped to the code range *before* rounding, which gives the same
codes (rounding is monotone and fixes integers) and keeps every intermediate below 2**24, so the cheap formula
``floor(m + 0.5)`` stays exact. Results therefore equal ``FxFormat.quantize`` bit for bit whenever the result is a
float32 (W <= 24, normal range); tests check this for every rounding x overflow mode. One known exception: ``RND``
with a saturating mode at ``m = 0.5 - 2**-25`` exactly (the float32 just below the first tie), where ``m + 0.5``
rounds up to 1.0, so train mode gives code 1 where ap_fixed gives 0 (one input value per format; exact mode and the
exported designs are not affected).

Speed: the fused path
---------------------
On CPU, train mode runs each quantizer (and a layer's output quantizer followed by the next ReLU's, and a whole
BatchNorm in training mode) as one C++ autograd node, ``qfx/nn/_fused_quant.cpp``, compiled at first use in the
background (``qfx.nn._fused``; ``QFX_FUSED=0`` disables it). It computes every element with the same float32
operations as the tensor-op code below and reduces the binary-point gradient with the same ATen calls, so values and
gradients are bit-identical (``tests/test_fused_quant.py`` compares them, and whole training runs); the tensor-op
path stays as the fallback (no compiler, CUDA, float64, non-contiguous inputs, ``torch.compile`` tracing) and as the
reference (``tensor_op_path()``). CUDA tensors take it automatically; off the CPU it builds its powers of two from
their exponent bits (``pow2_exact``), so quantized values and input gradients equal the CPU's (``tests/test_gpu.py``).
Non-overlapping max pooling is a fused node too (``max_pool_train``), and ``link_chains(model, conv_bn=True)`` folds
a conv's output quantizer into the following BatchNorm's node (``conv_bn_train``; off by default: not faster).

Gradients (the estimator, and why)
----------------------------------
* Values: straight-through through rounding, zero where the value saturated (clipped STE). For ``WRAP`` the
  out-of-range region also gets zero gradient: a wrapped value is a large discontinuity that training should move
  away from, not follow.
* Integer bits: ``I = round(p)`` with a straight-through ``round``, and with ``s = 2**(I-W)`` and STE rounding,
  ``y = round(x / s) * s`` gives ``dy/dI = ln2 * (y - x)`` inside the range and ``dy/dI = ln2 * y_sat`` where the
  value saturated (``y_sat`` = the saturation bound). This is the LSQ step-size gradient expressed in the log2
  domain (as QFX and LSQ+ do): the in-range term trades rounding error, the saturated term pushes the range out, and
  working on ``log2(step)`` makes the update scale-free, which matters because one parameter moves the step by a
  factor of two. For ``WRAP`` and ``SAT_ZERO`` the I-gradient uses the saturated value as well, so the estimator
  always says "grow the range" for out-of-range data instead of following the wrapped/zeroed value.

K-hot
-----
With ``khot=K`` the W-bit codes are projected to at most K signed powers of two, greedily (nearest power of two to
the residual, ties to the larger), then clipped to the largest in-range K-hot codes, exactly as
``qfx.fixed.csd.khot_project``; the float projection uses ``frexp`` so it is exact too. Gradients pass straight
through the projection.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from qfx.errors import FormatError, UnsupportedError
from qfx.fixed.csd import khot_project
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.nn import _fused

__all__ = ["FixedQuant", "fake_quant", "quantize_pair", "khot_float", "union_format", "MAX_TRAIN_WIDTH",
           "fused_status", "tensor_op_path", "link_chains", "attr", "conv_bn_train",
           "max_pool_train"]

_LN2 = math.log(2.0)
#: float32 fake quantization is exact up to this width (24-bit significand).
MAX_TRAIN_WIDTH = 24
_I_LIMIT = 96  # keeps 2**(W - I) a normal float32 in train mode


_CONSTS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _const(v: float, like: torch.Tensor) -> torch.Tensor:
    """Cached 0-d tensor of ``v``: multiplying by a python float makes torch wrap and convert a scalar tensor on
    every call (several microseconds each on CPU), a cached 0-d tensor of the right dtype does not."""
    key = (v, like.dtype, like.device)
    t = _CONSTS.get(key)
    if t is None:
        if len(_CONSTS) > 4096:
            _CONSTS.clear()
        t = _CONSTS[key] = torch.tensor(v, dtype=like.dtype, device=like.device)
    return t


def _code_range(width: int, signed: bool) -> tuple[float, float]:
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    return float(lo), float(hi)


def _khot_bounds(width: int, signed: bool, k: int) -> tuple[float, float]:
    lo = -(1 << (width - 1)) if signed else 0
    hi = (1 << (width - 1)) - 1 if signed else (1 << width) - 1
    p = khot_project(np.array([lo, hi], dtype=np.int64), k, lo, hi)
    return float(p[0]), float(p[1])


def _round(m: torch.Tensor, rounding: str, bounded: bool, inplace: bool = False) -> torch.Tensor:
    """Round LSB values ``m`` to integers with an ``ap_fixed`` rounding mode, exactly for float32.

    ``bounded``: |m| < 2**23 is known (then ``m +- 0.5`` is exact and the short formulas apply).
    ``inplace``: ``m`` may be overwritten (it is a temporary).
    """
    if rounding == "TRN":
        return m.floor_() if inplace else torch.floor(m)
    if rounding == "TRN_ZERO":
        return m.trunc_() if inplace else torch.trunc(m)
    if rounding == "RND_CONV":
        return m.round_() if inplace else torch.round(m)
    if bounded and rounding in ("RND", "RND_MIN_INF"):
        h = _const(0.5, m)
        if rounding == "RND":
            return (m.add_(h) if inplace else m + h).floor_()
        return (m.sub_(h) if inplace else m - h).ceil_()
    fl = torch.floor(m)
    r = m - fl  # exact
    if rounding == "RND":
        inc = r >= 0.5
    elif rounding == "RND_MIN_INF":
        inc = r > 0.5
    elif rounding == "RND_ZERO":
        inc = (r > 0.5) | ((r == 0.5) & (m < 0))
    elif rounding == "RND_INF":
        inc = (r > 0.5) | ((r == 0.5) & (m > 0))
    else:  # pragma: no cover - validated by the quantizer
        raise FormatError(f"unknown rounding mode {rounding}")
    return fl + inc.to(m.dtype)


def khot_float(q: torch.Tensor, k: int, lo: float, hi: float) -> torch.Tensor:
    """Float twin of ``qfx.fixed.csd.khot_project`` on integer-valued codes ``q`` (exact: frexp/ldexp only)."""
    acc = torch.zeros_like(q)
    for _ in range(k):
        r = q - acc
        mant, ex = torch.frexp(r.abs())  # |r| = mant * 2**ex, mant in [0.5, 1); r = 0 -> (0, 0)
        e = ex - 1 + (mant >= 0.75).to(ex.dtype)  # nearest power of two, ties to the larger
        acc = acc + torch.ldexp(torch.sign(r), e.to(q.dtype))
    return acc.clamp(lo, hi)


class _Spec(NamedTuple):
    """Everything about a format that does not depend on the learned binary point, computed once per format."""

    width: int
    lo: float  # code range after the overflow mode's own adjustment (SAT_SYM: symmetric)
    hi: float
    sat: bool  # SAT / SAT_SYM: clamp before rounding
    bounded: bool  # the short rounding formulas are exact
    rounding: str
    overflow: str
    signed: bool
    khot: int
    klo: float
    khi: float


_SPECS: dict[tuple[int, bool, str, str, int], _Spec] = {}


def _spec(width: int, signed: bool, rounding: str, overflow: str, khot: int) -> _Spec:
    """The cached ``_Spec`` of a format (a plain dict: torch.compile traces it, unlike ``functools.lru_cache``)."""
    key = (width, signed, rounding, overflow, khot)
    sp = _SPECS.get(key)
    if sp is None:
        sp = _SPECS[key] = _make_spec(*key)
    return sp


def _make_spec(width: int, signed: bool, rounding: str, overflow: str, khot: int) -> _Spec:
    lo, hi = _code_range(width, signed)
    bounded = max(hi, 1.0 - lo) < 2.0**23
    sat = overflow in ("SAT", "SAT_SYM")
    if overflow == "SAT_SYM" and signed and width > 1:
        lo += 1.0  # ap_fixed's symmetric range [-max, max] (min_code itself also maps to -max)
    klo, khi = _khot_bounds(width, signed, khot) if khot else (0.0, 0.0)
    return _Spec(width, lo, hi, sat, bounded, rounding, overflow, signed, khot, klo, khi)


# ---------------------------------------------------------------------------- fused C++ path
# One C++ autograd node per quantizer (qfx/nn/_fused_quant.cpp, built in the background at first use by
# qfx.nn._fused): the same float32 operations per element as `_fq_forward`/`_fq_backward` below and the same ATen
# reductions for the binary-point gradient, so the same bits; the tensor-op path below is the fallback (no compiler,
# CUDA, float64, non-contiguous input, torch.compile tracing) and the reference the tests compare against.
_FUSED_ON = True
_ROUND_CODE = {"TRN": 0, "TRN_ZERO": 1, "RND": 2, "RND_ZERO": 3, "RND_INF": 4, "RND_MIN_INF": 5, "RND_CONV": 6}
_IDS: dict[tuple[int, bool, str, str, int], int] = {}


def attr(m: nn.Module, name: str):
    """``m.<name>`` for a parameter, buffer, submodule or plain attribute without ``nn.Module.__getattr__``, which
    costs microseconds per call: the train-mode hot path reads a dozen of these per layer and step."""
    d = m.__dict__
    if name in d:
        return d[name]
    for store in ("_parameters", "_modules", "_buffers"):
        s = d.get(store)
        if s is not None and name in s:
            return s[name]
    return getattr(m, name)


def _ext():  # -> the extension module or None
    """The fused extension when this call may use it, else None (never blocks; the first call starts the build)."""
    if not _FUSED_ON or torch.compiler.is_compiling():
        return None
    return _fused.get()


def _spec_id(ext, key: tuple[int, bool, str, str, int]) -> int:
    """The extension's handle of a format's ``_Spec`` (registered once per format)."""
    i = _IDS.get(key)
    if i is None:
        sp = _spec(*key)
        if sp.sat:
            path = 0 if sp.bounded and sp.rounding == "RND" else 1
        else:
            path = 2 if sp.overflow == "SAT_ZERO" else 3
        i = _IDS[key] = int(ext.register_spec(sp.width, sp.lo, sp.hi, path, _ROUND_CODE[sp.rounding], sp.bounded,
                                              sp.signed, sp.khot, sp.klo, sp.khi))
    return i


def _axis_of(shape: tuple[int, ...] | None, ndim: int) -> int | None:
    """The channel axis of a broadcast ``shape`` (-1 per tensor), or None where the fused path does not apply."""
    if shape is None:
        return -1
    if len(shape) != ndim:
        return None
    axes = [i for i, s in enumerate(shape) if s != 1]
    return axes[0] if len(axes) == 1 else None


def _quantize(x: torch.Tensor, p: torch.Tensor, key: tuple[int, bool, str, str, int],
              shape: tuple[int, ...] | None) -> torch.Tensor:
    """Fake-quantize ``x`` with binary point(s) ``p``: the fused node where it applies, else ``_FakeQuantFn``."""
    ext = _ext()
    if ext is not None:
        axis = _axis_of(shape, x.ndim)
        if axis is not None:
            y = ext.fq(x, p, _spec_id(ext, key), axis)
            if y is not None:
                return y
    return _FakeQuantFn.apply(x, p, _spec(*key), shape)


# ---------------------------------------------------------------------------- chains: q2(q1(x)) in one pass
# A layer whose output quantizer feeds a QReLU with an absorbing (unsigned, saturating) quantizer — linked by
# ``link_chains`` inside nn.Sequential containers — computes both roundings in one pass and one autograd node; the
# ReLU's quantizer then returns that result for exactly that input tensor (same object, unmodified), and computes
# normally otherwise. Values and gradients are those of the two separate quantizers (same float operations).
_CHAINED: dict[int, tuple] = {}


def _chain_ok(q: "FixedQuant | None") -> bool:
    """A per-tensor quantizer with nothing that must see its input (calibration, hooks) and a train-mode width."""
    return (q is not None and q.per_channel_axis is None and q._calib is None and not q.calibrating
            and q.width <= MAX_TRAIN_WIDTH and not q._forward_hooks and not q._forward_pre_hooks)


def chain_target(module: nn.Module) -> "FixedQuant | None":
    """The quantizer of the QReLU linked after ``module`` by ``link_chains``, when a chain may run now."""
    nxt = module.__dict__.get("_qfx_next")
    if nxt is None or not _FUSED_ON:
        return None
    q = attr(nxt, "out_quant")
    if (not _chain_ok(q) or q.signed or q.overflow == "WRAP" or getattr(nxt, "qfx_mode", "train") != "train"
            or _global_hooks()):
        return None
    return q


def offer_chained(q2: "FixedQuant", y1: torch.Tensor, y2: torch.Tensor) -> None:
    """Hand ``y2 = q2(y1)`` (already computed) to ``q2`` for its next call with input ``y1``."""
    _CHAINED[id(q2)] = (weakref.ref(q2), weakref.ref(y1), y1._version, q2._parameters["int_bits_param"]._version,
                        y2)


def _take_chained(q: "FixedQuant", x: torch.Tensor) -> torch.Tensor | None:
    e = _CHAINED.pop(id(q), None)
    if e is None:
        return None
    qr, yr, yv, pv, y2 = e
    if qr() is q and yr() is x and x._version == yv and q._parameters["int_bits_param"]._version == pv:
        return y2
    return None


def quantize_chain(q1: "FixedQuant", x: torch.Tensor, q2: "FixedQuant") -> torch.Tensor | None:
    """``q1(x)``, with ``q2(q1(x))`` computed in the same pass and offered to ``q2``; None where it cannot run."""
    if not _chain_ok(q1) or _global_hooks():
        return None
    ext = _ext()
    if ext is None:
        return None
    y1, y2 = ext.fq_chain(x, q1._parameters["int_bits_param"], _spec_id(ext, q1._key()),
                          q2._parameters["int_bits_param"], _spec_id(ext, q2._key()))
    if y1 is None:
        return None
    offer_chained(q2, y1, y2)
    return y1


def _bn_node(ext, bn: nn.Module, x: torch.Tensor, qc: "FixedQuant | None"):
    """Run the fused train-mode BatchNorm node (``BNTrain``) on ``x``, with the producer's output quantizer ``qc``
    folded in when given; ``(outputs, q2)`` or None where the tensor-op path must run."""
    qs, qh, qo = attr(bn, "scale_quant"), attr(bn, "shift_quant"), attr(bn, "out_quant")
    for q in (qs, qh):
        if (q is None or q._calib is not None or q.calibrating or q.width > MAX_TRAIN_WIDTH or q._forward_hooks
                or q._forward_pre_hooks):
            return None
    weight, bias = attr(bn, "weight"), attr(bn, "bias")
    if (qo is not None and not _chain_ok(qo)) or _global_hooks() or weight is None or bias is None:
        return None
    q2 = chain_target(bn) if qo is not None else None
    mom = -1.0 if bn.momentum is None else float(bn.momentum)
    buf = bn._buffers
    p = "int_bits_param"
    out = ext.bn_train(x, weight, bias, buf["running_mean"], buf["running_var"], buf["num_batches_tracked"], mom,
                       float(bn.eps), qs._parameters[p], _spec_id(ext, qs._key()), qs._axis(1),
                       qh._parameters[p], _spec_id(ext, qh._key()), qh._axis(1),
                       None if qo is None else qo._parameters[p], -1 if qo is None else _spec_id(ext, qo._key()),
                       None if q2 is None else q2._parameters[p], -1 if q2 is None else _spec_id(ext, q2._key()),
                       None if qc is None else qc._parameters[p], -1 if qc is None else _spec_id(ext, qc._key()))
    return (out, q2) if out else None


def batch_norm_train(bn: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Train-mode (batch statistics) forward of a ``qfx.nn.layers._QBatchNorm`` as one fused node, or None where
    the tensor-op path must run (see ``_fused_quant.cpp``, ``BNTrain``). Takes the result its linked conv already
    computed (``conv_bn_train``) when ``x`` is exactly that conv's output."""
    if _CHAINED:
        y = _take_bn(bn, x)
        if y is not None:
            return y
    ext = _ext()
    if ext is None:
        return None
    r = _bn_node(ext, bn, x, None)
    if r is None:
        return None
    out, q2 = r
    if q2 is not None:
        offer_chained(q2, out[0], out[1])
    return out[0]


# ------------------------------------------------------------- conv -> batch norm: one node for both roundings
# A QConv2d whose output quantizer feeds a train-mode QBatchNorm (linked by ``link_chains``) runs the BN node itself
# with its own output quantizer folded in: the node returns xq = qc(conv) as an output (the conv's result; other
# consumers' gradients add in as before) and the BN's output, which the BN returns when it is called with exactly xq.
# The running statistics are updated by the BN when it takes the result (a conv called on its own changes nothing);
# it takes it only while its weight and bias are unchanged (an optimizer step in between would change them).
def conv_bn_train(conv: nn.Module, y: torch.Tensor) -> torch.Tensor | None:
    """``conv.out_quant(y)`` computed inside the linked BatchNorm's fused node (same bits as the two nodes), or None
    where the conv must quantize on its own."""
    bn = conv.__dict__.get("_qfx_bn")
    qc = attr(conv, "out_quant")
    if (bn is None or not _FUSED_ON or not bn.training or getattr(bn, "qfx_mode", "train") != "train"
            or not _chain_ok(qc) or bn._forward_hooks or bn._forward_pre_hooks or y.ndim != 4):
        return None
    ext = _ext()
    if ext is None:
        return None
    r = _bn_node(ext, bn, y, qc)
    if r is None:
        return None
    out, q2 = r
    k = 2 if q2 is not None else 1
    xq, mean, var = out[k], out[k + 1], out[k + 2]
    _CHAINED[(id(bn), "bn")] = (weakref.ref(bn), weakref.ref(xq), xq._version, bn._parameters["weight"]._version,
                        bn._parameters["bias"]._version, out[0], out[1] if q2 is not None else None, q2, mean, var)
    return xq


def _take_bn(bn: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    e = _CHAINED.pop((id(bn), "bn"), None)  # its own key space: ids of dead quantizers are reused
    if e is None:
        return None
    br, xr, xv, wv, bv, y, y2, q2, mean, var = e
    p = bn._parameters
    if br() is not bn or xr() is not x or x._version != xv or p["weight"]._version != wv or p["bias"]._version != bv:
        return None
    ext = _fused.get()  # loaded: it made the offer
    buf = bn._buffers  # running statistics: the fused node's own update (as `_QBatchNorm.scale_shift`)
    ext.update_running_stats(buf["running_mean"], buf["running_var"], buf["num_batches_tracked"], mean, var,
                             -1.0 if bn.momentum is None else float(bn.momentum), x.numel() // x.shape[1])
    if q2 is not None:
        offer_chained(q2, y, y2)
    return y


def max_pool_train(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int]) -> torch.Tensor | None:
    """``F.max_pool2d(x, kernel, stride, padding)`` as one fused node (non-overlapping square windows, no padding;
    the same values and gradients, ATen's first-maximum rule), or None where ``F.max_pool2d`` must run."""
    if kernel[0] != kernel[1] or stride != kernel or padding != (0, 0) or x.ndim != 4:
        return None
    ext = _ext()
    return None if ext is None else ext.max_pool(x, kernel[0])


def link_chains(model: nn.Module, conv_bn: bool = False) -> int:
    """Link, inside every ``nn.Sequential`` of ``model``, each QLinear / QConv2d / QBatchNorm with an output
    quantizer to a directly following QReLU, so that train mode computes both roundings in one pass (same bits);
    with ``conv_bn`` also each QConv2d with an output quantizer to a directly following QBatchNorm (``conv_bn_train``:
    one node instead of two, same bits; off by default: measured 1-3 % slower per CNN step, benchmarks/README.md).
    Returns the number of links. The link is a plain attribute (not a submodule: no parameters, no state_dict
    entry); deep copies keep it pointing into the copy. ``quantize_model`` calls this."""
    from qfx.nn.layers import QConv2d, QLinear, QReLU, _QBatchNorm

    n = 0
    for m in model.modules():
        if not isinstance(m, nn.Sequential):
            continue
        kids = list(m.children())
        for a, b in zip(kids, kids[1:]):
            if isinstance(a, (QLinear, QConv2d, _QBatchNorm)) and isinstance(b, QReLU) and a.out_quant is not None:
                object.__setattr__(a, "_qfx_next", b)
                n += 1
            elif (conv_bn and isinstance(a, QConv2d) and type(a).forward is QConv2d.forward
                  and isinstance(b, _QBatchNorm) and a.out_quant is not None):  # conv_bn_train: one node
                object.__setattr__(a, "_qfx_bn", b)
                n += 1
    return n


def fused_status() -> str:
    """Which train-mode quantizer path runs now, in one line (``qfx.nn._fused.wait()`` waits for the build)."""
    return _fused.status() if _FUSED_ON else "tensor-op path (disabled by tensor_op_path())"


class tensor_op_path:
    """Context manager: run train-mode quantizers on the tensor-op path (the fused kernels' reference) inside it.
    Not thread-safe (a process-wide switch); for tests and benchmarks."""

    def __enter__(self) -> "tensor_op_path":
        global _FUSED_ON
        self._prev, _FUSED_ON = _FUSED_ON, False
        return self

    def __exit__(self, *exc: object) -> None:
        global _FUSED_ON
        _FUSED_ON = self._prev


_SCALES: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _scales(e: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached 0-d ``(2**e, 2**-e)`` tensors (one dict lookup per call instead of two scalar conversions)."""
    key = (e, like.dtype, like.device)
    t = _SCALES.get(key)
    if t is None:
        if len(_SCALES) > 4096:
            _SCALES.clear()
        t = _SCALES[key] = (torch.tensor(math.ldexp(1.0, e), dtype=like.dtype, device=like.device),
                            torch.tensor(math.ldexp(1.0, -e), dtype=like.dtype, device=like.device))
    return t


class _FakeQuantFn(torch.autograd.Function):
    """Fake quantization with the clipped-STE / log2-LSQ estimator described in the module docstring.

    Written for low per-call overhead (a quantizer call is dominated by Python and dispatch, not by its kernels on
    these small tensors): the static part of the format comes precomputed (``_Spec``, one argument instead of six),
    python scalars for per-tensor steps on CPU, in-place rounding on temporaries, a float mask (``eq`` into a float
    tensor), and the I-gradient as one dot product.
    """

    @staticmethod
    def forward(ctx, x, p, sp, shape):  # type: ignore[override]
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        y, saved = _fq_forward(x, p, sp, shape, need_x, need_p)
        ctx.shape, ctx.pshape = shape, p.shape
        ctx.save_for_backward(*saved)
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_p):
            return None, None, None, None
        gx, gp = _fq_backward(g, ctx.saved_tensors, need_x, need_p, ctx.shape, ctx.pshape)
        return gx, gp, None, None


class _FakeQuantPairFn(torch.autograd.Function):
    """Two independent fake quantizations (a layer's weight and bias, a BN's scale and shift) as ONE autograd node:
    the same ops as two ``_FakeQuantFn`` calls, half the per-call autograd/Python overhead, which is what a
    quantizer call costs on these small tensors."""

    @staticmethod
    def forward(ctx, a, pa, spa, sha, b, pb, spb, shb):  # type: ignore[override]
        n = ctx.needs_input_grad
        ya, sa = _fq_forward(a, pa, spa, sha, n[0], n[1])
        yb, sb = _fq_forward(b, pb, spb, shb, n[4], n[5])
        ctx.meta = (len(sa), sha, pa.shape, shb, pb.shape)
        ctx.save_for_backward(*sa, *sb)
        return ya, yb

    @staticmethod
    def backward(ctx, ga, gb):  # type: ignore[override]
        n = ctx.needs_input_grad
        k, sha, psa, shb, psb = ctx.meta
        saved = ctx.saved_tensors
        gxa = gpa = gxb = gpb = None
        if n[0] or n[1]:
            gxa, gpa = _fq_backward(ga, saved[:k], n[0], n[1], sha, psa)
        if n[4] or n[5]:
            gxb, gpb = _fq_backward(gb, saved[k:], n[4], n[5], shb, psb)
        return gxa, gpa, None, None, gxb, gpb, None, None


def _fq_forward(x: torch.Tensor, p: torch.Tensor, sp: _Spec, shape: tuple[int, ...] | None, need_x: bool,
                need_p: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Fake-quantized ``x`` and the tensors its backward needs (``(mask, d)``, ``(mask,)`` or ``()``)."""
    width = sp.width
    if shape is None and p.device.type == "cpu" and not torch.compiler.is_compiling():
        i = min(max(round(float(p)), -_I_LIMIT), _I_LIMIT)  # round() is half-even like torch.round
        inv, step = _scales(width - i, x)
    else:
        ib = torch.round(p).clamp(-_I_LIMIT, _I_LIMIT)
        if shape is not None:
            ib = ib.reshape(shape)
        if p.device.type == "cpu":
            inv, step = torch.exp2(width - ib).to(x.dtype), torch.exp2(ib - width).to(x.dtype)
        else:  # exp2 on an accelerator need not be exact: build the powers of two from their bits
            inv, step = pow2_exact(width - ib).to(x.dtype), pow2_exact(ib - width).to(x.dtype)
    lo, hi = sp.lo, sp.hi
    mask = None
    if sp.sat and sp.bounded and sp.rounding == "RND":
        # floor(clamp(m, lo, hi) + 1/2) as floor(clamp(m + 1/2, lo + 1/2, hi + 1/2)), with m + 1/2 in the same op
        # as the scaling: exact where |m| < 2**23, and beyond that m + 1/2 stays beyond the (bounded) range, so
        # codes and the in-range mask are the same as clamping first.
        m = torch.addcmul(_const(0.5, x), x, inv)
        mc = m.clamp(lo + 0.5, hi + 0.5)
        if need_x or need_p:
            mask = torch.eq(m, mc, out=torch.empty_like(m))
        q = qs = mc.floor_()
    elif sp.sat:
        m = x * inv
        mc = m.clamp(lo, hi)  # same codes as saturating after rounding; keeps |m| small enough for m + 0.5
        if need_x or need_p:
            mask = torch.eq(m, mc, out=torch.empty_like(m))
        q = qs = _round(mc, sp.rounding, sp.bounded, inplace=True)
    else:
        q = _round(x * inv, sp.rounding, bounded=False, inplace=True)
        inr = (q >= lo) & (q <= hi)
        mask = inr.to(x.dtype)
        qs = q.clamp(lo, hi)
        if sp.overflow == "SAT_ZERO":
            q = torch.where(inr, q, torch.zeros((), dtype=q.dtype, device=q.device))
        else:  # WRAP: exact modular arithmetic (remainder by a power of two is exact)
            full = float(1 << width)
            r = torch.remainder(q, full)
            q = torch.where(r > hi, r - full, r) if sp.signed else r
    if sp.khot:
        same = qs is q
        q = khot_float(q, sp.khot, sp.klo, sp.khi)
        qs = q if same else khot_float(qs, sp.khot, sp.klo, sp.khi)
    same = qs is q
    y = q.mul_(step)
    if need_p:
        # d = ysat - x * mask: dL/dI = ln2 * sum(g * d) (see the module docstring)
        d = torch.addcmul(y if same else qs.mul_(step), x, mask, value=-1.0)
        return y, (mask, d)
    if need_x:
        return y, (mask,)
    return y, ()


def pow2_exact(e: torch.Tensor) -> torch.Tensor:
    """``2**e`` for integer-valued float32 ``e`` in the normal range (|e| <= 126; NaN stays NaN), exactly on every
    device: the float32 is assembled from its exponent bits. The tensor-op path uses it off the CPU, where ``exp2``
    (a fast-math kernel on CUDA) is not guaranteed exact for integer arguments."""
    bits = ((e.nan_to_num(0.0).to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(e.isnan(), e, bits)


def _fq_backward(g: torch.Tensor, saved: tuple[torch.Tensor, ...], need_x: bool, need_p: bool,
                 shape: tuple[int, ...] | None, pshape: torch.Size) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(dL/dx, dL/dI)`` of one fake quantization from the tensors ``_fq_forward`` saved."""
    gx = g * saved[0] if need_x else None
    gp = None
    if need_p:
        d = saved[1]
        if shape is None:
            gp = torch.dot(g.reshape(-1), d.reshape(-1)).mul_(_const(_LN2, g))
            if pshape:
                gp = gp.reshape(pshape)
        else:
            axis = [i for i, s in enumerate(shape) if s != 1]
            dims = [i for i in range(g.ndim) if i not in axis]
            gd = g * d
            gp = (gd.sum(dim=dims) if dims else gd).mul_(_LN2).reshape(pshape)
    return gx, gp


def fake_quant(x: torch.Tensor, int_bits: torch.Tensor, width: int, signed: bool = True, rounding: str = "RND",
               overflow: str = "SAT", shape: tuple[int, ...] | None = None, khot: int | None = None) -> torch.Tensor:
    """Functional fake quantization; ``int_bits`` (float, rounded here) broadcasts by ``shape`` if given."""
    check_modes(rounding, overflow)
    return _quantize(x, int_bits, (width, signed, rounding, overflow, khot or 0), shape)


def quantize_pair(qa: "FixedQuant", a: torch.Tensor, qb: "FixedQuant", b: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(qa(a), qb(b))`` as one autograd node, or None where the two plain calls must run instead (calibration
    pending or running, a width train mode refuses, forward hooks on a quantizer)."""
    if (qa._calib is not None or qb._calib is not None or qa.calibrating or qb.calibrating
            or qa.width > MAX_TRAIN_WIDTH or qb.width > MAX_TRAIN_WIDTH or qa._forward_hooks or qb._forward_hooks
            or qa._forward_pre_hooks or qb._forward_pre_hooks or _global_hooks()):
        return None
    ext = _ext()
    if ext is not None:
        ya, yb = ext.fq_pair(a, qa._parameters["int_bits_param"], _spec_id(ext, qa._key()), qa._axis(a.ndim),
                             b, qb._parameters["int_bits_param"], _spec_id(ext, qb._key()), qb._axis(b.ndim))
        if ya is not None:
            return ya, yb
    return _FakeQuantPairFn.apply(a, qa.int_bits_param, qa.spec(), qa._shape(a.ndim),
                                  b, qb.int_bits_param, qb.spec(), qb._shape(b.ndim))


def _global_hooks() -> bool:
    return bool(_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks)


def union_format(formats: Sequence[FxFormat]) -> FxFormat:
    """One lossless format holding every value of each of ``formats`` (per-channel constants -> one IR constant)."""
    f = max(fm.frac_bits for fm in formats)
    lo = min(fm.min_code << (f - fm.frac_bits) for fm in formats)
    hi = max(fm.max_code << (f - fm.frac_bits) for fm in formats)
    base = formats[0]
    return FxFormat.for_code_range(min(lo, 0), hi, f, signed=base.signed or lo < 0, rounding=base.rounding,
                                   overflow=base.overflow)


class FixedQuant(nn.Module):
    """Quantizer to ``ap_fixed<W, I>``/``ap_ufixed<W, I>`` with W fixed and I learned (``int_bits_param``).

    ``per_channel_axis``/``num_channels`` give one I per channel along that axis (weights: axis 0).
    ``khot=K`` projects codes to at most K signed power-of-two terms. ``learn_int_bits=False`` freezes I.
    """

    def __init__(self, width: int, int_bits: int | Sequence[int] | None = None, signed: bool = True,
                 rounding: str = "RND", overflow: str = "SAT", per_channel_axis: int | None = None,
                 num_channels: int | None = None, learn_int_bits: bool = True, khot: int | None = None) -> None:
        super().__init__()
        fmt = FxFormat(width, 0, signed, rounding, overflow)  # validates width, modes
        if khot is not None and khot < 1:
            raise FormatError(f"K-hot needs K >= 1, got {khot}")
        if (per_channel_axis is None) != (num_channels is None):
            raise FormatError("per-channel quantization needs both per_channel_axis and num_channels")
        self.width = fmt.width
        self.signed = fmt.signed
        self.rounding = fmt.rounding
        self.overflow = fmt.overflow
        self.per_channel_axis = per_channel_axis
        self.khot = int(khot) if khot else None
        self._calib: str | None = None  # set by qfx.nn.calibrate(): calibrate from the next input, then quantize
        self.calibrating = False  # observed ranges update int_bits (running max) while True
        n = num_channels if per_channel_axis is not None else None
        init = float(width // 2 if int_bits is None else 0)
        t = torch.full((n,) if n else (), init, dtype=torch.float32)
        if int_bits is not None:
            t.copy_(torch.as_tensor(int_bits, dtype=torch.float32).expand_as(t))
        self.int_bits_param = nn.Parameter(t, requires_grad=learn_int_bits)
        self.register_buffer("observed_max", torch.zeros_like(t), persistent=False)

    # ------------------------------------------------------------------ formats
    @property
    def per_channel(self) -> bool:
        return self.per_channel_axis is not None

    def int_bits(self) -> list[int]:
        """Rounded integer bits (one per channel, or a single-element list)."""
        v = torch.round(self.int_bits_param.detach()).clamp(-_I_LIMIT, _I_LIMIT).reshape(-1)
        return [int(i) for i in v.tolist()]

    def formats(self) -> list[FxFormat]:
        return [FxFormat(self.width, i, self.signed, self.rounding, self.overflow) for i in self.int_bits()]

    @property
    def fmt(self) -> FxFormat:
        """The per-tensor format (for per-channel quantizers use ``formats()`` or ``union_fmt``)."""
        if self.per_channel:
            raise UnsupportedError("per-channel quantizer has one format per channel; use formats() or union_fmt")
        return self.formats()[0]

    @property
    def union_fmt(self) -> FxFormat:
        """Lossless common format of all channels (the per-tensor format itself when not per-channel)."""
        return union_format(self.formats())

    def extra_repr(self) -> str:
        ib = self.int_bits()
        kind = f"ap_{'' if self.signed else 'u'}fixed<{self.width},I>"
        s = f"{kind}, I={ib if self.per_channel else ib[0]}, {self.rounding}, {self.overflow}"
        return s + (f", khot={self.khot}" if self.khot else "")

    def _key(self) -> tuple[int, bool, str, str, int]:
        return (self.width, self.signed, self.rounding, self.overflow, self.khot or 0)

    def _axis(self, ndim: int) -> int:
        """The channel axis for the fused kernels (-1 per tensor)."""
        return -1 if self.per_channel_axis is None else self.per_channel_axis % ndim

    def _shape(self, ndim: int) -> tuple[int, ...] | None:
        if not self.per_channel:
            return None
        ax = self.per_channel_axis % ndim
        return tuple(-1 if d == ax else 1 for d in range(ndim))

    # ------------------------------------------------------------------ train-mode forward
    def spec(self) -> _Spec:
        """The static part of the train-mode quantization (cached per format)."""
        return _spec(self.width, self.signed, self.rounding, self.overflow, self.khot or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.width > MAX_TRAIN_WIDTH:
            raise FormatError(f"train-mode fake quantization is float32 and needs width <= {MAX_TRAIN_WIDTH}, "
                              f"got {self.width}")
        if self._calib is not None:
            self.calibrate(x, self._calib)
            self._calib = None
        elif self.calibrating:
            self._observe(x)
        if _FUSED_ON:
            if _CHAINED:
                y = _take_chained(self, x)
                if y is not None:
                    return y
            ext = _ext()
            if ext is not None:
                y = ext.fq(x, self._parameters["int_bits_param"], _spec_id(ext, self._key()), self._axis(x.ndim))
                if y is not None:
                    return y
        return _FakeQuantFn.apply(x, self.int_bits_param, _spec(self.width, self.signed, self.rounding, self.overflow,
                                                                 self.khot or 0), self._shape(x.ndim))

    # ------------------------------------------------------------------ exact mode
    def codes(self, x: torch.Tensor) -> np.ndarray:
        """int64 codes of ``x`` in the (union) format, through the integer kernels (K-hot projected if set)."""
        xd = x.detach().to("cpu", torch.float64).numpy()
        if not self.per_channel:
            f = self.fmt
            c = f.to_int(xd)
            if self.khot:
                c = khot_project(c, self.khot, f.min_code, f.max_code)
            return np.asarray(c, dtype=np.int64)
        ax = self.per_channel_axis % xd.ndim
        u = self.union_fmt
        xm = np.moveaxis(xd, ax, 0)
        out = np.empty(xm.shape, dtype=np.int64)
        for ch, f in enumerate(self.formats()):
            c = np.asarray(f.to_int(xm[ch:ch + 1]), dtype=np.int64)
            if self.khot:
                c = khot_project(c, self.khot, f.min_code, f.max_code)
            out[ch:ch + 1] = np.left_shift(c, u.frac_bits - f.frac_bits)
        out = np.moveaxis(out, 0, ax)
        return out

    def quantize_exact(self, x: torch.Tensor) -> tuple[np.ndarray, FxFormat]:
        """(codes, format) of ``x`` quantized on the exact integer path; per-channel codes in ``union_fmt``."""
        return self.codes(x), self.union_fmt

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def _target_int_bits(self, amax: torch.Tensor) -> torch.Tensor:
        """Smallest I whose largest value covers ``amax`` (``max_code * 2**(I-W) >= amax``)."""
        _, hi = _code_range(self.width, self.signed)
        a = amax.to(torch.float64).clamp_min(1e-30)
        ib = torch.ceil(torch.log2(a / hi)) + self.width
        return torch.where(amax > 0, ib, torch.round(self.int_bits_param.detach().to(torch.float64)))

    @torch.no_grad()
    def _amax(self, x: torch.Tensor) -> torch.Tensor:
        xa = x.detach().abs() if self.signed else x.detach().clamp_min(0)
        if not self.per_channel:
            return xa.max().to(torch.float32) if xa.numel() else torch.zeros(())
        ax = self.per_channel_axis % x.ndim
        return xa.transpose(0, ax).reshape(x.shape[ax], -1).amax(dim=1).to(torch.float32)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, method: str = "mse") -> None:
        """Set I from data: ``"max"`` covers max|x|; ``"mse"`` picks, among the max choice and the 4 below it, the
        one with the least squared quantization error (better at 2-5 bits, where clipping a few outliers pays)."""
        if method not in ("max", "mse"):
            raise FormatError(f"calibration method must be 'max' or 'mse', got {method!r}")
        x = x.detach().to(torch.float32)
        ib = self._target_int_bits(self._amax(x)).to(torch.float32)
        if method == "mse" and x.numel():
            shape = self._shape(x.ndim)
            best, best_err = ib.clone(), None
            for d in range(0, 5):
                cand = ib - d
                y = _FakeQuantFn.apply(x, cand, _spec(self.width, self.signed, self.rounding,
                                                      "SAT" if self.overflow == "WRAP" else self.overflow,
                                                      self.khot or 0), shape)
                e = (y - x).square()
                if self.per_channel:
                    ax = self.per_channel_axis % x.ndim
                    e = e.transpose(0, ax).reshape(x.shape[ax], -1).sum(dim=1)
                else:
                    e = e.sum()
                if best_err is None:
                    best_err = e
                else:
                    better = e < best_err
                    best = torch.where(better, cand, best)
                    best_err = torch.where(better, e, best_err)
            ib = best
        self.int_bits_param.copy_(ib.reshape(self.int_bits_param.shape))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        self.observed_max = torch.maximum(self.observed_max.to(x.device), self._amax(x).to(x.device))
        self.int_bits_param.copy_(self._target_int_bits(self.observed_max).to(torch.float32).reshape(
            self.int_bits_param.shape))

    def reset_observed(self) -> None:
        self.observed_max.zero_()


def check_modes(rounding: str, overflow: str) -> None:
    if rounding not in ROUNDING_MODES or overflow not in OVERFLOW_MODES:
        FxFormat(2, 0, True, rounding, overflow)
