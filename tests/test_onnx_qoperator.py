"""onnxruntime's QOperator format beyond QLinearConv/QGemm: com.microsoft QLinearAdd, QLinearMul,
QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSigmoid and QLinearLeakyRelu, against
onnxruntime running the quantized model.

Models: small torch float CNNs (a ResNet-style block with a residual add and ``AdaptiveAvgPool2d(1)`` + Linear; two
conv branches concatenated, ``AvgPool2d``, a sigmoid gate ``y * sigmoid(conv(y))`` and LeakyReLU) exported with
``torch.onnx.export(..., dynamo=False)`` and quantized by ``quantize_static(..., QuantFormat.QOperator)`` (uint8
activations, int8 weights per tensor or per channel), plus hand-built graphs for what quantize_static does not write
for them (constant operands, a (C, 1, 1) gate, padded/strided pools, ``channels_last``).

Measure: the share of equal output codes and the largest difference in output LSBs, at the model output and at the
output of every QOperator node (the model cut there). onnxruntime requantizes in float32 (scale ratios rounded to
float32, ``nearbyint`` of float32 products; sigmoid by MLAS's polynomial), qfx with 24-bit dyadic multipliers of the
exact ratios; both round half to even, so codes differ only where the exact value lies within about 2**-24
(relative) of a rounding boundary, by 1 LSB (measured: >= 99.9 % equal per node, 100 % at the outputs).
The qfx executors agree bit for bit: the exported ONNX (onnxruntime) and the HLS C-sim give the interpreter's codes.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfx.errors import UnsupportedError
from qfx.ir import run
from qfx.onnx import import_model, to_onnx_model
from qfx.onnx.importer import input_codes, output_values
from qfx.onnx.runtime import run_onnx_codes

ort = pytest.importorskip("onnxruntime")
MS = "com.microsoft"
NEW_OPS = {"QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
           "QLinearSigmoid", "QLinearLeakyRelu"}
SHAPE = (3, 8, 8)


def _torch_model(kind: str):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Res(nn.Module):  # conv stem, residual block (BatchNorm folded by the exporter), global pool, linear
        def __init__(self):
            super().__init__()
            self.c0 = nn.Conv2d(3, 8, 3, padding=1)
            self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 5)

        def forward(self, x):
            x = torch.relu(self.c0(x))
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return self.fc(torch.flatten(self.pool(torch.relu(x + y)), 1))

    class Cat(nn.Module):  # two conv branches concatenated, average pool, sigmoid gate, LeakyReLU, linear
        def __init__(self):
            super().__init__()
            self.a, self.b, self.g = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 8, 1)
            self.pool, self.act, self.fc = nn.AvgPool2d(2), nn.LeakyReLU(0.1), nn.Linear(8 * 4 * 4, 4)

        def forward(self, x):
            y = self.pool(torch.cat([self.a(x), self.b(x)], 1))
            return self.fc(torch.flatten(self.act(y * torch.sigmoid(self.g(y))), 1))

    torch.manual_seed(0)
    m = {"res": Res, "cat": Cat}[kind]().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    return torch, m


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(kind, per_channel) -> the QOperator model quantize_static writes (built once per module)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.it = iter([{"x": d[None]} for d in data])

        def get_next(self):
            return next(self.it, None)

    d = tmp_path_factory.mktemp("qoperator")
    cache: dict[tuple[str, bool], onnx.ModelProto] = {}

    def get(kind: str, per_channel: bool) -> onnx.ModelProto:
        if (kind, per_channel) not in cache:
            fp, qp = d / f"{kind}.onnx", d / f"{kind}_{int(per_channel)}_qop.onnx"
            if not fp.exists():
                torch, m = _torch_model(kind)
                torch.onnx.export(m, torch.randn(1, *SHAPE), str(fp), input_names=["x"], output_names=["y"],
                                  dynamo=False, opset_version=13)
            data = np.random.default_rng(0).normal(0, 1, (32, *SHAPE)).astype(np.float32)
            quantize_static(str(fp), str(qp), Reader(data), quant_format=QuantFormat.QOperator,
                            per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            cache[kind, per_channel] = onnx.load(qp)
        return cache[kind, per_channel]

    return get


def _ort_outputs(model, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1].astype(np.float32)})[0].reshape(1, -1)
                           for i in range(len(x))])


def compare_ort(model, x: np.ndarray, lsb: float) -> tuple[float, float]:
    """(share of equal output codes, largest difference in output LSBs) of the qfx interpreter vs onnxruntime;
    also checks that qfx's exported ONNX computes the interpreter's bits."""
    g = import_model(model)
    codes = input_codes(g, x)
    y = run(g, codes)
    got = output_values(g, y).reshape(len(x), -1)
    diff = np.abs(got - _ort_outputs(model, x)) / lsb
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), y)
    return float(np.mean(diff < 0.5)), float(diff.max())


def _out_scale_zp(n) -> tuple[str, str]:
    """Names of the output scale and zero point of a QOperator node."""
    k = {"QLinearConcat": 0, "QGemm": 7, "QLinearConv": 6, "QLinearMatMul": 6, "QLinearAdd": 6, "QLinearMul": 6}
    i = k.get(n.op_type, 3)
    return n.input[i], n.input[i + 1]


def cut_at(model, k: int):
    """The model up to node ``k`` (a QOperator node), its output dequantized as the one graph output; and its LSB."""
    n = model.graph.node[k]
    sc, zp = _out_scale_zp(n)
    nodes = list(model.graph.node[:k + 1]) + [helper.make_node("DequantizeLinear", [n.output[0], sc, zp], ["cut"])]
    g = helper.make_graph(nodes, "cut", list(model.graph.input),
                          [helper.make_tensor_value_info("cut", TensorProto.FLOAT, None)],
                          [i for i in model.graph.initializer if any(i.name in nd.input for nd in nodes)])
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    lsb = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == sc)))
    return m, lsb


@pytest.mark.parametrize("kind,per_channel", [("res", False), ("res", True), ("cat", False), ("cat", True)])
def test_quantize_static_qoperator_cnns_match_onnxruntime(quantized, kind, per_channel):
    """Every QOperator node's output (the model cut there) and the model output vs onnxruntime on 150 inputs."""
    model = quantized(kind, per_channel)
    ops = {n.op_type for n in model.graph.node}
    want = {"res": {"QLinearAdd", "QLinearGlobalAveragePool"},
            "cat": {"QLinearConcat", "QLinearAveragePool", "QLinearSigmoid", "QLinearMul", "QLinearLeakyRelu"}}[kind]
    assert want <= ops, ops
    x = np.random.default_rng(5).normal(0, 1.2, (150, *SHAPE))  # includes inputs that saturate
    figures = []
    for k, n in enumerate(model.graph.node):
        if n.op_type in NEW_OPS:
            cut, lsb = cut_at(model, k)
            equal, worst = compare_ort(cut, x, lsb)
            figures.append((n.op_type, equal, worst))
            assert equal >= 0.99 and worst <= 1.001, (n.op_type, equal, worst)
    out_dq = model.graph.node[-1]
    lsb = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == out_dq.input[1])))
    equal, worst = compare_ort(model, x, lsb)
    print(kind, per_channel, figures, ("output", equal, worst))
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)


# ------------------------------------------------------------------------------------------------ hand-built graphs
def _init(name: str, v) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(v), name)


def _model(nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *in_shape])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, *out_shape])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])


def se_block(count_include_pad: int = 1) -> onnx.ModelProto:
    """QLinearAdd of a per-channel uint8 constant, a squeeze-excitation gate (global pool -> sigmoid -> QLinearMul
    of (C, H, W) by (C, 1, 1)), QLinearMul by a constant scalar, a padded strided 3x3 QLinearAveragePool; every op
    with its own scale and zero point (non-power-of-two ratios)."""
    f32, u8 = np.float32, np.uint8
    c = np.random.default_rng(2).integers(0, 256, (1, 4, 1, 1)).astype(u8)
    inits = [_init("sx", f32(0.031)), _init("zx", u8(121)), _init("c", c), _init("sc", f32(0.0123)),
             _init("zc", u8(140)), _init("sa", f32(0.037)), _init("za", u8(118)), _init("sg", f32(0.011)),
             _init("zg", u8(127)), _init("ss", f32(1 / 256)), _init("zs", u8(0)), _init("sm", f32(0.029)),
             _init("zm", u8(125)), _init("k", u8(201)), _init("sk", f32(0.0071)), _init("zk", u8(77)),
             _init("sn", f32(0.043)), _init("zn", u8(131)), _init("sp", f32(0.027)), _init("zp", u8(128))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("QLinearAdd", ["xq", "sx", "zx", "c", "sc", "zc", "sa", "za"], ["aq"], domain=MS),
             helper.make_node("QLinearGlobalAveragePool", ["aq", "sa", "za", "sg", "zg"], ["gq"], domain=MS,
                              channels_last=0),
             helper.make_node("QLinearSigmoid", ["gq", "sg", "zg", "ss", "zs"], ["sq"], domain=MS),
             helper.make_node("QLinearMul", ["aq", "sa", "za", "sq", "ss", "zs", "sm", "zm"], ["mq"], domain=MS),
             helper.make_node("QLinearMul", ["mq", "sm", "zm", "k", "sk", "zk", "sn", "zn"], ["nq"], domain=MS),
             helper.make_node("QLinearAveragePool", ["nq", "sn", "zn", "sp", "zp"], ["pq"], domain=MS,
                              kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=count_include_pad),
             helper.make_node("DequantizeLinear", ["pq", "sp", "zp"], ["y"])]
    return _model(nodes, inits, (4, 6, 6), (4, 3, 3))


def channels_last_pools() -> onnx.ModelProto:
    """QLinearAveragePool (3x3 window: 1/9 in the requantizer) and QLinearGlobalAveragePool on (N, H, W, C)."""
    f32, u8 = np.float32, np.uint8
    inits = [_init("sx", f32(0.031)), _init("zx", u8(121)), _init("sp", f32(0.017)), _init("zp", u8(125)),
             _init("sg", f32(0.013)), _init("zg", u8(119))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("QLinearAveragePool", ["xq", "sx", "zx", "sp", "zp"], ["pq"], domain=MS,
                              kernel_shape=[3, 3], channels_last=1),
             helper.make_node("QLinearGlobalAveragePool", ["pq", "sp", "zp", "sg", "zg"], ["gq"], domain=MS,
                              channels_last=1),
             helper.make_node("DequantizeLinear", ["gq", "sg", "zg"], ["y"])]
    return _model(nodes, inits, (6, 6, 4), (1, 1, 4))


@pytest.mark.parametrize("build,shape,lsb", [(se_block, (4, 6, 6), 0.027), (channels_last_pools, (6, 6, 4), 0.013)])
def test_hand_built_qoperator_graphs_match_onnxruntime(build, shape, lsb):
    model = build()
    g = import_model(model)
    ops = [n.op.value for n in g.nodes]
    if build is se_block:
        assert {"upsample2d", "mul", "lut", "avgpool2d"} <= set(ops), ops
    else:
        assert ops.count("transpose") == 4, ops
    equal, worst = compare_ort(model, np.random.default_rng(1).normal(0, 1.5, (300, *shape)), lsb)
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)


def test_qoperator_tables_and_concat_round_once(quantized):
    """QLinearSigmoid/QLinearLeakyRelu are one ``lut`` each whose entries are the output codes (no requantizer
    after them); QLinearConcat requantizes each input and concatenates the codes."""
    g = import_model(quantized("cat", False))
    ops = [n.op.value for n in g.nodes]
    assert ops.count("lut") == 2 and ops.count("concat") == 1 and ops.count("mul") == 1, ops
    for i, n in enumerate(g.nodes):
        if n.op.value == "lut":
            assert g.nodes[i + 1].op.value != "scale_shift", ops


# ------------------------------------------------------------------------------------------------ refusals
def _one_line(model, match: str) -> str:
    with pytest.raises(UnsupportedError, match=match) as e:
        import_model(model)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_dynamic_quantization_refused_in_one_line(tmp_path):
    """quantize_dynamic (DynamicQuantizeLinear + MatMulInteger/ConvInteger): scales are computed at run time."""
    torch = pytest.importorskip("torch")
    from torch import nn
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    fp, qp = tmp_path / "f.onnx", tmp_path / "d.onnx"
    torch.onnx.export(m, torch.randn(1, 2, 6, 6), str(fp), input_names=["x"], dynamo=False, opset_version=13)
    quantize_dynamic(str(fp), str(qp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    model = onnx.load(qp)
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    msg = _one_line(model, "dynamic quantization")
    assert "quantize_static" in msg and "qfx quantize" in msg and "DynamicQuantizeLinear" in msg
    # MatMulInteger alone (older tools) is refused the same way, before anything else is looked at
    mi = helper.make_graph([helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")], "mi",
                           [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])],
                           [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 3])],
                           [_init("w", np.ones((4, 3), np.int8))])
    assert "'mmi'" in _one_line(helper.make_model(mi, opset_imports=[helper.make_opsetid("", 13)]),
                                "dynamic quantization")


def test_other_qoperator_ops_refused_in_one_line():
    f32, u8 = np.float32, np.uint8
    inits = [_init("sx", f32(0.031)), _init("zx", u8(121)), _init("sy", f32(1 / 256)), _init("zy", u8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("QLinearSoftmax", ["xq", "sx", "zx", "sy", "zy"], ["yq"], domain=MS, name="sm",
                              axis=-1, opset=13),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    msg = _one_line(_model(nodes, inits, (10,), (10,)), "QLinearSoftmax")
    assert "'sm'" in msg and "QDQ" in msg


def test_average_pool_over_the_real_elements_matches_onnxruntime():
    """count_include_pad=0 with padding: each border position divides by its own count of real elements (one
    per-position scale_shift between transposes); onnxruntime's codes, at most 1 LSB apart (its float rounding)."""
    model = se_block(count_include_pad=0)
    g = import_model(model)
    ops = [n.op.value for n in g.nodes]
    assert ops.count("transpose") == 2 and "zeropad2d" in ops, ops
    equal, worst = compare_ort(model, np.random.default_rng(1).normal(0, 1.5, (300, 4, 6, 6)), 0.027)
    assert equal >= 0.99 and worst <= 1.001, (equal, worst)


@pytest.mark.gxx
def test_qoperator_models_csim_bit_exact(quantized, tmp_path):
    """HLS C-sim of imported QOperator models: every output code equals the golden interpreter's."""
    from qfx.backends.hls import write_project
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for k, model in enumerate([quantized("res", True), quantized("cat", True), se_block()]):
        d = tmp_path / f"p{k}"
        d.mkdir()
        write_project(import_model(model), d, top_name=f"qop{k}")
        dirs.append(d)
    reports = run_csim_batch(dirs, 300, flags=("-Werror",))
    assert [r.mismatches for r in reports] == [0, 0, 0], [r.first_mismatch for r in reports]
    assert all(r.vectors == 300 and r.outputs_compared > 0 for r in reports)
