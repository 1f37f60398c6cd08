"""Capture a torch model built from qfx layers as an IR ``Graph`` with ``torch.fx`` symbolic tracing.

Contract with ``qfx.nn``: every qfx module has ``ir_nodes(name, inputs, output) -> list[(Node, TensorSpec)]``
(the last pair writes ``output``) and ``out_fmt``; the first module, ``QuantInput``, has ``fmt`` (the graph input
format) and returns no nodes. qfx modules are fx leaves, so their ``forward`` is never traced into.

Besides qfx modules, capture understands what carries no arithmetic: ``nn.Flatten``, ``torch.flatten``,
``Tensor.flatten/view/reshape/squeeze/unsqueeze`` (batch dimension first, sizes from ``x.size(0)``/``x.shape[0]``),
``nn.Identity``, dropout and ``QTrainOnly`` (inference). Anything else raises ``UnsupportedError`` naming the module path or fx node, its type,
and what to do (``qfx.quantize_model`` converts float layers, functions and operators; see ``qfx.nn.trace``).
Calls whose results never reach the output are ignored.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Sequence

import numpy as np

from qfx.errors import BadInputError, UnsupportedError
from qfx.ir.names import UniqueNames
from qfx.ir.graph import Graph, Node, TensorSpec

__all__ = ["capture", "sanitize"]

_PASS_THROUGH = ("Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                 "FeatureAlphaDropout", "QTrainOnly")  # QTrainOnly: dropout / stochastic depth, identities here


class _Parts(tuple):
    """What chunk/split returned: (input spec, one box per part); ``parts[k]`` becomes a slice node."""


def sanitize(path: str) -> str:
    """A C/Verilog-safe identifier from a module path ('features.3' -> 'features_3')."""
    s = re.sub(r"[^A-Za-z0-9_]+", "_", path).strip("_") or "t"
    return s if not s[0].isdigit() else f"m_{s}"


def _is_qfx(m: Any) -> bool:
    return callable(getattr(m, "ir_nodes", None))


def _is_input_module(m: Any) -> bool:
    return _is_qfx(m) and hasattr(m, "fmt") and type(m).__name__ == "QuantInput"


def _hint(op: str, target: Any) -> str:
    """What to do about a function/method capture does not take (from ``qfx.nn.trace``'s tables)."""
    try:
        from qfx.nn.trace import function_hint
    except ImportError:  # pragma: no cover - qfx.nn is optional for the IR
        return "use qfx layers"
    return function_hint(op, target)


def _model_class(model: Any) -> str:
    """The user's class name: ``quantize_model`` wraps it as ``Sequential(input=QuantInput, net=<model>)``."""
    net = getattr(model, "net", None)
    if type(model).__name__ == "Sequential" and _is_input_module(getattr(model, "input", None)) and net is not None:
        return type(net).__name__
    return type(model).__name__


def _live_nodes(fx_graph: Any) -> set[Any]:
    """fx nodes whose value reaches the output (unused results are not part of the design)."""
    seen: set[Any] = set()
    stack = [n for n in fx_graph.nodes if n.op == "output"]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _squeezed(op: str, shape: tuple[int, ...], args: Sequence[Any], kwargs: dict[str, Any],
              where: str) -> tuple[int, ...]:
    """The per-sample shape after ``squeeze``/``unsqueeze`` (dims count the batch as 0, which must stay)."""
    dim = args[0] if args else kwargs.get("dim")
    if isinstance(dim, (tuple, list)) and op == "squeeze":
        dims = tuple(dim)
    elif dim is None and op == "squeeze":  # every size-1 dim except the batch
        return tuple(d for d in shape if d != 1) or (1,)
    else:
        dims = (dim,)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise UnsupportedError(f"{where}: give {op}'s dim as a constant")
    rank = len(shape) + 1 + (op == "unsqueeze")
    full = [d + rank if d < 0 else d for d in dims]
    if any(d <= 0 or d >= rank for d in full):
        raise UnsupportedError(f"{where}: {op}(dim={dim!r}) must name a per-sample dimension (dim 0 is the batch)")
    if op == "unsqueeze":
        out = list(shape)
        out.insert(full[0] - 1, 1)
        return tuple(out)
    return tuple(s for i, s in enumerate(shape) if not (i + 1 in full and s == 1)) or (1,)


def capture(model: "Any", example_input: "Any | None" = None, name: str | None = None) -> Graph:
    """Trace ``model`` (qfx layers) into a validated ``Graph``.

    ``example_input`` (batch-first) gives the input's per-sample shape; without it, the ``QuantInput`` module
    must carry a ``shape`` attribute. ``name`` defaults to the model's class (the wrapped one for a model
    ``qfx.quantize_model`` returned).
    """
    import torch
    import torch.fx

    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"capture needs a torch.nn.Module, got {type(model).__name__}")
    if not any(_is_qfx(m) for m in model.modules()):
        raise BadInputError(f"{type(model).__name__} is a float model (no qfx layers): quantize it first with "
                            "qfx.quantize_model(model, qfx.QFXConfig(...), calib_data=x), train it, then export")

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return _is_qfx(m) or super().is_leaf_module(m, qualname)

    try:
        fx_graph = _Tracer().trace(model)
    except UnsupportedError:
        raise
    except Exception as exc:  # fx raises many types on untraceable Python
        raise UnsupportedError(f"cannot trace {type(model).__name__} with torch.fx: "
                               f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    modules = dict(model.named_modules())
    unique = UniqueNames(clean=sanitize)

    env: dict[str, Any] = {}  # fx node name -> TensorSpec | ("size", dim) | python value
    tensors: dict[str, TensorSpec] = {}
    nodes: list[Node] = []
    inputs: list[str] = []
    outputs: list[str] = []
    placeholders: list[str] = []  # several tensor inputs: each gets its own QuantInput (quantize_model adds them)
    quantized: set[str] = set()
    called: set[str] = set()  # qfx modules already emitted (by sanitized path)
    scalars: set[str] = set()  # tensors torch holds as (N,) (the IR's per-sample shape (1,))
    examples = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    pending: list[tuple[int, ...] | None] = [None if e is None else tuple(int(s) for s in e.shape[1:])
                                             for e in examples]

    def spec_of(arg: Any, where: str) -> TensorSpec:
        if isinstance(arg, torch.fx.Node):
            v = env.get(arg.name)
            if isinstance(v, TensorSpec):
                return v
            if v == "raw_input":
                raise BadInputError(f"{where} reads the model input before a QuantInput module gives it a format")
        raise UnsupportedError(f"{where}: expected a tensor argument, got {arg!r}")

    def add_reshape(fxn: torch.fx.Node, x: TensorSpec, shape: tuple[int, ...], where: str) -> None:
        if int(np.prod(shape)) != x.size or any(d < 1 for d in shape):
            raise BadInputError(f"{where}: cannot reshape per-sample shape {x.shape} to {shape}")
        out = unique(fxn.name)
        op = "flatten" if len(shape) == 1 else "reshape"
        spec = TensorSpec(out, shape, x.fmt)
        nodes.append(Node(unique(f"{fxn.name}_{op}"), op, (x.name,), out, {},
                          {} if op == "flatten" else {"shape": shape}, None, source=where))
        tensors[out] = spec
        env[fxn.name] = spec

    def add_gather(fxn: Any, x: TensorSpec, op: str, shape: tuple[int, ...], attrs: dict[str, Any],
                   where: str, tag: str = "") -> TensorSpec:
        out = unique(f"{fxn.name}{tag}")
        spec = TensorSpec(out, shape, x.fmt)
        nodes.append(Node(unique(f"{fxn.name}{tag}_{op}"), op, (x.name,), out, {}, attrs, None, source=where))
        tensors[out] = spec
        return spec

    def add_slice(fxn: Any, x: TensorSpec, box: Sequence[slice], drop: Sequence[int], where: str,
                  tag: str = "") -> TensorSpec:
        """x[box] (one slice per per-sample axis), then the axes in ``drop`` (integer indices) removed."""
        st, sp, sk = [], [], []
        for sl, d in zip(box, x.shape):
            a, b, k = sl.indices(d)
            if k < 1:
                raise UnsupportedError(f"{where}: negative slice steps are not supported")
            if len(range(a, b, k)) == 0:
                raise BadInputError(f"{where}: an empty slice of an axis of size {d}")
            st.append(a)
            sp.append(b)
            sk.append(k)
        shape = tuple(len(range(a, b, k)) for a, b, k in zip(st, sp, sk))
        y = x if shape == x.shape else add_gather(fxn, x, "slice", shape, {"starts": tuple(st), "stops": tuple(sp),
                                                                            "steps": tuple(sk)}, where, tag)
        if drop:
            kept = tuple(v for i, v in enumerate(shape) if i not in drop) or (1,)
            op = "flatten" if len(kept) == 1 else "reshape"
            out = unique(f"{fxn.name}{tag}_sq")
            nodes.append(Node(unique(f"{fxn.name}{tag}_{op}"), op, (y.name,), out, {},
                              {} if op == "flatten" else {"shape": kept}, None, source=where))
            y = tensors[out] = TensorSpec(out, kept, x.fmt)
        return y

    def axis(d: Any, x: TensorSpec, where: str) -> int:
        r = len(x.shape) + 1
        if not isinstance(d, int) or not 1 <= d % r < r or d % r == 0:
            raise UnsupportedError(f"{where}: dim {d!r} must be a constant per-sample dim (not the batch dim 0)")
        return d % r - 1

    def parts(fxn: Any, x: TensorSpec, where: str) -> list[tuple[slice, ...]]:
        """The boxes chunk/split/tensor_split cut x into (torch's sizes)."""
        t = fxn.target if isinstance(fxn.target, str) else fxn.target.__name__
        arg = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("chunks" if t == "chunk" else
                                                                    "split_size_or_sections" if t == "split"
                                                                    else "indices_or_sections")
        ax = axis(fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("dim", 0), x, where)
        d = x.shape[ax]
        if t == "chunk":
            step = -(-d // int(arg))
            sizes = [min(step, d - i) for i in range(0, d, step)]
        elif t == "split":
            sizes = [int(v) for v in arg] if isinstance(arg, (list, tuple)) else \
                [min(int(arg), d - i) for i in range(0, d, int(arg))]
        else:
            cuts = list(arg) if isinstance(arg, (list, tuple)) else [
                i * (d // int(arg)) + min(i, d % int(arg)) for i in range(1, int(arg))]
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [d])]
        if sum(sizes) != d:
            raise BadInputError(f"{where}: sizes {sizes} do not add up to {d}")
        boxes, off = [], 0
        for k in sizes:
            box = [slice(None)] * len(x.shape)
            box[ax] = slice(off, off + k)
            boxes.append(tuple(box))
            off += k
        return boxes

    def dims_after_batch(args: Sequence[Any], x: TensorSpec, where: str) -> tuple[int, ...]:
        dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
        if not dims:
            raise UnsupportedError(f"{where}: reshape without a batch dimension")
        rest = []
        for d in dims[1:]:
            if isinstance(d, torch.fx.Node):
                raise UnsupportedError(f"{where}: reshape with a computed size; use constant sizes after the batch dim")
            rest.append(int(d))
        if rest.count(-1) > 1:
            raise BadInputError(f"{where}: more than one -1 in reshape")
        if -1 in rest:
            known = int(np.prod([d for d in rest if d != -1])) or 1
            rest = [x.size // known if d == -1 else d for d in rest]
        return tuple(rest)

    live = _live_nodes(fx_graph)
    for fxn in fx_graph.nodes:
        if fxn not in live and fxn.op != "placeholder":
            continue
        if fxn.op == "placeholder":
            placeholders.append(fxn.name)
            env[fxn.name] = "raw_input"
        elif fxn.op == "get_attr":
            raise UnsupportedError(f"model reads parameter {fxn.target!r} outside a qfx layer")
        elif fxn.op == "call_module":
            path = str(fxn.target)
            m = modules[path]
            tname = type(m).__name__
            where = f"module {path!r} ({type(m).__module__}.{tname})"
            if _is_input_module(m):
                arg = fxn.args[0] if fxn.args else None
                if not (isinstance(arg, torch.fx.Node) and env.get(arg.name) == "raw_input"):
                    raise UnsupportedError(f"{where}: QuantInput must be applied to the model input")
                if arg.name in quantized:
                    raise UnsupportedError(f"{where}: the model input is quantized twice")
                quantized.add(arg.name)
                k = placeholders.index(arg.name)
                shape = (pending[k] if k < len(pending) else None) or tuple(getattr(m, "shape", ()) or ())
                if not shape:
                    raise BadInputError("capture needs example_input (or QuantInput.shape) to know the input shape")
                tname_in = unique(path or "input")
                spec = TensorSpec(tname_in, shape, m.fmt)
                tensors[tname_in] = spec
                inputs.append(tname_in)
                env[fxn.name] = spec
            elif tname in _PASS_THROUGH:
                env[fxn.name] = spec_of(fxn.args[0], where)
            elif _is_qfx(m):
                ins = [spec_of(a, where) for a in fxn.args if isinstance(a, torch.fx.Node)]
                if fxn.kwargs:
                    raise UnsupportedError(f"{where}: keyword arguments are not supported")
                out = unique(path)
                base = sanitize(path)  # a layer called again (shared weights) names its nodes after the new output
                pairs = m.ir_nodes(base if base not in called else out, ins, out)
                called.add(base)
                if not pairs:
                    raise UnsupportedError(f"{where}: produced no IR nodes")
                for node, spec in pairs:
                    if spec.name in tensors:
                        raise BadInputError(f"{where}: tensor name {spec.name!r} is already used")
                    tensors[spec.name] = spec
                    unique.taken.update((spec.name, node.name))
                    nodes.append(node if node.source else node.replace(source=path))
                last = pairs[-1]
                if last[0].output != out:
                    raise BadInputError(f"{where}: ir_nodes must write its output tensor {out!r} last")
                env[fxn.name] = last[1]
                if getattr(m, "scalar_output", lambda xs: False)(ins):  # torch (N,): one value per sample
                    scalars.add(last[1].name)
            elif isinstance(m, torch.nn.Flatten):
                x = spec_of(fxn.args[0], where)
                if m.start_dim != 1 or m.end_dim != -1:
                    raise UnsupportedError(f"{where}: only Flatten(start_dim=1, end_dim=-1) is supported")
                add_reshape(fxn, x, (x.size,), where)
            elif type(m).__module__.startswith("torch.nn"):
                raise UnsupportedError(f"unsupported module {path!r} ({type(m).__module__}.{tname}): a float layer "
                                       "in a qfx model; pass the model through qfx.quantize_model (it converts what "
                                       "has a fixed-point twin and lists what has none)")
            else:
                raise UnsupportedError(f"unsupported module {path!r} ({type(m).__module__}.{tname}); use a qfx layer")
        elif fxn.op in ("call_function", "call_method"):
            tgt = fxn.target
            tname = tgt if isinstance(tgt, str) else getattr(tgt, "__name__", str(tgt))
            where = f"{'method' if fxn.op == 'call_method' else 'function'} {tname!r} (at {fxn.name})"
            if fxn.op == "call_method" and tgt == "size":
                env[fxn.name] = ("size", fxn.args[1] if len(fxn.args) > 1 else None)
            elif fxn.op == "call_function" and tgt is getattr and len(fxn.args) == 2 and fxn.args[1] == "shape":
                env[fxn.name] = ("size", None)
            elif fxn.op == "call_function" and tgt is operator.getitem and type(env.get(fxn.args[0].name)) is tuple:
                env[fxn.name] = ("size", fxn.args[1])
            elif fxn.op == "call_function" and tgt is operator.getitem and isinstance(env.get(fxn.args[0].name),
                                                                                         _Parts):
                x, boxes = env[fxn.args[0].name]
                if not isinstance(fxn.args[1], int) or not -len(boxes) <= fxn.args[1] < len(boxes):
                    raise UnsupportedError(f"{where}: select a part of chunk/split with a constant index")
                env[fxn.name] = add_slice(fxn, x, boxes[fxn.args[1]], (), where)
            elif fxn.op == "call_function" and tgt is operator.getitem:
                x = spec_of(fxn.args[0], where)
                items = list(fxn.args[1]) if isinstance(fxn.args[1], tuple) else [fxn.args[1]]
                if items.count(Ellipsis) > 1 or items and items[0] is None:
                    raise UnsupportedError(f"{where}: indexing with several '...' or None before the batch dim")
                if Ellipsis in items:
                    k = items.index(Ellipsis)
                    n_real = len([i for i in items if i is not None and i is not Ellipsis])
                    items[k:k + 1] = [slice(None)] * (len(x.shape) + 1 - n_real)
                units = []  # y[:, :, None, None] (a per-channel vector as (C, 1, 1)): unit axes by a reshape after
                if any(i is None for i in items):
                    out_dims: list[Any] = []
                    for it in items[1:]:
                        out_dims.append(None if it is None else it)
                    units = [k for k, it in enumerate(out_dims) if it is None]
                    items = [i for i in items if i is not None]
                if not items or items[0] != slice(None) or len(items) > len(x.shape) + 1:
                    raise UnsupportedError(f"{where}: index the per-sample dims only (x[:, a:b])")
                items = items[1:] + [slice(None)] * (len(x.shape) + 1 - len(items))
                box, drop = [], []
                for i, (it, d) in enumerate(zip(items, x.shape)):
                    if isinstance(it, int) and not isinstance(it, bool):
                        if not -d <= it < d:
                            raise BadInputError(f"{where}: index {it} out of range for size {d}")
                        box.append(slice(it % d, it % d + 1))
                        drop.append(i)
                    elif isinstance(it, slice) and all(v is None or isinstance(v, int) for v in
                                                       (it.start, it.stop, it.step)):
                        box.append(it)
                    else:
                        raise UnsupportedError(f"{where}: index {it!r}: slice with constant ints only")
                y = env[fxn.name] = add_slice(fxn, x, box, drop, where)
                if units:  # the unit axes at their places among the kept ones (integer-indexed axes are gone)
                    kept, shape, src = list(y.shape) if not (drop and y.shape == (1,) and len(box) == len(drop)) \
                        else [], [], 0
                    for k, it in enumerate(out_dims):
                        if it is None:
                            shape.append(1)
                        elif not (isinstance(it, int) and not isinstance(it, bool)):
                            shape.append(kept[src])
                            src += 1
                    shape += kept[src:]
                    add_reshape(fxn, y, tuple(shape), where)
            elif tname in ("chunk", "split", "tensor_split"):
                x = spec_of(fxn.args[0], where)
                env[fxn.name] = _Parts((x, parts(fxn, x, where)))
            elif tname == "narrow":
                x = spec_of(fxn.args[0], where)
                ax = axis(fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim"), x, where)
                a = fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("start")
                k = fxn.args[3] if len(fxn.args) > 3 else fxn.kwargs.get("length")
                if not isinstance(a, int) or not isinstance(k, int):
                    raise UnsupportedError(f"{where}: narrow with computed start/length; use constants")
                box = [slice(None)] * len(x.shape)
                box[ax] = slice(a % x.shape[ax], a % x.shape[ax] + k)
                env[fxn.name] = add_slice(fxn, x, box, (), where)
            elif tname in ("transpose", "swapaxes", "permute"):
                x = spec_of(fxn.args[0], where)
                if tname == "permute":
                    dims = list(fxn.args[1]) if len(fxn.args) == 2 and isinstance(fxn.args[1], (list, tuple)) \
                        else list(fxn.args[1:]) or list(fxn.kwargs.get("dims", ()))
                    if len(dims) != len(x.shape) + 1 or dims[0] % len(dims) != 0:
                        raise UnsupportedError(f"{where}: permute must keep the batch dim first, got {dims}")
                    perm = [axis(d, x, where) for d in dims[1:]]
                else:
                    a0 = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim0")
                    a1 = fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("dim1")
                    perm = list(range(len(x.shape)))
                    i, j = axis(a0, x, where), axis(a1, x, where)
                    perm[i], perm[j] = perm[j], perm[i]
                if perm == sorted(perm):
                    env[fxn.name] = x
                else:
                    env[fxn.name] = add_gather(fxn, x, "transpose", tuple(x.shape[p] for p in perm),
                                               {"perm": tuple(perm)}, where)
            elif tname == "flatten":
                x = spec_of(fxn.args[0], where)
                start = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("start_dim", 0 if fxn.op == "call_function"
                                                                               else 0)
                end = fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("end_dim", -1)
                r = len(x.shape) + 1  # torch rank, batch included
                if not isinstance(start, int) or not isinstance(end, int) or not 1 <= start % r <= end % r:
                    raise UnsupportedError(f"{where}: only flatten(start_dim >= 1) is supported (the batch stays "
                                           "first)")
                s0, e0 = start % r - 1, end % r - 1  # per-sample dims merged
                add_reshape(fxn, x, x.shape[:s0] + (int(np.prod(x.shape[s0:e0 + 1])),) + x.shape[e0 + 1:], where)
            elif fxn.op == "call_method" and tgt in ("view", "reshape"):
                x = spec_of(fxn.args[0], where)
                add_reshape(fxn, x, dims_after_batch(fxn.args[1:], x, where), where)
            elif fxn.op == "call_function" and tname == "reshape":
                x = spec_of(fxn.args[0], where)
                add_reshape(fxn, x, dims_after_batch(fxn.args[1:], x, where), where)
            elif tname in ("squeeze", "unsqueeze"):
                x = spec_of(fxn.args[0], where)
                shape = () if x.name in scalars else x.shape
                add_reshape(fxn, x, _squeezed(tname, shape, fxn.args[1:], fxn.kwargs, where), where)
            elif tname in ("contiguous", "clone", "dropout") or (fxn.op == "call_method" and tgt == "detach"):
                env[fxn.name] = spec_of(fxn.args[0], where)
            else:
                raise UnsupportedError(f"unsupported {where}: {_hint(fxn.op, tgt)}")
        elif fxn.op == "output":
            res = fxn.args[0]
            items = res if isinstance(res, (tuple, list)) else [res]
            for r in items:
                outputs.append(spec_of(r, "model output").name)
    if not inputs:
        raise UnsupportedError("model has no QuantInput module on its input; qfx needs the input format "
                               "(qfx.quantize_model adds one)")
    cls = _model_class(model)
    g = Graph(name or sanitize(cls), tuple(inputs), tuple(outputs), tensors, tuple(nodes), {"captured_from": cls})
    return g.validate()
