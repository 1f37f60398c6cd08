"""Fixed-point layers: drop-in twins of torch.nn layers with explicit formats for every tensor.

Each layer runs in one of two modes (``qfx.nn.set_mode``): ``train`` (float32 fake quantization, differentiable)
or ``exact`` (int64 codes through ``qfx.fixed.ops``; activations travel as float64 tensors of exact values).
Each layer also describes itself as IR nodes (``ir_nodes``) for the torch.fx capture in ``qfx.ir.from_torch``.

``ir_nodes(name, inputs, output)`` contract: returns ``[(Node, TensorSpec), ...]`` in order; the last node writes
``output``; intermediate tensors are ``f"{output}.{suffix}"``, nodes ``name``/``f"{name}.{suffix}"``; inputs carry
the producers' formats. ``out_fmt`` is the output format in exact mode, or ``None`` for a format-preserving module
with no output quantizer (max-pool, flatten, an unquantized ReLU): its output keeps the input's format.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfx.errors import BadInputError, FormatError, UnsupportedError
from qfx.fixed import ops
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Node, TensorSpec
from qfx.nn.exact import codes_to_values, values_to_codes
from qfx.nn.exact import _frac_bits_needed
from qfx.nn.quant import (
    _CHAINED, FixedQuant, _take_chained, attr, batch_norm_train, chain_target, conv_bn_train, max_pool_train,
    quantize_chain, quantize_pair,
)

__all__ = [
    "QModule", "QuantInput", "QLinear", "QConv2d", "QBatchNorm1d", "QBatchNorm2d", "QReLU", "QClippedReLU", "QAdd",
    "QMaxPool2d", "QAvgPool2d", "QFlatten", "IRItem", "QConv1d", "QMaxPool1d", "QAvgPool1d", "QConvTranspose2d",
    "QConvTranspose1d",
]

IRItem = tuple[Node, TensorSpec]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise UnsupportedError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _quant(q: FixedQuant | None, width: int | None, *, signed: bool = True, rounding: str = "RND",
           overflow: str = "SAT", per_channel: int | None = None, khot: int | None = None,
           learn: bool = True) -> FixedQuant | None:
    if q is not None:
        if not isinstance(q, FixedQuant):
            raise BadInputError(f"expected a qfx.nn.FixedQuant, got {type(q).__name__}")
        return q
    if width is None:
        return None
    return FixedQuant(width, None, signed, rounding, overflow,
                      per_channel_axis=0 if per_channel else None, num_channels=per_channel, learn_int_bits=learn,
                      khot=khot)


class QModule(nn.Module):
    """Mixin of every qfx layer: the mode flag, output quantizer and IR description."""

    qfx_mode: str = "train"
    out_quant: FixedQuant | None

    @property
    def out_fmt(self) -> FxFormat | None:
        return self.out_quant.fmt if self.out_quant is not None else None

    def _out_train(self, y: torch.Tensor) -> torch.Tensor:
        q = attr(self, "out_quant")
        if q is None:
            return y
        if "_qfx_next" in self.__dict__:  # linked to a following QReLU (quant.link_chains): both roundings at once
            q2 = chain_target(self)
            if q2 is not None:
                y1 = quantize_chain(q, y, q2)
                if y1 is not None:
                    return y1
        return q(y)

    def _in_fmt(self, in_fmt: FxFormat | None) -> FxFormat:
        """``in_fmt`` or the producer's format recorded by ``qfx.nn.report_formats`` (``self.in_fmt``)."""
        f = in_fmt if in_fmt is not None else getattr(self, "in_fmt", None)
        if f is None:
            raise BadInputError(f"{type(self).__name__}.accumulator_format needs the input format: pass in_fmt or "
                                "run qfx.nn.report_formats(model, example) first")
        return f

    def _spec_fmt(self, fallback: FxFormat) -> FxFormat:
        f = self.out_fmt
        return fallback if f is None else f

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:  # pragma: no cover
        raise NotImplementedError

    def quantizers(self) -> dict[str, FixedQuant]:
        """This module's own quantizers by role (weight, bias, scale, shift, out, input)."""
        return {k.removesuffix("_quant"): m for k, m in self.named_children() if isinstance(m, FixedQuant)}


def _one_input(inputs: Sequence[TensorSpec], name: str) -> TensorSpec:
    if len(inputs) != 1:
        raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
    return inputs[0]


# ============================================================================ input
class QuantInput(QModule):
    """First module of every qfx model: quantizes the float input to the graph input format ``fmt``."""

    def __init__(self, width: int = 8, int_bits: int | None = None, signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", learn_int_bits: bool = False) -> None:
        super().__init__()
        self.out_quant = FixedQuant(width, int_bits, signed, rounding, overflow, learn_int_bits=learn_int_bits)

    @property
    def fmt(self) -> FxFormat:
        return self.out_quant.fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            with torch.no_grad():
                f = self.fmt
                return codes_to_values(f.to_int(x.detach().to("cpu", torch.float64).numpy()), f, x.device)
        return attr(self, "out_quant")(x.float() if x.dtype != torch.float32 else x)

    def input_codes(self, x: torch.Tensor) -> np.ndarray:
        """int64 codes of a float input in ``fmt`` (what the exported design receives)."""
        return np.asarray(self.fmt.to_int(x.detach().to("cpu", torch.float64).numpy()), dtype=np.int64)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        return []


# ============================================================================ dense / conv
class _WeightLayer(QModule):
    weight: nn.Parameter
    bias: nn.Parameter | None
    weight_quant: FixedQuant
    bias_quant: FixedQuant | None

    def _init_quant(self, out_channels: int, weight_width: int, bias_width: int, out_width: int | None,
                    rounding: str, overflow: str, per_channel: bool, khot: int | None, out_signed: bool,
                    weight_quant: FixedQuant | None, bias_quant: FixedQuant | None,
                    out_quant: FixedQuant | None, learn_int_bits: bool) -> None:
        self.weight_quant = _quant(weight_quant, weight_width, rounding=rounding, overflow=overflow,
                                   per_channel=out_channels if per_channel else None, khot=khot, learn=learn_int_bits)
        self.bias_quant = _quant(bias_quant, bias_width if self.bias is not None else None, rounding=rounding,
                                 overflow=overflow, learn=learn_int_bits)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    @property
    def khot(self) -> int:
        return self.weight_quant.khot or 0

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)

    def weight_codes(self) -> tuple[np.ndarray, FxFormat]:
        """Weight codes in one lossless format (per-channel formats merged; K-hot projected)."""
        with torch.no_grad():
            return self.weight_quant.quantize_exact(self.weight)

    def bias_codes(self) -> tuple[np.ndarray | None, FxFormat | None]:
        if self.bias is None or self.bias_quant is None:
            return None, None
        with torch.no_grad():
            return self.bias_quant.quantize_exact(self.bias)

    def accumulator_format(self, in_fmt: FxFormat | None = None) -> FxFormat:
        """Lossless accumulator for inputs of ``in_fmt`` by interval analysis over the actual weight codes."""
        in_fmt = self._in_fmt(in_fmt)
        w, fw = self.weight_codes()
        b, fb = self.bias_codes()
        return lossless_acc_format(w.reshape(w.shape[0], -1), fw, in_fmt, b, fb)

    def shift_add_terms(self) -> np.ndarray:
        """Per weight (array shaped like ``weight``) the list of ``(sign, shift)`` terms: value = sum(sign * 2**shift)."""
        w, fw = self.weight_codes()
        out = np.empty(w.shape, dtype=object)
        for idx, c in np.ndenumerate(w):
            out[idx] = [(s, k - fw.frac_bits) for s, k in csd_digits(int(c))]
        return out

    def _consts(self) -> dict[str, Constant]:
        w, fw = self.weight_codes()
        b, fb = self.bias_codes()
        consts = {"weight": Constant(w, fw)}
        if b is not None:
            consts["bias"] = Constant(b, fb)
        return consts

    def _bias_train(self) -> torch.Tensor | None:
        bias, bq = attr(self, "bias"), attr(self, "bias_quant")
        if bias is None:
            return None
        return bq(bias) if bq is not None else bias

    def _weight_bias_train(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Quantized weight and bias; both quantizers in one autograd node when there are two (same values)."""
        bias, bq = attr(self, "bias"), attr(self, "bias_quant")
        wq, weight = attr(self, "weight_quant"), attr(self, "weight")
        if bias is not None and bq is not None:
            wb = quantize_pair(wq, weight, bq, bias)
            if wb is not None:
                return wb
        return wq(weight), self._bias_train()


class QLinear(nn.Linear, _WeightLayer):
    """``nn.Linear`` with fixed-point weight, bias and output formats (optionally K-hot weights)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None, dtype: Any = None,
                 *, weight_width: int = 8, bias_width: int = 16, out_width: int | None = 8, rounding: str = "RND",
                 overflow: str = "SAT", per_channel: bool = False, khot: int | None = None, out_signed: bool = True,
                 weight_quant: FixedQuant | None = None, bias_quant: FixedQuant | None = None,
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_quant(out_features, weight_width, bias_width, out_width, rounding, overflow, per_channel, khot,
                         out_signed, weight_quant, bias_quant, out_quant, learn_int_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._forward_exact(x)
        return self._out_train(F.linear(x, *self._weight_bias_train()))

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        xc, fx = values_to_codes(x, "QLinear input")
        w, fw = self.weight_codes()
        b, fb = self.bias_codes()
        out = self._exact_fmt(fx, w, fw, b, fb)
        return codes_to_values(ops.dense(xc, fx, w, fw, out, b, fb), out, x.device)

    def _exact_fmt(self, fx, w, fw, b, fb) -> FxFormat:
        if self.out_fmt is not None:
            return self.out_fmt
        return lossless_acc_format(w.reshape(w.shape[0], -1), fw, fx, b, fb)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        if not x.shape or x.shape[-1] != self.in_features:
            raise UnsupportedError(f"{name}: dense input must have per-sample shape ({self.in_features},) or "
                                   f"(..., {self.in_features}), got {x.shape}")
        if len(x.shape) > 2:  # (H, W, C) (channels last, ConvNeXt): the (H*W, C) rows as tokens, reshapes around
            lead, m = x.shape[:-1], int(np.prod(x.shape[:-1]))
            rows = TensorSpec(f"{output}.rows", (m, self.in_features), x.fmt)
            items = [(Node(f"{name}.rows", "reshape", (x.name,), rows.name, attrs={"shape": rows.shape},
                           source=name), rows)]
            items += self.ir_nodes(name, [rows], f"{output}.tokens")
            last = items[-1][1]
            shape = lead + (self.out_features,)
            return items + [(Node(f"{name}.unrows", "reshape", (last.name,), output, attrs={"shape": shape},
                                  source=name), TensorSpec(output, shape, last.fmt))]
        consts = self._consts()
        w, b = consts["weight"], consts.get("bias")
        acc = lossless_acc_format(w.codes, w.fmt, x.fmt, None if b is None else b.codes, None if b is None else b.fmt)
        if len(x.shape) == 1:
            node = Node(name, "dense", (x.name,), output, consts, {"khot": self.khot}, acc, source=name)
            return [(node, TensorSpec(output, (self.out_features,), self._spec_fmt(acc)))]
        # (L, C) tokens: the same weights as a 1x1 conv over (C, L, 1), channels back last (all exact moves)
        (ln, c), o, fo = x.shape, self.out_features, self._spec_fmt(acc)
        conv_consts = dict(consts, weight=Constant(w.codes.reshape(o, c, 1, 1), w.fmt))
        steps = [("transpose", (c, ln), {"perm": (1, 0)}, {}, x.fmt, None),
                 ("reshape", (c, ln, 1), {"shape": (c, ln, 1)}, {}, x.fmt, None),
                 ("conv2d", (o, ln, 1), {"stride": (1, 1), "padding": (0, 0), "khot": self.khot}, conv_consts, fo,
                  acc),
                 ("reshape", (o, ln), {"shape": (o, ln)}, {}, fo, None),
                 ("transpose", (ln, o), {"perm": (1, 0)}, {}, fo, None)]
        items: list[IRItem] = []
        src = x.name
        for k, (op, shape, attrs, cs, fmt, a) in enumerate(steps):
            out = output if k == len(steps) - 1 else f"{output}.{k}_{op}"
            nm = name if op == "conv2d" else f"{name}.{k}_{op}"
            items.append((Node(nm, op, (src,), out, cs, attrs, a, source=name), TensorSpec(out, shape, fmt)))
            src = out
        return items


def _dense_kernel(w: np.ndarray, groups: int, dilation: tuple[int, int]) -> np.ndarray:
    """(O, C/groups, kh, kw) grouped, dilated kernel codes -> the equivalent dense (O, C, kh', kw') kernel."""
    if groups == 1 and dilation == (1, 1):
        return w
    o, cg, kh, kw = w.shape
    dh, dw = dilation
    full = np.zeros((o, cg * groups, (kh - 1) * dh + 1, (kw - 1) * dw + 1), dtype=w.dtype)
    per = o // groups
    for oc in range(o):
        g = oc // per
        full[oc, g * cg:(g + 1) * cg, ::dh, ::dw] = w[oc]
    return full


class QConv2d(nn.Conv2d, _WeightLayer):
    """``nn.Conv2d`` (any groups, dilation, padding including 'same'; zero padding mode) with fixed-point weight,
    bias and output formats. Grouped/depthwise and dilated kernels are exported as the equivalent dense kernel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None, *, weight_width: int = 8, bias_width: int = 16,
                 out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT", per_channel: bool = False,
                 khot: int | None = None, out_signed: bool = True, weight_quant: FixedQuant | None = None,
                 bias_quant: FixedQuant | None = None, out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        if padding_mode not in ("zeros", "replicate", "reflect"):
            raise UnsupportedError(f"QConv2d pads with padding_mode 'zeros', 'replicate' or 'reflect', got "
                                   f"{padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_quant(out_channels, weight_width, bias_width, out_width, rounding, overflow, per_channel, khot,
                         out_signed, weight_quant, bias_quant, out_quant, learn_int_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._forward_exact(x)
        w, b = self._weight_bias_train()
        x, pad = self._edge_padded(x)
        y = F.conv2d(x, w, b, self.stride, pad, self.dilation, self.groups)
        if "_qfx_bn" in self.__dict__:  # linked to a following QBatchNorm (quant.link_chains): one node for both
            yq = conv_bn_train(self, y)
            if yq is not None:
                return yq
        return self._out_train(y)

    def weight_codes(self) -> tuple[np.ndarray, FxFormat]:
        """Weight codes as one dense (O, C, kh', kw') kernel: grouped (depthwise) weights placed on their input
        channels with zeros elsewhere, dilated kernels with zeros between taps. The IR's conv2d and every backend
        then compute grouped and dilated convolutions exactly (zero products are skipped by the RTL adder graphs)."""
        w, fw = _WeightLayer.weight_codes(self)
        return _dense_kernel(w, self.groups, _pair(self.dilation)), fw

    def _edge_padded(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Train mode's (input, conv padding): replicate/reflect padding applied first (as nn.Conv2d does)."""
        if self.padding_mode == "zeros":
            return x, self.padding
        t, bo, le, r = self._pads(x.shape[2], x.shape[3])
        return F.pad(x, (le, r, t, bo), mode=self.padding_mode), 0

    def _pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding, also for padding='same'/'valid'."""
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return 0, 0, 0, 0
            tot = [d * (k - 1) for d, k in zip(_pair(self.dilation), self.kernel_size)]
            return tot[0] // 2, tot[0] - tot[0] // 2, tot[1] // 2, tot[1] - tot[1] // 2
        ph, pw = _pair(self.padding)
        return ph, ph, pw, pw

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BadInputError(f"QConv2d expects NCHW input, got shape {tuple(x.shape)}")
        xc, fx = values_to_codes(x, "QConv2d input")
        w, fw = self.weight_codes()
        b, fb = self.bias_codes()
        out = self.out_fmt if self.out_fmt is not None else lossless_acc_format(w.reshape(w.shape[0], -1), fw, fx, b, fb)
        t, bo, le, r = self._pads(xc.shape[2], xc.shape[3])
        if (t, le) != (bo, r) or self.padding_mode != "zeros":  # asymmetric or edge padding: first, as the IR does
            mode = {"zeros": "constant", "replicate": "edge", "reflect": "reflect"}[self.padding_mode]
            xc = np.pad(xc, ((0, 0), (0, 0), (t, bo), (le, r)), mode=mode)
            t = le = 0
        y = ops.conv2d(xc, fx, w, fw, out, b, fb, _pair(self.stride), (t, le))
        return codes_to_values(y, out, x.device)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        if len(x.shape) != 3 or x.shape[0] != self.in_channels:
            raise UnsupportedError(f"{name}: conv2d input must be ({self.in_channels}, H, W) per sample, got {x.shape}")
        consts = self._consts()
        w, b = consts["weight"], consts.get("bias")
        acc = lossless_acc_format(w.codes.reshape(w.codes.shape[0], -1), w.fmt, x.fmt,
                                  None if b is None else b.codes, None if b is None else b.fmt)
        kh, kw = w.codes.shape[2:]
        sh, sw = _pair(self.stride)
        t, bo, le, r = self._pads(x.shape[1], x.shape[2])
        items: list[IRItem] = []
        src, (c, h, wd) = x.name, x.shape
        edge = self.padding_mode != "zeros" and (t, bo, le, r) != (0, 0, 0, 0)
        if (t, le) != (bo, r) or edge:  # asymmetric or edge padding: an explicit pad node, then no conv padding
            mid = f"{output}.pad"
            attrs: dict[str, Any] = {"pads": (t, bo, le, r)}
            if edge:
                attrs["mode"] = self.padding_mode
            items.append((Node(f"{name}.pad", "zeropad2d", (src,), mid, attrs=attrs, source=name),
                          TensorSpec(mid, (c, h + t + bo, wd + le + r), x.fmt)))
            src, h, wd, t, le = mid, h + t + bo, wd + le + r, 0, 0
        ho, wo = ops.conv_out_size(h, kh, sh, t), ops.conv_out_size(wd, kw, sw, le)
        node = Node(name, "conv2d", (src,), output, consts,
                    {"stride": (sh, sw), "padding": (t, le), "khot": self.khot}, acc, source=name)
        items.append((node, TensorSpec(output, (self.out_channels, ho, wo), self._spec_fmt(acc))))
        return items


# ============================================================================ transposed convolution
def transposed_kernel(w: np.ndarray, groups: int, dilation: tuple[int, int]) -> np.ndarray:
    """(C, O/groups, kh, kw) ConvTranspose2d kernel codes -> the dense (O, C, kh', kw') kernel of the equivalent
    stride-1 convolution over the zero-inserted, padded input: channels swapped per group, taps flipped, dilated."""
    c, og, kh, kw = w.shape
    cg = c // groups
    dense = np.zeros((og * groups, c, kh, kw), dtype=w.dtype)
    for g in range(groups):
        blk = w[g * cg:(g + 1) * cg]  # (cg, og, kh, kw)
        dense[g * og:(g + 1) * og, g * cg:(g + 1) * cg] = blk.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    return _dense_kernel(dense, 1, dilation)


class QConvTranspose2d(nn.ConvTranspose2d, _WeightLayer):
    """``nn.ConvTranspose2d`` (stride, padding, output_padding, groups, dilation; zero padding mode) with fixed-point
    weight, bias and output formats.

    Why no op of its own: a transposed convolution is exactly a stride-1 convolution of the input with zeros
    inserted between rows/columns (stride - 1 of them) and ``dilation * (k - 1) - padding`` zeros around it
    (``output_padding`` more at the bottom/right), with the kernel's channel axes swapped and its taps flipped. The
    IR is that ``zeropad2d`` (stride attribute) then a ``conv2d``, so every executor already computes it exactly.
    Train mode is the float ``conv_transpose2d`` of the fake-quantized weight and bias, then the output quantizer.
    ``per_channel`` weight formats are per input channel (torch stores the kernel (C, O/groups, kh, kw))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *, weight_width: int = 8,
                 bias_width: int = 16, out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 per_channel: bool = False, khot: int | None = None, out_signed: bool = True,
                 weight_quant: FixedQuant | None = None, bias_quant: FixedQuant | None = None,
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        if padding_mode != "zeros":
            raise UnsupportedError(f"QConvTranspose2d supports zero padding only (padding_mode='zeros'), got "
                                   f"{padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        for k, d, p in zip(self.kernel_size, _pair(self.dilation), _pair(self.padding)):
            if p > d * (k - 1):
                raise UnsupportedError(f"QConvTranspose2d: padding {p} above dilation * (kernel - 1) = {d * (k - 1)} "
                                       "(an output crop) is not supported")
        self._init_quant(in_channels, weight_width, bias_width, out_width, rounding, overflow, per_channel, khot,
                         out_signed, weight_quant, bias_quant, out_quant, learn_int_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._forward_exact(x)
        w, b = self._weight_bias_train()
        y = F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation)
        return self._out_train(y)

    def weight_codes(self) -> tuple[np.ndarray, FxFormat]:
        """Codes of the equivalent stride-1 convolution's dense (O, C, kh', kw') kernel (``transposed_kernel``)."""
        w, fw = _WeightLayer.weight_codes(self)
        return transposed_kernel(w, self.groups, _pair(self.dilation)), fw

    def zero_insertion(self) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
        """((top, bottom, left, right) pads, (sh, sw) stride) of the ``zeropad2d`` before the convolution."""
        pads = []
        for k, d, p, op in zip(self.kernel_size, _pair(self.dilation), _pair(self.padding),
                               _pair(self.output_padding)):
            pads += [d * (k - 1) - p, d * (k - 1) - p + op]
        return (pads[0], pads[1], pads[2], pads[3]), _pair(self.stride)

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BadInputError(f"QConvTranspose2d expects NCHW input, got shape {tuple(x.shape)}")
        xc, fx = values_to_codes(x, "QConvTranspose2d input")
        w, fw = self.weight_codes()
        b, fb = self.bias_codes()
        out = self.out_fmt if self.out_fmt is not None else lossless_acc_format(w.reshape(w.shape[0], -1), fw, fx, b, fb)
        (t, bo, le, r), (sh, sw) = self.zero_insertion()
        n, c, h, wd = xc.shape
        z = np.zeros((n, c, (h - 1) * sh + 1 + t + bo, (wd - 1) * sw + 1 + le + r), dtype=np.int64)
        z[:, :, t:t + (h - 1) * sh + 1:sh, le:le + (wd - 1) * sw + 1:sw] = xc
        return codes_to_values(ops.conv2d(z, fx, w, fw, out, b, fb, (1, 1), (0, 0)), out, x.device)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        if len(x.shape) != 3 or x.shape[0] != self.in_channels:
            raise UnsupportedError(f"{name}: transposed conv input must be ({self.in_channels}, H, W) per sample, "
                                   f"got {x.shape}")
        consts = self._consts()
        w, b = consts["weight"], consts.get("bias")
        acc = lossless_acc_format(w.codes.reshape(w.codes.shape[0], -1), w.fmt, x.fmt,
                                  None if b is None else b.codes, None if b is None else b.fmt)
        (t, bo, le, r), (sh, sw) = self.zero_insertion()
        c, h, wd = x.shape
        h, wd = (h - 1) * sh + 1 + t + bo, (wd - 1) * sw + 1 + le + r
        items: list[IRItem] = []
        src = x.name
        if (t, bo, le, r, sh, sw) != (0, 0, 0, 0, 1, 1):
            mid = f"{output}.zeros"
            attrs: dict[str, Any] = {"pads": (t, bo, le, r)}
            if (sh, sw) != (1, 1):
                attrs["stride"] = (sh, sw)
            items.append((Node(f"{name}.zeros", "zeropad2d", (src,), mid, attrs=attrs, source=name),
                          TensorSpec(mid, (c, h, wd), x.fmt)))
            src = mid
        kh, kw = w.codes.shape[2:]
        node = Node(name, "conv2d", (src,), output, consts, {"stride": (1, 1), "padding": (0, 0), "khot": self.khot},
                    acc, source=name)
        items.append((node, TensorSpec(output, (self.out_channels, h - kh + 1, wd - kw + 1), self._spec_fmt(acc))))
        return items


# ============================================================================ batch norm
class _BatchStats(torch.autograd.Function):
    """Per-channel batch mean and biased variance (channel axis 1) with a one-pass backward.

    Forward: two cheap reductions (E[x], E[x^2]) instead of the slow ``var_mean`` kernel. Backward:
    ``dx = g_mean / n + g_var * 2 (x - mean) / n`` as one ``addcmul`` instead of the autograd chain.
    """

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        dims = [0] + list(range(2, x.ndim))
        mean = x.mean(dim=dims)
        var = ((x * x).mean(dim=dims) - mean * mean).clamp_min_(0.0)
        ctx.save_for_backward(x, mean)
        return mean, var

    @staticmethod
    def backward(ctx, gm, gv):  # type: ignore[override]
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        gm = torch.zeros_like(mean) if gm is None else gm
        gv = torch.zeros_like(mean) if gv is None else gv
        k = gv * (2.0 / n)
        return torch.addcmul((gm / n - k * mean).reshape(shape), x, k.reshape(shape))


class _QBatchNorm(QModule):
    """BatchNorm as a fixed-point per-channel ``x * scale + shift`` with learned scale/shift/output formats.

    Train mode folds the (batch or running) statistics into ``scale = gamma / sqrt(var + eps)`` and
    ``shift = beta - mean * scale``, quantizes both per channel and applies them; exact mode does the same with the
    running statistics through ``qfx.fixed.ops.scale_shift``.
    """

    def _init_quant(self, scale_width: int, shift_width: int, out_width: int | None, rounding: str, overflow: str,
                    out_signed: bool, per_channel: bool, scale_quant: FixedQuant | None,
                    shift_quant: FixedQuant | None, out_quant: FixedQuant | None, learn_int_bits: bool) -> None:
        if not self.affine or not self.track_running_stats:
            raise UnsupportedError("QBatchNorm needs affine=True and track_running_stats=True")
        c = self.num_features if per_channel else None
        self.scale_quant = _quant(scale_quant, scale_width, rounding=rounding, overflow=overflow, per_channel=c,
                                  learn=learn_int_bits)
        self.shift_quant = _quant(shift_quant, shift_width, rounding=rounding, overflow=overflow, per_channel=c,
                                  learn=learn_int_bits)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def scale_shift(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``(scale, shift)``: batch statistics of ``x`` while training (running stats updated), else running."""
        if self.training and x is not None:
            mean, var = _BatchStats.apply(x)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                self.num_batches_tracked.add_(1)
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), mom)
                self.running_var.lerp_(var.detach() * (n / max(n - 1, 1)), mom)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        return scale, self.bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.qfx_mode == "exact":
            return self._forward_exact(x)
        if self.training:  # batch statistics: one fused node where it applies (same bits)
            y = batch_norm_train(self, x)
            if y is not None:
                return y
        scale, shift = self.scale_shift(x)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        ss = quantize_pair(self.scale_quant, scale, self.shift_quant, shift)  # one autograd node, same values
        if ss is None:
            hq = self.shift_quant(shift)
            ss = self.scale_quant(scale), hq
        y = torch.addcmul(ss[1].reshape(shape), x, ss[0].reshape(shape))
        return self._out_train(y)

    def scale_shift_codes(self) -> tuple[np.ndarray, FxFormat, np.ndarray, FxFormat]:
        """Codes of the running-statistics scale and shift in their (union) formats."""
        with torch.no_grad():
            training, self.training = self.training, False
            try:
                scale, shift = self.scale_shift()
            finally:
                self.training = training
            s, fs = self.scale_quant.quantize_exact(scale.float())
            h, fh = self.shift_quant.quantize_exact(shift.float())
        return s, fs, h, fh

    def accumulator_format(self, in_fmt: FxFormat | None = None) -> FxFormat:
        """Lossless format of ``x * scale + shift`` for inputs of ``in_fmt``."""
        in_fmt = self._in_fmt(in_fmt)
        _, fs, _, fh = self.scale_shift_codes()
        return ops.scale_shift_format(in_fmt, fs, fh)

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        xc, fx = values_to_codes(x, "QBatchNorm input")
        s, fs, h, fh = self.scale_shift_codes()
        out = self.out_fmt if self.out_fmt is not None else ops.scale_shift_format(fx, fs, fh)
        return codes_to_values(ops.scale_shift(xc, fx, s, fs, h, fh, out), out, x.device)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        if x.shape[0] != self.num_features:
            raise UnsupportedError(f"{name}: batch norm over {self.num_features} channels got input shape {x.shape}")
        s, fs, h, fh = self.scale_shift_codes()
        acc = ops.scale_shift_format(x.fmt, fs, fh)
        node = Node(name, "scale_shift", (x.name,), output, {"scale": Constant(s, fs), "shift": Constant(h, fh)},
                    {}, acc, source=name)
        return [(node, TensorSpec(output, x.shape, self._spec_fmt(acc)))]


def _bn_kwargs_doc() -> None:  # pragma: no cover - documentation anchor
    """Quantization kwargs: scale_width, shift_width, out_width, rounding, overflow, out_signed, per_channel."""


class QBatchNorm1d(nn.BatchNorm1d, _QBatchNorm):
    """``nn.BatchNorm1d`` in fixed point (per-channel scale/shift formats by default)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, scale_width: int = 8,
                 shift_width: int = 8, out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 out_signed: bool = True, per_channel: bool = True, scale_quant: FixedQuant | None = None,
                 shift_quant: FixedQuant | None = None, out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._init_quant(scale_width, shift_width, out_width, rounding, overflow, out_signed, per_channel,
                         scale_quant, shift_quant, out_quant, learn_int_bits)

    forward = _QBatchNorm.forward


class QBatchNorm2d(nn.BatchNorm2d, _QBatchNorm):
    """``nn.BatchNorm2d`` in fixed point (per-channel scale/shift formats by default)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, scale_width: int = 8,
                 shift_width: int = 8, out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 out_signed: bool = True, per_channel: bool = True, scale_quant: FixedQuant | None = None,
                 shift_quant: FixedQuant | None = None, out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self._init_quant(scale_width, shift_width, out_width, rounding, overflow, out_signed, per_channel,
                         scale_quant, shift_quant, out_quant, learn_int_bits)

    forward = _QBatchNorm.forward


# ============================================================================ activations
class QReLU(QModule):
    """ReLU with an (unsigned by default) output quantizer; ``out_width=None`` keeps the input format."""

    def __init__(self, inplace: bool = False, *, out_width: int | None = 8, out_signed: bool = False,
                 rounding: str = "RND", overflow: str = "SAT", out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            with torch.no_grad():
                xc, fx = values_to_codes(x, "QReLU input")
                out = self._spec_fmt(fx)
                return codes_to_values(ops.relu(xc, fx, out), out, x.device)
        q = attr(self, "out_quant")
        if q is not None and not q.signed and q.overflow != "WRAP":
            if _CHAINED:  # computed already by the layer before (quant.link_chains), for exactly this x
                y = _take_chained(q, x)
                if y is not None:
                    return y
            return q(x)  # an unsigned saturating quantizer already maps negatives to 0 (same values and gradients)
        return self._out_train(F.relu(x))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        return [(Node(name, "relu", (x.name,), output, source=name), TensorSpec(output, x.shape, self._spec_fmt(x.fmt)))]


class QClippedReLU(QModule):
    """``min(max(x, 0), cap)`` (ReLU6 for cap=6) with an output quantizer. ``cap`` must be a finite dyadic value."""

    def __init__(self, cap: float = 6.0, *, out_width: int | None = 8, out_signed: bool = False,
                 rounding: str = "RND", overflow: str = "SAT", out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        cap = float(cap)
        if not math.isfinite(cap) or cap <= 0 or float(np.float32(cap)) != cap:
            raise FormatError(f"clip cap must be a positive float32-representable value, got {cap!r}")
        self.cap = cap
        self.cap_frac_bits = _frac_bits_needed(np.array([cap]))
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"

    def _clip_fmt(self, fx: FxFormat) -> tuple[FxFormat, int]:
        """A format holding every value of ``fx`` and the cap exactly, and the cap's code in it."""
        f = max(fx.frac_bits, self.cap_frac_bits)
        sh = f - fx.frac_bits
        cap_code = int(math.ldexp(self.cap, f))
        lo, hi = fx.min_code << sh, fx.max_code << sh
        return FxFormat.for_code_range(min(lo, 0), max(hi, cap_code), f, signed=fx.signed), cap_code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            with torch.no_grad():
                xc, fx = values_to_codes(x, "QClippedReLU input")
                f2, cap_code = self._clip_fmt(fx)
                xc = np.left_shift(xc, f2.frac_bits - fx.frac_bits)
                out = self._spec_fmt(f2)
                return codes_to_values(ops.clip(xc, f2, 0, cap_code, out), out, x.device)
        return self._out_train(torch.clamp(x, 0.0, self.cap))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        items: list[IRItem] = []
        src, fx = x.name, x.fmt
        cap_scaled = math.ldexp(self.cap, fx.frac_bits)
        if cap_scaled >= fx.max_code:  # the cap can never bind
            cap_code = fx.max_code
        elif cap_scaled == int(cap_scaled):
            cap_code = int(cap_scaled)
        else:  # cap off the input grid: move to a lossless format that holds it first
            f2, cap_code = self._clip_fmt(fx)
            f2 = f2.with_modes("TRN", "WRAP")
            mid = f"{output}.in"
            items.append((Node(f"{name}.quant", "quant", (src,), mid, source=name), TensorSpec(mid, x.shape, f2)))
            src, fx = mid, f2
        lo = max(0, fx.min_code)
        node = Node(name, "clip", (src,), output, attrs={"lo": lo, "hi": cap_code}, source=name)
        items.append((node, TensorSpec(output, x.shape, self._spec_fmt(fx))))
        return items


# ============================================================================ residual add
class QAdd(QModule):
    """Residual add ``a + b``: exact sum (binary points aligned as ap_fixed does) cast to the output format.

    With ``out_width=None`` (the default, for float models) it is a plain add whose exact-mode output is the
    lossless sum format; ``qfx.quantize_model`` gives it an output quantizer.
    """

    def __init__(self, *, out_width: int | None = None, out_signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            with torch.no_grad():
                ac, fa = values_to_codes(a, "QAdd input a")
                bc, fb = values_to_codes(b, "QAdd input b")
                out = self._spec_fmt(fa.add_format(fb))
                return codes_to_values(ops.add(ac, fa, bc, fb, out), out, a.device)
        return self._out_train(a + b)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 2:
            raise UnsupportedError(f"{name}: add takes two inputs, got {len(inputs)}")
        from qfx.nn.op_layers import broadcast_operands  # op_layers imports this module

        items, a, b = broadcast_operands(name, "add", inputs[0], inputs[1])  # as QMul's and QSub's
        node = Node(name, "add", (a.name, b.name), output, source=name)
        return items + [(node, TensorSpec(output, a.shape, self._spec_fmt(a.fmt.add_format(b.fmt))))]


# ============================================================================ pooling / reshape
def _pool_args(kernel_size: Any, stride: Any, padding: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    k = _pair(kernel_size)
    return k, _pair(stride if stride is not None else k), _pair(padding)


def ceil_extra(size: int, kernel: int, stride: int, pad: int) -> int:
    """Rows (or columns) ``ceil_mode=True`` adds after the input: torch's output size (rounded up, but the last
    window must start inside the input or its left padding) is the floor-mode size of the input with this many more.
    For a max pool they repeat the edge (a replicate pad): every window that reaches them also holds the edge
    element, so the maximum is torch's."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return max(0, (out - 1) * stride + kernel - size - 2 * pad)


class QMaxPool2d(nn.MaxPool2d, QModule):
    """Max pooling; keeps the input format unless an output quantizer is given. ``ceil_mode=True`` (SqueezeNet,
    GoogLeNet) is a replicate pad of the bottom/right edge (``ceil_extra``; a ``zeropad2d`` node in the IR) before a
    floor-mode pool."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False, *, out_width: int | None = None,
                 out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        if _pair(dilation) != (1, 1) or return_indices:
            raise UnsupportedError("QMaxPool2d supports dilation=1, return_indices=False only")
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def _extra(self, h: int, w: int) -> tuple[int, int]:
        """(bottom, right) rows/columns of edge replication that make ``ceil_mode`` a floor-mode pool."""
        if not self.ceil_mode:
            return 0, 0
        k, s, p = _pool_args(self.kernel_size, self.stride, self.padding)
        return ceil_extra(h, k[0], s[0], p[0]), ceil_extra(w, k[1], s[1], p[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = _pool_args(self.kernel_size, self.stride, self.padding)
        if self.qfx_mode == "exact":
            with torch.no_grad():
                xc, fx = values_to_codes(x, "QMaxPool2d input")
                eh, ew = self._extra(x.shape[-2], x.shape[-1])
                if eh or ew:
                    xc = np.pad(xc, ((0, 0), (0, 0), (0, eh), (0, ew)), mode="edge")
                out = self._spec_fmt(fx)
                return codes_to_values(ops.maxpool2d(xc, fx, out, k, s, p), out, x.device)
        if self.ceil_mode:
            return self._out_train(F.max_pool2d(x, k, s, p, ceil_mode=True))
        y = max_pool_train(x, k, s, p)  # one fused node where it applies (same values and gradients)
        return self._out_train(F.max_pool2d(x, k, s, p) if y is None else y)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        k, s, p = _pool_args(self.kernel_size, self.stride, self.padding)
        items: list[IRItem] = []
        eh, ew = self._extra(x.shape[1], x.shape[2])
        if eh or ew:  # ceil_mode: replicate the bottom/right edge, then a floor-mode pool
            padded = TensorSpec(f"{output}.ceil", (x.shape[0], x.shape[1] + eh, x.shape[2] + ew), x.fmt)
            items.append((Node(f"{name}.ceil", "zeropad2d", (x.name,), padded.name,
                               attrs={"pads": (0, eh, 0, ew), "mode": "replicate"}, source=name), padded))
            x = padded
        shape = (x.shape[0], ops.conv_out_size(x.shape[1], k[0], s[0], p[0]), ops.conv_out_size(x.shape[2], k[1], s[1], p[1]))
        node = Node(name, "maxpool2d", (x.name,), output, attrs={"kernel": k, "stride": s, "padding": p}, source=name)
        return items + [(node, TensorSpec(output, shape, self._spec_fmt(x.fmt)))]


def avgpool_recip(window: int, recip_width: int = 16) -> tuple[int, FxFormat]:
    """Code and format of ``1/window``: exactly ``2**-n`` (one bit) for powers of two, else rounded to
    ``recip_width`` fractional bits (round half up, computed on integers)."""
    if window & (window - 1) == 0:
        n = window.bit_length() - 1
        return 1, FxFormat(1, 1 - n, signed=False)
    code = ((1 << (recip_width + 1)) + window) // (2 * window)
    return code, FxFormat(recip_width, 0, signed=False)


class QAvgPool2d(nn.AvgPool2d, QModule):
    """Average pooling as ``sum(window) * recip`` (``recip`` = 1/(kh*kw) in fixed point), with an output quantizer."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None, *, recip_width: int = 16,
                 out_width: int | None = 8, out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        if ceil_mode or not count_include_pad or divisor_override is not None:
            raise UnsupportedError("QAvgPool2d supports ceil_mode=False, count_include_pad=True, no divisor_override")
        k, _, _ = _pool_args(kernel_size, stride, padding)
        self.recip_code, self.recip_fmt = avgpool_recip(k[0] * k[1], recip_width)
        self.recip_value = float(self.recip_fmt.from_int(self.recip_code))
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p = _pool_args(self.kernel_size, self.stride, self.padding)
        if self.qfx_mode == "exact":
            with torch.no_grad():
                xc, fx = values_to_codes(x, "QAvgPool2d input")
                out = self._spec_fmt(ops.avgpool_format(fx, self.recip_fmt, k[0] * k[1]))
                y = ops.avgpool2d(xc, fx, out, k, s, self.recip_code, self.recip_fmt, p)
                return codes_to_values(y, out, x.device)
        # float64: sum * recip is exact there, so the output quantizer is the only rounding, as in exact mode
        # (float32 would round the product first, and a value just below a tie could land on it: one LSB off)
        y = F.avg_pool2d(x.to(torch.float64), k, s, p, divisor_override=1) * self.recip_value
        return self._out_train(y).to(x.dtype)

    def accumulator_format(self, in_fmt: FxFormat | None = None) -> FxFormat:
        """Lossless format of ``sum(window) * recip`` for inputs of ``in_fmt``."""
        in_fmt = self._in_fmt(in_fmt)
        k, _, _ = _pool_args(self.kernel_size, self.stride, self.padding)
        return ops.avgpool_format(in_fmt, self.recip_fmt, k[0] * k[1])

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        k, s, p = _pool_args(self.kernel_size, self.stride, self.padding)
        shape = (x.shape[0], ops.conv_out_size(x.shape[1], k[0], s[0], p[0]), ops.conv_out_size(x.shape[2], k[1], s[1], p[1]))
        acc = self.accumulator_format(x.fmt)
        node = Node(name, "avgpool2d", (x.name,), output,
                    {"recip": Constant(np.array(self.recip_code, dtype=np.int64), self.recip_fmt)},
                    {"kernel": k, "stride": s, "padding": p}, acc, source=name)
        return [(node, TensorSpec(output, shape, self._spec_fmt(acc)))]


class QFlatten(nn.Flatten, QModule):
    """Flatten (C, H, W) -> (C*H*W,) in C order; values and format unchanged."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__(start_dim, end_dim)
        if start_dim != 1 or end_dim != -1:
            raise UnsupportedError("QFlatten supports start_dim=1, end_dim=-1 only")
        self.out_quant = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        node = Node(name, "flatten", (x.name,), output, source=name)
        return [(node, TensorSpec(output, (int(np.prod(x.shape)),), x.fmt))]


# ============================================================================ 1-D layers (as 2-D with height 1)
class _OneD:
    """1-D twins computed as their 2-D layer over (C, 1, L): ``forward`` adds and drops the unit height, the IR
    gets reshape nodes (wires in hardware) around the 2-D op, so every backend runs 1-D models unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise BadInputError(f"{type(self).__name__} expects (N, C, L) input, got shape {tuple(x.shape)}")
        return super().forward(x.unsqueeze(2)).squeeze(2)  # type: ignore[misc]

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        x = _one_input(inputs, name)
        if len(x.shape) != 2:
            raise UnsupportedError(f"{name}: {type(self).__name__} input must be (C, L) per sample, got {x.shape}")
        mid = f"{output}.2d"
        items: list[IRItem] = [(Node(f"{name}.to2d", "reshape", (x.name,), mid, attrs={"shape": (x.shape[0], 1, x.shape[1])},
                                     source=name), TensorSpec(mid, (x.shape[0], 1, x.shape[1]), x.fmt))]
        items += super().ir_nodes(name, [items[0][1]], f"{output}.out2d")  # type: ignore[misc]
        last = items[-1][1]
        shape = (last.shape[0], last.shape[2])
        items.append((Node(f"{name}.to1d", "reshape", (last.name,), output, attrs={"shape": shape}, source=name),
                      TensorSpec(output, shape, last.fmt)))
        return items


def _one(v: Any) -> int:
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise UnsupportedError(f"expected one value for a 1-D layer, got {v!r}")
        v = v[0]
    return int(v)


class QConv1d(_OneD, QConv2d):
    """``nn.Conv1d`` twin (any groups, dilation, padding incl. 'same'): a QConv2d with a (1, k) kernel; its weight
    is stored (O, C/groups, 1, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device: Any = None,
                 dtype: Any = None, **qfx_kwargs: Any) -> None:
        pad = padding if isinstance(padding, str) else (0, _one(padding))
        super().__init__(in_channels, out_channels, (1, _one(kernel_size)), (1, _one(stride)), pad,
                         (1, _one(dilation)), groups, bias, padding_mode, device, dtype, **qfx_kwargs)


class QConvTranspose1d(_OneD, QConvTranspose2d):
    """``nn.ConvTranspose1d`` twin: a QConvTranspose2d with a (1, k) kernel; weight stored (C, O/groups, 1, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, **qfx_kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, (1, _one(kernel_size)), (1, _one(stride)), (0, _one(padding)),
                         (0, _one(output_padding)), groups, bias, (1, _one(dilation)), padding_mode, device, dtype,
                         **qfx_kwargs)


class QMaxPool1d(_OneD, QMaxPool2d):
    """``nn.MaxPool1d`` twin: a QMaxPool2d with a (1, k) window."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False, **qfx_kwargs: Any) -> None:
        k = _one(kernel_size)
        super().__init__((1, k), (1, _one(stride if stride is not None else k)), (0, _one(padding)),
                         (1, _one(dilation)), return_indices, ceil_mode, **qfx_kwargs)


class QAvgPool1d(_OneD, QAvgPool2d):
    """``nn.AvgPool1d`` twin: a QAvgPool2d with a (1, k) window."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, **qfx_kwargs: Any) -> None:
        k = _one(kernel_size)
        super().__init__((1, k), (1, _one(stride if stride is not None else k)), (0, _one(padding)), ceil_mode,
                         count_include_pad, **qfx_kwargs)
