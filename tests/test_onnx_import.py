"""ONNX import: QONNX Quant graphs, plain torch-style ops, and bad input (one clear QfxError, nothing else)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qfx.errors import BadInputError, FormatError, QfxError, UnsupportedError
from qfx.fixed import FxFormat
from qfx.ir import Op, run
from qfx.ir.random_graph import random_graph
from qfx.onnx import export_onnx, import_model, import_onnx

QD = "qonnx.custom_op.general"
ROUND = {"ROUND": np.round, "FLOOR": np.floor, "ROUND_TO_ZERO": np.trunc}


class Q:
    """Builds a QONNX model and evaluates it with an independent numpy reference (float64, exact here)."""

    def __init__(self, in_shape):
        self.nodes, self.inits, self.ref = [], [], []
        self.in_shape = in_shape
        self.k = 0

    def init(self, arr, name=None):
        self.k += 1
        name = name or f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def quant(self, x, scale, bits, signed=1, narrow=0, mode="ROUND", zp=0.0):
        self.k += 1
        out = f"q{self.k}"
        s, z, b = self.init(scale), self.init(zp), self.init(bits)
        self.nodes.append(helper.make_node("Quant", [x, s, z, b], [out], domain=QD, name=f"Quant_{self.k}",
                                           signed=signed, narrow=narrow, rounding_mode=mode))

        def f(env, x=x, scale=np.asarray(scale, np.float64), bits=bits):
            lo = -(2 ** (bits - 1)) + narrow if signed else 0
            hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1 - narrow
            env[out] = np.clip(ROUND[mode](env[x] / scale), lo, hi) * scale

        self.ref.append(f)
        return out

    def op(self, op, ins, fn, **attrs):
        self.k += 1
        out = f"{op.lower()}{self.k}"
        self.nodes.append(helper.make_node(op, ins, [out], name=f"{op}_{self.k}", **attrs))
        self.ref.append(lambda env: env.__setitem__(out, fn(*[env[i] for i in ins])))
        return out

    def model(self, out):
        g = helper.make_graph(self.nodes, "qonnx_test",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *self.in_shape])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        self.out = out
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QD, 1)])

    def run_ref(self, x):
        env = {"x": x.astype(np.float64)} | {i.name: numpy_helper.to_array(i).astype(np.float64) for i in self.inits}
        for f in self.ref:
            f(env)
        return env[self.out]


def _check(q: Q, model, n=300, seed=0, scale=3.0):
    g = import_model(model)
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, scale, size=(n, *q.in_shape))).astype(np.float32).astype(np.float64)
    fin = g.tensor(g.inputs[0]).fmt
    y = g.tensor(g.outputs[0]).fmt.from_int(run(g, fin.to_int(x)))
    np.testing.assert_array_equal(y, q.run_ref(x))
    return g


def test_qonnx_mlp_gemm_relu_narrow_weights():
    rng = np.random.default_rng(1)
    q = Q((6,))
    x = q.quant("x", 0.125, 6)
    w = q.quant(q.init(rng.normal(0, 0.4, (5, 6))), 0.0625, 4, narrow=1)
    h = q.op("Gemm", [x, w, q.init(np.round(rng.normal(0, 1, 5) * 16) / 16)], lambda a, b, c: a @ b.T + c, transB=1)
    h = q.quant(q.op("Relu", [h], lambda a: np.maximum(a, 0)), 0.25, 5, signed=0)
    w2 = q.quant(q.init(rng.normal(0, 0.4, (5, 3))), 0.125, 5)
    y = q.quant(q.op("MatMul", [h, w2], lambda a, b: a @ b), 0.0625, 8, mode="FLOOR")
    g = _check(q, q.model(y))
    assert [n.op for n in g.nodes] == [Op.DENSE, Op.RELU, Op.DENSE]
    assert g.tensor(g.outputs[0]).fmt == FxFormat(8, 4, True, "TRN", "SAT")


def test_qonnx_narrow_activation_is_symmetric_clip():
    q = Q((4,))
    y = q.quant("x", 0.5, 4, narrow=1)  # -8 must never appear: QONNX narrow range is [-7, 7]
    g = import_model(q.model(y))
    x = np.array([[-4.0, -3.75, -3.5, 3.9]])
    np.testing.assert_array_equal(q.run_ref(x), [[-3.5, -3.5, -3.5, 3.5]])
    from qfx.onnx.fixedquant import sat_sym_is_symmetric

    # SAT_SYM is exactly QONNX narrow where the kernel's symmetric range is [-max, max]; else SAT + clip
    assert g.tensor(g.outputs[0]).fmt.overflow == ("SAT_SYM" if sat_sym_is_symmetric() else "SAT")
    _check(q, q.model(y))
    q = Q((4,))
    y = q.quant("x", 0.5, 4, signed=0, narrow=1)  # unsigned narrow: [0, 14]
    g = _check(q, q.model(y), scale=8.0)
    assert [n.op for n in g.nodes] == [Op.CLIP]


def test_qonnx_cnn_conv_maxpool_flatten_per_channel_weights():
    rng = np.random.default_rng(2)
    q = Q((2, 6, 6))
    x = q.quant("x", 0.25, 8)
    wscale = np.array([0.125, 0.0625, 0.25]).reshape(3, 1, 1, 1)
    w = q.quant(q.init(rng.normal(0, 0.3, (3, 2, 3, 3))), wscale, 5)

    def conv(a, b):
        return F.conv2d(torch.from_numpy(a), torch.from_numpy(b), padding=1).numpy()

    h = q.op("Conv", [x, w], conv, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    h = q.quant(q.op("Relu", [h], lambda a: np.maximum(a, 0)), 0.125, 6, signed=0)
    h = q.op("MaxPool", [h], lambda a: F.max_pool2d(torch.from_numpy(a), 2).numpy(), kernel_shape=[2, 2],
             strides=[2, 2])
    h = q.op("Flatten", [h], lambda a: a.reshape(a.shape[0], -1), axis=1)
    w2 = q.quant(q.init(rng.normal(0, 0.2, (27, 4))), 0.03125, 6)
    y = q.quant(q.op("MatMul", [h, w2], lambda a, b: a @ b), 0.0625, 8, mode="ROUND_TO_ZERO")
    g = _check(q, q.model(y))
    assert [n.op for n in g.nodes] == [Op.CONV2D, Op.RELU, Op.MAXPOOL2D, Op.FLATTEN, Op.DENSE]


def test_qonnx_residual_add_and_requant():
    rng = np.random.default_rng(3)
    q = Q((5,))
    x = q.quant("x", 0.25, 6)
    w = q.quant(q.init(rng.normal(0, 0.5, (5, 5))), 0.125, 4)
    h = q.quant(q.op("Gemm", [x, w], lambda a, b: a @ b.T, transB=1), 0.25, 6)
    s = q.op("Add", [x, h], lambda a, b: a + b)
    y = q.quant(s, 0.5, 5)
    _check(q, q.model(y))


@pytest.mark.parametrize("scale,zp,bits,match", [
    (0.25, 1.0, 8, "non-zero zero point"),
    (0.25, 0.0, 7.5, "bit width"),
])
def test_qonnx_non_fixed_point_quant_rejected(scale, zp, bits, match):
    q = Q((3,))
    y = q.quant("x", scale, bits, zp=zp)
    with pytest.raises(UnsupportedError, match=match):
        import_model(q.model(y))


def test_qonnx_ceil_rounding_rejected():
    q = Q((3,))
    y = q.quant("x", 0.25, 8, mode="CEIL")
    with pytest.raises(UnsupportedError, match="rounding mode 'CEIL'"):
        import_model(q.model(y))


# ---------------------------------------------------------------------------------------------- plain torch export
def test_plain_torch_export_with_dyadic_weights(tmp_path):
    """torch.onnx.export of a float MLP/CNN whose weights are dyadic: imported as is, given an input format."""
    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.fc = torch.nn.Linear(2 * 3 * 3, 3)

        def forward(self, x):
            h = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.fc(torch.flatten(h, 1))

    m = M()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.round(p * 32) / 32)
    path = tmp_path / "plain.onnx"
    try:
        torch.onnx.export(m, (torch.zeros(1, 1, 6, 6),), str(path), dynamo=True, optimize=True)
    except Exception as exc:  # exporter dependencies (onnxscript) missing
        pytest.skip(f"torch.onnx.export unavailable: {type(exc).__name__}: {exc}")
    fin = FxFormat(8, 3)
    g = import_onnx(path, input_fmt=fin)
    assert {n.op for n in g.nodes} >= {Op.CONV2D, Op.RELU, Op.MAXPOOL2D, Op.DENSE}
    x = fin.from_int(np.random.default_rng(0).integers(-128, 127, size=(50, 1, 6, 6)))
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x)).numpy()  # float64 torch on exact small dyadics is exact here
    got = g.tensor(g.outputs[0]).fmt.from_int(run(g, fin.to_int(x)))
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(BadInputError, match="fixed-point format"):
        import_onnx(path)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def exported(tmp_path):
    return export_onnx(random_graph(4, kind="cnn"), tmp_path / "ok.onnx")


def test_missing_empty_garbage_truncated(tmp_path, exported):
    with pytest.raises(BadInputError, match="does not exist"):
        import_onnx(tmp_path / "nope.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(BadInputError, match="is empty"):
        import_onnx(tmp_path / "empty.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\xff\x00garbage" * 10)
    with pytest.raises(BadInputError, match="not a valid ONNX file|no ONNX graph"):
        import_onnx(tmp_path / "garbage.onnx")
    data = exported.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        import_onnx(tmp_path / "trunc.onnx")


def _mutated(path, fn):
    m = onnx.load(str(path))
    fn(m)
    return m


def test_tampered_qfx_files(exported):
    def drop_init(m):
        del m.graph.initializer[0]

    with pytest.raises(BadInputError, match="missing"):
        import_model(_mutated(exported, drop_init))

    def change_weight(m):
        a = numpy_helper.to_array(m.graph.initializer[0]).copy()
        a.flat[0] += a.flat[0] or 1.0
        m.graph.initializer[0].CopyFrom(numpy_helper.from_array(a, m.graph.initializer[0].name))

    with pytest.raises(QfxError):
        import_model(_mutated(exported, change_weight))

    def unknown_op(m):
        m.graph.node.append(helper.make_node("Frobnicate", ["x"], ["y"], domain="acme"))

    with pytest.raises(UnsupportedError, match="acme.Frobnicate"):
        import_model(_mutated(exported, unknown_op))

    def bad_shape(m):
        m.graph.output[0].type.tensor_type.shape.dim[1].dim_value += 3

    with pytest.raises(BadInputError):
        import_model(_mutated(exported, bad_shape))

    def bad_fmt(m):
        fq = m.graph.node[-1]  # the FixedQuant writing the graph output
        for a in fq.attribute:
            if a.name == "width":
                a.i = 99

    with pytest.raises(FormatError, match="width"):
        import_model(_mutated(exported, bad_fmt))

    def other_node(m):
        n = next(n for n in m.graph.node if n.op_type in ("Relu", "MatMul", "Gemm", "MaxPool", "Add"))
        n.op_type = "Sub" if n.op_type != "Sub" else "Add"

    with pytest.raises(BadInputError, match="differs"):
        import_model(_mutated(exported, other_node))


def test_plain_unknown_op_and_missing_initializer():
    q = Q((3,))
    x = q.quant("x", 0.25, 8)
    y = q.op("Sin", [x], lambda a: a)
    with pytest.raises(UnsupportedError, match="unsupported ONNX op 'Sin'"):
        import_model(q.model(y))
    q = Q((3,))
    x = q.quant("x", 0.25, 8)
    y = q.op("MatMul", [x, "nowhere"], lambda a, b: a)
    with pytest.raises(BadInputError, match="missing initializer"):
        import_model(q.model(y))


@settings(max_examples=int(__import__("os").environ.get("QFX_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_file_only_raises_qfx_errors(data, tmp_path_factory):
    """Random byte edits or field edits of a valid exported file: import succeeds or raises a QfxError."""
    d = tmp_path_factory.mktemp("fuzz")
    path = export_onnx(random_graph(data.draw(st.integers(0, 5)), kind="any"), d / "m.onnx")
    raw = bytearray(path.read_bytes())
    how = data.draw(st.sampled_from(["bytes", "truncate", "field"]))
    if how == "bytes":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
    elif how == "truncate":
        path.write_bytes(bytes(raw[: data.draw(st.integers(0, len(raw) - 1))]))
    else:
        m = onnx.load(str(path))
        target = data.draw(st.sampled_from(["attr", "meta", "init", "input", "node_io"]))
        if target == "attr":
            nodes = [n for n in m.graph.node if n.attribute]
            n = nodes[data.draw(st.integers(0, len(nodes) - 1))]
            a = n.attribute[data.draw(st.integers(0, len(n.attribute) - 1))]
            if a.type == onnx.AttributeProto.INT:
                a.i = data.draw(st.integers(-2**40, 2**40))
            elif a.type == onnx.AttributeProto.STRING:
                a.s = data.draw(st.binary(max_size=8))
            elif a.type == onnx.AttributeProto.INTS:
                a.ints[:] = data.draw(st.lists(st.integers(-5, 5), max_size=4))
        elif target == "meta":
            p = m.metadata_props[data.draw(st.integers(0, len(m.metadata_props) - 1))]
            v = p.value
            i = data.draw(st.integers(0, max(len(v) - 1, 0)))
            p.value = v[:i] + data.draw(st.text(max_size=4)) + v[i + 1:]
        elif target == "init":
            init = m.graph.initializer[data.draw(st.integers(0, len(m.graph.initializer) - 1))]
            a = numpy_helper.to_array(init).copy()
            if a.size:
                vals = [np.nan, np.inf, 0.5, -3.0, 1e300, 7.0] if a.dtype.kind == "f" else [-1, 0, 2**40, 3]
                a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(st.sampled_from(vals))
            init.CopyFrom(numpy_helper.from_array(a, init.name))
        elif target == "input":
            dims = m.graph.input[0].type.tensor_type.shape.dim
            dims[data.draw(st.integers(1, len(dims) - 1))].dim_value = data.draw(st.integers(0, 50))
        else:
            n = m.graph.node[data.draw(st.integers(0, len(m.graph.node) - 1))]
            if n.input:
                n.input[0] = data.draw(st.sampled_from(["", "zz", n.output[0]]))
        path.write_bytes(m.SerializeToString())
    try:
        import_onnx(path)
    except QfxError as exc:
        assert "\n" not in str(exc)


def test_qonnx_double_quant_is_not_fused_and_constant_after_cast_is_exact():
    rng = np.random.default_rng(5)
    q = Q((4,))
    x = q.quant("x", 0.25, 8)
    w = q.quant(q.init(rng.normal(0, 0.5, (4, 4))), 0.125, 5)
    h = q.quant(q.op("MatMul", [x, w], lambda a, b: a @ b), 0.0625, 8)
    y = q.quant(h, 0.5, 4, mode="FLOOR")  # a second cast of the same value: both casts must happen
    g = _check(q, q.model(y))
    assert [n.op for n in g.nodes] == [Op.DENSE, Op.QUANT]
    q = Q((4,))
    x = q.quant("x", 0.25, 8)
    w = q.quant(q.init(rng.normal(0, 0.5, (4, 4))), 0.125, 5)
    h = q.quant(q.op("MatMul", [x, w], lambda a, b: a @ b), 0.0625, 8)
    y = q.op("Add", [h, q.init(np.full(4, 0.5))], lambda a, b: a + b)
    g = _check(q, q.model(y))  # the cast stays; the constant becomes an exact scale_shift after it
    assert [n.op for n in g.nodes] == [Op.DENSE, Op.SCALE_SHIFT]


def _qonnx_cnn_bytes() -> bytes:
    rng = np.random.default_rng(9)
    q = Q((2, 6, 6))
    x = q.quant("x", 0.25, 8)
    w = q.quant(q.init(rng.normal(0, 0.3, (3, 2, 3, 3))), np.array([0.125, 0.0625, 0.25]).reshape(3, 1, 1, 1), 5)
    h = q.op("Conv", [x, w, q.init(np.array([0.5, -0.25, 1.0]))], lambda a, b, c: a, pads=[1, 1, 1, 1])
    h = q.quant(q.op("Relu", [h], lambda a: a), 0.125, 6, signed=0, narrow=1)
    h = q.op("MaxPool", [h], lambda a: a, kernel_shape=[2, 2], strides=[2, 2])
    h = q.op("Reshape", [h, q.init(np.array([1, -1]))], lambda a, b: a)
    w2 = q.quant(q.init(rng.normal(0, 0.2, (4, 27))), 0.03125, 6)
    y = q.quant(q.op("Gemm", [h, w2], lambda a, b: a, transB=1), 0.0625, 8)
    return q.model(y).SerializeToString()


_QONNX_CNN = _qonnx_cnn_bytes()


def test_qonnx_cnn_with_reshape_imports():
    g = import_model(onnx.load_from_string(_QONNX_CNN))
    assert [n.op for n in g.nodes] == [Op.CONV2D, Op.RELU, Op.CLIP, Op.MAXPOOL2D, Op.FLATTEN, Op.DENSE]


@settings(max_examples=int(__import__("os").environ.get("QFX_FUZZ_EXAMPLES", "60")), deadline=None)
@given(data=st.data())
def test_fuzz_qonnx_only_raises_qfx_errors(data):
    """Mutated QONNX graphs (bytes, attributes, initializers, wiring): success or a one-line QfxError."""
    how = data.draw(st.sampled_from(["bytes", "field"]))
    if how == "bytes":
        raw = bytearray(_QONNX_CNN)
        for _ in range(data.draw(st.integers(1, 6))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            m = onnx.load_from_string(bytes(raw))
        except Exception:
            return  # the loader in import_onnx turns this into BadInputError (tested above)
    else:
        m = onnx.load_from_string(_QONNX_CNN)
        n = m.graph.node[data.draw(st.integers(0, len(m.graph.node) - 1))]
        what = data.draw(st.sampled_from(["attr", "input", "op", "init"]))
        if what == "attr" and n.attribute:
            a = n.attribute[data.draw(st.integers(0, len(n.attribute) - 1))]
            if a.type == onnx.AttributeProto.INT:
                a.i = data.draw(st.integers(-3, 70))
            elif a.type == onnx.AttributeProto.INTS:
                a.ints[:] = data.draw(st.lists(st.integers(-2, 4), max_size=5))
            elif a.type == onnx.AttributeProto.STRING:
                a.s = data.draw(st.sampled_from([b"ROUND", b"CEIL", b"", b"\xff", b"HALF_UP"]))
        elif what == "input" and n.input:
            n.input[data.draw(st.integers(0, len(n.input) - 1))] = data.draw(
                st.sampled_from(["x", "", "c1", "nope", n.output[0]]))
        elif what == "op":
            n.op_type = data.draw(st.sampled_from(["Relu", "Add", "MatMul", "Flatten", "Quant", "Conv"]))
        else:
            init = m.graph.initializer[data.draw(st.integers(0, len(m.graph.initializer) - 1))]
            a = numpy_helper.to_array(init).astype(np.float32).copy()
            if a.size:
                a.flat[data.draw(st.integers(0, a.size - 1))] = data.draw(
                    st.sampled_from([np.nan, np.inf, 0.0, -1.0, 0.3, 3e38, 65.0]))
            init.CopyFrom(numpy_helper.from_array(a.reshape(a.shape), init.name))
    try:
        import_model(m)
    except QfxError as exc:
        assert "\n" not in str(exc)
