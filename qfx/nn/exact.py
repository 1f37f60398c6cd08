"""Exact-mode plumbing: float64 tensors that hold exact fixed-point values <-> int64 codes.

Between qfx modules in exact mode, activations travel as float64 tensors whose elements are exact fixed-point values
(formats up to 53 bits wide). A module turns its input into codes on the finest binary grid the values need; every
``qfx.fixed.ops`` op is a function of the values (exact intermediate, one cast), so the choice of input grid cannot
change a result.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from qfx.errors import BadInputError, FormatError
from qfx.fixed.format import FxFormat

__all__ = ["MAX_EXACT_WIDTH", "values_to_codes", "codes_to_values", "set_mode", "mode", "get_mode", "MODES"]

#: widest format whose values a float64 carries exactly
MAX_EXACT_WIDTH = 53
MODES = ("train", "exact")


def frac_bits_needed(v: torch.Tensor) -> int:
    """Smallest F with ``v * 2**F`` integral for every element of float64 ``v`` (exact: frexp and integer bit tricks
    only; torch ops, so a CUDA tensor stays on its device)."""
    nz = v[v != 0]
    if nz.numel() == 0:
        return 0
    m, e = torch.frexp(nz)  # nz = m * 2**e, 0.5 <= |m| < 1
    mi = torch.ldexp(m, torch.tensor(53.0, dtype=torch.float64, device=v.device)).to(torch.int64)  # exact significand
    _, tz1 = torch.frexp((mi & -mi).to(torch.float64))  # the lowest set bit, 2**(tz1 - 1)
    return int((53 - e - (tz1 - 1)).max())


def _frac_bits_needed(a: np.ndarray) -> int:
    """``frac_bits_needed`` of a numpy array."""
    return frac_bits_needed(torch.from_numpy(np.asarray(a, dtype=np.float64)))


def values_to_codes(x: torch.Tensor, what: str = "input") -> tuple[np.ndarray, FxFormat]:
    """int64 codes and a format that hold the values of ``x`` exactly (finest grid they need, narrowest range)."""
    if not x.is_floating_point():
        raise BadInputError(f"{what}: exact mode expects a float tensor of fixed-point values, got {x.dtype}")
    a = x.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(a).all():
        raise BadInputError(f"{what}: exact mode got a non-finite value")
    f = _frac_bits_needed(a)
    scaled = np.ldexp(a, f)
    if a.size and np.abs(scaled).max() >= 2.0**MAX_EXACT_WIDTH:
        raise FormatError(f"{what}: values need more than {MAX_EXACT_WIDTH} bits on one grid; exact mode carries "
                          f"formats up to {MAX_EXACT_WIDTH} bits")
    codes = scaled.astype(np.int64)
    lo = int(codes.min()) if codes.size else 0
    hi = int(codes.max()) if codes.size else 0
    return codes, FxFormat.for_code_range(min(lo, 0), max(hi, 0), f)


def codes_to_values(codes: np.ndarray, fmt: FxFormat, device: torch.device | str = "cpu") -> torch.Tensor:
    """float64 tensor of the exact values of ``codes`` (refuses formats a double cannot carry exactly)."""
    if fmt.width > MAX_EXACT_WIDTH:
        raise FormatError(f"exact mode carries formats up to {MAX_EXACT_WIDTH} bits between modules; "
                          f"{fmt.ap_type()} is wider")
    return torch.from_numpy(np.ascontiguousarray(fmt.from_int(codes))).to(device)


def get_mode(model: nn.Module) -> str:
    """Mode of the first qfx module in ``model`` ("train" when it has none)."""
    for m in model.modules():
        if hasattr(m, "qfx_mode"):
            return m.qfx_mode
    return "train"


def set_mode(model: nn.Module, mode_name: str) -> nn.Module:
    """Switch every qfx module: ``"train"`` = float32 fake quantization, ``"exact"`` = int64 codes via qfx.fixed.ops."""
    if mode_name not in MODES:
        raise BadInputError(f"mode must be one of {', '.join(MODES)}, got {mode_name!r}")
    for m in model.modules():
        if hasattr(m, "qfx_mode"):
            m.qfx_mode = mode_name
    return model


@contextlib.contextmanager
def mode(model: nn.Module, mode_name: str) -> Iterator[nn.Module]:
    """``with qfx.nn.mode(model, "exact"): ...`` — restores each module's previous mode afterwards."""
    saved = [(m, m.qfx_mode) for m in model.modules() if hasattr(m, "qfx_mode")]
    set_mode(model, mode_name)
    try:
        yield model
    finally:
        for m, old in saved:
            m.qfx_mode = old
