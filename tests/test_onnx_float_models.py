"""Float models written the usual way (torch layers, torch.onnx.export) go through ``qfx quantize`` and import.

Each model is exported at opset 13 and 17 (the TorchScript exporter, ``dynamo=False``), quantized with 8-bit
weights/activations on calibration data, imported, and run by the golden interpreter; the result must follow
onnxruntime's float output of the original model (small relative error, same argmax) and the exported qfx ONNX
must compute the interpreter's bits. Two models also run through g++ C simulation.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

from qfx.errors import UnsupportedError  # noqa: E402
from qfx.ir.interpret import run  # noqa: E402
from qfx.onnx.export import to_onnx_model  # noqa: E402
from qfx.onnx.importer import import_model, input_codes, output_values  # noqa: E402
from qfx.onnx.quantize import quantize_onnx  # noqa: E402
from qfx.onnx.runtime import run_onnx_codes  # noqa: E402


class MLPBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.bn, self.f2 = nn.Linear(12, 16), nn.BatchNorm1d(16), nn.Linear(16, 5)

    def forward(self, x):
        return torch.softmax(self.f2(F.relu(self.bn(self.f1(x)))), dim=-1)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3)
        self.pool, self.gap, self.fc = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Linear(6, 3)

    def forward(self, x):
        h = self.pool(F.relu(self.bn(self.c1(x))))
        h = self.gap(F.relu(self.c2(h)))
        return self.fc(h.view(h.size(0), -1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4), nn.Conv1d(4, 4, 3)
        self.mp, self.ap, self.fc = nn.MaxPool1d(2), nn.AvgPool1d(2), nn.Linear(4 * 3, 4)

    def forward(self, x):
        h = self.mp(F.relu(self.bn(self.c1(x))))  # (4, 8)
        h = self.ap(F.relu(self.c2(h)))  # (4, 3)
        return self.fc(torch.flatten(h, 1))


class ChannelsLast1d(nn.Module):
    """The Keras layout: (N, L, C) data, transposed around a channels-first convolution."""

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv1d(3, 4, 4, padding=2), nn.Linear(9 * 4, 3)

    def forward(self, x):
        h = F.relu(self.c(x.permute(0, 2, 1))).permute(0, 2, 1)
        return self.fc(h.reshape(h.shape[0], -1))


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw, self.pw = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return F.relu6(self.pw(F.relu6(self.dw(x)))).mean((2, 3))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.c2(F.relu(self.c1(x))))


class ConcatUpsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.up = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 2, 3, padding=1), nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.up(F.relu(torch.cat([self.a(x), self.b(x)], 1)))


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(6, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = F.leaky_relu(self.f(x), 0.125)
        h = F.hardswish(self.g(h))
        return torch.sigmoid(h) + torch.tanh(h)


class PadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return torch.clamp(self.c(F.pad(x, (1, 1, 1, 1))), -1.0, 1.0)


class SiLUNet(nn.Module):
    """SiLU exports as ``x * Sigmoid(x)``: a product of two activations."""

    def __init__(self):
        super().__init__()
        self.c, self.f = nn.Conv2d(2, 4, 3, padding=1), nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.f(torch.flatten(F.silu(self.c(x)), 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3's gate: (N, C, 1, 1) Hardsigmoid scores times the (N, C, H, W) features."""

    def __init__(self):
        super().__init__()
        self.c, self.s1, self.s2, self.f = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), \
            nn.Linear(8, 3)

    def forward(self, x):
        h = F.hardswish(self.c(x))
        s = F.hardsigmoid(self.s2(F.relu(self.s1(F.adaptive_avg_pool2d(h, 1)))))
        return self.f(torch.flatten(F.adaptive_avg_pool2d(h * s, 1), 1))


class GatedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.f = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.f(self.a(x) * torch.sigmoid(self.b(x)))


class GeluNets(nn.Module):
    """GELU both ways: exact (exports Erf at opset 13/17) and the tanh approximation."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.f = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.f(F.gelu(self.b(F.gelu(self.a(x))), approximate="tanh"))


class ChunkSplit(nn.Module):
    """``chunk`` (Slice nodes), ``torch.split`` with unequal sizes (Split), a square (Pow 2) and Mish."""

    def __init__(self):
        super().__init__()
        self.a, self.f, self.g = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x)
        p, q = h.chunk(2, 1)
        r, s = torch.split(h, [3, 5], 1)
        return self.f(torch.cat([F.mish(q), p ** 2], 1)) + self.g(torch.cat([s, r], 1))


class PixelSoftmax(nn.Module):
    """Segmentation-style head: per-pixel class scores (softmax over the channels), and a global max pool."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        h = F.relu(self.c(x))
        return torch.softmax(self.d(h), 1) * h.amax(dim=(2, 3), keepdim=True)[:, :3]


class ElementwiseMath(nn.Module):
    """Exp, Log, Sqrt, Reciprocal, Abs, CELU of computed tensors: tables of the quantized input."""

    def __init__(self):
        super().__init__()
        self.a, self.f = nn.Linear(6, 4), nn.Linear(20, 3)

    def forward(self, x):
        h = self.a(x)
        m = h.abs() + 1.0
        return self.f(torch.cat([torch.exp(-m), torch.log(m), torch.sqrt(m), 1.0 / m, F.celu(h, 0.5)], 1))


def _affine_uniform(norm: nn.Module) -> nn.Module:
    """Non-trivial LayerNorm/GroupNorm/InstanceNorm scale and shift (the defaults are ones and zeros)."""
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)
    return norm


class LayerNormNet(nn.Module):
    """LayerNorm over the features (LayerNormalization at opset 17, ReduceMean/Sub/Pow/Sqrt/Div at 13)."""

    def __init__(self):
        super().__init__()
        self.a, self.ln, self.f = nn.Linear(6, 8), _affine_uniform(nn.LayerNorm(8)), nn.Linear(8, 3)

    def forward(self, x):
        return self.f(F.relu(self.ln(self.a(x))))


class ConvNorms(nn.Module):
    """InstanceNorm2d and GroupNorm (both InstanceNormalization in ONNX, GroupNorm between two Reshapes)."""

    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(2, 4, 3, padding=1), _affine_uniform(nn.InstanceNorm2d(4, affine=True))
        self.c2, self.n2 = nn.Conv2d(4, 4, 3, padding=1), _affine_uniform(nn.GroupNorm(2, 4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.n2(self.c2(F.relu(self.n1(self.c1(x))))))
        return self.fc(h.mean((2, 3)))


class Ratios(nn.Module):
    """Division by activations: a / (softplus(b) + 1) and 2 / (relu(c) + 1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        return self.a(x) / (F.softplus(self.b(x)) + 1.0) + 2.0 / (F.relu(self.b(x)) + 1.0)


class FeatureReductions(nn.Module):
    """Reductions over the features of (N, n) with keepdim, broadcast back: centring, abs-sum, min, max."""

    def __init__(self):
        super().__init__()
        self.a, self.f = nn.Linear(6, 8), nn.Linear(11, 2)

    def forward(self, x):
        h = self.a(x)
        c = h - h.mean(-1, keepdim=True)
        return self.f(torch.cat([c.abs().sum(-1, keepdim=True), h.amin(-1, keepdim=True), h.amax(1, keepdim=True),
                                 c[:, :8]], 1))


class PlaneReductions(nn.Module):
    """Reductions over the channels (a spatial gate), the width, a height and a whole sample of (N, C, H, W)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.c(x))
        gate = torch.sigmoid(h.mean(1, keepdim=True))
        return torch.cat([(h * gate).flatten(1), h.amax(3).flatten(1), h.sum((1, 2, 3), keepdim=True).flatten(1),
                          (h - h.amin(2, keepdim=True)).flatten(1)], 1)


class TokenMLP(nn.Module):
    """Linear layers and a LayerNorm on (N, L, d) tokens (MatMul + Add on a 3-D tensor, LayerNorm over the last axis,
    its scale and shift along the last axis), pooled over the tokens."""

    def __init__(self):
        super().__init__()
        self.a, self.ln, self.b = nn.Linear(6, 8), _affine_uniform(nn.LayerNorm(8)), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(F.relu(self.ln(self.a(x)))).mean(1)


class BilinearHead(nn.Module):
    """Bilinear upsampling (align_corners=False: Resize, mode linear, half-pixel) by 2 and by 3 (ESPNet/FPN heads)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.c(x))
        return torch.cat([F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False).flatten(1),
                          F.interpolate(h, scale_factor=3, mode="bilinear", align_corners=False).flatten(1)], 1)


class Resizes(nn.Module):
    """Resize beyond integer half-pixel factors (QResize2d's separable matrices): linear with align_corners
    (UpsamplingBilinear2d), to an odd size, by 1.5, downscaling by 2, nearest to a size that is no multiple."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.c(x))
        return torch.cat([F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True).flatten(1),
                          F.interpolate(h, size=(7, 9), mode="bilinear", align_corners=False).flatten(1),
                          F.interpolate(h, scale_factor=1.5, mode="bilinear").flatten(1),
                          F.interpolate(h, scale_factor=0.5, mode="bilinear").flatten(1),
                          F.interpolate(h, size=(6, 3)).flatten(1)], 1)


class EinsumAttention(nn.Module):
    """Attention and pooling written with torch.einsum (exported as Einsum): scores, weighted sum, a per-token dot
    product, a permute and a sum."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.h = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(4 + 4 + 5, 3)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        att = torch.softmax(torch.einsum("bqd,bkd->bqk", q, k) * 0.5, -1)
        y = torch.einsum("bqk,bkd->bqd", att, v)
        return self.h(torch.cat([torch.einsum("bnc->bcn", y).mean(2), torch.einsum("bnc->bc", y) * 0.2,
                                 torch.einsum("bnc,bnc->bn", q, k) * 0.3], 1))


class Tiles(nn.Module):
    """x.repeat over channels and width (exported as Tile with constant repeats)."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = self.c(x)
        return self.d(torch.cat([h, h.mean(1, keepdim=True).repeat(1, 3, 1, 1)], 1)).repeat(1, 1, 1, 2)


class Recurrent(nn.Module):
    """torch's exports of recurrent layers: a 2-layer LSTM read through h_n[-1], a bidirectional GRU's last
    step, a sequence-first GRU fed x.transpose(0, 1) read at out[-1], a ReLU RNN's whole output sequence."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(3, 4, batch_first=True, bidirectional=True)
        self.gru_sf, self.rnn = nn.GRU(3, 4), nn.RNN(3, 2, batch_first=True, nonlinearity="relu")
        self.f = nn.Linear(5 + 8 + 4 + 8, 3)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        seq_first, _ = self.gru_sf(x.transpose(0, 1))
        return self.f(torch.cat([h[-1], self.gru(x)[0][:, -1], seq_first[-1], self.rnn(x)[0].flatten(1)], 1))


class FlipsSumsPools(nn.Module):
    """torch's exports of flip (Slice with step -1), cumsum (CumSum), average pools with ceil_mode and partial
    last windows (count_include_pad either way), a std over a flattened plane (ReduceProd of the shape folded)."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 36 + 3 * 36 + 2 * 3 * 16 + 3, 4)

    def forward(self, x):
        h = self.c(x)  # (N, 3, 6, 6)
        parts = [(h + h.flip(3)).flatten(1), torch.cumsum(h, 1).flatten(1),
                 F.avg_pool2d(h, 3, 2, 1, ceil_mode=True).flatten(1),
                 F.avg_pool2d(h, 3, 2, 1, ceil_mode=True, count_include_pad=False).flatten(1),
                 h.flatten(2).std(2) * 0.25]
        return self.d(torch.cat(parts, 1))


class ExcludePadPools(nn.Module):
    """Average pools that divide by the count of real elements (count_include_pad=False: Keras 'same' pools,
    Inception's 3x3 branch pool), symmetric and strided."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1)
        self.p1 = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.p2 = nn.AvgPool2d(3, 2, 1, count_include_pad=False)

    def forward(self, x):
        h = F.relu(self.c(x))
        return torch.cat([self.p1(h).flatten(1), self.p2(h).flatten(1)], 1)


class Selections(nn.Module):
    """torch.where / masked_fill of comparisons with constants (Greater/Less/... + Where in ONNX)."""

    def __init__(self):
        super().__init__()
        self.a, self.f = nn.Linear(6, 8), nn.Linear(24, 3)

    def forward(self, x):
        h = self.a(x)
        return self.f(torch.cat([torch.where(h > 0, h, 0.1 * h), h.masked_fill(h < -0.5, -0.5),
                                 torch.where(0.5 >= h, 0.0, h - 0.5)], 1))


class PickTokens(nn.Module):
    """x[:, 0] and x[:, -1] of tokens (the class token, the last step), a channel and a row of a feature map: ONNX
    Gather with a constant index."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.f = nn.Linear(6, 8), nn.Conv2d(5, 3, 1), nn.Linear(16 + 6 + 3, 3)

    def forward(self, x):  # (N, 5, 6)
        h = F.relu(self.a(x))
        m = F.relu(self.c(x.unsqueeze(-1).expand(-1, -1, -1, 2).contiguous()))  # (N, 3, 6, 2)
        return self.f(torch.cat([h[:, 0], h[:, -1], m[:, 1].flatten(1)[:, :6], m[:, :, 2, 0]], 1))


class Normalized(nn.Module):
    """F.normalize of an embedding (ReduceL2, Clip, Expand, Div in the export) before a Linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.f = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.f(F.normalize(self.a(x), dim=1))


class TinyViT(nn.Module):
    """A vision transformer exported with batch 1 (torchvision's layout): patch-embedding Conv, class token
    concatenated in front, position embedding added, batch_first attention (its export moves the batch axis:
    qfx lifts the whole sample), GELU MLP, the class token's LayerNorm and a head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(2, 8, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.3)
        self.att, self.n1, self.n2 = nn.MultiheadAttention(8, 2, batch_first=True), nn.LayerNorm(8), nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (N, 2, 4, 4)
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 4, 8)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        h = self.n1(t)
        t = t + self.att(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.n2(t))
        return self.head(t[:, 0])


class TinySwin(nn.Module):
    """Shifted-window attention as Swin writes it, exported with batch 1: patch embedding, channels-last LayerNorm,
    torch.roll, windows folded into the batch axis (view/permute/reshape: qfx lifts the whole sample), a relative
    position bias (a table indexed by a constant buffer), the shifted-window mask (slice assignments: ScatterND),
    windows put back, an MLP and a pooled head."""

    def __init__(self, ws: int = 2, c: int = 8, heads: int = 2):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.patch = nn.Conv2d(2, c, 2, stride=2)
        self.n1, self.n2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("index", (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).flatten())
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.head = nn.Linear(c, 3)

    def forward(self, x):  # (N, 2, 8, 8)
        h = self.patch(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        b, hh, ww, c = h.shape
        ws, s, n = self.ws, self.ws // 2, self.ws * self.ws
        y = torch.roll(self.n1(h), shifts=(-s, -s), dims=(1, 2))
        y = y.view(b, hh // ws, ws, ww // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        q, k, v = self.qkv(y).reshape(y.shape[0], n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        att = att + self.table[self.index].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        mask = h.new_zeros((hh, ww))
        cnt = 0
        for rows in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for cols in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                mask[rows, cols] = cnt
                cnt += 1
        mask = mask.view(hh // ws, ws, ww // ws, ws).permute(0, 2, 1, 3).reshape(-1, n)
        mask = ((mask.unsqueeze(1) - mask.unsqueeze(2)) != 0).float() * -100.0
        att = att.view(b, -1, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        att = att.view(-1, self.heads, n, n).softmax(-1)
        o = self.proj((att @ v).transpose(1, 2).reshape(-1, n, c))
        o = o.view(b, hh // ws, ww // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
        h = h + torch.roll(o, shifts=(s, s), dims=(1, 2))
        h = h + self.mlp(self.n2(h))
        return self.head(h.mean((1, 2)))


class ChannelsLastPad(nn.Module):
    """F.pad of a channels-last (N, H, W, C) view along H and W (Swin's window padding), and of the channels of
    (N, C, L) tokens: zero padding of axes other than (C, H, W)'s spatial ones."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.f = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 2, 3), nn.Linear(2 * 4 * 5 + 5 * 6, 3)

    def forward(self, x):  # (N, 2, 5, 4)
        h = F.pad(F.relu(self.a(x)).permute(0, 2, 3, 1), (0, 0, 1, 2, 0, 1)).permute(0, 3, 1, 2)  # (N, 3, 6, 7)
        t = F.pad(x.flatten(2), (0, 0, 1, 2))  # (N, 5, 20): the channel axis padded
        return self.f(torch.cat([self.b(h).flatten(1), t[:, :, :6].flatten(1)], 1))


class DenseCeilPool(nn.Module):
    """DenseNet's first layer concatenates a list of one tensor; GoogLeNet's max pools use ceil_mode with a partial
    last window (8 -> 4 with 3x3 stride 2; 4 -> 3 with padding 1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.f = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 3, 1), nn.Linear(3 * 4 * 4 + 3 * 3 * 3, 3)
        self.p1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.p2 = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)

    def forward(self, x):  # (N, 2, 8, 8)
        h = self.b(torch.cat([F.relu(self.a(x))], 1))
        return self.f(torch.cat([self.p1(h).flatten(1), self.p2(self.p1(h)).flatten(1)], 1))


MODELS = {  # name: (module, per-sample input shape)
    "mlp_bn_softmax": (MLPBN, (12,)), "cnn_bn_pool_gap": (CNN, (2, 8, 8)), "conv1d": (Conv1dNet, (3, 16)),
    "conv1d_channels_last": (ChannelsLast1d, (8, 3)), "depthwise_separable_mean": (DepthwiseSeparable, (4, 6, 6)),
    "residual_add": (Residual, (3, 5, 5)), "concat_upsample": (ConcatUpsample, (2, 4, 4)),
    "activation_heads": (Heads, (6,)), "pad_clip": (PadNet, (2, 5, 5)), "silu": (SiLUNet, (2, 4, 4)),
    "squeeze_excite": (SqueezeExcite, (3, 6, 6)), "gated_linear": (GatedLinear, (6,)), "gelu": (GeluNets, (6,)),
    "chunk_split_pow": (ChunkSplit, (6,)), "pixel_softmax_max": (PixelSoftmax, (2, 4, 4)),
    "elementwise_math": (ElementwiseMath, (6,)), "layernorm": (LayerNormNet, (6,)),
    "instance_group_norm": (ConvNorms, (2, 6, 6)), "ratios": (Ratios, (6,)),
    "feature_reductions": (FeatureReductions, (6,)), "plane_reductions": (PlaneReductions, (2, 5, 5)),
    "token_mlp": (TokenMLP, (5, 6)), "bilinear": (BilinearHead, (2, 4, 4)),
    "exclude_pad_pools": (ExcludePadPools, (2, 5, 6)), "selections": (Selections, (6,)),
    "pick_tokens": (PickTokens, (5, 6)), "normalized": (Normalized, (6,)), "resizes": (Resizes, (2, 4, 4)),
    "einsum_attention": (EinsumAttention, (5, 6)), "tiles": (Tiles, (2, 5, 5)), "recurrent": (Recurrent, (4, 3)),
    "flips_sums_pools": (FlipsSumsPools, (2, 6, 6)), "tiny_vit": (TinyViT, (2, 4, 4)),
    "dense_ceil_pool": (DenseCeilPool, (2, 8, 8)), "tiny_swin": (TinySwin, (2, 8, 8)),
    "channels_last_pad": (ChannelsLastPad, (2, 5, 4)),
}


#: models whose export needs a newer opset than a test asks for (attention exported as scaled_dot_product_attention)
MIN_OPSET = {"tiny_vit": 14}


def _export(name: str, opset: int):
    cls, shape = MODELS[name]
    opset = max(opset, MIN_OPSET.get(name, opset))
    torch.manual_seed(0)
    m = cls().eval()
    for mod in m.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.onnx.export(m, torch.zeros(1, *shape), buf, opset_version=opset, dynamo=False, input_names=["x"],
                      output_names=["y"])
    return onnx.load_from_string(buf.getvalue()), shape


def _float_out(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def quantize_and_check(name: str, opset: int, tol: float = 0.08):
    """Quantize, import, run; returns (graph, codes). Asserts the agreement with onnxruntime's float output."""
    model, shape = _export(name, opset)
    r = np.random.default_rng(1)
    calib = r.uniform(-1, 1, (128, *shape)).astype(np.float32)
    qm, _ = quantize_onnx(model, calib)
    g = import_model(qm)
    x = r.uniform(-1, 1, (48, *shape)).astype(np.float32)
    codes = input_codes(g, x)
    got = output_values(g, run(g, codes)).reshape(len(x), -1)
    ref = _float_out(model, x).reshape(len(x), -1)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-9))
    assert err < tol, f"{name} opset {opset}: max error {err:.3f} of the largest output"
    if ref.shape[1] > 1 and ref.ndim == 2 and name in ("mlp_bn_softmax", "cnn_bn_pool_gap", "conv1d"):
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9
    return g, codes


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_float_model_quantizes_and_imports(name, opset):
    g, codes = quantize_and_check(name, opset)
    if opset == 13:  # every qfx executor computes the same bits: exported ONNX under onnxruntime == interpreter
        np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes),
                                      run(g, codes))


def test_softmax_tail_is_the_softmax_op():
    g, codes = quantize_and_check("mlp_bn_softmax", 13)
    assert g.nodes[-1].op == "softmax"
    assert g.tensor(g.outputs[0]).fmt.ap_type().startswith("ap_ufixed<16,1")


def test_conv1d_keeps_the_promised_shape():
    g, _ = quantize_and_check("conv1d", 17)
    convs = [n for n in g.nodes if n.op == "conv2d"]
    assert len(convs) == 2 and all(g.tensor(n.output).shape[1] == 1 for n in convs)
    # the (C, L) tensors the ONNX model promises sit between the 2-D convolutions
    assert any(len(g.tensor(n.output).shape) == 2 for n in g.nodes if n.op == "reshape")


@pytest.mark.gxx
@pytest.mark.parametrize("name", ["conv1d", "activation_heads", "squeeze_excite", "pixel_softmax_max", "layernorm",
                                  "instance_group_norm", "ratios", "plane_reductions", "token_mlp", "bilinear",
                                  "exclude_pad_pools", "selections", "resizes", "einsum_attention", "tiles",
                                  "recurrent", "flips_sums_pools", "tiny_vit", "dense_ceil_pool", "tiny_swin", "channels_last_pad"])
def test_float_model_csim(name, tmp_path):
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.csim import run_csim

    g, _ = quantize_and_check(name, 13)
    g = run_flow(g, DEFAULT_FLOW).graph
    rep = run_csim(export_graph(g, "hls", tmp_path / "hls"), n_vectors=64)
    assert rep.mismatches == 0 and rep.outputs_compared > 0


@pytest.mark.verilator
def test_norms_reductions_and_ratios_rtl_cosim(tmp_path):
    """The decomposed LayerNorm / InstanceNorm / GroupNorm, divisions by activations, reductions over the
    features, channels and width (transposes, (P, 1, Q) broadcasts, reciprocal tables) and Linear/LayerNorm on
    tokens, bilinear upsampling, count_include_pad=0 pools in RTL: one Verilator build for the seven projects, with stalls, 0 mismatches."""
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for name in ("layernorm", "instance_group_norm", "ratios", "plane_reductions", "token_mlp", "bilinear",
                 "exclude_pad_pools"):
        g, _ = quantize_and_check(name, 17)
        g = dataclasses.replace(g, name=f"f_{name}")  # one top module per project in the shared build
        rtl.write_project(g, tmp_path / name)
        dirs.append(tmp_path / name)
    for rep in run_cosim_many(dirs, n_vectors=40, seed=4, work_dir=tmp_path / "w"):
        assert rep.ok and rep.mismatches == 0 and rep.received, (rep.top, rep.mismatches, rep.received)


def _caffe_era_model():
    """What Caffe-era ONNX models (the ONNX test zoo's AlexNet, GoogLeNet, SqueezeNet, ResNet-50) are made of, at
    opset 9: LRN, a MaxPool with (0, 1, 0, 1) padding, Sum of two branches, a Softmax(axis=1) over (N, 5, 1, 1)."""
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(2)
    w1 = r.normal(0, 0.4, (6, 2, 3, 3)).astype(np.float32)
    w2 = r.normal(0, 0.3, (6, 6, 1, 1)).astype(np.float32)
    w3 = r.normal(0, 0.3, (5, 6, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("LRN", ["r1"], ["n1"], size=3, alpha=1e-1, beta=0.75, bias=1.0, name="norm1"),
             helper.make_node("MaxPool", ["n1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
                              name="pool1"),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Sum", ["r2", "p1"], ["s"], name="residual"),
             helper.make_node("Conv", ["s", "w3"], ["c3"], name="conv3"),
             helper.make_node("Softmax", ["c3"], ["y"], axis=1, name="prob")]
    inits = [numpy_helper.from_array(v, k) for k, v in (("w1", w1), ("w2", w2), ("w3", w3))]
    g = helper.make_graph(nodes, "caffe_era", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 1, 1])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])


def test_caffe_era_ops_quantize_and_import():
    """LRN and Sum written as steps by the clean-up, the asymmetric max pool as a replicate pad + pool, the opset-9
    softmax over the flattened (5, 1, 1): the quantized model follows onnxruntime's float output, and the qfx ONNX
    computes the interpreter's bits."""
    model = _caffe_era_model()
    r = np.random.default_rng(3)
    qm, _ = quantize_onnx(model, r.uniform(0, 1, (96, 2, 6, 6)).astype(np.float32))
    g = import_model(qm)
    ops = [n.op.value for n in g.nodes]
    assert "softmax" in ops and "zeropad2d" in ops and "lut" in ops and "add" in ops
    x = r.uniform(0, 1, (32, 2, 6, 6)).astype(np.float32)
    codes = input_codes(g, x)
    got = output_values(g, run(g, codes)).reshape(len(x), -1)
    ref = _float_out(model, x).reshape(len(x), -1)
    assert np.abs(got - ref).max() < 0.08 and np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


@pytest.mark.parametrize("name", ["light_squeezenet", "light_densenet121", "light_shufflenet"])
def test_onnx_test_zoo_imagenet_models_import(name):
    """The architectures the onnx wheel ships as test data (onnx/backend/test/data/light: the model zoo's
    SqueezeNet 1.0, DenseNet-121 and ShuffleNet at opset 9, weights written as ConstantOfShape) go through qfx quantize and
    import unmodified; the interpreter follows onnxruntime's float output on two 224x224 images."""
    from pathlib import Path

    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx wheel")
    model = onnx.load(path)
    x = np.random.default_rng(0).uniform(0, 1, (6, 3, 224, 224)).astype(np.float32)
    qm, _ = quantize_onnx(model, x[:4])
    g = import_model(qm)
    got = output_values(g, run(g, input_codes(g, x[4:]))).reshape(2, -1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {iname: x[i:i + 1]})[0] for i in (4, 5)]).reshape(2, -1)
    assert got.shape == ref.shape == (2, 1000)
    assert np.abs(got - ref).max() <= 0.08 * np.abs(ref).max() + 1e-4


def test_recurrent_layers_not_unrolled_are_refused_up_front_in_one_line():
    """An exported LSTM the clean-up cannot unroll (a sequence-first graph input: the batch is not its first axis)
    is refused naming the LSTM node, before any complaint about the nodes around it."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.l, self.f = nn.LSTM(3, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.f(self.l(x)[0][-1])

    buf = io.BytesIO()
    torch.onnx.export(Seq().eval(), torch.zeros(4, 1, 3), buf, opset_version=13, dynamo=False, input_names=["x"],
                      output_names=["y"])
    with pytest.raises(UnsupportedError) as ei:
        import_model(onnx.load_from_string(buf.getvalue()), input_fmt="ap_fixed<8,3>")
    msg = str(ei.value)
    assert "\n" not in msg and "unsupported ONNX op 'LSTM'" in msg and "recurrent" in msg
