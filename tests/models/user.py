"""More models written the usual PyTorch way (plain torch.nn, no qfx), each with an idiom that once broke
``quantize_model`` -> train -> exact mode -> export: ``F.log_softmax`` / ``nn.LogSoftmax`` (the pytorch/examples
MNIST net), functional 1-D pools, ``squeeze``/``unsqueeze``, a squeeze-and-excitation gate (``x * w`` with w of
shape (N, C, 1, 1)), ``clamp_min``/``clamp_max``, a mean over the features of (N, n), a Linear called twice, a list
of outputs, a torchvision-style ResNet block with ``downsample=None``, LayerNorm, ConvTranspose1d/2d (a DCGAN
generator, a U-Net decoder), sums and max/min over dims, bilinear upsampling and reflect/replicate padding,
GroupNorm and InstanceNorm2d, CBAM attention (reductions over the channels, an (N, 1, H, W) map times x).
``USER`` maps a name to (class, per-sample input shape or shapes)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["USER", "USER3"]


class MnistExample(nn.Module):
    """pytorch/examples' MNIST net (smaller): F.relu, F.max_pool2d, Dropout, torch.flatten, F.log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 2 * 2, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class LogSoftmaxMLP(nn.Module):
    """nn.Sequential ending in nn.LogSoftmax (one nn.ReLU module called twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Sequential(nn.Linear(8, 4), nn.LogSoftmax(dim=1))

    def forward(self, x):
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x) * 4.0)
        return self.out(x)


class Conv1dFunctionalPools(nn.Module):
    """F.max_pool1d after Conv1d-BatchNorm1d, unsqueeze(1) of a vector into a 1-channel sequence, torch.avg_pool1d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 16)
        self.c1 = nn.Conv1d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.c2 = nn.Conv1d(4, 4, 3)
        self.out = nn.Linear(4 * 3, 3)

    def forward(self, x):
        h = F.relu(self.fc(x)).unsqueeze(1)
        h = F.max_pool1d(F.relu(self.bn(self.c1(h))), 2)
        h = F.avg_pool1d(F.relu(self.c2(h)), kernel_size=2)
        return self.out(h.view(h.size(0), -1))


class SqueezeHead(nn.Module):
    """Conv1d-BN-ReLU, AdaptiveAvgPool1d(1).squeeze(-1), Linear-BatchNorm1d, a sigmoid output .squeeze(1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm1d(4)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.fc1 = nn.Linear(4, 8, bias=False)
        self.bn1 = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 1)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.gap(x).squeeze(-1)
        x = F.relu(self.bn1(self.fc1(x)))
        return torch.sigmoid(self.fc2(x)).squeeze(1)


class SE(nn.Module):
    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w))))
        return x * w


class SENet(nn.Module):
    """A squeeze-and-excitation block: x * sigmoid(conv(pool(x))) broadcasts (N, C, 1, 1) over H x W."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.se = SE(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.se(F.relu(self.c(x)))
        return self.fc(x.mean(dim=[2, 3]))


class ClampVariants(nn.Module):
    """clamp_min / clamp(max=) / torch.clamp(min=) and torch.cat of a tuple, then x * 0.5 + 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(16, 3)

    def forward(self, x):
        p = self.a(x).clamp_min(0)
        q = self.b(x).clamp(max=1.5)
        q = torch.clamp(q, min=-1.0)
        h = torch.cat((p, q), dim=1)
        return self.c(h * 0.5 + 0.5)


class FeatureMean(nn.Module):
    """The mean over the features of (N, n): x.mean(dim=1).unsqueeze(1) and x.mean(-1, keepdim=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.out = nn.Linear(2, 2)

    def forward(self, x):
        h = torch.relu(self.fc(x))
        m = h.mean(dim=1).unsqueeze(1)
        s = torch.tanh(h).mean(-1, keepdim=True)
        return self.out(torch.cat([m, s], 1))


class SharedGate(nn.Module):
    """One Linear called twice (shared weights) and a per-sample gate: (N, 1) * (N, n)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.o = nn.Linear(6, 8), nn.Linear(6, 1), nn.Linear(8, 2)

    def forward(self, x):
        return self.o(torch.sigmoid(self.g(x)) * torch.relu(self.a(x)) - self.g(x))


class TVBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TorchvisionResNet(nn.Module):
    """torchvision's BasicBlock (downsample=None or a Conv-BN Sequential), one nn.ReLU per block called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        ds = nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8))
        self.layer1 = nn.Sequential(TVBlock(4, 4), TVBlock(4, 8, 2, ds))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


class ThreeHeads(nn.Module):
    """A list of outputs from a ModuleList of heads."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.heads = nn.ModuleList([nn.Linear(8, 2) for _ in range(3)])

    def forward(self, x):
        h = F.relu(self.body(x))
        return [head(h) for head in self.heads]


class VGGConfig(nn.Module):
    """VGG built from a config list in a loop, AdaptiveAvgPool2d((2, 2)), a classifier with Dropout."""

    cfg = [4, "M", 6, "M"]

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for v in self.cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.BatchNorm2d(int(v)),
                           nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(OrderedDict([("fc1", nn.Linear(6 * 2 * 2, 16)), ("relu", nn.ReLU(True)),
                                                     ("drop", nn.Dropout()), ("fc2", nn.Linear(16, 5))]))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class LayerNormMLP(nn.Module):
    """Linear-LayerNorm-GELU, then a LayerNorm without affine parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.ln1 = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 8)
        self.ln2 = nn.LayerNorm(8, elementwise_affine=False)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        x = F.gelu(self.ln1(self.fc1(x)))
        x = F.relu(self.ln2(self.fc2(x)))
        return self.out(x)


class DCGANGenerator(nn.Module):
    """A small DCGAN generator: Linear -> view -> ConvTranspose2d(4, 2, 1) + BatchNorm2d + ReLU -> ConvTranspose2d
    with output_padding -> Tanh."""

    def __init__(self, nz: int = 6) -> None:
        super().__init__()
        self.fc = nn.Linear(nz, 4 * 2 * 2)
        self.main = nn.Sequential(
            nn.ConvTranspose2d(4, 4, 4, 2, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(True),
            nn.ConvTranspose2d(4, 1, 3, 2, 1, output_padding=1), nn.Tanh())

    def forward(self, z):
        return self.main(self.fc(z).view(-1, 4, 2, 2))


class TransposeUNet(nn.Module):
    """A tiny U-Net whose decoder upsamples with ConvTranspose2d(2, 2), joined to the skip by torch.cat; the
    bottleneck statistics are x.sum((2, 3)) and torch.max(x, dim) values."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(4, 4, 2, 2)
        self.dec = nn.Conv2d(8, 2, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        e = self.enc(x)
        b = self.down(e)
        seg = self.dec(torch.cat([e, self.up(b)], dim=1))
        stats = torch.cat([b.sum((2, 3)), torch.max(b.flatten(2), dim=2)[0]], dim=1)
        return seg, self.head(stats)


class KWSTransposed(nn.Module):
    """Keyword spotting / anomaly style 1-D net: Conv1d encoder, ConvTranspose1d decoder (reconstruction), and a
    classifier over x.max(dim=-1).values, x.amin(-1) and the sum over features of (N, n)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.dec = nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.enc(x))
        rec = self.dec(h)
        feats = torch.cat([h.max(dim=-1).values, h.amin(-1)], dim=1)
        logits = self.fc(feats)
        return rec, logits, logits.sum(1, keepdim=True)


class BilinearUNet(nn.Module):
    """A U-Net the segmentation tutorials way: reflect-padded convolutions, F.interpolate(mode='bilinear',
    align_corners=False) in the decoder, torch.cat skip, nn.ReplicationPad2d, a sigmoid mask."""

    def __init__(self) -> None:
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"),
                                  nn.ReLU())
        self.pad = nn.ReplicationPad2d(1)
        self.outc = nn.Conv2d(8, 1, 3)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = F.interpolate(self.down(x1), scale_factor=2, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.outc(self.pad(torch.cat([x2, x1], dim=1))))


class NormAutoencoder(nn.Module):
    """A convolutional autoencoder with GroupNorm in the encoder and InstanceNorm2d in the decoder (the style-transfer
    / GAN way), LeakyReLU, a ConvTranspose2d and a sigmoid reconstruction."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.GroupNorm(2, 4),
                                     nn.LeakyReLU(0.2, inplace=True))
        self.decoder = nn.Sequential(nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
                                     nn.InstanceNorm2d(4, affine=True), nn.ReLU(inplace=True),
                                     nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


class CBAMNet(nn.Module):
    """A CBAM block (the attention module's reference style): channel attention from a shared 1x1-conv MLP over the
    average and max pools, spatial attention from torch.mean / torch.max over the channels (dim=1, keepdim) through
    a conv and a sigmoid, multiplied back as an (N, 1, H, W) map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(4, 2, 1, bias=False), nn.ReLU(), nn.Conv2d(2, 4, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        ca = torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        x = x * ca
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        x = x * torch.sigmoid(self.spatial(torch.cat([avg_out, max_out], dim=1)))
        return self.fc(x.sum(dim=(2, 3)))


# ---------------------------------------------------------------- third pass: element moves and sizes read in forward
def channel_shuffle(x, groups):
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1, groups=2)
        self.c2 = nn.Conv2d(8, 8, 1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = channel_shuffle(x, 2)
        x = F.relu(self.c2(x))
        x = F.max_pool2d(x, kernel_size=2, stride=2)
        return self.fc(x.view(-1, 8 * 4 * 4))


class Chomp1d(nn.Module):
    def __init__(self, chomp):
        super().__init__()
        self.chomp = chomp

    def forward(self, x):
        return x[:, :, :-self.chomp].contiguous()


class TemporalBlock(nn.Module):
    def __init__(self, cin, cout, k, d):
        super().__init__()
        pad = (k - 1) * d
        self.conv1 = nn.Conv1d(cin, cout, k, padding=pad, dilation=d)
        self.chomp1 = Chomp1d(pad)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(cout, cout, k, padding=pad, dilation=d)
        self.chomp2 = Chomp1d(pad)
        self.relu2 = nn.ReLU()
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, nn.Dropout(0.1),
                                 self.conv2, self.chomp2, self.relu2, nn.Dropout(0.1))
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.tcn = nn.Sequential(TemporalBlock(2, 4, 3, 1), TemporalBlock(4, 4, 3, 2))
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        y = self.tcn(x)
        return self.linear(y[:, :, -1])


class ChannelSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        c = x.shape[1]
        x1, x2 = x[:, :c // 2], x[:, c // 2:]
        y = torch.cat([F.relu(self.a(x1)), x2], dim=1)
        p, q = torch.chunk(y, 2, dim=1)
        r, s = torch.split(y, [1, 3], dim=1)
        return self.c(torch.cat([q, p], 1)) + torch.cat([s, r], 1)


class TokenMLP(nn.Module):
    """Conv1d, then x.permute(0, 2, 1) and a Linear on (N, L, C) tokens."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 6, 3, padding=1)
        self.proj = nn.Linear(6, 4)
        self.head = nn.Linear(4 * 8, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x.permute(0, 2, 1)
        x = F.relu(self.proj(x))
        return self.head(x.reshape(x.size(0), -1))


class SeqLinear(nn.Module):
    """A Linear on an (N, L, C) input, x.transpose(1, 2) into a Conv1d, x.max(dim=2)[0]."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(5, 8)
        self.conv = nn.Conv1d(8, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.emb(x))
        x = x.transpose(1, 2)
        x = F.relu(self.conv(x))
        x = x.max(dim=2)[0]
        return self.fc(x)


class InplaceOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.c1(x), inplace=True)
        y = self.c2(x)
        y.add_(x)
        y = F.relu_(y)
        y = F.avg_pool2d(y, kernel_size=y.shape[2:])
        return self.fc(y.flatten(1))


class StackHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        s = torch.stack([self.a(x), self.b(x)], dim=1)
        return self.fc(s.flatten(1))


class NarrowSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 3, padding=1)
        self.fc = nn.Linear(24, 2)

    def forward(self, x):
        y = self.conv(x)
        a = y.narrow(1, 0, 3)
        b = y[:, 3:, 2:6]
        return self.fc(torch.cat([F.relu(a[:, :, ::2]), b], 2).flatten(1))


#: models of the third pass (tests/test_user_models3.py): slicing, chunk/split/narrow, transpose/permute, stack,
#: sizes computed from x.size()/x.shape, a Linear on (N, L, C), a module registered under two paths
USER3: dict[str, tuple[type, Any]] = {
    "shufflenet": (ShuffleNet, (2, 8, 8)),
    "tcn": (TCN, (2, 16)),
    "channel_split": (ChannelSplit, (4, 6, 6)),
    "token_mlp": (TokenMLP, (3, 8)),
    "seq_linear": (SeqLinear, (7, 5)),
    "inplace_ops": (InplaceOps, (2, 6, 6)),
    "stack_head": (StackHead, (6,)),
    "narrow_slice": (NarrowSlice, (2, 8)),
}

USER: dict[str, tuple[type, Any]] = {
    "mnist_example": (MnistExample, (1, 8, 8)),
    "logsoftmax_mlp": (LogSoftmaxMLP, (8,)),
    "conv1d_functional_pools": (Conv1dFunctionalPools, (12,)),
    "squeeze_head": (SqueezeHead, (2, 12)),
    "se_net": (SENet, (1, 4, 4)),
    "clamp_variants": (ClampVariants, (8,)),
    "feature_mean": (FeatureMean, (6,)),
    "shared_gate": (SharedGate, (6,)),
    "torchvision_resnet": (TorchvisionResNet, (1, 8, 8)),
    "three_heads": (ThreeHeads, (6,)),
    "vgg_config": (VGGConfig, (1, 8, 8)),
    "layernorm_mlp": (LayerNormMLP, (10,)),
    "dcgan_generator": (DCGANGenerator, (6,)),
    "transpose_unet": (TransposeUNet, (1, 6, 6)),
    "kws_transposed": (KWSTransposed, (2, 8)),
    "bilinear_unet": (BilinearUNet, (1, 6, 6)),
    "norm_autoencoder": (NormAutoencoder, (1, 8, 8)),
    "cbam_net": (CBAMNet, (1, 6, 6)),
}
