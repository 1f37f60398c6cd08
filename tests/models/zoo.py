"""Models written the way people write PyTorch: plain ``torch.nn`` layers, functional calls and operators, no qfx
imports. Each class takes its sizes as arguments so the tests build small versions (CI) and the slow tests and
benchmarks build the real sizes. ``ZOO`` lists them with the sizes each use takes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ZOO", "ZooEntry"]


# ---------------------------------------------------------------------------------------------- classic CNNs
class LeNet5(nn.Module):
    """LeNet-5 as in countless tutorials: conv-relu-pool twice, view, three linear layers."""

    def __init__(self, in_ch: int = 1, hw: int = 28, c1: int = 6, c2: int = 16, f1: int = 120, f2: int = 84,
                 n_classes: int = 10, pad2: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=pad2)
        s = (hw // 2 + 2 * pad2 - 4) // 2
        self.fc1 = nn.Linear(c2 * s * s, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc3 = nn.Linear(f2, n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


def _conv_dw(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True),
    )


class MobileNetV1Block(nn.Module):
    """The MobileNet-v1 stem and depthwise-separable blocks (ReLU6), global average pool, classifier."""

    def __init__(self, in_ch: int = 3, c: int = 8, n_classes: int = 10) -> None:
        super().__init__()
        self.model = nn.Sequential(_conv_bn(in_ch, c, 2), _conv_dw(c, 2 * c, 1), _conv_dw(2 * c, 2 * c, 2),
                                   nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(2 * c, n_classes)

    def forward(self, x):
        x = self.model(x)
        x = x.view(-1, self.fc.in_features)
        return self.fc(x)


class BasicBlock(nn.Module):
    """torchvision-style basic block: ``out += self.shortcut(x)``, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ResNet8(nn.Module):
    """MLPerf Tiny's ResNet-8 layout: stem, three basic blocks (identity, then strided 1x1 shortcuts),
    AdaptiveAvgPool2d(1), linear classifier."""

    def __init__(self, in_ch: int = 3, c: int = 16, n_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.layer1 = BasicBlock(c, c, 1)
        self.layer2 = BasicBlock(c, 2 * c, 2)
        self.layer3 = BasicBlock(2 * c, 4 * c, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * c, n_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class PaddedCNN(nn.Module):
    """A digits CNN in the style of image pipelines: ``x * 2 - 1`` normalization, explicit ZeroPad2d, Hardtanh,
    a residual ``relu(conv(x)) + x`` and an adaptive average pool to 2x2."""

    def __init__(self, in_ch: int = 1, c: int = 8, n_classes: int = 10) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(1)
        self.conv1 = nn.Conv2d(in_ch, c, 3)
        self.act = nn.Hardtanh(-1.0, 1.0)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * c, n_classes)

    def forward(self, x):
        x = x * 2 - 1
        x = self.act(self.conv1(self.pad(x)))
        y = F.relu(self.conv2(x)) + x
        return self.fc(torch.flatten(self.pool(y), 1))


# ---------------------------------------------------------------------------------------------- 1-D signal models
class KWSConv1d(nn.Module):
    """Keyword spotting over MFCC frames (N, n_mfcc, frames): Conv1d + BatchNorm1d, a depthwise-separable Conv1d
    pair, mean over time, linear classifier."""

    def __init__(self, n_mfcc: int = 10, ch: int = 32, n_classes: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mfcc, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(ch)
        self.dw = nn.Conv1d(ch, ch, 3, stride=2, padding=1, groups=ch, bias=False)
        self.pw = nn.Conv1d(ch, ch, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(ch)
        self.fc = nn.Linear(ch, n_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.pw(self.dw(x))))
        x = x.mean(-1)
        return self.fc(x)


class RadioVGG1d(nn.Module):
    """RadioML-style 1-D VGG over I/Q samples (N, 2, L): Conv1d-BN-ReLU-MaxPool1d blocks, Flatten, two linear
    layers with dropout."""

    def __init__(self, length: int = 1024, chans: tuple[int, ...] = (64,) * 7, fc: int = 128,
                 n_classes: int = 24) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 2
        for c in chans:
            layers += [nn.Conv1d(prev, c, 3, padding=1, bias=False), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2)]
            prev = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(prev * (length >> len(chans)), fc), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(fc, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------- MLPs
class JetTagger(nn.Module):
    """hls4ml's jet-tagging MLP 16-64-32-32-5 (BatchNorm, ReLU), ending in Softmax."""

    def __init__(self, n_in: int = 16, hidden: tuple[int, ...] = (64, 32, 32), n_classes: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = n_in
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.BatchNorm1d(h), nn.ReLU()]
            prev = h
        layers += [nn.Linear(prev, n_classes), nn.Softmax(dim=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class AutoEncoder(nn.Module):
    """Dense autoencoder (anomaly detection style) with a Sigmoid output in [0, 1]."""

    def __init__(self, n_in: int = 64, hidden: int = 32, latent: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(True), nn.Linear(hidden, latent), nn.ReLU(True))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(True), nn.Linear(hidden, n_in), nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


class ActMix(nn.Module):
    """An MLP with the activations people reach for after ReLU: Tanh, LeakyReLU(0.2), Hardswish."""

    def __init__(self, n_in: int = 16, h: int = 32, n_classes: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, h)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(h, h)
        self.act2 = nn.LeakyReLU(0.2)
        self.fc3 = nn.Linear(h, h)
        self.fc4 = nn.Linear(h, n_classes)

    def forward(self, x):
        x = self.act2(self.fc2(self.act1(self.fc1(x))))
        x = F.hardswish(self.fc3(x))
        return self.fc4(x)


class GatedFFN(nn.Module):
    """A transformer-style feed-forward block on a vector: GELU hidden layer, residual ``x + ffn(x)``, SiLU, and a
    sigmoid gate ``x * torch.sigmoid(g)``."""

    def __init__(self, n_in: int = 16, d: int = 16, h: int = 32, n_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(n_in, d)
        self.fc1 = nn.Linear(d, h)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(h, d)
        self.gate = nn.Linear(d, d)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(self.act(self.fc1(x)))
        x = F.silu(x)
        x = x * torch.sigmoid(self.gate(x))
        return self.head(x)


class Preprocess(nn.Module):
    """Normalization written in forward with Python constants (``(x - mean) / std``, ``x * 0.5``), PReLU, ELU,
    Softplus and clamp: the constant-arithmetic idioms of real pipelines."""

    def __init__(self, n_in: int = 16, h: int = 16, n_classes: int = 5, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.mean, self.std = mean, std
        self.fc1 = nn.Linear(n_in, h)
        self.prelu = nn.PReLU(h)
        self.fc2 = nn.Linear(h, h)
        self.fc3 = nn.Linear(h, n_classes)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.prelu(self.fc1(x))
        y = self.fc2(x)
        x = F.elu(y, 0.5) - 0.5 * F.softplus(y)
        x = torch.clamp(x, -1.5, 1.5)
        return self.fc3(x)


# ---------------------------------------------------------------------------------------------- encoder-decoder
class TinyUNet(nn.Module):
    """A two-level U-Net: encoder convs, MaxPool2d, nearest Upsample, skip connection by ``torch.cat`` along the
    channels, decoder conv and a sigmoid mask."""

    def __init__(self, in_ch: int = 1, c: int = 8, out_ch: int = 1) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(in_ch, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(nn.Conv2d(3 * c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(c, out_ch, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        d = self.dec(torch.cat([self.up(e2), e1], dim=1))
        return torch.sigmoid(self.head(d))


# ---------------------------------------------------------------------------------------------- two inputs
class TwoTower(nn.Module):
    """Two inputs (features of two sensors): a tower each, a gate ``a * b``, their difference, ``torch.cat`` and a
    head."""

    def __init__(self, na: int = 12, nb: int = 6, h: int = 16, n_classes: int = 5) -> None:
        super().__init__()
        self.tower_a = nn.Sequential(nn.Linear(na, h), nn.ReLU())
        self.tower_b = nn.Linear(nb, h)
        self.head = nn.Linear(2 * h, n_classes)

    def forward(self, xa, xb):
        a = self.tower_a(xa)
        b = torch.sigmoid(self.tower_b(xb))
        return self.head(torch.cat([a * b, a - b], dim=1))


# ---------------------------------------------------------------------------------------------- the list
@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build its CI-sized and full-sized versions and what data it eats.

    ``data``: "digits" (8x8 images, 10 classes), "digits64" (the same as 64 features), "digits_ae" (64 features,
    target = input), "digits_mask" (images, target = pixel > 0.5), "vector" / "sequence" / "image" (Gaussian
    synthetic data of ``shape`` with a random teacher's labels), "pair" (two vectors)."""

    build: Callable[..., nn.Module]
    ci: dict[str, Any]
    full: dict[str, Any]
    data: str
    shape: tuple[Any, ...]
    full_shape: tuple[Any, ...] | None = None
    n_classes: int = 10
    softmax: bool = False
    inputs: int = 1
    full_rtl: bool = True  # the full-size RTL is small enough for a co-simulation in the slow tests
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    "lenet5": ZooEntry(LeNet5, dict(hw=8, c1=2, c2=4, f1=12, f2=8, pad2=2), dict(hw=28), "digits", (1, 8, 8),
                       full_shape=(1, 28, 28), full_rtl=False, note="F.relu/F.max_pool2d/view"),
    "jet_mlp": ZooEntry(JetTagger, dict(hidden=(16, 8, 8)), dict(), "vector", (16,), n_classes=5, softmax=True,
                        note="16-64-32-32-5, BatchNorm1d, Softmax"),
    "kws_conv1d": ZooEntry(KWSConv1d, dict(n_mfcc=4, ch=6, n_classes=4), dict(), "sequence", (4, 12),
                           full_shape=(10, 49), n_classes=4, note="Conv1d, depthwise Conv1d, mean over time"),
    "radioml_vgg1d": ZooEntry(RadioVGG1d, dict(length=16, chans=(4, 4), fc=8, n_classes=4),
                              dict(length=128, chans=(16,) * 4, fc=32, n_classes=8), "sequence", (2, 16),
                              full_shape=(2, 128), n_classes=4, note="Conv1d-BN-ReLU-MaxPool1d, Flatten, Dropout"),
    "mobilenet_v1": ZooEntry(MobileNetV1Block, dict(in_ch=1, c=4), dict(in_ch=1, c=16), "digits", (1, 8, 8),
                             note="depthwise-separable blocks, ReLU6, AdaptiveAvgPool2d(1)"),
    "resnet8": ZooEntry(ResNet8, dict(in_ch=1, c=1), dict(in_ch=1, c=8), "digits", (1, 8, 8),
                        note="out += shortcut (identity and 1x1 conv), AdaptiveAvgPool2d(1)"),
    "padded_cnn": ZooEntry(PaddedCNN, dict(c=3), dict(c=16), "digits", (1, 8, 8),
                           note="x * 2 - 1, ZeroPad2d, Hardtanh(-1, 1), AdaptiveAvgPool2d(2)"),
    "autoencoder": ZooEntry(AutoEncoder, dict(n_in=64, hidden=4, latent=2), dict(), "digits_ae", (64,),
                            note="dense autoencoder, Sigmoid output"),
    "tiny_unet": ZooEntry(TinyUNet, dict(c=2), dict(c=8), "digits_mask", (1, 8, 8),
                          note="MaxPool2d, Upsample, torch.cat skip, sigmoid mask"),
    "act_mix": ZooEntry(ActMix, dict(h=8), dict(), "vector", (16,), n_classes=5,
                        note="Tanh, LeakyReLU(0.2), F.hardswish"),
    "gated_ffn": ZooEntry(GatedFFN, dict(d=6, h=8), dict(), "vector", (16,), n_classes=5,
                          note="GELU, residual add, SiLU, x * sigmoid(g)"),
    "preprocess": ZooEntry(Preprocess, dict(h=8), dict(), "vector", (16,), n_classes=5,
                           note="(x - mean) / std, PReLU, ELU, Softplus, clamp"),
    "two_input": ZooEntry(TwoTower, dict(h=8), dict(), "pair", ((12,), (6,)), n_classes=5, inputs=2,
                          note="two inputs, a * b gate, a - b, torch.cat"),
}
