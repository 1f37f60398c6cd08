"""The pixel-streaming global average pool stage on its own: Yosys ``synth_xilinx`` LUT / FF / CARRY4 counts.

    python benchmarks/bench_stream_pool.py                       # this checkout
    python benchmarks/bench_stream_pool.py --repo /path/to/other  # another checkout of qfx (side by side)

ResNet-20's last stage shape: a 1x1 conv (64 -> 64 channels) on an 8x8 frame, the global average pool, a Linear
head; 8-bit formats. The stream design's pool stage module (``<top>_s1``, with its per-pixel kernel and the
requantizer) is synthesized alone, flattened. Give ``--repo`` a checkout from before the running reduction stage
(e.g. ``git worktree add /tmp/base e44d665``) to see the frame-buffer design it replaced.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(repo: Path, out: Path) -> None:
    """Export the model's stream RTL with the qfx of ``repo`` (a subprocess, so two checkouts never mix)."""
    code = f"""
import sys
sys.path.insert(0, {str(repo)!r})
import torch
from torch import nn
from qfx.backends.rtl import write_project
from qfx.ir.from_torch import capture
from qfx.ir.passes import DEFAULT_FLOW, run_flow
from qfx.nn.convert import QFXConfig, quantize_model
from qfx.nn.exact import set_mode
torch.manual_seed(0)
q = quantize_model(nn.Sequential(nn.Conv2d(64, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)),
                   QFXConfig(weight_width=8, act_width=8, input_width=8))
q(torch.randn(16, 64, 8, 8))
q.eval()
set_mode(q, "exact")
g = run_flow(capture(q, torch.zeros(1, 64, 8, 8), name="gap"), DEFAULT_FLOW).graph
write_project(g, {str(out)!r}, io="stream", top_name="s_gap")
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def synth(rtl: Path, timeout: int) -> dict[str, int]:
    files = ["s_gap_requant.sv", "s_gap_s1_pix.sv", "s_gap_s1.sv"]
    script = f"read_verilog -sv {' '.join(files)}; synth_xilinx -top s_gap_s1 -flatten; stat"
    r = subprocess.run(["yosys", "-p", script], cwd=rtl, capture_output=True, text=True, timeout=timeout,
                       check=True)
    stat = r.stdout.rsplit("=== s_gap_s1 ===", 1)[-1]  # the last statistics: after synthesis
    return {name: int(count) for name, count in re.findall(r"^\s+(\w+)\s+(\d+)\s*$", stat, flags=re.M)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="the qfx checkout to export with (default: this one)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds for Yosys")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        build(a.repo.resolve(), Path(tmp) / "p")
        cells = synth(Path(tmp) / "p" / "rtl", a.timeout)
    luts = sum(v for k, v in cells.items() if re.fullmatch(r"LUT\d", k))
    ffs = sum(v for k, v in cells.items() if k in ("FDRE", "FDSE", "FDCE", "FDPE"))
    print(f"| checkout | LUT | FF | CARRY4 |\n|---|---|---|---|\n| {a.repo.resolve()} | {luts:,} | {ffs:,} | "
          f"{cells.get('CARRY4', 0):,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
