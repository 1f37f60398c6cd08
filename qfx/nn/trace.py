"""The torch.fx front door of ``quantize_model``: every op a float model's ``forward`` computes gets a qfx twin.

Why tracing: swapping ``named_modules`` alone misses what ``forward`` computes with functions and operators
(``F.relu``, ``x + y``, ``out += x``, ``x.mean((2, 3))``, ``x * 0.5``): those trained unquantized, and capture
refused them only after training. Here ``forward`` is traced once with torch.fx (qfx and torch.nn layers are
leaves, user modules are traced through) and every node whose value reaches the output is looked up in two tables:

* ``MODULE_TWINS`` (by class): a float torch.nn layer becomes its qfx twin at the same module path, so
  ``state_dict`` keys and ``config.overrides`` paths stay those of the float model;
* ``FUNCTION_TWINS`` / ``METHOD_TWINS`` (by function object / method name): a function or operator becomes a qfx
  module inserted into the traced graph (named after the op, inside the module whose ``forward`` calls it), shape
  ops that capture understands are kept, dropout is dropped.

Anything else is collected and refused in one message (each item with its module path or fx node and what qfx
offers instead) before any training. Modules ``forward`` never calls and results it never uses do not count.
When nothing but module swaps was needed the model keeps its own class and ``forward``; otherwise it becomes a
``torch.fx.GraphModule`` whose top-level children are the original (converted) submodules. A ``forward`` with
several tensor inputs gets one ``QuantInput`` per input inside that GraphModule. ``supported_table()`` renders the
tables (the README's list of supported layers and functions is generated from it).
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from qfx.errors import QfxError, UnsupportedError
from qfx.fixed.tables import MAX_TABLE_BITS, select_spec
from qfx.nn.extra_layers import (
    QAdaptiveAvgPool2d, QAdaptiveMaxPool2d, QClip, QConstScale, QGlobalAvgPool2d, QGroupNorm, QLayerNorm, QPReLU,
    QParamAffine, QParamCat, QPixelShuffle, QSum, QTrainOnly, QUnflatten,
)
from qfx.nn.layers import (
    QAdd, QAvgPool1d, QAvgPool2d, QBatchNorm1d, QBatchNorm2d, QClippedReLU, QConv1d, QConv2d, QConvTranspose1d,
    QConvTranspose2d, QFlatten, QLinear,
    QMaxPool1d, QMaxPool2d, QModule, QReLU, QuantInput,
)
from qfx.nn.einsum import einsum_plan
from qfx.nn.embedding import QEmbedding
from qfx.nn.layout import _name as _call_name, relabel_batch_swaps
from qfx.nn.transformer import attention_weights, expand_transformers
from qfx.nn.op_layers import (
    QActivation, QAvgPoolMatrix, QCat, QMatMul, QMul, QResize2d, QSoftmax, QStack, QSub, QUpsample,
    QUpsampleBilinear, QZeroPad2d, softmax_dim_problem,
)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.nn.convert import QFXConfig

__all__ = ["convert_model", "layer_bn_pairs", "MODULE_TWINS", "FUNCTION_TWINS", "METHOD_TWINS", "hint_for",
           "describe_target", "SUPPORTED_SUMMARY", "REFUSED", "supported_table"]

SUPPORTED_SUMMARY = ("qfx converts Linear, Conv1d/2d, ConvTranspose1d/2d, BatchNorm1d/2d, PReLU, "
                     "ReLU/ReLU6/Hardtanh/clamp, the table activations (Sigmoid, Tanh, SiLU, GELU, Hardsigmoid, "
                     "Hardswish, LeakyReLU, ELU, SELU, Softplus, LogSigmoid, Softsign, Hard/Soft/Tanhshrink, sqrt, rsqrt, "
                     "exp, log, "
                     "reciprocal), F.normalize, "
                     "Softmax over any per-sample axis, Max/AvgPool1d/2d, adaptive average pools, adaptive max pools whose size "
                     "divides the input, spatial or "
                     "feature sum/mean/amax/max(dim)/min(dim), nearest/bilinear "
                     "Upsample, Zero/Replication/ReflectionPad1d/2d, torch.cat, x + y, x - y, x * y, x @ y, x * c / x / c "
                     "/ x + c with constants, x / y (a reciprocal table), MultiheadAttention, TransformerEncoder(Layer), "
                     "LSTM/GRU/RNN (unrolled), Embedding, GLU, RMSNorm, einsum (matmul, permute, product and sum forms), F.linear/F.conv1d/2d and x @ W with "
                     "the model's parameters, x * p / x + p with parameters and buffers (x / buffer), bilinear (any "
                     "align_corners) and nearest resizing to any size, "
                     "and keeps flatten/view/reshape; Dropout and Identity are dropped")

#: idioms quantize_model refuses (with what to do instead); README lists them
REFUSED: tuple[tuple[str, str], ...] = (
    ("x ** y (y other than 2), erf, x.max() / x.sum() over all elements, torch.where / masked_fill other than of "
     "x compared with a constant, with branches affine in x or constants, x.std() / x.var() over all elements, "
     "flip / cumsum along the batch or along more than 64 elements, einsum with repeated letters, ellipses or "
     "several contracted letters",
     "no fixed-point op; x * x for squares, x / y and 1 / x (a reciprocal table), the table functions "
     "(torch.where(x > 0, x, 0.1 * x) is one); reduce over the spatial dims, the channels (dim=1), the last dim or "
     "the features of (N, n)"),
    ("LayerNorm over dims other than the last one, (C, L), (H, W) or (C, H, W); InstanceNorm3d, InstanceNorm with "
     "running statistics, BatchNorm without running statistics", "BatchNorm1d/2d with track_running_stats=True "
     "(fixed-point scale/shift), GroupNorm/InstanceNorm1d/2d over (N, C, L) or (N, C, H, W), LayerNorm"),
    ("CELU, Softplus(beta != 1), Softmax over the batch axis",
     "the table activations; Softmax over any other axis"),
    ("bicubic, area and trilinear interpolation, antialias=True, 1-D (N, C, L) linear interpolation, sizes or "
     "factors computed from tensors",
     "nearest or bilinear resizing of (N, C, H, W) to constant sizes or by constant factors (any align_corners)"),
    ("circular padding, non-zero constant padding, Conv2d(padding_mode='circular'), padding of 3-D volumes",
     "zero, replicate or reflect padding of H and W, or of L of (N, C, L) (ZeroPad1d/2d, ReplicationPad1d/2d, "
     "ReflectionPad1d/2d, F.pad)"),
    ("adaptive max pools whose output size does not divide the input, max pools with dilation or return_indices, "
     "1-D average pools with ceil_mode or count_include_pad=False",
     "adaptive average pools (any output size), 2-D average pools (any ceil_mode, count_include_pad, "
     "divisor_override), max pools with kernel = stride = input / output"),
    ("indexing/slicing/chunk/split/stack/permute over the batch dim, tensor or computed indices, negative steps, "
     "x[None], sizes that depend on the batch size", "constant slices of the per-sample dims (x[:, a:b], x[..., -1])"),
    ("ConvTranspose1d/2d with padding > dilation * (kernel - 1), padding_mode other than 'zeros'",
     "smaller padding, or nearest nn.Upsample(scale_factor=k) followed by a Conv2d"),
    ("LSTM/GRU/RNN with a non-zero initial state passed in, proj_size, a sequence-first input not made by x.transpose(0, 1), "
     "or their results read otherwise; Embedding with max_norm or of computed indices, EmbeddingBag, "
     "nn.Transformer, TransformerDecoder(Layer)",
     "the zero initial state; read the output sequence, out[:, t], h_n[k] or c_n[k]; nn.Embedding of the model's "
     "integer input; none for decoders"),
    ("MultiheadAttention with key_padding_mask, an additive float attn_mask, a mask computed in forward, a mask row "
     "whose allowed keys are not one run, add_bias_kv/add_zero_attn, or its attention weights used; "
     "F.scaled_dot_product_attention with a mask, dropout or is_causal",
     "fixed-length sequences; a causal (or sliding-window) mask as a buffer or is_causal=True on nn.MultiheadAttention; "
     "the output only ([0], need_weights=False)"),
    ("x * y, x + y, x - y broadcasting between tensors of different ranks, expand/expand_as/repeat read by "
     "anything but such arithmetic", "tensors of one rank whose operand has size-1 axes (a per-channel gate "
     "(N, C, 1, 1), a channel map (N, 1, H, W), a row statistic (N, C, H, 1), y[:, :, None, None], "
     "y.expand_as(x))"),
    ("parameters and buffers read in forward other than x * p, x + p, x - p, x / buffer (p per channel, per "
     "element or a scalar, also through views), F.linear / F.conv1d / F.conv2d / F.layer_norm / F.group_norm / "
     "x @ W with them as weights and torch.cat with p.expand(n, -1, ...); weights computed in forward, tensors "
     "created in forward",
     "put the arithmetic in a module qfx converts"),
    ("data-dependent Python control flow", "torch.fx must trace forward"),
)


# ============================================================================ what a node becomes
@dataclass
class _Replace:
    """Run ``module`` on ``inputs`` (fx nodes) instead of the node; ``base`` names the inserted module."""

    module: nn.Module
    inputs: tuple[Any, ...]
    base: str
    pair: bool = False  # the float call returns (values, indices) (x.max(dim)): only its values are replaced


@dataclass
class _Drop:
    """The node is an identity at inference: its users read ``input`` instead."""

    input: Any


@dataclass
class _Chain:
    """Run several modules in order instead of the node: each step is (module, inputs, base); an int input is an
    earlier step's output. The last step's output replaces the node."""

    steps: tuple[tuple[nn.Module, tuple[Any, ...], str], ...]


_KEEP = None  # the node stays as it is (capture understands it)
_REQUIRED = object()


def _common(c: "QFXConfig") -> dict[str, Any]:
    return dict(rounding=c.rounding, overflow=c.overflow, learn_int_bits=c.learn_int_bits)


def _relu(c: "QFXConfig") -> QReLU:
    return QReLU(out_width=c.act_width, out_signed=not c.relu_unsigned, **_common(c))


def _clip(cap: Any, c: "QFXConfig") -> nn.Module:
    if isinstance(cap, torch.fx.Node) or not isinstance(cap, (int, float)) or cap <= 0:
        raise UnsupportedError(f"clip bound {cap!r} must be a positive constant")
    if float(np.float32(cap)) != cap:  # a cap like 0.7: the clip at float32(0.7), as torch computes it
        return QClip(0.0, cap, out_width=c.act_width, out_signed=not c.relu_unsigned, **_common(c))
    return QClippedReLU(float(cap), out_width=c.act_width, out_signed=not c.relu_unsigned, **_common(c))


def _clamp(lo: Any, hi: Any, c: "QFXConfig") -> nn.Module:
    """ReLU (lo = 0, no hi), clipped ReLU (0, hi) or a general clip (any constant bounds)."""
    for v in (lo, hi):
        if v is not None and (isinstance(v, (torch.fx.Node, bool)) or not isinstance(v, (int, float))):
            raise UnsupportedError(f"clamp/clip bounds must be Python constants, got min={lo!r}, max={hi!r}")
    if lo == 0 and hi is None:
        return _relu(c)
    if lo == 0 and hi is not None and hi > 0 and float(np.float32(hi)) == hi:
        return _clip(hi, c)
    return QClip(lo, hi, out_width=c.act_width, **_common(c))


def _add(c: "QFXConfig") -> QAdd:
    return QAdd(out_width=c.add_width or c.act_width, **_common(c))


def _sub(c: "QFXConfig") -> QSub:
    return QSub(out_width=c.add_width or c.act_width, **_common(c))


def _mul(c: "QFXConfig") -> QMul:
    return QMul(out_width=c.act_width, **_common(c))


def _matmul(c: "QFXConfig") -> QMatMul:
    return QMatMul(out_width=c.act_width, **_common(c))


def _const(scale: float, shift: float, c: "QFXConfig") -> QConstScale:
    return QConstScale(scale, shift, out_width=c.act_width, **_common(c))


def _gap(keepdim: bool, c: "QFXConfig") -> QGlobalAvgPool2d:
    return QGlobalAvgPool2d(bool(keepdim), out_width=c.act_width, **_common(c))


def _adaptive(kind: str, size: Any, c: "QFXConfig", keepdim: bool = True, ndim: int | None = None) -> nn.Module:
    """Adaptive average/max pool to ``size`` (the global average pool for 2-D size 1 stays QGlobalAvgPool2d)."""
    if isinstance(size, (tuple, list)) and any(s is None for s in size) or size is None:
        raise UnsupportedError(f"adaptive pool output size {size!r}: None (keep the input size) is not supported")
    if kind == "max":
        return QAdaptiveMaxPool2d(size, keepdim, ndim)
    if ndim == 4 and size in (1, (1, 1), [1, 1]):
        return _gap(keepdim, c)
    return QAdaptiveAvgPool2d(size, keepdim, ndim, out_width=c.act_width, **_common(c))


def _act(fn: str, c: "QFXConfig") -> QActivation:
    return QActivation(fn, in_width=max(2, min(c.act_width, MAX_TABLE_BITS)), out_width=c.act_width, **_common(c))


def _softmax(dim: Any, c: "QFXConfig", out_width: int | None = None) -> QSoftmax:
    from qfx.ops.softmax import MAX_SOFTMAX_IN_BITS

    bad = softmax_dim_problem(dim, None)  # the rank is checked where it is known (_softmax_ranks, QSoftmax)
    if bad:
        raise UnsupportedError(bad)
    return QSoftmax(dim, in_width=max(2, min(c.act_width, MAX_SOFTMAX_IN_BITS)), out_width=out_width or c.act_width,
                    **_common(c))


def _scale_factor(sf: Any, size: Any, mode: Any, align_corners: Any = None) -> Any:
    if mode not in ("nearest", "nearest-exact"):
        raise UnsupportedError(f"upsampling mode={mode!r}: qfx upsamples with mode='nearest' or 'bilinear' "
                               "(align_corners=False) by integer factors")
    if size is not None or sf is None:
        raise UnsupportedError("upsampling to a size= that is not an integer multiple of the input size: give "
                               "scale_factor (an integer) instead")
    vals = sf if isinstance(sf, (tuple, list)) else (sf,)
    if any(isinstance(v, (torch.fx.Node, bool)) or not isinstance(v, (int, float)) or v < 1 or float(v) != int(v)
           for v in vals):
        raise UnsupportedError(f"upsampling scale_factor={sf!r}: qfx upsamples by positive integer factors")
    return tuple(int(v) for v in vals) if isinstance(sf, (tuple, list)) else int(sf)


def _pad(pad: Any) -> tuple[int, int, int, int]:
    p = tuple(pad) if isinstance(pad, (tuple, list)) else (pad,) * 4
    if any(isinstance(v, (torch.fx.Node, bool)) or not isinstance(v, int) or v < 0 for v in p):
        raise UnsupportedError(f"padding {pad!r}: qfx pads with non-negative constant amounts")
    if len(p) == 2:
        p = (p[0], p[1], 0, 0)
    if len(p) != 4:
        raise UnsupportedError(f"padding {pad!r}: qfx zero-pads H and W of (N, C, H, W) tensors ((left, right, "
                               "top, bottom))")
    return p  # type: ignore[return-value]


# ---------------------------------------------------------------------------- modules
def _copy_state(q: nn.Module, m: nn.Module) -> nn.Module:
    """Parameters and buffers of the float module into its twin (the twins keep torch's names; a 1-D twin stores
    its kernel as (O, C, 1, k), the same values)."""
    own = q.state_dict()
    sd = {k: (v.reshape(own[k].shape) if k in own and v.shape != own[k].shape and v.numel() == own[k].numel()
              else v) for k, v in m.state_dict().items()}
    _, unexpected = q.load_state_dict(sd, strict=False)
    if unexpected:  # pragma: no cover - the twins keep torch's parameter names
        raise UnsupportedError(f"cannot copy {type(m).__name__} state: unexpected {unexpected}")
    return q


def _linear(m: nn.Linear, c: "QFXConfig") -> nn.Module:
    return _copy_state(QLinear(m.in_features, m.out_features, m.bias is not None, weight_width=c.weight_width,
                               bias_width=c.bias_width, out_width=c.act_width, per_channel=c.per_channel,
                               khot=c.khot, **_common(c)), m)


def _conv(cls: type) -> Callable[[Any, "QFXConfig"], nn.Module]:
    """Builder of the twin of a float Conv1d/Conv2d (any groups, dilation, integer or 'same'/'valid' padding)."""
    def build(m: nn.modules.conv._ConvNd, c: "QFXConfig") -> nn.Module:
        if m.padding_mode not in ("zeros", "replicate", "reflect"):
            raise UnsupportedError(f"{type(m).__name__}(padding_mode={m.padding_mode!r}): qfx convolutions pad "
                                   "with padding_mode 'zeros', 'replicate' or 'reflect'")
        q = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is not None, weight_width=c.weight_width, bias_width=c.bias_width, out_width=c.act_width,
                per_channel=c.per_channel, khot=c.khot, **_common(c))
        return _copy_state(q, m)

    return build


def _conv_transpose(cls: type) -> Callable[[Any, "QFXConfig"], nn.Module]:
    """Builder of the twin of a float ConvTranspose1d/2d (zero insertion + convolution, exact)."""
    def build(m: nn.modules.conv._ConvTransposeNd, c: "QFXConfig") -> nn.Module:
        if m.padding_mode != "zeros":
            raise UnsupportedError(f"{type(m).__name__}(padding_mode={m.padding_mode!r}): qfx transposed "
                                   "convolutions pad with zeros")
        q = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.output_padding, m.groups,
                m.bias is not None, m.dilation, weight_width=c.weight_width, bias_width=c.bias_width,
                out_width=c.act_width, per_channel=c.per_channel, khot=c.khot, **_common(c))
        return _copy_state(q, m)

    return build


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, c: "QFXConfig") -> nn.Module:
    """BatchNorm1d/2d; without affine parameters the twin holds gamma = 1, beta = 0 (frozen, not trained)."""
    cls = QBatchNorm1d if isinstance(m, nn.BatchNorm1d) else QBatchNorm2d
    if not m.track_running_stats:
        raise UnsupportedError("BatchNorm needs track_running_stats=True (its running statistics become "
                               "fixed-point constants)")
    q = cls(m.num_features, m.eps, m.momentum, True, True, scale_width=c.bn_width, shift_width=c.bn_width,
            out_width=c.act_width, **_common(c))
    _copy_state(q, m)
    if not m.affine:
        with torch.no_grad():
            q.weight.fill_(1.0)
            q.bias.zero_()
        q.weight.requires_grad_(False)
        q.bias.requires_grad_(False)
    return q


def _layernorm(m: nn.LayerNorm, c: "QFXConfig") -> nn.Module:
    """LayerNorm over the features of (N, n): qfx ops with act_width-bit intermediates (QLayerNorm)."""
    if len(m.normalized_shape) != 1:
        raise UnsupportedError(f"LayerNorm{tuple(m.normalized_shape)}: qfx normalizes the last dim of (N, n) vectors "
                               "only (normalized_shape=n)")
    q = QLayerNorm(m.normalized_shape[0], m.eps, m.elementwise_affine, getattr(m, "bias", None) is not None,
                   width=c.act_width, param_width=c.bn_width, out_width=c.act_width, **_common(c))
    if q.affine is not None:
        with torch.no_grad():
            q.affine.weight.copy_(m.weight)
            if m.bias is not None:
                q.affine.bias.copy_(m.bias)
    return q


def _groupnorm(m: nn.Module, c: "QFXConfig") -> nn.Module:
    """GroupNorm / InstanceNorm2d (groups = channels) over (N, C, H, W): qfx ops like LayerNorm (QGroupNorm)."""
    if isinstance(m, nn.GroupNorm):
        groups, chans, affine = m.num_groups, m.num_channels, m.affine
    else:
        if not isinstance(m, nn.InstanceNorm2d):
            raise UnsupportedError(f"{type(m).__name__}: qfx normalizes instances of (N, C, H, W) only "
                                   "(InstanceNorm2d)")
        if m.track_running_stats:
            raise UnsupportedError("InstanceNorm2d(track_running_stats=True): qfx normalizes by the statistics of "
                                   "each instance (track_running_stats=False)")
        groups = chans = m.num_features
        affine = m.affine
    q = QGroupNorm(groups, chans, m.eps, affine, width=c.act_width, param_width=c.bn_width, out_width=c.act_width,
                   **_common(c))
    if q.affine is not None:
        with torch.no_grad():
            q.affine.weight.copy_(m.weight)
            q.affine.bias.copy_(m.bias)
    return q


def _hardtanh(m: nn.Hardtanh, c: "QFXConfig") -> nn.Module:
    return _clamp(m.min_val, m.max_val, c)


def _softplus(beta: Any) -> None:
    if beta != 1:
        raise UnsupportedError(f"Softplus(beta={beta!r}): only beta=1 has a table (softplus)")


def _prelu(m: nn.PReLU, c: "QFXConfig") -> nn.Module:
    return _copy_state(QPReLU(m.num_parameters, weight_width=c.weight_width, out_width=c.act_width, **_common(c)), m)


def _integer_factors(sf: Any, size: Any) -> bool:
    vals = sf if isinstance(sf, (tuple, list)) else (sf,)
    return size is None and sf is not None and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 and float(v) == int(v) for v in vals)


def _upsampler(sf: Any, size: Any, mode: Any, align_corners: Any, c: "QFXConfig",
               recompute: Any = None) -> nn.Module:
    """Nearest (QUpsample) or bilinear with align_corners=False (QUpsampleBilinear) by integer factors; the rest
    of bilinear and nearest (align_corners=True, any size, non-integer or downscaling factors) as QResize2d."""
    if mode not in ("nearest", "nearest-exact", "bilinear", "area"):
        raise UnsupportedError(f"upsampling mode={mode!r}: qfx resizes with mode='nearest', 'nearest-exact', "
                               "'bilinear' or 'area'")
    if _integer_factors(sf, size) and not (mode == "bilinear" and align_corners) and mode != "area":
        if mode == "bilinear":
            return QUpsampleBilinear(_scale_factor(sf, size, "nearest"), out_width=c.act_width, **_common(c))
        return QUpsample(_scale_factor(sf, size, "nearest"), "nearest")
    for v in (size if isinstance(size, (tuple, list)) else (size,)) if size is not None else ():
        if isinstance(v, (torch.fx.Node, bool)) or not isinstance(v, int) or v < 1:
            raise UnsupportedError(f"interpolate size={size!r}: qfx resizes to constant positive sizes")
    for v in (sf if isinstance(sf, (tuple, list)) else (sf,)) if sf is not None else ():
        if isinstance(v, (torch.fx.Node, bool)) or not isinstance(v, (int, float)) or v <= 0:
            raise UnsupportedError(f"interpolate scale_factor={sf!r}: qfx resizes by constant positive factors")
    return QResize2d(size, sf if size is None else None, mode, bool(align_corners), recompute=bool(recompute),
                     out_width=c.act_width, **_common(c))


def _upsample(m: nn.Upsample, c: "QFXConfig") -> nn.Module:
    return _upsampler(m.scale_factor, m.size, m.mode, m.align_corners, c, m.recompute_scale_factor)


def _constpad(m: nn.modules.padding._ConstantPadNd, c: "QFXConfig") -> nn.Module:
    if m.value != 0:
        raise UnsupportedError(f"{type(m).__name__}(value={m.value}): qfx pads with zeros only")
    if not isinstance(m, (nn.ConstantPad2d, nn.ConstantPad1d)):
        raise UnsupportedError(f"{type(m).__name__}: qfx zero-pads the H and W of (N, C, H, W) tensors and the L of "
                               "(N, C, L) (ZeroPad2d, ZeroPad1d)")
    return QZeroPad2d(_pad(m.padding))


def _flatten(m: nn.Flatten, c: "QFXConfig") -> nn.Module:
    return QFlatten(m.start_dim, m.end_dim)


def _no_indices(m: nn.Module) -> None:
    if getattr(m, "return_indices", False):
        raise UnsupportedError(f"{type(m).__name__}(return_indices=True): qfx pools return values only")


#: float torch.nn class -> builder of its qfx twin (None from a builder: the module is dropped). Looked up along
#: the class's MRO, so subclasses (ReLU6 before Hardtanh) find the most specific entry.
MODULE_TWINS: dict[type, Callable[[Any, "QFXConfig"], nn.Module | None]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv(QConv2d),
    nn.Conv1d: _conv(QConv1d),
    nn.ConvTranspose2d: _conv_transpose(QConvTranspose2d),
    nn.ConvTranspose1d: _conv_transpose(QConvTranspose1d),
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: lambda m, c: _relu(c),
    nn.ReLU6: lambda m, c: _clip(6.0, c),
    nn.Hardtanh: _hardtanh,
    nn.LayerNorm: _layernorm,
    nn.GroupNorm: _groupnorm,
    nn.modules.instancenorm._InstanceNorm: _groupnorm,
    nn.PReLU: _prelu,
    nn.Sigmoid: lambda m, c: _act("sigmoid", c),
    nn.Tanh: lambda m, c: _act("tanh", c),
    nn.SiLU: lambda m, c: _act("silu", c),
    nn.Mish: lambda m, c: _act("mish", c),
    nn.GELU: lambda m, c: _act("gelu", c),
    nn.Hardsigmoid: lambda m, c: _act("hardsigmoid", c),
    nn.Hardswish: lambda m, c: _act("hardswish", c),
    nn.LeakyReLU: lambda m, c: _act(f"leaky_relu({float(m.negative_slope)!r})", c),
    nn.ELU: lambda m, c: _act(f"elu({float(m.alpha)!r})", c),
    nn.Softplus: lambda m, c: _softplus(m.beta) or _act("softplus", c),
    nn.SELU: lambda m, c: _act("selu", c),
    nn.LogSigmoid: lambda m, c: _act("logsigmoid", c),
    nn.Softsign: lambda m, c: _act("softsign", c),
    nn.Hardshrink: lambda m, c: _act(f"hardshrink({float(m.lambd)!r})", c),
    nn.Softshrink: lambda m, c: _act(f"softshrink({float(m.lambd)!r})", c),
    nn.Tanhshrink: lambda m, c: _act("tanhshrink", c),
    nn.Softmax: lambda m, c: _softmax(m.dim, c),
    nn.LogSoftmax: lambda m, c: _b_log_softmax({"dim": m.dim, "input": None}, c).module,
    nn.MaxPool2d: lambda m, c: QMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                          m.ceil_mode),
    nn.AvgPool2d: lambda m, c: _avgpool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                          m.divisor_override, c),
    nn.MaxPool1d: lambda m, c: QMaxPool1d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                          m.ceil_mode),
    nn.AvgPool1d: lambda m, c: QAvgPool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                          out_width=c.act_width, **_common(c)),
    nn.AdaptiveAvgPool2d: lambda m, c: _adaptive("avg", m.output_size, c, ndim=4),
    nn.Embedding: lambda m, c: QEmbedding.from_float(m, weight_width=c.weight_width, **_common(c)),
    nn.AdaptiveAvgPool1d: lambda m, c: _adaptive("avg", m.output_size, c, ndim=3),
    nn.AdaptiveMaxPool2d: lambda m, c: _no_indices(m) or _adaptive("max", m.output_size, c, ndim=4),
    nn.AdaptiveMaxPool1d: lambda m, c: _no_indices(m) or _adaptive("max", m.output_size, c, ndim=3),
    nn.Upsample: _upsample,
    nn.modules.padding._ConstantPadNd: _constpad,
    nn.modules.padding._ReplicationPadNd: lambda m, c: _edgepad(m, c),
    nn.modules.padding._ReflectionPadNd: lambda m, c: _edgepad(m, c),
    nn.Flatten: _flatten,
    nn.Unflatten: lambda m, c: QUnflatten(m.dim, m.unflattened_size),
    nn.PixelShuffle: lambda m, c: QPixelShuffle(m.upscale_factor),
    nn.PixelUnshuffle: lambda m, c: QPixelShuffle(m.downscale_factor, inverse=True),
    nn.Identity: lambda m, c: None,
    nn.modules.dropout._DropoutNd: lambda m, c: QTrainOnly(m),
}

#: qfx modules built for float models without output formats get them from the config
_QFX_REFORMAT: dict[type, Callable[[Any, "QFXConfig"], nn.Module]] = {
    QAdd: lambda m, c: _add(c) if m.out_quant is None else m,
    QClippedReLU: lambda m, c: _clip(m.cap, c) if m.out_quant is None else m,
}


def module_twin(m: nn.Module, c: "QFXConfig") -> tuple[bool, nn.Module | None]:
    """``(known, twin)``: the qfx module replacing ``m`` (``None``: drop it), or ``(False, None)`` if qfx has none.
    Raises UnsupportedError for a known class with settings qfx cannot quantize."""
    if isinstance(m, QModule):
        fix = _QFX_REFORMAT.get(type(m))
        return True, (fix(m, c) if fix is not None else m)
    for cls in type(m).__mro__:
        fn = MODULE_TWINS.get(cls)
        if fn is not None:
            return True, fn(m, c)
    return False, None


# ---------------------------------------------------------------------------- functions and methods
@dataclass(frozen=True)
class _FnSpec:
    """One function family: its parameters (name, default; ``_REQUIRED``), the builder of what it becomes and the
    qfx class named in capture's advice (``twin``; empty for shape ops and dropout)."""

    params: tuple[tuple[str, Any], ...]
    build: Callable[[dict[str, Any], "QFXConfig"], Any]
    twin: str = ""
    extra_ok: bool = False  # more arguments than ``params`` are accepted (and ignored)


def _bind(spec: _FnSpec, node: torch.fx.Node) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults filled in (``Tensor.f(x, ...)`` binds ``x`` as input)."""
    args, kwargs = list(node.args), dict(node.kwargs)
    names = [p for p, _ in spec.params]
    if len(args) > len(names) and not spec.extra_ok:
        raise UnsupportedError(f"takes at most {len(names)} arguments, got {len(args)}")
    out = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in out:
            raise UnsupportedError(f"argument {k!r} given twice")
        if k not in names and not spec.extra_ok:
            raise UnsupportedError(f"unexpected argument {k!r}")
        out[k] = v
    for k, d in spec.params:
        if k not in out:
            if d is _REQUIRED:
                raise UnsupportedError(f"missing argument {k!r}")
            out[k] = d
    return out


def _is_tensor_node(v: Any) -> bool:
    return isinstance(v, torch.fx.Node)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _b_relu(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_relu(c), (a["input"],), "relu")


def _b_relu6(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_clip(6.0, c), (a["input"],), "relu6")


def _b_hardtanh(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_clamp(a["min_val"], a["max_val"], c), (a["input"],), "clip")


def _b_clamp(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    lo, hi = a["min"], a["max"]
    if lo is None and hi is None:
        raise UnsupportedError("clamp without bounds")
    m = _clamp(lo, hi, c)
    return _Replace(m, (a["input"],), "relu" if isinstance(m, QReLU) else "clip")


def _arith(kind: str) -> Callable[[dict[str, Any], "QFXConfig"], _Replace | _Drop]:
    """``x + y``, ``x - y``, ``x * y`` of two tensors (QAdd/QSub/QMul); with a Python constant operand (``x * 0.5``,
    ``x / 4``, ``x + 1``, ``1 - x``) a QConstScale ``x * scale + shift``. ``rsub`` is ``other - alpha * input``."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace | _Drop:
        x, y = a["input"], a["other"]
        alpha = a.get("alpha", 1)
        if a.get("rounding_mode") is not None:
            raise UnsupportedError(f"division with rounding_mode={a['rounding_mode']!r} has no qfx op")
        if not _is_number(alpha):
            raise UnsupportedError(f"alpha={alpha!r} must be a Python constant")
        if _param_of(x) is not None or _param_of(y) is not None:
            return _param_affine(kind, x, y, alpha, c)
        tx, ty = _is_tensor_node(x), _is_tensor_node(y)
        if tx and ty:
            if kind == "div":  # x / y = x * (1 / y): a reciprocal table of y (its own learned formats), then QMul
                return _Chain(((_act("reciprocal", c), (y,), "reciprocal"), (_mul(c), (x, 0), "div")))
            if alpha != 1 and kind in ("add", "sub", "rsub"):  # x + alpha * y: the scale first (torch's order)
                scaled, other = (y, x) if kind != "rsub" else (x, y)
                op = {"add": _add, "sub": _sub, "rsub": _sub}[kind](c)
                return _Chain(((_const(float(alpha), 0.0, c), (scaled,), "alpha"), (op, (other, 0), kind)))
            if kind == "rsub":
                return _Replace(_sub(c), (y, x), "sub")
            twin = {"add": _add, "sub": _sub, "mul": _mul}[kind](c)
            return _Replace(twin, (x, y), kind)
        t, k = (x, y) if tx else (y, x)
        if not _is_tensor_node(t) or not _is_number(k):
            raise UnsupportedError(f"operands {x!r}, {y!r}: qfx needs a tensor and a Python constant, or two tensors")
        if kind == "div" and not tx:  # k / x: a reciprocal table, then the constant scale
            if k == 0:
                return _Replace(_const(0.0, 0.0, c), (t,), "scale")
            if k == 1:
                return _Replace(_act("reciprocal", c), (t,), "reciprocal")
            return _Chain(((_act("reciprocal", c), (t,), "reciprocal"), (_const(float(k), 0.0, c), (0,), "scale")))
        if kind == "div" and k == 0:
            raise UnsupportedError("division by zero")
        if kind == "add":
            scale, shift = (1.0, k * alpha) if tx else (alpha, k)
        elif kind == "sub":
            scale, shift = (1.0, -k * alpha) if tx else (-alpha, k)
        elif kind == "rsub":
            scale, shift = (-alpha, k) if tx else (1.0, -k * alpha)
        else:
            scale, shift = (k, 0.0) if kind == "mul" else (1.0 / k, 0.0)
        if scale == 1 and shift == 0:  # x + 0 (Python's sum() starts there), x * 1: nothing to compute
            return _Drop(t)
        return _Replace(_const(float(scale), float(shift), c), (t,), "scale")

    return build


def _b_matmul(second: str) -> Callable[[dict[str, Any], "QFXConfig"], _Replace]:
    """``x @ y``, ``torch.matmul``, ``torch.bmm`` of two activations (attention's scores and weighted sum): QMatMul.
    A parameter or constant operand is a dense layer, which qfx has as nn.Linear."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace:
        x, y = a["input"], a[second]
        if not (_is_tensor_node(x) and _is_tensor_node(y)) or any(
                v.op == "get_attr" for v in (x, y) if _is_tensor_node(v)):
            raise UnsupportedError("a matrix product with a parameter or constant operand: use nn.Linear (qfx "
                                   "multiplies two activations with x @ y, and weights with nn.Linear)")
        return _Replace(_matmul(c), (x, y), "matmul")

    return build


def _param_of(v: Any) -> torch.Tensor | None:
    """The nn.Parameter (or float buffer) a get_attr node reads in forward (noted on the node before the builders
    run), or None."""
    return v.meta.get("qfx_param") if isinstance(v, torch.fx.Node) and v.op == "get_attr" else None


def _param_affine(kind: str, x: Any, y: Any, alpha: Any, c: "QFXConfig") -> _Replace:
    """``x * self.gamma``, ``x + self.beta``, ``x - self.beta`` with a parameter read in forward: a QParamAffine
    (scale_shift op) that keeps training the parameter. A buffer (``(x - self.mean) / self.std``: an input
    normalization the model holds) is a frozen constant, so dividing by it is multiplying by its reciprocal.
    Other uses are refused here, in one line."""
    px, py = _param_of(x), _param_of(y)
    p, t, pn = (px, y, x) if px is not None else (py, x, y)
    if not _is_tensor_node(t) or _param_of(t) is not None or alpha != 1:
        raise UnsupportedError("a parameter read in forward must meet one tensor (x * self.gamma, x + self.beta)")
    frozen = not isinstance(p, nn.Parameter)
    role = {"mul": "scale", "add": "add"}.get(kind)
    if kind == "sub" and py is not None:
        role = "sub"
    if kind == "div" and py is not None and frozen:
        if bool((p == 0).any()):
            raise UnsupportedError("division by a buffer that holds zeros")
        p, role = 1.0 / p.detach(), "scale"
    if role is None:
        raise UnsupportedError(f"{kind} with a parameter read in forward: qfx applies x * p, x + p and x - p (one "
                               "value per channel or a scalar) and divides by buffers and Python constants")
    if frozen:
        p = p.detach().clone()
    layer = QParamAffine(p, role, shape=pn.meta.get(_PARAM_SHAPE), const_width=c.bn_width, out_width=c.act_width,
                         **_common(c))
    return _Replace(layer, (t,), f"param_{role}")


def _b_neg(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_const(-1.0, 0.0, c), (a["input"],), "neg")


def _b_act(fn: str, param: str | None = None, fixed: float | None = None
           ) -> Callable[[dict[str, Any], "QFXConfig"], _Replace]:
    """A table activation; ``param``: the call argument that is the table's parameter, ``fixed``: a parameter
    value of the table's own (torch.rsqrt is rsqrt with eps 0)."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace:
        if fn == "softplus":
            _softplus(a["beta"])
        if param is not None and not _is_number(a[param]):
            raise UnsupportedError(f"{param}={a[param]!r} must be a Python constant")
        spec = fn if param is None and fixed is None else \
            f"{fn}({float(a[param]) if param is not None else fixed!r})"
        return _Replace(_act(spec, c), (a["input"],), fn)

    return build


def _b_softmax(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a.get("dtype") is not None:
        raise UnsupportedError(f"softmax with dtype={a['dtype']!r}: qfx softmax has its own fixed-point output")
    return _Replace(_softmax(a["dim"], c), (a["input"],), "softmax")


def _b_log_softmax(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    """``log_softmax`` (the MNIST examples' output with ``F.nll_loss``) as QSoftmax then a log table over its
    probabilities: log(p) of the fixed-point p, so classes whose p rounds to 0 share the table's lowest value
    (log of half an LSB of p)."""
    if a.get("dtype") is not None:
        raise UnsupportedError(f"log_softmax with dtype={a['dtype']!r}: qfx has its own fixed-point output")
    w = min(c.act_width, MAX_TABLE_BITS)
    sm = _softmax(a["dim"], c, out_width=w)
    # a table over p's own format ap_ufixed<w, 1>; p = 0 reads as half its LSB (log 0 has no fixed-point value)
    log = QActivation(f"log({2.0 ** -w!r})", in_width=None, out_width=c.act_width, **_common(c))
    return _Replace(nn.Sequential(sm, log), (a["input"],), "log_softmax")


#: fx node meta key: the nn.Parameter that a ``p.expand(n, -1, ...)`` / ``p.repeat(n, 1, ...)`` node broadcasts over
#: the batch
_PARAM_BATCH = "qfx_param_batch"


def _batch_broadcast(u: torch.fx.Node, p: nn.Parameter) -> bool:
    """Whether ``u`` is ``p.expand(n, -1, ...)`` / ``p.expand(n, *p.shape[1:])`` / ``p.repeat(n, 1, ...)`` (the batch
    size n, the other dims kept) read only by ``torch.cat``: a class token joining the tokens (QParamCat)."""
    if u.op != "call_method" or u.target not in ("expand", "repeat") or not u.args or u.kwargs:
        return False
    sizes = list(u.args[1]) if len(u.args) == 2 and isinstance(u.args[1], (tuple, list)) else list(u.args[1:])
    shape = tuple(p.shape)
    if len(sizes) == len(shape) + 1:
        shape = (1,) + shape
    if len(sizes) != len(shape) or len(sizes) < 2 or shape[0] != 1:
        return False
    keep = -1 if u.target == "expand" else 1
    if any(s != keep and not (u.target == "expand" and s == d) for s, d in zip(sizes[1:], shape[1:])):
        return False
    return bool(u.users) and all(c.op == "call_function" and _hashable(c.target)
                                 and FUNCTION_TWINS.get(c.target) is _CAT for c in u.users)


def _b_param_cat(xs: list[Any], dim: Any, c: "QFXConfig") -> _Replace:
    """``torch.cat`` of tensors and parameters broadcast over the batch (``_PARAM_BATCH``), the parameters first
    and/or last: one QParamCat."""
    kinds = [t.meta.get(_PARAM_BATCH) if _is_tensor_node(t) else None for t in xs]
    k0 = next(i for i, p in enumerate(kinds) if p is None) if any(p is None for p in kinds) else len(kinds)
    k1 = len(kinds) - next((i for i, p in enumerate(reversed(kinds)) if p is None), len(kinds))
    if k0 == len(kinds) or any(p is not None for p in kinds[k0:k1]):
        raise UnsupportedError("torch.cat of parameters expanded over the batch (class tokens) and tensors: qfx puts "
                               "the parameters before and/or after the tensors, with at least one tensor")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim == 0:
        raise UnsupportedError(f"torch.cat(dim={dim!r}): qfx concatenates along a per-sample dimension")
    m = QParamCat(kinds[:k0], kinds[k1:], dim, const_width=c.bn_width, out_width=c.act_width, **_common(c))
    return _Replace(m, tuple(xs[k0:k1]), "cat")


def _b_cat(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    xs, dim = a["tensors"], a["dim"]
    if isinstance(xs, (list, tuple)) and any(_is_tensor_node(t) and _PARAM_BATCH in t.meta for t in xs):
        return _b_param_cat(list(xs), dim, c)
    if isinstance(xs, (list, tuple)) and len(xs) == 1 and _is_tensor_node(xs[0]):
        return _Drop(xs[0])  # torch.cat([x]) is x (a DenseNet's first layer concatenates a one-item list)
    if not isinstance(xs, (list, tuple)) or len(xs) < 2 or not all(_is_tensor_node(t) for t in xs):
        raise UnsupportedError("torch.cat needs a list of at least two tensors")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim == 0:
        raise UnsupportedError(f"torch.cat(dim={dim!r}): qfx concatenates along a per-sample dimension (dim=1 for "
                               "channels; dim 0 is the batch)")
    return _Replace(QCat(dim, out_width=c.act_width, **_common(c)), tuple(xs), "cat")


def _b_stack(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    xs, dim = a["tensors"], a["dim"]
    if not isinstance(xs, (list, tuple)) or len(xs) < 2 or not all(_is_tensor_node(t) for t in xs):
        raise UnsupportedError("torch.stack needs a list of at least two tensors")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim == 0:
        raise UnsupportedError(f"torch.stack(dim={dim!r}): qfx stacks along a per-sample dimension (dim 0 is the "
                               "batch)")
    return _Replace(QStack(dim, out_width=c.act_width, **_common(c)), tuple(xs), "stack")


def _b_interpolate(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a.get("antialias"):
        raise UnsupportedError("interpolate(antialias=True) has no qfx op")
    m = _upsampler(a["scale_factor"], a["size"], a["mode"], a["align_corners"], c, a["recompute_scale_factor"])
    return _Replace(m, (a["input"],), "upsample")


def _b_pad(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a["mode"] not in ("constant", "replicate", "reflect") or (a["mode"] == "constant"
                                                                 and a["value"] not in (None, 0, 0.0)):
        raise UnsupportedError(f"F.pad(mode={a['mode']!r}, value={a['value']!r}): qfx pads with zeros, replicate "
                               "or reflect")
    mode = "zeros" if a["mode"] == "constant" else a["mode"]
    return _Replace(QZeroPad2d(_pad(a["pad"]), mode), (a["input"],), "pad")


def _edgepad(m: nn.Module, c: "QFXConfig") -> nn.Module:
    """nn.ReplicationPad2d / nn.ReflectionPad2d: the zeropad2d gather with an edge mode."""
    if not isinstance(m, (nn.ReplicationPad2d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReflectionPad1d)):
        raise UnsupportedError(f"{type(m).__name__}: qfx pads the H and W of (N, C, H, W) tensors and the L of "
                               "(N, C, L) only")
    rep = isinstance(m, (nn.ReplicationPad2d, nn.ReplicationPad1d))
    return QZeroPad2d(_pad(m.padding), "replicate" if rep else "reflect")


def _b_maxpool(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = QMaxPool2d(a["kernel_size"], a["stride"] or None, a["padding"], a["dilation"], a["return_indices"],
                   a["ceil_mode"])
    return _Replace(q, (a["input"],), "maxpool")


def _avgpool2d(k: Any, s: Any, p: Any, ceil_mode: Any, include_pad: Any, divisor: Any, c: "QFXConfig") -> nn.Module:
    """QAvgPool2d (one window size), or QAvgPoolMatrix for ceil_mode, count_include_pad=False, divisor_override."""
    if ceil_mode or not include_pad or divisor is not None:
        return QAvgPoolMatrix(k, s, p, bool(ceil_mode), bool(include_pad), divisor, out_width=c.act_width,
                              **_common(c))
    return QAvgPool2d(k, s, p, ceil_mode, include_pad, divisor, out_width=c.act_width, **_common(c))


def _b_avgpool(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = _avgpool2d(a["kernel_size"], a["stride"] or None, a["padding"], a["ceil_mode"], a["count_include_pad"],
                   a["divisor_override"], c)
    return _Replace(q, (a["input"],), "avgpool")


def _b_maxpool1d(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = QMaxPool1d(a["kernel_size"], a["stride"] or None, a["padding"], a["dilation"], a["return_indices"],
                   a["ceil_mode"])
    return _Replace(q, (a["input"],), "maxpool")


def _b_avgpool1d(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = QAvgPool1d(a["kernel_size"], a["stride"] or None, a["padding"], a["ceil_mode"], a["count_include_pad"],
                   out_width=c.act_width, **_common(c))
    return _Replace(q, (a["input"],), "avgpool")


def _b_adaptive(kind: str, ndim: int) -> Callable[[dict[str, Any], "QFXConfig"], _Replace]:
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace:
        if a.get("return_indices"):
            raise UnsupportedError("adaptive max pool with return_indices=True: qfx pools return values only")
        return _Replace(_adaptive(kind, a["output_size"], c, ndim=ndim), (a["input"],), f"{kind}pool")

    return build


def _spatial(dim: Any, what: str) -> int:
    """The input rank a reduction over ``dim`` means: (2, 3) / (-2, -1) -> 4 (N, C, H, W); 2 -> 3 (N, C, L);
    1 -> 2 (the features of (N, n), or the channels of (N, C, H, W) / (N, C, L)); -1 -> 0 (either of the last two;
    3, the width of (N, C, H, W), too)."""
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise UnsupportedError(f"{what} over dim={dim!r}: give the dimensions as constants")
    if sorted(d % 4 for d in dims) == [2, 3] and all(d in (2, 3, -2, -1) for d in dims):
        return 4
    if dims == (2,):
        return 3
    if dims in ((-1,), (3,)):  # (N, C, L) or the features of (N, n); dim 3 is the last of (N, C, H, W)
        return 0
    if dims == (1,):
        return 2
    raise UnsupportedError(f"{what} over dim={dim!r}: only the spatial reduction of (N, C, H, W) over (2, 3), of "
                           "(N, C, L) over the last dim (a global pool), over the channels (dim=1) and of (N, n) "
                           "over its features has a qfx twin")


def _b_mean(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a.get("dtype") is not None:
        raise UnsupportedError(f"mean with dtype={a['dtype']!r} has no qfx twin")
    ndim = _spatial(a["dim"], "mean")
    return _Replace(_adaptive("avg", 1, c, bool(a["keepdim"]), ndim), (a["input"],), "avgpool")


def _b_amax(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    ndim = _spatial(a["dim"], "amax")
    return _Replace(_adaptive("max", 1, c, bool(a["keepdim"]), ndim), (a["input"],), "maxpool")


def _b_sum(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    """``x.sum(dims)``: QSum (an exact window sum, one output cast)."""
    if a.get("dtype") is not None:
        raise UnsupportedError(f"sum with dtype={a['dtype']!r} has no qfx twin")
    if a["dim"] is None:
        raise UnsupportedError("a sum over all elements has no qfx op; sum over the spatial dims ((2, 3), -1) or "
                               "the features of (N, n) (dim=1)")
    ndim = _spatial(a["dim"], "sum")
    return _Replace(QSum(1, bool(a["keepdim"]), ndim, out_width=c.act_width, **_common(c)), (a["input"],), "sum")


def _b_normalize(a: dict[str, Any], c: "QFXConfig") -> _Chain:
    """``F.normalize(x, p=2, dim)``: ``x * rsqrt(sum(x * x, dim) + eps**2)`` from qfx modules (QMul, QSum, an
    rsqrt table, QMul with the norm broadcast): each step rounds once to a learned format. Torch divides by
    ``max(||x||, eps)``; the two differ only where ``||x||`` is within a few eps of zero."""
    if a["p"] != 2:
        raise UnsupportedError(f"F.normalize(p={a['p']!r}): qfx normalizes with the 2-norm")
    if not _is_number(a["eps"]):
        raise UnsupportedError(f"eps={a['eps']!r} must be a Python constant")
    x = a["input"]
    s = _b_sum({"input": x, "dim": a["dim"], "keepdim": True}, c).module
    return _Chain(((_mul(c), (x, x), "square"), (s, (0,), "sumsq"),
                   (_act(f"rsqrt({float(a['eps']) ** 2!r})", c), (1,), "rnorm"), (_mul(c), (x, 2), "normalize")))


def _b_amin(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    """``x.amin(dims)`` = -amax(-x): negations (QConstScale -1) around the max pool."""
    ndim = _spatial(a["dim"], "amin")
    return _Replace(nn.Sequential(_const(-1.0, 0.0, c), _adaptive("max", 1, c, bool(a["keepdim"]), ndim),
                                  _const(-1.0, 0.0, c)), (a["input"],), "minpool")


def _reduce_pair(kind: str) -> Callable[[dict[str, Any], "QFXConfig"], _Replace]:
    """``torch.max(x, dim)`` / ``x.min(dim)``: a (values, indices) pair whose values (``[0]``, ``.values``) are the
    amax/amin; reading the indices is refused where it happens."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace:
        d = a["dim"] if a.get("other") is None else a["other"]
        if d is None:
            raise UnsupportedError(f"x.{kind}() over all elements has no qfx op; give a spatial or feature dim")
        if _is_tensor_node(d):  # torch.max(x, y): the element-wise maximum of two tensors
            return _max_min_of_two(kind)({"input": a["input"], "other": d, "keepdim": a["keepdim"]}, c)
        b = _b_amax if kind == "max" else _b_amin
        r = b({"input": a["input"], "dim": d, "keepdim": a["keepdim"]}, c)
        return _Replace(r.module, (a["input"],), r.base, pair=True)

    return build


def _max_min_of_two(kind: str) -> Callable[[dict[str, Any], "QFXConfig"], "_Chain"]:
    """``torch.maximum(x, y)`` / ``torch.max(x, y)`` as ``y + relu(x - y)`` and the minimum as ``x - relu(x - y)``:
    lossless QSub/QReLU/QAdd (no output quantizers), so the result is exactly max/min of the operands' values."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Chain:
        x, y = a["input"], a["other"]
        if not (_is_tensor_node(x) and _is_tensor_node(y)):
            raise UnsupportedError(f"torch.{kind}imum(x, y) needs two tensors (a constant bound is clamp)")
        if a.get("keepdim"):
            raise UnsupportedError(f"torch.{kind}(x, y) of two tensors takes no keepdim")
        diff = (QSub(out_width=None), (x, y), f"{kind}_diff")
        relu = (QReLU(out_width=None), (0,), f"{kind}_relu")
        last = (QAdd(out_width=None), (y, 1), kind) if kind == "max" else (QSub(out_width=None), (x, 1), kind)
        return _Chain((diff, relu, last))

    return build


def _b_pow(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    """``x ** 2`` / ``torch.square(x)`` as ``x * x`` (QMul of one tensor with itself: exact); other exponents have
    no qfx op."""
    x, e = a["input"], a.get("exponent", 2)
    if not _is_tensor_node(x) or not _is_number(e) or float(e) not in (1.0, 2.0):
        raise UnsupportedError(f"x ** {e!r}: qfx squares tensors (x ** 2, torch.square, x * x); other powers have "
                               "no fixed-point op")
    if float(e) == 1.0:
        return _Drop(x)
    return _Replace(_mul(c), (x, x), "square")


def _b_abs(a: dict[str, Any], c: "QFXConfig") -> _Chain:
    """``|x|`` as ``r + (r - x)`` with ``r = relu(x)``: lossless QReLU/QSub/QAdd, so the result is exactly |x|."""
    x = a["input"]
    relu = (QReLU(out_width=None), (x,), "abs_relu")
    neg = (QSub(out_width=None), (0, x), "abs_neg")
    return _Chain((relu, neg, (QAdd(out_width=None), (0, 1), "abs")))


def _b_cast(a: dict[str, Any], c: "QFXConfig") -> _Drop:
    """``x.float()``, ``x.to(torch.float32)``, ``x.to(device)``, ``x.type_as(y)``: the values stay float32, so the
    call is an identity; a cast to another dtype would change the values and is refused."""
    for k, v in a.items():
        if isinstance(v, torch.dtype) and v != torch.float32:
            raise UnsupportedError(f"cast to {v}: qfx tensors are float32 values of fixed-point codes; drop the cast")
        if isinstance(v, str) and v in ("half", "double", "int", "long", "bfloat16", "short", "bool"):
            raise UnsupportedError(f"cast to {v!r}: qfx tensors are float32 values of fixed-point codes; drop it")
    return _Drop(a["input"])


def _b_flatten(a: dict[str, Any], c: "QFXConfig") -> None:
    s, e = a["start_dim"], a["end_dim"]
    if (not isinstance(s, int) or not isinstance(e, int) or s == 0 or (s > 0 and e > 0 and e < s)
            or (s < 0 and e < s) or e == 0):
        raise UnsupportedError(f"flatten(start_dim={s!r}, end_dim={e!r}): only flatten(x, d) with d >= 1 (the "
                               "batch dimension stays first) is supported")
    return _KEEP


def _b_dropout(cls: type) -> Callable[[dict[str, Any], "QFXConfig"], _Replace]:
    """``F.dropout(x, p, training=self.training)`` (and dropout1d/2d/3d, alpha dropout, ``torch.dropout``): a
    QTrainOnly around the matching ``nn`` module, random in train mode as torch is, the identity in eval and exact
    mode. It follows the model's ``train()``/``eval()``: fx records ``training=self.training`` as the constant it had
    while tracing, which cannot be told from a literal."""
    def build(a: dict[str, Any], c: "QFXConfig") -> _Replace:
        p = a["p"]
        if not _is_number(p) or not 0 <= p <= 1:
            raise UnsupportedError(f"dropout probability {p!r} must be a Python constant in [0, 1]")
        return _Replace(QTrainOnly(cls(float(p))), (a["input"],), "dropout")

    return build


def _b_keep(a: dict[str, Any], c: "QFXConfig") -> None:
    return _KEEP


def _b_attention_weights(a: dict[str, Any], c: "QFXConfig") -> None:
    raise UnsupportedError("the attention weights nn.MultiheadAttention returns (need_weights=True) are used: qfx "
                           "computes the attention output only; take [0] of the result or pass need_weights=False")


_IN = ("input", _REQUIRED)
_INPLACE = ("inplace", False)
_RELU = _FnSpec((_IN, _INPLACE), _b_relu, "qfx.nn.QReLU")
_RELU6 = _FnSpec((_IN, _INPLACE), _b_relu6, "qfx.nn.QClippedReLU")
_HARDTANH = _FnSpec((_IN, ("min_val", -1.0), ("max_val", 1.0), _INPLACE), _b_hardtanh, "qfx.nn.QClip")
_CLAMP = _FnSpec((_IN, ("min", None), ("max", None)), _b_clamp, "qfx.nn.QReLU/QClippedReLU/QClip")
_CLAMP_MIN = _FnSpec((_IN, ("min", _REQUIRED), ("max", None)), _b_clamp, "qfx.nn.QReLU/QClip")
_CLAMP_MAX = _FnSpec((_IN, ("max", _REQUIRED), ("min", None)), _b_clamp, "qfx.nn.QClip")
_TWO = (_IN, ("other", _REQUIRED))
_ADD = _FnSpec(_TWO + (("alpha", 1),), _arith("add"), "qfx.nn.QAdd (two tensors) or QConstScale (a constant)")
_SUB = _FnSpec(_TWO + (("alpha", 1),), _arith("sub"), "qfx.nn.QSub (two tensors) or QConstScale (a constant)")
_RSUB = _FnSpec(_TWO + (("alpha", 1),), _arith("rsub"), "qfx.nn.QSub or QConstScale")
_MUL = _FnSpec(_TWO, _arith("mul"), "qfx.nn.QMul (two tensors) or QConstScale (a constant)")
_DIV = _FnSpec(_TWO + (("rounding_mode", None),), _arith("div"),
               "qfx.nn.QConstScale (by a constant) or QActivation('reciprocal') + QMul (by a tensor)")
_ARITH_SPECS = (_ADD, _SUB, _RSUB, _MUL, _DIV)
_NEG = _FnSpec((_IN,), _b_neg, "qfx.nn.QConstScale")
_ACT = "qfx.nn.QActivation"
_SIGMOID = _FnSpec((_IN,), _b_act("sigmoid"), _ACT)
_TANH = _FnSpec((_IN,), _b_act("tanh"), _ACT)
_SILU = _FnSpec((_IN, _INPLACE), _b_act("silu"), _ACT)
_MISH = _FnSpec((_IN, _INPLACE), _b_act("mish"), _ACT)
_GELU = _FnSpec((_IN, ("approximate", "none")), _b_act("gelu"), _ACT)
_HARDSIGMOID = _FnSpec((_IN, _INPLACE), _b_act("hardsigmoid"), _ACT)
_HARDSWISH = _FnSpec((_IN, _INPLACE), _b_act("hardswish"), _ACT)
_LEAKY = _FnSpec((_IN, ("negative_slope", 0.01), _INPLACE), _b_act("leaky_relu", "negative_slope"), _ACT)
_ELU = _FnSpec((_IN, ("alpha", 1.0), _INPLACE), _b_act("elu", "alpha"), _ACT)
_SOFTPLUS = _FnSpec((_IN, ("beta", 1.0), ("threshold", 20.0)), _b_act("softplus"), _ACT)
_SELU = _FnSpec((_IN, _INPLACE), _b_act("selu"), _ACT)
_LOGSIGMOID = _FnSpec((_IN,), _b_act("logsigmoid"), _ACT)
_SOFTSIGN = _FnSpec((_IN,), _b_act("softsign"), _ACT)
_HARDSHRINK = _FnSpec((_IN, ("lambd", 0.5)), _b_act("hardshrink", "lambd"), _ACT)
_SOFTSHRINK = _FnSpec((_IN, ("lambd", 0.5)), _b_act("softshrink", "lambd"), _ACT)
_TANHSHRINK = _FnSpec((_IN,), _b_act("tanhshrink"), _ACT)
_SQRT = _FnSpec((_IN,), _b_act("sqrt"), _ACT)
_RSQRT = _FnSpec((_IN,), _b_act("rsqrt", fixed=0.0), _ACT)
_EXP = _FnSpec((_IN,), _b_act("exp"), _ACT)
_LOG = _FnSpec((_IN,), _b_act("log"), _ACT)
_RECIPROCAL = _FnSpec((_IN,), _b_act("reciprocal"), _ACT)
def table_select(x: torch.Tensor, spec: str) -> torch.Tensor:
    """What ``torch.where(x > c, a, b)`` becomes in the traced graph (``_where_tables``): a marker the twin table
    replaces; never run."""
    raise RuntimeError("table_select is replaced by a QActivation when the model is quantized")  # pragma: no cover


_SELECT = _FnSpec((_IN, ("spec", _REQUIRED)), lambda a, c: _Replace(_act(a["spec"], c), (a["input"],), "select"),
                  "qfx.nn.QActivation (a select_* table)")
_NORMALIZE = _FnSpec((_IN, ("p", 2.0), ("dim", 1), ("eps", 1e-12), ("out", None)), _b_normalize,
                     "qfx.nn.QMul + QSum + QActivation('rsqrt') + QMul")
_MATMUL = _FnSpec(_TWO, _b_matmul("other"), "qfx.nn.QMatMul (two activations)")
_BMM = _FnSpec((_IN, ("mat2", _REQUIRED)), _b_matmul("mat2"), _MATMUL.twin)
_SOFTMAX = _FnSpec((_IN, ("dim", None), ("_stacklevel", 3), ("dtype", None)), _b_softmax, "qfx.nn.QSoftmax")
_LOG_SOFTMAX = _FnSpec(_SOFTMAX.params, _b_log_softmax, "qfx.nn.QSoftmax + QActivation('log')")
_CAT = _FnSpec((("tensors", _REQUIRED), ("dim", 0)), _b_cat, "qfx.nn.QCat")
_STACK = _FnSpec((("tensors", _REQUIRED), ("dim", 0)), _b_stack, "qfx.nn.op_layers.QStack")
_INTERP = _FnSpec((_IN, ("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                   ("recompute_scale_factor", None), ("antialias", False)), _b_interpolate, "qfx.nn.QUpsample")
_PAD = _FnSpec((_IN, ("pad", _REQUIRED), ("mode", "constant"), ("value", None)), _b_pad, "qfx.nn.QZeroPad2d")
_PIXEL_SHUFFLE = _FnSpec((_IN, ("upscale_factor", _REQUIRED)),
                         lambda a, c: _Replace(QPixelShuffle(a["upscale_factor"]), (a["input"],), "pixel_shuffle"),
                         "qfx.nn.extra_layers.QPixelShuffle")
_PIXEL_UNSHUFFLE = _FnSpec((_IN, ("downscale_factor", _REQUIRED)),
                           lambda a, c: _Replace(QPixelShuffle(a["downscale_factor"], inverse=True), (a["input"],),
                                                 "pixel_unshuffle"), "qfx.nn.extra_layers.QPixelShuffle")
_MAXPOOL = _FnSpec((_IN, ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0), ("dilation", 1),
                    ("ceil_mode", False), ("return_indices", False)), _b_maxpool, "qfx.nn.QMaxPool2d")
_AVGPOOL = _FnSpec((_IN, ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0), ("ceil_mode", False),
                    ("count_include_pad", True), ("divisor_override", None)), _b_avgpool, "qfx.nn.QAvgPool2d")
_MAXPOOL1 = _FnSpec(_MAXPOOL.params, _b_maxpool1d, "qfx.nn.QMaxPool1d")
_AVGPOOL1 = _FnSpec((_IN, ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0), ("ceil_mode", False),
                     ("count_include_pad", True)), _b_avgpool1d, "qfx.nn.QAvgPool1d")
_POOLS = "qfx.nn.QGlobalAvgPool2d/QAdaptiveAvgPool2d"
_ADAPTIVE_AVG2 = _FnSpec((_IN, ("output_size", _REQUIRED)), _b_adaptive("avg", 4), _POOLS)
_ADAPTIVE_AVG1 = _FnSpec((_IN, ("output_size", _REQUIRED)), _b_adaptive("avg", 3), "qfx.nn.QAdaptiveAvgPool2d")
_ADAPTIVE_MAX2 = _FnSpec((_IN, ("output_size", _REQUIRED), ("return_indices", False)), _b_adaptive("max", 4),
                         "qfx.nn.QAdaptiveMaxPool2d")
_ADAPTIVE_MAX1 = _FnSpec((_IN, ("output_size", _REQUIRED), ("return_indices", False)), _b_adaptive("max", 3),
                         "qfx.nn.QAdaptiveMaxPool2d")
_MEAN = _FnSpec((_IN, ("dim", None), ("keepdim", False), ("dtype", None)), _b_mean, _POOLS)
_AMAX = _FnSpec((_IN, ("dim", ()), ("keepdim", False)), _b_amax, "qfx.nn.QAdaptiveMaxPool2d")
_AMIN = _FnSpec((_IN, ("dim", ()), ("keepdim", False)), _b_amin, "qfx.nn.QAdaptiveMaxPool2d of -x")
_SUM = _FnSpec((_IN, ("dim", None), ("keepdim", False), ("dtype", None)), _b_sum, "qfx.nn.QSum")
_MAX_DIM = _FnSpec((_IN, ("dim", None), ("keepdim", False), ("other", None)), _reduce_pair("max"),
                   "qfx.nn.QAdaptiveMaxPool2d")
_MIN_DIM = _FnSpec((_IN, ("dim", None), ("keepdim", False), ("other", None)), _reduce_pair("min"),
                   "qfx.nn.QAdaptiveMaxPool2d of -x")
_MAXIMUM = _FnSpec((_IN, ("other", _REQUIRED)), _max_min_of_two("max"), "qfx.nn.QSub + QReLU + QAdd")
_MINIMUM = _FnSpec((_IN, ("other", _REQUIRED)), _max_min_of_two("min"), "qfx.nn.QSub + QReLU + QSub")
_POW = _FnSpec((_IN, ("exponent", _REQUIRED)), _b_pow, "qfx.nn.QMul (x ** 2 as x * x)")
_SQUARE = _FnSpec((_IN,), _b_pow, "qfx.nn.QMul (x ** 2 as x * x)")
_ABS = _FnSpec((_IN,), _b_abs, "qfx.nn.QReLU + QSub + QAdd")
_CAST = _FnSpec((_IN, ("arg1", None), ("arg2", None), ("arg3", None)), _b_cast, extra_ok=True)
_FLATTEN = _FnSpec((_IN, ("start_dim", 0), ("end_dim", -1)), _b_flatten)
_DROPOUT_PARAMS = (_IN, ("p", 0.5), ("training", True), ("inplace", False))
_DROPOUT = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.Dropout), "qfx.nn.extra_layers.QTrainOnly")
_DROPOUT1D = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.Dropout1d), _DROPOUT.twin)
_DROPOUT2D = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.Dropout2d), _DROPOUT.twin)
_DROPOUT3D = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.Dropout3d), _DROPOUT.twin)
_ALPHA_DROPOUT = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.AlphaDropout), _DROPOUT.twin)
_FEATURE_ALPHA_DROPOUT = _FnSpec(_DROPOUT_PARAMS, _b_dropout(nn.FeatureAlphaDropout), _DROPOUT.twin)
_TORCH_DROPOUT = _FnSpec((_IN, ("p", _REQUIRED), ("train", _REQUIRED)), _b_dropout(nn.Dropout), _DROPOUT.twin)
_SHAPE = _FnSpec((), _b_keep, extra_ok=True)
_INDEX = _FnSpec((), _b_keep, extra_ok=True)  # element moves capture lowers to slice / transpose / concat nodes
_ATTENTION_WEIGHTS = _FnSpec((_IN, ("average", True)), _b_attention_weights)

#: function object -> what it becomes (torch.fx records functions and operators by object)
FUNCTION_TWINS: dict[Any, _FnSpec] = {
    F.relu: _RELU, torch.relu: _RELU, torch.relu_: _RELU,
    F.relu6: _RELU6,
    F.hardtanh: _HARDTANH, F.hardtanh_: _HARDTANH,
    torch.clamp: _CLAMP, torch.clip: _CLAMP, torch.clamp_: _CLAMP, torch.clamp_min: _CLAMP_MIN,
    torch.clamp_max: _CLAMP_MAX,
    operator.add: _ADD, operator.iadd: _ADD, torch.add: _ADD,
    operator.sub: _SUB, operator.isub: _SUB, torch.sub: _SUB, torch.subtract: _SUB, torch.rsub: _RSUB,
    operator.mul: _MUL, operator.imul: _MUL, torch.mul: _MUL, torch.multiply: _MUL,
    operator.matmul: _MATMUL, torch.matmul: _MATMUL, torch.bmm: _BMM,
    operator.truediv: _DIV, operator.itruediv: _DIV, torch.div: _DIV, torch.divide: _DIV, torch.true_divide: _DIV,
    operator.neg: _NEG, torch.neg: _NEG, torch.negative: _NEG,
    torch.sigmoid: _SIGMOID, F.sigmoid: _SIGMOID, torch.tanh: _TANH, F.tanh: _TANH, F.silu: _SILU, F.mish: _MISH, F.gelu: _GELU,
    F.hardsigmoid: _HARDSIGMOID, F.hardswish: _HARDSWISH, F.leaky_relu: _LEAKY, F.leaky_relu_: _LEAKY,
    F.elu: _ELU, F.elu_: _ELU, F.softplus: _SOFTPLUS, F.selu: _SELU, torch.selu: _SELU, F.logsigmoid: _LOGSIGMOID,
    F.softsign: _SOFTSIGN, torch.sqrt: _SQRT, torch.rsqrt: _RSQRT, torch.exp: _EXP, torch.log: _LOG,
    torch.reciprocal: _RECIPROCAL, F.normalize: _NORMALIZE, table_select: _SELECT, F.hardshrink: _HARDSHRINK, F.softshrink: _SOFTSHRINK,
    F.tanhshrink: _TANHSHRINK,
    F.softmax: _SOFTMAX, torch.softmax: _SOFTMAX,
    F.log_softmax: _LOG_SOFTMAX, torch.log_softmax: _LOG_SOFTMAX,
    torch.cat: _CAT, torch.concat: _CAT, torch.concatenate: _CAT,
    F.interpolate: _INTERP, F.upsample: _INTERP, F.upsample_nearest: _INTERP,
    F.pad: _PAD,
    F.pixel_shuffle: _PIXEL_SHUFFLE, torch.pixel_shuffle: _PIXEL_SHUFFLE, F.pixel_unshuffle: _PIXEL_UNSHUFFLE,
    torch.pixel_unshuffle: _PIXEL_UNSHUFFLE,
    F.max_pool2d: _MAXPOOL, torch.max_pool2d: _MAXPOOL,
    F.avg_pool2d: _AVGPOOL,
    F.max_pool1d: _MAXPOOL1, torch.max_pool1d: _MAXPOOL1, F.avg_pool1d: _AVGPOOL1, torch.avg_pool1d: _AVGPOOL1,
    F.adaptive_avg_pool2d: _ADAPTIVE_AVG2, F.adaptive_avg_pool1d: _ADAPTIVE_AVG1,
    torch.adaptive_avg_pool1d: _ADAPTIVE_AVG1,
    F.adaptive_max_pool2d: _ADAPTIVE_MAX2, F.adaptive_max_pool1d: _ADAPTIVE_MAX1,
    torch.mean: _MEAN, torch.amax: _AMAX, torch.amin: _AMIN, torch.sum: _SUM, torch.max: _MAX_DIM,
    torch.min: _MIN_DIM, torch.maximum: _MAXIMUM, torch.minimum: _MINIMUM,
    operator.pow: _POW, torch.pow: _POW, torch.square: _SQUARE, torch.abs: _ABS, torch.absolute: _ABS,
    torch.flatten: _FLATTEN, torch.reshape: _SHAPE, torch.squeeze: _SHAPE, torch.unsqueeze: _SHAPE,
    F.dropout: _DROPOUT, F.dropout1d: _DROPOUT1D, F.dropout2d: _DROPOUT2D, F.dropout3d: _DROPOUT3D,
    F.alpha_dropout: _ALPHA_DROPOUT, F.feature_alpha_dropout: _FEATURE_ALPHA_DROPOUT, torch.dropout: _TORCH_DROPOUT,
    operator.getitem: _SHAPE, getattr: _SHAPE,
    torch.transpose: _INDEX, torch.permute: _INDEX, torch.narrow: _INDEX, torch.chunk: _INDEX,
    torch.split: _INDEX, torch.tensor_split: _INDEX, torch.stack: _STACK,
    attention_weights: _ATTENTION_WEIGHTS,
}

#: Tensor method name -> what it becomes
METHOD_TWINS: dict[str, _FnSpec] = {
    "relu": _RELU, "relu_": _RELU,
    "clamp": _CLAMP, "clip": _CLAMP, "clamp_": _CLAMP, "clip_": _CLAMP, "clamp_min": _CLAMP_MIN,
    "clamp_min_": _CLAMP_MIN, "clamp_max": _CLAMP_MAX, "clamp_max_": _CLAMP_MAX,
    "add": _ADD, "add_": _ADD, "sub": _SUB, "sub_": _SUB, "subtract": _SUB, "mul": _MUL, "mul_": _MUL,
    "multiply": _MUL, "matmul": _MATMUL, "bmm": _BMM, "div": _DIV, "div_": _DIV, "divide": _DIV, "true_divide": _DIV, "neg": _NEG,
    "negative": _NEG,
    "sigmoid": _SIGMOID, "sigmoid_": _SIGMOID, "tanh": _TANH, "tanh_": _TANH, "softmax": _SOFTMAX,
    "sqrt": _SQRT, "rsqrt": _RSQRT, "exp": _EXP, "log": _LOG, "reciprocal": _RECIPROCAL,
    "log_softmax": _LOG_SOFTMAX,
    "mean": _MEAN, "amax": _AMAX, "amin": _AMIN, "sum": _SUM, "max": _MAX_DIM, "min": _MIN_DIM, "maximum": _MAXIMUM, "minimum": _MINIMUM,
    "flatten": _FLATTEN, "pow": _POW, "square": _SQUARE, "abs": _ABS, "absolute": _ABS,
    "float": _CAST, "to": _CAST, "type_as": _CAST,
    "view": _SHAPE, "reshape": _SHAPE, "size": _SHAPE, "contiguous": _SHAPE, "clone": _SHAPE, "detach": _SHAPE,
    "squeeze": _SHAPE, "unsqueeze": _SHAPE,
    "transpose": _INDEX, "permute": _INDEX, "narrow": _INDEX, "chunk": _INDEX, "split": _INDEX,
    "tensor_split": _INDEX, "swapaxes": _INDEX, "dim": _SHAPE,
}

_SIZE_ARITHMETIC = frozenset({operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
                              operator.mod, operator.neg})

_OPERATOR_SYMBOLS = {operator.add: "x + y", operator.iadd: "x += y", operator.getitem: "x[...]",
                     operator.sub: "x - y", operator.isub: "x -= y", operator.mul: "x * y", operator.imul: "x *= y",
                     operator.truediv: "x / y", operator.itruediv: "x /= y", operator.matmul: "x @ y",
                     operator.neg: "-x", operator.floordiv: "x // y", operator.pow: "x ** y"}

#: hint families for what has no twin: (name fragments, what qfx offers instead)
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("convtranspose", "conv_transpose"), "qfx converts nn.ConvTranspose1d/2d modules (zero padding, padding <= "
                                          "dilation * (kernel - 1)); F.conv_transpose with a weight read in "
                                          "forward does not"),
    (("attention", "transformer"),
     "qfx converts nn.MultiheadAttention, nn.TransformerEncoderLayer and nn.TransformerEncoder with torch's own "
     "forward, and attention written by hand (x @ y, softmax(dim=-1)); transformer decoders have no fixed-point "
     "twin"),
    (("lstm", "gru", "rnn"),
     "qfx unrolls nn.LSTM/GRU/RNN over the fixed sequence length when they start from the zero state (none or "
     "torch.zeros passed in), have no "
     "proj_size and their results are read as the output sequence (batch_first, or out[t] / out.transpose(0, 1)), "
     "h_n[k], c_n[k] or h_n.squeeze(0)"),
    (("embedding",), "qfx converts nn.Embedding modules (no max_norm) fed the model's integer input"),
    (("sum",), "qfx sums over the spatial dims (x.sum((2, 3)), x.sum(-1)), the channels or the features of (N, n) "
               "(x.sum(1))"),
    (("prelu",), "nn.PReLU converts (qfx.nn.QPReLU); F.prelu with a weight read in forward does not"),
    (("drop", "stochastic"), "dropout and stochastic depth become QTrainOnly as modules: nn.Dropout*, or a module "
                             "whose eval-mode forward returns its input (torchvision's StochasticDepth, timm's "
                             "DropPath; give quantize_model calib_data to recognise a torch.fx.wrap'ed one)"),
    (("gelu", "sigmoid", "tanh", "silu", "swish", "elu", "selu", "leaky", "softmax", "softplus", "mish", "softsign",
      "glu", "threshold", "rrelu", "logsigmoid", "softmin", "hardshrink", "softshrink", "tanhshrink"),
     "qfx activations are ReLU, ReLU6, Hardtanh/clamp (any constant bounds), PReLU, the tables Sigmoid, Tanh, "
     "SiLU, GELU, Hardsigmoid, Hardswish, LeakyReLU, ELU, SELU, Softplus(beta=1), LogSigmoid, Softsign, Mish, "
     "Hard/Soft/Tanhshrink, sqrt, exp, log, and Softmax over any per-sample axis"),
    (("pool",), "qfx pools are MaxPool1d/2d, AvgPool1d/2d, and adaptive avg/max pools whose output size divides "
                "the input (x.mean((2, 3)), x.amax((2, 3)), AdaptiveAvgPool2d(k))"),
    (("norm",), "qfx normalizes with BatchNorm1d/BatchNorm2d (fixed-point scale and shift), LayerNorm(n) of (N, n), "
                "GroupNorm and InstanceNorm2d of (N, C, H, W)"),
    (("conv",), "qfx convolutions are Conv1d and Conv2d with zero padding"),
    (("linear", "matmul", "mm", "bmm", "einsum", "@"), "qfx dense layers are nn.Linear; two activations multiply "
                                                       "with x @ y, torch.matmul or torch.bmm ((N, ..., M, K) @ "
                                                       "(N, ..., K, N'), equal leading dims)"),
    (("upsample", "interpolate", "pixel", "resize"), "qfx upsamples with mode='nearest' by integer scale factors "
                                                     "(nn.Upsample(scale_factor=2))"),
    (("pad",), "qfx pads with zeros (nn.ZeroPad2d, F.pad(x, (left, right, top, bottom)), conv padding)"),
    (("cat", "stack", "split", "chunk", "[...]", "transpose", "permute"),
     "qfx joins tensors with torch.cat/stack and moves elements with x[:, a:b], narrow, chunk, split, "
     "transpose and permute, all along per-sample dims"),
    (("sub", "mul", "div", "neg", "pow", "sqrt", "exp", "log", "abs", "max", "min", "sum", "where", "-", "*", "/"),
     "qfx element-wise arithmetic is x + y, x - y, x * y of same-shape tensors and x * c, x / c, x + c, x - c "
     "with Python constants c"),
)


def describe_target(op: str, target: Any) -> str:
    """How a user wrote an fx call: 'torch.nn.functional.gelu', 'x - y', 'Tensor.sigmoid'."""
    if op == "call_method":
        return f"Tensor.{target}"
    if target in _OPERATOR_SYMBOLS:
        return _OPERATOR_SYMBOLS[target]
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or str(target)
    if mod in ("torch._C._nn", "torch._C._VariableFunctions", "torch._C") or mod.startswith("torch._C"):
        mod = "torch"
    return f"{mod}.{name}" if mod and mod != "builtins" else name


def hint_for(name: str) -> str:
    """What qfx offers instead of the op called ``name`` (a module class or function name)."""
    low = name.lower()
    for frags, hint in _HINTS:
        if any(f in low for f in frags):
            return hint
    return SUPPORTED_SUMMARY


def function_hint(op: str, target: Any) -> str:
    """Capture's advice for a function/method in a qfx model: quantize_model converts it, or what to use instead."""
    spec = (METHOD_TWINS.get(target) if op == "call_method" else
            (FUNCTION_TWINS.get(target) if _hashable(target) else None))
    if spec is not None and spec.twin:
        return f"it runs unquantized here: pass the model through qfx.quantize_model (which makes it {spec.twin})"
    return hint_for(describe_target(op, target))


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


_TWIN_NAME = re.compile(r"(?:qfx[.]nn[.])?(Q[A-Za-z0-9]+)")
_TICKED = r"`\1`"


def supported_table() -> str:
    """Markdown table of what ``quantize_model`` converts, generated from the twin tables (README's list)."""
    mods: dict[str, list[str]] = {}
    for cls, fn in MODULE_TWINS.items():
        name = cls.__name__.lstrip("_").replace("ConstantPadNd", "ZeroPad2d / ConstantPad2d(p, 0)")
        name = name.replace("DropoutNd", "Dropout*")
        mods.setdefault(_MODULE_NOTES.get(cls, "(dropped)" if name in ("Identity", "Dropout*") else ""), []).append(
            f"`nn.{name}`")
    funcs: dict[str, list[str]] = {}
    for target, spec in FUNCTION_TWINS.items():
        if spec.twin:
            name = getattr(target, "__name__", "")
            d = f"F.{name}" if getattr(F, name, None) is target else describe_target("call_function", target)
            d = d.replace("torch.nn.functional.", "F.")
            funcs.setdefault(spec.twin, []).append(f"`{d}`")
    for name, spec in METHOD_TWINS.items():
        if spec.twin:
            funcs.setdefault(spec.twin, []).append(f"`.{name}()`")
    rows = ["| torch | becomes |", "|---|---|"]
    rows += [f"| {', '.join(v)} | {k} |" for k, v in mods.items()]
    rows += [f"| {', '.join(dict.fromkeys(v))} | {_TWIN_NAME.sub(_TICKED, k)} |" for k, v in funcs.items()]
    rows.append("| `flatten(x, d)` (d >= 1), `.view(n, -1)`, `.reshape`, `.squeeze(d)`, `.unsqueeze(d)` (d > 0), `.size()`, "
                "`.shape`, `.contiguous()`, `.float()`, `.to(torch.float32)`, `.type_as(y)` | kept as "
                "wires / dropped |")
    rows.append("| `x[:, a:b:k, ..., i]` (constant slices/indices of per-sample dims), `.narrow`, `torch.chunk`, "
                "`torch.split`, `.tensor_split`, `.transpose`, `.permute` (batch first), `.mT` | `slice` / `transpose` "
                "gathers (index maps) |")
    rows.append("| `torch.stack(xs, d)` (d >= 1) | `QStack` (reshape + concat) |")
    rows.append("| sizes read in forward (`c = x.size(1)`, `x.shape[2:]`, `c // g`) | constants (the batch size "
                "stays symbolic) |")
    rows.append("| `nn.Linear` on (N, L, C) or (N, H, W, C) | 1x1 `conv2d` between two `transpose` gathers |")
    rows.append("| `x * self.gamma`, `x + self.beta`, `x - self.beta` (an `nn.Parameter` read in forward: one value "
                "per channel or a scalar; (C,) on channels-last (N, H, W, C); one per element of the trailing dims: "
                "a positional embedding (1, L, E)) | `QParamAffine` (`scale_shift`, between `transpose` gathers when "
                "not on dim 1, per element over the flattened tensor; the parameter keeps training) |")
    rows.append("| buffers read in forward (`(x - self.mean) / self.std`), parameters through views "
                "(`self.gamma.view(1, -1, 1, 1)`, `self.gamma[:, None, None]`) | `QParamAffine` (a buffer is a "
                "frozen constant; division by it multiplies by its reciprocal) |")
    rows.append("| `F.linear(x, self.w, self.b)`, `F.conv1d/conv2d(x, self.w, ...)`, `x @ self.W`, `x @ self.W.t()`, "
                "`F.layer_norm(x, shape, self.w, self.b)` (torchvision's `LayerNorm2d`), `F.group_norm(x, G, self.w, "
                "self.b)` (the model's own parameters or buffers) | a `QLinear` / `QConv1d` / `QConv2d` / "
                "`QLayerNorm` / `QGroupNorm` holding them |")
    rows.append("| `nn.InstanceNorm1d`, `nn.GroupNorm` of (N, C, L), `nn.LayerNorm` over (C, L), (H, W) or (C, H, W), "
                "`x.var(dims)`, `x.std(dims)` (any correction), `F.threshold`, `nn.Threshold`, `x.repeat(1, ...)` | "
                "`QGroupNorm` (a size-1 W added for (N, C, L); LayerNorm's per-element affine as `QParamAffine`); "
                "mean, `QSub`, `QMul`, mean (times n / (n - correction)), a sqrt table; a `select_gt` table; "
                "`torch.cat` of copies |")
    rows.append("| `nn.LSTM`, `nn.GRU`, `nn.RNN` (any layers, bidirectional, batch_first or fed x.transpose(0, 1); "
                "zero initial state, also as torch.zeros(...) passed in; the output sequence, out[:, t] / out[t], "
                "h_n[k], c_n[k] read) | unrolled over "
                "the fixed sequence length: per layer and direction a `QLinear` for the input (both biases) and one "
                "for the state, shared by every step; gates as chunks through sigmoid/tanh tables, `QMul`, `QAdd` |")
    rows.append("| `x.flip(dims)`, `torch.flip`, `torch.fliplr`, `x.cumsum(d)` (per-sample dims of at most 64 "
                "elements) | `torch.cat` of one-element slices in reverse order; of the prefix sums |")
    rows.append("| `nn.GLU`, `F.glu`, `nn.RMSNorm`, `F.rms_norm`, `torch.rsqrt(v + eps)`, `torch.einsum` (one or two "
                "operands, no repeated letters: a batched matmul with one contracted letter, permutes, sums, "
                "elementwise/outer products) | their steps: chunk + sigmoid table + `QMul`; `QMul` + mean + an "
                "`rsqrt(eps)` table + `QMul` (+ `QParamAffine`); permutes, `QMatMul`, `QMul`, sums |")
    rows.append("| `torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)` (parameters expanded or repeated "
                "over the batch, before and/or after the tensors) | `QParamCat` (`zeropad2d` + per-element "
                "`scale_shift`; the parameters keep training) |")
    rows.append("| `nn.MultiheadAttention` (self- or cross-attention, `batch_first` either way, bias or not, "
                "dropout; no mask, or a causal / sliding-window `attn_mask` buffer or `is_causal=True`; the weights "
                "unused) | qfx.nn.transformer.`QMultiheadAttention`: `QLinear` q/k/v from `in_proj_weight` (keys "
                "kept), heads by reshape/transpose, `QMatMul`, `QConstScale` 1/sqrt(head_dim), row `QSoftmax` "
                "(masked: per row over its allowed keys, zero padding, lossless `QCat`), `QTrainOnly` dropout, "
                "`QMatMul`, `out_proj` `QLinear` |")
    rows.append("| `torch.where(x > c, a, b)`, `x.where(cond, b)`, `x.masked_fill(x < c, v)` (x compared with a "
                "constant; branches x, k * x, x + c or constants) | one `QActivation` table (`select_gt/ge/lt/le`) |")
    rows.append("| `F.scaled_dot_product_attention(q, k, v)` (no mask, no dropout, not causal; scale given or "
                "1/sqrt(E)) | written as its steps: `q @ k.transpose(-2, -1)` (`QMatMul`), `QConstScale`, row "
                "`QSoftmax`, `QMatMul` |")
    rows.append("| `nn.TransformerEncoderLayer` (relu / gelu, `norm_first`, `batch_first`), `nn.TransformerEncoder` "
                "(its layers, the final norm; no fast path, no nested tensors) | `QTransformerEncoderLayer` / "
                "`QTransformerEncoder`: the attention above, `QLayerNorm`, `QLinear`, `QReLU` / `QActivation`, `QAdd` "
                "residuals, `QTrainOnly` dropout |")
    rows.append("| `x.transpose(0, 1)`, `x.permute(1, 0, 2)` (sequence-first (S, N, E); on such tensors: "
                "element-wise ops, Linear/LayerNorm, softmax, reductions such as `h.mean(0)`, `h[-1]`, cat, "
                "chunk/split, timm's `qkv.permute(2, 0, 3, 1, 4).unbind(0)`) | wires: tensors stay batch-first in "
                "memory, dims renumbered (qfx.nn.layout); `unbind` parts are indexings |")
    rows.append("| a stateless module whose eval-mode `forward` returns its input (torchvision's `StochasticDepth`, "
                "timm's `DropPath`) | `QTrainOnly` (train mode: the module itself, random as in torch; eval and "
                "exact mode: a wire) |")
    return "\n".join(rows)


_MODULE_NOTES: dict[type, str] = {
    nn.Linear: "`QLinear`", nn.Conv2d: "`QConv2d` (any groups, dilation, 'same')", nn.Conv1d: "`QConv1d`",
    nn.ConvTranspose2d: "`QConvTranspose2d` (zero insertion + conv2d)", nn.ConvTranspose1d: "`QConvTranspose1d`",
    nn.BatchNorm1d: "`QBatchNorm1d` (affine=False: gamma 1, beta 0)", nn.BatchNorm2d: "`QBatchNorm2d`",
    nn.LayerNorm: "`QLayerNorm` (over the last dim of (N, ..., n): mean, sub, mul, rsqrt table, scale_shift ops)",
    nn.modules.dropout._DropoutNd: "`QTrainOnly` (train mode: torch's dropout; eval and exact mode: a wire)",
    nn.MaxPool2d: "`QMaxPool2d` (ceil_mode: a replicate pad, then the pool)",
    nn.ReLU: "`QReLU`", nn.ReLU6: "`QClippedReLU(6)`", nn.Hardtanh: "`QClippedReLU` (lo = 0) / `QClip`",
    nn.PReLU: "`QPReLU` (relu, sub, scale_shift, add ops)",
    nn.GroupNorm: "`QGroupNorm` (over (N, C, H, W): reshape, mean, sub, mul, rsqrt table, scale_shift ops)",
    nn.modules.instancenorm._InstanceNorm: "`QGroupNorm` (InstanceNorm2d: one group per channel)",
    **{k: "`QActivation` (lookup table)" for k in (nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Hardsigmoid,
                                                   nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.SELU,
                                                   nn.LogSigmoid, nn.Softsign, nn.Hardshrink, nn.Softshrink,
                                                   nn.Tanhshrink)},
    nn.Softmax: "`QSoftmax` (over any axis but the batch's; an inner one, e.g. the channels of (N, C, H, W), is moved last and back by transposes)",
    nn.LogSoftmax: "`QSoftmax` then `QActivation('log')` (over the last axis)",
    nn.MaxPool1d: "`QMaxPool1d`", nn.AvgPool1d: "`QAvgPool1d`",
    nn.AdaptiveAvgPool1d: "`QAdaptiveAvgPool2d`", nn.AdaptiveMaxPool2d: "`QAdaptiveMaxPool2d`",
    nn.AdaptiveMaxPool1d: "`QAdaptiveMaxPool2d`",
    nn.Upsample: "`QUpsample` (nearest) / `QUpsampleBilinear` (integer factors) / `QResize2d` (align_corners=True, "
                 "other sizes and factors: a constant matrix per axis, 1x1 `conv2d` between `transpose` gathers)",
    nn.AvgPool2d: "`QAvgPool2d` / `QAvgPoolMatrix` (ceil_mode, count_include_pad=False, divisor_override: a "
                  "constant matrix per axis like `QResize2d`)",
    nn.Embedding: "`QEmbedding` (integer indices: the model input becomes ap_uint<k>; one `lut` per column, "
                  "concatenated); read at constant positions (`self.pos(torch.arange(L))`, "
                  "`self.pos(self.position_ids[:, :L])`) its rows are a parameter added per element (`QParamAffine`)",
    nn.AdaptiveAvgPool2d: "`QGlobalAvgPool2d` (1) / `QAdaptiveAvgPool2d` (a window when k divides the input, else "
                          "`QResize2d`'s 'area' matrices)",
    nn.modules.padding._ConstantPadNd: "`QZeroPad2d`", nn.Flatten: "`QFlatten`",
    nn.Unflatten: "`QUnflatten` (a reshape)",
    nn.PixelShuffle: "`QPixelShuffle` (reshape, transpose, reshape: wires)",
    nn.PixelUnshuffle: "`QPixelShuffle(inverse=True)` (wires)",
    nn.modules.padding._ReplicationPadNd: "`QZeroPad2d` (replicate, 2-D)",
    nn.modules.padding._ReflectionPadNd: "`QZeroPad2d` (reflect, 2-D)",
}


# ============================================================================ tracing and rewriting
class _Tracer(torch.fx.Tracer):
    """qfx modules are leaves (their forward is never traced into), as in capture; so are the modules in
    ``leaves`` (ids: the train-only regularizers ``_train_only_modules`` found)."""

    def __init__(self, leaves: frozenset[int] = frozenset(), proxy_buffers: bool = False) -> None:
        super().__init__()
        self.leaves = leaves
        self.proxy_buffer_attributes = proxy_buffers

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QModule) or id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:200] if s else type(exc).__name__


def trace(model: nn.Module, leaves: frozenset[int] = frozenset()) -> torch.fx.Graph:
    """The fx graph of ``model.forward``; UnsupportedError (one line, the reason) when fx cannot trace it."""
    try:
        try:
            return _Tracer(leaves).trace(model)
        except (TypeError, IndexError) as first:
            # a buffer indexed by a traced size (self.position_ids[:, :x.shape[1]]) needs the buffer as a graph
            # value (get_attr); buffers stay concrete otherwise (attention masks are read as values)
            try:
                return _Tracer(leaves, proxy_buffers=True).trace(model)
            except Exception:
                raise first from None
    except QfxError:
        raise
    except Exception as exc:  # fx raises many types on untraceable Python
        raise UnsupportedError(f"cannot quantize {type(model).__name__}: torch.fx cannot trace its forward "
                               f"({type(exc).__name__}: {_first_line(exc)}); qfx needs a forward without "
                               "data-dependent Python control flow") from None


def _scope(n: torch.fx.Node) -> str:
    """Module path of the module whose forward made the call ('' = the root's forward)."""
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return str(path[0] if isinstance(path, tuple) else path)


def _is_inplace(n: torch.fx.Node) -> bool:
    if n.op == "call_method":
        return isinstance(n.target, str) and n.target.endswith("_") and not n.target.startswith("_")
    if n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        return (n.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv)
                or (name.endswith("_") and not name.startswith("_")) or n.kwargs.get("inplace") is True)
    return False


def _functionalize(graph: torch.fx.Graph) -> None:
    """After an in-place call ``f_(x)``, later readers of ``x`` read the call's result (what eager would see)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for n in list(graph.nodes):
        if not _is_inplace(n) or not n.args or not isinstance(n.args[0], torch.fx.Node):
            continue
        x = n.args[0]
        for u in list(x.users):
            if u is not n and order[u] > order[n]:
                u.replace_input_with(x, n)


def _live(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """Nodes whose value reaches the output."""
    out = [n for n in graph.nodes if n.op == "output"]
    seen: set[torch.fx.Node] = set()
    stack = list(out)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _where_module(path: str, m: nn.Module) -> str:
    return f"module '{path}' ({type(m).__module__}.{type(m).__name__})"


def _where_call(n: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str:
    scope = _scope(n)
    inside = f"in '{scope}' ({type(modules[scope]).__name__})" if scope in modules and scope else "in forward"
    return f"{describe_target(n.op, n.target)} (fx node '{n.name}' {inside})"


def _set_module(root: nn.Module, path: str, m: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, m)


def layer_bn_pairs(graph: torch.fx.Graph, modules: Mapping[str, nn.Module], layer_types: tuple[type, ...],
                   bn_types: tuple[type, ...], exclude: tuple[type, ...] = ()) -> list[tuple[torch.fx.Node,
                                                                                          torch.fx.Node]]:
    """(layer call, BN call) pairs where the BN reads the layer's output and nothing else does, and the layer is
    called once (shared weights cannot absorb one caller's BN): what BN folding may fold."""
    calls: dict[str, int] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls[str(n.target)] = calls.get(str(n.target), 0) + 1
    pairs = []
    for n in graph.nodes:
        if n.op != "call_module" or not isinstance(modules.get(str(n.target)), bn_types) or not n.args:
            continue
        prev = n.args[0]
        if (isinstance(prev, torch.fx.Node) and prev.op == "call_module" and len(prev.users) == 1
                and isinstance(modules.get(str(prev.target)), layer_types)
                and not isinstance(modules.get(str(prev.target)), exclude) and calls[str(prev.target)] == 1
                and calls[str(n.target)] == 1):
            pairs.append((prev, n))
    return pairs


def _fold_float_bn(body: nn.Module, graph: torch.fx.Graph) -> None:
    """``QFXConfig.fold_bn``: each float BatchNorm right after a float Linear/Conv2d is folded into it (running
    statistics); the BN's place holds an identity, so module paths and Sequential indices stay."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    modules = dict(body.named_modules())
    for layer_n, bn_n in layer_bn_pairs(graph, modules, (nn.Linear, nn.Conv1d, nn.Conv2d),
                                        (nn.BatchNorm1d, nn.BatchNorm2d), exclude=(QModule,)):
        layer, bn = modules[str(layer_n.target)], modules[str(bn_n.target)]
        fuse = fuse_conv_bn_eval if isinstance(layer, nn.modules.conv._ConvNd) else fuse_linear_bn_eval
        _set_module(body, str(layer_n.target), fuse(copy.deepcopy(layer).eval(), copy.deepcopy(bn).eval()))
        _set_module(body, str(bn_n.target), nn.Identity())


def _attr_value(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _free_path(root: nn.Module, scope: str, base: str) -> str:
    owner = root.get_submodule(scope) if scope else root
    name, i = base, 1
    while hasattr(owner, name):
        name = f"{base}_{i}"
        i += 1
    return f"{scope}.{name}" if scope else name


def convert_model(body: nn.Module, config: "QFXConfig", for_path: Callable[[str], "QFXConfig"],
                  input_quant: Callable[[int], QuantInput] | None = None, example: Any = None) -> nn.Module:
    """``body`` (a float model, modified in place) with every op it computes in fixed point; see the module doc.

    ``for_path(path)`` gives the config of the module at ``path`` (overrides applied). Raises UnsupportedError
    listing every op qfx cannot quantize, each with its module path or fx node and the alternative.
    ``input_quant(k)`` builds the QuantInput of input k when ``forward`` takes several tensors (each is quantized
    inside the returned GraphModule, as ``quant_<name>``); without it several inputs must be quantized by the
    model itself.
    """
    known, twin = module_twin(body, for_path(""))
    if known:  # the whole model is one layer
        if twin is None:
            raise UnsupportedError(f"cannot quantize {type(body).__name__}: the model is an identity")
        return twin
    body = expand_transformers(body, example)  # nn.MultiheadAttention / Transformer layers: plain-PyTorch composites
    train_only = _train_only_modules(body, example)
    graph = trace(body, train_only)
    _fold_sizes(body, graph, example)
    unrolled = _unroll_recurrents(body, graph, example)
    layout_problems = relabel_batch_swaps(body, graph, example, train_only)  # x.transpose(0, 1): a relabelling
    added_layers = _functional_layers(body, graph)  # F.layer_norm(x, s, self.weight) is a LayerNorm to decompose
    added_layers = _constant_lookups(body, graph) or added_layers
    _softmax_ranks(body, graph, example)
    decomposed = _decompose_composites(body, graph)
    _expand_sdpa(graph)
    _drop_broadcast_expands(graph)
    decomposed = _repeats_as_cats(graph) or decomposed
    _merge_repeated_calls(body, graph)
    _where_tables(graph)
    _param_views(body, graph)
    if config.fold_bn:
        _fold_float_bn(body, graph)
    _functionalize(graph)
    live = _live(graph)
    modules = dict(body.named_modules())
    problems: list[str] = list(layout_problems)
    module_swaps: dict[str, nn.Module | None] = {}  # path -> twin (None: dropped)
    node_actions: dict[torch.fx.Node, Any] = {}  # fx node -> _Replace | _Drop | ("retarget", base)
    shape_nodes: set[torch.fx.Node] = set()
    derived: set[torch.fx.Node] = set()  # arithmetic on sizes (h * w): refused where it is used
    pair_nodes: set[torch.fx.Node] = set()  # replaced calls that returned (values, indices)
    rewrite = added_layers or decomposed or unrolled  # forward's F.linear(x, self.weight) now calls a layer: the graph is the model
    placeholders = [n for n in graph.nodes if n.op == "placeholder" and n in live]
    if len(placeholders) > 1 and input_quant is not None:  # one input quantizer per tensor input
        for k, n in enumerate(placeholders):
            node_actions[n] = ("input", input_quant(k))
        rewrite = True

    for n in graph.nodes:
        if n not in live:
            continue
        if n.op == "placeholder":
            pass
        elif n.op == "get_attr":
            value = _attr_value(body, str(n.target))
            if isinstance(value, torch.Tensor) and value.is_floating_point() and n.users and all(
                    FUNCTION_TWINS.get(u.target) in _ARITH_SPECS if u.op == "call_function" and _hashable(u.target)
                    else u.op == "call_method" and METHOD_TWINS.get(str(u.target)) in _ARITH_SPECS
                    or isinstance(value, nn.Parameter) and _batch_broadcast(u, value) for u in n.users):
                n.meta["qfx_param"] = value  # x * self.gamma: the arithmetic's builder makes a QParamAffine
                for u in n.users:  # self.cls.expand(n, -1, -1) into torch.cat: the cat's builder makes a QParamCat
                    if _batch_broadcast(u, value):
                        u.meta[_PARAM_BATCH] = value
                continue
            problems.append(f"forward reads '{n.target}' directly (fx node '{n.name}'): only layers may hold "
                            "parameters and buffers; put the arithmetic in a module qfx converts")
        elif n.op == "call_module":
            path = str(n.target)
            m = modules[path]
            where = _where_module(path, m)
            try:
                if path in module_swaps:
                    twin = module_swaps[path]
                    stateless = not any(True for _ in m.parameters()) and not any(True for _ in m.buffers())
                    if twin is not None and stateless and not isinstance(m, QModule):
                        # a stateless layer called twice (e.g. one ReLU reused): one output format per tensor
                        node_actions[n] = ("retarget", path)
                        rewrite = True
                    continue
                if _SOFTMAX_RANK in n.meta:  # nn.Softmax(dim=1) of a 3-D tensor: refused here, not at calibration
                    bad = softmax_dim_problem(getattr(m, "dim", None), n.meta[_SOFTMAX_RANK])
                    if bad:
                        raise UnsupportedError(bad)
                if id(m) in train_only:  # StochasticDepth / DropPath: random in train mode, identity after
                    module_swaps[path] = QTrainOnly(m)
                    continue
                known, twin = module_twin(m, for_path(path))
                if not known:
                    problems.append(f"{where}: no fixed-point twin; {hint_for(type(m).__name__)}")
                    continue
                module_swaps[path] = twin
            except UnsupportedError as exc:
                problems.append(f"{where}: {exc}")
        elif n.op in ("call_function", "call_method"):
            if _PARAM_BATCH in n.meta:  # a parameter expanded over the batch: part of the QParamCat of its cat
                continue
            spec = (METHOD_TWINS.get(str(n.target)) if n.op == "call_method"
                    else FUNCTION_TWINS.get(n.target) if _hashable(n.target) else None)
            where = _where_call(n, modules)
            if spec is None and not any(a in shape_nodes for a in n.all_input_nodes):
                problems.append(f"{where}: no fixed-point twin; {hint_for(describe_target(n.op, n.target))}")
                continue
            if any(a in derived for a in n.all_input_nodes):
                problems.append(f"{where}: uses a size computed from tensor sizes in forward; use constant sizes "
                                "(reshape with -1: x.view(x.size(0), -1))")
                continue
            if spec is not _SHAPE and any(a in shape_nodes for a in n.all_input_nodes):
                if n.target in _SIZE_ARITHMETIC:  # refused where a layer or reshape uses the result
                    derived.add(n)
                else:
                    problems.append(f"{where}: takes a tensor size read in forward; use constant sizes")
                continue
            if spec is _SHAPE and n.target in (operator.getitem, getattr) and n.args[0] in pair_nodes:
                if len(n.args) > 1 and n.args[1] in (0, "values"):
                    node_actions[n] = _Drop(n.args[0])  # the values of (values, indices): the replaced node
                else:
                    problems.append(f"{where}: reads the indices of a max/min; qfx computes the values only")
                continue
            if spec is _INDEX or spec is _SHAPE and n.target is operator.getitem and n.args[0] not in shape_nodes:
                bad = _index_problem(n)  # x[...] / narrow / chunk / split / transpose: capture moves elements
                if bad:
                    problems.append(f"{where}: {bad}")
                continue
            if spec is _SHAPE and n.target is getattr and n.args[1] in ("mT", "mH"):
                # k.mT (attention's keys): the last two axes swapped, which capture lowers to a transpose gather
                n.op, n.target, n.args, n.kwargs = "call_method", "transpose", (n.args[0], -2, -1), {}
                rewrite = True
                continue
            if spec is _SHAPE:
                if n.target is getattr and n.args[1] != "shape":
                    problems.append(f"{where}: reading tensor attribute {n.args[1]!r}; only .shape is supported")
                    continue
                if n.target in ("size", getattr, operator.getitem):
                    shape_nodes.add(n)
                continue
            try:
                bound = _bind(spec, n)
                if spec is _INTERP and bound.get("size") is not None and _INTERP_SHAPE in n.meta:
                    f = size_to_factor(bound["size"], n.meta[_INTERP_SHAPE])
                    if f is not None:
                        bound = dict(bound, size=None, scale_factor=f)
                if _SOFTMAX_RANK in n.meta:
                    bad = softmax_dim_problem(bound.get("dim"), n.meta[_SOFTMAX_RANK])
                    if bad:
                        raise UnsupportedError(bad)
                action = spec.build(bound, for_path(_scope(n)))
            except UnsupportedError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if action is not _KEEP:
                node_actions[n] = action
                rewrite = True
                if isinstance(action, _Replace) and action.pair:
                    pair_nodes.add(n)
    if problems:
        raise UnsupportedError(f"cannot quantize {type(body).__name__}: {len(problems)} unsupported "
                               f"operation{'s' if len(problems) > 1 else ''}: "
                               + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))

    # a module registered under several paths (TCN: self.conv1 and self.net[0]) gets its twin at every path
    aliases: dict[int, list[str]] = {}
    for p, m in body.named_modules(remove_duplicate=False):
        aliases.setdefault(id(m), []).append(p)
    alias_of = {p: [a for a in aliases.get(id(modules[p]), [p]) if a != p] for p in module_swaps}
    dropped = {p for p, t in module_swaps.items() if t is None}
    for path, twin in module_swaps.items():
        if twin is not None:
            for p in [path] + alias_of[path]:
                _set_module(body, p, twin)
    dropped |= {a for p in dropped for a in alias_of[p]}
    if not rewrite:
        for path in dropped:  # keep the module structure (and Sequential indices): an identity in its place
            _set_module(body, path, nn.Identity())
        return body
    return _rewrite(body, graph, live, node_actions, dropped, for_path)


def _eval_trace_is_wiring(m: nn.Module, calls_ok: bool) -> bool:
    """Whether ``m.forward`` traced alone in eval mode only passes its input on: the graph returns the input
    placeholder, through calls of fx-wrapped Python functions (``calls_ok``; torchvision's ``stochastic_depth``)
    but no torch function, method or module (an in-place ``F.relu(x, inplace=True)`` returns its input too)."""
    was = {k: k.training for k in m.modules()}
    try:
        m.eval()
        g = _Tracer().trace(m)
    except Exception:  # forward takes several inputs, or does not trace: not a regularizer qfx can recognise
        return False
    finally:
        for k, t in was.items():
            k.training = t
    phs = [n for n in g.nodes if n.op == "placeholder"]
    calls = [n for n in g.nodes if n.op not in ("placeholder", "output")]
    out = [n for n in g.nodes if n.op == "output"][0].args[0]
    if len(phs) != 1 or not isinstance(out, torch.fx.Node):
        return False
    if not calls:
        return out is phs[0]
    return calls_ok and all(n.op == "call_function" and not _is_torch_module(getattr(n.target, "__module__", None)
                                                                             or "torch") for n in calls)


def _is_torch_module(name: str) -> bool:
    """torch itself or a submodule; torchvision and torchaudio are user-level libraries here."""
    return name == "torch" or name.startswith("torch.")


def _train_only_modules(body: nn.Module, examples: Any) -> frozenset[int]:
    """ids of the user modules that are identities at inference only: torchvision's ``StochasticDepth``, timm's
    ``DropPath``, a hand-written dropout. They become ``QTrainOnly`` (fx leaves): in train mode they run as written
    (torch's randomness), in eval and exact mode they are wires. A module qualifies when it has no parameters or
    buffers, is not a torch.nn class, its eval-mode trace only passes its input on (``_eval_trace_is_wiring``) and,
    with example inputs, running the float model once in eval mode shows it return its input object with the values
    unchanged on every call. Without examples only a trace that returns the input itself qualifies."""
    cands = {id(m): m for p, m in body.named_modules() if p and not isinstance(m, QModule)
             and not type(m).__module__.startswith("torch.") and not any(True for _ in m.parameters())
             and not any(True for _ in m.buffers())}
    if not cands:
        return frozenset()
    xs = [t for t in (examples if isinstance(examples, (tuple, list)) else [examples]) if isinstance(t, torch.Tensor)]
    seen: dict[int, bool] = {}
    if xs:
        before: dict[int, list[torch.Tensor]] = {}

        def pre(m: nn.Module, args: tuple) -> None:
            before.setdefault(id(m), []).append(args[0].clone() if len(args) == 1 and isinstance(args[0], torch.Tensor)
                                                else None)

        def post(m: nn.Module, args: tuple, out: Any) -> None:
            x0 = before[id(m)].pop()
            same = x0 is not None and out is args[0] and torch.equal(out, x0)
            seen[id(m)] = seen.get(id(m), True) and same

        hooks = [h for m in cands.values() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
        modes = {m: m.training for m in body.modules()}
        try:
            body.eval()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                body(*(torch.cat([t[:1]] * 2).clone() for t in xs))
        except Exception:  # the refusal path reports what fails; only the trace decides
            seen = {}
            xs = []
        finally:
            for h in hooks:
                h.remove()
            for m, tr in modes.items():
                m.training = tr
    found = set()
    for i, m in cands.items():
        if xs and seen.get(i) and _eval_trace_is_wiring(m, True) or not xs and _eval_trace_is_wiring(m, False):
            found.add(i)
    return frozenset(found)


def _dim_arg(n: torch.fx.Node, pos: int, key: str) -> Any:
    return n.args[pos] if len(n.args) > pos else n.kwargs.get(key)


def _index_problem(n: torch.fx.Node) -> str | None:
    """Why an element-moving call cannot be captured (it touches the batch dim), or None; checked before
    training. Sizes are constants by now (``_fold_sizes``)."""
    t = _call_name(n)
    if t == "getitem":
        idx = n.args[1]
        if isinstance(n.args[0], torch.fx.Node) and n.args[0].target in (torch.chunk, torch.split, "chunk",
                                                                            "split", torch.tensor_split,
                                                                            "tensor_split"):
            return None if isinstance(idx, int) else "select the parts of chunk/split with constant indices"
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.fx.Node) for i in items) or any(
                isinstance(i, slice) and any(isinstance(v, torch.fx.Node) for v in (i.start, i.stop, i.step))
                for i in items):
            return "indexing with a tensor or a computed index; slice with constants (x[:, a:b], x[..., -1])"
        first = items[0] if items else None
        if not (first is Ellipsis or first == slice(None)):
            return "indexing the batch dim (dim 0); index the per-sample dims (x[:, a:b])"
        return None
    if t in ("transpose", "swapaxes"):
        dims = [_dim_arg(n, 1, "dim0"), _dim_arg(n, 2, "dim1")]
    elif t == "permute":
        dims = list(n.args[1]) if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else list(n.args[1:])
        dims = dims or list(n.kwargs.get("dims", ()))
        if any(not isinstance(d, int) for d in dims):
            return "permute with computed dims; use constants"
        return None if dims and dims[0] % len(dims) == 0 else "permute moving the batch dim; keep dim 0 first"
    else:  # narrow(dim, ...), chunk(n, dim=0), split(size, dim=0)
        dims = [_dim_arg(n, 1, "dim")] if t == "narrow" else [_dim_arg(n, 2, "dim") or 0]
    if any(not isinstance(d, int) for d in dims):
        return f"{t} with a computed dim; use constants"
    return f"{t} along dim 0 (the batch); use dims >= 1" if 0 in dims else None


#: fx node meta key: the rank (batch included) of a softmax call's input, when an example input showed it
_SOFTMAX_RANK = "qfx_softmax_rank"
_INTERP_SHAPE = "qfx_interp_shape"


def _softmax_calls(body: nn.Module, graph: torch.fx.Graph) -> list[torch.fx.Node]:
    modules = dict(body.named_modules())
    fns = (F.softmax, torch.softmax, F.log_softmax, torch.log_softmax)
    return [n for n in graph.nodes if n.args and (
        n.op == "call_function" and _hashable(n.target) and n.target in fns
        or n.op == "call_method" and n.target in ("softmax", "log_softmax")
        or n.op == "call_module" and isinstance(modules.get(str(n.target)), (nn.Softmax, nn.LogSoftmax)))]


def example_values(body: nn.Module, graph: torch.fx.Graph, xs: list[torch.Tensor]) -> dict[str, Any] | None:
    """Every node's value on a batch of 2 of the example inputs (eval mode, no_grad, inputs cloned; the modules'
    train/eval flags restored), or None if the float graph fails there (the refusal path then reports it)."""
    vals: dict[str, Any] = {}

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            v = super().run_node(n)
            vals[n.name] = v
            return v

    modes = {m: m.training for m in body.modules()}
    gm = torch.fx.GraphModule(body, copy.deepcopy(graph))
    try:
        body.eval()
        with torch.no_grad():
            _Rec(gm).run(*(torch.cat([t[:1]] * 2).clone() for t in xs))
    except Exception:
        return None
    finally:
        for m, tr in modes.items():
            m.training = tr
    return vals


def _interp_calls(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    fns = (F.interpolate, F.upsample, F.upsample_nearest)
    return [n for n in graph.nodes if n.op == "call_function" and _hashable(n.target) and n.target in fns
            and n.args and isinstance(n.args[0], torch.fx.Node)]


_STAT_METHODS = ("var", "std")


def _stat_calls(body: nn.Module, graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """Calls whose rewrite needs the input's shape: var/std (the count), flip / cumsum / repeat (the sizes),
    LayerNorm over several dims, InstanceNorm1d and GroupNorm (the rank)."""
    modules = dict(body.named_modules())
    return [n for n in graph.nodes if n.args and isinstance(n.args[0], torch.fx.Node) and (
        n.op == "call_method" and n.target in _STAT_METHODS
        or n.op == "call_function" and _hashable(n.target) and n.target in (torch.var, torch.std)
        or n.op == "call_method" and n.target in ("repeat", "flip", "cumsum", "fliplr", "flipud", "unbind")
        or n.op == "call_function" and _hashable(n.target) and n.target is torch.unbind
        or n.op == "call_function" and _hashable(n.target) and n.target in (torch.flip, torch.cumsum, torch.fliplr,
                                                                             torch.flipud)
        or n.op == "call_module" and (isinstance(modules.get(str(n.target)), (nn.InstanceNorm1d, nn.GroupNorm))
                                      or isinstance(modules.get(str(n.target)), nn.LayerNorm)
                                      and len(modules[str(n.target)].normalized_shape) > 1))]


def _softmax_ranks(body: nn.Module, graph: torch.fx.Graph, examples: Any) -> None:
    """Record the input rank of every softmax call (``n.meta[_SOFTMAX_RANK]``) and the input shape of every
    ``F.interpolate`` call (``n.meta[_INTERP_SHAPE]``) by running the float graph once on the example inputs, so
    softmax over the batch axis (or no axis) is refused by ``quantize_model`` (before any training) even when the
    dim alone cannot tell (dim=-3 of a rank-3 tensor), and ``interpolate(size=...)`` (U-Nets: ``size=skip.shape[2:]``)
    becomes its integer scale factor."""
    xs = [t for t in (examples if isinstance(examples, (tuple, list)) else [examples]) if isinstance(t, torch.Tensor)]
    calls, interps = _softmax_calls(body, graph), _interp_calls(graph) + _sdpa_calls(graph) + _stat_calls(body, graph)
    if not xs or not calls and not interps:
        return
    want = {n.name: n.args[0] for n in calls + interps if isinstance(n.args[0], torch.fx.Node)}
    vals = example_values(body, graph, xs)
    if vals is None:  # the refusal path reports what fails; QSoftmax checks the rank again when it runs
        return
    shapes = {k: tuple(v.shape) for k, v in vals.items() if isinstance(v, torch.Tensor)}
    for n in calls + interps:
        src = want.get(n.name)
        if src is not None and src.name in shapes:
            if n in interps:
                n.meta[_INTERP_SHAPE] = shapes[src.name]
            else:
                n.meta[_SOFTMAX_RANK] = len(shapes[src.name])


def _sdpa_calls(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function" and _hashable(n.target)
            and n.target is F.scaled_dot_product_attention and n.args and isinstance(n.args[0], torch.fx.Node)]


_BROADCASTING = frozenset({operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                           torch.add, torch.sub, torch.mul, torch.multiply, torch.subtract})
_BROADCASTING_METHODS = frozenset({"add", "sub", "mul", "multiply", "subtract"})


def _drop_broadcast_expands(graph: torch.fx.Graph) -> None:
    """``y.expand_as(x)`` / ``y.expand(...)`` read only by ``x * y``, ``x + y``, ``x - y`` (SENet's ``x *
    y.expand_as(x)``): the arithmetic broadcasts the same values, so the expand is dropped and the op broadcasts
    (QMul/QAdd/QSub repeat a per-channel or per-sample operand). Expands read by anything else stay (refused)."""
    for n in list(graph.nodes):
        if not (n.op == "call_method" and n.target in ("expand", "expand_as") and n.args
                and isinstance(n.args[0], torch.fx.Node)):
            continue
        users = list(n.users)
        if users and all(u.op == "call_function" and _hashable(u.target) and u.target in _BROADCASTING
                         or u.op == "call_method" and u.target in _BROADCASTING_METHODS for u in users):
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)


_CMP_FUNCS = {operator.gt: "gt", operator.ge: "ge", operator.lt: "lt", operator.le: "le", torch.gt: "gt",
              torch.ge: "ge", torch.lt: "lt", torch.le: "le", torch.greater: "gt", torch.greater_equal: "ge",
              torch.less: "lt", torch.less_equal: "le"}
_CMP_METHODS = {"gt": "gt", "ge": "ge", "lt": "lt", "le": "le", "greater": "gt", "greater_equal": "ge",
                "less": "lt", "less_equal": "le"}
_FLIP = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _comparison(v: Any) -> tuple[torch.fx.Node, str, float] | None:
    """``x > c`` / ``c <= x`` / ``x.lt(c)`` of a tensor and a Python number: (x, op, c) with x on the left."""
    if not isinstance(v, torch.fx.Node) or len(v.args) != 2 or v.kwargs:
        return None
    op = (_CMP_FUNCS.get(v.target) if v.op == "call_function" and _hashable(v.target) else
          _CMP_METHODS.get(v.target) if v.op == "call_method" else None)
    if op is None:
        return None
    a, b = v.args
    if isinstance(a, torch.fx.Node) and _number(b):
        return a, op, float(b)
    if isinstance(b, torch.fx.Node) and _number(a):
        return b, _FLIP[op], float(a)
    return None


def _affine_in(v: Any, x: torch.fx.Node) -> tuple[float, float] | None:
    """``v`` as ``k * x + c`` (x itself, a number, x * k, k * x, x / k, -x, x + c, x - c, c - x), or None."""
    if v is x:
        return 1.0, 0.0
    if _number(v):
        return 0.0, float(v)
    if not isinstance(v, torch.fx.Node) or v.kwargs or len(v.args) not in (1, 2):
        return None
    t = v.target
    name = t if v.op == "call_method" else {operator.mul: "mul", torch.mul: "mul", operator.truediv: "div",
                                           torch.div: "div", operator.neg: "neg", torch.neg: "neg",
                                           operator.add: "add", torch.add: "add", operator.sub: "sub",
                                           torch.sub: "sub"}.get(t) if _hashable(t) else None
    args = v.args
    if name == "neg" and args == (x,):
        return -1.0, 0.0
    if len(args) != 2:
        return None
    a, b = args
    if name == "mul" and (a is x and _number(b) or b is x and _number(a)):
        return float(b if a is x else a), 0.0
    if name == "div" and a is x and _number(b) and b != 0:
        return 1.0 / float(b), 0.0
    if name == "add" and (a is x and _number(b) or b is x and _number(a)):
        return 1.0, float(b if a is x else a)
    if name == "sub" and a is x and _number(b):
        return 1.0, -float(b)
    if name == "sub" and b is x and _number(a):
        return -1.0, float(a)
    return None


_PURE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _merge_repeated_calls(body: nn.Module, graph: torch.fx.Graph) -> None:
    """A stateless layer called again on the same input (``torch.where(self.c(x) > 0, self.c(x), ...)``) gives the
    same tensor: later calls read the first one's result, so selections and products see one tensor."""
    modules = dict(body.named_modules())
    seen: dict[tuple[Any, ...], torch.fx.Node] = {}
    for n in list(graph.nodes):
        if n.op != "call_module" or not isinstance(modules.get(str(n.target)), _PURE_MODULES) or n.kwargs:
            continue
        key = (str(n.target), n.args)
        try:
            first = seen.setdefault(key, n)
        except TypeError:  # an unhashable argument: leave the call alone
            continue
        if first is not n:
            n.replace_all_uses_with(first)
            graph.erase_node(n)


def _where_tables(graph: torch.fx.Graph) -> None:
    """``torch.where(x > c, a, b)`` / ``x.masked_fill(x < c, v)`` whose branches are affine in x or constants
    (hand-written LeakyReLU, thresholds, clamps to a value) become one table of x (``select_*``): the comparison
    and both branches exactly as the float model computes them at every input code. Other selections stay and
    are refused with the rest."""
    from qfx.fixed.tables import select_spec

    for n in list(graph.nodes):
        if n.op == "call_function" and _hashable(n.target) and n.target is torch.where and len(n.args) == 3:
            cond, a, b = n.args
        elif n.op == "call_method" and n.target == "where" and len(n.args) == 3:
            a, cond, b = n.args
        elif n.op == "call_method" and n.target in ("masked_fill", "masked_fill_") and len(n.args) == 3:
            b, cond, a = n.args
        elif n.op == "call_function" and _hashable(n.target) and n.target is torch.masked_fill and len(n.args) == 3:
            b, cond, a = n.args
        else:
            continue
        if n.kwargs:
            continue
        cmp = _comparison(cond)
        if cmp is None:
            continue
        x, op, c = cmp
        fa, fb = _affine_in(a, x), _affine_in(b, x)
        if fa is None or fb is None:
            continue
        with graph.inserting_before(n):
            new = graph.call_function(table_select, (x, select_spec(op, c, *fa, *fb)))
        n.replace_all_uses_with(new)
        graph.erase_node(n)


class _FxEinsum:
    """``qfx.nn.einsum``'s builder for fx graphs (nodes inserted at the graph's insertion point)."""

    def __init__(self, graph: torch.fx.Graph) -> None:
        self.g = graph

    def sum(self, x: Any, axes: tuple[int, ...]) -> Any:
        return self.g.call_method("sum", (x, axes))

    def permute(self, x: Any, perm: tuple[int, ...]) -> Any:
        return self.g.call_method("permute", (x, *perm))

    def unsqueeze(self, x: Any, axis: int) -> Any:
        return self.g.call_method("unsqueeze", (x, axis))

    def squeeze(self, x: Any, axis: int) -> Any:
        return self.g.call_method("squeeze", (x, axis))

    def matmul(self, a: Any, b: Any) -> Any:
        return self.g.call_function(operator.matmul, (a, b))

    def mul(self, a: Any, b: Any) -> Any:
        return self.g.call_function(operator.mul, (a, b))


def _const_add(v: Any) -> tuple[torch.fx.Node, float] | None:
    """(t, c) when ``v`` is ``t + c`` / ``c + t`` with c > 0 a Python number and v read only once, else None."""
    if not isinstance(v, torch.fx.Node) or len(v.users) != 1 or v.kwargs or len(v.args) != 2 or not (
            v.op == "call_function" and _hashable(v.target) and v.target in (operator.add, torch.add)
            or v.op == "call_method" and v.target == "add"):
        return None
    a, b = v.args
    t, c = (a, b) if isinstance(a, torch.fx.Node) else (b, a)
    if not isinstance(t, torch.fx.Node) or not _number(c) or c <= 0:
        return None
    return t, float(c)


def _threshold_sig(input: Any, threshold: Any, value: Any, inplace: bool = False) -> None: ...


def _var_sig(input: Any, dim: Any = None, unbiased: Any = None, keepdim: bool = False, *, correction: Any = None
             ) -> None: ...


def _variance_nodes(graph: torch.fx.Graph, n: torch.fx.Node, shape: tuple[int, ...]) -> torch.fx.Node | None:
    """``x.var(dim)`` / ``x.std(dim)`` (and torch.var/std) over per-sample dims as ``mean((x - mean) ** 2)``
    times n / (n - correction) (Bessel's by default), square-rooted for std; None (refused) over all elements."""
    try:
        a = inspect.signature(_var_sig).bind(*n.args, **n.kwargs).arguments
    except TypeError:
        return None
    dim, x, keep = a.get("dim"), a["input"], a.get("keepdim", False)
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (tuple, list)) else None
    if not dims or any(not isinstance(d, int) or d % len(shape) == 0 for d in dims) or keep not in (True, False):
        return None
    corr = a.get("correction")
    corr = (0 if a.get("unbiased") is False else 1) if corr is None else corr
    count = int(np.prod([shape[d] for d in dims]))
    if not _number(corr) or count - corr <= 0:
        return None
    dims = tuple(d % len(shape) for d in dims)
    m = graph.call_method("mean", (x, dims), {"keepdim": True})
    d = graph.call_function(operator.sub, (x, m))
    v = graph.call_method("mean", (graph.call_function(operator.mul, (d, d)), dims), {"keepdim": keep})
    if corr:
        v = graph.call_function(operator.mul, (v, count / (count - corr)))
    std = n.target in ("std", torch.std)
    return graph.call_function(torch.sqrt, (v,)) if std else v


def _norm_as_groupnorm(body: nn.Module, graph: torch.fx.Graph, n: torch.fx.Node, mod: nn.Module,
                       shape: tuple[int, ...]) -> torch.fx.Node | None:
    """Normalizations QGroupNorm computes once the input is (N, C, H, W): InstanceNorm1d and GroupNorm of
    (N, C, L) (a size-1 W added and removed), LayerNorm over (C, H, W) (GroupNorm(1, C)), over (H, W)
    (GroupNorm(C, C)) or over (C, L) of (N, C, L); LayerNorm's per-element weight and bias then scale and shift
    (QParamAffine, the parameters keep training). None (refused as before) for other shapes."""
    x = n.args[0]
    rank = len(shape)
    if isinstance(mod, nn.LayerNorm):
        k = len(mod.normalized_shape)
        if tuple(shape[rank - k:]) != tuple(mod.normalized_shape) or rank not in (3, 4) or k < 2 or \
                k not in (rank - 1, 2):
            return None
        chans = shape[1]
        norm: nn.Module = nn.GroupNorm(1 if k == rank - 1 else chans, chans, mod.eps, affine=False)
    elif isinstance(mod, nn.InstanceNorm1d):
        if rank != 3 or mod.track_running_stats:
            return None
        norm = nn.InstanceNorm2d(mod.num_features, mod.eps, affine=mod.affine)
        if mod.affine:
            norm.weight, norm.bias = mod.weight, mod.bias
    else:  # GroupNorm: only its (N, C, L) form needs the size-1 W
        if rank != 3:
            return None
        norm = nn.GroupNorm(mod.num_groups, mod.num_channels, mod.eps, affine=mod.affine)
        if mod.affine:
            norm.weight, norm.bias = mod.weight, mod.bias
    path = _free_path(body, "", f"{str(n.target).replace('.', '_')}_as_groupnorm")
    body.add_module(path, norm)
    y = graph.call_module(path, (graph.call_method("unsqueeze", (x, -1)) if rank == 3 else x,))
    if rank == 3:
        y = graph.call_method("squeeze", (y, -1))
    if isinstance(mod, nn.LayerNorm) and mod.weight is not None:
        y = graph.call_function(operator.mul, (y, graph.get_attr(f"{n.target}.weight")))
    if isinstance(mod, nn.LayerNorm) and getattr(mod, "bias", None) is not None:
        y = graph.call_function(operator.add, (y, graph.get_attr(f"{n.target}.bias")))
    return y


def _swaps_01(u: Any) -> bool:
    """Whether ``u`` is ``t.transpose(0, 1)`` / ``t.permute(1, 0, 2)``: a sequence-first view of a batch-first
    tensor (or back)."""
    return isinstance(u, torch.fx.Node) and u.op == "call_method" and not u.kwargs and (
        u.target == "transpose" and tuple(u.args[1:]) in ((0, 1), (1, 0))
        or u.target == "permute" and tuple(u.args[1:]) in ((1, 0, 2), ((1, 0, 2),)))


def _recurrent_uses(n: torch.fx.Node, kind: str, n_final: int, batch_first: bool
                    ) -> dict[torch.fx.Node, tuple[str, Any]] | None:
    """How the results of a recurrent layer's call ``n`` are read, each read as (what, which): ("seq", None) the
    output sequence batch first, ("step", t) one step of it, ("final", (state, k)) entry k of h_n (state 0) or c_n
    (state 1). None when a read is none of these (the layer then stays and is refused)."""
    uses: dict[torch.fx.Node, tuple[str, Any]] = {}

    def index(u: torch.fx.Node) -> Any:
        return u.args[1] if u.op == "call_function" and u.target is operator.getitem and len(u.args) == 2 else None

    for u in n.users:
        which = index(u)
        if which == 0 and batch_first:  # the output sequence, (N, T, H * dirs)
            uses[u] = ("seq", None)
        elif which == 0:  # (T, N, H * dirs): out[t] or out.transpose(0, 1)
            for v in u.users:
                k = index(v)
                if isinstance(k, int) and not isinstance(k, bool):
                    uses[v] = ("step", k)
                elif _swaps_01(v):
                    uses[v] = ("seq", None)
                else:
                    return None
        elif which == 1:  # (h_n, c_n) for LSTM, h_n otherwise
            finals: list[tuple[torch.fx.Node, int]] = []
            if kind == "LSTM":
                for v in u.users:
                    if index(v) not in (0, 1):
                        return None
                    finals.append((v, index(v)))
            else:
                finals.append((u, 0))
            for f, state in finals:
                for v in f.users:
                    k = index(v)
                    if isinstance(k, int) and not isinstance(k, bool) and -n_final <= k < n_final:
                        uses[v] = ("final", (state, k % n_final))
                    elif v.op == "call_method" and v.target == "squeeze" and tuple(v.args[1:]) in ((), (0,)) and \
                            not v.kwargs and n_final == 1:
                        uses[v] = ("final", (state, 0))
                    else:
                        return None
        else:
            return None
    return uses


_ZERO_MAKERS = (torch.zeros, torch.zeros_like)
_PASS_METHODS = ("to", "cuda", "cpu", "float", "detach", "requires_grad_", "contiguous", "type_as")


def _is_zeros(v: Any) -> bool:
    """Whether ``v`` is a tensor of zeros made in forward (``torch.zeros(layers, x.size(0), h)``,
    ``torch.zeros_like``, ``x.new_zeros(...)``, then ``.to(x.device)`` and the like): a recurrent layer's explicit
    zero initial state, the same as none."""
    while isinstance(v, torch.fx.Node) and v.op == "call_method" and v.target in _PASS_METHODS and v.args:
        v = v.args[0]
    if not isinstance(v, torch.fx.Node):
        return False
    if v.op == "call_function" and _hashable(v.target) and v.target in _ZERO_MAKERS:
        return True
    return v.op == "call_method" and v.target in ("new_zeros", "zero_")


def _unroll_recurrent(body: nn.Module, graph: torch.fx.Graph, n: torch.fx.Node, mod: nn.RNNBase,
                      shape: tuple[int, ...]) -> bool:
    """nn.LSTM / nn.GRU / nn.RNN over a fixed sequence length, unrolled into what one step computes: per layer and
    direction an nn.Linear for the input (both biases where they add) and one for the state, called at every step
    (shared weights and formats), the gates as chunks through sigmoid/tanh tables, QMul and QAdd. The zero initial
    state drops the state terms of the first step. Reads of the results: the output sequence (batch_first, or
    ``out[t]`` / ``out.transpose(0, 1)`` of a sequence-first layer), ``h_n[k]`` / ``c_n[k]`` / ``h_n.squeeze(0)``.
    A sequence-first layer must read ``x.transpose(0, 1)`` / ``x.permute(1, 0, 2)`` of a batch-first tensor. An
    initial state made of zeros in forward (``torch.zeros(layers, x.size(0), hidden)``) is the zero state.
    False (the layer stays and is refused) for another initial state, projections, other reads."""
    kind = type(mod).__name__
    state = n.args[1] if len(n.args) > 1 else n.kwargs.get("hx")
    if state is not None and not all(_is_zeros(v) for v in (state if isinstance(state, (tuple, list)) else (state,))):
        return False
    if set(n.kwargs) - {"hx"} or len(n.args) > 2 or getattr(mod, "proj_size", 0) or len(shape) != 3:
        return False
    layers, dirs, hid = mod.num_layers, 2 if mod.bidirectional else 1, mod.hidden_size
    uses = _recurrent_uses(n, kind, layers * dirs, mod.batch_first)
    if uses is None:
        return False
    x = n.args[0]
    if not mod.batch_first:  # the layer reads x.transpose(0, 1) of a batch-first x: read x itself
        if not _swaps_01(x):
            return False
        x = x.args[0]
        steps = shape[0]
    else:
        steps = shape[1]
    act = {"RNN_TANH": torch.tanh, "RNN_RELU": F.relu}.get(getattr(mod, "mode", ""), torch.tanh)
    base = str(n.target).replace(".", "_")

    def layer(name: str, w: torch.Tensor, b: torch.Tensor | None) -> str:
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        path = _free_path(body, "", f"{base}_{name}")
        body.add_module(path, lin)
        return path

    def call(fn: Any, *args: Any) -> torch.fx.Node:
        return graph.call_function(fn, args)

    inputs = [call(operator.getitem, x, (slice(None), t)) for t in range(steps)]
    finals: list[tuple[torch.fx.Node, torch.fx.Node | None]] = []
    for lay in range(layers):
        outs_by_dir = []
        for d in range(dirs):
            sfx = f"_l{lay}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(mod, f"weight_ih{sfx}"), getattr(mod, f"weight_hh{sfx}")
            b_ih = getattr(mod, f"bias_ih{sfx}") if mod.bias else None
            b_hh = getattr(mod, f"bias_hh{sfx}") if mod.bias else None
            if kind == "GRU":  # r and z: both biases on the input side; n: b_hn stays inside r * (W_hn h + b_hn)
                b_in = None if b_ih is None else torch.cat([b_ih[:2 * hid] + b_hh[:2 * hid], b_ih[2 * hid:]])
                b_st = None if b_hh is None else torch.cat([torch.zeros(2 * hid), b_hh[2 * hid:]])
            else:
                b_in = None if b_ih is None else b_ih + b_hh
                b_st = None
            ih = layer(f"ih{sfx}", w_ih.detach(), None if b_in is None else b_in.detach())
            hh = layer(f"hh{sfx}", w_hh.detach(), None if b_st is None else b_st.detach())
            if kind == "GRU" and b_st is not None:
                bn = _free_path(body, "", f"{base}_bhn{sfx}")
                body.register_buffer(bn, b_st[2 * hid:].detach().clone())
            h = c = None
            outs: list[torch.fx.Node | None] = [None] * steps
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                a = graph.call_module(ih, (inputs[t],))
                if kind == "LSTM":
                    g = a if h is None else call(operator.add, a, graph.call_module(hh, (h,)))
                    parts = graph.call_method("chunk", (g, 4, 1))
                    i_, f_, g_, o_ = (call(operator.getitem, parts, k) for k in range(4))
                    i_, f_, o_ = call(torch.sigmoid, i_), call(torch.sigmoid, f_), call(torch.sigmoid, o_)
                    ig = call(operator.mul, i_, call(torch.tanh, g_))
                    c = ig if c is None else call(operator.add, call(operator.mul, f_, c), ig)
                    h = call(operator.mul, o_, call(torch.tanh, c))
                elif kind == "GRU":
                    pa = graph.call_method("chunk", (a, 3, 1))
                    a_r, a_z, a_n = (call(operator.getitem, pa, k) for k in range(3))
                    if h is None:
                        r, z = call(torch.sigmoid, a_r), call(torch.sigmoid, a_z)
                        rn = call(operator.mul, r, graph.get_attr(bn)) if b_st is not None else None
                        nn_ = call(torch.tanh, a_n if rn is None else call(operator.add, a_n, rn))
                        h = call(operator.sub, nn_, call(operator.mul, z, nn_))
                    else:
                        ph = graph.call_method("chunk", (graph.call_module(hh, (h,)), 3, 1))
                        h_r, h_z, h_n = (call(operator.getitem, ph, k) for k in range(3))
                        r = call(torch.sigmoid, call(operator.add, a_r, h_r))
                        z = call(torch.sigmoid, call(operator.add, a_z, h_z))
                        nn_ = call(torch.tanh, call(operator.add, a_n, call(operator.mul, r, h_n)))
                        h = call(operator.add, nn_, call(operator.mul, z, call(operator.sub, h, nn_)))
                else:
                    g = a if h is None else call(operator.add, a, graph.call_module(hh, (h,)))
                    h = call(act, g)
                outs[t] = h
            outs_by_dir.append(outs)
            finals.append((h, c))
        inputs = [outs_by_dir[0][t] if dirs == 1 else call(torch.cat, [outs_by_dir[0][t], outs_by_dir[1][t]], 1)
                  for t in range(steps)]
        if mod.dropout and lay < layers - 1:  # between layers, in training only (QTrainOnly)
            inputs = [graph.call_function(F.dropout, (v,), {"p": float(mod.dropout), "training": True})
                      for v in inputs]
    seq = None
    for u, (what, which) in uses.items():
        if what == "seq":
            seq = seq or call(torch.stack, inputs, 1)
            new = seq
        elif what == "step":
            new = inputs[which]
        else:
            state, k = which
            new = finals[k][state]
            if new is None:
                return False
        u.replace_all_uses_with(new)
    _erase_dead_from(graph, n)
    return True


def _unroll_recurrents(body: nn.Module, graph: torch.fx.Graph, examples: Any) -> bool:
    """Every nn.LSTM / nn.GRU / nn.RNN call ``_unroll_recurrent`` can unroll, unrolled (before the batch-swap
    relabelling, so a sequence-first layer's transposes go with it); the sequence length comes from one run of
    the float graph on the example inputs."""
    modules = dict(body.named_modules())
    calls = [n for n in graph.nodes if n.op == "call_module" and n.args and isinstance(n.args[0], torch.fx.Node)
             and isinstance(modules.get(str(n.target)), (nn.LSTM, nn.GRU, nn.RNN))]
    xs = [t for t in (examples if isinstance(examples, (tuple, list)) else [examples]) if isinstance(t, torch.Tensor)]
    if not calls or not xs:
        return False
    vals = example_values(body, graph, xs)
    if vals is None:
        return False
    changed = False
    for n in calls:
        v = vals.get(n.args[0].name)
        if isinstance(v, torch.Tensor):
            with graph.inserting_before(n):
                changed = _unroll_recurrent(body, graph, n, modules[str(n.target)], tuple(v.shape)) or changed
    called = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    for path in {str(n.target) for n in calls} - called:  # unrolled everywhere: its weights live in the Linears
        _set_module(body, path, nn.Identity())
    return changed


def _erase_dead_from(graph: torch.fx.Graph, n: torch.fx.Node) -> None:
    """Erase ``n`` and the reads of it (getitems, views) that nothing uses any more, readers first."""
    for u in list(n.users):
        _erase_dead_from(graph, u)
    if not n.users:
        graph.erase_node(n)


#: the longest axis flip / cumsum are written out along (one slice per element)
MAX_SLICED_AXIS = 64


def _flip_cumsum_nodes(graph: torch.fx.Graph, n: torch.fx.Node, shape: tuple[int, ...]) -> torch.fx.Node | None:
    """``x.flip(dims)`` (fliplr/flipud) as ``torch.cat`` of one-element slices in reverse order per dim, and
    ``x.cumsum(d)`` as ``torch.cat`` of the prefix sums (``x.narrow(d, 0, i + 1).sum(d, keepdim=True)``), along
    per-sample dims of at most ``MAX_SLICED_AXIS`` elements; None (refused) otherwise."""
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    args, kw = list(n.args), dict(n.kwargs)
    x = args.pop(0) if args else kw.pop("input", None)
    rank = len(shape)
    if name in ("fliplr", "flipud"):  # dims of the batched tensor: flipud flips the batch (refused below)
        dims: Any = (1,) if name == "fliplr" else (0,)
    elif len(args) == 1 and not kw:
        dims = args[0]
    elif args and not kw:
        dims = tuple(args)
    else:
        dims = kw.get("dims", kw.get("dim"))
    if name == "cumsum" and kw.get("dtype") is not None:
        return None
    dims = (dims,) if isinstance(dims, int) else tuple(dims) if isinstance(dims, (tuple, list)) else None
    if not isinstance(x, torch.fx.Node) or not dims or any(
            not isinstance(d, int) or d % rank == 0 or shape[d % rank] > MAX_SLICED_AXIS for d in dims):
        return None
    if name == "cumsum" and len(dims) != 1:
        return None
    y = x
    for d in (d % rank for d in dims):
        size = shape[d]
        if name == "cumsum":
            parts = [graph.call_method("sum", (graph.call_method("narrow", (y, d, 0, i + 1)), d), {"keepdim": True})
                     for i in range(size)]
        else:
            parts = [graph.call_method("narrow", (y, d, i, 1)) for i in reversed(range(size))]
        y = graph.call_function(torch.cat, (parts, d)) if len(parts) > 1 else parts[0]
    return y


def _repeats_as_cats(graph: torch.fx.Graph) -> bool:
    """``x.repeat(1, k, ...)`` of an activation (the batch repeated once): ``torch.cat`` of k copies along each
    repeated dim (after ``_drop_broadcast_expands``-style uses are gone: a repeat read by arithmetic of size-1 dims
    is dropped there). Parameters repeated over the batch (class tokens) are ``_batch_broadcast``'s."""
    changed = False
    for n in list(graph.nodes):
        if not (n.op == "call_method" and n.target == "repeat" and n.args and isinstance(n.args[0], torch.fx.Node)
                and n.args[0].op != "get_attr" and not n.kwargs):
            continue
        reps = list(n.args[1]) if len(n.args) == 2 and isinstance(n.args[1], (tuple, list)) else list(n.args[1:])
        shape = n.meta.get(_INTERP_SHAPE)
        if not reps or any(not isinstance(r, int) or r < 1 for r in reps) or reps[0] != 1 or shape is None or \
                len(reps) != len(shape):
            continue
        y = n.args[0]
        with graph.inserting_before(n):
            for d, r in enumerate(reps):
                if r > 1:
                    y = graph.call_function(torch.cat, ([y] * r, d))
        n.replace_all_uses_with(y)
        graph.erase_node(n)
        changed = True
    return changed


def _decompose_composites(body: nn.Module, graph: torch.fx.Graph) -> bool:
    """Calls that are short compositions of ops qfx has, written out so each converts as usual: ``F.glu`` /
    nn.GLU (``a * sigmoid(b)`` of the two halves), nn.RMSNorm / ``F.rms_norm`` (``x * rsqrt(mean(x * x) + eps)``,
    times the weight), ``rsqrt(v + eps)`` (one table), F.threshold / nn.Threshold (a select table), var/std
    (``_variance_nodes``), InstanceNorm1d / GroupNorm of (N, C, L) / LayerNorm over several dims
    (``_norm_as_groupnorm``), flip / cumsum (``_flip_cumsum_nodes``), ``torch.einsum`` (permutes, products, sums and
    matmuls: ``qfx.nn.einsum``). The shape-dependent ones read the input shape ``_softmax_ranks`` recorded. Calls
    outside these forms stay and are refused with the rest."""
    modules = dict(body.named_modules())
    changed = False
    for n in list(graph.nodes):
        mod = modules.get(str(n.target)) if n.op == "call_module" else None
        fn = n.target if n.op == "call_function" and _hashable(n.target) else None
        new: torch.fx.Node | None = None
        with graph.inserting_before(n):
            if isinstance(mod, nn.GLU) or fn is F.glu:
                dim = mod.dim if mod is not None else (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", -1))
                if not isinstance(dim, int) or not n.args:
                    continue
                halves = graph.call_method("chunk", (n.args[0], 2, dim))
                first = graph.call_function(operator.getitem, (halves, 0))
                second = graph.call_function(operator.getitem, (halves, 1))
                new = graph.call_function(operator.mul, (first, graph.call_function(torch.sigmoid, (second,))))
            elif isinstance(mod, nn.RMSNorm) or fn is F.rms_norm:
                if mod is not None:
                    x, shape, eps = n.args[0], mod.normalized_shape, mod.eps
                    weight = graph.get_attr(f"{n.target}.weight") if mod.weight is not None else None
                else:
                    args = dict(zip(("input", "normalized_shape", "weight", "eps"), n.args), **n.kwargs)
                    x, shape, eps = args.get("input"), args.get("normalized_shape"), args.get("eps")
                    weight = args.get("weight")
                    if weight is not None and not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
                        continue
                if not isinstance(x, torch.fx.Node) or isinstance(shape, torch.fx.Node) or \
                        isinstance(eps, torch.fx.Node):
                    continue
                nd = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
                eps = torch.finfo(torch.float32).eps if eps is None else float(eps)
                sq = graph.call_function(operator.mul, (x, x))
                ms = graph.call_method("mean", (sq, tuple(range(-nd, 0))), {"keepdim": True})
                r = graph.call_function(table_select, (ms, f"rsqrt({eps!r})"))  # eps inside the table
                new = graph.call_function(operator.mul, (x, r))
                if weight is not None:
                    new = graph.call_function(operator.mul, (new, weight))
            elif (fn is torch.rsqrt or n.op == "call_method" and n.target == "rsqrt") and len(n.args) == 1 and \
                    not n.kwargs and _const_add(n.args[0]) is not None:
                t, eps = _const_add(n.args[0])  # rsqrt(var + eps): one table with eps inside, which the
                new = graph.call_function(table_select, (t, f"rsqrt({eps!r})"))  # sum's rounding would lose
            elif isinstance(mod, nn.Threshold) or fn is F.threshold:
                if mod is not None:
                    x, th, val = n.args[0] if n.args else None, mod.threshold, mod.value
                else:
                    try:
                        a = inspect.signature(_threshold_sig).bind(*n.args, **n.kwargs).arguments
                    except TypeError:
                        continue
                    x, th, val = a["input"], a["threshold"], a["value"]
                if not (_number(th) and _number(val)) or not isinstance(x, torch.fx.Node):
                    continue
                new = graph.call_function(table_select, (x, select_spec("gt", th, 1.0, 0.0, 0.0, val)))
            elif (n.op == "call_method" and n.target in _STAT_METHODS or fn in (torch.var, torch.std)) and \
                    _INTERP_SHAPE in n.meta:
                new = _variance_nodes(graph, n, n.meta[_INTERP_SHAPE])
            elif isinstance(mod, (nn.InstanceNorm1d, nn.GroupNorm, nn.LayerNorm)) and _INTERP_SHAPE in n.meta:
                new = _norm_as_groupnorm(body, graph, n, mod, n.meta[_INTERP_SHAPE])
            elif (n.op == "call_method" and n.target in ("flip", "fliplr", "flipud", "cumsum")
                  or fn in (torch.flip, torch.fliplr, torch.flipud, torch.cumsum)) and _INTERP_SHAPE in n.meta:
                new = _flip_cumsum_nodes(graph, n, n.meta[_INTERP_SHAPE])
            elif (n.op == "call_method" and n.target == "unbind" or fn is torch.unbind) and _INTERP_SHAPE in n.meta:
                if _unbind_as_selects(graph, n, n.meta[_INTERP_SHAPE]):
                    changed = True
                continue
            elif fn is torch.einsum and n.args and isinstance(n.args[0], str) and not n.kwargs:
                ops = tuple(n.args[1]) if len(n.args) == 2 and isinstance(n.args[1], (list, tuple)) else n.args[1:]
                new = einsum_plan(n.args[0], ops, _FxEinsum(graph)) if all(
                    isinstance(v, torch.fx.Node) for v in ops) else None
        if new is None:
            continue
        n.replace_all_uses_with(new)
        graph.erase_node(n)  # nodes made for a call left as it was are dead: _live skips them
        changed = True
    return changed


def _const_index(v: Any, body: nn.Module) -> torch.Tensor | None:
    """The integer tensor ``v`` always is: ``torch.arange`` of constants, an integer buffer, constant slices,
    ``unsqueeze`` / ``[None]`` / ``expand`` of those (position ids); None otherwise."""
    if not isinstance(v, torch.fx.Node):
        return None
    if v.op == "get_attr":
        t = _attr_value(body, str(v.target))
        return t if isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() else None
    if v.op == "call_function" and v.target is torch.arange and not any(
            isinstance(a, torch.fx.Node) for a in (*v.args, *v.kwargs.values())):
        kw = {k: a for k, a in v.kwargs.items() if k in ("start", "end", "step")}
        t = torch.arange(*v.args, **kw)
        return None if t.is_floating_point() else t
    src = _const_index(v.args[0], body) if v.args else None
    if src is None or any(isinstance(a, torch.fx.Node) for a in (*v.args[1:], *v.kwargs.values())):
        return None
    t = _call_name(v)
    try:
        if t == "getitem":
            return src[v.args[1]]
        if t in ("unsqueeze", "expand", "view", "reshape", "long", "int", "to", "contiguous"):
            return getattr(src, t)(*v.args[1:], **v.kwargs)
    except (TypeError, ValueError, IndexError, RuntimeError):
        return None
    return None


def _constant_lookups(body: nn.Module, graph: torch.fx.Graph) -> bool:
    """``self.pos(torch.arange(L))`` / ``self.pos(self.position_ids[:, :L])``: an nn.Embedding read at constant
    positions is those rows, a parameter added to the model (a copy of ``weight[ids]``, trained in its place; the
    module is left uncalled), so ``x + rows`` converts like a position embedding (``QParamAffine``). Only when the
    module is called nowhere else (the other rows then never train either)."""
    modules = dict(body.named_modules())
    calls: dict[str, list[torch.fx.Node]] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            calls.setdefault(str(n.target), []).append(n)
    changed = False
    for target, ns in calls.items():
        m = modules.get(target)
        if not isinstance(m, nn.Embedding) or len(ns) != 1 or m.max_norm is not None or len(ns[0].args) != 1:
            continue
        n = ns[0]
        idx = _const_index(n.args[0], body)
        if idx is None or idx.numel() == 0 or idx.min() < 0 or idx.max() >= m.num_embeddings:
            continue
        scope, _, leaf = target.rpartition(".")
        path = _free_path(body, scope, f"{leaf}_rows")
        owner = body.get_submodule(scope) if scope else body
        owner.register_parameter(path.rpartition(".")[2], nn.Parameter(m.weight.detach()[idx].clone(),
                                                                        requires_grad=m.weight.requires_grad))
        with graph.inserting_before(n):
            rows = graph.get_attr(path)
        n.replace_all_uses_with(rows)
        graph.erase_node(n)
        changed = True
    return changed


def _unbind_as_selects(graph: torch.fx.Graph, n: torch.fx.Node, shape: tuple[int, ...]) -> bool:
    """``q, k, v = qkv.unbind(d)`` (timm's attention) as the indexings ``qkv[:, ..., i]`` its parts are, when
    every use of the result picks a part by a constant index; the unbind node is then erased."""
    x = n.args[0] if n.args else n.kwargs.get("input", n.kwargs.get("self"))
    d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
    users = list(n.users)
    if not isinstance(x, torch.fx.Node) or not isinstance(d, int) or isinstance(d, bool) or not shape or not all(
            u.op == "call_function" and u.target is operator.getitem and isinstance(u.args[1], int) for u in users):
        return False
    d %= len(shape)
    for u in users:
        with graph.inserting_before(u):
            sel = graph.call_function(operator.getitem, (x, (slice(None),) * d + (u.args[1],)))
        u.replace_all_uses_with(sel)
        graph.erase_node(u)
    graph.erase_node(n)
    return True


def _transposed_attr(v: Any) -> torch.fx.Node | None:
    """The get_attr node ``v`` transposes (``self.W.t()``, ``self.W.T``, ``.transpose(0, 1)``, ``.permute(1, 0)``)
    when it is only that, else None."""
    if not isinstance(v, torch.fx.Node) or not v.args or not isinstance(v.args[0], torch.fx.Node) or \
            v.args[0].op != "get_attr" or v.kwargs:
        return None
    rest = tuple(v.args[1:])
    if v.op == "call_method" and (v.target == "t" and not rest or v.target == "transpose" and rest in (
            (0, 1), (1, 0), (-1, -2), (-2, -1)) or v.target == "permute" and rest in (((1, 0),), (1, 0))):
        return v.args[0]
    if v.op == "call_function" and v.target is getattr and rest in (("T",), ("mT",)):
        return v.args[0]
    return None


def _linear_sig(input: Any, weight: Any, bias: Any = None) -> None: ...


def _conv_sig(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
              groups: Any = 1) -> None: ...


def _layer_norm_sig(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
                    eps: Any = 1e-5) -> None: ...


def _group_norm_sig(input: Any, num_groups: Any, weight: Any = None, bias: Any = None, eps: Any = 1e-5) -> None: ...


def _functional_layers(body: nn.Module, graph: torch.fx.Graph) -> bool:
    """``F.linear(x, self.weight, self.bias)``, ``F.conv1d/conv2d(x, self.weight, ...)`` and ``x @ self.W`` with
    parameters (or buffers) the model holds become calls of an nn.Linear / nn.Conv that holds them (a layer added
    to the model under a free name; the matrix of ``x @ W`` transposed into a new parameter), so they convert like
    any layer. Weights computed in forward stay and are refused with the rest."""
    def tensor_attr(v: Any) -> torch.Tensor | None:
        if isinstance(v, torch.fx.Node) and v.op == "get_attr":
            t = _attr_value(body, str(v.target))
            return t if isinstance(t, torch.Tensor) and t.is_floating_point() else None
        return None

    def as_param(t: torch.Tensor) -> nn.Parameter:
        return t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone(), requires_grad=False)

    convs = {F.conv1d: nn.Conv1d, F.conv2d: nn.Conv2d, torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d}
    added = False
    consumed: set[str] = set()
    for n in list(graph.nodes):
        layer: nn.Module | None = None
        if n.op != "call_function" or not _hashable(n.target):
            continue
        try:
            if n.target in (F.linear, torch._C._nn.linear):
                a = inspect.signature(_linear_sig).bind(*n.args, **n.kwargs).arguments
                w, b = tensor_attr(a["weight"]), tensor_attr(a.get("bias"))
                if w is None or w.dim() != 2 or (a.get("bias") is not None and b is None):
                    continue
                layer = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            elif n.target in convs:
                a = inspect.signature(_conv_sig).bind(*n.args, **n.kwargs).arguments
                w, b = tensor_attr(a["weight"]), tensor_attr(a.get("bias"))
                kind = convs[n.target]
                if w is None or w.dim() != (3 if kind is nn.Conv1d else 4) or \
                        (a.get("bias") is not None and b is None) or any(
                        isinstance(a.get(k), torch.fx.Node) for k in ("stride", "padding", "dilation", "groups")):
                    continue
                g = a.get("groups", 1)
                layer = kind(w.shape[1] * g, w.shape[0], tuple(w.shape[2:]), stride=a.get("stride", 1),
                             padding=a.get("padding", 0), dilation=a.get("dilation", 1), groups=g,
                             bias=b is not None)
            elif n.target in (operator.matmul, torch.matmul, torch.mm) and len(n.args) == 2 and not n.kwargs:
                wt = _transposed_attr(n.args[1])  # x @ self.W.t(): W is already (out, in)
                w, b = tensor_attr(n.args[1] if wt is None else wt), None
                if w is None or w.dim() != 2 or tensor_attr(n.args[0]) is not None:
                    continue
                if wt is None:  # x @ W with W (in, out): the layer holds its transpose
                    w = nn.Parameter(w.detach().t().contiguous().clone(), requires_grad=w.requires_grad)
                layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
                a = {"input": n.args[0]}
            elif n.target in (F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm):
                norm = _functional_norm(n, tensor_attr)
                if norm is None:
                    continue
                layer, w, b, a = norm
            else:
                continue
        except (TypeError, ValueError):
            continue
        if w is not None:
            layer.weight = as_param(w)
        if b is not None:
            layer.bias = as_param(b)
        consumed.update(str(v.target) for v in n.all_input_nodes + [_transposed_attr(n.args[1]) if len(n.args) > 1
                                                                   else None] if v is not None and v.op == "get_attr")
        path = _free_path(body, "", f"{n.name}_layer")
        body.add_module(path, layer)
        with graph.inserting_before(n):
            call = graph.call_module(path, (a["input"],))
        n.replace_all_uses_with(call)
        graph.erase_node(n)
        added = True
    for n in list(graph.nodes):
        if not n.users and _transposed_attr(n) is not None:
            graph.erase_node(n)
    for n in list(graph.nodes):
        if n.op == "get_attr" and not n.users:
            graph.erase_node(n)
    still_read = {str(n.target) for n in graph.nodes if n.op == "get_attr"}
    called = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    for target in consumed - still_read:  # the layer holds it now (or its transpose): not a stray parameter
        scope, _, name = target.rpartition(".")
        if scope in called:  # tied weights: a layer that is called (nn.Embedding) still needs its own
            continue
        owner = body.get_submodule(scope) if scope else body
        if name in owner._parameters or name in owner._buffers:
            delattr(owner, name)
    return added


def _functional_norm(n: torch.fx.Node, tensor_attr: Any) -> tuple[nn.Module, Any, Any, dict[str, Any]] | None:
    """``F.layer_norm(x, shape, self.weight, self.bias, eps)`` (torchvision's ``LayerNorm2d`` on channels-last)
    and ``F.group_norm(x, G, self.weight, self.bias, eps)`` as the nn layer that holds the same tensors (weight
    and bias both given or both absent), or None."""
    is_ln = n.target in (F.layer_norm, torch.layer_norm)
    a = inspect.signature(_layer_norm_sig if is_ln else _group_norm_sig).bind(*n.args, **n.kwargs).arguments
    w, b = tensor_attr(a.get("weight")), tensor_attr(a.get("bias"))
    eps = a.get("eps", 1e-5)
    if (a.get("weight") is None) != (w is None) or (a.get("bias") is None) != (b is None) or \
            not isinstance(eps, float) or w is None and b is not None:
        return None
    if is_ln:
        shape = a["normalized_shape"]
        shape = (shape,) if isinstance(shape, int) else shape
        if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) for d in shape):
            return None
        layer: nn.Module = nn.LayerNorm(tuple(shape), eps=eps, elementwise_affine=w is not None, bias=b is not None)
        if w is not None and tuple(w.shape) != tuple(shape):
            return None
    else:
        groups = a["num_groups"]
        if w is None or not isinstance(groups, int) or w.dim() != 1 or b is None:
            return None
        layer = nn.GroupNorm(groups, w.shape[0], eps=eps)
    return layer, w, b, a


_PARAM_VIEWS = ("view", "reshape", "unsqueeze", "squeeze", "flatten")
_PARAM_SHAPE = "qfx_param_shape"


def _param_view_shape(u: torch.fx.Node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape ``u`` (a view of a parameter: ``.view(1, -1, 1, 1)``, ``[:, None, None]``, ``.unsqueeze(-1)``)
    gives a tensor of ``shape``, or None when ``u`` is not such a view (or selects or reorders values)."""
    if any(isinstance(a, torch.fx.Node) for a in u.args[1:]) or any(
            isinstance(v, torch.fx.Node) for v in u.kwargs.values()):
        return None
    t = torch.zeros(shape)
    try:
        if u.op == "call_method" and u.target in _PARAM_VIEWS:
            r = getattr(t, str(u.target))(*u.args[1:], **u.kwargs)
        elif u.op == "call_function" and u.target is operator.getitem and len(u.args) == 2:
            idx = u.args[1] if isinstance(u.args[1], tuple) else (u.args[1],)
            if any(not (i is None or i is Ellipsis or i == slice(None)) for i in idx):
                return None
            r = t[u.args[1]]
        elif u.op == "call_function" and _hashable(u.target) and u.target in (torch.reshape, torch.unsqueeze,
                                                                             torch.squeeze, torch.flatten):
            r = u.target(t, *u.args[1:], **u.kwargs)
        else:
            return None
    except (RuntimeError, TypeError, IndexError, ValueError):
        return None
    return tuple(r.shape) if r.numel() == t.numel() else None


def _param_views(body: nn.Module, graph: torch.fx.Graph) -> None:
    """A parameter or buffer read through views (``self.gamma.view(1, -1, 1, 1)``, ``self.gamma[:, None, None]``,
    ``self.mean.reshape(1, 3, 1, 1)``): each view chain becomes its own read of the tensor with the view's shape
    noted (``qfx_param_shape``), so the arithmetic it meets converts as with the shaped tensor itself. Views keep
    the values' order, so the flat values are the tensor's."""
    for n in list(graph.nodes):
        if n.op != "get_attr":
            continue
        value = _attr_value(body, str(n.target))
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        for u in list(n.users):
            end, shape = n, tuple(value.shape)
            chain: list[torch.fx.Node] = []
            while True:
                cand = u if end is n else (next(iter(end.users)) if len(end.users) == 1 else None)
                if cand is None or not cand.args or cand.args[0] is not end:
                    break
                got = _param_view_shape(cand, shape)
                if got is None:
                    break
                chain.append(cand)
                end, shape = cand, got
            if not chain:
                continue
            with graph.inserting_before(chain[-1]):
                read = graph.get_attr(str(n.target))
            read.meta[_PARAM_SHAPE] = shape
            chain[-1].replace_all_uses_with(read)
            for v in reversed(chain):
                if not v.users:
                    graph.erase_node(v)
        if not n.users:
            graph.erase_node(n)


def _expand_sdpa(graph: torch.fx.Graph) -> None:
    """``F.scaled_dot_product_attention(q, k, v)`` (no mask, no dropout, not causal) becomes what it computes,
    written the way hand-written attention is: ``softmax(q @ k.transpose(-2, -1) * scale, -1) @ v`` (scale
    ``1/sqrt(E)`` from q's last size, recorded on the example run), so each step converts as usual (QMatMul,
    QConstScale, QSoftmax). Other calls stay and are refused with the rest."""
    sig = inspect.signature(lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                            enable_gqa=False: None)
    for n in _sdpa_calls(graph):
        try:
            a = sig.bind(*n.args, **n.kwargs).arguments
        except TypeError:
            continue
        if a.get("attn_mask") is not None or a.get("dropout_p", 0.0) not in (0, 0.0) or a.get("is_causal") or \
                a.get("enable_gqa"):
            continue
        scale = a.get("scale")
        if scale is None:
            shape = n.meta.get(_INTERP_SHAPE)
            if not shape:
                continue
            scale = 1.0 / math.sqrt(shape[-1])
        if not isinstance(scale, (int, float)):
            continue
        with graph.inserting_before(n):
            kt = graph.call_method("transpose", (a["key"], -2, -1))
            sc = graph.call_function(operator.mul, (graph.call_function(operator.matmul, (a["query"], kt)),
                                                    float(scale)))
            out = graph.call_function(operator.matmul, (graph.call_method("softmax", (sc, -1)), a["value"]))
        n.replace_all_uses_with(out)
        graph.erase_node(n)


def size_to_factor(size: Any, shape: tuple[int, ...]) -> Any:
    """``interpolate(size=...)`` on an input of ``shape`` as the integer scale factor(s) it means, or the size
    unchanged (then refused as before) when a size is not an integer multiple of the input's."""
    spatial = shape[2:]
    sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * len(spatial)
    if len(sizes) != len(spatial) or any(not isinstance(v, int) or isinstance(v, bool) for v in sizes) or \
            any(o % i or o < i for o, i in zip(sizes, spatial)):
        return None
    f = tuple(o // i for o, i in zip(sizes, spatial))
    return f if len(f) > 1 else f[0]


def _fold_sizes(body: nn.Module, graph: torch.fx.Graph, examples: Any) -> None:
    """Sizes read in forward (``c = x.size(1)``, ``x.shape[2:]``, ``c // 2``, ``x.dim()``) become constants, and
    so do float results of Python functions of those constants alone (``math.sqrt(d)``), except what depends on the
    batch size (``x.size(0)`` stays for ``view(n, ...)``). Why: qfx layers need
    constant sizes, and a user's channel shuffle or chunk computes them. Found by running the float graph at two
    batch sizes (eval mode, no_grad, inputs cloned): a non-tensor value equal in both runs is a constant."""
    xs = [t for t in (examples if isinstance(examples, (tuple, list)) else [examples]) if isinstance(t, torch.Tensor)]
    nodes = [n for n in graph.nodes if n.op in ("call_function", "call_method")]
    if not xs or not any(n.target in ("size", "dim") or n.target is getattr for n in nodes):
        return
    runs: list[dict[str, Any]] = []

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            v = super().run_node(n)
            runs[-1][n.name] = v
            return v

    def plain(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, tuple, list)):
            return None
        if isinstance(v, int):
            return v
        items = [plain(i) for i in v]
        return None if any(i is None for i in items) else tuple(items)

    modes = {m: m.training for m in body.modules()}
    gm = torch.fx.GraphModule(body, copy.deepcopy(graph))  # a copy: the graph itself must stay unowned
    try:
        body.eval()
        with torch.no_grad():
            for b in (2, 3):
                runs.append({})
                _Rec(gm).run(*(torch.cat([t[:1]] * b).clone() for t in xs))
    except Exception:  # the refusal path reports what fails; nothing folded
        return
    finally:
        for m, tr in modes.items():
            m.training = tr
    folded = []
    for n in nodes:
        a, b = plain(runs[0].get(n.name)), plain(runs[1].get(n.name))
        va = runs[0].get(n.name)
        if a is None and isinstance(va, float) and va == runs[1].get(n.name) and not n.all_input_nodes:
            a = b = va  # Python arithmetic on folded sizes only (1 / math.sqrt(d) with d = x.size(-1))
        if a is None or a != b:
            continue
        folded.append(n)
        for u in list(n.users):
            u.args = torch.fx.node.map_arg(u.args, lambda v: a if v is n else v)
            u.kwargs = torch.fx.node.map_arg(u.kwargs, lambda v: a if v is n else v)
    for n in reversed(folded):
        if not n.users:
            graph.erase_node(n)


def _rewrite(body: nn.Module, graph: torch.fx.Graph, live: set[torch.fx.Node], node_actions: dict[Any, Any],
             dropped: set[str], for_path: Callable[[str], "QFXConfig"]) -> nn.Module:
    """A GraphModule running ``graph`` with the node actions applied; top-level children stay ``body``'s own."""
    done: dict[torch.fx.Node, torch.fx.Node] = {}  # replaced node -> what its users read now

    def now(v: Any) -> Any:
        while isinstance(v, torch.fx.Node) and v in done:
            v = done[v]
        return v

    for n in list(graph.nodes):
        act = node_actions.get(n)
        if n.op == "call_module" and str(n.target) in dropped and n in live:
            act = _Drop(n.args[0])
        if isinstance(act, _Drop):
            done[n] = now(act.input)
            n.replace_all_uses_with(done[n])
            graph.erase_node(n)
        elif isinstance(act, _Replace):
            path = _free_path(body, _scope(n), act.base)
            _set_module(body, path, act.module)
            with graph.inserting_before(n):
                new = graph.call_module(path, args=tuple(now(a) for a in act.inputs))
            new.meta = dict(n.meta)
            n.replace_all_uses_with(new)
            done[n] = new
            graph.erase_node(n)
        elif isinstance(act, _Chain):
            outs: list[torch.fx.Node] = []
            for module, ins, base in act.steps:
                path = _free_path(body, _scope(n), base)
                _set_module(body, path, module)
                with graph.inserting_before(n):
                    new = graph.call_module(path, args=tuple(outs[v] if isinstance(v, int) else now(v) for v in ins))
                new.meta = dict(n.meta)
                outs.append(new)
            n.replace_all_uses_with(outs[-1])
            done[n] = outs[-1]
            graph.erase_node(n)
        elif isinstance(act, tuple) and act[0] == "input":  # quantize a tensor input right where it enters
            path = _free_path(body, "", f"quant_{n.name}")
            _set_module(body, path, act[1])
            with graph.inserting_after(n):
                new = graph.call_module(path, args=(n,))
            n.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
        elif isinstance(act, tuple):  # ("retarget", path): a fresh copy of a reused stateless layer
            old = act[1]
            scope, _, base = old.rpartition(".")
            path = _free_path(body, scope, base.rstrip("0123456789_") or "layer")
            _set_module(body, path, copy.deepcopy(body.get_submodule(old)))
            n.target = path
    for n in reversed(list(graph.nodes)):
        if n.op not in ("placeholder", "output") and not n.users and (n not in live or n.op == "get_attr"
                                                                      or _PARAM_BATCH in n.meta):
            graph.erase_node(n)
    for path in dropped:
        _set_module(body, path, nn.Identity())
    graph.lint()
    gm = torch.fx.GraphModule(body, graph, class_name=type(body).__name__)
    for name, child in body.named_children():  # the real containers, not fx's plain copies (indexing keeps working)
        if hasattr(gm, name):
            setattr(gm, name, child)
    for name, p in body.named_parameters(recurse=False):  # read in forward (a class token): keys stay the model's
        if not hasattr(gm, name):
            gm.register_parameter(name, p)
    return gm
