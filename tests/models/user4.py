"""Fourth pass of user-style models (plain PyTorch, no qfx inside): idioms that each found a gap in the front end."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DenseBlock(nn.Module):
    """DenseNet's block: every layer reads torch.cat of all earlier features (the first cat has one item)."""

    def __init__(self, c0: int = 4, growth: int = 2, n: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c0 + i * growth), nn.ReLU(), nn.Conv2d(c0 + i * growth, growth, 3, padding=1,
                                                                              bias=False))
            for i in range(n))

    def forward(self, x):
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class DenseNetTiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.block = DenseBlock()
        self.trans = nn.Sequential(nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 4, 1), nn.AvgPool2d(2, 2))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.trans(self.block(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return self.fc(x)


class Siamese(nn.Module):
    """Two inputs through one shared encoder, (a - b) ** 2 into a sigmoid similarity head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.head = nn.Linear(4, 1)

    def forward(self, a, b):
        d = (self.enc(a) - self.enc(b)) ** 2
        return torch.sigmoid(self.head(d))


class SiameseAbs(nn.Module):
    """The L1 siamese distance: torch.abs(a - b), then torch.square and .pow(2) features."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
        self.head = nn.Linear(8, 1)

    def forward(self, a, b):
        d = torch.abs(self.enc(a) - self.enc(b))
        return self.head(torch.cat([d.abs(), torch.square(d) + d.pow(2)], dim=-1))


class UnflattenDecoder(nn.Module):
    """Linear -> F.dropout(training=self.training) -> nn.Unflatten into (C, H, W) -> Conv2d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 2 * 4 * 4)
        self.unflat = nn.Unflatten(1, (2, 4, 4))
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        x = F.dropout(self.fc(x), 0.2, training=self.training)
        return self.conv(F.relu(self.unflat(x)))


class CastsCat(nn.Module):
    """No-op casts (x.float(), .to(torch.float32), .type_as(y)), torch.cat(dim=-1) of vectors, an ELU head and a
    Softplus second output (a tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 3)
        self.out = nn.Linear(7, 2)
        self.reg = nn.Sequential(nn.Linear(7, 1), nn.Softplus())
        self.act = nn.ELU()

    def forward(self, x):
        x = x.float()
        a = self.a(x).to(torch.float32)
        b = self.b(x).type_as(a)
        h = self.act(torch.cat([a, b], dim=-1))
        return self.out(h), self.reg(h)


class ParamScale(nn.Module):
    """A learned per-channel scale and shift read in forward: conv(x) * self.gamma + self.beta (LayerScale style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.gamma = nn.Parameter(torch.ones(1, 3, 1, 1) * 0.5)
        self.beta = nn.Parameter(torch.full((3, 1, 1), 0.25))
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.conv(x) * self.gamma + self.beta
        return self.fc(F.relu(x).mean((2, 3)))


class ParamVector(nn.Module):
    """A learned per-feature scale (N, n) * (n,), x - self.offset, and a learned scalar temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)
        self.scale = nn.Parameter(torch.full((4,), 2.0))
        self.offset = nn.Parameter(torch.full((4,), 0.125))
        self.temperature = nn.Parameter(torch.tensor(1.5))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x) * self.scale - self.offset
        return self.temperature * self.out(h)


USER4: dict[str, tuple[type, Any]] = {
    "densenet": (DenseNetTiny, (1, 6, 6)),
    "siamese": (Siamese, ((6,), (6,))),
    "siamese_abs": (SiameseAbs, ((6,), (6,))),
    "unflatten_decoder": (UnflattenDecoder, (5,)),
    "casts_cat": (CastsCat, (6,)),
    "param_scale": (ParamScale, (1, 6, 6)),
    "param_vector": (ParamVector, (5,)),
}
