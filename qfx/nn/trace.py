"""The torch.fx front door of ``quantize_model``: every op a float model's ``forward`` computes gets a qfx twin.

Why tracing: swapping ``named_modules`` alone misses what ``forward`` computes with functions and operators
(``F.relu``, ``x + y``, ``out += x``, ``x.mean((2, 3))``): those trained unquantized, and capture refused them only
after training. Here ``forward`` is traced once with torch.fx (qfx and torch.nn layers are leaves, user modules are
traced through) and every node whose value reaches the output is looked up in two tables:

* ``MODULE_TWINS`` (by class): a float torch.nn layer becomes its qfx twin at the same module path, so
  ``state_dict`` keys and ``config.overrides`` paths stay those of the float model;
* ``FUNCTION_TWINS`` / ``METHOD_TWINS`` (by function object / method name): a function or operator becomes a qfx
  module inserted into the traced graph (named after the op, inside the module whose ``forward`` calls it), shape
  ops that capture understands are kept, dropout is dropped.

Anything else is collected and refused in one message (each item with its module path or fx node and what qfx
offers instead) before any training. Modules ``forward`` never calls and results it never uses do not count.
When nothing but module swaps was needed the model keeps its own class and ``forward``; otherwise it becomes a
``torch.fx.GraphModule`` whose top-level children are the original (converted) submodules.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from qfx.errors import QfxError, UnsupportedError
from qfx.nn.extra_layers import QGlobalAvgPool2d
from qfx.nn.layers import (
    QAdd, QAvgPool1d, QAvgPool2d, QBatchNorm1d, QBatchNorm2d, QClippedReLU, QConv1d, QConv2d, QFlatten, QLinear,
    QMaxPool1d, QMaxPool2d, QModule, QReLU,
)

if TYPE_CHECKING:  # pragma: no cover
    from qfx.nn.convert import QFXConfig

__all__ = ["convert_model", "layer_bn_pairs", "MODULE_TWINS", "FUNCTION_TWINS", "METHOD_TWINS", "hint_for", "describe_target",
           "SUPPORTED_SUMMARY"]

SUPPORTED_SUMMARY = ("qfx converts nn.Linear, nn.Conv1d/2d, nn.BatchNorm1d/2d, ReLU/ReLU6/Hardtanh(0, c)/"
                     "clamp(0, c), MaxPool1d/2d, AvgPool1d/2d, the global average pool (x.mean((2, 3)), "
                     "AdaptiveAvgPool2d(1)), x + y, and keeps flatten/view/reshape; Dropout and Identity are dropped")


# ============================================================================ what a node becomes
@dataclass
class _Replace:
    """Run ``module`` on ``inputs`` (fx nodes) instead of the node; ``base`` names the inserted module."""

    module: nn.Module
    inputs: tuple[Any, ...]
    base: str


@dataclass
class _Drop:
    """The node is an identity at inference: its users read ``input`` instead."""

    input: Any


_KEEP = None  # the node stays as it is (capture understands it)
_REQUIRED = object()


def _common(c: "QFXConfig") -> dict[str, Any]:
    return dict(rounding=c.rounding, overflow=c.overflow, learn_int_bits=c.learn_int_bits)


def _relu(c: "QFXConfig") -> QReLU:
    return QReLU(out_width=c.act_width, out_signed=not c.relu_unsigned, **_common(c))


def _clip(cap: Any, c: "QFXConfig") -> QClippedReLU:
    if isinstance(cap, torch.fx.Node) or not isinstance(cap, (int, float)) or cap <= 0:
        raise UnsupportedError(f"clip bound {cap!r} must be a positive constant")
    return QClippedReLU(float(cap), out_width=c.act_width, out_signed=not c.relu_unsigned, **_common(c))


def _add(c: "QFXConfig") -> QAdd:
    return QAdd(out_width=c.add_width or c.act_width, **_common(c))


def _gap(keepdim: bool, c: "QFXConfig") -> QGlobalAvgPool2d:
    return QGlobalAvgPool2d(bool(keepdim), out_width=c.act_width, **_common(c))


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
        if m.padding_mode != "zeros":
            raise UnsupportedError(f"{type(m).__name__}(padding_mode={m.padding_mode!r}): qfx convolutions pad "
                                   "with zeros (padding_mode='zeros')")
        q = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is not None, weight_width=c.weight_width, bias_width=c.bias_width, out_width=c.act_width,
                per_channel=c.per_channel, khot=c.khot, **_common(c))
        return _copy_state(q, m)

    return build


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, c: "QFXConfig") -> nn.Module:
    cls = QBatchNorm1d if isinstance(m, nn.BatchNorm1d) else QBatchNorm2d
    if not m.affine or not m.track_running_stats:
        raise UnsupportedError("BatchNorm needs affine=True and track_running_stats=True (its running statistics "
                               "become fixed-point constants)")
    return _copy_state(cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                           scale_width=c.bn_width, shift_width=c.bn_width, out_width=c.act_width, **_common(c)), m)


def _hardtanh(m: nn.Hardtanh, c: "QFXConfig") -> nn.Module:
    if m.min_val != 0.0:
        raise UnsupportedError(f"Hardtanh({m.min_val}, {m.max_val}): only Hardtanh(0, cap) (a clipped ReLU) has a "
                               "qfx twin")
    return _clip(m.max_val, c)


def _adaptive_avg(m: nn.AdaptiveAvgPool2d, c: "QFXConfig") -> nn.Module:
    if m.output_size not in (1, (1, 1), [1, 1]):
        raise UnsupportedError(f"AdaptiveAvgPool2d({m.output_size}): only output size 1 (the global average pool) "
                               "has a qfx twin; use nn.AvgPool2d(kernel) for other sizes")
    return _gap(True, c)


def _flatten(m: nn.Flatten, c: "QFXConfig") -> nn.Module:
    return QFlatten(m.start_dim, m.end_dim)


#: float torch.nn class -> builder of its qfx twin (None from a builder: the module is dropped). Looked up along
#: the class's MRO, so subclasses (ReLU6 before Hardtanh) find the most specific entry.
MODULE_TWINS: dict[type, Callable[[Any, "QFXConfig"], nn.Module | None]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv(QConv2d),
    nn.Conv1d: _conv(QConv1d),
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.ReLU: lambda m, c: _relu(c),
    nn.ReLU6: lambda m, c: _clip(6.0, c),
    nn.Hardtanh: _hardtanh,
    nn.MaxPool2d: lambda m, c: QMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                          m.ceil_mode),
    nn.AvgPool2d: lambda m, c: QAvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                          m.divisor_override, out_width=c.act_width, **_common(c)),
    nn.MaxPool1d: lambda m, c: QMaxPool1d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices,
                                          m.ceil_mode),
    nn.AvgPool1d: lambda m, c: QAvgPool1d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                          out_width=c.act_width, **_common(c)),
    nn.AdaptiveAvgPool2d: _adaptive_avg,
    nn.Flatten: _flatten,
    nn.Identity: lambda m, c: None,
    nn.modules.dropout._DropoutNd: lambda m, c: None,
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
    """One function family: its parameters (name, default; ``_REQUIRED``) and the builder of what it becomes."""

    params: tuple[tuple[str, Any], ...]
    build: Callable[[dict[str, Any], "QFXConfig"], Any]
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


def _b_relu(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_relu(c), (a["input"],), "relu")


def _b_relu6(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    return _Replace(_clip(6.0, c), (a["input"],), "relu6")


def _b_hardtanh(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a["min_val"] != 0:
        raise UnsupportedError(f"hardtanh({a['min_val']}, {a['max_val']}): only hardtanh(x, 0, cap) (a clipped "
                               "ReLU) has a qfx twin")
    return _Replace(_clip(a["max_val"], c), (a["input"],), "clip")


def _b_clamp(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    lo, hi = a["min"], a["max"]
    if lo != 0 or _is_tensor_node(lo) or _is_tensor_node(hi):
        raise UnsupportedError(f"clamp(min={lo!r}, max={hi!r}): only clamp(x, 0) (ReLU) and clamp(x, 0, cap) "
                               "(clipped ReLU) with constant bounds have qfx twins")
    if hi is None:
        return _Replace(_relu(c), (a["input"],), "relu")
    return _Replace(_clip(hi, c), (a["input"],), "clip")


def _b_add(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    x, y = a["input"], a["other"]
    if not (_is_tensor_node(x) and _is_tensor_node(y)):
        raise UnsupportedError("adding a constant has no qfx op (fold it into the preceding layer's bias); "
                               "x + y of two tensors becomes QAdd")
    if a.get("alpha", 1) != 1:
        raise UnsupportedError(f"add with alpha={a['alpha']!r}: only alpha=1 (x + y) becomes QAdd")
    return _Replace(_add(c), (x, y), "add")


def _b_maxpool(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = QMaxPool2d(a["kernel_size"], a["stride"] or None, a["padding"], a["dilation"], a["return_indices"],
                   a["ceil_mode"])
    return _Replace(q, (a["input"],), "maxpool")


def _b_avgpool(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    q = QAvgPool2d(a["kernel_size"], a["stride"] or None, a["padding"], a["ceil_mode"], a["count_include_pad"],
                   a["divisor_override"], out_width=c.act_width, **_common(c))
    return _Replace(q, (a["input"],), "avgpool")


def _b_adaptive_avg(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    if a["output_size"] not in (1, (1, 1), [1, 1]):
        raise UnsupportedError(f"adaptive_avg_pool2d(x, {a['output_size']!r}): only output size 1 (the global "
                               "average pool) has a qfx twin; use avg_pool2d(x, kernel) for other sizes")
    return _Replace(_gap(True, c), (a["input"],), "avgpool")


def _b_mean(a: dict[str, Any], c: "QFXConfig") -> _Replace:
    dim = a["dim"]
    dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
    if sorted(d % 4 if isinstance(d, int) else -1 for d in dims) != [2, 3] or a.get("dtype") is not None:
        raise UnsupportedError(f"mean over dim={dim!r}: only the spatial mean x.mean((2, 3)) of an (N, C, H, W) "
                               "tensor (global average pool) has a qfx twin")
    return _Replace(_gap(bool(a["keepdim"]), c), (a["input"],), "avgpool")


def _b_flatten(a: dict[str, Any], c: "QFXConfig") -> None:
    if a["start_dim"] != 1 or a["end_dim"] not in (-1,):
        raise UnsupportedError(f"flatten(start_dim={a['start_dim']!r}, end_dim={a['end_dim']!r}): only "
                               "flatten(x, 1) (the batch dimension stays first) is supported")
    return _KEEP


def _b_drop(a: dict[str, Any], c: "QFXConfig") -> _Drop:
    return _Drop(a["input"])


def _b_keep(a: dict[str, Any], c: "QFXConfig") -> None:
    return _KEEP


_IN = ("input", _REQUIRED)
_RELU = _FnSpec((_IN, ("inplace", False)), _b_relu)
_RELU6 = _FnSpec((_IN, ("inplace", False)), _b_relu6)
_HARDTANH = _FnSpec((_IN, ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)), _b_hardtanh)
_CLAMP = _FnSpec((_IN, ("min", None), ("max", None)), _b_clamp)
_ADD = _FnSpec((_IN, ("other", _REQUIRED), ("alpha", 1)), _b_add)
_MAXPOOL = _FnSpec((_IN, ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0), ("dilation", 1),
                    ("ceil_mode", False), ("return_indices", False)), _b_maxpool)
_AVGPOOL = _FnSpec((_IN, ("kernel_size", _REQUIRED), ("stride", None), ("padding", 0), ("ceil_mode", False),
                    ("count_include_pad", True), ("divisor_override", None)), _b_avgpool)
_ADAPTIVE = _FnSpec((_IN, ("output_size", _REQUIRED)), _b_adaptive_avg)
_MEAN = _FnSpec((_IN, ("dim", None), ("keepdim", False), ("dtype", None)), _b_mean)
_FLATTEN = _FnSpec((_IN, ("start_dim", 0), ("end_dim", -1)), _b_flatten)
_DROPOUT = _FnSpec((_IN,), _b_drop, extra_ok=True)
_SHAPE = _FnSpec((), _b_keep, extra_ok=True)

#: function object -> what it becomes (torch.fx records functions and operators by object)
FUNCTION_TWINS: dict[Any, _FnSpec] = {
    F.relu: _RELU, torch.relu: _RELU, torch.relu_: _RELU,
    F.relu6: _RELU6,
    F.hardtanh: _HARDTANH, F.hardtanh_: _HARDTANH,
    torch.clamp: _CLAMP, torch.clip: _CLAMP, torch.clamp_: _CLAMP,
    operator.add: _ADD, operator.iadd: _ADD, torch.add: _ADD,
    F.max_pool2d: _MAXPOOL, torch.max_pool2d: _MAXPOOL,
    F.avg_pool2d: _AVGPOOL,
    F.adaptive_avg_pool2d: _ADAPTIVE,
    torch.mean: _MEAN,
    torch.flatten: _FLATTEN, torch.reshape: _SHAPE,
    F.dropout: _DROPOUT, F.dropout1d: _DROPOUT, F.dropout2d: _DROPOUT, F.dropout3d: _DROPOUT,
    F.alpha_dropout: _DROPOUT, F.feature_alpha_dropout: _DROPOUT, torch.dropout: _DROPOUT,
    operator.getitem: _SHAPE, getattr: _SHAPE,
}

#: Tensor method name -> what it becomes
METHOD_TWINS: dict[str, _FnSpec] = {
    "relu": _RELU, "relu_": _RELU,
    "clamp": _CLAMP, "clip": _CLAMP, "clamp_": _CLAMP, "clip_": _CLAMP,
    "add": _ADD, "add_": _ADD,
    "mean": _MEAN,
    "flatten": _FLATTEN,
    "view": _SHAPE, "reshape": _SHAPE, "size": _SHAPE, "contiguous": _SHAPE, "clone": _SHAPE, "detach": _SHAPE,
}

_OPERATOR_SYMBOLS = {operator.add: "x + y", operator.iadd: "x += y", operator.getitem: "x[...]",
                     operator.sub: "x - y", operator.isub: "x -= y", operator.mul: "x * y", operator.imul: "x *= y",
                     operator.truediv: "x / y", operator.itruediv: "x /= y", operator.matmul: "x @ y",
                     operator.neg: "-x", operator.floordiv: "x // y", operator.pow: "x ** y"}

#: hint families for what has no twin: (name fragments, what qfx offers instead)
_HINTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gelu", "sigmoid", "tanh", "silu", "swish", "elu", "selu", "leaky", "prelu", "softmax", "softplus",
      "hardswish", "hardsigmoid", "mish", "softsign", "glu", "threshold", "rrelu", "logsigmoid"),
     "qfx activations are ReLU, ReLU6, Hardtanh(0, cap) and clamp(x, 0, cap)"),
    (("pool",), "qfx pools are MaxPool1d/2d, AvgPool1d/2d and the global average pool (x.mean((2, 3)), "
                "AdaptiveAvgPool2d(1))"),
    (("norm",), "qfx normalizes with BatchNorm1d/BatchNorm2d (fixed-point scale and shift)"),
    (("conv",), "qfx convolutions are Conv1d and Conv2d with zero padding"),
    (("linear", "matmul", "mm", "bmm", "einsum", "@"), "qfx dense layers are nn.Linear"),
    (("cat", "stack", "split", "chunk"), "qfx has no concatenation or splitting op yet (one tensor flows from "
                                         "input to output, with residual adds)"),
    (("sub", "mul", "div", "neg", "pow", "sqrt", "exp", "log", "abs", "max", "min", "sum",
      "where", "-", "*", "/"), "qfx element-wise arithmetic is the residual add x + y (QAdd) only"),
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
    if spec is not None and spec.build is not _b_keep:
        twin = {_b_add: "qfx.nn.QAdd", _b_relu: "qfx.nn.QReLU", _b_relu6: "qfx.nn.QClippedReLU",
                _b_hardtanh: "qfx.nn.QClippedReLU", _b_clamp: "qfx.nn.QReLU/QClippedReLU",
                _b_maxpool: "qfx.nn.QMaxPool2d", _b_avgpool: "qfx.nn.QAvgPool2d",
                _b_adaptive_avg: "qfx.nn.QGlobalAvgPool2d", _b_mean: "qfx.nn.QGlobalAvgPool2d"}.get(spec.build)
        if twin:
            return f"it runs unquantized here: pass the model through qfx.quantize_model (which makes it {twin})"
    return hint_for(describe_target(op, target))


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


# ============================================================================ tracing and rewriting
class _Tracer(torch.fx.Tracer):
    """qfx modules are leaves (their forward is never traced into), as in capture."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QModule) or super().is_leaf_module(m, qualname)


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0][:200] if s else type(exc).__name__


def trace(model: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``model.forward``; UnsupportedError (one line, the reason) when fx cannot trace it."""
    try:
        return _Tracer().trace(model)
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


def _free_path(root: nn.Module, scope: str, base: str) -> str:
    owner = root.get_submodule(scope) if scope else root
    name, i = base, 1
    while hasattr(owner, name):
        name = f"{base}_{i}"
        i += 1
    return f"{scope}.{name}" if scope else name


def convert_model(body: nn.Module, config: "QFXConfig", for_path: Callable[[str], "QFXConfig"]) -> nn.Module:
    """``body`` (a float model, modified in place) with every op it computes in fixed point; see the module doc.

    ``for_path(path)`` gives the config of the module at ``path`` (overrides applied). Raises UnsupportedError
    listing every op qfx cannot quantize, each with its module path or fx node and the alternative.
    """
    known, twin = module_twin(body, for_path(""))
    if known:  # the whole model is one layer
        if twin is None:
            raise UnsupportedError(f"cannot quantize {type(body).__name__}: the model is an identity")
        return twin
    graph = trace(body)
    if config.fold_bn:
        _fold_float_bn(body, graph)
    _functionalize(graph)
    live = _live(graph)
    modules = dict(body.named_modules())
    problems: list[str] = []
    module_swaps: dict[str, nn.Module | None] = {}  # path -> twin (None: dropped)
    node_actions: dict[torch.fx.Node, Any] = {}  # fx node -> _Replace | _Drop | ("retarget", base)
    inputs = 0
    shape_nodes: set[torch.fx.Node] = set()
    rewrite = False

    for n in graph.nodes:
        if n not in live:
            continue
        if n.op == "placeholder":
            inputs += 1
            if inputs == 2:
                problems.append(f"forward takes more than one input ('{n.name}'): qfx models take one tensor")
        elif n.op == "get_attr":
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
                known, twin = module_twin(m, for_path(path))
                if not known:
                    problems.append(f"{where}: no fixed-point twin; {hint_for(type(m).__name__)}")
                    continue
                module_swaps[path] = twin
            except UnsupportedError as exc:
                problems.append(f"{where}: {exc}")
        elif n.op in ("call_function", "call_method"):
            spec = (METHOD_TWINS.get(str(n.target)) if n.op == "call_method"
                    else FUNCTION_TWINS.get(n.target) if _hashable(n.target) else None)
            where = _where_call(n, modules)
            if spec is None:
                problems.append(f"{where}: no fixed-point twin; {hint_for(describe_target(n.op, n.target))}")
                continue
            if spec is _SHAPE:
                if n.target in (operator.getitem,) and n.args[0] not in shape_nodes:
                    problems.append(f"{where}: indexing a tensor has no qfx op (only sizes may be indexed)")
                    continue
                if n.target is getattr and n.args[1] != "shape":
                    problems.append(f"{where}: reading tensor attribute {n.args[1]!r}; only .shape is supported")
                    continue
                if n.target in ("size", getattr, operator.getitem):
                    shape_nodes.add(n)
                continue
            try:
                action = spec.build(_bind(spec, n), for_path(_scope(n)))
            except UnsupportedError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if action is not _KEEP:
                node_actions[n] = action
                rewrite = True
    if problems:
        raise UnsupportedError(f"cannot quantize {type(body).__name__}: {len(problems)} unsupported "
                               f"operation{'s' if len(problems) > 1 else ''}: "
                               + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))

    dropped = {p for p, t in module_swaps.items() if t is None}
    for path, twin in module_swaps.items():
        if twin is not None:
            _set_module(body, path, twin)
    if not rewrite:
        for path in dropped:  # keep the module structure (and Sequential indices): an identity in its place
            _set_module(body, path, nn.Identity())
        return body
    return _rewrite(body, graph, live, node_actions, dropped, for_path)


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
        elif isinstance(act, tuple):  # ("retarget", path): a fresh copy of a reused stateless layer
            old = act[1]
            scope, _, base = old.rpartition(".")
            path = _free_path(body, scope, base.rstrip("0123456789_") or "layer")
            _set_module(body, path, copy.deepcopy(body.get_submodule(old)))
            n.target = path
    for n in reversed(list(graph.nodes)):
        if n.op not in ("placeholder", "output") and not n.users and n not in live:
            graph.erase_node(n)
    for path in dropped:
        _set_module(body, path, nn.Identity())
    graph.lint()
    gm = torch.fx.GraphModule(body, graph, class_name=type(body).__name__)
    for name, child in body.named_children():  # the real containers, not fx's plain copies (indexing keeps working)
        if hasattr(gm, name):
            setattr(gm, name, child)
    return gm
