"""Sequence-first tensors in a batch-first world: ``x.transpose(0, 1)`` as a relabelling, not a data move.

qfx tensors keep the batch at dim 0 (the IR describes one sample). Models written for torch's sequence-first
layout (``nn.MultiheadAttention(batch_first=False)``, ``nn.TransformerEncoderLayer`` without ``batch_first``,
``x.permute(1, 0, 2)`` before an encoder, ``h.mean(0)`` or ``h[-1]`` after it) move the batch to dim 1 and back.
``relabel_batch_swaps`` rewrites the traced float graph so every tensor stays batch-first in memory: each
transpose/permute that swaps dims 0 and 1 becomes a wire (``contiguous``) and the tensors after it are marked
"swapped" (their logical dims 0 and 1 are the physical dims 1 and 0). Ops on swapped tensors are kept when their
meaning does not depend on which of the two leading dims is the batch (element-wise ops and activations, Linear and
LayerNorm over the last dim, dropout), or get their dims renumbered (softmax, mean/sum/amax/amin/max/min over dims,
cat, chunk/split/narrow/unbind, flatten/squeeze/unsqueeze of later dims, indexing, further transposes); anything
else on a swapped tensor, and a swapped model output, is reported (one line each, with the fx node). The graph
computes the same values as before, batch-first.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

__all__ = ["relabel_batch_swaps"]

#: modules whose result does not depend on which leading dim is the batch (they act per element, or along the last
#: dim of a rank >= 3 tensor: ``_LAST_DIM``)
_POINTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.GELU, nn.Mish, nn.Hardsigmoid,
                      nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity, nn.modules.dropout._DropoutNd)
_LAST_DIM = (nn.Linear, nn.LayerNorm)
_WIRES = ("contiguous", "clone", "detach", "float", "to", "type_as")


def _compose(a: list[int], b: list[int]) -> list[int]:
    """The permutation of ``x.permute(a).permute(b)``."""
    return [a[i] for i in b]


def _sigma(r: int) -> list[int]:
    return [1, 0] + list(range(2, r))


def relabel_batch_swaps(body: nn.Module, graph: torch.fx.Graph, examples: Any,
                        leaves: frozenset[int] = frozenset()) -> list[str]:
    """Rewrite ``graph`` in place as described in the module doc; returns the problems (empty when none). Needs the
    example inputs (ranks); without them, or when no transpose/permute touches dim 0, nothing changes. ``leaves``:
    ids of the train-only modules (identities at inference, any layout)."""
    from qfx.nn.trace import (
        _ABS, _ARITH_SPECS, _CAST, _CLAMP, _CLAMP_MAX, _CLAMP_MIN, _DROPOUT, _ELU, _GELU, _HARDSIGMOID, _HARDSWISH,
        _HARDTANH, _LEAKY, _LOG_SOFTMAX, _MAXIMUM, _MINIMUM, _MISH, _NEG, _POW, _RELU, _RELU6, _SIGMOID, _SILU,
        _SOFTMAX, _SOFTPLUS, _SQUARE, _TANH, _TORCH_DROPOUT, _DROPOUT1D, _DROPOUT2D, _DROPOUT3D, _ALPHA_DROPOUT,
        _FEATURE_ALPHA_DROPOUT, _MEAN, _SUM, _AMAX, _AMIN, _MAX_DIM, _MIN_DIM, _CAT, FUNCTION_TWINS, METHOD_TWINS,
        _bind, _hashable, _where_call,
    )

    swaps = [n for n in graph.nodes if n.op in ("call_method", "call_function")
             and _name(n) in ("transpose", "swapaxes", "permute")
             and any(isinstance(d, int) and not isinstance(d, bool) and d <= 0 for d in _raw_dims(n))]
    xs = [t for t in (examples if isinstance(examples, (tuple, list)) else [examples]) if isinstance(t, torch.Tensor)]
    if not swaps:
        return []
    if not xs:
        return [f"{len(swaps)} transpose/permute of dim 0 (sequence-first tensors): give quantize_model calib_data so "
                "that qfx can keep the tensors batch-first"]
    values = _run(body, graph, xs)
    if values is None:
        return []
    pointwise = {_ABS, _CAST, _CLAMP, _CLAMP_MAX, _CLAMP_MIN, _DROPOUT, _ELU, _GELU, _HARDSIGMOID, _HARDSWISH,
                 _HARDTANH, _LEAKY, _MAXIMUM, _MINIMUM, _MISH, _NEG, _POW, _RELU, _RELU6, _SIGMOID, _SILU, _SOFTPLUS,
                 _SQUARE, _TANH, _TORCH_DROPOUT, _DROPOUT1D, _DROPOUT2D, _DROPOUT3D, _ALPHA_DROPOUT,
                 _FEATURE_ALPHA_DROPOUT, *_ARITH_SPECS}
    reductions = {_SOFTMAX, _LOG_SOFTMAX, _MEAN, _SUM, _AMAX, _AMIN, _MAX_DIM, _MIN_DIM}
    modules = dict(body.named_modules())
    swapped: set[torch.fx.Node] = set()
    sizes: set[torch.fx.Node] = set()  # x.shape / x.size() of a swapped tensor (what is left: the batch size)
    problems: list[str] = []

    def rank(v: Any) -> int | None:
        t = values.get(v.name) if isinstance(v, torch.fx.Node) else None
        return t.ndim if isinstance(t, torch.Tensor) else None

    def refuse(n: torch.fx.Node, what: str) -> None:
        problems.append(f"{_where_call(n, modules) if n.op != 'call_module' else repr(str(n.target))}: {what} of a "
                        "tensor whose batch is dim 1 (after a transpose or permute of dims 0 and 1); qfx keeps such "
                        "tensors batch-first in memory and takes element-wise ops, Linear/LayerNorm over the last "
                        "dim, softmax/reductions/cat/indexing along dims it can renumber; transpose back to "
                        "batch-first first")

    for n in list(graph.nodes):
        ins = [a for a in n.all_input_nodes if a in swapped]
        r = rank(n)
        if n.op in ("call_method", "call_function") and _name(n) in ("transpose", "swapaxes", "permute") \
                and r is not None and isinstance(n.args[0], torch.fx.Node):
            perm = _perm(n, r)
            f = n.args[0] in swapped
            if perm is None:
                if f:
                    refuse(n, f"{_name(n)} with computed dims")
                continue
            p = _compose(_sigma(r), perm) if f else perm
            if p[0] == 0:
                g = False
            elif p[1] == 0:
                g, p = True, _compose(p, _sigma(r))
            else:  # the batch moves past dim 1: refused here for a swapped input, by the tracer otherwise
                if f:
                    refuse(n, f"{_name(n)} moving the batch past dim 1")
                continue
            if p == list(range(r)):
                n.op, n.target, n.args, n.kwargs = "call_method", "contiguous", (n.args[0],), {}
            elif f or g:
                n.op, n.target, n.args, n.kwargs = "call_method", "permute", (n.args[0], *p), {}
            if g:
                swapped.add(n)
            continue
        if n.op in ("call_method", "call_function") and any(a in sizes for a in n.all_input_nodes):
            if _name(n) == "getitem" and isinstance(n.args[1], int) and not isinstance(n.args[1], bool):
                n.args = (n.args[0], _swap(n.args[1], len(values[n.args[0].name])))  # the batch size, physically
            else:
                problems.append(f"{_where_call(n, modules)}: uses the sizes of a tensor whose batch is dim 1; read "
                                "the batch size from a batch-first tensor (x.size(0))")
            continue
        if not ins:
            continue
        if n.op == "output":
            problems.append("the model returns a tensor whose batch is dim 1 (after a transpose or permute of dims "
                            "0 and 1); qfx models return batch-first tensors: transpose it back")
            continue
        if n.op == "call_module":
            m = modules.get(str(n.target))
            ok = isinstance(m, _POINTWISE_MODULES) or isinstance(m, _LAST_DIM) and (r or 0) >= 3 \
                or type(m).__name__ == "QTrainOnly" or id(m) in leaves
            if ok and len(n.all_input_nodes) == 1:
                swapped.add(n)
            else:
                refuse(n, f"{type(m).__name__}")
            continue
        if n.op not in ("call_method", "call_function"):
            continue
        spec = (METHOD_TWINS.get(str(n.target)) if n.op == "call_method"
                else FUNCTION_TWINS.get(n.target) if _hashable(n.target) else None)
        t = _name(n)
        tensors = [a for a in n.all_input_nodes if rank(a) is not None]
        if t in _WIRES or spec in pointwise:
            if any(a not in swapped and rank(a) not in (None, 0) and _covers_lead(a, values, r) for a in tensors):
                refuse(n, f"{t} mixing it with a batch-first tensor")
            else:
                swapped.add(n)
            continue
        if spec in reductions and r is not None:
            _renumber_dims(n, spec, rank(n.args[0]) or 0, _bind)
            x_r = rank(n.args[0]) or 0
            dims = _dims_of(n, spec, _bind)
            dset = {d % x_r for d in dims} if dims is not None else set(range(x_r))
            keep = bool(_bind(spec, n).get("keepdim", False)) or spec in (_SOFTMAX, _LOG_SOFTMAX)
            if 0 in dset:
                refuse(n, f"{t} over the batch")
                continue
            if keep or 1 not in dset:  # physical dim 1 (the sequence) reduced away: batch-first again
                swapped.add(n)
            continue
        if spec is _CAT:
            xs_ = n.args[0] if n.args else n.kwargs.get("tensors")
            if not isinstance(xs_, (list, tuple)) or any(a not in swapped for a in xs_ if isinstance(a, torch.fx.Node)):
                refuse(n, "torch.cat mixing it with a batch-first tensor")
                continue
            _renumber_dims(n, spec, r or 0, _bind)
            swapped.add(n)
            continue
        if t == "getitem" and isinstance(n.args[0], torch.fx.Node):
            src = values.get(n.args[0].name)
            if not isinstance(src, torch.Tensor):  # a part of chunk/split: the parts keep the layout
                swapped.add(n)
                continue
            idx = n.args[1] if isinstance(n.args[1], tuple) else (n.args[1],)
            if any(i is None or i is Ellipsis for i in idx[:2]) or any(isinstance(i, torch.fx.Node) for i in idx):
                refuse(n, "indexing with None, '...' first or tensors")
                continue
            idx = tuple(idx) + (slice(None),) * max(0, 2 - len(idx))
            n.args = (n.args[0], (idx[1], idx[0]) + tuple(idx[2:]))
            if not isinstance(idx[0], int):  # the sequence dim kept: still swapped
                swapped.add(n)
            continue
        if t == "unbind" and isinstance(n.args[0], torch.fx.Node):  # timm's q, k, v = qkv.permute(2, 0, ...).unbind(0)
            d, xr = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0), rank(n.args[0]) or 0
            if not isinstance(d, int) or isinstance(d, bool) or not xr or d % xr == 1:
                refuse(n, "unbind over the batch or a computed dim")
                continue
            n.args, n.kwargs = (n.args[0], _swap(d, xr)), {}
            if d % xr != 0:  # the parts keep both leading dims: still swapped
                swapped.add(n)
            continue  # unbind(0): the sequence-like dim goes, every part is batch-first again
        if t in ("chunk", "split", "tensor_split", "narrow"):
            _renumber_positional(n, 1 if t == "narrow" else 2, r if r is not None else rank(n.args[0]) or 0)
            swapped.add(n)
            continue
        if t in ("flatten", "squeeze", "unsqueeze") and _later_dims_only(n, rank(n.args[0]) or 0):
            swapped.add(n)
            continue
        if t == "size" or (t == "getattr" and len(n.args) > 1 and n.args[1] == "shape"):
            # the per-sample sizes were folded to constants; what reads this now is the batch size (logical dim 1)
            if t == "size" and len(n.args) > 1:
                if isinstance(n.args[1], int):
                    n.args = (n.args[0], _swap(n.args[1], rank(n.args[0]) or 0))
                else:
                    refuse(n, "size with a computed dim")
            else:
                sizes.add(n)
            continue
        refuse(n, t)
    return problems


def _name(n: torch.fx.Node) -> str:
    return n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))


def _raw_dims(n: torch.fx.Node) -> list[Any]:
    """The dims a transpose/swapaxes/permute call names, as written."""
    t = _name(n)
    if t == "permute":
        a = n.args[1:]
        dims = list(a[0]) if len(a) == 1 and isinstance(a[0], (list, tuple)) else list(a)
        return dims or list(n.kwargs.get("dims", ()))
    return [n.args[1] if len(n.args) > 1 else n.kwargs.get("dim0"), n.args[2] if len(n.args) > 2
            else n.kwargs.get("dim1")]


def _perm(n: torch.fx.Node, r: int) -> list[int] | None:
    dims = _raw_dims(n)
    if any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
        return None
    if _name(n) == "permute":
        return [d % r for d in dims] if len(dims) == r else None
    p = list(range(r))
    i, j = dims[0] % r, dims[1] % r
    p[i], p[j] = p[j], p[i]
    return p


def _swap(d: int, r: int) -> int:
    d = d % r if r else d
    return {0: 1, 1: 0}.get(d, d)


def _dims_of(n: torch.fx.Node, spec: Any, bind: Any) -> tuple[int, ...] | None:
    d = bind(spec, n).get("dim")
    if d is None or isinstance(d, (tuple, list)) and not d:
        return None
    return tuple(d) if isinstance(d, (tuple, list)) else (d,)


def _renumber_dims(n: torch.fx.Node, spec: Any, r: int, bind: Any) -> None:
    """The call's ``dim`` argument swapped 0 <-> 1 (counted on the rank-``r`` input), all arguments positional."""
    a = bind(spec, n)
    names = [p for p, _ in spec.params]
    given = set(names[:len(n.args)]) | set(n.kwargs) | {"dim"}
    d = a.get("dim")
    if isinstance(d, int) and not isinstance(d, bool):
        a["dim"] = _swap(d, r)
    elif isinstance(d, (tuple, list)) and all(isinstance(v, int) for v in d):
        a["dim"] = type(d)(_swap(v, r) for v in d)
    else:
        return
    if names[0] == "tensors":
        n.args, n.kwargs = (a["tensors"], a["dim"]), {}
        return
    n.args, n.kwargs = (a[names[0]],), {k: a[k] for k in names[1:] if k in given and not k.startswith("_")}


def _renumber_positional(n: torch.fx.Node, pos: int, r: int) -> None:
    """chunk/split/tensor_split (dim at 2, default 0) and narrow (dim at 1): the dim swapped 0 <-> 1."""
    args = list(n.args)
    if len(args) > pos:
        args[pos] = _swap(args[pos], r) if isinstance(args[pos], int) else args[pos]
        n.args = tuple(args)
    elif "dim" in n.kwargs:
        n.kwargs = {**n.kwargs, "dim": _swap(n.kwargs["dim"], r)}
    elif pos == 2:  # chunk/split along dim 0 by default: the sequence, physically dim 1
        n.kwargs = {**n.kwargs, "dim": 1}


def _later_dims_only(n: torch.fx.Node, r: int) -> bool:
    """flatten(start >= 2) / squeeze(d >= 2) / unsqueeze(d >= 2): the two leading dims untouched."""
    t = _name(n)
    if t == "flatten":
        s = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        return isinstance(s, int) and r > 0 and s % r >= 2
    d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    rr = r + 1 if t == "unsqueeze" else r
    return isinstance(d, int) and rr > 0 and d % rr >= 2


def _covers_lead(a: torch.fx.Node, values: dict[str, Any], r: int | None) -> bool:
    """Whether a batch-first operand broadcasts over one of the two leading dims of the rank-``r`` result (a
    parameter of rank <= r - 2 only covers later dims and mixes freely)."""
    t = values.get(a.name)
    return isinstance(t, torch.Tensor) and (r is None or t.ndim >= (r - 1))


def _run(body: nn.Module, graph: torch.fx.Graph, xs: list[torch.Tensor]) -> dict[str, Any] | None:
    """Every node's value on a batch of 2 of the example inputs, or None if it fails."""
    from qfx.nn.trace import example_values

    return example_values(body, graph, xs)
