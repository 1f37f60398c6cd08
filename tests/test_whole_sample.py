"""Fixed-shape ONNX graphs whose first axis is data (sequence-first attention): the clean-up prepends a batch axis.

The model here is written like the scaled dot-product attention qonnx ships (``matmul_update/sdp.onnx``): inputs
(S, 1, E), heads made by Reshape + Transpose(perm=[1, 0, 2]), softmax over the rows of (heads, S, S).
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from qfx.onnx.cleanup import cleanup  # noqa: E402
from qfx.ir.interpret import run  # noqa: E402
from qfx.onnx.whole_sample import BATCH_AXIS_KEY  # noqa: E402

S, E, H = 8, 16, 2


class SeqFirstAttention(torch.nn.Module):
    """torch's multi-head attention core, sequence first, batch 1 fixed in axis 1."""

    def forward(self, q, k, v):
        s, b, e = q.shape
        q = q.reshape(s, b * H, e // H).transpose(0, 1)
        k = k.reshape(s, b * H, e // H).permute(1, 2, 0)
        v = v.reshape(s, b * H, e // H).transpose(0, 1)
        att = torch.softmax((q @ k) * (e // H) ** -0.5, dim=-1)
        return (att @ v).transpose(0, 1).reshape(s, b, e)


def _export(module: torch.nn.Module, shapes: list[tuple[int, ...]], names: list[str]) -> "onnx.ModelProto":
    buf = io.BytesIO()
    args = tuple(torch.randn(*s) for s in shapes)
    torch.onnx.export(module, args, buf, input_names=names, output_names=["y"], dynamo=False, opset_version=17)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def sdp_model():
    return _export(SeqFirstAttention(), [(S, 1, E)] * 3, ["q", "k", "v"])


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_rewrite_prepends_a_batch_axis_and_keeps_every_value(sdp_model) -> None:
    cleaned, report = cleanup(sdp_model)
    assert {p.key: p.value for p in cleaned.metadata_props}.get(BATCH_AXIS_KEY) == "added"
    assert any("batch axis N was prepended" in r for r in report)
    for vi in (*cleaned.graph.input, *cleaned.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"
    rng = np.random.default_rng(0)
    xs = [{n: rng.normal(size=(S, 1, E)).astype(np.float32) for n in "qkv"} for _ in range(3)]
    got = _ort(cleaned, {n: np.stack([x[n] for x in xs]) for n in "qkv"})
    assert got.shape == (3, S, 1, E)
    for i, x in enumerate(xs):  # per sample, exactly the original graph's output on its one tensor
        np.testing.assert_array_equal(got[i], _ort(sdp_model, x))


def test_ordinary_graphs_are_left_alone() -> None:
    """A model whose first axis is a batch (symbolic or fixed 1), and a Conv graph with an odd first axis, keep
    their shapes: the rewrite needs fixed shapes, a node moving data across axis 0, and rank-free ops only."""
    mlp = _export(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), [(1, 4)], ["x"])
    for m in (mlp,):
        cleaned, _ = cleanup(m)
        assert BATCH_AXIS_KEY not in {p.key for p in cleaned.metadata_props}

    class ConvT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = torch.nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.c(x).transpose(0, 1)

    cleaned, _ = cleanup(_export(ConvT(), [(3, 2, 4, 4)], ["x"]))
    assert BATCH_AXIS_KEY not in {p.key for p in cleaned.metadata_props}
    assert cleaned.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def _quantized(sdp_model, seed: int = 0):
    from qfx.onnx.importer import import_model
    from qfx.onnx.quantize import quantize_onnx

    rng = np.random.default_rng(seed)
    calib = {n: rng.uniform(-1, 1, size=(32, S, 1, E)).astype(np.float32) for n in "qkv"}
    q, _ = quantize_onnx(sdp_model, calib)
    return q, import_model(q)


def test_quantized_attention_imports_and_tracks_float(sdp_model) -> None:
    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values

    q, g = _quantized(sdp_model)
    ops = [n.op.value for n in g.nodes]
    assert ops.count("matmul") == 2 and ops.count("softmax") == 1
    assert g.tensor(g.inputs[0]).shape == (S, 1, E)  # the whole original tensor is one sample
    rng = np.random.default_rng(1)
    xs = {n: rng.uniform(-1, 1, size=(4, S, 1, E)).astype(np.float32) for n in "qkv"}
    codes = {t: input_codes(g, xs[n], k) for k, (t, n) in enumerate(zip(g.inputs, "qkv"))}
    got = output_values(g, run(g, codes)).reshape(4, S, 1, E)
    ref = np.stack([_ort(sdp_model, {n: xs[n][i] for n in "qkv"}) for i in range(4)])
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 0.1, err  # 8-bit inputs, 8-bit scores, table softmax: a few percent, not garbage
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


def test_quantized_attention_agrees_with_qonnx_executor(sdp_model, tmp_path) -> None:
    """The written QONNX model (batch axis added) runs in QONNX's own executor; qfx's interpreter matches it up to
    the table softmax (the matmuls and requantizers are exact)."""
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values

    q, g = _quantized(sdp_model)
    path = tmp_path / "sdp_q.onnx"
    onnx.save(q, path)
    from qonnx.transformation.infer_shapes import InferShapes

    fixed = onnx.load(path)
    for vi in (*fixed.graph.input, *fixed.graph.output):  # its executor wants static shapes: batch 1
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    mw = ModelWrapper(fixed).transform(InferShapes())
    rng = np.random.default_rng(2)
    xs = {n: rng.uniform(-1, 1, size=(1, S, 1, E)).astype(np.float32) for n in "qkv"}
    ref = np.asarray(execute_onnx(mw, {i.name: xs[n] for i, n in zip(mw.graph.input, "qkv")})[mw.graph.output[0].name])
    codes = {t: input_codes(g, xs[n], k) for k, (t, n) in enumerate(zip(g.inputs, "qkv"))}
    got = output_values(g, run(g, codes)).reshape(ref.shape)
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.gxx
def test_quantized_attention_csim_bit_exact(sdp_model, tmp_path) -> None:
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    _, g = _quantized(sdp_model)
    d = tmp_path / "hls"
    d.mkdir()
    hls.write_project(g, d)
    rep = run_csim_batch([d], n_vectors=50, seed=3)[0]
    assert rep.passed, rep.summary()


@pytest.mark.verilator
def test_small_quantized_attention_rtl_cosim_bit_exact(tmp_path) -> None:
    """Two heads over 4 positions of 8 features: matmuls, row softmax and reshapes in RTL, with stalls."""
    from qfx.backends import rtl
    from qfx.onnx.importer import import_model
    from qfx.onnx.quantize import quantize_onnx
    from qfx.sim.cosim import run_cosim_many

    m = _export(SeqFirstAttention(), [(4, 1, 8)] * 3, ["q", "k", "v"])
    rng = np.random.default_rng(0)
    q, _ = quantize_onnx(m, {n: rng.uniform(-1, 1, size=(32, 4, 1, 8)).astype(np.float32) for n in "qkv"})
    g = import_model(q, name="sdp_small")
    rtl.write_project(g, tmp_path / "rtl")
    rep = run_cosim_many([tmp_path / "rtl"], n_vectors=60, seed=5)[0]
    assert rep.ok and rep.mismatches == 0, (rep.mismatches, rep.received, rep.vectors)


def test_qonnx_wheel_sdp_model_imports_through_qfx_quantize() -> None:
    """The qonnx wheel's own sequence-first attention (inputs (64, 1, 128), 4 heads)."""
    qonnx = pytest.importorskip("qonnx")
    from qfx.onnx.importer import import_model
    from qfx.onnx.quantize import quantize_onnx

    path = os.path.join(os.path.dirname(qonnx.__file__), "data/onnx/matmul_update/sdp.onnx")
    if not os.path.exists(path):
        pytest.skip("this qonnx wheel has no matmul_update/sdp.onnx")
    m = onnx.load(path)
    names = [i.name for i in m.graph.input]
    rng = np.random.default_rng(0)
    q, _ = quantize_onnx(m, {n: rng.uniform(-1, 1, size=(64, 1, 128)).astype(np.float32) for n in names})
    g = import_model(q)
    assert [n.op.value for n in g.nodes].count("softmax") == 1
    assert g.tensor(g.inputs[0]).shape == (64, 1, 128)


class _BatchFirstMHA(torch.nn.Module):
    """torch's batch_first nn.MultiheadAttention between two Linears, exported with batch 1 (the usual way)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.m, self.f = torch.nn.Linear(6, 8), torch.nn.MultiheadAttention(8, 2, batch_first=True), \
            torch.nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.f(self.m(h, h, h, need_weights=False)[0].mean(1))


class _BatchFirstEncoder(torch.nn.Module):
    """nn.TransformerEncoderLayer (batch_first, LayerNormalization at opset 17) between two Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.f = torch.nn.Linear(6, 8), torch.nn.Linear(8, 2)
        self.e = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.f(self.e(self.a(x)).mean(1))


@pytest.mark.parametrize("cls", [_BatchFirstMHA, _BatchFirstEncoder])
def test_batch_first_attention_exported_with_batch_1_imports(cls, tmp_path) -> None:
    """The export transposes to sequence-first inside (moving values across axis 0), its out_proj is a Gemm on
    (L*N, E) rows and the heads come from Gather: the whole-sample rewrite takes each (1, L, E) input as a sample,
    the Gemm as a MatMul, the Linears on tokens as 1x1 convolutions. Calibration data is K samples of (L, E) (the
    batch-1 axis restored); the quantized model follows torch's float output, qfx's ONNX computes the interpreter's
    bits, and C simulation agrees."""
    from qfx.backends import hls
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.importer import import_model, input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx
    from qfx.onnx.runtime import run_onnx_codes
    from qfx.sim.csim import run_csim_batch

    torch.manual_seed(0)
    m = cls().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.zeros(1, 5, 6), buf, opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"])
    model = onnx.load_from_string(buf.getvalue())
    rng = np.random.default_rng(1)
    qm, _ = quantize_onnx(model, rng.uniform(-1, 1, (128, 5, 6)).astype(np.float32))
    g = import_model(qm, name=f"bf_{cls.__name__.lower().strip('_')}")
    assert "matmul" in {n.op.value for n in g.nodes} and "softmax" in {n.op.value for n in g.nodes}
    x = rng.uniform(-1, 1, (32, 5, 6)).astype(np.float32)
    codes = input_codes(g, x[:, None])
    got = output_values(g, run(g, codes)).reshape(len(x), -1)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))
    d = tmp_path / "hls"
    hls.write_project(g, d)
    rep = run_csim_batch([d], n_vectors=20, seed=3)[0]
    assert rep.passed, rep.summary()
