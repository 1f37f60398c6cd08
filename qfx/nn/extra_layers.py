"""qfx layers that ``quantize_model`` inserts for torch idioms without a one-to-one qfx layer.

* ``QGlobalAvgPool2d``: ``x.mean((2, 3))``, ``F.adaptive_avg_pool2d(x, 1)`` and ``nn.AdaptiveAvgPool2d(1)`` all
  average over the whole H x W plane; their window is only known from the input, so this layer reads it at every
  call instead of taking a kernel size like ``QAvgPool2d``. It lowers to the same IR op (``avgpool2d`` with one
  window covering the plane).
* ``QAdaptiveAvgPool2d`` / ``QAdaptiveMaxPool2d``: ``nn.AdaptiveAvgPool1d/2d(k)``, ``nn.AdaptiveMaxPool1d/2d(k)``
  (and the global max pool ``x.amax((2, 3))``) where k divides the input size: the window (input / k) is read from
  the input, then it is an ``avgpool2d``/``maxpool2d`` with kernel = stride = window (1-D inputs as height 1).
* ``QConstScale``: ``x * 0.5``, ``x / 4``, ``x + 1``, ``1 - x``, ``-x``: Python constants, exported as the
  ``scale_shift`` op with the constants repeated per channel.
* ``QClip``: ``Hardtanh(lo, hi)`` / ``clamp(x, lo, hi)`` with any constant bounds (the ``clip`` op).
* ``QPReLU``: ``nn.PReLU`` as ``relu(x) + a * (x - relu(x))`` through the relu, sub, scale_shift and add ops
  (per-channel slope ``a`` in fixed point), so it exports exactly with no op of its own.

Every new layer here computes exact mode by running its own IR nodes through the golden functions
(``qfx.nn.op_layers._IRModule``), so exact mode, the interpreter and the backends share one definition.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed import ops
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Constant, Node, TensorSpec
from qfx.nn.exact import codes_to_values, values_to_codes
from qfx.nn.layers import IRItem, QModule, _quant, avgpool_recip
from qfx.nn.op_layers import _IRModule
from qfx.nn.quant import FixedQuant

__all__ = ["QPixelShuffle", "QGlobalAvgPool2d", "QAdaptiveAvgPool2d", "QAdaptiveMaxPool2d", "QConstScale", "QClip", "QPReLU",
           "QLayerNorm", "QSum", "QGroupNorm", "const_code", "QParamCat"]


class QGlobalAvgPool2d(QModule):
    """Mean over H x W of an (N, C, H, W) tensor as ``sum(plane) * recip`` (recip = 1/(H*W) in fixed point: one bit
    for powers of two, else ``recip_width`` fractional bits), one cast to the output format.

    ``keepdim=True`` gives (N, C, 1, 1) (``AdaptiveAvgPool2d(1)``), ``False`` gives (N, C) (``x.mean((2, 3))``).
    Train mode forms ``sum * recip`` in float64, where it is exact for the widths train mode allows (float32 would
    round the product once before the output quantizer rounds it again, and a value just below a rounding tie can
    then land on the tie: one LSB away from exact mode). The output quantizer is the only rounding, as in exact mode.
    """

    def __init__(self, keepdim: bool = True, *, recip_width: int = 16, out_width: int | None = 8,
                 out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.keepdim = bool(keepdim)
        self.recip_width = int(recip_width)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)
        self.window: tuple[int, int] | None = None  # (H, W) of the last input, for reports
        self._recips: dict[int, tuple[int, FxFormat, float]] = {}

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}, recip_width={self.recip_width}"

    def recip(self, window: int) -> tuple[int, FxFormat, float]:
        """(code, format, value) of 1/window, the same constant the IR node carries."""
        r = self._recips.get(window)
        if r is None:
            code, fmt = avgpool_recip(window, self.recip_width)
            r = self._recips[window] = (code, fmt, float(fmt.from_int(code)))
        return r

    def _plane(self, x: torch.Tensor) -> tuple[int, int]:
        if x.ndim != 4:
            raise BadInputError(f"global average pool expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        self.window = (h, w)
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self._plane(x)
        code, rf, value = self.recip(h * w)
        if self.qfx_mode == "exact":
            with torch.no_grad():
                xc, fx = values_to_codes(x, "QGlobalAvgPool2d input")
                out = self._spec_fmt(ops.avgpool_format(fx, rf, h * w))
                y = codes_to_values(ops.avgpool2d(xc, fx, out, (h, w), (h, w), code, rf, (0, 0)), out, x.device)
                return y if self.keepdim else y.flatten(1)
        s = x.to(torch.float64).sum(dim=(2, 3), keepdim=self.keepdim) * value
        return self._out_train(s).to(x.dtype)

    def accumulator_format(self, in_fmt: FxFormat | None = None, window: tuple[int, int] | None = None) -> FxFormat:
        """Lossless format of ``sum * recip`` for inputs of ``in_fmt`` over ``window`` (default: the last input's)."""
        in_fmt = self._in_fmt(in_fmt)
        hw = window or self.window
        if hw is None:
            raise BadInputError("QGlobalAvgPool2d.accumulator_format needs the window: pass it or run the model once")
        return ops.avgpool_format(in_fmt, self.recip(hw[0] * hw[1])[1], hw[0] * hw[1])

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        if len(x.shape) != 3:
            raise UnsupportedError(f"{name}: global average pool input must be (C, H, W) per sample, got {x.shape}")
        c, h, w = x.shape
        code, rf, _ = self.recip(h * w)
        acc = ops.avgpool_format(x.fmt, rf, h * w)
        fmt = self._spec_fmt(acc)
        pooled = output if self.keepdim else f"{output}.pool"
        node = Node(name, "avgpool2d", (x.name,), pooled, {"recip": Constant(np.array(code, dtype=np.int64), rf)},
                    {"kernel": (h, w), "stride": (h, w), "padding": (0, 0)}, acc, source=name)
        items: list[IRItem] = [(node, TensorSpec(pooled, (c, 1, 1), fmt))]
        if not self.keepdim:
            items.append((Node(f"{name}.flatten", "flatten", (pooled,), output, source=name),
                          TensorSpec(output, (c,), fmt)))
        return items


# ============================================================================ adaptive pools
def _size_pair(v: Any, what: str) -> tuple[int, int]:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in t):
        raise UnsupportedError(f"{what}: output size must be a positive int or pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


#: input rank (batch included) a call was written for -> per-sample ranks it takes; 0: "the last dim" (x.mean(-1)
#: of (N, C, L) or (N, n)); None: an nn.Adaptive*Pool module of unknown rank
_POOL_RANKS: dict[int | None, tuple[int, ...]] = {None: (2, 3), 0: (1, 2), 2: (1,), 3: (2,), 4: (3,)}


class _AdaptivePool(_IRModule):
    """Pool to a fixed output size over (N, C, H, W) or (N, C, L) inputs (L as a 1 x L plane); the window
    (input size / output size, which must divide) is read from every input, then it is the op's kernel and stride.

    ``keepdim=False`` (only with output size 1) drops the spatial dimensions: (N, C), like ``x.mean((2, 3))``."""

    op = ""

    def __init__(self, output_size: Any = 1, keepdim: bool = True, ndim: int | None = None) -> None:
        super().__init__()
        self.output_size = output_size
        self.keepdim = bool(keepdim)
        self.ndim = ndim  # the input rank the call was written for (x.mean(-1) means (N, C, L)); None: 3 or 4
        if not self.keepdim and output_size not in (1, (1,), (1, 1), [1], [1, 1]):
            raise UnsupportedError(f"{type(self).__name__}: keepdim=False needs output size 1, got {output_size!r}")

    def extra_repr(self) -> str:
        return f"output_size={self.output_size!r}, keepdim={self.keepdim}"

    def _out_hw(self, rank: int) -> tuple[int, int]:
        """(oh, ow) for a per-sample rank-``rank`` input ((C, L): height 1)."""
        if rank == 2:
            v = self.output_size
            v = v[0] if isinstance(v, (tuple, list)) and len(v) == 1 else v
            return 1, _size_pair(v, type(self).__name__)[0]
        return _size_pair(self.output_size, type(self).__name__)

    def window(self, shape: Sequence[int]) -> tuple[int, int]:
        """Kernel = stride of the pool over a per-sample input ``shape`` ((C, H, W) or (C, L))."""
        ranks = _POOL_RANKS.get(self.ndim, (2, 3))
        if len(shape) == 1 and len(shape) in ranks and self.output_size not in (1, (1,), [1]):
            raise UnsupportedError(f"{type(self).__name__}: a reduction over the features of (N, n) has output "
                                   f"size 1, got {self.output_size!r}")
        if len(shape) not in ranks:
            want = " or ".join({1: "(N, n)", 2: "(N, C, L)", 3: "(N, C, H, W)"}[r] for r in ranks)
            raise BadInputError(f"{type(self).__name__} expects {want} input, got per-sample shape {tuple(shape)}")
        if len(shape) == 1:
            return 1, shape[0]
        oh, ow = self._out_hw(len(shape))
        h, w = (1, shape[1]) if len(shape) == 2 else (shape[1], shape[2])
        if h % oh or w % ow:
            raise UnsupportedError(f"{type(self).__name__}: output size {self.output_size!r} does not divide the "
                                   f"input size {tuple(shape[1:])}; qfx pools with kernel = stride = input / output")
        return h // oh, w // ow

    def _pool_train(self, x4: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _over_channels(self, rank: int) -> bool:
        """A reduction over dim 1 (``ndim`` 2) of (N, C, H, W) or (N, C, L): over the channels (CBAM-style maps)."""
        return self.ndim == 2 and rank in (2, 3)

    def _over_width(self, rank: int) -> bool:
        """A reduction over the last dim (``ndim`` 0: ``x.mean(-1)``) of (N, C, H, W): a (1, W) window per row."""
        return self.ndim == 0 and rank == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._over_width(x.ndim - 1):
            y = self._exact(x) if self.qfx_mode == "exact" else self._pool_train(x, (1, x.shape[3]))
            return y if self.keepdim or self.qfx_mode == "exact" else y.squeeze(3)
        if self._over_channels(x.ndim - 1):  # channels last (a transpose in the IR), then a (1, C) window
            if self.qfx_mode == "exact":
                return self._exact(x)
            c = x.shape[1]
            xl = x.movedim(1, -1)
            y = self._pool_train(xl if x.ndim == 4 else xl.unsqueeze(2), (1, c))  # (N, H, W, 1) / (N, L, 1, 1)
            y = y.reshape(x.shape[0], *x.shape[2:])
            return y.unsqueeze(1) if self.keepdim else y
        k = self.window(tuple(x.shape[1:]))
        if x.ndim == 2:  # features of (N, n): (N, 1) with keepdim, else (N,)
            y = self._exact(x) if self.qfx_mode == "exact" else self._pool_train(x[:, None, None, :], k).flatten(1)
            return y if self.keepdim else y.reshape(-1)
        if self.qfx_mode == "exact":
            return self._exact(x)
        y = self._pool_train(x.unsqueeze(2) if x.ndim == 3 else x, k)
        if not self.keepdim:
            return y.flatten(1)
        return y.squeeze(2) if x.ndim == 3 else y

    def _pool_node(self, name: str, src: str, out: str, k: tuple[int, int], x: TensorSpec) -> tuple[Node, FxFormat]:
        raise NotImplementedError  # pragma: no cover

    def scalar_output(self, inputs: Sequence[TensorSpec]) -> bool:
        """Torch gives (N,) (capture's per-sample (1,)): keepdim=False over the features of (N, n)."""
        return not self.keepdim and len(inputs) == 1 and len(inputs[0].shape) == 1

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        if self._over_channels(len(x.shape)):
            return self._channel_nodes(name, x, output)
        if self._over_width(len(x.shape)):  # (C, H, W) -> (C, H, 1) [-> (C, H)]
            c, h, w = x.shape
            pooled = output if self.keepdim else f"{output}.pool"
            node, fmt = self._pool_node(name, x.name, pooled, (1, w), x)
            items = [(node, TensorSpec(pooled, (c, h, 1), fmt))]
            if not self.keepdim:
                items.append((Node(f"{name}.reshape", "reshape", (pooled,), output, attrs={"shape": (c, h)},
                                   source=name), TensorSpec(output, (c, h), fmt)))
            return items
        k = self.window(x.shape)
        items: list[IRItem] = []
        src = x
        if len(x.shape) < 3:  # (C, L) -> (C, 1, L), (n,) -> (1, 1, n): a wire
            s3 = (x.shape[0], 1, x.shape[1]) if len(x.shape) == 2 else (1, 1, x.shape[0])
            mid = f"{output}.2d"
            items.append((Node(f"{name}.to2d", "reshape", (x.name,), mid, attrs={"shape": s3}, source=name),
                          TensorSpec(mid, s3, x.fmt)))
            src = items[-1][1]
        c, h, w = src.shape
        shape = (c, h // k[0], w // k[1])
        last = len(x.shape) == 3 and self.keepdim
        pooled = output if last else f"{output}.pool"
        node, fmt = self._pool_node(name, src.name, pooled, k, src)
        items.append((node, TensorSpec(pooled, shape, fmt)))
        if not last:
            final = (c,) if not self.keepdim or len(x.shape) == 1 else (c, shape[2])
            op = "flatten" if len(final) == 1 else "reshape"
            items.append((Node(f"{name}.{op}", op, (pooled,), output, attrs={} if op == "flatten" else {"shape": final},
                               source=name), TensorSpec(output, final, fmt)))
        return items


    def _channel_nodes(self, name: str, x: TensorSpec, output: str) -> list[IRItem]:
        """(C, H, W) -> transpose (H, W, C) -> pool (1, C) -> (H, W, 1) -> reshape (1, H, W) (or (H, W)); (C, L) ->
        transpose (L, C) -> reshape (L, 1, C) -> pool -> (L, 1, 1) -> reshape (1, L) (or (L,))."""
        c, rest = x.shape[0], tuple(x.shape[1:])
        perm = (1, 2, 0) if len(x.shape) == 3 else (1, 0)
        t = f"{output}.last"
        items: list[IRItem] = [(Node(f"{name}.last", "transpose", (x.name,), t, attrs={"perm": perm}, source=name),
                                TensorSpec(t, rest + (c,), x.fmt))]
        src = items[-1][1]
        if len(x.shape) == 2:
            items.append((Node(f"{name}.to2d", "reshape", (t,), f"{output}.2d", attrs={"shape": (rest[0], 1, c)},
                               source=name), TensorSpec(f"{output}.2d", (rest[0], 1, c), x.fmt)))
            src = items[-1][1]
        pooled = f"{output}.pool"
        node, fmt = self._pool_node(name, src.name, pooled, (1, c), src)
        items.append((node, TensorSpec(pooled, src.shape[:2] + (1,), fmt)))
        final = ((1,) if self.keepdim else ()) + rest
        op = "flatten" if len(final) == 1 else "reshape"
        items.append((Node(f"{name}.{op}", op, (pooled,), output, attrs={} if op == "flatten" else {"shape": final},
                           source=name), TensorSpec(output, final, fmt)))
        return items


class QAdaptiveAvgPool2d(_AdaptivePool):
    """``nn.AdaptiveAvgPool1d/2d(k)`` where k divides the input: ``sum(window) * recip`` (recip = 1/window in fixed
    point: one bit for powers of two, else ``recip_width`` fractional bits), one cast to the output format; the IR
    op is ``avgpool2d`` with kernel = stride = window. Train mode forms the product in float64, where it is exact,
    so the output quantizer is the only rounding, as in exact mode."""

    op = "avgpool2d"

    def __init__(self, output_size: Any = 1, keepdim: bool = True, ndim: int | None = None, *,
                 recip_width: int = 16, out_width: int | None = 8, out_signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__(output_size, keepdim, ndim)
        self.recip_width = int(recip_width)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def recip(self, window: int) -> tuple[int, FxFormat]:
        """(code, format) of 1/window, the constant the IR node carries."""
        return avgpool_recip(window, self.recip_width)

    def _uneven(self, shape: Sequence[int]) -> bool:
        """A 2-D pool of (C, H, W) whose output size does not divide the input: torch's windows then overlap
        and vary, which ``_area`` (QResize2d's "area" matrices, the same output quantizer) computes."""
        if len(shape) != 3 or self._over_channels(3) or self._over_width(3) or not self.keepdim:
            return False
        oh, ow = self._out_hw(3)
        return bool(shape[1] % oh or shape[2] % ow)

    def _area(self) -> nn.Module:
        from qfx.nn.op_layers import QResize2d

        helper = self.__dict__.get("_area_helper")
        if helper is None:  # not a child module: the output quantizer stays this layer's own
            helper = QResize2d(self._out_hw(3), None, "area", out_quant=self.out_quant)
            self.__dict__["_area_helper"] = helper
        helper.qfx_mode = self.qfx_mode
        return helper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4 and self._uneven(tuple(x.shape[1:])):
            return self._area()(x)
        return super().forward(x)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) == 1 and self._uneven(inputs[0].shape):
            return self._area().ir_nodes(name, inputs, output)
        return super().ir_nodes(name, inputs, output)

    def _pool_train(self, x4: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
        code, rf = self.recip(k[0] * k[1])
        s = F.avg_pool2d(x4.to(torch.float64), k, k, divisor_override=1) * float(rf.from_int(code))
        return self._out_train(s).to(x4.dtype)

    def _pool_node(self, name: str, src: str, out: str, k: tuple[int, int], x: TensorSpec) -> tuple[Node, FxFormat]:
        code, rf = self.recip(k[0] * k[1])
        acc = ops.avgpool_format(x.fmt, rf, k[0] * k[1])
        node = Node(name, "avgpool2d", (src,), out, {"recip": Constant(np.array(code, dtype=np.int64), rf)},
                    {"kernel": k, "stride": k, "padding": (0, 0)}, acc, source=name)
        return node, self._spec_fmt(acc)


class QAdaptiveMaxPool2d(_AdaptivePool):
    """``nn.AdaptiveMaxPool1d/2d(k)`` where k divides the input (the global max pool for k = 1): a ``maxpool2d``
    with kernel = stride = window; keeps the input format unless an output quantizer is given."""

    op = "maxpool2d"

    def __init__(self, output_size: Any = 1, keepdim: bool = True, ndim: int | None = None, *,
                 out_width: int | None = None, out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__(output_size, keepdim, ndim)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def _pool_train(self, x4: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
        return self._out_train(F.max_pool2d(x4, k, k))

    def _pool_node(self, name: str, src: str, out: str, k: tuple[int, int], x: TensorSpec) -> tuple[Node, FxFormat]:
        node = Node(name, "maxpool2d", (src,), out, attrs={"kernel": k, "stride": k, "padding": (0, 0)}, source=name)
        return node, self._spec_fmt(x.fmt)


class QSum(QAdaptiveAvgPool2d):
    """``x.sum((2, 3))``, ``x.sum(-1)``, ``torch.sum(x, 1)`` of (N, n): the same ``avgpool2d`` as the mean with recip
    exactly 1 (code 1 of ap_ufixed<1,1>), so the window's sum is exact and the output cast is the only rounding
    (a dense/conv with all-ones weights would give the same values with a weight table and adders per output)."""

    def recip(self, window: int) -> tuple[int, FxFormat]:
        return 1, FxFormat(1, 1, signed=False)


# ============================================================================ constants
def const_code(value: float, bits: int = 16) -> tuple[int, FxFormat]:
    """(code, format) of a Python constant: exact when its significand fits ``bits`` bits (0.5, 3, 0.375, any
    dyadic value that short), else rounded to ``bits`` significant bits (1/3, 0.1: relative error <= 2**-bits).
    The format is signed, at least 2 bits wide, with no trailing zero bits in the code."""
    v = float(value)
    if not math.isfinite(v):
        raise UnsupportedError(f"constant {value!r} is not finite")
    if not 2 <= int(bits) <= 32:
        raise BadInputError(f"constant bits must be in 2..32, got {bits!r}")
    if v == 0.0:
        return 0, FxFormat(2, 2)
    m, e = math.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
    code = int(math.floor(math.ldexp(m, bits) + 0.5))
    frac = bits - e
    while code % 2 == 0:
        code //= 2
        frac -= 1
    f = FxFormat.for_code_range(min(code, 0), max(code, 0), frac, signed=True)
    return code, FxFormat(max(2, f.width), max(2, f.width) - frac)


class QConstScale(_IRModule):
    """``x * scale + shift`` with Python constants (``x * 0.5``, ``x / 4``, ``x + 1``, ``1 - x``, ``-x``).

    The constants become fixed-point codes (``const_code``: exact when they fit ``const_bits`` significant bits)
    and the layer is the IR's ``scale_shift`` op with them repeated per channel; the exact product and sum are
    cast once to the output format (the lossless ``x * scale + shift`` format without an output quantizer).
    Train mode computes the same product and sum in float64 (exact there), then the output quantizer."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0, *, const_bits: int = 16, out_width: int | None = 8,
                 out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.scale_code, self.scale_fmt = const_code(scale, const_bits)
        self.shift_code, self.shift_fmt = const_code(shift, const_bits)
        self.scale = float(self.scale_fmt.from_int(self.scale_code))
        self.shift = float(self.shift_fmt.from_int(self.shift_code))
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}, shift={self.shift!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        y = x.to(torch.float64) * self.scale + self.shift
        return self._out_train(y).to(x.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        if not x.shape:
            raise UnsupportedError(f"{name}: a constant scale/shift needs a per-sample tensor, got a scalar")
        c = x.shape[0]
        acc = ops.scale_shift_format(x.fmt, self.scale_fmt, self.shift_fmt)
        consts = {"scale": Constant(np.full(c, self.scale_code, dtype=np.int64), self.scale_fmt),
                  "shift": Constant(np.full(c, self.shift_code, dtype=np.int64), self.shift_fmt)}
        node = Node(name, "scale_shift", (x.name,), output, consts, {}, acc, source=name)
        return [(node, TensorSpec(output, x.shape, self._spec_fmt(acc)))]


# ============================================================================ clip
def _bound(v: float | None, what: str) -> float | None:
    """The bound as torch applies it to float32 activations: rounded to float32 (0.3 -> 0.30000001192...)."""
    if v is None:
        return None
    f = float(np.float32(v))
    if not math.isfinite(f):
        raise UnsupportedError(f"clip bound {what}={v!r} must be a finite constant")
    return f


class QClip(_IRModule):
    """``min(max(x, lo), hi)`` with constant bounds (``Hardtanh(lo, hi)``, ``clamp(x, lo, hi)``; either bound may
    be None), cast to the output format. Bounds are the float32 values torch compares with. The input first moves
    (losslessly) to a grid and range that hold both bounds when they are not on its own grid, as ``QClippedReLU``
    does for its cap (a bound like 0.3 needs about 25 fractional bits there; 0.25 or 0.375 need few)."""

    def __init__(self, lo: float | None = -1.0, hi: float | None = 1.0, *, out_width: int | None = 8,
                 out_signed: bool | None = None, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.lo, self.hi = _bound(lo, "lo"), _bound(hi, "hi")
        if self.lo is None and self.hi is None:
            raise UnsupportedError("QClip needs at least one bound")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise UnsupportedError(f"QClip bounds are reversed: lo={self.lo} > hi={self.hi}")
        signed = (self.lo is None or self.lo < 0) if out_signed is None else out_signed
        self.out_quant = _quant(out_quant, out_width, signed=signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"lo={self.lo}, hi={self.hi}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        return self._out_train(torch.clamp(x, self.lo, self.hi))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.nn.exact import _frac_bits_needed

        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        fx = x.fmt
        bounds = [b for b in (self.lo, self.hi) if b is not None]
        f = max(fx.frac_bits, _frac_bits_needed(np.array(bounds)))
        sh = f - fx.frac_bits
        lo_c = int(math.ldexp(self.lo, f)) if self.lo is not None else None
        hi_c = int(math.ldexp(self.hi, f)) if self.hi is not None else None
        lo_r, hi_r = fx.min_code << sh, fx.max_code << sh
        items: list[IRItem] = []
        src = x.name
        need_lo = lo_c is not None and lo_c > lo_r
        need_hi = hi_c is not None and hi_c < hi_r
        if (need_lo and lo_c > hi_r) or (need_hi and hi_c < lo_r) or sh:
            # a bound off the input grid or outside its range: a lossless format holding both first
            f2 = FxFormat.for_code_range(min(lo_r, lo_c if lo_c is not None else lo_r),
                                         max(hi_r, hi_c if hi_c is not None else hi_r), f,
                                         signed=fx.signed or (lo_c is not None and lo_c < 0)).with_modes("TRN", "WRAP")
            mid = f"{output}.in"
            items.append((Node(f"{name}.quant", "quant", (src,), mid, source=name), TensorSpec(mid, x.shape, f2)))
            src, fx = mid, f2
        lo = max(fx.min_code, lo_c) if lo_c is not None else fx.min_code
        hi = min(fx.max_code, hi_c) if hi_c is not None else fx.max_code
        node = Node(name, "clip", (src,), output, attrs={"lo": lo, "hi": hi}, source=name)
        items.append((node, TensorSpec(output, x.shape, self._spec_fmt(fx))))
        return items


# ============================================================================ PReLU
class QPReLU(_IRModule):
    """``nn.PReLU`` (one slope, or one per channel) as ``p + a * (x - p)`` with ``p = relu(x)``: the IR ops relu,
    sub (``x - p`` = min(x, 0), exact), scale_shift (times the fixed-point slope, exact) and add (cast once to the
    output format). The slope ``weight`` is learned with a ``weight_width``-bit quantizer."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, *, weight_width: int = 8,
                 out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 weight_quant: FixedQuant | None = None, out_quant: FixedQuant | None = None,
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.weight = nn.Parameter(torch.full((self.num_parameters,), float(init)))
        self.weight_quant = _quant(weight_quant, weight_width, rounding=rounding, overflow=overflow,
                                   learn=learn_int_bits)
        self.out_quant = _quant(out_quant, out_width, signed=True, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"

    def slope_codes(self) -> tuple[np.ndarray, FxFormat]:
        """Codes and format of the quantized slopes."""
        with torch.no_grad():
            return self.weight_quant.quantize_exact(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        a = self.weight_quant(self.weight).to(torch.float64)
        shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (-1,)
        x64 = x.to(torch.float64)
        y = torch.where(x64 >= 0, x64, a.reshape(shape) * x64)  # a * x is exact in float64
        return self._out_train(y).to(x.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        c = x.shape[0] if x.shape else 1
        if self.num_parameters not in (1, c):
            raise UnsupportedError(f"{name}: PReLU has {self.num_parameters} slopes for {c} channels")
        a, fa = self.slope_codes()
        a = np.broadcast_to(np.asarray(a, dtype=np.int64).reshape(-1), (c,)).copy()
        zero, fz = const_code(0.0)
        fx = x.fmt
        p, m, t = f"{output}.pos", f"{output}.neg", f"{output}.scaled"
        fm = fx.sub_format(fx)
        acc = ops.scale_shift_format(fm, fa, fz)
        out = self._spec_fmt(fx.add_format(acc))
        return [
            (Node(f"{name}.relu", "relu", (x.name,), p, source=name), TensorSpec(p, x.shape, fx)),
            (Node(f"{name}.neg", "sub", (x.name, p), m, source=name), TensorSpec(m, x.shape, fm)),
            (Node(f"{name}.slope", "scale_shift", (m,), t,
                  {"scale": Constant(a, fa), "shift": Constant(np.zeros(c, dtype=np.int64), fz)}, {}, acc,
                  source=name), TensorSpec(t, x.shape, acc)),
            (Node(name, "add", (p, t), output, source=name), TensorSpec(output, x.shape, out)),
        ]


def _affine_bn(n: int, two_d: bool = False, **kw: Any) -> nn.Module:
    from qfx.nn.layers import QBatchNorm1d, QBatchNorm2d, quantize_pair

    class _LNAffine(QBatchNorm2d if two_d else QBatchNorm1d):  # type: ignore[misc,valid-type]
        """LayerNorm's elementwise affine: scale = gamma, shift = beta (running statistics unused)."""

        def scale_shift(self, x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            return self.weight, self.bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.qfx_mode == "exact":
                return self._forward_exact(x)
            ss = quantize_pair(self.scale_quant, self.weight, self.shift_quant, self.bias)
            if ss is None:
                hq = self.shift_quant(self.bias)
                ss = self.scale_quant(self.weight), hq
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return self._out_train(torch.addcmul(ss[1].reshape(shape), x, ss[0].reshape(shape)))

    return _LNAffine(n, **kw)


class QLayerNorm(QModule):
    """``nn.LayerNorm(n)`` over (N, n) vectors from qfx ops, each rounding once to a learned format:
    mean (an average pool over the features), ``d = x - mean`` (sub, the mean broadcast), ``v = mean(d * d)``
    (mul, average pool), ``r = 1 / sqrt(v + eps)`` (a lookup table over v's format), ``y = d * r`` (mul) and
    ``y * gamma + beta`` (scale_shift). Every step is an existing qfx module, so train mode, exact mode and every
    backend agree bit for bit; the precision is that of ``width``-bit intermediates (v and r most of all).

    Over the last dim of (N, ..., n) (tokens (N, L, n); ConvNeXt's channels-last (N, H, W, C)) the same steps run on
    the rows (N, M, n) (a reshape): the pools average each row (a (1, n) window), the mean and the scale broadcast
    per row, and gamma/beta apply to the transposed rows (n, M) as a per-channel scale_shift (transposes and
    reshapes are wires)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 *, width: int = 8, param_width: int = 8, out_width: int = 8, rounding: str = "RND",
                 overflow: str = "SAT", learn_int_bits: bool = True) -> None:
        super().__init__()
        from qfx.fixed.tables import MAX_TABLE_BITS
        from qfx.nn.op_layers import QActivation, QMul, QSub

        self.normalized_shape = int(normalized_shape)
        self.eps = float(eps)
        kw = dict(rounding=rounding, overflow=overflow, learn_int_bits=learn_int_bits)
        self.mean = QAdaptiveAvgPool2d(1, True, 2, out_width=width, **kw)
        self.center = QSub(out_width=width, **kw)
        self.square = QMul(out_width=width, out_signed=False, **kw)
        self.var = QAdaptiveAvgPool2d(1, True, 2, out_width=min(width, MAX_TABLE_BITS), out_signed=False, **kw)
        self.rstd = QActivation(f"rsqrt({self.eps!r})", in_width=None, out_width=width, out_signed=False, **kw)
        self.scale = QMul(out_width=width if elementwise_affine else out_width, **kw)
        self.affine = (_affine_bn(self.normalized_shape, scale_width=param_width, shift_width=param_width,
                                  out_width=out_width, **kw) if elementwise_affine else None)
        if self.affine is not None and not bias:
            with torch.no_grad():
                self.affine.bias.zero_()
            self.affine.bias.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"

    @property
    def out_quant(self) -> FixedQuant | None:  # type: ignore[override]
        return self.affine.out_quant if self.affine is not None else self.scale.out_quant

    def _check(self, shape: Sequence[int], where: str) -> None:
        if not shape or tuple(shape)[-1] != self.normalized_shape:
            raise UnsupportedError(f"{where}: qfx LayerNorm({self.normalized_shape}) normalizes the last dim of "
                                   f"(N, ..., {self.normalized_shape}), got per-sample shape {tuple(shape)}")
        rows = len(shape) > 1
        self.mean.ndim = self.var.ndim = 3 if rows else 2  # rows (N, M, n): a (1, n) window; (N, n): the features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(tuple(x.shape[1:]), "QLayerNorm")
        rows = x.reshape(x.shape[0], -1, self.normalized_shape) if x.ndim > 2 else x
        d = self.center(rows, self.mean(rows))
        y = self.scale(d, self.rstd(self.var(self.square(d, d))))
        if self.affine is not None:
            y = self.affine(y.transpose(1, 2)).transpose(1, 2) if x.ndim > 2 else self.affine(y)
        return y.reshape(x.shape)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        self._check(x.shape, name)
        items: list[IRItem] = []

        def step(m: nn.Module, part: str, ins: Sequence[TensorSpec], out: str | None = None) -> TensorSpec:
            items.extend(m.ir_nodes(f"{name}.{part}", list(ins), out or f"{output}.{part}"))
            return items[-1][1]

        def move(op: str, t: TensorSpec, shape: tuple[int, ...], part: str, out: str | None = None) -> TensorSpec:
            o = out or f"{output}.{part}"
            attrs = {"perm": (1, 0)} if op == "transpose" else {"shape": shape}
            items.append((Node(f"{name}.{part}", op, (t.name,), o, attrs=attrs, source=name), TensorSpec(o, shape,
                                                                                                      t.fmt)))
            return items[-1][1]

        n = self.normalized_shape
        m = int(np.prod(x.shape[:-1]))
        rows = move("reshape", x, (m, n), "rows") if len(x.shape) > 2 else x
        mean = step(self.mean, "mean", [rows])
        d = step(self.center, "center", [rows, mean])
        sq = step(self.square, "square", [d, d])
        r = step(self.rstd, "rstd", [step(self.var, "var", [sq])])
        if len(x.shape) == 1:
            if self.affine is None:
                step(self.scale, "scale", [d, r], output)
            else:
                step(self.affine, "affine", [step(self.scale, "scale", [d, r])], output)
            return items
        y = step(self.scale, "scale", [d, r], output if self.affine is None and len(x.shape) == 2 else None)
        if self.affine is not None:
            t = step(self.affine, "affine", [move("transpose", y, (n, m), "cols")])
            y = move("transpose", t, (m, n), "uncols", output if len(x.shape) == 2 else None)
        if len(x.shape) > 2:
            move("reshape", y, tuple(x.shape), "unrows", output)
        return items


class QGroupNorm(QModule):
    """``nn.GroupNorm(G, C)`` and ``nn.InstanceNorm2d(C)`` (G = C) over (N, C, H, W), built like QLayerNorm from
    existing qfx modules: (C, H, W) is viewed as (G, C/G * H, W) (a reshape: the channels of a group are
    contiguous), then per group ``mean`` (average pool), ``d = x - mean`` (sub, broadcast per group),
    ``v = mean(d * d)``, ``r = 1 / sqrt(v + eps)`` (table over v's format), ``y = d * r``, the view back to
    (C, H, W) and the per-channel affine (scale_shift). Every step rounds once to a learned ``width``-bit format,
    so train mode, exact mode and every backend agree bit for bit."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, *,
                 width: int = 8, param_width: int = 8, out_width: int = 8, rounding: str = "RND",
                 overflow: str = "SAT", learn_int_bits: bool = True) -> None:
        super().__init__()
        from qfx.fixed.tables import MAX_TABLE_BITS
        from qfx.nn.op_layers import QActivation, QMul, QSub

        if num_groups < 1 or num_channels % num_groups:
            raise UnsupportedError(f"QGroupNorm: {num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps = int(num_groups), int(num_channels), float(eps)
        kw = dict(rounding=rounding, overflow=overflow, learn_int_bits=learn_int_bits)
        self.mean = QAdaptiveAvgPool2d(1, True, 4, out_width=width, **kw)
        self.center = QSub(out_width=width, **kw)
        self.square = QMul(out_width=width, out_signed=False, **kw)
        self.var = QAdaptiveAvgPool2d(1, True, 4, out_width=min(width, MAX_TABLE_BITS), out_signed=False, **kw)
        self.rstd = QActivation(f"rsqrt({self.eps!r})", in_width=None, out_width=width, out_signed=False, **kw)
        self.scale = QMul(out_width=width if affine else out_width, **kw)
        self.affine = (_affine_bn(self.num_channels, True, scale_width=param_width, shift_width=param_width,
                                  out_width=out_width, **kw) if affine else None)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"

    @property
    def out_quant(self) -> FixedQuant | None:  # type: ignore[override]
        return self.affine.out_quant if self.affine is not None else self.scale.out_quant

    def _grouped(self, shape: Sequence[int], where: str) -> tuple[int, int, int]:
        if len(shape) != 3 or shape[0] != self.num_channels:
            raise UnsupportedError(f"{where}: qfx GroupNorm/InstanceNorm normalizes (N, {self.num_channels}, H, W) "
                                   f"tensors, got per-sample shape {tuple(shape)}")
        c, h, w = shape
        return self.num_groups, c // self.num_groups * h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self._grouped(tuple(x.shape[1:]), "QGroupNorm")
        xg = x.reshape(x.shape[0], *g)
        d = self.center(xg, self.mean(xg))
        y = self.scale(d, self.rstd(self.var(self.square(d, d)))).reshape(x.shape)
        return self.affine(y) if self.affine is not None else y

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise UnsupportedError(f"{name}: expected one input tensor, got {len(inputs)}")
        x = inputs[0]
        g = self._grouped(x.shape, name)
        items: list[IRItem] = []

        def step(m: nn.Module, part: str, ins: Sequence[TensorSpec], out: str | None = None) -> TensorSpec:
            items.extend(m.ir_nodes(f"{name}.{part}", list(ins), out or f"{output}.{part}"))
            return items[-1][1]

        def reshape(t: TensorSpec, shape: tuple[int, ...], part: str, out: str | None = None) -> TensorSpec:
            if t.shape == shape and out is None:
                return t
            o = out or f"{output}.{part}"
            items.append((Node(f"{name}.{part}", "reshape", (t.name,), o, attrs={"shape": shape}, source=name),
                          TensorSpec(o, shape, t.fmt)))
            return items[-1][1]

        xg = reshape(x, g, "group")
        d = step(self.center, "center", [xg, step(self.mean, "mean", [xg])])
        r = step(self.rstd, "rstd", [step(self.var, "var", [step(self.square, "square", [d, d])])])
        if self.affine is None:
            if g == x.shape:
                step(self.scale, "scale", [d, r], output)
            else:
                reshape(step(self.scale, "scale", [d, r]), x.shape, "ungroup", output)
        else:
            y = reshape(step(self.scale, "scale", [d, r]), x.shape, "ungroup")
            step(self.affine, "affine", [y], output)
        return items


class QUnflatten(QModule):
    """``nn.Unflatten(dim, sizes)`` (a Linear's features into (C, H, W) for a decoder): a reshape of the per-sample
    dims, values and format unchanged, so the IR gets a ``reshape`` node (wires in hardware)."""

    def __init__(self, dim: int, sizes: Sequence[int]) -> None:
        super().__init__()
        if isinstance(dim, str) or not all(isinstance(s, int) for s in sizes) or sum(s == -1 for s in sizes) > 1:
            raise UnsupportedError(f"Unflatten(dim={dim!r}, sizes={tuple(sizes)!r}): qfx needs an integer dim and "
                                   "integer sizes")
        self.dim, self.sizes = int(dim), tuple(int(s) for s in sizes)
        self.out_quant = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(self.dim, self.sizes)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1:
            raise BadInputError(f"{name}: Unflatten takes one input")
        x = inputs[0]
        r = len(x.shape) + 1  # torch rank, batch included
        d = self.dim % r
        if self.dim < -r or self.dim >= r or d == 0:
            raise UnsupportedError(f"{name}: Unflatten(dim={self.dim}) must split a per-sample dim (not the batch)")
        n = x.shape[d - 1]
        known = int(np.prod([s for s in self.sizes if s != -1]))
        sizes = tuple(n // known if s == -1 else s for s in self.sizes)
        if int(np.prod(sizes)) != n:
            raise BadInputError(f"{name}: Unflatten sizes {self.sizes} do not split {n} elements")
        shape = x.shape[:d - 1] + sizes + x.shape[d:]
        node = Node(name, "reshape", (x.name,), output, {}, {"shape": shape}, None, source=name)
        return [(node, TensorSpec(output, shape, x.fmt))]


class QPixelShuffle(QModule):
    """``nn.PixelShuffle(r)`` (sub-pixel upsampling: (C*r*r, H, W) -> (C, H*r, W*r)) and ``nn.PixelUnshuffle(r)``
    (the inverse): element moves only, values and format unchanged, so the IR gets reshape -> transpose -> reshape
    (wires in hardware), as the ONNX importer builds DepthToSpace/SpaceToDepth."""

    def __init__(self, factor: int, inverse: bool = False) -> None:
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise UnsupportedError(f"Pixel{'Uns' if inverse else 'S'}huffle needs a positive integer factor, got "
                                   f"{factor!r}")
        self.factor, self.inverse = int(factor), bool(inverse)
        self.out_quant = None

    def extra_repr(self) -> str:
        return f"{'downscale' if self.inverse else 'upscale'}_factor={self.factor}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor) if self.inverse else F.pixel_shuffle(x, self.factor)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        (x,) = inputs
        r = self.factor
        what = "PixelUnshuffle" if self.inverse else "PixelShuffle"
        if len(x.shape) != 3 or (self.inverse and (x.shape[1] % r or x.shape[2] % r)) or \
                (not self.inverse and x.shape[0] % (r * r)):
            raise UnsupportedError(f"{name}: {what}({r}) of per-sample shape {x.shape}")
        c, h, w = x.shape
        if self.inverse:  # (C, H*r, W*r) -> (C, H, r, W, r) -> (C, r, r, H, W) -> (C*r*r, H, W)
            s1, perm = (c, h // r, r, w // r, r), (0, 2, 4, 1, 3)
            out = (c * r * r, h // r, w // r)
        else:  # (C*r*r, H, W) -> (C, r, r, H, W) -> (C, H, r, W, r) -> (C, H*r, W*r)
            s1, perm = (c // (r * r), r, r, h, w), (0, 3, 1, 4, 2)
            out = (c // (r * r), h * r, w * r)
        s2 = tuple(s1[i] for i in perm)
        a, b = f"{output}.split", f"{output}.moved"
        return [(Node(f"{name}.split", "reshape", (x.name,), a, {}, {"shape": s1}, None, source=name),
                 TensorSpec(a, s1, x.fmt)),
                (Node(f"{name}.move", "transpose", (a,), b, {}, {"perm": perm}, None, source=name),
                 TensorSpec(b, s2, x.fmt)),
                (Node(name, "reshape", (b,), output, {}, {"shape": out}, None, source=name),
                 TensorSpec(output, out, x.fmt))]


class QParamAffine(QModule):
    """``x * p``, ``x + p`` or ``x - p`` with an ``nn.Parameter`` ``p`` read in forward (a learned per-channel
    scale ``x * self.gamma`` of shape (1, C, 1, 1), (C, 1, 1) or (C,) on (N, C), or one learned scalar): the IR's
    ``scale_shift`` op. The parameter object itself is held (still trained, still in ``model.parameters()``) and
    quantized to ``const_width`` bits like a BatchNorm scale; exact mode applies the codes with integer arithmetic.
    A parameter on another axis (ConvNeXt's layer scale ``self.gamma * x``, gamma (C,) on channels-last
    (N, H, W, C); (C,) on tokens (N, L, C)) scales that axis: in the IR a transpose brings it first and one after
    the scale_shift puts it back (wires)."""

    def __init__(self, param: torch.Tensor, role: str, *, shape: Sequence[int] | None = None, const_width: int = 8,
                 out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        if role not in ("scale", "add", "sub"):
            raise UnsupportedError(f"QParamAffine role {role!r}: scale, add or sub")
        # ``shape``: the shape the tensor is read with (``self.gamma.view(1, -1, 1, 1)``); same values in order
        self.shape = tuple(int(d) for d in (param.shape if shape is None else shape))
        if int(np.prod(self.shape)) != param.numel():
            raise UnsupportedError(f"QParamAffine: shape {self.shape} does not hold {param.numel()} values")
        dims = [i for i, d in enumerate(self.shape) if d != 1]
        if isinstance(param, nn.Parameter):
            self.param = param
        else:  # a buffer of the float model (an input normalization's mean and std): a frozen constant
            self.register_buffer("param", param)
        self.role = role
        # several non-1 dims: one value per element of the trailing per-sample dims (a positional embedding
        # (1, L, E) on tokens (N, L, E)): the shape without its leading 1s
        self.full = tuple(self.shape[dims[0]:]) if len(dims) > 1 else None
        self.trailing = len(self.shape) - 1 - dims[0] if dims and self.full is None else None  # dims after the channel
        self.const_quant = _quant(None, const_width, rounding=rounding, overflow=overflow, learn=learn_int_bits)
        self.out_quant = _quant(None, out_width, rounding=rounding, overflow=overflow, learn=learn_int_bits)

    def _axis(self, shape: Sequence[int]) -> int:
        """The torch axis (batch = 0) of an input of torch shape ``shape`` the parameter's values run along (1 for
        scalars; for a per-element parameter, the first axis it covers)."""
        if self.full is not None:
            a = len(shape) - len(self.full)
            if a < 1 or tuple(shape[a:]) != self.full:
                raise UnsupportedError(f"a parameter of shape {self.shape} read in forward meets a tensor "
                                       f"of shape (N, {', '.join(str(v) for v in shape[1:])}): qfx applies one value "
                                       "per channel, one per element of the trailing dims, or a scalar")
            return a
        if self.trailing is None:
            return 1
        rank = len(shape)
        a = rank - 1 - self.trailing
        if a < 1 or shape[a] != self.param.numel():
            raise UnsupportedError(f"a parameter of shape {self.shape} broadcasts over dim {a} of a "
                                   f"{rank}-D tensor of shape (N, {', '.join(str(v) for v in shape[1:])}); qfx "
                                   "scales one per-sample dim with one value per element")
        return a

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter as (C,) (or (1,))."""
        v = self.param.reshape(-1)
        return -v if self.role == "sub" else v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._forward_exact(x)
        a = self._axis(tuple(x.shape))
        v = self.const_quant(self._values(x))
        if self.full is not None:
            v = v.reshape(self.full)
        else:
            v = v.reshape((1,) * a + (-1,) + (1,) * (x.dim() - 1 - a)) if v.numel() > 1 else v.reshape(())
        y = x * v if self.role == "scale" else x + v
        return self._out_train(y)

    def _codes(self, c: int) -> tuple[np.ndarray, FxFormat, np.ndarray, FxFormat]:
        """(scale, its format, shift, its format), ``c`` values each (a per-element parameter: repeated over the
        leading dims it broadcasts over)."""
        with torch.no_grad():
            v, fv = self.const_quant.quantize_exact(self._values(torch.zeros((1, c) if self.trailing is None else
                                                                             (1, c) + (1,) * self.trailing)).float())
        v = np.asarray(v, dtype=np.int64).reshape(-1)
        v = np.tile(v, c // v.size) if self.full is not None else np.broadcast_to(v, (c,)).copy()
        one, f1 = const_code(1.0 if self.role != "scale" else 0.0)
        k = np.full(c, one, dtype=np.int64)
        return (v, fv, k, f1) if self.role == "scale" else (k, f1, v, fv)

    @torch.no_grad()
    def _forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        xc, fx = values_to_codes(x, "QParamAffine input")
        a = self._axis(tuple(x.shape))
        if self.full is not None:  # every element its own channel
            s, fs, h, fh = self._codes(int(np.prod(x.shape[1:])))
            out = self.out_fmt if self.out_fmt is not None else ops.scale_shift_format(fx, fs, fh)
            y = ops.scale_shift(xc.reshape(xc.shape[0], -1), fx, s, fs, h, fh, out).reshape(xc.shape)
            return codes_to_values(np.ascontiguousarray(y), out, x.device)
        s, fs, h, fh = self._codes(x.shape[a])
        out = self.out_fmt if self.out_fmt is not None else ops.scale_shift_format(fx, fs, fh)
        y = np.moveaxis(ops.scale_shift(np.moveaxis(xc, a, 1), fx, s, fs, h, fh, out), 1, a)
        return codes_to_values(np.ascontiguousarray(y), out, x.device)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 1 or not inputs[0].shape:
            raise UnsupportedError(f"{name}: a parameter scale/shift needs one per-sample tensor")
        x = inputs[0]
        ax = self._axis((1,) + tuple(x.shape)) - 1  # per-sample axis
        items: list[IRItem] = []
        if self.full is not None:  # flattened (wires), one scale_shift channel per element, shape back (wires)
            n = int(np.prod(x.shape))
            flat = x
            if len(x.shape) > 1:
                flat = TensorSpec(f"{output}.flat", (n,), x.fmt)
                items.append((Node(f"{name}.flat", "flatten", (x.name,), flat.name, source=name), flat))
            s, fs, h, fh = self._codes(n)
            acc = ops.scale_shift_format(x.fmt, fs, fh)
            fo = self._spec_fmt(acc)
            out = f"{output}.scaled" if len(x.shape) > 1 else output
            items.append((Node(name, "scale_shift", (flat.name,), out, {"scale": Constant(s, fs),
                                                                        "shift": Constant(h, fh)}, {}, acc,
                               source=name), TensorSpec(out, (n,), fo)))
            if len(x.shape) > 1:
                items.append((Node(f"{name}.back", "reshape", (out,), output, attrs={"shape": tuple(x.shape)},
                                   source=name), TensorSpec(output, tuple(x.shape), fo)))
            return items
        perm = (ax,) + tuple(i for i in range(len(x.shape)) if i != ax)
        if ax:  # the parameter's axis first (a transpose), scale_shift per channel, then back
            t = TensorSpec(f"{output}.first", tuple(x.shape[i] for i in perm), x.fmt)
            items.append((Node(f"{name}.first", "transpose", (x.name,), t.name, attrs={"perm": perm}, source=name), t))
            x = t
        s, fs, h, fh = self._codes(x.shape[0])
        acc = ops.scale_shift_format(x.fmt, fs, fh)
        fo = self._spec_fmt(acc)
        out = f"{output}.scaled" if ax else output
        items.append((Node(name, "scale_shift", (x.name,), out, {"scale": Constant(s, fs), "shift": Constant(h, fh)},
                           {}, acc, source=name), TensorSpec(out, x.shape, fo)))
        if ax:
            inv = tuple(int(i) for i in np.argsort(perm))
            shape = tuple(x.shape[i] for i in inv)
            items.append((Node(f"{name}.back", "transpose", (out,), output, attrs={"perm": inv}, source=name),
                          TensorSpec(output, shape, fo)))
        return items


class QTrainOnly(QModule):
    """A regularizer that is an identity at inference: ``nn.Dropout*``, ``F.dropout(x, p, self.training)``,
    torchvision's ``StochasticDepth``, timm's ``DropPath`` (any stateless module whose eval-mode ``forward`` returns
    its input; ``qfx.nn.trace`` finds them). In train mode with ``module.training`` set it runs the float module
    itself on the fake-quantized values (torch's randomness and scaling, as in the float model); in eval mode, in
    exact mode and during calibration it returns its input, so exact mode, capture (no IR node: a wire) and the
    hardware see the identity. The wrapped module is ``self.module`` (stateless: no state_dict entries)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.out_quant = None
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.qfx_mode == "train" and not self.calibrating:
            return self.module(x)
        return x

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:  # pragma: no cover
        raise UnsupportedError(f"{name}: QTrainOnly is an identity at inference; capture passes it through")


class QParamCat(_IRModule):
    """``torch.cat([self.cls_token.expand(N, -1, -1), x], dim=1)``: learned parameters broadcast over the batch
    (a ViT's class token, distillation or register tokens) concatenated before (``front``) and after (``back``) the
    tensors ``x`` along a per-sample dim. The parameters are held (still trained, one ``const_width``-bit format for
    all of them) and every value is cast once to the learned output format. The IR has no constant tensors, so
    the parameters enter as a shift: the tensors are concatenated (losslessly), zero-padded along the dim where the
    parameters go (a ``zeropad2d`` over a (C, H, W) view: wires) and a per-element ``scale_shift`` (scale 1, shift
    the parameters' codes, 0 over the tensors) adds them, one cast; reshapes around it are wires."""

    def __init__(self, front: Sequence[nn.Parameter], back: Sequence[nn.Parameter], dim: int = 1, *,
                 const_width: int = 8, out_width: int | None = 8, rounding: str = "RND", overflow: str = "SAT",
                 learn_int_bits: bool = True) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise UnsupportedError(f"a parameter concatenated along dim={dim!r}: qfx concatenates along a "
                                   "per-sample dim (dim 0 is the batch)")
        if not front and not back:
            raise UnsupportedError("QParamCat needs at least one parameter")
        self.front, self.back = nn.ParameterList(front), nn.ParameterList(back)
        self.n_front, self.dim = len(front), int(dim)
        self.const_quant = _quant(None, const_width, rounding=rounding, overflow=overflow, learn=learn_int_bits)
        self.out_quant = _quant(None, out_width, rounding=rounding, overflow=overflow, learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"front={len(self.front)}, back={len(self.back)}, dim={self.dim}"

    def _params(self) -> list[nn.Parameter]:
        return list(self.front) + list(self.back)

    def _sample_shapes(self, shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Each parameter's per-sample shape for a tensor of per-sample shape ``shape`` (a leading 1 is the batch)."""
        r = len(shape)
        out = []
        for p in self._params():
            s = tuple(p.shape)
            if len(s) == r + 1 and s[0] == 1:
                s = s[1:]
            if len(s) != r or any(a != b for i, (a, b) in enumerate(zip(s, shape)) if i != self._axis(r)):
                raise UnsupportedError(f"a parameter of shape {tuple(p.shape)} concatenated with per-sample shape "
                                       f"{tuple(shape)} along dim {self.dim}: the other dims must match")
            out.append(s)
        return out

    def _axis(self, r: int) -> int:
        """The per-sample axis (of rank ``r`` per-sample shapes) the parameters join."""
        ax = self.dim - 1 if self.dim > 0 else self.dim + r
        if not 0 <= ax < r:
            raise UnsupportedError(f"concat dim {self.dim} out of range for a rank-{r + 1} tensor")
        return ax

    def _quantized(self, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        ps = self._params()
        flat = self.const_quant(torch.cat([p.reshape(-1) for p in ps]))
        return list(torch.split(flat, [p.numel() for p in ps]))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if self.qfx_mode == "exact":
            return self._exact(*xs)
        mid = torch.cat(xs, dim=self.dim) if len(xs) > 1 else xs[0]
        shapes = self._sample_shapes(tuple(mid.shape[1:]))
        vals = [v.reshape((1,) + s).expand((mid.shape[0],) + s) for v, s in zip(self._quantized(shapes), shapes)]
        return self._out_train(torch.cat(vals[:self.n_front] + [mid] + vals[self.n_front:], dim=self.dim))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.nn.op_layers import _union

        if not inputs:
            raise UnsupportedError(f"{name}: a parameter concatenation needs at least one tensor")
        items: list[IRItem] = []

        def add(op: str, src: TensorSpec, shape: tuple[int, ...], part: str, attrs: dict[str, Any] | None = None,
                out: str | None = None) -> TensorSpec:
            o = out or f"{output}.{part}"
            t = TensorSpec(o, shape, src.fmt)
            items.append((Node(f"{name}.{part}", op, (src.name,), o, attrs=attrs or {}, source=name), t))
            return t

        shape = list(inputs[0].shape)
        r = len(shape)
        ax = self._axis(r)
        if len(inputs) > 1:
            shape[ax] = sum(t.shape[ax] for t in inputs)
            o = f"{output}.cat"
            mid = TensorSpec(o, tuple(shape), _union([t.fmt for t in inputs]))
            items.append((Node(f"{name}.cat", "concat", tuple(t.name for t in inputs), o, attrs={"axis": ax},
                               source=name), mid))
        else:
            mid = inputs[0]
        shapes = self._sample_shapes(mid.shape)
        with torch.no_grad():
            flat, fp = self.const_quant.quantize_exact(torch.cat([p.reshape(-1) for p in self._params()]).float())
        codes = np.split(np.asarray(flat, dtype=np.int64).reshape(-1),
                         np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
        blocks = [c.reshape(s) for c, s in zip(codes, shapes)]
        shift = np.concatenate(blocks[:self.n_front] + [np.zeros(mid.shape, dtype=np.int64)]
                               + blocks[self.n_front:], axis=ax)
        top = sum(s[ax] for s in shapes[:self.n_front])
        bottom = sum(s[ax] for s in shapes[self.n_front:])
        chw = (int(np.prod(mid.shape[:ax])), mid.shape[ax], int(np.prod(mid.shape[ax + 1:])))
        x = mid if tuple(mid.shape) == chw else add("reshape", mid, chw, "chw", {"shape": chw})
        x = add("zeropad2d", x, (chw[0], chw[1] + top + bottom, chw[2]), "pad", {"pads": (top, bottom, 0, 0)})
        n = shift.size
        x = add("flatten", x, (n,), "flat")
        one, f1 = const_code(1.0)
        acc = ops.scale_shift_format(x.fmt, f1, fp)
        fo = self._spec_fmt(acc)
        full = tuple(shift.shape)
        o = output if full == (n,) else f"{output}.shifted"
        items.append((Node(name, "scale_shift", (x.name,), o, {"scale": Constant(np.full(n, one, dtype=np.int64), f1),
                                                               "shift": Constant(shift.reshape(-1), fp)}, {}, acc,
                           source=name), TensorSpec(o, (n,), fo)))
        if full != (n,):
            items.append((Node(f"{name}.back", "reshape", (o,), output, attrs={"shape": full}, source=name),
                          TensorSpec(output, full, fo)))
        return items
