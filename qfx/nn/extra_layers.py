"""qfx layers that ``quantize_model`` inserts for functional code: the global average pool.

``x.mean((2, 3))``, ``F.adaptive_avg_pool2d(x, 1)`` and ``nn.AdaptiveAvgPool2d(1)`` all average over the whole
H x W plane; their window is only known from the input, so this layer reads it at every call instead of taking a
kernel size like ``QAvgPool2d``. It lowers to the same IR op (``avgpool2d`` with one window covering the plane).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed import ops
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Constant, Node, TensorSpec
from qfx.nn.exact import codes_to_values, values_to_codes
from qfx.nn.layers import IRItem, QModule, _quant, avgpool_recip
from qfx.nn.quant import FixedQuant

__all__ = ["QGlobalAvgPool2d"]


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
