"""AXI4-Stream word layout shared by the HLS AXI top and the RTL top, so one testbench drives both.

One whole tensor per beat: element 0 in the least significant bits, each element its format's width, TDATA padded
with zeros up to whole bytes (AXI4-Stream TDATA is a whole number of bytes).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["pad8", "AxisLayout"]


def pad8(bits: int) -> int:
    """AXI4-Stream TDATA width for ``bits`` payload bits: rounded up to whole bytes, at least one byte."""
    return max(8, (bits + 7) // 8 * 8)


@dataclass(frozen=True)
class AxisLayout:
    """TDATA layout of a single-input, single-output AXI4-Stream top: element count, element width, signedness and
    padded word width (``pad8(count * width)``) of each side."""

    in_count: int
    in_ew: int
    in_signed: bool
    in_tw: int
    out_count: int
    out_ew: int
    out_signed: bool
    out_tw: int
