"""torch's own attention and transformer modules through ``qfx.quantize_model`` (``qfx/nn/transformer.py``):
``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` become plain-PyTorch
composites the tracer converts op by op (QLinear projections, QMatMul, QConstScale, row QSoftmax, QLayerNorm, QAdd).

Three models, each quantized with calibration data, trained 3 Adam steps, then checked bit for bit: torch exact mode
== train mode (eval) == interpreter == onnxruntime (qfx's ONNX export) == C simulation (one batch build), and an RTL
co-simulation of the smallest one:

* a tiny ViT on 8x8 digits: Conv2d patches, ``flatten(2).transpose(1, 2)``, a learned class token
  (``torch.cat`` with ``expand``), a learned positional embedding (``x + self.pos``), one
  ``nn.TransformerEncoderLayer(batch_first=True)``, ``x[:, 0]``, a Linear head;
* a sequence model with ``nn.MultiheadAttention(batch_first=False, bias=False)`` on (S, N, E) (``transpose(0, 1)``
  in and ``h[-1]`` out: qfx keeps the tensors batch-first, the transposes are relabellings) with a causal mask
  buffer (exact: each row's softmax runs over its allowed keys), ``a, _ = self.attn(h, h, h)``;
* ``nn.TransformerEncoder`` with 2 pre-norm GELU layers (``norm_first=True``, dropout 0.1: torch's dropout in train
  mode, a wire in eval and exact mode) and a final LayerNorm.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import UnsupportedError

from models.harness import cross_entropy_steps, exact_check, onnxruntime_agrees

S, E = 6, 8


class TinyViT(nn.Module):
    """4x4 patches of an 8x8 digit (4 tokens of 16), a class token, positional embedding, one encoder layer."""

    def __init__(self, d: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.2)
        self.encoder = nn.TransformerEncoderLayer(d, 2, 32, batch_first=True, dropout=0.0)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos
        x = self.encoder(x)
        return self.head(x[:, 0])


class SeqFirst(nn.Module):
    """Sequence-first self-attention with a causal mask: (N, S, 4) -> embed -> (S, N, E) -> attention + residual +
    LayerNorm -> the last position -> classes."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, E)
        self.attn = nn.MultiheadAttention(E, 2, bias=False)
        self.norm = nn.LayerNorm(E)
        self.head = nn.Linear(E, n_classes)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(S))

    def forward(self, x):
        h = self.embed(x).transpose(0, 1)
        a, _ = self.attn(h, h, h, attn_mask=self.mask)
        h = self.norm(h + a)
        return self.head(h[-1])


class Encoder(nn.Module):
    """Two pre-norm GELU encoder layers (nn.TransformerEncoder), a final LayerNorm, the mean over positions."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, E)
        layer = nn.TransformerEncoderLayer(E, 2, 16, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        with warnings.catch_warnings():  # enable_nested_tensor (the default) is moot with norm_first, and for qfx
            warnings.simplefilter("ignore", UserWarning)
            self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(E))
        self.head = nn.Linear(E, n_classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def _data(which: str, n: int = 192):
    if which == "vit":
        from qfx.data import load_digits_split

        x, y, _, _ = load_digits_split()
        return x[:n], y[:n]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, S, 4, generator=g)
    return x, (x[:, :, :2].sum((1, 2)) > 0).long() + (x[:, -1, 3] > 1).long()


MODELS = {"vit": TinyViT, "seq": SeqFirst, "enc": Encoder}


def _trained(which: str):
    torch.manual_seed(0)
    model = MODELS[which]()
    x, y = _data(which)
    q = qfx.quantize_model(model, qfx.QFXConfig(weight_width=6, act_width=8), calib_data=x[:128])
    losses = cross_entropy_steps(q, x[:128], y[:128], 3)
    assert all(math.isfinite(v) for v in losses)
    return model, q, x[128:]


@pytest.fixture(scope="module")
def vit():
    return _trained("vit")


@pytest.fixture(scope="module")
def seq():
    return _trained("seq")


@pytest.fixture(scope="module")
def enc():
    return _trained("enc")


@pytest.mark.parametrize("which", list(MODELS))
def test_train_exact_interpreter_agree(which, request):
    _, q, x = request.getfixturevalue(which)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    ops = [n.op.value for n in g.nodes]
    layers = 2 if which == "enc" else 1
    assert ops.count("matmul") == 2 * layers
    assert ops.count("softmax") == (S if which == "seq" else layers)  # causal: one softmax per query row


@pytest.mark.parametrize("which", list(MODELS))
def test_onnxruntime_matches_torch_exact_and_interpreter(which, request, tmp_path):
    _, q, x = request.getfixturevalue(which)
    onnxruntime_agrees(q, x, tmp_path / f"{which}.onnx", 100)


@pytest.mark.gxx
def test_csim_bit_exact(vit, seq, enc, tmp_path):
    from qfx.sim.csim import run_csim_batch

    dirs = [qfx.export(q, x[:1], "hls", tmp_path / which, name=f"tf_{which}")
            for which, (_, q, x) in (("vit", vit), ("seq", seq), ("enc", enc))]
    reps = run_csim_batch(dirs, n_vectors=100, seed=4)
    assert [r.mismatches for r in reps] == [0] * len(dirs) and all(r.passed for r in reps)


@pytest.mark.verilator
def test_rtl_cosim_bit_exact(seq, tmp_path):
    from qfx.sim.cosim import run_cosim

    _, q, x = seq
    prj = qfx.export(q, x[:1], "rtl", tmp_path / "seq_rtl", name="seq_attn")
    rep = run_cosim(prj, n_vectors=40, seed=2, work_dir=tmp_path / "w")
    assert rep.ok and rep.mismatches == 0 and rep.received == rep.vectors == 40


# ------------------------------------------------------------------------------------------------ the conversion
@pytest.mark.parametrize("which", list(MODELS))
def test_wide_formats_follow_the_float_model(which):
    """With 16-bit formats the converted model computes what torch's modules compute (the composites are the same
    function: heads, scale, masks, pre/post-norm, sequence-first relabelling)."""
    torch.manual_seed(0)
    model = MODELS[which]().eval()
    x, _ = _data(which, 64)
    cfg = qfx.QFXConfig(weight_width=16, act_width=16, input_width=16, bn_width=16)
    q = qfx.quantize_model(model, cfg, calib_data=x).eval()
    with torch.no_grad():
        want, got = model(x), q(x)
    assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_state_dict_keys_stay_torchs():
    """in_proj_weight / in_proj_bias (three QLinear projections inside) and every other float key; a float state_dict
    loads into the quantized model."""
    torch.manual_seed(0)
    model = Encoder()
    x, _ = _data("enc", 32)
    q = qfx.quantize_model(model, qfx.QFXConfig(weight_width=8), calib_data=x)
    sd = q.net.state_dict()
    fsd = model.state_dict()
    attn = [k for k in fsd if ".self_attn." in k]
    assert "encoder.layers.1.self_attn.in_proj_weight" in attn and all(k in sd for k in attn)
    assert not any(".q_proj." in k and k.endswith(("weight", "bias")) and "quant" not in k for k in sd)
    torch.testing.assert_close(sd["encoder.layers.0.self_attn.in_proj_weight"],
                               fsd["encoder.layers.0.self_attn.in_proj_weight"])
    with torch.no_grad():
        for k in attn:
            fsd[k] = fsd[k] + 1.0
    q.net.load_state_dict({k: fsd[k] for k in attn}, strict=False)
    sa = q.net.encoder.layers[1].self_attn
    torch.testing.assert_close(sa.k_proj.weight, fsd["encoder.layers.1.self_attn.in_proj_weight"][E:2 * E])
    q.net.load_state_dict(q.net.state_dict())  # strict round trip


def test_vit_class_token_and_positions_keep_training():
    torch.manual_seed(0)
    model = TinyViT()
    x, y = _data("vit", 64)
    q = qfx.quantize_model(model, qfx.QFXConfig(), calib_data=x)
    assert "cls_token" in q.net.state_dict() and "pos" in q.net.state_dict()
    before = q.net.cls_token.detach().clone(), q.net.pos.detach().clone()
    opt = torch.optim.SGD(q.parameters(), 0.5)
    F.cross_entropy(q.train()(x), y).backward()
    opt.step()
    assert not torch.equal(before[0], q.net.cls_token) and not torch.equal(before[1], q.net.pos)


def test_cross_attention_and_sliding_window_convert():
    """Keys/values other than the queries (a prefix of the tokens) and a band mask (each query sees itself and the
    previous key): exact end to end."""
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(E, 2, batch_first=True)
            self.local = nn.MultiheadAttention(E, 1, batch_first=True)
            band = torch.ones(S, S, dtype=torch.bool).triu(1) | torch.ones(S, S, dtype=torch.bool).tril(-2)
            self.register_buffer("band", band)
            self.head = nn.Linear(E, 2)

        def forward(self, x):
            y = self.attn(x, x[:, :3], x[:, :3], need_weights=False)[0]
            y = self.local(y, y, y, attn_mask=self.band)[0]
            return self.head(y.mean(1))

    torch.manual_seed(0)
    x = torch.randn(64, S, E)
    q = qfx.quantize_model(Cross(), qfx.QFXConfig(), calib_data=x)
    g, a, b = exact_check(q, x)
    assert a == 0 and b == 0
    assert [n.op.value for n in g.nodes].count("softmax") == 1 + S


class _Refused(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.attn = nn.MultiheadAttention(E, 2, batch_first=True, add_bias_kv=mode == "bias_kv")
        self.register_buffer("bias", torch.randn(S, S))

    def forward(self, x):
        if self.mode == "padding":
            return self.attn(x, x, x, key_padding_mask=x[:, :, 0] > 0)[0].mean(1)
        if self.mode == "weights":
            return self.attn(x, x, x)[1].flatten(1)
        if self.mode == "additive":
            return self.attn(x, x, x, attn_mask=self.bias)[0].mean(1)
        if self.mode == "computed":
            return self.attn(x, x, x, attn_mask=nn.Transformer.generate_square_subsequent_mask(x.size(1)))[0].mean(1)
        if self.mode == "seq_out":
            h = x.transpose(0, 1)
            return h + 1.0
        return self.attn(x, x, x)[0].mean(1)


@pytest.mark.parametrize("mode, match", [
    ("padding", "key_padding_mask"), ("weights", "attention weights"), ("additive", "additive attn_mask"),
    ("computed", "computed in forward"), ("bias_kv", "add_bias_kv"), ("seq_out", "batch is dim 1")])
def test_refused_in_one_line_naming_the_module(mode, match):
    x = torch.randn(16, S, E)
    with pytest.raises(UnsupportedError, match=match) as e:
        qfx.quantize_model(_Refused(mode), qfx.QFXConfig(), calib_data=x)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot quantize _Refused")
    assert "'attn'" in msg or mode == "seq_out"


def test_sequence_first_tensors_are_relabelled():
    """(S, N, E) written the sequence-first way around a hand-written block: permute(1, 0, 2) in, chunk over the
    features, softmax over them, a concat along the sequence (dim 0), h.mean(0) and h[0] out; the graph keeps
    every tensor batch-first (no transpose of the batch reaches capture) and computes what the float model does."""
    class SF(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(E, 2 * E)
            self.act = nn.GELU()
            self.head = nn.Linear(2 * E, 3)

        def forward(self, x):
            h = x.permute(1, 0, 2)                      # (S, N, E)
            a, b = self.lin(h).chunk(2, dim=-1)
            g = torch.softmax(a, dim=2) * b
            h = self.act(torch.cat([h, g], dim=0))      # (2S, N, E)
            return self.head(torch.cat([h.mean(0), h[0]], dim=1))

    torch.manual_seed(0)
    model = SF().eval()
    x = torch.randn(64, S, E)
    q = qfx.quantize_model(model, qfx.QFXConfig(weight_width=16, act_width=16, input_width=16, bn_width=16),
                           calib_data=x).eval()
    with torch.no_grad():
        want, got = model(x), q(x)
    assert (got - want).abs().max() < 0.02 * want.abs().max()
    g, a, b = exact_check(q, x)
    assert a == 0 and b == 0
