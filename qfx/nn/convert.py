"""Model conversion (``quantize_model``), calibration, BN folding and the per-layer format report."""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterator

import torch
from torch import nn

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.nn.layers import (
    QAdd, QAvgPool2d, QBatchNorm1d, QBatchNorm2d, QClippedReLU, QConv2d, QFlatten, QLinear, QMaxPool2d, QModule,
    QReLU, QuantInput, _pair, _WeightLayer, _QBatchNorm,
)
from qfx.nn.quant import FixedQuant

__all__ = ["QFXConfig", "quantize_model", "calibrate", "calibration", "report_formats", "format_table", "fold_bn"]


@dataclass
class QFXConfig:
    """How ``quantize_model`` quantizes a float model. Widths are total bits; binary points are learned.

    ``overrides`` maps a module path of the *float* model (as in ``named_modules``) to field overrides, e.g.
    ``{"0": {"weight_width": 8}, "head": {"khot": None}}``. ``acc_width`` is ``None`` for lossless accumulators
    (always used); an int is a ceiling that ``report_formats`` checks.
    """

    weight_width: int = 8
    bias_width: int = 16
    act_width: int = 8
    input_width: int = 8
    bn_width: int = 8
    add_width: int | None = None  # residual-add output width; None = act_width
    acc_width: int | None = None
    khot: int | None = None
    rounding: str = "RND"
    overflow: str = "SAT"
    per_channel: bool = False
    learn_int_bits: bool = True
    input_signed: bool | None = None  # None: decided from the calibration batch (unsigned if it has no negatives)
    relu_unsigned: bool = True
    fold_bn: bool = False
    calib_method: str = "mse"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str/int/bool/None/dict only): stored in checkpoints loadable with ``weights_only=True``."""
        return copy.deepcopy(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QFXConfig":
        names = {f.name for f in fields(cls)}
        extra = set(d) - names
        if extra:
            raise BadInputError(f"unknown QFXConfig fields: {', '.join(sorted(extra))}")
        return cls(**copy.deepcopy(dict(d)))

    def for_path(self, path: str) -> "QFXConfig":
        ov = self.overrides.get(path)
        if not ov:
            return self
        bad = set(ov) - {f.name for f in fields(self)} - {"overrides"}
        if bad:
            raise BadInputError(f"override for {path!r} has unknown fields: {', '.join(sorted(bad))}")
        return replace(self, **ov)


# ============================================================================ conversion
def _convert_module(m: nn.Module, c: QFXConfig) -> nn.Module | None:
    """The qfx twin of ``m`` with parameters copied, or None when ``m`` is a container to recurse into."""
    common = dict(rounding=c.rounding, overflow=c.overflow, learn_int_bits=c.learn_int_bits)
    if isinstance(m, QAdd) and m.out_quant is None:
        return QAdd(out_width=c.add_width or c.act_width, **common)
    if isinstance(m, QClippedReLU) and m.out_quant is None:
        return QClippedReLU(m.cap, out_width=c.act_width, out_signed=not c.relu_unsigned, **common)
    if isinstance(m, QModule):
        return m
    if isinstance(m, nn.Linear):
        q = QLinear(m.in_features, m.out_features, m.bias is not None, weight_width=c.weight_width,
                    bias_width=c.bias_width, out_width=c.act_width, per_channel=c.per_channel, khot=c.khot, **common)
    elif isinstance(m, nn.Conv2d):
        if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise UnsupportedError("only Conv2d with groups=1, dilation=1 and integer zero padding can be quantized")
        q = QConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None,
                    weight_width=c.weight_width, bias_width=c.bias_width, out_width=c.act_width,
                    per_channel=c.per_channel, khot=c.khot, **common)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = QBatchNorm1d if isinstance(m, nn.BatchNorm1d) else QBatchNorm2d
        q = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, scale_width=c.bn_width,
                shift_width=c.bn_width, out_width=c.act_width, **common)
    elif isinstance(m, nn.ReLU6):
        return QClippedReLU(6.0, out_width=c.act_width, out_signed=not c.relu_unsigned, **common)
    elif isinstance(m, nn.Hardtanh) and m.min_val == 0.0:
        return QClippedReLU(m.max_val, out_width=c.act_width, out_signed=not c.relu_unsigned, **common)
    elif isinstance(m, nn.ReLU):
        return QReLU(out_width=c.act_width, out_signed=not c.relu_unsigned, **common)
    elif isinstance(m, nn.MaxPool2d):
        return QMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
    elif isinstance(m, nn.AvgPool2d):
        return QAvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override,
                          out_width=c.act_width, **common)
    elif isinstance(m, nn.Flatten):
        return QFlatten(m.start_dim, m.end_dim)
    elif isinstance(m, (nn.Identity, nn.Dropout)):
        return m
    else:
        return None
    # copy parameters and buffers of the float module (state_dict keys of the twin are a superset)
    missing, unexpected = q.load_state_dict(m.state_dict(), strict=False)
    if unexpected:  # pragma: no cover - the twins keep torch's parameter names
        raise UnsupportedError(f"cannot copy {type(m).__name__} state: unexpected {unexpected}")
    return q


def _convert(m: nn.Module, path: str, config: QFXConfig) -> nn.Module:
    q = _convert_module(m, config.for_path(path))
    if q is not None:
        return q
    if not list(m.children()):
        raise UnsupportedError(f"module {path or '<root>'} ({type(m).__name__}) has no fixed-point twin in qfx")
    for name, child in list(m.named_children()):
        setattr(m, name, _convert(child, f"{path}.{name}" if path else name, config))
    return m


def _fold_float_bn(m: nn.Module) -> nn.Module:
    """Fold every float BatchNorm that directly follows a Linear/Conv2d in a Sequential (running statistics)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for name, child in list(m.named_children()):
        setattr(m, name, _fold_float_bn(child))
    if not isinstance(m, nn.Sequential):
        return m
    items = list(m.named_children())
    out: list[tuple[str, nn.Module]] = []
    for name, child in items:
        prev = out[-1][1] if out else None
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and isinstance(prev, (nn.Linear, nn.Conv2d)) \
                and not isinstance(prev, QModule):
            fuse = fuse_conv_bn_eval if isinstance(prev, nn.Conv2d) else fuse_linear_bn_eval
            out[-1] = (out[-1][0], fuse(prev.eval(), child.eval()))
            continue
        out.append((name, child))
    return nn.Sequential(OrderedDict(out)) if len(out) != len(items) else m


def quantize_model(model: nn.Module, config: QFXConfig | None = None,
                   calib_data: torch.Tensor | None = None) -> nn.Sequential:
    """A fixed-point copy of ``model``: ``Sequential(input=QuantInput, net=<converted model>)``.

    torch.nn Linear/Conv2d/BatchNorm/ReLU/ReLU6/MaxPool2d/AvgPool2d/Flatten become qfx layers (``QAdd`` modules get
    output formats); parameters are copied. With ``calib_data`` every binary point is initialised from one batch
    (``config.calib_method``). The resolved config is attached as ``model.qfx_config``.
    """
    config = copy.deepcopy(config) if config is not None else QFXConfig()
    if config.input_signed is None:
        config.input_signed = bool(calib_data is not None and (calib_data < 0).any())
    body = copy.deepcopy(model)
    if config.fold_bn:
        body = _fold_float_bn(body)
    body = _convert(body, "", config)
    qin = QuantInput(config.input_width, None, config.input_signed, config.rounding, config.overflow)
    q = nn.Sequential(OrderedDict([("input", qin), ("net", body)]))
    q.qfx_config = config  # type: ignore[attr-defined]
    if calib_data is not None:
        calibrate(q, calib_data, config.calib_method)
    return q


# ============================================================================ calibration
def _quantizers(model: nn.Module) -> list[FixedQuant]:
    return [m for m in model.modules() if isinstance(m, FixedQuant)]


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, method: str = "mse") -> None:
    """Initialise every binary point from one batch: one train-mode forward in which each quantizer first fits its
    own input (weights from the weights, activations from the already-quantized upstream values).

    BatchNorm running statistics are left as they were.
    """
    qs = _quantizers(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(bn, {k: v.clone() for k, v in bn.named_buffers(recurse=False)}) for bn in bns]
    from qfx.nn.exact import mode

    try:
        for q in qs:
            q._calib = method
        with mode(model, "train"):
            model(x)
    finally:
        for q in qs:
            q._calib = None
        for bn, bufs in saved:
            for k, v in bufs.items():
                getattr(bn, k).copy_(v)


@contextlib.contextmanager
def calibration(model: nn.Module) -> Iterator[nn.Module]:
    """While active, every quantizer tracks the running max of what it sees and sets its binary point to cover it."""
    qs = _quantizers(model)
    for q in qs:
        q.reset_observed()
        q.calibrating = True
    try:
        yield model
    finally:
        for q in qs:
            q.calibrating = False


# ============================================================================ BN folding of qfx models
def fold_bn(model: nn.Module, calib_method: str = "mse") -> nn.Module:
    """Fold each ``QBatchNorm`` that directly follows a ``QLinear``/``QConv2d`` in a Sequential into that layer.

    The folded layer gets per-channel weight formats recalibrated for the folded weights and takes over the BN's
    output quantizer. Folding re-quantizes, so results change slightly: fine-tune afterwards for export.
    Returns the (possibly new) root module.
    """
    for name, child in list(model.named_children()):
        setattr(model, name, fold_bn(child, calib_method))
    if not isinstance(model, nn.Sequential):
        return model
    items = list(model.named_children())
    out: list[tuple[str, nn.Module]] = []
    for name, child in items:
        prev = out[-1][1] if out else None
        if isinstance(child, _QBatchNorm) and isinstance(prev, _WeightLayer):
            out[-1] = (out[-1][0], _fold_pair(prev, child, calib_method))
            continue
        out.append((name, child))
    return nn.Sequential(OrderedDict(out)) if len(out) != len(items) else model


@torch.no_grad()
def _fold_pair(layer: _WeightLayer, bn: _QBatchNorm, calib_method: str) -> _WeightLayer:
    was = bn.training
    bn.training = False
    scale, shift = bn.scale_shift()
    bn.training = was
    new = copy.deepcopy(layer)
    shape = (-1,) + (1,) * (layer.weight.ndim - 1)
    new.weight.copy_(layer.weight * scale.reshape(shape))
    b = layer.bias if layer.bias is not None else torch.zeros_like(scale)
    new_bias = nn.Parameter(b * scale + shift)
    if new.bias is None:
        new.bias = new_bias
    else:
        new.bias.copy_(new_bias)
    wq = layer.weight_quant
    new.weight_quant = FixedQuant(wq.width, None, wq.signed, wq.rounding, wq.overflow, per_channel_axis=0,
                                  num_channels=new.weight.shape[0], khot=wq.khot,
                                  learn_int_bits=wq.int_bits_param.requires_grad)
    new.weight_quant.calibrate(new.weight, calib_method)
    if new.bias_quant is None:
        bq = bn.shift_quant
        new.bias_quant = FixedQuant(bq.width, None, bq.signed, bq.rounding, bq.overflow)
    new.bias_quant.calibrate(new.bias, calib_method)
    new.out_quant = copy.deepcopy(bn.out_quant)
    return new


# ============================================================================ report
def report_formats(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """Per qfx layer: in/weight/bias/scale/shift/acc/out formats and K-hot, from one forward pass on ``example``.

    Input formats are the producers' output formats (tracked through the pass), so the accumulators are the ones
    the exported design uses. Rows are plain dicts of strings/ints (``format_table`` renders them).
    """
    produced: dict[int, tuple[torch.Tensor, FxFormat | None]] = {}
    rows: list[dict[str, Any]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def fmt_of(t: Any) -> FxFormat | None:
        rec = produced.get(id(t))
        return rec[1] if rec is not None and rec[0] is t else None

    def post(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        in_fmts = [fmt_of(t) for t in inputs if isinstance(t, torch.Tensor)]
        if isinstance(mod, QuantInput):
            in_fmts = []
            out = mod.fmt
        else:
            out = mod.out_fmt
            if out is None and isinstance(mod, QAdd) and all(in_fmts):
                out = in_fmts[0].add_format(in_fmts[1])
            elif out is None:
                out = in_fmts[0] if in_fmts else None
        produced[id(output)] = (output, out)
        row: dict[str, Any] = {"layer": names.get(mod, "?"), "type": type(mod).__name__,
                               "in": ", ".join(str(f) for f in in_fmts) if in_fmts else "float", "weight": "",
                               "bias": "", "acc": "", "out": str(out) if out else "", "khot": 0}
        fin = in_fmts[0] if in_fmts else None
        if fin is not None and not isinstance(mod, QAdd):
            mod.in_fmt = fin  # lets layer.accumulator_format() be called without arguments afterwards
        if isinstance(mod, _WeightLayer):
            _, fw = mod.weight_codes()
            _, fb = mod.bias_codes()
            row.update(weight=str(fw), bias=str(fb) if fb else "", khot=mod.khot)
            if fin is not None:
                row["acc"] = str(mod.accumulator_format(fin))
        elif isinstance(mod, _QBatchNorm):
            _, fs, _, fh = mod.scale_shift_codes()
            row.update(weight=f"scale {fs}", bias=f"shift {fh}")
            if fin is not None:
                row["acc"] = str(mod.accumulator_format(fin))
        elif isinstance(mod, QAvgPool2d) and fin is not None:
            row.update(weight=f"recip {mod.recip_fmt}", acc=str(mod.accumulator_format(fin)))
        if row["acc"] and getattr(model, "qfx_config", None) is not None:
            limit = model.qfx_config.acc_width  # type: ignore[union-attr]
            if limit is not None and FxFormat.parse(row["acc"]).width > limit:
                raise BadInputError(f"layer {row['layer']} needs a {FxFormat.parse(row['acc']).width}-bit "
                                    f"accumulator, above acc_width={limit}")
        rows.append(row)

    for m in model.modules():
        if isinstance(m, QModule):
            hooks.append(m.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of ``report_formats`` rows."""
    cols = ["layer", "type", "in", "weight", "bias", "acc", "out", "khot"]
    data = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(d) for d in data])
