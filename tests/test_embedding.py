"""nn.Embedding of the model's integer input: the input becomes ap_uint<k> (exact indices), the quantized table's
columns are ``lut`` ROMs over the index codes, concatenated. Text-classifier shapes (embedding -> LSTM, embedding ->
Conv1d, embedding -> mean) train, agree in train/exact mode, the interpreter, onnxruntime on the qfx ONNX, g++
C simulation and Verilator."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import BadInputError, UnsupportedError
from qfx.nn.embedding import index_table
from qfx.fixed.format import FxFormat

from models.harness import csim_agrees, exact_check

CFG = dict(weight_width=8, act_width=8)


class TextLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(50, 8), nn.LSTM(8, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, x):
        _, (h, _) = self.rnn(self.emb(x))
        return self.head(h[-1])


class TextCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.conv = nn.Embedding(30, 6, padding_idx=0), nn.Conv1d(6, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.relu(self.conv(self.emb(x).transpose(1, 2))).amax(2))


class BagOfWords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(20, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


MODELS = {"lstm": (TextLSTM, 50, 7), "cnn": (TextCNN, 30, 9), "bag": (BagOfWords, 20, 4)}


def _data(name: str, n: int, seed: int = 0):
    cls, vocab, length = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = (x[:, 0] % 3).long()  # the first token decides the class
    return cls, x, y


@pytest.mark.parametrize("name", sorted(MODELS))
def test_embedding_models_train_and_agree(name):
    from qfx.ir import run
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    torch.manual_seed(1)
    cls, x, y = _data(name, 192)
    f = cls().eval()
    q = qfx.quantize_model(f, qfx.QFXConfig(**CFG), calib_data=x)
    assert q.input.fmt.ap_type().startswith("ap_ufixed<") and q.input.fmt.frac_bits == 0  # exact indices
    q.eval()
    with torch.no_grad():
        assert float((q(x) - f(x)).abs().max() / f(x).abs().max()) < 0.1
    q.train()
    opt = torch.optim.Adam(q.parameters(), lr=2e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    g, exact_vs_interp, train_vs_exact = exact_check(q, x[:48])
    assert exact_vs_interp == 0 and train_vs_exact == 0
    assert sum(str(n.attrs.get("fn", "")).startswith("embedding column") for n in g.nodes) == q.net.emb.embedding_dim
    codes = np.asarray(q.input.input_codes(x[:48]))
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


def test_index_table_rows_and_out_of_range_codes():
    w = np.arange(12, dtype=np.int64).reshape(4, 3)
    t = index_table(w, FxFormat(4, 3, signed=False))  # codes 0..15 as values 0, 0.5, ..., 7.5
    np.testing.assert_array_equal(t[::2][:4], w)  # integer values 0..3 read their rows
    assert not t[1::2].any() and not t[8:].any()  # halves and indices >= 4 read zeros


def test_embedding_of_one_index_per_sample_and_max_norm_are_refused_in_one_line():
    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.emb(x))

    class Norm(One):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4, max_norm=1.0)

        def forward(self, x):
            return self.head(self.emb(x).mean(1))

    for m, x in ((One(), torch.randint(0, 10, (8,))), (Norm(), torch.randint(0, 10, (8, 3)))):
        with pytest.raises((UnsupportedError, BadInputError)) as ei:
            qfx.quantize_model(m, qfx.QFXConfig(), calib_data=x)
        assert "\n" not in str(ei.value)


@pytest.mark.gxx
def test_embedding_csim(tmp_path):
    for name in ("cnn", "bag"):
        cls, x, _ = _data(name, 32)
        q = qfx.quantize_model(cls(), qfx.QFXConfig(**CFG), calib_data=x)
        csim_agrees(q, x, tmp_path / name, 24)


@pytest.mark.verilator
def test_embedding_rtl_cosim(tmp_path):
    from qfx.backends import rtl
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.cosim import run_cosim_many

    cls, x, _ = _data("bag", 32)
    q = qfx.quantize_model(cls(), qfx.QFXConfig(**CFG), calib_data=x)
    g = dataclasses.replace(run_flow(exact_check(q, x)[0], DEFAULT_FLOW).graph, name="emb_bag")
    rtl.write_project(g, tmp_path / "bag")
    (rep,) = run_cosim_many([tmp_path / "bag"], n_vectors=24, seed=7, work_dir=tmp_path / "w")
    assert rep.ok and rep.mismatches == 0 and rep.received, (rep.top, rep.mismatches, rep.received)


class _TokenClassifier(nn.Module):
    """A text classifier as users write it: token and position embeddings (positions from a constant arange),
    LayerNorm, mean over the tokens, a head."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(20, 6), nn.Embedding(7, 6)
        self.norm, self.head = nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):  # (N, 7) int64 token indices
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(F.relu(self.norm(h)).mean(1))


def _exported_token_graph(dynamo: bool):
    """(float ONNX model, imported graph of its ``qfx quantize`` result)."""
    import io

    import onnx

    from qfx.onnx.importer import import_model
    from qfx.onnx.quantize import quantize_onnx

    torch.manual_seed(3)
    m = _TokenClassifier().eval()
    buf = io.BytesIO()
    torch.onnx.export(m, torch.zeros(1, 7, dtype=torch.long), buf, dynamo=dynamo, input_names=["x"],
                      output_names=["y"], **({} if dynamo else {"opset_version": 17}))
    model = onnx.load_from_string(buf.getvalue())
    return model, import_model(quantize_onnx(model, np.random.default_rng(0).integers(0, 20, (64, 7)))[0])


@pytest.mark.parametrize("dynamo", [False, True])
def test_exported_embedding_model_quantizes_and_imports(dynamo):
    """torch.onnx.export of an Embedding model (Gather of a constant table by an int64 graph input): ``qfx
    quantize`` keeps the indices integers and quantizes the table like a weight; the importer reads the input as
    ap_uint<5> and each table column as a lut; the result follows onnxruntime's float model and qfx's own ONNX
    computes the interpreter's bits."""
    import onnxruntime as ort

    from qfx.ir import run
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.importer import input_codes, output_values
    from qfx.onnx.runtime import run_onnx_codes

    model, g = _exported_token_graph(dynamo)
    fin = g.tensor(g.inputs[0]).fmt
    assert (fin.width, fin.int_bits, fin.signed) == (5, 5, False)
    assert sum(n.op.value == "lut" for n in g.nodes) >= 6
    x = np.random.default_rng(1).integers(0, 20, (32, 7))
    codes = input_codes(g, x)
    got = output_values(g, run(g, codes))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.1
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


@pytest.mark.gxx
def test_exported_embedding_model_csim(tmp_path):
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.csim import run_csim

    _, g = _exported_token_graph(False)
    rep = run_csim(export_graph(run_flow(g, DEFAULT_FLOW).graph, "hls", tmp_path / "hls"), n_vectors=32)
    assert rep.mismatches == 0 and rep.outputs_compared > 0


class _BertLike(nn.Module):
    """Hugging Face's position ids: a registered ``position_ids`` buffer sliced by the sequence length in forward,
    token + position embeddings, LayerNorm, a batch_first encoder layer, the first token to the head."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(20, 8), nn.Embedding(9, 8)
        self.register_buffer("position_ids", torch.arange(9).unsqueeze(0))
        self.ln = nn.LayerNorm(8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.tok(x) + self.pos(self.position_ids[:, :x.shape[1]])
        return self.head(self.enc(self.ln(h))[:, 0])


@pytest.mark.parametrize("model", [_TokenClassifier, _BertLike])
def test_position_embeddings_looked_up_at_constant_positions(model):
    """``self.pos(torch.arange(L))`` and ``self.pos(self.position_ids[:, :L])`` are the embedding's first L rows: a
    parameter added per element (QParamAffine), trained in place of the rows; train == exact == interpreter."""
    from models.harness import square_loss_steps

    torch.manual_seed(5)
    f = model()
    x = torch.randint(0, 20, (32, 7))
    q = qfx.quantize_model(f, qfx.QFXConfig(), calib_data=x)
    assert any(n.endswith("pos_rows") for n, _ in q.named_parameters())
    q.eval()
    with torch.no_grad():
        want, got = f.eval()(x), q(x)
    assert float((got - want).abs().max() / want.abs().max()) < 0.25
    before = dict(q.named_parameters())[next(n for n, _ in q.named_parameters() if n.endswith("pos_rows"))].clone()
    square_loss_steps(q, x, 2)
    after = dict(q.named_parameters())[next(n for n, _ in q.named_parameters() if n.endswith("pos_rows"))]
    assert not torch.equal(before, after)  # the rows train
    _, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
