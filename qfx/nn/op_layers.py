"""qfx twins of the element-moving, element-wise and table ops: ``QSub``, ``QMul``, ``QCat``, ``QUpsample``,
``QZeroPad2d`` and ``QActivation`` (sigmoid, tanh, SiLU, GELU, hard-sigmoid/-swish, leaky ReLU, ELU, softplus).

Train mode is the float function followed by the output fake-quantizer (straight-through gradients). Exact mode runs
the module's own IR nodes (``ir_nodes``) through the op registry's golden functions, so torch exact mode, the
interpreter and every backend share one definition by construction.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.fixed.tables import MAX_TABLE_BITS, SELECT_OPS, build_table, evaluate, parse_fn
from qfx.ir.graph import Constant, Graph, Node, TensorSpec
from qfx.nn.exact import codes_to_values, frac_bits_needed, values_to_codes
from qfx.nn.layers import IRItem, QModule, _quant
from qfx.nn.quant import FixedQuant

__all__ = ["QSub", "QMul", "QMatMul", "QCat", "QUpsample", "QUpsampleBilinear", "QZeroPad2d", "QActivation", "QSoftmax",
           "TORCH_FUNCTIONS", "QResize2d", "QAvgPoolMatrix", "resize_matrix", "pool_matrix"]


class _IRModule(QModule):
    """A qfx module whose exact mode is its IR: the nodes of ``ir_nodes`` run through their golden functions."""

    def _exact(self, *xs: torch.Tensor) -> torch.Tensor:
        from qfx.ir.interpret import run

        specs, codes = [], {}
        with torch.no_grad():
            for i, x in enumerate(xs):
                c, f = values_to_codes(x, f"{type(self).__name__} input {i}")
                specs.append(TensorSpec(f"in{i}", tuple(c.shape[1:]), f))
                codes[f"in{i}"] = c
            items = self.ir_nodes(type(self).__name__, specs, "out")
            if not items:
                return xs[0]
            tensors = {s.name: s for s in specs} | {spec.name: spec for _, spec in items}
            used = {t for n, _ in items for t in n.inputs}
            g = Graph("exact", tuple(k for k in codes if k in used), ("out",), tensors, tuple(n for n, _ in items))
            y = run(g, {k: v for k, v in codes.items() if k in used})
            return codes_to_values(y, g.tensor("out").fmt, xs[0].device)


def _union(fmts: Sequence[FxFormat]) -> FxFormat:
    """Narrowest format holding every value of every format in ``fmts`` exactly."""
    f = max(x.frac_bits for x in fmts)
    lo = min(x.min_code << (f - x.frac_bits) for x in fmts)
    hi = max(x.max_code << (f - x.frac_bits) for x in fmts)
    return FxFormat.for_code_range(min(lo, 0), max(hi, 0), f)


# ============================================================================ two-operand
class _Binary(_IRModule):
    op = ""

    def __init__(self, *, out_width: int | None = None, out_signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def _float(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _exact_fmt(self, fa: FxFormat, fb: FxFormat) -> FxFormat:  # pragma: no cover
        raise NotImplementedError

    def forward(self, a: torch.Tensor, b: Any) -> torch.Tensor:
        if not isinstance(b, torch.Tensor):
            raise UnsupportedError(f"{type(self).__name__} takes two tensors; a Python constant operand is "
                                   "qfx.nn.QConstScale (quantize_model makes x * 0.5, x - 1 into one)")
        if self.qfx_mode == "exact":
            return self._exact(a, b)
        return self._out_train(self._float(a, b)).to(a.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) != 2:
            raise UnsupportedError(f"{name}: {self.op} takes two inputs, got {len(inputs)}")
        items, a, b = broadcast_operands(name, self.op, inputs[0], inputs[1])
        node = Node(name, self.op, (a.name, b.name), output, source=name)
        return items + [(node, TensorSpec(output, a.shape, self._spec_fmt(self._exact_fmt(a.fmt, b.fmt))))]


def broadcast_operands(name: str, op: str, a: TensorSpec, b: TensorSpec) -> tuple[list[IRItem], TensorSpec,
                                                                                    TensorSpec]:
    """(IR items, a, b) with the operand that has size-1 axes repeated to the other's shape (SE gates
    x * sigmoid(fc(pool(x))), channel maps, row statistics, one value per sample); one-line refusal otherwise."""
    if a.shape == b.shape:
        return [], a, b
    if _broadcasts(b.shape, a.shape):
        items, b = _broadcast(f"{name}.bcast_b", b, a.shape)
    elif _broadcasts(a.shape, b.shape):
        items, a = _broadcast(f"{name}.bcast_a", a, b.shape)
    else:
        raise UnsupportedError(f"{name}: {op} inputs differ in shape: {a.shape} vs {b.shape} (qfx broadcasts an "
                               "operand of the same rank along its size-1 axes: one value per channel, (C, 1, 1) / "
                               "(C, 1), one map over the channels, (1, H, W) / (1, L), a row (C, H, 1), or one value "
                               "per sample)")
    return items, a, b


def _broadcasts(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    """``small`` repeats to ``big`` by qfx's broadcasts: (C, 1, ...) to (C, ...), (1,) to any vector, or one map
    over the channels, (1, H, W) to (C, H, W) / (1, L) to (C, L) (CBAM-style spatial attention)."""
    if len(small) != len(big) or len(big) > 3 or small == big:
        return False
    return all(s in (1, g) for s, g in zip(small, big))  # any size-1 axes (a row statistic (C, H, 1) too)


def _broadcast(name: str, x: TensorSpec, shape: tuple[int, ...]) -> tuple[list[IRItem], TensorSpec]:
    """IR nodes repeating ``x`` to ``shape``: a nearest upsampling (an exact gather in every backend), with
    reshapes around it for (C, 1) and (1,) operands."""
    items: list[IRItem] = []

    def add(op: str, src: str, out: str, out_shape: tuple[int, ...], attrs: dict[str, Any]) -> str:
        items.append((Node(f"{name}.{op}", op, (src,), out, attrs=attrs, source=name),
                      TensorSpec(out, out_shape, x.fmt)))
        return out

    special = (len(shape) == 1 and x.shape == (1,)) or (len(shape) > 1 and x.shape[0] == shape[0]
                                                        and set(x.shape[1:]) == {1}) \
        or (len(shape) > 1 and x.shape[0] == 1 and x.shape[1:] == shape[1:])
    if not special:  # other size-1 axes: repeated one axis at a time, each a (P, 1, Q) view upsampled by (size, 1)
        cur, src = list(x.shape), x.name
        for k, g in enumerate(shape):
            if cur[k] == g:
                continue
            p, q = int(np.prod(cur[:k])), int(np.prod(cur[k + 1:]))
            for op, out, oshape, attrs in (("reshape", f"{name}.in{k}", (p, 1, q), {"shape": (p, 1, q)}),
                                           ("upsample2d", f"{name}.up{k}", (p, g, q), {"scale": (g, 1)})):
                items.append((Node(f"{name}.{op}{k}", op, (src,), out, attrs=attrs, source=name),
                              TensorSpec(out, oshape, x.fmt)))
                src = out
            cur[k] = g
        items.append((Node(f"{name}.back", "reshape", (src,), f"{name}.out", attrs={"shape": tuple(shape)},
                           source=name), TensorSpec(f"{name}.out", tuple(shape), x.fmt)))
    elif x.shape[0] == 1 and len(shape) > 1 and x.shape[1:] == shape[1:]:  # one map repeated over the channels
        n, c = int(np.prod(x.shape)), shape[0]
        mid = add("reshape", x.name, f"{name}.row", (1, 1, n), {"shape": (1, 1, n)})
        up = add("upsample2d", mid, f"{name}.rows", (1, c, n), {"scale": (c, 1)})
        items.append((Node(f"{name}.back", "reshape", (up,), f"{name}.out", attrs={"shape": shape}, source=name),
                      TensorSpec(f"{name}.out", shape, x.fmt)))
    elif len(shape) == 3:
        add("upsample2d", x.name, f"{name}.out", shape, {"scale": (shape[1], shape[2])})
    else:
        c = x.shape[0]
        mid = add("reshape", x.name, f"{name}.3d", (c, 1, 1), {"shape": (c, 1, 1)})
        up = add("upsample2d", mid, f"{name}.up", (c, 1, shape[-1]), {"scale": (1, shape[-1])})
        if len(shape) == 1:
            add("flatten", up, f"{name}.out", shape, {})
        else:
            items.append((Node(f"{name}.back", "reshape", (up,), f"{name}.out", attrs={"shape": shape}, source=name),
                          TensorSpec(f"{name}.out", shape, x.fmt)))
    return items, items[-1][1]


class QSub(_Binary):
    """``a - b``: exact difference, cast once to the output format (lossless difference format if none)."""

    op = "sub"

    def _float(self, a, b):
        return a.to(torch.float64) - b.to(torch.float64)  # exact (float32 may not be, for far-apart formats)

    def _exact_fmt(self, fa, fb):
        return fa.sub_format(fb)


class QMul(_Binary):
    """Element-wise ``a * b`` of two tensors: exact product, cast once to the output format."""

    op = "mul"

    def _float(self, a, b):
        # float64: the product of two fake-quantized values is exact there (float32 keeps 24 bits only), so the
        # output quantizer is the only rounding, as in exact mode
        return a.to(torch.float64) * b.to(torch.float64)

    def _exact_fmt(self, fa, fb):
        return fa.mul_format(fb)


class QMatMul(_IRModule):
    """``a @ b`` of two activations (attention's ``q @ k.transpose(-2, -1)`` and ``p @ v``): per-sample
    a(..., M, K) @ b(..., K, N) with equal leading dims (the batch first), the exact sum of the K products of codes,
    cast once to the output format (the ``matmul`` op; its lossless accumulator when no output quantizer is given).

    Train mode multiplies the (already fake-quantized) inputs in float64, where every product and partial sum is exact
    while the exact sum has at most 53 bits, so the output quantizer is the only rounding, as in exact mode; a wider
    sum (rare: it needs about 53 - log2(K) bits of products) takes exact mode's integer values with the float
    gradients. A weight is not an operand here: ``x @ W`` with a parameter is ``nn.Linear``."""

    def __init__(self, *, out_width: int | None = None, out_signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise UnsupportedError("QMatMul takes two tensors; a product with a weight is nn.Linear (qfx.nn.QLinear)")
        if a.ndim < 3 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
            raise UnsupportedError(f"QMatMul multiplies (N, ..., M, K) @ (N, ..., K, N') with equal leading dims (the "
                                   f"batch first, no broadcasting), got {tuple(a.shape)} @ {tuple(b.shape)}")
        if self.qfx_mode == "exact":
            return self._exact(a, b)
        y = torch.matmul(a.to(torch.float64), b.to(torch.float64))
        if not _float64_exact(a, b):  # float64 would round a partial sum: exact mode's values, float gradients
            return _straight_through(self._out_train(y), self._exact(a, b)).to(a.dtype)
        return self._out_train(y).to(a.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.ops.matmul import matmul_acc_format, matmul_out_shape

        if len(inputs) != 2:
            raise UnsupportedError(f"{name}: matmul takes two inputs, got {len(inputs)}")
        a, b = inputs
        shape = matmul_out_shape(a.shape, b.shape)
        if shape is None:
            raise UnsupportedError(f"{name}: matmul of per-sample shapes {a.shape} @ {b.shape}: qfx multiplies "
                                   "(..., M, K) @ (..., K, N) with equal leading dims")
        acc = matmul_acc_format(a.fmt, b.fmt, int(a.shape[-1]))
        node = Node(name, "matmul", (a.name, b.name), output, acc_fmt=acc, source=name)
        return [(node, TensorSpec(output, shape, self._spec_fmt(acc)))]


def _grid_bits(x: torch.Tensor) -> tuple[int, float]:
    """(fractional bits of the finest grid the values of ``x`` lie on, largest magnitude), on x's device."""
    with torch.no_grad():
        v = x.detach().to(torch.float64)
        return frac_bits_needed(v), (float(v.abs().max()) if v.numel() else 0.0)


def _float64_exact(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether float64 computes ``a @ b`` exactly: every partial sum, on the product grid, stays below 2**53 in
    magnitude (bounded by K * max|a| * max|b|; 2**52 here, a margin), so every product and sum is an integer
    float64 holds."""
    (fa, ma), (fb, mb) = _grid_bits(a), _grid_bits(b)
    return int(a.shape[-1]) * ma * mb * 2.0 ** (fa + fb) < 2.0 ** 52  # a margin for the bound's own rounding


# ============================================================================ element moving
class QCat(_IRModule):
    """``torch.cat`` along a per-sample dimension (``dim=1``, the channels, by default; a negative ``dim`` counts
    from the end and is resolved against each input's rank); every input is cast to the output format (the
    lossless union of the input formats when no output quantizer is given)."""

    def __init__(self, dim: int = 1, *, out_width: int | None = None, out_signed: bool = True, rounding: str = "RND",
                 overflow: str = "SAT", out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
            raise UnsupportedError(f"QCat concatenates per-sample axes (dim >= 1, or negative from the end), got "
                                   f"dim={dim!r} (dim 0 is the batch)")
        self.dim = int(dim)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if self.dim < 0 and xs and self.dim + xs[0].ndim < 1:
            raise BadInputError(f"QCat(dim={self.dim}) on rank-{xs[0].ndim} inputs would concatenate the batch")
        if self.qfx_mode == "exact":
            return self._exact(*xs)
        return self._out_train(torch.cat(xs, dim=self.dim))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) < 2:
            raise UnsupportedError(f"{name}: concat needs at least two inputs, got {len(inputs)}")
        shape = list(inputs[0].shape)
        ax = self.dim - 1 if self.dim > 0 else self.dim + len(shape)
        if not 0 <= ax < len(shape):
            raise UnsupportedError(f"{name}: concat dim {self.dim} out of range for per-sample shape {tuple(shape)}")
        shape[ax] = sum(t.shape[ax] for t in inputs)
        node = Node(name, "concat", tuple(t.name for t in inputs), output, attrs={"axis": ax}, source=name)
        return [(node, TensorSpec(output, tuple(shape), self._spec_fmt(_union([t.fmt for t in inputs]))))]


class QStack(QCat):
    """``torch.stack`` along a per-sample dimension: each input gets a size-1 axis (a reshape) and the results are
    concatenated there, cast to one output format as ``QCat`` does."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
            xs = tuple(xs[0])
        if self.qfx_mode == "exact":
            return self._exact(*xs)
        return self._out_train(torch.stack(xs, dim=self.dim))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        if len(inputs) < 2 or any(t.shape != inputs[0].shape for t in inputs):
            raise UnsupportedError(f"{name}: stack needs at least two inputs of one shape")
        r = len(inputs[0].shape) + 2  # torch rank of the result, batch included
        if not -r <= self.dim < r or self.dim % r == 0:
            raise UnsupportedError(f"{name}: stack dim {self.dim} out of range or the batch dim")
        ax = self.dim % r - 1
        shape = list(inputs[0].shape)
        shape.insert(ax, 1)
        items: list[IRItem] = []
        parts = []
        for k, t in enumerate(inputs):
            mid = f"{output}.{k}"
            items.append((Node(f"{name}.unsq{k}", "reshape", (t.name,), mid, attrs={"shape": tuple(shape)},
                               source=name), TensorSpec(mid, tuple(shape), t.fmt)))
            parts.append(items[-1][1])
        out_shape = list(shape)
        out_shape[ax] = len(inputs)
        node = Node(name, "concat", tuple(t.name for t in parts), output, attrs={"axis": ax}, source=name)
        return items + [(node, TensorSpec(output, tuple(out_shape), self._spec_fmt(_union([t.fmt for t in inputs]))))]


class QUpsample(_IRModule):
    """Nearest-neighbour upsampling of (N, C, H, W) by integer factors; keeps the input format."""

    def __init__(self, scale_factor: Any = 2, mode: str = "nearest") -> None:
        super().__init__()
        if mode != "nearest":
            raise UnsupportedError(f"QUpsample supports mode='nearest' only, got {mode!r}")
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if len(sf) != 2 or any(float(s) != int(s) or int(s) < 1 for s in sf):
            raise UnsupportedError(f"QUpsample needs positive integer scale factors, got {scale_factor!r}")
        self.scale = (int(sf[0]), int(sf[1]))
        self.out_quant = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        (x,) = inputs
        if len(x.shape) != 3:
            raise UnsupportedError(f"{name}: upsampling needs a (C, H, W) input, got {x.shape}")
        c, h, w = x.shape
        node = Node(name, "upsample2d", (x.name,), output, attrs={"scale": self.scale}, source=name)
        return [(node, TensorSpec(output, (c, h * self.scale[0], w * self.scale[1]), x.fmt))]


def _bilinear_taps(s: int, frac_bits: int) -> tuple[np.ndarray, int, int]:
    """1-D bilinear (align_corners=False) upsampling by ``s`` as a correlation over the replicate-padded,
    zero-inserted input: (tap codes at ``frac_bits``, zeros before, zeros after the zero-inserted signal).

    Output o reads padded input j (at position j*s after insertion) with weight tri((o - j*s + (s+1)/2) / s), tri(t)
    = max(0, 1 - |t|), which is torch's source coordinate (o + 0.5)/s - 0.5 shifted by the one padded element; the
    edge copies give torch's clamping at the borders. Taps are the integers k in ((1-s)/2, (3s+1)/2)."""
    if s == 1:
        return np.array([1 << frac_bits], dtype=np.int64), 0, 0
    k0 = (1 - s) // 2 + 1 if s % 2 else 1 - s // 2
    n = 2 * s if s % 2 == 0 else 2 * s - 1
    taps = [max(0.0, 1.0 - abs((s + 1) / 2 - (k0 + k)) / s) for k in range(n)]
    codes = np.array([int(np.floor(t * (1 << frac_bits) + 0.5)) for t in taps], dtype=np.int64)
    return codes, -k0, n - s - 2 + k0


def bilinear_plan(scale: tuple[int, int], weight_bits: int = 16) -> tuple[np.ndarray, FxFormat,
                                                                        tuple[int, int, int, int],
                                                                        tuple[int, int, int, int]]:
    """Bilinear (align_corners=False) upsampling by integer ``scale`` as hardware computes it: (2-D kernel codes,
    their format, replicate pads (top, bottom, left, right), zero pads after zero insertion). The torch layer and
    the ONNX importer (Resize, mode linear) build the same nodes from it."""
    (th, lh, rh), (tw, lw, rw) = (_bilinear_taps(v, weight_bits) for v in scale)
    k = np.outer(th, tw)
    fb = 2 * weight_bits
    while fb > 0 and not (k & 1).any():  # drop trailing zero bits (1/16 needs 4 bits, not 32)
        k >>= 1
        fb -= 1
    eh, ew = int(scale[0] > 1), int(scale[1] > 1)
    return k, FxFormat.for_code_range(0, int(k.max()), fb, signed=True), (eh, eh, ew, ew), (lh, rh, lw, rw)


class QUpsampleBilinear(_IRModule):
    """Bilinear upsampling (align_corners=False) of (N, C, H, W) by integer factors, as hardware computes it: the
    ``zeropad2d`` gather twice (replicate one element per side, then zero insertion) and a ``conv2d`` whose constant
    depthwise kernel holds the interpolation weights (exact for factors 1, 2, 4, 8; other factors' weights rounded
    to ``weight_bits`` fractional bits), then the output quantizer. Train mode runs the same steps in float64, where
    they are exact, so the output quantizer is the only rounding there too."""

    def __init__(self, scale_factor: Any = 2, *, weight_bits: int = 16, out_width: int | None = 8,
                 out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        if len(sf) != 2 or any(float(v) != int(v) or int(v) < 1 for v in sf):
            raise UnsupportedError(f"QUpsampleBilinear needs positive integer scale factors, got {scale_factor!r}")
        self.scale = (int(sf[0]), int(sf[1]))
        self.weight_bits = int(weight_bits)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def _plan(self) -> tuple[np.ndarray, FxFormat, tuple[int, int, int, int], tuple[int, int, int, int]]:
        return bilinear_plan(self.scale, self.weight_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BadInputError(f"QUpsampleBilinear expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if self.qfx_mode == "exact":
            return self._exact(x)
        k, kf, (eh, _, ew, _), (lh, rh, lw, rw) = self._plan()
        n, c, h, w = x.shape
        sh, sw = self.scale
        p = F.pad(x.to(torch.float64), (ew, ew, eh, eh), mode="replicate")
        z = p.new_zeros(n, c, (h + 2 * eh - 1) * sh + 1, (w + 2 * ew - 1) * sw + 1)
        z[:, :, ::sh, ::sw] = p
        z = F.pad(z, (lw, rw, lh, rh))
        wt = torch.as_tensor(kf.from_int(k), dtype=torch.float64, device=x.device).expand(c, 1, *k.shape)
        return self._out_train(F.conv2d(z, wt, groups=c)).to(x.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.fixed.kernels import lossless_acc_format

        (x,) = inputs
        if len(x.shape) != 3:
            raise UnsupportedError(f"{name}: bilinear upsampling needs a (C, H, W) input, got {x.shape}")
        k, kf, edge, pads = self._plan()
        c, h, w = x.shape
        sh, sw = self.scale
        items: list[IRItem] = []
        src = x
        if any(edge):
            shape = (c, h + edge[0] + edge[1], w + edge[2] + edge[3])
            items.append((Node(f"{name}.edge", "zeropad2d", (src.name,), f"{output}.edge",
                               attrs={"pads": edge, "mode": "replicate"}, source=name),
                          TensorSpec(f"{output}.edge", shape, x.fmt)))
            src = items[-1][1]
        if (sh, sw) != (1, 1) or any(pads):
            _, hh, ww = src.shape
            shape = (c, (hh - 1) * sh + 1 + pads[0] + pads[1], (ww - 1) * sw + 1 + pads[2] + pads[3])
            items.append((Node(f"{name}.zeros", "zeropad2d", (src.name,), f"{output}.zeros",
                               attrs={"pads": pads, "stride": (sh, sw)}, source=name),
                          TensorSpec(f"{output}.zeros", shape, x.fmt)))
            src = items[-1][1]
        dense = np.zeros((c, c) + k.shape, dtype=np.int64)
        dense[np.arange(c), np.arange(c)] = k
        acc = lossless_acc_format(dense.reshape(c, -1), kf, x.fmt)
        node = Node(name, "conv2d", (src.name,), output, {"weight": Constant(dense, kf)},
                    {"stride": (1, 1), "padding": (0, 0), "khot": 0}, acc, source=name)
        items.append((node, TensorSpec(output, (c, h * sh, w * sw), self._spec_fmt(acc))))
        return items


RESIZE_RULES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")


def resize_matrix(n_in: int, n_out: int, mode: str, rule: str, scale: float | None = None) -> np.ndarray:
    """(n_out, n_in) float64 weights of a 1-D resize: ``mode`` "linear" or "nearest" / "nearest-exact" (torch's
    two nearest rules), ``rule`` how an output index maps to a source coordinate (ONNX's
    coordinate_transformation_mode: torch's align_corners=False is half_pixel, True is align_corners; torch's
    nearest is asymmetric), ``scale`` the output/input ratio the rule divides by (torch's scale_factor, ONNX's
    scales; default n_out / n_in). Linear sources are clamped to the input (torch's and onnxruntime's edges)."""
    if rule not in RESIZE_RULES or mode not in ("linear", "nearest", "nearest-exact", "area") or n_in < 1 or \
            n_out < 1:
        raise UnsupportedError(f"resize mode {mode!r} with rule {rule!r} from {n_in} to {n_out}")
    s = float(scale) if scale else n_out / n_in
    o = np.arange(n_out, dtype=np.float64)
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if mode == "area":  # adaptive average pooling: output o averages inputs floor(o*n/m) .. ceil((o+1)*n/m) - 1
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return m
    if mode != "linear":
        src = np.floor((o + 0.5) / s) if mode == "nearest-exact" else np.floor(o / s)
        m[np.arange(n_out), np.clip(src, 0, n_in - 1).astype(np.int64)] = 1.0
        return m
    if rule == "align_corners":
        src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
    elif rule == "asymmetric":
        src = o / s
    elif rule == "pytorch_half_pixel" and n_out == 1:
        src = np.zeros(n_out)
    else:
        src = (o + 0.5) / s - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    lam = src - i0
    i1 = np.minimum(i0 + 1, n_in - 1)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def pool_matrix(n_in: int, k: int, s: int, p: int, ceil_mode: bool, count_include_pad: bool,
                divisor: int | None = None) -> np.ndarray:
    """(n_out, n_in) weights of one axis of torch's avg_pool2d: each output averages its window's real inputs,
    divided by the window's size within the padded input (``count_include_pad``) or by its real inputs' count
    (or by ``divisor``, torch's divisor_override, when given for this axis; 1 for the other axis). torch's window
    count is the product of the two axes' counts, so the 2-D pool is the product of the two matrices."""
    if k < 1 or s < 1 or p < 0 or 2 * p > k or n_in + 2 * p < k:
        raise UnsupportedError(f"average pool kernel {k}, stride {s}, padding {p} over {n_in}")
    span = n_in + 2 * p - k
    n_out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n_out - 1) * s >= n_in + p:  # torch: the last window must start inside the input or left pad
        n_out -= 1
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        start = o * s - p
        end = min(start + k, n_in + p)
        lo, hi = max(start, 0), min(end, n_in)
        count = divisor if divisor is not None else (end - start) if count_include_pad else (hi - lo)
        m[o, lo:hi] = 1.0 / count
    return m


def resize_weights(m: np.ndarray, weight_bits: int = 16) -> tuple[np.ndarray, FxFormat]:
    """``resize_matrix`` weights (rows summing to one) as codes at ``weight_bits`` fractional bits (trailing zero
    bits dropped: nearest and factor-2 weights need few), and their format."""
    k = np.floor(m * (1 << weight_bits) + 0.5).astype(np.int64)
    # a row that sums to one sums to exactly one (its largest weight takes the rounding's remainder): constants
    # and the importer's pending per-channel offsets pass through unchanged
    one = np.isclose(m.sum(1), 1.0)
    k[np.arange(k.shape[0])[one], k.argmax(1)[one]] += (1 << weight_bits) - k.sum(1)[one]
    fb = weight_bits
    while fb > 0 and not (k & 1).any():
        k >>= 1
        fb -= 1
    return k, FxFormat.for_code_range(0, max(int(k.max()), 1), fb, signed=True)


def axis_weights(m: np.ndarray, weight_bits: int = 16) -> tuple[np.ndarray, FxFormat] | None:
    """``resize_weights`` of one axis's matrix, or None when it is the identity (that axis is left as it is)."""
    if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
        return None
    return resize_weights(m, weight_bits)


def resize_steps(mats: tuple[Any, Any]) -> list[tuple[str, Any]]:
    """A separable 2-D resize of (C, H, W) as IR steps: ("transpose", perm) and ("dense", codes (out, in)) over the
    leading axis (a 1x1 ``conv2d``). W first (brought to the front), then H; an axis whose matrix is None (its size
    unchanged, identity) is skipped. The torch layer and the ONNX importer build the same nodes from these."""
    mh, mw = mats
    steps: list[tuple[str, Any]] = []
    if mw is not None and mh is not None:
        steps += [("transpose", (2, 0, 1)), ("dense", mw), ("transpose", (2, 1, 0)), ("dense", mh),
                  ("transpose", (1, 0, 2))]
    elif mw is not None:
        steps += [("transpose", (2, 0, 1)), ("dense", mw), ("transpose", (1, 2, 0))]
    elif mh is not None:
        steps += [("transpose", (1, 0, 2)), ("dense", mh), ("transpose", (1, 0, 2))]
    return steps


class QResize2d(_IRModule):
    """Resizing (N, C, H, W) where the integer-factor layers do not apply: bilinear with align_corners=True
    (nn.UpsamplingBilinear2d, segmentation decoders), bilinear or nearest to any size or by a non-integer factor,
    downsampling, area (adaptive average pooling to a size that does not divide the input). Separable: each axis is
    a constant matrix (``resize_matrix``; linear weights rounded to
    ``weight_bits`` fractional bits) applied as a 1x1 ``conv2d`` over that axis brought first by a ``transpose``
    (``resize_steps``). Train mode applies the same weight codes in float64, where the products and sums are exact,
    so the output quantizer is the only rounding in both modes."""

    def __init__(self, size: Any = None, scale_factor: Any = None, mode: str = "bilinear",
                 align_corners: bool = False, *, recompute: bool = False, weight_bits: int = 16,
                 out_width: int | None = 8,
                 out_signed: bool = True, rounding: str = "RND", overflow: str = "SAT",
                 out_quant: FixedQuant | None = None, learn_int_bits: bool = True) -> None:
        super().__init__()
        if mode not in ("bilinear", "nearest", "nearest-exact", "area"):
            raise UnsupportedError(f"QResize2d mode {mode!r}: bilinear, nearest, nearest-exact or area")
        if (size is None) == (scale_factor is None):
            raise UnsupportedError("QResize2d needs exactly one of size and scale_factor")
        pair = lambda v: None if v is None else tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
        self.size = None if size is None else tuple(int(v) for v in pair(size))
        self.scale = None if scale_factor is None else tuple(float(v) for v in pair(scale_factor))
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1) or \
                self.scale is not None and (len(self.scale) != 2 or min(self.scale) <= 0):
            raise UnsupportedError(f"QResize2d: size {size!r} / scale_factor {scale_factor!r} for H and W")
        # recompute: torch's recompute_scale_factor=True: the rule divides by out/in sizes, not by the factor
        self.mode, self.align_corners, self.weight_bits = mode, bool(align_corners), int(weight_bits)
        self.recompute = bool(recompute)
        self.out_quant = _quant(out_quant, out_width, signed=out_signed, rounding=rounding, overflow=overflow,
                                learn=learn_int_bits)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale}"
        return f"{what}, mode={self.mode!r}, align_corners={self.align_corners}"

    def _mats(self, h: int, w: int) -> tuple[tuple[int, int], tuple[tuple[np.ndarray, FxFormat] | None, ...]]:
        import math

        out = self.size if self.size is not None else tuple(int(math.floor(n * f)) for n, f in zip((h, w), self.scale))
        mode = "linear" if self.mode == "bilinear" else self.mode
        rule = "align_corners" if self.align_corners else "half_pixel" if mode == "linear" else "asymmetric"
        mats = [resize_matrix(n_in, n_out, mode, rule,
                              self.scale[k] if self.scale is not None and not self.recompute else None)
                for n_in, n_out, k in zip((h, w), out, (0, 1))]
        return out, tuple(axis_weights(m, self.weight_bits) for m in mats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise BadInputError(f"QResize2d expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if self.qfx_mode == "exact":
            return self._exact(x)
        _, (mh, mw) = self._mats(x.shape[2], x.shape[3])
        y = x.to(torch.float64)
        if mh is not None:
            y = torch.einsum("oh,nchw->ncow", torch.as_tensor(mh[1].from_int(mh[0]), device=x.device), y)
        if mw is not None:
            y = torch.einsum("pw,nchw->nchp", torch.as_tensor(mw[1].from_int(mw[0]), device=x.device), y)
        return self._out_train(y).to(x.dtype)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.fixed.kernels import lossless_acc_format

        (x,) = inputs
        if len(x.shape) != 3:
            raise UnsupportedError(f"{name}: resizing needs a (C, H, W) input, got {x.shape}")
        _, mats = self._mats(*x.shape[1:])
        steps = resize_steps(mats)
        if not steps:
            return []
        items: list[IRItem] = []
        src = x
        final = max(i for i, (kind, _) in enumerate(steps) if kind == "dense")  # rounds to the output format
        for i, (kind, arg) in enumerate(steps):
            tname = output if i == len(steps) - 1 else f"{output}.r{i}"
            if kind == "transpose":
                shape = tuple(src.shape[p] for p in arg)
                items.append((Node(f"{name}.t{i}", "transpose", (src.name,), tname, attrs={"perm": arg},
                                   source=name), TensorSpec(tname, shape, src.fmt)))
            else:
                codes, kf = arg
                acc = lossless_acc_format(codes, kf, src.fmt)
                dense = codes.reshape(codes.shape + (1, 1))
                shape = (codes.shape[0],) + tuple(src.shape[1:])
                items.append((Node(f"{name}.d{i}", "conv2d", (src.name,), tname, {"weight": Constant(dense, kf)},
                                   {"stride": (1, 1), "padding": (0, 0), "khot": 0}, acc, source=name),
                              TensorSpec(tname, shape, self._spec_fmt(acc) if i == final else acc)))
            src = items[-1][1]
        return items


class QAvgPoolMatrix(QResize2d):
    """``avg_pool2d`` where QAvgPool2d's fixed window does not apply: ceil_mode (partial last windows),
    count_include_pad=False (divide by the real inputs), divisor_override. Separable like QResize2d: one
    ``pool_matrix`` per axis (weights rounded to ``weight_bits`` fractional bits), 1x1 convs between transposes."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None, **kw: Any) -> None:
        super().__init__((1, 1), None, "area", **kw)
        pair = lambda v: tuple(int(t) for t in v) if isinstance(v, (tuple, list)) else (int(v), int(v))  # noqa: E731
        self.kernel, self.stride = pair(kernel_size), pair(stride if stride not in (None, [], ()) else kernel_size)
        self.pad, self.ceil_mode = pair(padding), bool(ceil_mode)
        self.count_include_pad, self.divisor = bool(count_include_pad), divisor_override

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, stride={self.stride}, padding={self.pad}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad}, divisor_override={self.divisor}")

    def _mats(self, h: int, w: int) -> tuple[tuple[int, int], tuple[tuple[np.ndarray, FxFormat] | None, ...]]:
        mats = [pool_matrix(n, k, s, p, self.ceil_mode, self.count_include_pad,
                            None if self.divisor is None else (self.divisor if axis == 0 else 1))
                for axis, (n, k, s, p) in enumerate(zip((h, w), self.kernel, self.stride, self.pad))]
        return (mats[0].shape[0], mats[1].shape[0]), tuple(axis_weights(m, self.weight_bits) for m in mats)


class QZeroPad2d(_IRModule):
    """Padding of H and W (``padding`` as nn.ZeroPad2d: an int or (left, right, top, bottom)); ``mode`` "zeros"
    (default), "replicate" or "reflect" (nn.ReplicationPad2d / nn.ReflectionPad2d, F.pad modes): the same
    ``zeropad2d`` gather op, whose map then copies edge elements instead of inserting zeros."""

    def __init__(self, padding: Any, mode: str = "zeros") -> None:
        super().__init__()
        if mode not in ("zeros", "replicate", "reflect"):
            raise UnsupportedError(f"QZeroPad2d mode must be 'zeros', 'replicate' or 'reflect', got {mode!r}")
        self.mode = mode
        p = (padding,) * 4 if isinstance(padding, int) else tuple(int(v) for v in padding)
        if len(p) != 4 or min(p) < 0:
            raise UnsupportedError(f"QZeroPad2d needs four non-negative paddings, got {padding!r}")
        self.padding = p  # torch order: left, right, top, bottom
        self.out_quant = None

    def _one_d(self, ndim: int) -> bool:
        """(N, C, L) sequences (TCN/WaveNet causal padding ``F.pad(x, (k, 0))``): the length is the width."""
        return ndim == 3 and self.padding[2] == self.padding[3] == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 and not self._one_d(x.ndim):
            raise BadInputError(f"QZeroPad2d expects (N, C, H, W) input (or (N, C, L) padded in L), got shape "
                                f"{tuple(x.shape)}")
        if self.qfx_mode == "exact":
            return self._exact(x)
        pad = self.padding if x.ndim == 4 else self.padding[:2]
        return F.pad(x, pad, mode="constant" if self.mode == "zeros" else self.mode)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        (x,) = inputs
        left, right, top, bottom = self.padding
        if len(x.shape) == 2 and self._one_d(3):  # (C, L) -> (C, 1, L) -> pad -> (C, L'): reshapes are wires
            c, ln = x.shape
            mid, padded = f"{output}.2d", f"{output}.padded"
            shape = (c, 1, ln + left + right)
            items = [(Node(f"{name}.to2d", "reshape", (x.name,), mid, attrs={"shape": (c, 1, ln)}, source=name),
                      TensorSpec(mid, (c, 1, ln), x.fmt))]
            attrs: dict[str, Any] = {"pads": (0, 0, left, right)} | ({"mode": self.mode} if self.mode != "zeros"
                                                                      else {})
            items.append((Node(name, "zeropad2d", (mid,), padded, attrs=attrs, source=name),
                          TensorSpec(padded, shape, x.fmt)))
            items.append((Node(f"{name}.to1d", "reshape", (padded,), output, attrs={"shape": (c, shape[2])},
                               source=name), TensorSpec(output, (c, shape[2]), x.fmt)))
            return items
        if len(x.shape) != 3:
            raise UnsupportedError(f"{name}: zero padding needs a (C, H, W) input (or (C, L) padded in L), got "
                                   f"{x.shape}")
        c, h, w = x.shape
        attrs = {"pads": (top, bottom, left, right)}
        if self.mode != "zeros":
            attrs["mode"] = self.mode
        node = Node(name, "zeropad2d", (x.name,), output, attrs=attrs, source=name)
        return [(node, TensorSpec(output, (c, h + top + bottom, w + left + right), x.fmt))]


# ============================================================================ tables
#: the torch function train mode uses for each table function (the table itself samples qfx.fixed.tables)
TORCH_FUNCTIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "sigmoid": lambda x, _: torch.sigmoid(x),
    "tanh": lambda x, _: torch.tanh(x),
    "silu": lambda x, _: F.silu(x),
    "gelu": lambda x, _: F.gelu(x),
    "hardsigmoid": lambda x, _: F.hardsigmoid(x),
    "hardswish": lambda x, _: F.hardswish(x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a),
    "elu": lambda x, a: F.elu(x, a),
    "softplus": lambda x, _: F.softplus(x),
    "mish": lambda x, _: F.mish(x),
    "exp": lambda x, _: torch.exp(x),
    "reciprocal": lambda x, _: torch.reciprocal(x),
    "sqrt": lambda x, _: torch.sqrt(torch.clamp(x, min=0.0)),
    "log": lambda x, a: torch.log(torch.clamp(x, min=a)),
    "rsqrt": lambda x, e: torch.rsqrt(torch.clamp(x, min=0.0) + e),
    "selu": lambda x, _: F.selu(x),
    "logsigmoid": lambda x, _: F.logsigmoid(x),
    "softsign": lambda x, _: F.softsign(x),
    "hardshrink": lambda x, a: F.hardshrink(x, a),
    "softshrink": lambda x, a: F.softshrink(x, a),
    "tanhshrink": lambda x, _: F.tanhshrink(x),
    **{f"select_{op}": (lambda cmp: lambda x, p: torch.where(cmp(x, p[0]), p[1] * x + p[2], p[3] * x + p[4]))(cmp)
       for op, cmp in SELECT_OPS.items()},
}

#: output value range of each function over any input (for the default output format's sign)
_NON_NEGATIVE = {"sigmoid", "hardsigmoid", "softplus", "exp", "sqrt", "rsqrt"}


class QActivation(_IRModule):
    """A non-linear function as a lookup table over its (at most 12-bit) input format.

    ``fn`` is a table function spec (``"sigmoid"``, ``"leaky_relu(0.1)"``; see ``qfx.fixed.tables.FUNCTIONS``).
    The input is first requantized by ``in_quant`` (``in_width`` bits, learned binary point) so the table stays
    small; the table maps every input code to the output format's code of ``fn``. Train mode returns the table's
    values (what exact mode and the hardware compute, so train and exact mode agree bit for bit) with the
    gradients of ``out_quant(fn(in_quant(x)))`` (straight-through; float32 ``fn`` alone could land one LSB away
    from the table near rounding ties).
    """

    def __init__(self, fn: str, *, in_width: int | None = 8, out_width: int = 8, out_signed: bool | None = None,
                 rounding: str = "RND", overflow: str = "SAT", learn_int_bits: bool = True) -> None:
        super().__init__()
        name, param = parse_fn(fn)
        if in_width is not None and not 2 <= in_width <= MAX_TABLE_BITS:
            raise BadInputError(f"QActivation({fn!r}): in_width must be 2..{MAX_TABLE_BITS}, got {in_width}")
        self.fn = fn
        self._name, self._param = name, param
        # in_width=None: the table covers the input's own format (already narrow, e.g. softmax's probabilities)
        self.in_quant = (None if in_width is None else
                         FixedQuant(in_width, None, True, "RND", "SAT", learn_int_bits=learn_int_bits))
        signed = (name not in _NON_NEGATIVE) if out_signed is None else out_signed
        self.out_quant = FixedQuant(out_width, None, signed, rounding, overflow, learn_int_bits=learn_int_bits)

    def extra_repr(self) -> str:
        return f"fn={self.fn!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qfx_mode == "exact":
            return self._exact(x)
        xq = x if self.in_quant is None else self.in_quant(x)
        xf = _FiniteGrad.apply(xq) if self._name in _SINGULAR and xq.requires_grad else xq
        return _straight_through(self.out_quant(TORCH_FUNCTIONS[self._name](xf, self._param)), self._exact(xq))

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The float64 function the table samples."""
        return evaluate(self.fn, x)

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        (x,) = inputs
        fout = self.out_quant.fmt
        if self.in_quant is None:
            if x.fmt.width > MAX_TABLE_BITS:
                raise UnsupportedError(f"{name}: a {self.fn} table over {x.fmt.ap_type()} needs more than "
                                       f"2**{MAX_TABLE_BITS} entries; give QActivation an in_width")
            fin, mid, items = x.fmt, x.name, []
        else:
            fin, mid = self.in_quant.fmt, f"{output}.in"
            items = [(Node(f"{name}.in_quant", "quant", (x.name,), mid, source=name), TensorSpec(mid, x.shape, fin))]
        table = Constant(build_table(self.fn, fin, fout), fout.with_modes("TRN", "WRAP"))
        node = Node(name, "lut", (mid,), output, {"table": table}, {"fn": self.fn}, source=name)
        items.append((node, TensorSpec(output, x.shape, fout)))
        return items



#: table functions whose derivative is infinite somewhere on a fixed-point grid (sqrt, 1 / sqrt, 1 / x at 0)
_SINGULAR = {"sqrt", "rsqrt", "reciprocal", "log"}


class _FiniteGrad(torch.autograd.Function):
    """Identity whose backward zeroes non-finite gradients: a std of equal values (a variance that rounds to 0)
    must not turn every weight's gradient into NaN through sqrt'(0) = inf."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(g), g, torch.zeros_like(g))


def _straight_through(y: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """The values of ``exact`` (computed without gradient) with the gradients of ``y``."""
    with torch.no_grad():
        d = exact.to(y.dtype) - y
    return y + d


class QSoftmax(_IRModule):
    """Softmax over the last axis of (N, ..., n) activations (the features of (N, n), the rows of attention scores
    (N, heads, S, S)), in integer arithmetic with an exp table and a reciprocal table (``qfx/ops/softmax.py``; every
    row uses the same tables). The input is first requantized by ``in_quant`` (``in_width`` bits). Train mode
    returns the integer algorithm's values (bit-exact with exact mode) with the gradients of float softmax between
    the same quantizers. The output format is fixed at ``ap_ufixed<out_width, 1>`` (probabilities lie in [0, 1]):
    calibration leaves it alone. Over an inner ``dim`` (the channels of (N, C, H, W): per-pixel class scores) the
    axis is moved last and back (``transpose`` nodes in the IR: wires); ``dim`` may not be the batch axis."""

    def __init__(self, dim: int = -1, *, in_width: int = 8, out_width: int = 8, rounding: str = "RND",
                 overflow: str = "SAT", learn_int_bits: bool = True) -> None:
        super().__init__()
        from qfx.ops.softmax import MAX_SOFTMAX_IN_BITS

        bad = softmax_dim_problem(dim, None)
        if bad:
            raise UnsupportedError(bad)
        if not 2 <= in_width <= MAX_SOFTMAX_IN_BITS:
            raise BadInputError(f"QSoftmax: in_width must be 2..{MAX_SOFTMAX_IN_BITS}, got {in_width}")
        self.dim = dim
        self.in_quant = FixedQuant(in_width, None, True, "RND", "SAT", learn_int_bits=learn_int_bits)
        self.out_quant = FixedQuant(out_width, 1, False, rounding, overflow, learn_int_bits=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = softmax_axis(self.dim, x.ndim)
        if d is None:
            raise UnsupportedError(softmax_dim_problem(self.dim, x.ndim) or
                                   f"QSoftmax expects (N, ..., n) input, got shape {tuple(x.shape)}")
        if self.qfx_mode == "exact":  # the IR moves an inner axis last and back (ir_nodes)
            return self._exact(x)
        q = self.out_quant
        q._calib, q.calibrating = None, False  # a fixed range: calibration must not move it
        xq = self.in_quant(x)
        return _straight_through(q(torch.softmax(xq, dim=d)), self._exact(xq))

    def ir_nodes(self, name: str, inputs: Sequence[TensorSpec], output: str) -> list[IRItem]:
        from qfx.ops.softmax import softmax_tables

        (x,) = inputs
        d = softmax_axis(self.dim, len(x.shape) + 1) if x.shape else None
        if d is None:
            raise UnsupportedError(f"{name}: softmax(dim={self.dim}) of per-sample shape {x.shape}: qfx computes "
                                   "softmax over one axis of each sample")
        fin, fout = self.in_quant.fmt, self.out_quant.fmt
        r, pd = len(x.shape), d - 1
        perm = tuple([i for i in range(r) if i != pd] + [pd])
        rows = tuple(x.shape[i] for i in perm)
        items: list[IRItem] = []
        src, sm_out = x.name, output
        if pd != r - 1:  # the axis moved last (wires), the softmax over rows, moved back
            src, sm_out = f"{output}.rows_in", f"{output}.rows"
            items.append((Node(f"{name}.to_rows", "transpose", (x.name,), src, attrs={"perm": perm}, source=name),
                          TensorSpec(src, rows, x.fmt)))
        mid = f"{output}.in"
        et, rt, shift = softmax_tables(rows[-1], fin, fout)
        items += [(Node(f"{name}.in_quant", "quant", (src,), mid, source=name), TensorSpec(mid, rows, fin)),
                  (Node(name, "softmax", (mid,), sm_out, {"exp_table": et, "recip_table": rt}, {"shift": shift},
                        source=name), TensorSpec(sm_out, rows, fout))]
        if pd != r - 1:
            inv = tuple(int(i) for i in np.argsort(perm))
            items.append((Node(f"{name}.from_rows", "transpose", (sm_out,), output, attrs={"perm": inv}, source=name),
                          TensorSpec(output, x.shape, fout)))
        return items


def softmax_axis(dim: Any, ndim: int) -> int | None:
    """The axis (1 .. ndim-1, batch included) softmax over ``dim`` normalizes in a rank-``ndim`` tensor; None when
    ``dim`` is not an int or names the batch axis or no axis."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        return None
    d = dim + ndim if dim < 0 else dim
    return d if 1 <= d <= ndim - 1 else None


def softmax_dim_problem(dim: Any, ndim: int | None) -> str | None:
    """Why softmax over ``dim`` of a rank-``ndim`` tensor (batch included) has no qfx twin, or None when it does (any
    axis but the batch's of a rank >= 2 tensor: an inner axis is moved last and back; ``ndim`` None: unknown yet,
    only the dim itself is judged)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
        return (f"softmax over dim={dim!r}: qfx computes softmax over one axis of each sample (dim=-1, or any dim "
                "but the batch's)")
    if ndim is not None and softmax_axis(dim, ndim) is None:
        return (f"softmax over dim={dim} of a rank-{ndim} tensor: qfx computes softmax over one axis of each sample "
                f"(not the batch axis)")
    return None
