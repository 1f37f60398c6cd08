"""Float models written by torch's new ONNX exporter (``torch.onnx.export(..., dynamo=True)``) quantize and import.

The dynamo exporter writes other graphs than the TorchScript one: ``Constant`` nodes with ``value_ints`` /
``value_float`` attributes, ``CastLike(scalar, activation)`` in front of Clip, Shape/Concat-computed Reshape targets
(dynamic batch), ``Squeeze`` on activations, ``MaxPool(ceil_mode=1)``, ``PRelu``, and (torch < 2.6) aten ops wrapped
in model-local functions. Each model here found a gap in the clean-up or the importer; the result must follow
onnxruntime's float output of the original model.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")
nn = torch.nn
F = torch.nn.functional

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qfx.errors import UnsupportedError  # noqa: E402
from qfx.ir.interpret import run  # noqa: E402
from qfx.onnx.cleanup import cleanup  # noqa: E402
from qfx.onnx.importer import import_model, input_codes, output_values  # noqa: E402
from qfx.onnx.quantize import quantize_onnx  # noqa: E402


class PadClip(nn.Module):  # CastLike(scalar, activation) in front of Clip; Pad's Constant pads
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return torch.clamp(self.c(F.pad(x, (1, 1, 1, 1))), -1.0, 1.0)


class ViewFlat(nn.Module):  # dynamic batch: Reshape target from Shape -> Squeeze -> Concat with Constant(value_ints)
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.fc = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.c(x)))
        return self.fc(h.view(h.size(0), -1))


class MeanSqueeze(nn.Module):  # ReduceMean(keepdims=1) -> Squeeze of an activation
    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv2d(2, 3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(F.relu(self.c(x)).mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1))


class CeilPoolPReLU(nn.Module):  # MaxPool(ceil_mode=1) whose windows tile the input; PReLU with one slope
    def __init__(self):
        super().__init__()
        self.c, self.p, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(F.max_pool2d(self.p(self.c(x)), 2, ceil_mode=True), 1))


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.ln, self.f2 = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.f2(F.relu(self.ln(self.f1(x))))


MODELS = {  # name: (module, per-sample input shape, optimize, dynamic batch)
    "pad_clip_castlike": (PadClip, (2, 5, 5), False, False),
    "viewflat_dynamic_batch": (ViewFlat, (2, 6, 6), False, True),
    "mean_keepdim_squeeze": (MeanSqueeze, (2, 5, 5), True, False),
    "ceil_maxpool_prelu": (CeilPoolPReLU, (3, 8, 8), True, False),
    "layernorm_opset18": (LayerNormMLP, (6,), True, False),  # LayerNormalization, written as its steps
}


def _dynamo_export(cls, shape, optimize: bool, dynamic: bool):
    torch.manual_seed(0)
    m = cls().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(m, (torch.zeros(1, *shape),), dynamo=True, input_names=["x"],
                                     output_names=["y"], optimize=optimize, dynamic_shapes=dyn, verbose=False)
    except Exception as exc:  # an exporter that cannot run here (not a qfx bug)
        pytest.skip(f"torch.onnx.export(dynamo=True) failed: {type(exc).__name__}: {str(exc)[:120]}")
    finally:
        logging.disable(logging.NOTSET)
    return prog.model_proto


def _agreement(model, shape, tol: float = 0.08) -> float:
    r = np.random.default_rng(1)
    qm, _ = quantize_onnx(model, r.uniform(-1, 1, (96, *shape)).astype(np.float32))
    g = import_model(qm)
    x = r.uniform(-1, 1, (32, *shape)).astype(np.float32)
    got = output_values(g, run(g, input_codes(g, x))).reshape(len(x), -1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).reshape(len(x), -1)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-9))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dynamo_model_quantizes_and_imports(name):
    cls, shape, optimize, dynamic = MODELS[name]
    model = _dynamo_export(cls, shape, optimize, dynamic)
    err = _agreement(model, shape)
    assert err < 0.08, f"{name}: max error {err:.3f} of the largest output"


def test_dynamo_graph_has_the_forms_the_fixes_cover():
    """Guards the test's premise: the un-optimized dynamo graph carries CastLike and attribute-valued Constants."""
    model = _dynamo_export(PadClip, (2, 5, 5), False, False)
    ops = {n.op_type for n in model.graph.node}
    assert "CastLike" in ops and "Constant" in ops
    cleaned, report = cleanup(model)
    assert {n.op_type for n in cleaned.graph.node} == {"Pad", "Conv", "Clip"}
    assert any("CastLike" in line for line in report)


def _linear_function_model():
    """Two aten_linear calls as a model-local function (the torch < 2.6 dynamo exporter's form) around a Relu."""
    r = np.random.default_rng(0)
    dom = "pkg.onnxscript.torch_lib"
    fn = helper.make_function(dom, "aten_linear", ["x", "w", "b"], ["y"],
                              [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
                               helper.make_node("MatMul", ["x", "wt"], ["m"]),
                               helper.make_node("Add", ["m", "b"], ["y"])], [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("aten_linear", ["x", "W1", "b1"], ["l1"], domain=dom, name="linear"),
             helper.make_node("Relu", ["l1"], ["r"], name="relu"),
             helper.make_node("aten_linear", ["r", "W2", "b2"], ["y"], domain=dom, name="linear_1")]
    inits = [numpy_helper.from_array(r.normal(0, .5, (8, 6)).astype(np.float32), "W1"),
             numpy_helper.from_array(r.normal(0, .1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(r.normal(0, .5, (3, 8)).astype(np.float32), "W2"),
             numpy_helper.from_array(r.normal(0, .1, 3).astype(np.float32), "b2")]
    g = helper.make_graph(nodes, "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(dom, 1)],
                          functions=[fn])
    m.ir_version = 8
    return m


def test_model_local_functions_are_inlined():
    m = _linear_function_model()
    cleaned, report = cleanup(m)
    assert [n.op_type for n in cleaned.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert not cleaned.functions and any("inlined 2" in line or "inlined 1" in line for line in report)
    assert _agreement(m, (6,)) < 0.08


def test_castlike_without_value_info_uses_shape_inference():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Constant", [], ["lo"], value_float=-0.5),
             helper.make_node("Constant", [], ["hi"], value_ints=[1]),
             helper.make_node("CastLike", ["hi", "r"], ["hi_f"]),
             helper.make_node("Clip", ["r", "lo", "hi_f"], ["y"])]
    m = helper.make_model(helper.make_graph(nodes, "c", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    cleaned, _ = cleanup(m)
    assert [n.op_type for n in cleaned.graph.node] == ["Relu", "Clip"]
    hi = next(i for i in cleaned.graph.initializer if i.name == "hi_f")
    assert hi.data_type == TensorProto.FLOAT and numpy_helper.to_array(hi).tolist() == [1.0]
