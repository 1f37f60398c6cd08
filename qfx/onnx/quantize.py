"""Post-training quantization of a float ONNX model into a QONNX model that qfx imports (``qfx quantize``).

A float model (torch/Keras export) has float weights and float activations; qfx needs fixed point. This pass
inserts QONNX ``Quant`` nodes with **power-of-two scales** (fixed-point binary points) calibrated on data:

* the graph input, and the output of every value-changing op (Conv, Gemm, MatMul, Add, BatchNormalization, Relu,
  pooling averages, ...) at the end of its chain: a tensor whose only reader is Relu, BatchNormalization or an
  Add/Sub/Mul/Div by a constant is not quantized itself (the chain's end is), so ``Conv -> BN -> Relu`` rounds once;
  MaxPool, Flatten and Reshape keep formats and are not quantized;
* weights (``weight_bits``) and biases (``bias_bits``) as per-tensor Quant nodes on their initializers.

Binary points come from the calibration range: the smallest power-of-two scale for which the largest |value| seen
fits ``bits`` (unsigned when nothing negative was seen). A Softmax stays (its input is quantized to the activation
width; the importer makes it qfx's ``softmax`` op with a 16-bit output); a trailing LogSoftmax is dropped (argmax is
unchanged; qfx has no log-softmax op). Float functions (Sigmoid, Tanh, HardSwish, ...) read a quantized tensor and
become tables; their outputs are quantized like any activation. The model is first cleaned (``qfx.onnx.cleanup``),
so the written file is the cleaned graph; a layout transpose folded at an input is recorded as
``qfx.input_perm:<input>`` and applied to the calibration data. Several graph inputs: calibration data is one array
per input name (a dict, or an ``.npz`` on the command line). A fixed-shape graph whose first axis is not a
batch (``qfx.onnx.whole_sample``) takes each whole input tensor as one sample: calibration data is a stack of them
(or one tensor of the model's own shape; for a model exported with batch 1, K samples of its other axes). The result runs in QONNX's executor as it is and imports
into qfx without options.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from qfx.errors import BadInputError, UnsupportedError
from qfx.onnx.cleanup import QONNX_DOMAIN, QONNX_OPS, _attrs, cleanup
from qfx.onnx.whole_sample import BATCH_AXIS_KEY

__all__ = ["quantize_onnx", "QUANTIZED_OPS"]

#: ops whose output is (the end of a chain that is) quantized
QUANTIZED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "BatchNormalization", "Relu",
                           "AveragePool", "GlobalAveragePool", "Clip", "ReduceMean", "LeakyRelu", "PRelu", "Sigmoid",
                           "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "Softsign", "Erf", "Gelu",
                           "Mish", "Pow", "ReduceMax", "ReduceMin", "ReduceSum", "Where", "Sqrt", "Exp", "Log", "Reciprocal", "Abs", "Celu",
                           "ThresholdedRelu"})
#: a tensor read only by one of these (with constant other operands) is not quantized: the chain goes on
_CHAIN = frozenset({"Relu", "BatchNormalization", "Add", "Sub", "Mul", "Div"})
_WEIGHT_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1, None)}
#: a Gather that looks rows of a constant table up by computed indices (an embedding): the table is a weight
_TABLE_SLOTS = {"Gather": (0, None)}
#: ONNX element types of integer graph inputs (token indices)
_INT_TYPES = frozenset({2, 3, 4, 5, 6, 7, 12, 13})


def free_batch(model):
    """A copy of ``model`` whose inputs and outputs have a free batch dimension (exporters often fix it to 1)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in (*m.graph.input, *m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    del m.graph.value_info[:]
    return m


def quiet_options():
    """onnxruntime session options that keep its own error log quiet: a batched run that fails on a graph with a
    fixed batch (retried one sample at a time) is expected, not an error to print."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    return opts


def run_batches(sess, iname: str, x: np.ndarray) -> list[np.ndarray]:
    """All outputs of an onnxruntime session over ``x``: in batches, or one sample at a time when the graph fixes
    the batch inside (a Reshape to (1, -1), a Keras Flatten)."""
    try:
        return [np.concatenate(v) for v in zip(*(sess.run(None, {iname: x[i:i + 256]})
                                                 for i in range(0, len(x), 256)))]
    except Exception:
        return [np.concatenate(v) for v in zip(*(sess.run(None, {iname: x[i:i + 1]}) for i in range(len(x))))]


def run_feeds(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``run_batches`` for several graph inputs (``feeds``: one array per input name, the same N)."""
    n = len(next(iter(feeds.values())))
    try:
        return [np.concatenate(v) for v in zip(*(sess.run(None, {k: a[i:i + 256] for k, a in feeds.items()})
                                                 for i in range(0, n, 256)))]
    except Exception:
        return [np.concatenate(v) for v in zip(*(sess.run(None, {k: a[i:i + 1] for k, a in feeds.items()})
                                                 for i in range(n)))]


def _pow2_scale(lo: float, hi: float, bits: int) -> tuple[float, bool]:
    """(power-of-two scale, signed) so that [lo, hi] fits ``bits``-bit codes."""
    signed = lo < 0
    m = max(abs(lo), abs(hi))
    qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    if m <= 0 or not math.isfinite(m):
        return 1.0, signed
    return 2.0 ** math.ceil(math.log2(m / qmax)), signed


class _Quantizer:
    def __init__(self, model, calib: dict[str, np.ndarray], weight_bits: int, act_bits: int, bias_bits: int,
                 input_bits: int | None) -> None:
        for n in model.graph.node:
            if n.op_type in QONNX_OPS or n.op_type in ("QuantizeLinear", "MultiThreshold"):
                raise UnsupportedError(f"model is already quantized (node {n.name or n.op_type!r} is "
                                       f"{n.op_type}); import it directly with qfx export")
        for b, what in ((weight_bits, "weight"), (act_bits, "activation"), (bias_bits, "bias"),
                        (input_bits or act_bits, "input")):
            if not 2 <= int(b) <= 24:
                raise BadInputError(f"{what} bits must be in 2..24, got {b}")
        self.m, self.report = cleanup(model)
        self.g = self.m.graph
        self.wb, self.ab, self.bb = int(weight_bits), int(act_bits), int(bias_bits)
        self.ib = int(input_bits or act_bits)
        # calibration arrays by the cleaned graph's input names (the clean-up may rename a transposed input; it keeps
        # the inputs' positions), laid out as the cleaned inputs (qfx.input_perm:<input>)
        inits = {i.name for i in model.graph.initializer}
        before = [i.name for i in model.graph.input if i.name not in inits]
        after = [i.name for i in self.g.input if i.name not in {t.name for t in self.g.initializer}]
        if set(calib) != set(before):
            raise BadInputError(f"calibration data names {sorted(calib)} but the model's inputs are {before}")
        props = {p.key: p.value for p in self.m.metadata_props}
        self.calib: dict[str, np.ndarray] = {}
        whole = props.get(BATCH_AXIS_KEY) == "added"
        fixed = {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in model.graph.input}
        ints = {i.name for i in model.graph.input if i.type.tensor_type.elem_type in _INT_TYPES}
        self.int_inputs = {new for old, new in zip(before, after) if old in ints}
        for old, new in zip(before, after):
            # token indices stay integers (onnxruntime checks the type); everything else is float data
            x = np.asarray(calib[old], dtype=np.int64 if old in ints else np.float32)
            shape = fixed.get(old, ())
            if whole and x.ndim == len(shape):
                if shape and shape[0] == 1 and x.shape[1:] == shape[1:] and x.shape != shape:
                    x = x[:, None]  # K samples of a model exported with batch 1 (batch-first attention)
                else:  # one whole tensor of the fixed-shape model: one sample
                    x = x[None]
            perm = props.get(f"qfx.input_perm:{new}") or (props.get("qfx.input_perm") if len(after) == 1 else None)
            self.calib[new] = np.transpose(x, [int(p) for p in perm.split(",")]) if perm else x
        self.k = 0

    def _consumers(self, t: str) -> list[Any]:
        return [n for n in self.g.node if t in n.input]

    def _rename_uses(self, old: str, new: str, skip: Any = None) -> None:
        for n in self.g.node:
            if n is skip:
                continue
            for i, v in enumerate(n.input):
                if v == old:
                    n.input[i] = new

    def drop_softmax(self) -> None:
        outs = {o.name for o in self.g.output}
        for n in list(self.g.node):
            if n.op_type == "LogSoftmax" and n.output[0] in outs and not self._consumers(n.output[0]):
                src = n.input[0]
                prod = next((p for p in self.g.node if src in p.output), None)
                if prod is None or len(self._consumers(src)) != 1:
                    continue
                prod.output[list(prod.output).index(src)] = n.output[0]
                self.g.node.remove(n)
                self.report.append(f"dropped the final {n.op_type} {n.name or n.output[0]!r} (argmax unchanged; "
                                   f"qfx has no log-softmax op)")

    def candidates(self) -> list[str]:
        consts = {i.name for i in self.g.initializer}
        outs = {o.name for o in self.g.output}
        cands = []
        for n in self.g.node:
            if n.op_type not in QUANTIZED_OPS or n.domain not in ("", "ai.onnx"):
                continue
            t = n.output[0]
            users = self._consumers(t)
            if t not in outs and len(users) == 1 and users[0].op_type in _CHAIN and \
                    all(i == t or i in consts for i in users[0].input if i):
                continue  # the chain continues: quantize its end
            if t not in outs and len(users) == 1 and users[0].op_type == "Where" and t in users[0].input[1:] and \
                    n.op_type in ("Mul", "Div", "Add", "Sub") and sum(i not in consts for i in n.input if i) == 1:
                continue  # a branch of Where that is its input scaled/shifted by constants: part of Where's table
            cands.append(t)
        return cands

    def ranges(self, tensors: list[str]) -> dict[str, tuple[float, float]]:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        probe = free_batch(self.m)
        have = {o.name for o in probe.graph.output}
        for t in tensors:
            if t not in have:
                probe.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
        try:
            sess = ort.InferenceSession(probe.SerializeToString(), quiet_options(),
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BadInputError(f"onnxruntime cannot run the float model for calibration: "
                                f"{(str(exc).splitlines() or [''])[0][:160]}") from None
        names = [o.name for o in sess.get_outputs()]
        lo = {t: math.inf for t in names}
        hi = {t: -math.inf for t in names}
        try:
            outs = run_feeds(sess, self.calib)
        except Exception as exc:
            shapes = {k: v.shape for k, v in self.calib.items()}
            raise BadInputError(f"calibration data of shape(s) {shapes} does not run through the model: "
                                f"{(str(exc).splitlines() or [''])[0][:160]}") from None
        for t, v in zip(names, outs):
            if v.size:
                lo[t], hi[t] = float(v.min()), float(v.max())
        for k, x in self.calib.items():
            lo[k], hi[k] = float(x.min()), float(x.max())
        return {t: (lo[t], hi[t]) for t in [*tensors, *self.calib]}

    def _quant_node(self, src: str, scale: float, bits: int, signed: bool, what: str) -> str:
        from onnx import helper, numpy_helper

        self.k += 1
        base = f"qfx_q{self.k}"
        for suffix, v in (("scale", scale), ("zeropt", 0.0), ("bits", float(bits))):
            self.g.initializer.append(numpy_helper.from_array(np.array(v, dtype=np.float32), f"{base}_{suffix}"))
        out = f"{src}__q"
        node = helper.make_node("Quant", [src, f"{base}_scale", f"{base}_zeropt", f"{base}_bits"], [out],
                                name=f"{base}_{what}", domain=QONNX_DOMAIN, signed=int(signed), narrow=0,
                                rounding_mode="ROUND")
        return out, node

    def run(self):
        from onnx import helper, numpy_helper

        self.drop_softmax()
        cands = self.candidates()
        rng = self.ranges(cands)
        inits = {i.name: numpy_helper.to_array(i) for i in self.g.initializer}
        new_nodes: list[Any] = []
        for iname in self.calib:  # every data input
            if iname in self.int_inputs:  # embedding indices: exact integers, the importer sizes them
                self.report.append(f"input {iname!r}: integer indices, kept exact")
                continue
            s, signed = _pow2_scale(*rng[iname], self.ib)
            q_in, node = self._quant_node(iname, s, self.ib, signed, "input")
            new_nodes.append(node)
            self._rename_uses(iname, q_in, skip=node)
            self.report.append(f"input {iname!r}: {self.ib} bits, scale 2**{int(math.log2(s))}")
        count = {"weights": 0, "activations": 0}
        for n in list(self.g.node):
            # weights and biases of linear layers
            slots = _WEIGHT_SLOTS.get(n.op_type)
            if n.op_type in _TABLE_SLOTS and len(n.input) > 1 and n.input[1] not in inits and \
                    int(_attrs(n).get("axis", 0)) == 0:
                slots = _TABLE_SLOTS[n.op_type]
            if slots:
                for slot, bits in zip(slots, (self.wb, self.bb)):
                    if slot is None or len(n.input) <= slot or n.input[slot] not in inits:
                        continue
                    w = inits[n.input[slot]]
                    sw, _ = _pow2_scale(-float(np.abs(w).max(initial=0)), float(np.abs(w).max(initial=0)), bits)
                    q, qn = self._quant_node(n.input[slot], sw, bits, True, "weight" if slot == 1 else "bias")
                    new_nodes.append(qn)
                    n.input[slot] = q
                    count["weights"] += 1
            if n.op_type == "Add" and len(n.input) == 2:  # a bias added after MatMul/Gemm/Conv
                ci = [k for k, i in enumerate(n.input) if i in inits]
                prod = next((p for p in self.g.node if n.input[1 - ci[0]] in p.output), None) if len(ci) == 1 \
                    else None
                if prod is not None and prod.op_type in _WEIGHT_SLOTS:
                    b = inits[n.input[ci[0]]]
                    sb, _ = _pow2_scale(-float(np.abs(b).max(initial=0)), float(np.abs(b).max(initial=0)), self.bb)
                    q, qn = self._quant_node(n.input[ci[0]], sb, self.bb, True, "bias")
                    new_nodes.append(qn)
                    n.input[ci[0]] = q
                    count["weights"] += 1
            new_nodes.append(n)
            if n.output and n.output[0] in cands:
                t = n.output[0]
                s, signed = _pow2_scale(*rng[t], self.ab)
                q, qn = self._quant_node(t, s, self.ab, signed, "act")
                new_nodes.append(qn)
                self._rename_uses(t, q, skip=qn)
                for o in self.g.output:
                    if o.name == t:  # keep the graph output's name: the Quant writes it
                        n.output[0] = f"{t}__raw"
                        qn.input[0] = f"{t}__raw"
                        qn.output[0] = t
                        self._rename_uses(q, t, skip=qn)
                count["activations"] += 1
        del self.g.node[:]
        self.g.node.extend(new_nodes)
        if not any(o.domain == QONNX_DOMAIN for o in self.m.opset_import):
            self.m.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        self.m.producer_name = "qfx quantize"
        self.report.append(f"quantized {count['weights']} weight/bias tensor(s) and {count['activations']} "
                           f"activation(s): weights {self.wb} bits, biases {self.bb}, activations {self.ab}")
        return self.m, self.report


def quantize_onnx(model, calib: np.ndarray | Mapping[str, np.ndarray], weight_bits: int = 8, act_bits: int = 8,
                  bias_bits: int = 16, input_bits: int | None = None) -> tuple[Any, list[str]]:
    """A QONNX copy of float ``model`` with power-of-two Quant nodes calibrated on ``calib`` (see the module doc):
    one (N, ...) array for a single-input model, or one array per input name (an ``.npz``); returns (model, report
    lines)."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if isinstance(calib, Mapping) or hasattr(calib, "files"):  # dict or numpy's NpzFile
        data = {str(k): np.asarray(calib[k]) for k in (calib.files if hasattr(calib, "files") else calib)}
    else:
        if len(names) != 1:
            raise BadInputError(f"the model has {len(names)} inputs {names}: give calibration data as an .npz (a dict) "
                                f"with one array per input name")
        data = {names[0]: np.asarray(calib)}
    ns = {len(v) if v.ndim else 0 for v in data.values()}
    for k, v in data.items():
        if v.ndim < 2 or v.shape[0] < 1 or not np.all(np.isfinite(v)):
            raise BadInputError(f"calibration data for {k!r} must be a finite (N, ...) array, got shape {v.shape}")
    if len(ns) != 1:
        raise BadInputError(f"calibration arrays have different sample counts {sorted(ns)}")
    return _Quantizer(model, data, weight_bits, act_bits, bias_bits, input_bits).run()


def multi_input_agreement(model, graph, calib: Mapping[str, np.ndarray]) -> str:
    """Largest difference (and argmax agreement) of qfx's interpreter vs the float model on output 0, for
    calibration data given per input name (several graph inputs); '' when the float model does not run."""
    import onnxruntime as ort

    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values

    try:
        sess = ort.InferenceSession(free_batch(model).SerializeToString(), quiet_options(),
                                    providers=["CPUExecutionProvider"])
        feeds = {i.name: np.asarray(calib[i.name], dtype=np.float32) for i in sess.get_inputs()}
        ref = run_feeds(sess, feeds)[0]
    except Exception:  # custom ops or names that do not match: no comparison
        return ""
    n = len(next(iter(feeds.values())))
    codes = {t: input_codes(graph, feeds[name], k) for k, (t, name) in enumerate(zip(graph.inputs, feeds))}
    y = run(graph, codes)
    got = output_values(graph, y[graph.outputs[0]] if isinstance(y, dict) else y).reshape(n, -1)
    ref = np.asarray(ref, dtype=np.float64).reshape(n, -1)
    return agreement_text(got, ref)


def agreement_text(got: np.ndarray, ref: np.ndarray) -> str:
    """One line comparing the fixed-point outputs ``got`` with the float reference ``ref`` (both (n, k)); empty when
    their shapes differ (nothing comparable)."""
    if got.shape != ref.shape:
        return ""
    txt = f"max |diff| {np.abs(got - ref).max():.3g} (largest |output| {np.abs(ref).max():.3g})"
    if ref.shape[1] > 1:
        txt = f"argmax equal {100 * np.mean(got.argmax(1) == ref.argmax(1)):.1f} %, " + txt
    return txt
