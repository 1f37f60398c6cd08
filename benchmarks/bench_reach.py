"""Reach: how many user-style PyTorch idioms ``qfx.quantize_model`` converts, trains and runs bit-exactly.

    python benchmarks/bench_reach.py            # every case: OK / refused (first line of the reason), totals
    python benchmarks/bench_reach.py lstm gru   # some cases

A catalog of small models written the way user code writes them (custom layers reading their own parameters and
buffers, F.* calls, einsum, recurrent layers, resizes, normalizations, hand-written attention and norms, shape
idioms), each with a batch of random data. A case is OK when ``quantize_model`` converts it, two training steps run
and train mode == exact mode == the golden interpreter on the captured IR (``exact_check``). Refused cases print
the first line of qfx's reason; a case that fails any other way prints the exception. Integer-index cases (text
models) live in tests/test_embedding.py. Single-threaded torch; about a minute on one core.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import qfx  # noqa: E402
from qfx.errors import UnsupportedError  # noqa: E402
from models.harness import exact_check, square_loss_steps  # noqa: E402


def M(fwd, mods=None, shape=(2, 8, 8), init=None):
    """A model whose forward is ``fwd(self, x)`` over the modules ``mods``; ``init(self)`` adds parameters/buffers."""
    class _M(nn.Module):
        def __init__(s):
            super().__init__()
            for k, v in (mods or {}).items():
                setattr(s, k, v)
            if init:
                init(s)

        def forward(s, x):
            return fwd(s, x)
    return _M, shape


def buf_norm(s):
    s.register_buffer("mean", torch.tensor([0.1, -0.2]).view(1, 2, 1, 1))
    s.register_buffer("std", torch.tensor([0.5, 2.0]).view(1, 2, 1, 1))


def pos(s): s.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.1)  # noqa: E704
def gam(s): s.gamma = nn.Parameter(torch.ones(8) * 0.5)  # noqa: E704
def gam4(s): s.gamma = nn.Parameter(torch.ones(4) * 0.5)  # noqa: E704
def W(s): s.W = nn.Parameter(torch.randn(8, 4) * 0.3)  # noqa: E704
def Wt(s): s.W = nn.Parameter(torch.randn(4, 8) * 0.3)  # noqa: E704


def lin(s):
    s.weight = nn.Parameter(torch.randn(4, 128) * 0.1)
    s.bias = nn.Parameter(torch.zeros(4))


def cw(s): s.weight = nn.Parameter(torch.randn(4, 2, 3, 3) * 0.3)  # noqa: E704


def eins(eq, shape_a=(5, 8)):
    return M(lambda s, x: torch.einsum(eq, s.a(x), s.b(x)).flatten(1), {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)},
             shape_a)


def I(**kw):  # noqa: E743
    return M(lambda s, x: F.interpolate(s.c(x), **kw).flatten(1), {"c": nn.Conv2d(2, 3, 3, padding=1)})


def last(s, x):
    out, (h, c) = s.l(x)
    return s.f(out[:, -1])


def hn(s, x):
    out, (h, c) = s.l(x)
    return s.f(h[-1])


def bi(s, x):
    out, (h, c) = s.l(x)
    return s.f(torch.cat([h[-2], h[-1]], 1))


def gru(s, x):
    out, h = s.l(x)
    return s.f(out.mean(1) + h.squeeze(0))


def seqfirst(s, x):
    out, h = s.l(x.transpose(0, 1))
    return s.f(out[-1])


def rnn(s, x):
    out, h = s.l(x)
    return s.f(out.flatten(1))


def zero_state(s, x):  # the tutorial way: zero states made in forward and passed in
    h0 = torch.zeros(1, x.size(0), 6).to(x.device)
    c0 = torch.zeros(1, x.size(0), 6).to(x.device)
    out, _ = s.l(x, (h0, c0))
    return s.f(out[:, -1, :])


def ln2d(s, x):  # torchvision's LayerNorm2d: F.layer_norm on a channels-last view with the module's weight
    h = s.c(x).permute(0, 2, 3, 1)
    h = F.layer_norm(h, (4,), s.w, s.b, 1e-6)
    return h.permute(0, 3, 1, 2).flatten(1)


def lnp(s):
    s.w, s.b = nn.Parameter(torch.rand(4) + 0.5), nn.Parameter(torch.randn(4) * 0.1)


def stochastic_depth(x, p: float, training: bool):  # torchvision.ops.stochastic_depth, as fx sees it
    if not training or p == 0.0:
        return x
    return x * torch.empty(x.shape[0], 1, 1, 1).bernoulli_(1 - p) / (1 - p)


torch.fx.wrap("stochastic_depth")
stochastic_depth.__module__ = "torchvision.ops.stochastic_depth"


class SD(nn.Module):
    def forward(self, x):
        return stochastic_depth(x, 0.2, self.training)


def timm_attn(s, x):  # timm's Attention: the batch moves to dim 1 by the permute, q, k, v by unbind(0)
    b, n, c = x.shape
    q, k, v = s.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
    o = ((q * (c // 2) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    return s.proj(o.transpose(1, 2).reshape(b, n, c)).flatten(1)


def timm_sdpa(s, x):  # the same with fused_attn: F.scaled_dot_product_attention
    b, n, c = x.shape
    q, k, v = s.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
    return s.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)).flatten(1)


CASES = {
    # --- timm's attention
    "timm_attention_unbind": M(timm_attn, {"qkv": nn.Linear(8, 24), "proj": nn.Linear(8, 8)}, (5, 8)),
    "timm_attention_sdpa": M(timm_sdpa, {"qkv": nn.Linear(8, 24), "proj": nn.Linear(8, 8)}, (5, 8)),
    # --- torchvision's own model code
    "layernorm2d_functional": M(ln2d, {"c": nn.Conv2d(2, 4, 3)}, init=lnp),
    "group_norm_functional": M(lambda s, x: F.group_norm(s.c(x), 2, s.w, s.b).flatten(1), {"c": nn.Conv2d(2, 4, 3)},
                               init=lnp),
    "layer_norm_no_affine": M(lambda s, x: F.layer_norm(s.c(x), (4, 6, 6)).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "stochastic_depth_lib": M(lambda s, x: (s.c(x) + s.d(F.relu(s.c(x)))).flatten(1),
                              {"c": nn.Conv2d(2, 2, 3, padding=1), "d": SD()}),
    # --- tprobe
    "where_leaky": M(lambda s, x: torch.where(s.c(x) > 0, s.c(x), 0.1 * s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "normalize": M(lambda s, x: F.normalize(s.f(x.flatten(1)), dim=1), {"f": nn.Linear(128, 8)}),
    "interp_size": M(lambda s, x: F.interpolate(F.relu(s.c(x)), size=(16, 16), mode="nearest").flatten(1), {"c": nn.Conv2d(2, 3, 3, padding=1)}),
    "interp_size_like": M(lambda s, x: (F.interpolate(s.p(F.relu(s.c(x))), size=x.shape[2:], mode="bilinear", align_corners=False) + s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3, padding=1), "p": nn.MaxPool2d(2)}),
    "align_corners": M(lambda s, x: F.interpolate(s.c(x), scale_factor=2, mode="bilinear", align_corners=True).flatten(1), {"c": nn.Conv2d(2, 3, 3, padding=1)}),
    "stem_maxpool": M(lambda s, x: s.p(F.relu(s.c(x))).flatten(1), {"c": nn.Conv2d(2, 4, 3, padding=1), "p": nn.MaxPool2d(3, 2, 1)}),
    "div_act": M(lambda s, x: (s.a(x.flatten(1)) / (s.b(x.flatten(1)).abs() + 1)), {"a": nn.Linear(128, 4), "b": nn.Linear(128, 4)}),
    "stack": M(lambda s, x: torch.stack([s.a(x.flatten(1)), s.b(x.flatten(1))], 1).flatten(1), {"a": nn.Linear(128, 4), "b": nn.Linear(128, 4)}),
    "sqrt_exp": M(lambda s, x: torch.sqrt(s.a(x.flatten(1)).abs() + 1) + torch.exp(-s.a(x.flatten(1)).abs()), {"a": nn.Linear(128, 4)}),
    "lstm": M(lambda s, x: s.f(s.l(x[:, 0])[0][:, -1]), {"l": nn.LSTM(8, 6, batch_first=True), "f": nn.Linear(6, 2)}),
    "gru": M(lambda s, x: s.f(s.l(x[:, 0])[1][0]), {"l": nn.GRU(8, 6, batch_first=True), "f": nn.Linear(6, 2)}),
    "minimum": M(lambda s, x: torch.minimum(s.a(x.flatten(1)), s.b(x.flatten(1))), {"a": nn.Linear(128, 4), "b": nn.Linear(128, 4)}),
    "argmax_free_max": M(lambda s, x: torch.max(s.c(x), dim=1, keepdim=True)[0].flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "var_std": M(lambda s, x: s.a(x.flatten(1)).std(1, keepdim=True), {"a": nn.Linear(128, 4)}),
    "tanh_mul": M(lambda s, x: torch.tanh(s.a(x.flatten(1))) * torch.sigmoid(s.b(x.flatten(1))), {"a": nn.Linear(128, 4), "b": nn.Linear(128, 4)}),
    "conv_bias_false_bn1d": M(lambda s, x: s.f(F.relu(s.bn(s.a(x.flatten(1))))), {"a": nn.Linear(128, 16, bias=False), "bn": nn.BatchNorm1d(16), "f": nn.Linear(16, 3)}),
    "flatten_view": M(lambda s, x: s.f(s.c(x).view(x.size(0), -1)), {"c": nn.Conv2d(2, 2, 3), "f": nn.Linear(72, 3)}),
    "reshape_neg": M(lambda s, x: s.f(s.c(x).reshape(-1, 72)), {"c": nn.Conv2d(2, 2, 3), "f": nn.Linear(72, 3)}),
    "mean_var_manual": M(lambda s, x: ((s.c(x) - s.c(x).mean((2, 3), keepdim=True)) ** 2).mean((2, 3)), {"c": nn.Conv2d(2, 3, 3)}),
    "softmax2d_mul": M(lambda s, x: (s.c(x) * torch.softmax(s.d(x).flatten(2), -1).view(-1, 1, 6, 6)).sum((2, 3)), {"c": nn.Conv2d(2, 3, 3), "d": nn.Conv2d(2, 1, 3)}),
    "clamp_minmax_tensor": M(lambda s, x: torch.clamp(s.a(x.flatten(1)), -1.0, 1.0) * 2 - 1, {"a": nn.Linear(128, 4)}),
    "hardtanh_relu6": M(lambda s, x: F.hardtanh(s.a(x.flatten(1))) + F.relu6(s.a(x.flatten(1))), {"a": nn.Linear(128, 4)}),
    "avgpool_ceil": M(lambda s, x: F.avg_pool2d(s.c(x), 3, 2, ceil_mode=True).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "conv_stride_dil": M(lambda s, x: s.c2(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3, stride=2, padding=1), "c2": nn.Conv2d(3, 3, 3, dilation=2, padding=2)}),
    "grouped": M(lambda s, x: s.c(x).flatten(1), {"c": nn.Conv2d(2, 4, 3, groups=2)}),
    "linear3d": M(lambda s, x: s.f(s.a(x.flatten(2))).mean(1), {"a": nn.Linear(64, 16), "f": nn.Linear(16, 3)}),
    "einsum": M(lambda s, x: torch.einsum("bi,bi->b", s.a(x.flatten(1)), s.b(x.flatten(1))).unsqueeze(1), {"a": nn.Linear(128, 4), "b": nn.Linear(128, 4)}),
    "bmm": M(lambda s, x: torch.bmm(s.a(x.flatten(2)), s.a(x.flatten(2)).transpose(1, 2)).flatten(1), {"a": nn.Linear(64, 4)}),
    "zero_pad": M(lambda s, x: s.c(F.pad(x, (1, 1, 2, 0))).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "prelu_ch": M(lambda s, x: s.p(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3), "p": nn.PReLU(3)}),
    "elu_selu": M(lambda s, x: (F.elu(s.c(x)) + F.selu(s.c(x))).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "logsigmoid": M(lambda s, x: F.logsigmoid(s.a(x.flatten(1))), {"a": nn.Linear(128, 4)}),
    "mul_scalar_tensor": M(lambda s, x: s.a(x.flatten(1)) * s.w, {"a": nn.Linear(128, 4), "w": nn.Parameter(torch.randn(4))}),
    "add_param": M(lambda s, x: s.c(x) + s.pos, {"c": nn.Conv2d(2, 3, 3), "pos": nn.Parameter(torch.randn(1, 3, 6, 6))}),
    "cat_dim2": M(lambda s, x: torch.cat([s.c(x), s.c(x)], 2).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "flip": M(lambda s, x: (s.c(x) + s.c(x).flip(3)).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "roll_like_slice": M(lambda s, x: s.c(x)[:, :, 1:, :-1].flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "channel_shuffle": M(lambda s, x: s.c(x).view(-1, 2, 2, 6, 6).transpose(1, 2).reshape(-1, 4, 6, 6).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    # --- tprobe2
    "sdpa": M(lambda s, x: F.scaled_dot_product_attention(s.q(x), s.k(x), s.v(x)).mean(1), {"q": nn.Linear(8, 8), "k": nn.Linear(8, 8), "v": nn.Linear(8, 8)}, (5, 8)),
    "layernorm_chw": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3), "n": nn.LayerNorm([3, 6, 6])}),
    "groupnorm1": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "n": nn.GroupNorm(1, 4)}),
    "bn_affine_false": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "n": nn.BatchNorm2d(4, affine=False)}),
    "gelu_tanh": M(lambda s, x: F.gelu(s.c(x), approximate="tanh").flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "masked_fill": M(lambda s, x: s.c(x).masked_fill(s.c(x) < 0, 0.0).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "convT_outpad": M(lambda s, x: s.t(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3, stride=2, padding=1), "t": nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)}),
    "instnorm1d": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv1d(2, 4, 3), "n": nn.InstanceNorm1d(4, affine=True)}, (2, 16)),
    "embedding_free_onehot": M(lambda s, x: s.f(x.flatten(1)).softmax(-1) @ s.w, {"f": nn.Linear(128, 5), "w": nn.Parameter(torch.randn(5, 3))}),
    "adaptive_view": M(lambda s, x: s.f(F.adaptive_avg_pool2d(F.relu(s.c(x)), 1).view(x.size(0), -1)), {"c": nn.Conv2d(2, 4, 3), "f": nn.Linear(4, 2)}),
    "mean_keepdim_list": M(lambda s, x: s.c(x).mean(dim=[2, 3]), {"c": nn.Conv2d(2, 4, 3)}),
    "cumsum": M(lambda s, x: torch.cumsum(s.c(x), 1).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "hardshrink": M(lambda s, x: F.hardshrink(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "relu_inplace_seq": M(lambda s, x: s.seq(x).flatten(1), {"seq": nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1), nn.SiLU(inplace=True))}),
    "maxpool_dilation": M(lambda s, x: F.max_pool2d(s.c(x), 2, 2, 0, 2).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "avgpool1d_conv1d": M(lambda s, x: F.avg_pool1d(s.c(x), 2).flatten(1), {"c": nn.Conv1d(2, 4, 3)}, (2, 16)),
    "conv1d_dilated_causal": M(lambda s, x: s.c(F.pad(x, (4, 0))).flatten(1), {"c": nn.Conv1d(2, 4, 3, dilation=2)}, (2, 16)),
    "unsqueeze_expand": M(lambda s, x: (s.c(x) * s.g(x.mean((2, 3))).unsqueeze(-1).unsqueeze(-1)).flatten(1), {"c": nn.Conv2d(2, 4, 3, padding=1), "g": nn.Linear(2, 4)}),
    "expand_as": M(lambda s, x: (s.c(x) * s.g(x.mean((2, 3)))[:, :, None, None].expand_as(s.c(x))).flatten(1), {"c": nn.Conv2d(2, 4, 3, padding=1), "g": nn.Linear(2, 4)}),
    "repeat": M(lambda s, x: torch.cat([s.c(x), s.c(x).mean(1, keepdim=True).repeat(1, 4, 1, 1)], 1).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "tanh_softsign_mod": M(lambda s, x: s.a(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "a": nn.Tanhshrink()}),
    "threshold": M(lambda s, x: F.threshold(s.c(x), 0.1, 0.0).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    # --- probe3
    "buffer_norm": M(lambda s, x: s.c((x - s.mean) / s.std).flatten(1), {"c": nn.Conv2d(2, 3, 3)}, init=buf_norm),
    "pos_embed": M(lambda s, x: s.f(s.a(x) + s.pos).mean(1), {"a": nn.Linear(8, 8), "f": nn.Linear(8, 3)}, (5, 8), init=pos),
    "layer_scale_tok": M(lambda s, x: (s.a(x) * s.gamma + x).mean(1), {"a": nn.Linear(8, 8)}, (5, 8), init=gam),
    "layer_scale_conv": M(lambda s, x: (s.c(x) * s.gamma.view(1, -1, 1, 1)).flatten(1), {"c": nn.Conv2d(2, 4, 3)}, init=gam4),
    "layer_scale_conv2": M(lambda s, x: (s.c(x) * s.gamma[:, None, None]).flatten(1), {"c": nn.Conv2d(2, 4, 3)}, init=gam4),
    "x_at_param": M(lambda s, x: (s.a(x) @ s.W).mean(1), {"a": nn.Linear(8, 8)}, (5, 8), init=W),
    "F_linear": M(lambda s, x: F.linear(x.flatten(1), s.weight, s.bias), {}, init=lin),
    "F_conv2d": M(lambda s, x: F.conv2d(x, s.weight, padding=1).flatten(1), {}, init=cw),
    "view_minus1": M(lambda s, x: s.f(F.max_pool2d(F.relu(s.c(x)), (2, 2)).view(-1, 3 * 3 * 3)), {"c": nn.Conv2d(2, 3, 3), "f": nn.Linear(27, 4)}),
    "log_softmax": M(lambda s, x: F.log_softmax(s.f(x.flatten(1)), dim=1), {"f": nn.Linear(128, 4)}),
    "max_dim_values": M(lambda s, x: torch.max(s.c(x.flatten(2)), 2, keepdim=True)[0].flatten(1), {"c": nn.Conv1d(2, 4, 1)}),
    "max_values_attr": M(lambda s, x: s.c(x.flatten(2)).max(dim=-1).values, {"c": nn.Conv1d(2, 4, 1)}),
    "reflect_pad": M(lambda s, x: s.c(s.p(x)).flatten(1), {"p": nn.ReflectionPad2d(1), "c": nn.Conv2d(2, 3, 3)}),
    "replicate_pad": M(lambda s, x: s.c(F.pad(x, (1, 1, 1, 1), mode="replicate")).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "permute_conv1d": M(lambda s, x: s.c(x.permute(0, 2, 1)).flatten(1), {"c": nn.Conv1d(8, 4, 3)}, (5, 8)),
    "adaptive_max": M(lambda s, x: s.p(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "p": nn.AdaptiveMaxPool2d(1)}),
    "adaptive_avg2": M(lambda s, x: s.p(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3, padding=1), "p": nn.AdaptiveAvgPool2d(2)}),
    "upsample_nearest": M(lambda s, x: s.c(s.u(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "u": nn.Upsample(scale_factor=2)}),
    "dropout_f": M(lambda s, x: F.dropout(s.f(x.flatten(1)), 0.5, training=s.training), {"f": nn.Linear(128, 4)}),
    "unflatten": M(lambda s, x: s.c(s.u(s.f(x.flatten(1)))).flatten(1), {"f": nn.Linear(128, 32), "u": nn.Unflatten(1, (2, 4, 4)), "c": nn.Conv2d(2, 3, 3)}),
    "leaky02": M(lambda s, x: F.leaky_relu(s.c(x), 0.2).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "clamp_min": M(lambda s, x: s.c(x).clamp_min(0).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "tokens_mean": M(lambda s, x: torch.mean(s.a(x), dim=1), {"a": nn.Linear(8, 4)}, (5, 8)),
    "bn1d_seq": M(lambda s, x: F.relu(s.b(s.c(x))).flatten(1), {"c": nn.Conv1d(5, 4, 3), "b": nn.BatchNorm1d(4)}, (5, 8)),
    "bn1d_tokens": M(lambda s, x: s.b(s.a(x).transpose(1, 2)).mean(2), {"a": nn.Linear(8, 4), "b": nn.BatchNorm1d(4)}, (5, 8)),
    "maxpool1d": M(lambda s, x: F.max_pool1d(s.c(x), 2).flatten(1), {"c": nn.Conv1d(5, 4, 3)}, (5, 8)),
    "glu": M(lambda s, x: F.glu(s.c(x), 1).flatten(1), {"c": nn.Conv1d(5, 4, 3)}, (5, 8)),
    "pixel_shuffle": M(lambda s, x: F.pixel_shuffle(s.c(x), 2).flatten(1), {"c": nn.Conv2d(2, 8, 3)}),
    "pixel_unshuffle": M(lambda s, x: s.c(F.pixel_unshuffle(x, 2)).flatten(1), {"c": nn.Conv2d(8, 3, 3)}),
    "hardswish_mbv3": M(lambda s, x: s.c2(F.hardswish(s.c(x)) * F.hardsigmoid(s.f(x.mean((2, 3))))[:, :, None, None]).flatten(1), {"c": nn.Conv2d(2, 4, 3), "f": nn.Linear(2, 4), "c2": nn.Conv2d(4, 2, 1)}),
    "std_mean_norm": M(lambda s, x: ((s.a(x) - s.a(x).mean(-1, keepdim=True))).mean(1), {"a": nn.Linear(8, 4)}, (5, 8)),
    "torch_add_alpha": M(lambda s, x: torch.add(s.c(x), x[:, :1, 1:-1, 1:-1], alpha=0.5).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "silu_mul_gate": M(lambda s, x: (F.silu(s.a(x)) * s.b(x)).mean(1), {"a": nn.Linear(8, 6), "b": nn.Linear(8, 6)}, (5, 8)),
    "rms_norm": M(lambda s, x: s.n(s.a(x)).mean(1), {"a": nn.Linear(8, 6), "n": nn.RMSNorm(6)}, (5, 8)),
    "identity_flatten": M(lambda s, x: s.fl(s.i(s.c(x))), {"c": nn.Conv2d(2, 3, 3), "i": nn.Identity(), "fl": nn.Flatten()}),
    "einsum_lin": M(lambda s, x: torch.einsum("btd,bsd->bts", s.a(x), s.b(x)).mean(1), {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}, (5, 8)),
    # --- probe4
    "e_bts": eins("btd,bsd->bts"),
    "e_bts_implicit": eins("btd,bsd"),
    "e_matmul": M(lambda s, x: torch.einsum("bij,bjk->bik", s.a(x), s.b(x).transpose(1, 2)).flatten(1), {"a": nn.Linear(8, 5), "b": nn.Linear(8, 5)}, (5, 8)),
    "e_dot": M(lambda s, x: torch.einsum("bi,bi->b", s.a(x), s.b(x)).unsqueeze(1), {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}, (8,)),
    "e_outer": M(lambda s, x: torch.einsum("bi,bj->bij", s.a(x), s.b(x)).flatten(1), {"a": nn.Linear(8, 4), "b": nn.Linear(8, 3)}, (8,)),
    "e_heads": M(lambda s, x: torch.einsum("bhqk,bhkd->bhqd", torch.softmax(torch.einsum("bhqd,bhkd->bhqk", s.a(x).view(-1, 5, 2, 2).transpose(1, 2), s.b(x).view(-1, 5, 2, 2).transpose(1, 2)), -1), s.b(x).view(-1, 5, 2, 2).transpose(1, 2)).flatten(1), {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}, (5, 8)),
    "e_perm": M(lambda s, x: torch.einsum("bnc->bcn", s.a(x)).flatten(1), {"a": nn.Linear(8, 4)}, (5, 8)),
    "e_sum": M(lambda s, x: torch.einsum("bnc->bc", s.a(x)), {"a": nn.Linear(8, 4)}, (5, 8)),
    "x_at_Wt": M(lambda s, x: (x @ s.W.t()).flatten(1), {}, (5, 8), init=Wt),
    "glu_mod": M(lambda s, x: s.g(s.c(x)).flatten(1), {"c": nn.Conv1d(5, 4, 3), "g": nn.GLU(1)}, (5, 8)),
    "rms_f": M(lambda s, x: F.rms_norm(s.a(x), (4,), eps=1e-5).flatten(1), {"a": nn.Linear(8, 4)}, (5, 8)),
    # --- probe5
    "ac_true": I(scale_factor=2, mode="bilinear", align_corners=True),
    "ac_true_mod": M(lambda s, x: s.u(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3, padding=1), "u": nn.UpsamplingBilinear2d(scale_factor=2)}),
    "size_odd": I(size=(11, 13), mode="bilinear", align_corners=False),
    "size_odd_ac": I(size=(11, 13), mode="bilinear", align_corners=True),
    "sf_1_5": I(scale_factor=1.5, mode="bilinear"),
    "down_half": I(scale_factor=0.5, mode="bilinear"),
    "nearest_size": I(size=(12, 5)),
    "nearest_exact": I(size=(12, 5), mode="nearest-exact"),
    "nearest_sf_recompute": I(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
    "h_only": I(size=(16, 8), mode="bilinear", align_corners=True),
    # --- probe6
    "threshold_mod": M(lambda s, x: s.t(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3), "t": nn.Threshold(0.2, 0.0)}),
    "var": M(lambda s, x: s.a(x.flatten(1)).var(1, keepdim=True), {"a": nn.Linear(128, 4)}),
    "std": M(lambda s, x: s.a(x.flatten(1)).std(1, keepdim=True), {"a": nn.Linear(128, 4)}),
    "std_unbiased_false": M(lambda s, x: torch.std(s.c(x), dim=(2, 3), unbiased=False), {"c": nn.Conv2d(2, 4, 3)}),
    "var_corr0": M(lambda s, x: s.c(x).var(dim=-1, correction=0).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "repeat2": M(lambda s, x: s.c(x).repeat(1, 2, 1, 3).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "repeat_mul": M(lambda s, x: (s.c(x) * s.c(x).mean(1, keepdim=True).repeat(1, 4, 1, 1)).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "instnorm1d_noaff": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv1d(2, 4, 3), "n": nn.InstanceNorm1d(4)}, (2, 16)),
    "groupnorm1d": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv1d(2, 4, 3), "n": nn.GroupNorm(1, 4)}, (2, 16)),
    "layernorm_hw": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 3, 3), "n": nn.LayerNorm([6, 6])}),
    "layernorm_cl": M(lambda s, x: s.n(s.c(x)).flatten(1), {"c": nn.Conv1d(2, 4, 3), "n": nn.LayerNorm([4, 14])}, (2, 16)),
    "layernorm_tokens2": M(lambda s, x: s.n(s.a(x)).flatten(1), {"a": nn.Linear(8, 4), "n": nn.LayerNorm([5, 4], elementwise_affine=False)}, (5, 8)),
    # --- probe7
    "adaptive_uneven": M(lambda s, x: s.p(s.c(x)).flatten(1), {"c": nn.Conv2d(2, 4, 3, padding=1), "p": nn.AdaptiveAvgPool2d((3, 5))}),
    "adaptive_f_uneven": M(lambda s, x: F.adaptive_avg_pool2d(s.c(x), 6).flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    "adaptive_up": M(lambda s, x: F.adaptive_avg_pool2d(s.c(x), 6).flatten(1), {"c": nn.Conv2d(2, 4, 3, stride=3)}),
    "area": M(lambda s, x: F.interpolate(s.c(x), size=(3, 4), mode="area").flatten(1), {"c": nn.Conv2d(2, 4, 3)}),
    # --- probe8
    "flip2": M(lambda s, x: torch.flip(s.c(x), dims=(2, 3)).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "flip_ch": M(lambda s, x: s.c(x).flip(1).flatten(1), {"c": nn.Conv2d(2, 3, 3)}),
    "cumsum_last": M(lambda s, x: s.a(x).cumsum(-1).mean(1), {"a": nn.Linear(8, 4)}, (5, 8)),
    "cumsum_tokens": M(lambda s, x: s.a(x).cumsum(dim=1).flatten(1), {"a": nn.Linear(8, 4)}, (5, 8)),
    # --- rnn
    "lstm_last": M(last, {"l": nn.LSTM(8, 6, batch_first=True), "f": nn.Linear(6, 3)}, (5, 8)),
    "lstm_hn": M(hn, {"l": nn.LSTM(8, 6, num_layers=2, batch_first=True), "f": nn.Linear(6, 3)}, (5, 8)),
    "lstm_bi": M(bi, {"l": nn.LSTM(8, 6, batch_first=True, bidirectional=True), "f": nn.Linear(12, 3)}, (5, 8)),
    "gru_seqfirst": M(seqfirst, {"l": nn.GRU(8, 6), "f": nn.Linear(6, 3)}, (5, 8)),
    "lstm_zero_state": M(zero_state, {"l": nn.LSTM(8, 6, batch_first=True), "f": nn.Linear(6, 3)}, (5, 8)),
    "rnn_relu": M(rnn, {"l": nn.RNN(8, 6, nonlinearity="relu", batch_first=True), "f": nn.Linear(30, 3)}, (5, 8)),
}


def run_case(name: str) -> tuple[bool, str]:
    cls, shape = CASES[name]
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    try:
        q = qfx.quantize_model(cls(), qfx.QFXConfig(), x)
        square_loss_steps(q, x, 2)
        _, exact_vs_interp, train_vs_exact = exact_check(q, x[:16])
    except UnsupportedError as e:
        return False, "refused: " + str(e).splitlines()[0][:160]
    except Exception as e:  # noqa: BLE001 - a benchmark reports every failure and goes on
        return False, f"{type(e).__name__}: " + str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    if exact_vs_interp or train_vs_exact:
        return False, f"mismatches: exact vs interpreter {exact_vs_interp}, train vs exact {train_vs_exact}"
    return True, ""


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    names = argv or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    t0, ok = time.perf_counter(), 0
    for name in names:
        good, why = run_case(name)
        ok += good
        print(f"{name:24s} {'OK' if good else why}")
    print(f"\n{ok} of {len(names)} cases convert, train and agree bit for bit ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
