"""ONNX clean-up before conversion: what exporters leave around a model, reduced to the ops the importer maps.

Real QONNX/Brevitas/torch exports carry constant-only and shape-only subgraphs (``x.view(N, -1)`` becomes
Shape -> Gather -> Unsqueeze -> Concat -> Reshape), Identity/Dropout nodes, QONNX ops in several domains, and
channels-last layouts. ``cleanup`` rewrites a copy of the model so the converter sees one static graph:

* QONNX ops (``Quant``, ``BipolarQuant``, ``Trunc``) in the default domain (older Brevitas), ``onnx.brevitas``,
  ``qonnx.custom_op.general`` or ``finn.custom_op.general`` are moved to ``qonnx.custom_op.general``.
* ``qonnx.custom_op.channels_last`` Conv/MaxPool become Transpose -> standard op -> Transpose; Transposes are then
  moved through element-wise ops (Relu, per-tensor Quant) and inverse pairs cancel. A Transpose that reads the
  graph input (or writes the graph output) is folded into the interface: the IR input is the transposed tensor and
  ``qfx.input_perm:<input>`` (``qfx.output_perm``) in the model metadata says how to lay data out (each input of a
  multi-input graph; ``qfx.input_perm`` too when there is one). A Transpose followed by
  Flatten/Reshape into a MatMul/Gemm with constant weights is folded into the weight rows.
* Model-local functions (aten ops wrapped by torch's dynamo exporter before torch 2.6) are inlined; qfx's own
  ``FixedQuant`` function stays a call.
* Identity and Dropout are removed.
* LayerNormalization / InstanceNormalization become the ReduceMean, Sub, Mul, Sqrt, Div steps of their ONNX
  definitions (``normalizations``), LRN its square / channel-window sum (a 1x1 Conv) / Pow / Mul steps, Sum of
  several tensors a chain of Adds, ReduceL2/ReduceSumSquare/ReduceL1 a ReduceSum of x * x (+ Sqrt) or |x|
  (``sums_and_lrn``): the same functions, written as ops the importer maps and
  ``qfx quantize`` calibrates one by one.
* Constant-only subgraphs are evaluated with numpy (the common shape and arithmetic ops, in the tensors' own dtype,
  as onnxruntime computes them), ``Shape`` of a tensor whose shape is known (graph inputs, and tensors typed by
  ``onnx.shape_inference`` with QONNX ops read as Identity) becomes a constant, so shape subgraphs fold into a
  static Reshape. ``Constant`` nodes with ``value_float(s)``/``value_int(s)`` fold like tensor values, and
  ``CastLike(constant, activation)`` (the dynamo exporter's Clip bounds) folds to the activation's declared or
  inferred element type. A symbolic batch dimension is taken as 1; the importer ignores the batch entry of Reshape targets.
* A fixed-shape graph whose first axis is data, not a batch (sequence-first attention), gets a batch axis
  prepended (``qfx.onnx.whole_sample``; ``qfx.batch_axis`` = ``added`` in the metadata).
* Nodes whose outputs nothing reads, and unused initializers, are dropped.

Everything else here is exact bookkeeping on constants; no value of the model changes.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from qfx.errors import BadInputError, UnsupportedError

__all__ = ["cleanup", "constant_value", "QONNX_DOMAIN", "QONNX_OPS", "QONNX_DOMAINS", "CHANNELS_LAST_DOMAIN"]

QONNX_DOMAIN = "qonnx.custom_op.general"
CHANNELS_LAST_DOMAIN = "qonnx.custom_op.channels_last"
#: domains QONNX ops are found in: older Brevitas wrote Quant into the default domain or ``onnx.brevitas``
QONNX_DOMAINS = ("", "ai.onnx", "onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general", "qonnx")
QONNX_OPS = frozenset({"Quant", "BipolarQuant", "Trunc", "MultiThreshold", "FloatQuant"})
_MAX_FOLD_ELEMS = 1 << 22  # never materialize huge constants (e.g. a ConstantOfShape over an image)
#: a weight written as a ConstantOfShape (the ONNX test zoo's "light" AlexNet/VGG: 9216 x 4096 fc6) is a model's own
_MAX_WEIGHT_ELEMS = 1 << 27
_WEIGHT_SLOTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
#: element-wise ops a layout Transpose moves through (scalar extra inputs only)
_UNARY_ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Abs", "Neg", "Elu", "Selu",
                                "HardSigmoid", "HardSwish", "Softplus", "Identity", "Mul", "Div", "Add", "Sub"})


# ------------------------------------------------------------------------------------------------ numpy folders
def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _c_order(arr: Any) -> np.ndarray:
    """A C-ordered copy of ``arr`` that keeps its rank (``np.ascontiguousarray`` makes a 0-d array 1-d, which turned
    folded scalar constants, e.g. Gather's index of ``x[:, 0]``, into shape (1,) and changed the graph's ranks)."""
    a = np.asarray(arr)
    return a if a.flags.c_contiguous else a.copy(order="C")


def constant_value(node) -> np.ndarray | None:
    """The value of a ``Constant`` node: its ``value`` tensor or a ``value_float(s)``/``value_int(s)`` attribute
    (the dynamo exporter writes shapes and scalars that way); None for sparse or string values."""
    from onnx import numpy_helper

    a = _attrs(node)
    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in a:
            return np.asarray(a[key], dtype=dtype)
    return None


def _axes(node, ins: list[np.ndarray], pos: int) -> list[int] | None:
    a = _attrs(node)
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(ins) > pos and ins[pos] is not None:
        return [int(v) for v in np.asarray(ins[pos]).ravel()]
    return None


def _unsqueeze(node, ins):
    x = np.asarray(ins[0])
    axes = _axes(node, ins, 1) or []
    rank = x.ndim + len(axes)
    for ax in sorted(a % rank for a in axes):
        x = np.expand_dims(x, ax)
    return x


def _squeeze(node, ins):
    x = np.asarray(ins[0])
    axes = _axes(node, ins, 1)
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


def _slice(node, ins):
    x = np.asarray(ins[0])
    a = _attrs(node)
    if len(ins) >= 3:
        starts, ends = [int(v) for v in ins[1].ravel()], [int(v) for v in ins[2].ravel()]
        axes = [int(v) for v in ins[3].ravel()] if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = [int(v) for v in ins[4].ravel()] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:  # opset < 10: attributes
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    sl = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        sl[ax % x.ndim] = slice(s, e if abs(e) < (1 << 62) else None, st)
    return x[tuple(sl)]


def _reshape(node, ins):
    x = np.asarray(ins[0])
    shp = [int(v) for v in np.asarray(ins[1]).ravel()]
    allowzero = int(_attrs(node).get("allowzero", 0))
    shp = [x.shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(shp)]
    return x.reshape(shp)


def _flatten(node, ins):
    x = np.asarray(ins[0])
    ax = int(_attrs(node).get("axis", 1)) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)


def _cast(node, ins):
    from onnx import helper

    return np.asarray(ins[0]).astype(helper.tensor_dtype_to_np_dtype(int(_attrs(node)["to"])))


def _cast_like(node, ins):
    return np.asarray(ins[0]).astype(np.asarray(ins[1]).dtype)


def _constant_of_shape(node, ins, limit: int = _MAX_FOLD_ELEMS):
    from onnx import numpy_helper

    v = _attrs(node).get("value")
    fill = numpy_helper.to_array(v).ravel()[0] if v is not None else np.float32(0)
    shape = [int(s) for s in np.asarray(ins[0]).ravel()]
    if int(np.prod(shape, dtype=np.int64)) > limit:
        raise _TooBig()
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def f(node, ins):
        a, b = np.asarray(ins[0]), np.asarray(ins[1])
        r = fn(a, b)
        return np.asarray(r).astype(np.result_type(a.dtype, b.dtype), copy=False) if a.dtype == b.dtype \
            else np.asarray(r)
    return f


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)  # ONNX integer Div truncates
    return a / b


def _concat(node, ins):
    return np.concatenate([np.asarray(v) for v in ins], axis=int(_attrs(node)["axis"]))


def _gather(node, ins):
    return np.take(np.asarray(ins[0]), np.asarray(ins[1]), axis=int(_attrs(node).get("axis", 0)))


def _transpose(node, ins):
    x = np.asarray(ins[0])
    perm = _attrs(node).get("perm")
    return np.transpose(x, perm) if perm is not None else x.T


def _range(node, ins):
    return np.arange(np.asarray(ins[0]), np.asarray(ins[1]), np.asarray(ins[2]))


def _reduce(fn: Callable[..., np.ndarray]):
    """A Reduce* folder (axes as attribute or, from opset 13/18, as the second input; keepdims default 1)."""
    def f(node, ins):
        a = _attrs(node)
        x = np.asarray(ins[0])
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None and np.size(ins[1]):
            axes = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        if axes is None and int(a.get("noop_with_empty_axes", 0)):
            return x
        ax = None if axes is None else tuple(int(v) % max(x.ndim, 1) for v in axes)
        return np.asarray(fn(x, axis=ax, keepdims=bool(int(a.get("keepdims", 1)))), dtype=x.dtype)

    return f


class _TooBig(Exception):
    pass


def _scatter_nd(node, ins):
    """ScatterND (reduction none, as exporters write torch's in-place slice assignment ``mask[a:b, c:d] = k``)."""
    if _attrs(node).get("reduction", b"none") not in (b"none", "none"):
        raise _TooBig  # reductions: leave the node to the importer, which refuses it in one line
    out = np.array(ins[0], copy=True)
    idx, upd = np.asarray(ins[1]).astype(np.int64), np.asarray(ins[2])
    k = idx.shape[-1]
    flat_idx = idx.reshape(-1, k)
    flat_upd = upd.reshape((flat_idx.shape[0],) + out.shape[k:])
    for j, ix in enumerate(flat_idx):
        out[tuple(ix)] = flat_upd[j]
    return out


#: ops folded when every input is constant: (node, input arrays) -> output array, numpy in the inputs' dtype
FOLDERS: dict[str, Callable[[Any, list[np.ndarray]], np.ndarray]] = {
    "Identity": lambda n, i: np.asarray(i[0]),
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Slice": _slice, "Reshape": _reshape, "Flatten": _flatten,
    "Concat": _concat, "Gather": _gather, "Transpose": _transpose, "Cast": _cast, "CastLike": _cast_like,
    "ConstantOfShape": _constant_of_shape, "Range": _range, "ScatterND": _scatter_nd,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_div),
    "Pow": _binary(np.power), "Min": _binary(np.minimum), "Max": _binary(np.maximum),
    "Equal": lambda n, i: np.equal(np.asarray(i[0]), np.asarray(i[1])),  # bool, whatever the operands
    "Not": lambda n, i: np.logical_not(np.asarray(i[0])), "Sqrt": lambda n, i: np.sqrt(np.asarray(i[0])),
    "Neg": lambda n, i: -np.asarray(i[0]), "Reciprocal": lambda n, i: (1 / np.asarray(i[0])).astype(i[0].dtype),
    "Abs": lambda n, i: np.abs(np.asarray(i[0])), "Floor": lambda n, i: np.floor(np.asarray(i[0])),
    "Ceil": lambda n, i: np.ceil(np.asarray(i[0])),
    "Mod": lambda n, i: (np.fmod if int(_attrs(n).get("fmod", 0)) else np.mod)(np.asarray(i[0]), np.asarray(i[1])),
    "Where": lambda n, i: np.where(np.asarray(i[0]), np.asarray(i[1]), np.asarray(i[2])),
    "ReduceProd": _reduce(np.prod), "ReduceSum": _reduce(np.sum), "ReduceMax": _reduce(np.max),
    "ReduceMin": _reduce(np.min),
    "Expand": lambda n, i: np.asarray(i[0]) * np.ones([int(v) for v in np.asarray(i[1]).ravel()],
                                                      dtype=np.asarray(i[0]).dtype),
}


# ------------------------------------------------------------------------------------------------ the pass
class _Cleaner:
    def __init__(self, model) -> None:
        import onnx

        self.m = onnx.ModelProto()
        self.m.CopyFrom(model)
        self.g = self.m.graph
        self.report: list[str] = []
        self.meta: dict[str, str] = {}

    # ------------------------------------------------------------ helpers
    @property
    def opset(self) -> int:
        """The default domain's opset (13 if the model does not say): Reduce*/Squeeze/Unsqueeze axes are an input
        from 13 on, an attribute before."""
        return next((o.version for o in self.m.opset_import if o.domain in ("", "ai.onnx")), 13)

    def consts(self) -> dict[str, np.ndarray]:
        from onnx import numpy_helper

        return {i.name: numpy_helper.to_array(i) for i in self.g.initializer}

    def set_init(self, name: str, arr: np.ndarray) -> None:
        from onnx import numpy_helper

        for i, t in enumerate(self.g.initializer):
            if t.name == name:
                del self.g.initializer[i]
                break
        self.g.initializer.append(numpy_helper.from_array(_c_order(arr), name))

    def consumers(self, tensor: str) -> list[Any]:
        return [n for n in self.g.node if tensor in n.input]

    def producer(self, tensor: str):
        return next((n for n in self.g.node if tensor in n.output), None)

    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.g.output}

    def rename_input(self, old: str, new: str) -> None:
        for n in self.g.node:
            for k, v in enumerate(n.input):
                if v == old:
                    n.input[k] = new

    def remove(self, node) -> None:
        for k, n in enumerate(self.g.node):
            if n is node:
                del self.g.node[k]
                return

    def data_inputs(self) -> list[Any]:
        inits = {i.name for i in self.g.initializer}
        return [i for i in self.g.input if i.name not in inits]

    # ------------------------------------------------------------ steps
    def domains(self) -> None:
        from onnx import helper

        moved = 0
        for n in self.g.node:
            if n.op_type in QONNX_OPS and n.domain in QONNX_DOMAINS and n.domain != QONNX_DOMAIN:
                n.domain = QONNX_DOMAIN
                moved += 1
        if any(n.domain == QONNX_DOMAIN for n in self.g.node) and \
                not any(o.domain == QONNX_DOMAIN for o in self.m.opset_import):
            self.m.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        if moved:
            self.report.append(f"moved {moved} QONNX op(s) into domain {QONNX_DOMAIN}")

    def functions(self) -> None:
        """Inline model-local functions (the torch dynamo exporter of torch < 2.6 wraps aten ops in them); qfx's
        own FixedQuant function stays a call, as the importer reads it."""
        from onnx import inliner

        from qfx.onnx.fixedquant import DOMAIN as QFX_DOMAIN

        foreign = [f for f in self.m.functions if f.domain != QFX_DOMAIN]
        if not foreign:
            return
        keep = [(f.domain, f.name) for f in self.m.functions if f.domain == QFX_DOMAIN]
        self.m = inliner.inline_selected_functions(self.m, keep, exclude=True)
        self.g = self.m.graph
        self.report.append(f"inlined {len(foreign)} model-local function(s)")

    def channels_last(self) -> None:
        from onnx import helper

        new_nodes = []
        count = 0
        for n in self.g.node:
            if n.domain != CHANNELS_LAST_DOMAIN:
                new_nodes.append(n)
                continue
            if n.op_type not in ("Conv", "MaxPool"):
                raise UnsupportedError(f"unsupported channels-last op {n.op_type!r} (node {n.name or n.op_type!r}): "
                                       f"export the model in channels-first layout")
            count += 1
            base = n.name or f"{n.op_type}_{count}"
            tin, tout = f"{base}__nchw_in", f"{base}__nchw_out"
            new_nodes.append(helper.make_node("Transpose", [n.input[0]], [tin], name=f"{base}__to_nchw",
                                              perm=[0, 3, 1, 2]))
            rest = list(n.input[1:])
            if n.op_type == "Conv" and rest:  # channels-last Conv weights are (O, kh, kw, C/g) as well
                new_nodes.append(helper.make_node("Transpose", [rest[0]], [f"{base}__w_nchw"],
                                                  name=f"{base}__w_to_nchw", perm=[0, 3, 1, 2]))
                rest[0] = f"{base}__w_nchw"
            std = helper.make_node(n.op_type, [tin, *rest], [tout], name=base)
            std.attribute.extend(n.attribute)
            new_nodes.append(std)
            new_nodes.append(helper.make_node("Transpose", [tout], [n.output[0]], name=f"{base}__to_nhwc",
                                              perm=[0, 2, 3, 1]))
        if count:
            del self.g.node[:]
            self.g.node.extend(new_nodes)
            self.report.append(f"rewrote {count} channels-last op(s) as Transpose + standard op + Transpose")

    def hardswish(self) -> None:
        """``x * HardSigmoid(x)`` with alpha 1/6, beta 1/2 (torch's hardswish before opset 14) -> HardSwish(x)."""
        from onnx import helper

        count = 0
        for n in list(self.g.node):
            if n.op_type != "Mul" or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
                continue
            for k in (0, 1):
                hs = self.producer(n.input[k])
                if hs is None or hs.op_type != "HardSigmoid" or hs.input[0] != n.input[1 - k]:
                    continue
                a = _attrs(hs)
                if abs(float(a.get("alpha", 0.2)) - 1 / 6) > 1e-6 or float(a.get("beta", 0.5)) != 0.5:
                    continue
                new = helper.make_node("HardSwish", [hs.input[0]], [n.output[0]], name=n.name or "HardSwish")
                nodes = list(self.g.node)
                nodes[nodes.index(n)] = new
                del self.g.node[:]
                self.g.node.extend(nodes)
                count += 1
                break
        if count:
            for o in self.m.opset_import:  # HardSwish is opset 14; 13 -> 14 changes no inference semantics
                if o.domain in ("", "ai.onnx") and o.version < 14:
                    o.version = 14
            self.report.append(f"fused {count} x*HardSigmoid(x) pattern(s) into HardSwish")

    def normalizations(self) -> None:
        """LayerNormalization and InstanceNormalization (torch's LayerNorm at opset >= 17, InstanceNorm2d, and
        GroupNorm, which exports as Reshape -> InstanceNormalization -> Reshape) become the ops torch writes for
        LayerNorm below opset 17: ``mean = ReduceMean(x)``, ``d = x - mean``, ``v = ReduceMean(d * d)``,
        ``y = d / Sqrt(v + eps)``, ``y * scale + bias``, with the statistics over the normalized axes. The same
        values (the ONNX definitions, computed step by step), and each step is an op the importer maps, so
        ``qfx quantize`` gives every step a calibrated format (as ``qfx.nn.QLayerNorm`` has one per step). A node
        whose Mean/InvStdDev outputs are read, or whose normalized axes cannot be known, is left alone."""
        from onnx import helper, numpy_helper

        opset = self.opset
        shapes: dict[str, tuple[int, ...]] | None = None
        count = 0
        nodes = list(self.g.node)
        out_nodes = []
        for n in nodes:
            if n.op_type not in ("LayerNormalization", "InstanceNormalization") or n.domain not in ("", "ai.onnx") \
                    or any(o and self.consumers(o) for o in n.output[1:]) or any(o in self.graph_outputs()
                                                                                for o in n.output[1:] if o):
                out_nodes.append(n)
                continue
            a = _attrs(n)
            eps = float(a.get("epsilon", 1e-5))
            x, y = n.input[0], n.output[0]
            if n.op_type == "LayerNormalization" and int(a.get("axis", -1)) < 0:
                axes = list(range(int(a.get("axis", -1)), 0))
            else:
                if shapes is None:
                    shapes = self.known_shapes()
                if x not in shapes:
                    out_nodes.append(n)
                    continue
                rank = len(shapes[x])
                axes = list(range(int(a.get("axis", -1)) % rank, rank)) if n.op_type == "LayerNormalization" \
                    else list(range(2, rank))
            base = f"{n.name or y}__norm"
            new = []

            def node(op: str, ins: list[str], suffix: str, **kw: Any) -> str:
                o = f"{base}_{suffix}"
                new.append(helper.make_node(op, ins, [o], name=f"{n.name or op}/{suffix}", **kw))
                return o

            def const(suffix: str, arr: np.ndarray) -> str:
                name = f"{base}_{suffix}"
                self.g.initializer.append(numpy_helper.from_array(_c_order(arr), name))
                return name

            def mean(src: str, suffix: str) -> str:
                if opset >= 18:
                    return node("ReduceMean", [src, const(f"{suffix}_axes", np.asarray(axes, np.int64))], suffix)
                return node("ReduceMean", [src], suffix, axes=axes)

            mu = mean(x, "mean")
            d = node("Sub", [x, mu], "centered")
            var = mean(node("Mul", [d, d], "square"), "var")
            sd = node("Sqrt", [node("Add", [var, const("eps", np.asarray(eps, np.float32))], "var_eps")], "std")
            last = node("Div", [d, sd], "normalized")
            scale = n.input[1] if len(n.input) > 1 and n.input[1] else ""
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else ""
            if n.op_type == "InstanceNormalization":  # (C,) parameters broadcast over (N, C, spatial...)
                per_c = const("per_channel", np.asarray([-1] + [1] * (len(axes)), np.int64))
                scale = node("Reshape", [scale, per_c], "scale") if scale else ""
                bias = node("Reshape", [bias, per_c], "bias") if bias else ""
            if scale:
                last = node("Mul", [last, scale], "scaled")
            if bias:
                last = node("Add", [last, bias], "shifted")
            new[-1].output[0] = y
            out_nodes.extend(new)
            count += 1
        if count:
            del self.g.node[:]
            self.g.node.extend(out_nodes)
            self.report.append(f"wrote {count} LayerNormalization/InstanceNormalization node(s) as ReduceMean, Sub, "
                               f"Mul, Sqrt and Div steps")

    def token_linears(self) -> None:
        """``MatMul(x, W)`` (+ ``Add(b)``) with x of rank 3 (tokens (N, L, d): torch's Linear on a sequence) and W a
        2-D constant becomes ``Transpose -> Reshape (N, d, L, 1) -> Conv 1x1 (W.T, b) -> Reshape (N, o, L) ->
        Transpose``: the same products and sums, as the per-channel op the importer maps (qfx's QLinear on tokens
        lowers the same way); consecutive ones' inverse Transposes cancel in ``transposes``. A constant of shape (d,)
        added to or multiplying such a tensor (LayerNorm's scale and shift) moves into the channel axis the same way."""
        from onnx import helper, numpy_helper

        shapes: dict[str, tuple[int, ...]] | None = None
        consts = self.consts()
        count = 0
        nodes = list(self.g.node)
        out_nodes: list[Any] = []
        skip: set[int] = set()
        for n in nodes:
            if id(n) in skip:
                continue
            if n.domain not in ("", "ai.onnx") or len(n.input) != 2:
                out_nodes.append(n)
                continue
            linear = n.op_type == "MatMul" and n.input[1] in consts and np.ndim(consts[n.input[1]]) == 2
            scaled = n.op_type in ("Add", "Mul", "Sub", "Div") and n.input[1] in consts and \
                np.ndim(consts[n.input[1]]) >= 1 and consts[n.input[1]].size > 1 and \
                all(v == 1 for v in np.shape(consts[n.input[1]])[:-1])
            if not (linear or scaled) or n.input[0] in consts:
                out_nodes.append(n)
                continue
            if shapes is None:
                shapes = self.known_shapes()
            xs = shapes.get(n.input[0])
            if xs is None or len(xs) < 3 or (scaled and (np.ndim(consts[n.input[1]]) > len(xs) or
                                                         consts[n.input[1]].shape[-1] != xs[-1])):
                out_nodes.append(n)
                continue
            base = f"{n.name or n.output[0]}__tok"
            ln, d = int(np.prod(xs[1:-1])), xs[-1]
            new: list[Any] = []

            def const(suffix: str, arr: np.ndarray) -> str:
                name = f"{base}_{suffix}"
                self.g.initializer.append(numpy_helper.from_array(_c_order(arr), name))
                return name

            src = n.input[0]
            if len(xs) > 3:  # (N, a, b, ..., d): the rows (N, a*b*..., d) first (torch's Linear on any leading dims)
                src = f"{base}_rows"
                new.append(helper.make_node("Reshape", [n.input[0], const("rows_shape", np.asarray([0, ln, d],
                                                                                                    np.int64))],
                                            [src], name=f"{base}/rows"))
            t = f"{base}_cf"
            new.append(helper.make_node("Transpose", [src], [t], perm=[0, 2, 1], name=f"{base}/to_channels"))
            y = n.output[0]
            if scaled:
                c = consts[n.input[1]].reshape(-1)
                o = f"{base}_op"
                new.append(helper.make_node(n.op_type, [t, const("c", c.reshape(d, 1))], [o], name=n.name or base))
                back = o
                out = d
            else:
                w = consts[n.input[1]]
                out = int(w.shape[1])
                ins = [f"{base}_4d", const("w", w.T.reshape(out, d, 1, 1))]
                users = self.consumers(y)
                if len(users) == 1 and users[0].op_type == "Add" and users[0].domain in ("", "ai.onnx") and \
                        y not in self.graph_outputs():
                    add = users[0]
                    other = add.input[1] if add.input[0] == y else add.input[0]
                    b = consts.get(other)
                    if b is not None and b.size == out and all(v == 1 for v in b.shape[:-1]):
                        ins.append(const("b", b.reshape(-1)))
                        skip.add(id(add))
                        y = add.output[0]
                new.append(helper.make_node("Reshape", [t, const("s4", np.asarray([0, d, ln, 1], np.int64))],
                                            [ins[0]], name=f"{base}/to_4d"))
                new.append(helper.make_node("Conv", ins, [f"{base}_conv"], kernel_shape=[1, 1], name=n.name or base))
                back = f"{base}_3d"
                new.append(helper.make_node("Reshape", [f"{base}_conv", const("s3", np.asarray([0, out, ln],
                                                                                                 np.int64))],
                                            [back], name=f"{base}/to_3d"))
            tok = y if len(xs) == 3 else f"{base}_tokens"
            new.append(helper.make_node("Transpose", [back], [tok], perm=[0, 2, 1], name=f"{base}/to_tokens"))
            if len(xs) > 3:
                new.append(helper.make_node("Reshape", [tok, const("back_shape", np.asarray([0, *xs[1:-1], out],
                                                                                              np.int64))],
                                            [y], name=f"{base}/unrows"))
            out_nodes.extend(new)
            count += 1
        if count:
            del self.g.node[:]
            self.g.node.extend(out_nodes)
            self.report.append(f"wrote {count} MatMul/Add/Mul on (N, L, d) tokens as channel-first 1x1 Conv / "
                               f"per-channel ops between Transposes")

    def sums_and_lrn(self) -> None:
        """``Sum`` of several tensors (Caffe2-era ResNets) becomes a chain of ``Add``; ReduceL2 / ReduceSumSquare /
        ReduceL1 (F.normalize's norm) a ReduceSum of x * x (then Sqrt) or of |x|; ``LRN`` (AlexNet, GoogLeNet)
        its definition ``x * (bias + alpha / size * S)^-beta`` with S the sum of squares over the channel window, a
        1x1 ``Conv`` with a 0/1 band matrix (adders only): each step an op the importer maps and ``qfx quantize``
        calibrates. An LRN whose channel count cannot be known is left alone."""
        from onnx import helper, numpy_helper

        shapes: dict[str, tuple[int, ...]] | None = None
        out_nodes: list[Any] = []
        sums = lrns = 0
        for n in list(self.g.node):
            if n.domain in ("", "ai.onnx") and n.op_type in ("ReduceL2", "ReduceSumSquare", "ReduceL1"):
                # F.normalize's norm, x.pow(2).sum(): ReduceSum of x * x (then Sqrt) or of |x|, same axes/keepdims
                base = f"{n.name or n.output[0]}__{n.op_type.lower()}"
                nm = n.name or base
                term = f"{base}_term"
                if n.op_type == "ReduceL1":
                    out_nodes.append(helper.make_node("Abs", [n.input[0]], [term], name=f"{nm}/abs"))
                else:
                    out_nodes.append(helper.make_node("Mul", [n.input[0], n.input[0]], [term], name=f"{nm}/square"))
                red = n.output[0] if n.op_type != "ReduceL2" else f"{base}_sum"
                red_node = helper.make_node("ReduceSum", [term, *n.input[1:]], [red], name=f"{nm}/sum")
                for a in n.attribute:
                    if a.name == "axes" and self.opset >= 13:  # ReduceSum takes its axes as an input from opset 13
                        ax = f"{base}_axes"
                        self.g.initializer.append(numpy_helper.from_array(np.asarray(list(a.ints), np.int64), ax))
                        red_node.input.append(ax)
                    else:
                        red_node.attribute.append(a)
                out_nodes.append(red_node)
                if n.op_type == "ReduceL2":
                    out_nodes.append(helper.make_node("Sqrt", [red], [n.output[0]], name=f"{nm}/sqrt"))
                sums += 1
                continue
            if n.domain not in ("", "ai.onnx") or n.op_type not in ("Sum", "LRN"):
                out_nodes.append(n)
                continue
            base = f"{n.name or n.output[0]}__{n.op_type.lower()}"
            if n.op_type == "Sum":
                ins = [i for i in n.input if i]
                if len(ins) == 1:
                    out_nodes.append(helper.make_node("Identity", ins, [n.output[0]], name=n.name or base))
                else:
                    acc = ins[0]
                    for k, i in enumerate(ins[1:], 1):
                        out = n.output[0] if k == len(ins) - 1 else f"{base}_{k}"
                        out_nodes.append(helper.make_node("Add", [acc, i], [out], name=f"{n.name or base}/{k}"))
                        acc = out
                sums += 1
                continue
            if shapes is None:
                shapes = self.known_shapes()
            xs = shapes.get(n.input[0])
            if xs is None or len(xs) < 3:
                out_nodes.append(n)
                continue
            a = _attrs(n)
            size, c = int(a["size"]), int(xs[1])
            alpha, beta, bias = float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)), float(a.get("bias", 1.0))
            lo, hi = (size - 1) // 2, (size - 1) - (size - 1) // 2
            band = np.zeros((c, c) + (1,) * (len(xs) - 2), dtype=np.float32)
            for ch in range(c):
                band[ch, max(0, ch - lo):min(c, ch + hi + 1)] = 1.0
            names = {k: f"{base}_{k}" for k in ("band", "alpha", "bias", "beta")}
            self.g.initializer.extend([numpy_helper.from_array(band, names["band"]),
                                       numpy_helper.from_array(np.asarray(alpha / size, np.float32), names["alpha"]),
                                       numpy_helper.from_array(np.asarray(bias, np.float32), names["bias"]),
                                       numpy_helper.from_array(np.asarray(-beta, np.float32), names["beta"])])
            x, nm = n.input[0], n.name or base
            steps = [("Mul", [x, x], "square"), ("Conv", [f"{base}_square", names["band"]], "window_sum"),
                     ("Mul", [f"{base}_window_sum", names["alpha"]], "scaled"),
                     ("Add", [f"{base}_scaled", names["bias"]], "shifted"),
                     ("Pow", [f"{base}_shifted", names["beta"]], "gain"), ("Mul", [x, f"{base}_gain"], "out")]
            for op, ins, suffix in steps:
                out = n.output[0] if suffix == "out" else f"{base}_{suffix}"
                kw = {"kernel_shape": [1] * (len(xs) - 2)} if op == "Conv" else {}
                out_nodes.append(helper.make_node(op, ins, [out], name=f"{nm}/{suffix}", **kw))
            lrns += 1
        if sums or lrns:
            del self.g.node[:]
            self.g.node.extend(out_nodes)
            self.report.append(f"wrote {sums} Sum/ReduceL1/ReduceL2/ReduceSumSquare node(s) and {lrns} LRN node(s) "
                               f"as their steps")

    def einsums_and_tiles(self) -> None:
        """``Einsum`` in the forms ``qfx.nn.einsum`` plans (attention's batched products, permutes, sums,
        elementwise and outer products) becomes Transpose / Unsqueeze / Squeeze / ReduceSum / Mul / MatMul nodes, as
        the torch tracer rewrites torch.einsum; ``Tile`` with constant repeats that keep the batch a ``Concat`` of
        copies along each repeated axis. Other Einsum / Tile nodes stay (and are refused by the importer)."""
        from onnx import helper, numpy_helper

        from qfx.nn.einsum import einsum_plan

        opset = self.opset
        consts = shapes = None
        out_nodes: list[Any] = []
        einsums = tiles = 0
        for n in list(self.g.node):
            if n.domain not in ("", "ai.onnx") or n.op_type not in ("Einsum", "Tile", "CumSum"):
                out_nodes.append(n)
                continue
            base = f"{n.name or n.output[0]}__{n.op_type.lower()}"
            made: list[Any] = []
            inits: list[Any] = []

            def node(op: str, ins: list[str], axes: tuple[int, ...] | None = None, **kw: Any) -> str:
                out = f"{base}_{len(made)}"
                ins = list(ins)
                if axes is not None and opset >= 13:  # Unsqueeze/Squeeze/ReduceSum take axes as an input
                    name = f"{out}_axes"
                    inits.append(numpy_helper.from_array(np.asarray(axes, np.int64), name))
                    ins.append(name)
                elif axes is not None:
                    kw["axes"] = list(axes)
                made.append(helper.make_node(op, ins, [out], name=f"{n.name or base}/{len(made)}", **kw))
                return out

            result: str | None = None
            if n.op_type == "CumSum":  # prefix (reverse: suffix) sums of one-element... slices, concatenated
                consts = self.consts() if consts is None else consts
                shapes = self.known_shapes() if shapes is None else shapes
                xs, ax = shapes.get(n.input[0]), consts.get(n.input[1]) if len(n.input) > 1 else None
                a = _attrs(n)
                if xs is not None and ax is not None and np.size(ax) == 1 and not a.get("exclusive", 0) and \
                        int(ax) % len(xs) != 0 and xs[int(ax) % len(xs)] <= 64:
                    axis = int(ax) % len(xs)
                    size = xs[axis]
                    sums = []
                    for i in range(size):
                        lo, hi = (i, size) if a.get("reverse", 0) else (0, i + 1)
                        idx = {k: f"{base}_{k}{i}" for k in ("s", "e", "a")}
                        for k, v in zip(("s", "e", "a"), (lo, hi, axis)):
                            inits.append(numpy_helper.from_array(np.asarray([v], np.int64), idx[k]))
                        part = node("Slice", [n.input[0], idx["s"], idx["e"], idx["a"]])
                        sums.append(node("ReduceSum", [part], (axis,), keepdims=1) if hi - lo > 1 else part)
                    result = node("Concat", sums, axis=axis) if len(sums) > 1 else sums[0]
            elif n.op_type == "Einsum":
                eq = next((a.s.decode() for a in n.attribute if a.name == "equation"), "")

                class _B:
                    def sum(self, x: str, axes: tuple[int, ...]) -> str:
                        return node("ReduceSum", [x], axes, keepdims=0)

                    def permute(self, x: str, perm: tuple[int, ...]) -> str:
                        return node("Transpose", [x], perm=list(perm))

                    def unsqueeze(self, x: str, axis: int) -> str:
                        return node("Unsqueeze", [x], (axis,))

                    def squeeze(self, x: str, axis: int) -> str:
                        return node("Squeeze", [x], (axis,))

                    def matmul(self, a: str, b: str) -> str:
                        return node("MatMul", [a, b])

                    def mul(self, a: str, b: str) -> str:
                        return node("Mul", [a, b])

                result = einsum_plan(eq, list(n.input), _B())
            else:
                consts = self.consts() if consts is None else consts
                reps = consts.get(n.input[1]) if len(n.input) > 1 else None
                if reps is not None and reps.ndim == 1 and reps.size and int(reps[0]) == 1 and (reps >= 1).all():
                    result = n.input[0]
                    for ax, r in enumerate(int(v) for v in reps):
                        if r > 1:
                            result = node("Concat", [result] * r, axis=ax)
            if result is None:
                out_nodes.append(n)
                continue
            if made and made[-1].output[0] == result:
                made[-1].output[0] = n.output[0]
            else:
                made.append(helper.make_node("Identity", [result], [n.output[0]], name=f"{n.name or base}/out"))
            self.g.initializer.extend(inits)
            out_nodes.extend(made)
            einsums += n.op_type == "Einsum"
            tiles += n.op_type in ("Tile", "CumSum")
        if einsums or tiles:
            del self.g.node[:]
            self.g.node.extend(out_nodes)
            self.report.append(f"wrote {einsums} Einsum node(s) and {tiles} Tile/CumSum node(s) as their steps")

    def recurrents(self) -> None:
        """LSTM / GRU (linear_before_reset=1, torch's) / RNN nodes over a fixed sequence length, unrolled as the
        torch tracer unrolls nn.LSTM/GRU/RNN: per step and direction a Gemm of the step's input (both biases where
        they add) and one of the state, Slices into the gates, Sigmoid/Tanh, Mul, Add. The input must be
        ``Transpose(perm=[1, 0, 2])`` of a batch-first tensor (torch's export) or the sequence of an unrolled layer
        before it; the initial state absent or zeros; default activations, no clip, sequence_lens or peepholes.
        Reads: Y through Squeeze(axis 1) (one direction) or Transpose(0, 2, 1, 3) + Reshape, then
        Transpose(perm=[1, 0, 2]) (the batch-first sequence), Gather(axis 0) (one step) or the next recurrent
        layer; Y_h / Y_c through Gather(axis 0), Squeeze(axis 0) or a Concat of several layers' Y_h along axis 0
        read by Gather(axis 0). A node with other reads is left alone (the importer refuses it, naming it)."""
        from onnx import helper, numpy_helper

        opset = self.opset
        consts = self.consts()
        shapes: dict[str, tuple[int, ...]] | None = None
        seq_steps: dict[str, list[str]] = {}  # a sequence-first (T, N, F) tensor -> its step tensors (N, F)
        batch_first: dict[str, str] = {}  # such a tensor -> the (N, T, F) Concat of its steps
        finals: dict[str, list[str]] = {}  # Y_h / Y_c -> one (N, H) tensor per direction
        renames: dict[str, str] = {}
        out_nodes: list[Any] = []
        count = 0

        def zeros(t: str) -> bool:
            if not t:
                return True
            v = consts.get(t)
            if v is not None:
                return not np.any(v)
            p = self.producer(t)
            if p is not None and p.op_type == "Expand" and p.input[0] in consts:
                return not np.any(consts[p.input[0]])
            if p is not None and p.op_type == "ConstantOfShape":
                val = next((numpy_helper.to_array(a.t) for a in p.attribute if a.name == "value"), np.zeros(1))
                return not np.any(val)
            return False

        def int_attr(m, name: str, default: int) -> int:
            return next((int(a.i) for a in m.attribute if a.name == name), default)

        def const_index(m) -> int | None:
            if m.op_type != "Gather" or int_attr(m, "axis", 0) != 0 or m.input[1] not in consts:
                return None
            v = consts[m.input[1]]
            return int(v) if v.ndim == 0 else None

        def axes_of(m) -> list[int] | None:
            a = next((list(x.ints) for x in m.attribute if x.name == "axes"), None)
            if a is None and len(m.input) > 1 and m.input[1] in consts:
                a = [int(v) for v in np.asarray(consts[m.input[1]]).reshape(-1)]
            return a

        def perm_of(m) -> list[int] | None:
            return next((list(x.ints) for x in m.attribute if x.name == "perm"), None) if m.op_type == "Transpose" \
                else None

        for n in list(self.g.node):
            if n.domain not in ("", "ai.onnx") or n.op_type not in ("LSTM", "GRU", "RNN"):
                out_nodes.append(n)
                continue
            kind, a = n.op_type, _attrs(n)
            ins = list(n.input) + [""] * (8 - len(n.input))
            x, w_name, r_name, b_name, lens, h0 = ins[:6]
            c0 = ins[6] if kind == "LSTM" else ""
            acts = [v.decode() if isinstance(v, bytes) else v for v in a.get("activations", [])]
            default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
            direction = a.get("direction", b"forward")
            direction = direction.decode() if isinstance(direction, bytes) else str(direction)
            dirs = 2 if direction == "bidirectional" else 1
            reverse = direction == "reverse"
            ok = (w_name in consts and r_name in consts and (not b_name or b_name in consts) and not lens
                  and zeros(h0) and zeros(c0) and "clip" not in a and int(a.get("layout", 0)) == 0
                  and not (len(ins) > 7 and ins[7]) and int(a.get("input_forget", 0)) == 0
                  and (not acts or acts == default * dirs or kind == "RNN" and acts == ["Relu"] * dirs)
                  and (kind != "GRU" or int(a.get("linear_before_reset", 0)) == 1))
            if ok and x not in seq_steps:
                p = self.producer(x)
                if p is None or perm_of(p) != [1, 0, 2]:
                    ok = False
                else:
                    shapes = self.known_shapes() if shapes is None else shapes
                    xb = p.input[0]
                    if xb not in shapes or len(shapes[xb]) != 3:
                        ok = False
                    else:
                        base0 = f"{n.name or n.output[0]}__x"
                        steps = []
                        for t in range(shapes[xb][1]):
                            idx = f"{base0}_i{t}"
                            self.g.initializer.append(numpy_helper.from_array(np.asarray(t, np.int64), idx))
                            out_nodes.append(helper.make_node("Gather", [xb, idx], [f"{base0}{t}"], axis=1,
                                                              name=f"{base0}/step{t}"))
                            steps.append(f"{base0}{t}")
                        seq_steps[x] = steps
            if not ok:
                out_nodes.append(n)
                continue
            w, r = consts[w_name], consts[r_name]
            hid = int(a.get("hidden_size", r.shape[-1]))
            gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
            bias = consts[b_name] if b_name else np.zeros((dirs, 2 * gates * hid), np.float32)
            xs = seq_steps[x]
            base = f"{n.name or n.output[0]}__{kind.lower()}"
            k = [0]

            def emit(op: str, inputs: list[str], **kw: Any) -> str:
                out = f"{base}_{k[0]}"
                k[0] += 1
                out_nodes.append(helper.make_node(op, inputs, [out], name=f"{base}/{k[0]}", **kw))
                return out

            def init(arr: np.ndarray) -> str:
                name = f"{base}_c{k[0]}"
                k[0] += 1
                self.g.initializer.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
                return name

            def init_i64(v: list[int]) -> str:
                name = f"{base}_c{k[0]}"
                k[0] += 1
                self.g.initializer.append(numpy_helper.from_array(np.asarray(v, np.int64), name))
                return name

            def gate(src: str, j: int) -> str:
                if gates == 1:
                    return src
                return emit("Slice", [src, init_i64([j * hid]), init_i64([(j + 1) * hid]), init_i64([1])])

            per_dir: list[list[str]] = []
            fin_h, fin_c = [], []
            for d in range(dirs):
                wb, rb = bias[d][:gates * hid], bias[d][gates * hid:]
                if kind == "GRU":  # zrh: z and r take both biases; h keeps Rbh inside r * (...)
                    b_in = np.concatenate([wb[:2 * hid] + rb[:2 * hid], wb[2 * hid:]])
                    b_st = np.concatenate([np.zeros(2 * hid, np.float32), rb[2 * hid:]])
                else:
                    b_in, b_st = wb + rb, None
                wi, ri, bi = init(w[d]), init(r[d]), init(b_in)
                bs = init(b_st) if b_st is not None and np.any(b_st) else None
                h = c = None
                outs: list[str] = [""] * len(xs)
                order = range(len(xs) - 1, -1, -1) if (d == 1 or reverse) else range(len(xs))
                for t in order:
                    g = emit("Gemm", [xs[t], wi, bi], transB=1)
                    if kind == "LSTM":  # iofc
                        if h is not None:
                            g = emit("Add", [g, emit("Gemm", [h, ri], transB=1)])
                        i_, o_, f_, c_ = (gate(g, j) for j in range(4))
                        i_, o_, f_ = emit("Sigmoid", [i_]), emit("Sigmoid", [o_]), emit("Sigmoid", [f_])
                        ic = emit("Mul", [i_, emit("Tanh", [c_])])
                        c = ic if c is None else emit("Add", [emit("Mul", [f_, c]), ic])
                        h = emit("Mul", [o_, emit("Tanh", [c])])
                    elif kind == "GRU":  # zrh
                        a_z, a_r, a_h = (gate(g, j) for j in range(3))
                        if h is None:
                            z, rr = emit("Sigmoid", [a_z]), emit("Sigmoid", [a_r])
                            pre = a_h if bs is None else emit("Add", [a_h, emit("Mul", [rr, init(b_st[2 * hid:])])])
                            hn = emit("Tanh", [pre])
                            h = emit("Sub", [hn, emit("Mul", [z, hn])])
                        else:
                            s_ = emit("Gemm", [h, ri] + ([bs] if bs else []), transB=1)
                            s_z, s_r, s_h = (gate(s_, j) for j in range(3))
                            z = emit("Sigmoid", [emit("Add", [a_z, s_z])])
                            rr = emit("Sigmoid", [emit("Add", [a_r, s_r])])
                            hn = emit("Tanh", [emit("Add", [a_h, emit("Mul", [rr, s_h])])])
                            h = emit("Add", [hn, emit("Mul", [z, emit("Sub", [h, hn])])])
                    else:
                        if h is not None:
                            g = emit("Add", [g, emit("Gemm", [h, ri], transB=1)])
                        h = emit(acts[0] if acts else "Tanh", [g])
                    outs[t] = h
                per_dir.append(outs)
                fin_h.append(h)
                fin_c.append(c or "")
            steps = per_dir[0] if dirs == 1 else [emit("Concat", [per_dir[0][t], per_dir[1][t]], axis=1)
                                                  for t in range(len(xs))]
            finals[n.output[1] if len(n.output) > 1 else ""] = fin_h
            if len(n.output) > 2:
                finals[n.output[2]] = fin_c
            # Y: Squeeze(axis 1) (one direction) or Transpose(0, 2, 1, 3) + Reshape: the sequence-first (T, N, F)
            for m in self.consumers(n.output[0]) if n.output[0] else []:
                q = None
                if m.op_type == "Squeeze" and dirs == 1 and axes_of(m) == [1]:
                    q = m.output[0]
                elif perm_of(m) == [0, 2, 1, 3]:
                    rs = self.consumers(m.output[0])
                    if len(rs) == 1 and rs[0].op_type == "Reshape":
                        q = rs[0].output[0]
                if q is not None:
                    seq_steps[q] = steps
                    if any(perm_of(v) == [1, 0, 2] for v in self.consumers(q)):  # read batch first: built here
                        ups = [emit("Unsqueeze", [st, init_i64([1])]) if opset >= 13 else
                               emit("Unsqueeze", [st], axes=[1]) for st in steps]
                        batch_first[q] = emit("Concat", ups, axis=1)
            count += 1
        if not count:
            return
        # the reads of each unrolled sequence and final state, by renaming their outputs' readers
        for q, steps in list(seq_steps.items()):
            for m in self.consumers(q):
                if perm_of(m) == [1, 0, 2] and q in batch_first:
                    renames[m.output[0]] = batch_first[q]
                elif const_index(m) is not None and -len(steps) <= const_index(m) < len(steps):
                    renames[m.output[0]] = steps[const_index(m)]
        for yh, fin in finals.items():
            if not yh:
                continue
            for m in self.consumers(yh):
                if const_index(m) is not None and -len(fin) <= const_index(m) < len(fin) and fin[const_index(m)]:
                    renames[m.output[0]] = fin[const_index(m)]
                elif m.op_type == "Squeeze" and len(fin) == 1 and axes_of(m) in ([0], None) and fin[0]:
                    renames[m.output[0]] = fin[0]
                elif m.op_type == "Concat" and int_attr(m, "axis", 0) == 0 and all(i in finals for i in m.input):
                    parts = [f for i in m.input for f in finals[i]]
                    for v in self.consumers(m.output[0]):
                        j = const_index(v)
                        if j is not None and -len(parts) <= j < len(parts) and parts[j]:
                            renames[v.output[0]] = parts[j]
        # the batch-first sequence and the step/state tensors are made where the layer was: before their readers
        outs = self.graph_outputs()
        out_nodes += [helper.make_node("Identity", [new], [old], name=f"{old}__read")
                      for old, new in renames.items() if old in outs]
        del self.g.node[:]
        self.g.node.extend(out_nodes)
        for old, new in renames.items():
            self.rename_input(old, new)
        self.report.append(f"unrolled {count} LSTM/GRU/RNN node(s) over their sequence length")

    def identities(self) -> None:
        outs = self.graph_outputs()
        removed = 0
        for n in list(self.g.node):
            if n.op_type not in ("Identity", "Dropout") or n.domain not in ("", "ai.onnx"):
                continue
            if any(o in outs for o in n.output):
                continue  # the converter aliases these; the graph output keeps its name
            if len(n.output) > 1 and n.output[1] and self.consumers(n.output[1]):
                continue  # a Dropout mask that is read
            self.rename_input(n.output[0], n.input[0])
            self.remove(n)
            removed += 1
        if removed:
            self.report.append(f"removed {removed} Identity/Dropout node(s)")

    def restrides(self) -> None:
        """``Gather(Reshape(x, [-1]), I, axis=0)`` with a constant ``I`` over a batch-1 ``x`` (the dynamo
        exporter's ``as_strided``): element ``I[j]`` of the flattened sample. ``I`` = arange: a Reshape to
        ``I``'s shape; otherwise a Reshape to (1, -1) and a Gather along axis 1 of ``I[0]``."""
        from onnx import helper

        consts, shapes = self.consts(), None
        done = 0
        for n in list(self.g.node):
            if n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or int(_attrs(n).get("axis", 0)) != 0 or \
                    len(n.input) < 2 or n.input[1] not in consts:
                continue
            flat = self.producer(n.input[0])
            tgt = consts.get(flat.input[1]) if flat is not None and flat.op_type == "Reshape" and \
                len(flat.input) > 1 else None
            if tgt is None or [int(v) for v in np.asarray(tgt).ravel()] != [-1]:
                continue
            shapes = shapes if shapes is not None else self.known_shapes()
            xs, idx = shapes.get(flat.input[0]), np.asarray(consts[n.input[1]]).astype(np.int64)
            size = int(np.prod(xs)) if xs else 0
            if not xs or xs[0] != 1 or idx.ndim < 1 or idx.shape[0] != 1 or idx.size == 0 or \
                    idx.min() < -size or idx.max() >= size:
                continue
            idx = np.where(idx < 0, idx + size, idx)
            base = n.name or n.output[0]
            shape_name = f"{base}__restride_shape"
            if np.array_equal(idx.ravel(), np.arange(idx.size)) and idx.size == size:
                self.set_init(shape_name, np.asarray(idx.shape, dtype=np.int64))
                new = [helper.make_node("Reshape", [flat.input[0], shape_name], [n.output[0]], name=f"{base}/restride")]
            else:
                self.set_init(shape_name, np.asarray([1, -1], dtype=np.int64))
                self.set_init(f"{base}__restride_index", idx[0])
                rows = f"{base}__restride_rows"
                new = [helper.make_node("Reshape", [flat.input[0], shape_name], [rows], name=f"{base}/rows"),
                       helper.make_node("Gather", [rows, f"{base}__restride_index"], [n.output[0]], axis=1,
                                        name=f"{base}/restride")]
            k = next(i for i, m in enumerate(self.g.node) if m is n)
            del self.g.node[k]
            for j, m in enumerate(new):
                self.g.node.insert(k + j, m)
            if not self.consumers(flat.output[0]) and flat.output[0] not in self.graph_outputs():
                self.remove(flat)  # a flat batch-1 Reshape left behind would read as moving data across axis 0
            done += 1
        if done:
            self.report.append(f"{done} flat Gather(s) of a batch-1 tensor (as_strided) read per sample")

    def known_shapes(self) -> dict[str, tuple[int, ...]]:
        """Full shapes (batch 1 where symbolic) from the graph and onnx.shape_inference, QONNX ops as Identity."""
        import onnx
        from onnx import helper, shape_inference

        shadow = onnx.ModelProto()
        shadow.CopyFrom(self.m)
        sg = shadow.graph
        del sg.value_info[:]  # stale after rewrites; inference recomputes them
        for n in sg.node:
            if n.domain not in ("", "ai.onnx"):
                keep_in, keep_out, name = n.input[0] if n.input else "", list(n.output), n.name
                n.Clear()
                n.op_type, n.name = "Identity", name
                n.input.append(keep_in)
                n.output.extend(keep_out[:1])
        for vi in (*sg.input, *sg.output):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1
        del shadow.opset_import[:]
        shadow.opset_import.extend([o for o in self.m.opset_import if o.domain in ("", "ai.onnx")] or
                                   [helper.make_opsetid("", 13)])
        shapes: dict[str, tuple[int, ...]] = {}
        try:
            inferred = shape_inference.infer_shapes(shadow, strict_mode=False)
        except Exception:  # shape inference is a help, never a requirement
            inferred = shadow
        for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
        return shapes

    def elem_type(self, tensor: str) -> int | None:
        """The ONNX element type the model declares for ``tensor`` (graph input/output or value_info), if any."""
        from onnx import shape_inference

        for g in (self.g, None):
            if g is None:  # not declared: ask shape inference (a help, never a requirement)
                try:
                    g = shape_inference.infer_shapes(self.m, strict_mode=False).graph
                except Exception:
                    return None
            for vi in (*g.input, *g.value_info, *g.output):
                if vi.name == tensor and vi.type.tensor_type.elem_type:
                    return int(vi.type.tensor_type.elem_type)
        return None

    def _weight_only(self, tensor: str) -> bool:
        """``tensor`` is read only as the weight of Conv/ConvTranspose/Gemm/MatMul."""
        users = [(u, k) for u in self.g.node for k, i in enumerate(u.input) if i == tensor]
        return bool(users) and all(_WEIGHT_SLOTS.get(u.op_type) == k for u, k in users)

    def fold_constants(self) -> None:
        from onnx import helper

        folded: dict[str, int] = {}
        while True:
            consts = self.consts()
            shapes = None
            changed = False
            for n in list(self.g.node):
                if n.domain not in ("", "ai.onnx"):
                    continue
                outs = [o for o in n.output if o]
                if n.op_type == "Constant":
                    val = constant_value(n)
                    if val is None:
                        continue
                elif n.op_type == "Shape":
                    if shapes is None:
                        shapes = self.known_shapes()
                    if n.input[0] in consts:
                        shp = consts[n.input[0]].shape
                    elif n.input[0] in shapes:
                        shp = shapes[n.input[0]]
                    else:
                        continue
                    a = _attrs(n)
                    val = np.asarray(shp, dtype=np.int64)[a.get("start", 0):a.get("end", None)]
                elif n.op_type == "CastLike" and n.input[0] in consts and n.input[1] not in consts:
                    to = self.elem_type(n.input[1])  # the dynamo exporter's CastLike(scalar, activation)
                    if to is None:
                        continue
                    val = consts[n.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
                elif n.op_type in FOLDERS and all((not i) or i in consts for i in n.input) and len(outs) == 1:
                    try:
                        ins = [consts[i] if i else None for i in n.input]
                        if n.op_type == "ConstantOfShape" and self._weight_only(outs[0]):
                            val = _constant_of_shape(n, ins, _MAX_WEIGHT_ELEMS)
                        else:
                            val = FOLDERS[n.op_type](n, ins)
                    except _TooBig:
                        continue
                    except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as exc:
                        raise BadInputError(f"cannot evaluate constant node {n.name or n.op_type!r} "
                                            f"({n.op_type}): {type(exc).__name__}: {exc}") from None
                else:
                    continue
                if len(outs) != 1:
                    continue
                if np.asarray(val).dtype == object:  # e.g. a missing (empty-named) input folded into the value
                    raise BadInputError(f"cannot evaluate constant node {n.name or n.op_type!r} ({n.op_type}): "
                                        f"an input is missing or not numeric")
                self.set_init(outs[0], np.asarray(val))
                consts[outs[0]] = np.asarray(val)
                if outs[0] in self.graph_outputs():
                    continue
                self.remove(n)
                folded[n.op_type] = folded.get(n.op_type, 0) + 1
                changed = True
            if not changed:
                break
        if folded:
            what = ", ".join(f"{k} x{v}" for k, v in sorted(folded.items()))
            self.report.append(f"folded {sum(folded.values())} constant/shape node(s): {what}")

    # ------------------------------------------------------------ transposes (channels-last layouts)
    @staticmethod
    def _perm(n) -> list[int] | None:
        p = _attrs(n).get("perm")
        return [int(v) for v in p] if p is not None else None

    def _commutes(self, n, consts: dict[str, np.ndarray]) -> bool:
        """Element-wise ops a Transpose can move through: Relu, and QONNX ops with per-tensor parameters."""
        if n.domain in ("", "ai.onnx") and n.op_type in _UNARY_ELEMENTWISE:
            return all(i in consts and consts[i].size == 1 for i in n.input[1:] if i)
        if n.domain == QONNX_DOMAIN and n.op_type in QONNX_OPS:
            return all(i in consts and consts[i].size == 1 for i in n.input[1:])
        return False

    def transposes(self) -> None:
        """Move Transposes through element-wise ops, cancel inverse pairs, fold the rest into the interface."""
        moved = cancelled = 0
        for _ in range(4 * len(self.g.node) + 4):
            consts = self.consts()
            outs = self.graph_outputs()
            change = False
            for t in list(self.g.node):
                if t.op_type != "Transpose" or t.domain not in ("", "ai.onnx") or t.input[0] in consts:
                    continue
                users = self.consumers(t.output[0])
                if len(users) != 1 or t.output[0] in outs:
                    continue
                u = users[0]
                if u.op_type == "Transpose" and u.domain in ("", "ai.onnx"):
                    p, q = self._perm(t), self._perm(u)
                    if p is not None and q is not None and [p[i] for i in q] == list(range(len(p))):
                        src, dst = t.input[0], u.output[0]
                        if dst in outs:
                            continue
                        self.rename_input(dst, src)
                        self.remove(t)
                        self.remove(u)
                        cancelled += 1
                        change = True
                        break
                elif self._commutes(u, consts) and u.input[0] == t.output[0] and u.output[0] not in outs:
                    # E(T(x)) -> T(E(x)): E reads x; T now reads E's output and writes E's old output
                    x, y = t.input[0], u.output[0]
                    mid = t.output[0]
                    u.input[0] = x
                    u.output[0] = mid
                    t.input[0] = mid
                    t.output[0] = y
                    # keep topological order: T after E
                    nodes = list(self.g.node)
                    nodes.remove(t)
                    nodes.insert(nodes.index(u) + 1, t)
                    del self.g.node[:]
                    self.g.node.extend(nodes)
                    moved += 1
                    change = True
                    break
            if not change:
                break
        if moved or cancelled:
            self.report.append(f"moved Transposes through {moved} element-wise op(s), cancelled {cancelled} pair(s)")
        self._interface_transposes()
        self._transpose_into_weights()

    def _interface_transposes(self) -> None:
        """A Transpose of a graph input (after element-wise ops) becomes the input layout itself (each input)."""
        ins = self.data_inputs()
        for inp in ins:
            self._interface_transpose(inp, len(ins) == 1)

    def _interface_transpose(self, inp, only: bool) -> None:
        from onnx import helper

        consts = self.consts()
        # hoist: a Transpose reached from the input through element-wise ops moves next to the input
        for _ in range(len(self.g.node)):
            users = self.consumers(inp.name)
            if len(users) != 1 or users[0].op_type == "Transpose":
                break
            e = users[0]
            if not self._commutes(e, consts):
                break
            nxt = self.consumers(e.output[0])
            if len(nxt) != 1 or nxt[0].op_type != "Transpose":
                break
            t = nxt[0]
            # T(E(x)) -> E(T(x))
            x, y, mid = e.input[0], t.output[0], e.output[0]
            t.input[0], t.output[0] = x, mid
            e.input[0], e.output[0] = mid, y
            nodes = list(self.g.node)
            nodes.remove(t)
            nodes.insert(nodes.index(e), t)
            del self.g.node[:]
            self.g.node.extend(nodes)
        users = self.consumers(inp.name)
        if len(users) == 1 and users[0].op_type == "Transpose" and users[0].domain in ("", "ai.onnx"):
            t = users[0]
            perm = self._perm(t)
            dims = inp.type.tensor_type.shape.dim
            if perm is not None and perm[0] == 0 and len(dims) == len(perm):
                shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "N") for d in dims]
                new_shape = [shape[p] for p in perm]
                new = helper.make_tensor_value_info(t.output[0], inp.type.tensor_type.elem_type, new_shape)
                for k, i in enumerate(self.g.input):
                    if i.name == inp.name:
                        del self.g.input[k]
                        self.g.input.insert(k, new)
                        break
                for a in self.g.quantization_annotation:
                    if a.tensor_name == inp.name:
                        a.tensor_name = t.output[0]
                self.remove(t)
                self.meta[f"qfx.input_perm:{t.output[0]}"] = ",".join(str(p) for p in perm)  # per IR input
                if only:  # the single-input key older readers know
                    self.meta["qfx.input_perm"] = ",".join(str(p) for p in perm)
                self.report.append(f"input {inp.name!r} is transposed by {perm} on the way in: the IR input is "
                                   f"{t.output[0]!r} (qfx.input_perm)")

    def _transpose_into_weights(self) -> None:
        """Transpose -> Flatten/Reshape(N, -1) -> MatMul/Gemm(const): permute the weight rows instead."""
        consts = self.consts()
        shapes = None
        for t in list(self.g.node):
            if t.op_type != "Transpose" or t.domain not in ("", "ai.onnx"):
                continue
            users = self.consumers(t.output[0])
            if len(users) != 1 or users[0].op_type not in ("Flatten", "Reshape"):
                continue
            fl = users[0]
            mm = self.consumers(fl.output[0])
            if len(mm) != 1 or mm[0].op_type not in ("MatMul", "Gemm") or mm[0].input[0] != fl.output[0]:
                continue
            holder, slot = self._weight_source(mm[0], consts)
            if holder is None:
                continue
            if shapes is None:
                shapes = self.known_shapes()
            src = shapes.get(t.input[0])
            perm = self._perm(t)
            if src is None or perm is None or perm[0] != 0:
                continue
            if fl.op_type == "Reshape":
                tgt = consts.get(fl.input[1])
                if tgt is None or tgt.size != 2:
                    continue
            elif int(_attrs(fl).get("axis", 1)) not in (0, 1):
                continue
            per = src[1:]
            # flat index j of the transposed tensor reads element idx[j] of the untransposed one (C order)
            idx = np.arange(int(np.prod(per))).reshape(per).transpose([p - 1 for p in perm[1:]]).ravel()
            w = consts[holder.input[slot]]
            a = _attrs(mm[0])
            trans_b = mm[0].op_type == "Gemm" and int(a.get("transB", 0))
            wk = w.T if trans_b else w  # (K, M): row j multiplies flat element j
            if wk.shape[0] != idx.size:
                continue
            new = np.empty_like(wk)
            new[idx] = wk  # the row for untransposed element idx[j] is the old row j
            self.set_init(holder.input[slot] + "__qfx_rows", new.T if trans_b else new)
            holder.input[slot] = holder.input[slot] + "__qfx_rows"
            self.rename_input(t.output[0], t.input[0])
            self.remove(t)
            self.report.append(f"folded Transpose {t.name or t.output[0]!r} before {fl.op_type} into the rows of "
                               f"{mm[0].op_type} {mm[0].name or mm[0].output[0]!r}")
            consts = self.consts()

    def _weight_source(self, mm, consts: dict[str, np.ndarray]) -> tuple[Any, int]:
        """(node, input slot) holding the constant weight of a MatMul/Gemm: the op itself, or a QONNX quantizer of
        a constant with per-tensor parameters (permuting rows commutes with it); (None, 0) otherwise."""
        if mm.input[1] in consts:
            return mm, 1
        q = self.producer(mm.input[1])
        if q is not None and q.domain == QONNX_DOMAIN and q.op_type in ("Quant", "BipolarQuant") and \
                q.input[0] in consts and all(i in consts and consts[i].size == 1 for i in q.input[1:]) and \
                len(self.consumers(q.output[0])) == 1:
            return q, 0
        return None, 0

    def dead(self) -> None:
        live = self.graph_outputs()
        keep = []
        for n in reversed(list(self.g.node)):
            if any(o in live for o in n.output):
                keep.append(n)
                live.update(i for i in n.input if i)
        keep.reverse()
        dropped = len(self.g.node) - len(keep)
        if dropped:
            del self.g.node[:]
            self.g.node.extend(keep)
        used = live | {i.name for i in self.g.input}
        inits = [i for i in self.g.initializer if i.name in used]
        if len(inits) != len(self.g.initializer):
            del self.g.initializer[:]
            self.g.initializer.extend(inits)
        if dropped:
            self.report.append(f"dropped {dropped} node(s) that reach no output")

    def run(self):
        from onnx import helper

        from qfx.onnx.whole_sample import add_batch_axis  # it reads this module's helpers

        self.functions()
        self.domains()
        self.channels_last()
        self.identities()
        self.normalizations()
        self.sums_and_lrn()
        self.hardswish()
        self.fold_constants()
        self.recurrents()
        self.einsums_and_tiles()
        self.restrides()
        add_batch_axis(self)
        self.token_linears()
        self.transposes()
        self.fold_constants()
        self.dead()
        del self.g.value_info[:]  # stale after the rewrites (renamed and re-laid-out tensors); shapes are re-inferred
        if self.meta:
            helper.set_model_props(self.m, {**{p.key: p.value for p in self.m.metadata_props}, **self.meta})
        return self.m, self.report


def cleanup(model) -> tuple[Any, list[str]]:
    """A cleaned copy of ``model`` (see the module doc) and one report line per kind of change."""
    return _Cleaner(model).run()
