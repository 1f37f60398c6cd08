"""Float reference models for the digits data set; ``qfx.quantize_model`` turns them into fixed-point models.

They are built from modules only (no functional ops in ``forward`` other than the residual ``QAdd``) so that the
conversion can swap every layer and the torch.fx capture sees one module per op.
"""
from __future__ import annotations

from torch import nn

from qfx.errors import BadInputError
from qfx.nn.layers import QAdd

__all__ = ["digits_mlp", "DigitsCNN", "build_model", "MODEL_KINDS"]

MODEL_KINDS = ("mlp", "cnn")


def digits_mlp() -> nn.Sequential:
    """64-64-32-10 MLP on flattened 8x8 images (input (N, 64) or (N, 1, 8, 8))."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU stem, one residual block (Conv-BN-ReLU, Conv-BN, QAdd, ReLU), MaxPool, Linear head.

    8 channels by default (``build_model("cnn")``, what ``qfx demo`` trains): 8x8 digits need no more for ~98 %
    accuracy, and its whole RTL (about 75k LUT at 8 bits, ``benchmarks/bench_resources.py --part models``) builds,
    simulates and synthesizes inside the demo's time budget; 16 channels quadruples the residual block's products.
    """

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.add = QAdd()
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(c * 16, 10)

    def forward(self, x):
        h = self.stem(x)
        h = self.act(self.add(self.block(h), h))
        return self.head(self.flatten(self.pool(h)))


def build_model(kind: str) -> nn.Module:
    if kind == "mlp":
        return digits_mlp()
    if kind == "cnn":
        return DigitsCNN()
    raise BadInputError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
