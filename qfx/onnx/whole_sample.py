"""A batch axis for graphs whose first axis is not one: each whole input tensor becomes one sample.

qfx reads ONNX axis 0 as the batch: every executor runs samples independently and keeps per-sample shapes. Some
exports have fixed shapes whose first axis is data, not a batch: torch's sequence-first attention
(``(S, 1, E)`` inputs, heads made by ``Reshape`` + ``Transpose(perm=[1, 0, 2])``, softmax over the rows of
``(heads, S, S)``) moves values across axis 0. For such a graph the rewrite prepends one free batch axis ``N`` to
every graph input and output and shifts every axis the nodes name by one (Transpose perms, Reshape targets,
Softmax/Concat/Gather/Split axes, Reduce/Squeeze/Unsqueeze axes): the rewritten graph computes, per sample, exactly
what the original computed on its one tensor. Right-aligned broadcasting of constants is unchanged by a new leading
axis, so constants stay as they are.

It runs only when (1) every graph input has a fully static shape, (2) some node moves data across axis 0 (a
Transpose that moves it, a Reshape that changes its size, an axis-0 softmax/concat/reduction, a MatMul contracting
a computed rank-2 operand's first axis, a constant that varies along it), and (3) every node is of an op whose
meaning does not depend on rank once its axes are shifted (``RANK_FREE``, with Slice starts/axes and Pad pads; a
Gemm with a constant B and no transA counts, and is written as MatMul (+ Add) when the rewrite runs: the out_proj
of torch's batch_first attention exported with batch 1), or of an op that needs its batch axis first
(``BATCH_ONE``: Conv, pooling, BatchNorm) on a tensor whose first axis is 1. With such ops (a ViT's patch
embedding, a Swin transformer's) only a Transpose that moves axis 0 or a Reshape that folds it into windows calls
for the rewrite, and those ops, and element-wise ops with per-channel constants ((C, 1, 1)), run on the original
tensor between Squeeze and Unsqueeze of the new axis 1 (back-to-back pairs cancel); a Flatten becomes a Reshape
to its known shape. Otherwise the graph is left alone (and refused by the importer as before).
``qfx.batch_axis`` = ``added`` in the model metadata records it: data for the rewritten model has one more
leading axis (a stack of whole original tensors); ``qfx quantize`` and ``input_codes`` also take K samples of
the batch-1 model (``(K, ...)`` data gets the axis back).
"""
from __future__ import annotations

import numpy as np

from qfx.onnx.cleanup import QONNX_DOMAIN, _attrs

__all__ = ["add_batch_axis", "RANK_FREE", "BATCH_AXIS_KEY"]

BATCH_AXIS_KEY = "qfx.batch_axis"
_DEFAULT = ("", "ai.onnx")
#: default-domain ops whose meaning does not depend on the rank once their axes are shifted
RANK_FREE = frozenset({
    "Reshape", "Transpose", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp",
    "Log", "Erf", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "Softsign", "Gelu", "Clip", "Max", "Min", "Softmax", "LogSoftmax", "Concat", "Squeeze", "Unsqueeze",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Identity", "Cast", "Constant", "Gather",
    "LayerNormalization", "Slice", "Pad", "Split"})
#: ops that need their batch axis first (Conv, pooling, BatchNorm): in a graph exported with batch 1 they run on
#: the lifted tensor through Squeeze/Unsqueeze of the original, size-1, first axis (a ViT's patch embedding)
BATCH_ONE = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                       "BatchNormalization", "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth"})
#: rank-free once written as MatMul (+ Mul alpha, + Add C): a Gemm with a constant B and no transA (the out_proj of
#: torch's batch_first attention, which runs on (L*N, E) rows)
_GEMM = "Gemm"
#: QONNX ops that are element-wise with right-aligned (broadcast) parameters
_QONNX_ELEMENTWISE = frozenset({"Quant", "BipolarQuant", "Trunc", "FloatQuant"})
_AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "Concat", "Gather", "LayerNormalization", "Split"})
_AXES_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "Squeeze", "Unsqueeze"})
#: the ``axis`` an ``_AXIS_OPS`` node means when it names none (Softmax's depends on the opset)
_AXIS_DEFAULTS = {"Concat": 0, "Gather": 0, "Split": 0, "LayerNormalization": -1}


def _opset(model) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in _DEFAULT), 13)


def _set_attr(node, name: str, value: int | list[int]) -> None:
    """Replace (or add) attribute ``name`` of ``node``."""
    from onnx import helper

    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    node.attribute.append(helper.make_attribute(name, value))


class _Plan:
    def __init__(self, cleaner) -> None:
        self.c = cleaner
        self.g = cleaner.g
        self.consts = cleaner.consts()
        self.shapes = cleaner.known_shapes()
        self.fixed = set(self.consts)  # tensors computed from constants only (a QONNX Quant of a weight)
        for n in self.g.node:
            if all((not i) or i in self.fixed for i in n.input):
                self.fixed.update(o for o in n.output if o)

    def rank(self, t: str) -> int | None:
        if t in self.consts:
            return self.consts[t].ndim
        s = self.shapes.get(t)
        return len(s) if s is not None else None

    def _axes_of(self, n) -> list[int] | None:
        a = _attrs(n).get("axes")
        if a is not None:
            return [int(v) for v in a]
        if len(n.input) > 1 and n.input[1]:
            v = self.consts.get(n.input[1])
            return None if v is None else [int(x) for x in np.asarray(v).ravel()]
        return []

    def applies(self) -> str | None:
        """The node that moves data across axis 0 when the rewrite applies, else None."""
        inputs = self.c.data_inputs()
        if not inputs:
            return None
        for vi in inputs:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) < 2 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
                return None
        crossing, moved, batch_one = None, None, False
        for n in self.g.node:
            if n.domain == QONNX_DOMAIN and n.op_type in _QONNX_ELEMENTWISE:
                continue
            if n.domain not in _DEFAULT or n.op_type not in RANK_FREE and not self._gemm_ok(n):
                if not self._batch_one_ok(n):
                    return None
                batch_one = True
            if crossing is None and self._crosses(n):
                crossing = n.name or n.op_type
            if moved is None and self._moves_batch(n):
                moved = n.name or n.op_type
        # with convolutions, only a Transpose that moves the batch axis (a ViT's attention) or a Reshape that
        # folds it into windows (a Swin transformer) calls for it: the importer takes a Conv graph's other batch-1
        # idioms as they are
        return moved if batch_one else crossing

    def _moves_batch(self, n) -> bool:
        """A Transpose that moves axis 0, or a Reshape of a batch-1 tensor into one whose axis 0 is larger and
        that keeps at least three axes (windows: (1, H, W, C) -> (windows, tokens, C))."""
        if n.op_type == "Transpose":
            return self._crosses(n)
        if n.op_type == "Reshape":
            a, b = self.shapes.get(n.input[0]), self.shapes.get(n.output[0])
            return a is not None and b is not None and a[0] == 1 and b[0] > 1 and len(b) >= 3
        return False

    def _batch_one_ok(self, n) -> bool:
        """A ``BATCH_ONE`` op on a tensor whose first axis is 1, or a Flatten with known shapes (it becomes a
        Reshape); only its first output is read."""
        if any(o for o in n.output[1:]) and any(self.c.consumers(o) for o in n.output[1:] if o):
            return False
        if n.op_type == "Flatten":
            return n.input[0] in self.shapes and n.output[0] in self.shapes
        s = self.shapes.get(n.input[0]) if n.input else None
        return n.op_type in BATCH_ONE and s is not None and len(s) > 1 and s[0] == 1

    def _gemm_ok(self, n) -> bool:
        a = _attrs(n)
        return n.op_type == _GEMM and not int(a.get("transA", 0)) and len(n.input) > 1 and n.input[1] in self.consts

    def _crosses(self, n) -> bool:
        op = n.op_type
        data = [i for i in n.input if i and i not in self.fixed]
        if not data or op in BATCH_ONE or op == "Flatten":  # these keep their first (batch) axis
            return False
        if op == "Transpose":
            perm = _attrs(n).get("perm")
            return perm is None or int(perm[0]) != 0
        if op == "Reshape":
            a, b = self.shapes.get(n.input[0]), self.shapes.get(n.output[0])
            return a is None or b is None or a[0] != b[0]
        if op == "Gather" and n.input[0] in self.fixed:  # rows of a table picked by data indices (an embedding)
            return False
        if op in _AXIS_OPS:
            r = self.rank(n.input[0])
            ax = int(_attrs(n).get("axis", _AXIS_DEFAULTS.get(op, 1)))
            return r is None or ax % r == 0
        if op in _AXES_OPS:
            axes, r = self._axes_of(n), self.rank(n.input[0] if op != "Unsqueeze" else n.output[0])
            if axes is None or r is None:
                return True
            if not axes:  # reduce over every axis; squeeze of every size-1 axis
                return op != "Unsqueeze"
            return any(int(x) % r == 0 for x in axes)
        if op == "MatMul":
            return len(n.input) > 1 and n.input[1] not in self.fixed and self.rank(n.input[1]) == 2
        if op == _GEMM:  # rows of A stay rows; only a 2-D C with several rows varies along axis 0
            c = self.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            return c is not None and c.ndim == 2 and c.shape[0] > 1
        r = self.rank(n.output[0])
        for i in n.input:  # a constant that varies along the first axis of a full-rank operand
            v = self.consts.get(i)
            if v is not None and r is not None and v.ndim == r and v.shape[0] > 1:
                return True
        return False


def _shift_axes(plan: _Plan, n, fresh) -> bool:
    """Shift the axes ``n`` names by one (False: cannot; the rewrite is then not done)."""
    op = n.op_type
    if op == "Transpose":
        perm = _attrs(n).get("perm")
        if perm is None:
            r = plan.rank(n.input[0])
            if r is None:
                return False
            perm = list(range(r))[::-1]
        _set_attr(n, "perm", [0] + [int(p) + 1 for p in perm])
    elif op == "Reshape":
        tgt = plan.consts.get(n.input[1])
        if tgt is None:
            return False
        tgt = [int(v) for v in np.asarray(tgt).ravel()]
        if int(_attrs(n).get("allowzero", 0)) and 0 not in tgt:  # (the dynamo exporter's) same meaning without 0s
            _set_attr(n, "allowzero", 0)
        if int(_attrs(n).get("allowzero", 0)):
            if -1 in tgt:
                return False
            lead = -1
        else:
            lead = 0  # copies the new batch axis
        n.input[1] = fresh(np.asarray([lead, *tgt], dtype=np.int64), n.input[1])
    elif op == "Slice":
        if len(n.input) < 3:  # opset < 10: starts/ends/axes attributes
            a = _attrs(n)
            axes = [int(v) for v in a.get("axes", range(len(a["starts"])))]
            _set_attr(n, "axes", [v + 1 if v >= 0 else v for v in axes])
        else:
            starts = plan.consts.get(n.input[1])
            if starts is None:
                return False
            if len(n.input) > 3 and n.input[3]:
                axes = plan.consts.get(n.input[3])
                if axes is None:
                    return False
                axes = [int(v) for v in np.asarray(axes).ravel()]
            else:
                axes = list(range(np.asarray(starts).size))
            while len(n.input) < 4:
                n.input.append("")
            n.input[3] = fresh(np.asarray([v + 1 if v >= 0 else v for v in axes], dtype=np.int64),
                               f"{n.name or 'slice'}_axes")
    elif op == "Pad":
        if len(n.input) > 3 and n.input[3]:  # opset 18 axes
            axes = plan.consts.get(n.input[3])
            if axes is None:
                return False
            n.input[3] = fresh(np.asarray([int(v) + 1 if int(v) >= 0 else int(v) for v in np.asarray(axes).ravel()],
                                          dtype=np.int64), n.input[3])
        elif len(n.input) > 1 and n.input[1]:
            pads = plan.consts.get(n.input[1])
            if pads is None:
                return False
            p = [int(v) for v in np.asarray(pads).ravel()]
            r = len(p) // 2
            n.input[1] = fresh(np.asarray([0, *p[:r], 0, *p[r:]], dtype=np.int64), n.input[1])
        else:  # opset < 11: a pads attribute
            p = [int(v) for v in _attrs(n).get("pads", [])]
            r = len(p) // 2
            _set_attr(n, "pads", [0, *p[:r], 0, *p[r:]])
    elif op in _AXIS_OPS:
        default = _AXIS_DEFAULTS.get(op, -1 if _opset(plan.c.m) >= 13 else 1)
        ax = int(_attrs(n).get("axis", default))
        if ax >= 0:
            _set_attr(n, "axis", ax + 1)
        if op == "Concat":  # its operands share one rank: constant ones (a ViT's class token) get the axis too
            for k, i in enumerate(n.input):
                if i in plan.consts:
                    n.input[k] = fresh(np.asarray(plan.consts[i])[None], i)
                elif i in plan.fixed:
                    return False
    elif op in _AXES_OPS:
        axes = plan._axes_of(n)
        if axes is None:
            return False
        if not axes:
            if op in ("Squeeze", "Unsqueeze"):
                return op == "Unsqueeze"
            r = plan.rank(n.input[0])
            if r is None or int(_attrs(n).get("noop_with_empty_axes", 0)):
                return False
            axes = list(range(r))
        new = [a + 1 if a >= 0 else a for a in axes]
        if _attrs(n).get("axes") is not None:
            _set_attr(n, "axes", new)
        elif len(n.input) > 1 and n.input[1]:
            n.input[1] = fresh(np.asarray(new, dtype=np.int64), n.input[1])
        elif _opset(plan.c.m) < 18 or op in ("Squeeze", "Unsqueeze"):
            _set_attr(n, "axes", new)
        else:  # opset 18 reductions take their axes as an input
            while len(n.input) < 2:
                n.input.append("")
            n.input[1] = fresh(np.asarray(new, dtype=np.int64), f"{n.name or op}_axes")
    return True


def _gemms_as_matmuls(plan: _Plan, fresh) -> None:
    """Gemm(A, B, C) with a constant B and no transA as ``MatMul(A, B') * alpha + beta * C``: the same values, and
    a MatMul does not care how many leading axes A has."""
    from onnx import helper

    nodes = []
    for n in plan.g.node:
        if n.domain not in _DEFAULT or n.op_type != _GEMM:
            nodes.append(n)
            continue
        a = _attrs(n)
        b = np.asarray(plan.consts[n.input[1]])
        b = b.T if int(a.get("transB", 0)) else b
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        base = n.name or n.output[0]
        out = n.output[0]
        has_c = len(n.input) > 2 and n.input[2]
        mm = f"{base}__mm" if (alpha != 1.0 or has_c) else out
        nodes.append(helper.make_node("MatMul", [n.input[0], fresh(np.ascontiguousarray(b * alpha), f"{base}_w")],
                                      [mm], name=f"{base}/matmul"))
        if has_c:
            c = plan.consts.get(n.input[2])
            bias = fresh(np.asarray(c * beta, dtype=np.float32), f"{base}_c") if c is not None else n.input[2]
            nodes.append(helper.make_node("Add", [mm, bias], [out], name=f"{base}/bias"))
    del plan.g.node[:]
    plan.g.node.extend(nodes)


def _flattens_as_reshapes(plan: _Plan, fresh) -> None:
    """Flatten (always rank 2) as a Reshape to its known output shape, which the shift then lifts."""
    from onnx import helper

    nodes = []
    for n in plan.g.node:
        if n.domain in _DEFAULT and n.op_type == "Flatten":
            tgt = np.asarray(plan.shapes[n.output[0]], dtype=np.int64)
            n = helper.make_node("Reshape", [n.input[0], fresh(tgt, f"{n.name or 'flatten'}_shape")], [n.output[0]],
                                 name=n.name)
        nodes.append(n)
    del plan.g.node[:]
    plan.g.node.extend(nodes)


#: element-wise ops that may carry per-channel constants ((C, 1, 1): a conv stem's BatchNorm or scale)
_ELEMENTWISE_CONST = frozenset({"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"})


def _original_inputs(plan: _Plan, n) -> list[int]:
    """Positions of the inputs that ``n`` must read unlifted (the original tensor, first axis 1): the data input
    of a ``BATCH_ONE`` op; every data input of an element-wise op with a constant shaped for per-channel
    broadcasting ((C, 1, 1): the importer reads such constants per channel of the first per-sample axis) on
    tensors whose original first axis is 1. Empty: ``n`` runs lifted."""
    if n.domain not in _DEFAULT:
        return []
    if n.op_type in BATCH_ONE:
        return [0]
    if n.op_type not in _ELEMENTWISE_CONST:
        return []
    data = [k for k, i in enumerate(n.input) if i and i not in plan.fixed]
    out = plan.shapes.get(n.output[0])
    if not data or out is None or out[0] != 1 or len(out) < 3 or any(
            plan.shapes.get(n.input[k], (0,))[0] != 1 or len(plan.shapes.get(n.input[k], ())) != len(out)
            for k in data):
        return []
    consts = [plan.consts[i] for i in n.input if i in plan.consts]
    return data if any(c.ndim >= 2 and c.shape[-1] == 1 for c in consts) else []


def _unlifted(plan: _Plan, fresh) -> None:
    """The nodes ``_original_inputs`` names read those inputs through Squeeze(axis 1) (the original size-1 first
    axis) and their output is lifted back by Unsqueeze(axis 1); a Squeeze of such an Unsqueeze reads the
    Unsqueeze's input instead (the pair cancels; ``dead()`` drops what is left unread)."""
    from onnx import helper

    new_axes = _opset(plan.c.m) >= 13
    axis: list[str] = []  # one shared axes=[1] initializer (opset >= 13: an input)
    nodes, lifted = [], {}  # lifted: Unsqueeze output -> the original tensor it lifts
    for n in plan.g.node:
        picks = _original_inputs(plan, n)
        if not picks:
            nodes.append(n)
            continue
        if new_axes and not axis:
            axis.append(fresh(np.asarray([1], dtype=np.int64), "qfx_unlift_axis"))
        kw = {} if new_axes else {"axes": [1]}
        base = n.name or n.op_type
        for k in picks:
            if n.input[k] in lifted:
                n.input[k] = lifted[n.input[k]]
                continue
            sq = f"{base}__sq_in{k}"
            nodes.append(helper.make_node("Squeeze", [n.input[k], *axis], [sq], name=f"{base}/unlift{k}", **kw))
            n.input[k] = sq
        y = n.output[0]
        n.output[0] = f"{base}__sq_out"
        lifted[y] = n.output[0]
        nodes.append(n)
        nodes.append(helper.make_node("Unsqueeze", [n.output[0], *axis], [y], name=f"{base}/lift", **kw))
    del plan.g.node[:]
    plan.g.node.extend(nodes)


def add_batch_axis(cleaner) -> None:
    """Apply the rewrite to ``cleaner``'s graph when it applies (see the module doc); a report line says so."""
    import onnx

    plan = _Plan(cleaner)
    where = plan.applies()
    if where is None:
        return
    backup = onnx.ModelProto()
    backup.CopyFrom(cleaner.m)
    used = {i.name for i in cleaner.g.initializer} | {o for n in cleaner.g.node for o in n.output}

    def fresh(value: np.ndarray, base: str) -> str:
        k = 0
        while f"{base}__b{k}" in used:
            k += 1
        name = f"{base}__b{k}"
        used.add(name)
        cleaner.set_init(name, value)
        plan.consts[name] = value
        plan.fixed.add(name)
        return name

    _gemms_as_matmuls(plan, fresh)
    _flattens_as_reshapes(plan, fresh)
    for n in cleaner.g.node:
        if n.domain in _DEFAULT and n.op_type not in BATCH_ONE and not _shift_axes(plan, n, fresh):
            cleaner.m.CopyFrom(backup)  # leave the graph as it was: the importer refuses it in one line
            cleaner.g = cleaner.m.graph
            return
    _unlifted(plan, fresh)
    for vi in (*cleaner.data_inputs(), *cleaner.g.output):
        shape = vi.type.tensor_type.shape
        old = [onnx.TensorShapeProto.Dimension.FromString(d.SerializeToString()) for d in shape.dim]
        del shape.dim[:]
        shape.dim.add().dim_param = "N"
        shape.dim.extend(old)
    del cleaner.g.value_info[:]
    cleaner.meta[BATCH_AXIS_KEY] = "added"
    cleaner.report.append(f"fixed-shape graph whose first axis is data, not a batch (node {where!r} moves values "
                          f"across it): each whole input tensor is one sample, a batch axis N was prepended")
