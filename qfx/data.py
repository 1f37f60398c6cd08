"""The digits data set (sklearn ``load_digits``): 8x8 images, pixel values k/16 (exact in fixed point).

A fixed, seeded, stratified train/test split so every command and benchmark sees the same data.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_digits_split", "DIGITS_CLASSES"]

DIGITS_CLASSES = 10


def load_digits_split(test_fraction: float = 0.25, seed: int = 0, image: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``; x is float32 in [0, 1] (pixel/16), shaped (N, 1, 8, 8) if ``image``
    else (N, 64); y is int64 class labels. The split depends only on ``test_fraction`` and ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    shape = (-1, 1, 8, 8) if image else (-1, 64)
    return (torch.from_numpy(xtr).reshape(shape), torch.from_numpy(ytr),
            torch.from_numpy(xte).reshape(shape), torch.from_numpy(yte))
