"""Model conversion (``quantize_model``), calibration, BN folding and the per-layer format report."""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Iterator

import torch
import torch.fx
from torch import nn

from qfx.errors import BadInputError, FormatError
from qfx.fixed.format import FxFormat
from qfx.nn.layers import QAdd, QAvgPool2d, QConvTranspose2d, QModule, QuantInput, _WeightLayer, _QBatchNorm
from qfx.nn.quant import FixedQuant, link_chains

__all__ = ["QFXConfig", "quantize_model", "calibrate", "calibration", "report_formats", "format_table", "fold_bn"]


_WIDTH_FIELDS = ("weight_width", "bias_width", "act_width", "input_width", "bn_width", "add_width")


@dataclass
class QFXConfig:
    """How ``quantize_model`` quantizes a float model. Widths are total bits; binary points are learned.

    ``overrides`` maps a module path of the *float* model (as in ``named_modules``; ``""`` is the whole model) to
    field overrides, e.g. ``{"0": {"weight_width": 8}, "head": {"khot": None}}``. An override of a container
    applies to everything inside it (the longest matching path wins), including the adds and activations that
    ``quantize_model`` inserts for functional code there. ``acc_width`` is ``None`` for lossless accumulators
    (always used); an int is a ceiling that ``report_formats`` checks. Values are checked on construction.
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

    def __post_init__(self) -> None:
        self._check_values()
        if not isinstance(self.overrides, dict):
            raise BadInputError(f"QFXConfig.overrides must be a dict of module path -> dict, got "
                                f"{type(self.overrides).__name__}")
        names = {f.name for f in fields(self)} - {"overrides"}
        for path, ov in self.overrides.items():
            if not isinstance(path, str) or not isinstance(ov, dict):
                raise BadInputError(f"QFXConfig.overrides must map module paths (str) to dicts of fields, got "
                                    f"{path!r}: {ov!r}")
            bad = sorted(set(ov) - names)
            if bad:
                raise BadInputError(f"override for {path!r} has unknown fields: {', '.join(map(str, bad))}")
            try:
                replace(self, **ov, overrides={})
            except BadInputError as exc:
                raise type(exc)(f"override for {path!r}: {exc}") from None

    def _check_values(self) -> None:
        """Refuse values that would fail later, mid-calibration or mid-training, with the field named."""
        from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES
        from qfx.nn.quant import MAX_TRAIN_WIDTH

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in _WIDTH_FIELDS:
            v = getattr(self, name)
            if v is None and name == "add_width":
                continue
            lo = 1 if name == "input_width" and self.input_signed is False else 2
            if not is_int(v) or not lo <= v <= MAX_TRAIN_WIDTH:
                raise FormatError(f"QFXConfig.{name} must be an integer in {lo}..{MAX_TRAIN_WIDTH} (a signed format "
                                  f"needs 2 bits; train mode is float32 fake quantization), got {v!r}")
        if self.acc_width is not None and (not is_int(self.acc_width) or not 2 <= self.acc_width <= 64):
            raise FormatError(f"QFXConfig.acc_width must be None or an integer in 2..64, got {self.acc_width!r}")
        if self.khot is not None and (not is_int(self.khot) or self.khot < 1):
            raise FormatError(f"QFXConfig.khot must be None or an integer >= 1, got {self.khot!r}")
        if self.rounding not in ROUNDING_MODES:
            raise FormatError(f"QFXConfig.rounding must be one of {', '.join(ROUNDING_MODES)}, got "
                              f"{self.rounding!r}")
        if self.overflow not in OVERFLOW_MODES:
            raise FormatError(f"QFXConfig.overflow must be one of {', '.join(OVERFLOW_MODES)}, got "
                              f"{self.overflow!r}")
        if self.calib_method not in ("max", "mse"):
            raise FormatError(f"QFXConfig.calib_method must be 'max' or 'mse', got {self.calib_method!r}")

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
        """The config of the module at ``path``: overrides of every enclosing path, the most specific last."""
        if not self.overrides:
            return self
        parts = path.split(".") if path else []
        merged: dict[str, Any] = {}
        for k in range(len(parts) + 1):
            merged.update(self.overrides.get(".".join(parts[:k]), {}))
        return replace(self, **merged) if merged else self

    def check_paths(self, paths: Iterable[str]) -> None:
        """Refuse override keys that name no module (a typo would otherwise be silently ignored)."""
        known = set(paths) | {""}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            some = ", ".join(repr(p) for p in sorted(known - {""})[:8])
            raise BadInputError(f"QFXConfig.overrides name no module of the model: {', '.join(map(repr, unknown))}"
                                f" (module paths are like {some})")


# ============================================================================ conversion
def quantize_model(model: nn.Module, config: QFXConfig | None = None,
                   calib_data: torch.Tensor | tuple[torch.Tensor, ...] | None = None) -> nn.Module:
    """A fixed-point copy of ``model``: ``Sequential(input=QuantInput, net=<converted model>)``.

    ``forward`` is traced with torch.fx (``qfx.nn.trace``; ``supported_table()`` lists everything): torch.nn layers
    (Linear, Conv1d/2d, BatchNorm, ReLU, Sigmoid, GELU, Softmax, pools, Upsample, ...) become qfx layers with their
    parameters copied, functions and operators (``F.relu``, ``x + y``, ``x * 0.5``, ``torch.cat``,
    ``x.mean((2, 3))``, ``F.max_pool2d``...) become qfx modules in the traced graph, Identity is dropped and
    dropout / stochastic depth become ``QTrainOnly`` (random in train mode as in torch, identities in eval and exact
    mode), so training computes what the hardware will. Whatever has no fixed-point twin is
    refused here, all of it in one message, before any training. A model that already has a ``QuantInput`` (one
    ``quantize_model`` returned, say) gets no second one: only what is still float in it is converted. With
    ``calib_data`` every binary point is initialised from one batch (``config.calib_method``). The resolved config
    is attached as ``model.qfx_config``.

    A ``forward`` with several tensor inputs (``forward(self, x, y)``) returns the traced GraphModule itself with
    one ``QuantInput`` per input inside it (``quant_x``, ``quant_y``); ``calib_data`` is then a tuple with one
    batch per input, and each input's signedness comes from its own batch.
    """
    from qfx.nn.trace import convert_model

    if not isinstance(model, nn.Module):
        raise BadInputError(f"quantize_model needs a torch.nn.Module, got {type(model).__name__}")
    if config is None:
        config = getattr(model, "qfx_config", None) if isinstance(getattr(model, "qfx_config", None), QFXConfig) \
            else QFXConfig()
    config = copy.deepcopy(config)
    if not isinstance(config, QFXConfig):
        raise BadInputError(f"config must be a qfx.QFXConfig, got {type(config).__name__}")
    batches = list(calib_data) if isinstance(calib_data, (tuple, list)) else (
        [] if calib_data is None else [calib_data])
    if any(not isinstance(t, torch.Tensor) for t in batches):
        raise BadInputError("calib_data must be a tensor (or a tuple of tensors, one per model input)")
    signs = [bool((t < 0).any()) for t in batches] if config.input_signed is None else None
    if config.input_signed is None:
        config.input_signed = any(signs or [False])
    body = copy.deepcopy(model)
    # a model quantize_model made before: convert what is inside ``net`` (its paths are the float model's)
    wrapped = isinstance(body, nn.Sequential) and isinstance(getattr(body, "input", None), QuantInput) \
        and isinstance(getattr(body, "net", None), nn.Module)
    inner = body.net if wrapped else body
    config.check_paths(n for n, _ in inner.named_modules())
    has_input = wrapped or any(isinstance(m, QuantInput) for m in inner.modules())

    def input_quant(k: int) -> QuantInput:
        signed = signs[k] if signs and k < len(signs) else config.input_signed
        return QuantInput(_input_width(batches[k] if k < len(batches) else None, config), None, signed,
                          config.rounding, config.overflow)

    inner = convert_model(inner, config, config.for_path, None if has_input else input_quant, batches)
    if wrapped:
        body.net = inner
        q = body
    elif has_input or any(isinstance(m, QuantInput) for m in inner.modules()):
        q = inner  # built with its own QuantInput (no second one), or several inputs quantized inside
    else:
        qin = QuantInput(_input_width(batches[0] if batches else None, config), None, config.input_signed,
                         config.rounding, config.overflow)
        q = nn.Sequential(OrderedDict([("input", qin), ("net", inner)]))
    q.qfx_config = config  # type: ignore[attr-defined]
    link_chains(q)  # train mode: layer output + ReLU roundings in one pass (same bits; qfx.nn.quant.link_chains)
    if calib_data is not None:
        calibrate(q, calib_data, config.calib_method)
        _check_capture(q, calib_data)
    return q


def _input_width(batch: torch.Tensor | None, config: QFXConfig) -> int:
    """``config.input_width``, except for integer data (token indices, uint8 pixels): the fewest bits that hold every
    value seen exactly (calibration then puts the binary point after the last bit: ``ap_uint<k>`` / ``ap_int<k>``)."""
    if batch is None or batch.is_floating_point() or batch.dtype == torch.bool or batch.is_complex() or \
            not batch.numel():
        return config.input_width
    lo, hi = int(batch.min()), int(batch.max())
    bits = max(abs(lo), hi, 1).bit_length() + (1 if lo < 0 else 0)
    if bits > 32:
        raise BadInputError(f"integer input values up to {max(abs(lo), hi)} need {bits} bits; qfx inputs have at "
                            "most 32")
    return bits


def _check_capture(q: nn.Module, calib_data: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
    """Capture the calibrated model once, so what only the IR refuses (a broadcast qfx has no op for, a shape a
    layer cannot take) is refused here, before any training, not at export."""
    from qfx.api import capture_model
    from qfx.errors import QfxError

    example = tuple(t[:1] for t in calib_data) if isinstance(calib_data, (tuple, list)) else calib_data[:1]
    try:
        capture_model(q, example)
    except QfxError as exc:
        from qfx.ir.from_torch import _model_class

        raise type(exc)(f"cannot quantize {_model_class(q)}: {exc}") from None


# ============================================================================ calibration
def _quantizers(model: nn.Module) -> list[FixedQuant]:
    return [m for m in model.modules() if isinstance(m, FixedQuant)]


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], method: str = "mse") -> None:
    """Initialise every binary point from one batch (a tuple: one per model input): one train-mode forward in which
    each quantizer first fits its own input (weights from the weights, activations from the already-quantized
    upstream values).

    BatchNorm running statistics are left as they were; dropout and stochastic depth (``QTrainOnly``) are identities
    here, so every range is the one inference sees.
    """
    from qfx.nn.extra_layers import QTrainOnly

    qs = _quantizers(model)
    regs = [m for m in model.modules() if isinstance(m, QTrainOnly)]
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(bn, {k: v.clone() for k, v in bn.named_buffers(recurse=False)}) for bn in bns]
    from qfx.nn.exact import mode

    try:
        for q in qs:
            q._calib = method
        for r in regs:
            r.calibrating = True
        with mode(model, "train"):
            model(*x) if isinstance(x, (tuple, list)) else model(x)
    finally:
        for q in qs:
            q._calib = None
        for r in regs:
            r.calibrating = False
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
    """Fold each ``QBatchNorm`` that directly follows a ``QLinear``/``QConv2d`` in a Sequential (or, in a model
    ``quantize_model`` rewrote as a GraphModule, in the graph) into that layer.

    The folded layer gets per-channel weight formats recalibrated for the folded weights and takes over the BN's
    output quantizer. Folding re-quantizes, so results change slightly: fine-tune afterwards for export.
    Returns the (possibly new) root module.
    """
    if isinstance(model, torch.fx.GraphModule):  # quantize_model rewrote forward: fold along the graph
        return _fold_bn_graph(model, calib_method)
    for name, child in list(model.named_children()):
        setattr(model, name, fold_bn(child, calib_method))
    if not isinstance(model, nn.Sequential):
        return model
    items = list(model.named_children())
    out: list[tuple[str, nn.Module]] = []
    for name, child in items:
        prev = out[-1][1] if out else None
        if isinstance(child, _QBatchNorm) and isinstance(prev, _WeightLayer) and not isinstance(prev, QConvTranspose2d):
            out[-1] = (out[-1][0], _fold_pair(prev, child, calib_method))
            continue
        out.append((name, child))
    return nn.Sequential(OrderedDict(out)) if len(out) != len(items) else model


def _fold_bn_graph(gm: torch.fx.GraphModule, calib_method: str) -> torch.fx.GraphModule:
    """``fold_bn`` of a GraphModule: the graph calls layers one by one, so pairs come from the graph (the BN reads
    the layer's output and nothing else does); the BN's place holds an identity and its call leaves the graph."""
    from qfx.nn.trace import _set_module, layer_bn_pairs

    modules = dict(gm.named_modules())
    # transposed convolutions keep their BN (their output channels are not the kernel's first axis)
    pairs = layer_bn_pairs(gm.graph, modules, (_WeightLayer,), (_QBatchNorm,), exclude=(QConvTranspose2d,))
    for layer_n, bn_n in pairs:
        _set_module(gm, str(layer_n.target),
                    _fold_pair(modules[str(layer_n.target)], modules[str(bn_n.target)], calib_method))
        _set_module(gm, str(bn_n.target), nn.Identity())
        bn_n.replace_all_uses_with(layer_n)
        gm.graph.erase_node(bn_n)
    if pairs:
        gm.graph.lint()
        gm.recompile()
    return gm


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
            model(*example) if isinstance(example, (tuple, list)) else model(example)
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
