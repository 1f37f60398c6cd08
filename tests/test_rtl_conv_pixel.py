"""Pixel-folded convolutions in the RTL backend: lint-clean for every stride/padding/kernel shape, bit-exact under
Verilator against the golden interpreter (digits-CNN structure and random CNNs, with back-pressure), equal to the
fully parallel style, much smaller, and a wrong window or a wrong constant is caught."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from qfx.backends.rtl import build_project, write_project
from qfx.ir.graph import Op
from qfx.ir.random_graph import random_graph
from qfx.sim.toolchain import find_verilator, verilator_env


def _small_digits_cnn(channels: int = 2, bits: int = 6):
    """qfx.models.DigitsCNN (conv-BN-ReLU stem, residual block, max-pool, dense head) with few channels, captured."""
    import torch

    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.models import DigitsCNN
    from qfx.nn.convert import QFXConfig, quantize_model
    from qfx.nn.exact import set_mode

    torch.manual_seed(3)
    q = quantize_model(DigitsCNN(channels), QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits,
                                                     bn_width=bits, input_width=8))
    q(torch.rand(32, 1, 8, 8) * 16)  # calibrate BN statistics and formats on digit-like ranges
    q.eval()
    set_mode(q, "exact")
    return run_flow(capture(q, torch.zeros(1, 1, 8, 8), name="digits_small"), DEFAULT_FLOW).graph


def _conv_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds of random CNN graphs that hold at least one convolution with more than one output pixel."""
    seeds, s = [], start
    while len(seeds) < n:
        g = random_graph(s, kind="cnn")
        if any(nd.op is Op.CONV2D and np.prod(g.tensor(nd.output).shape[1:]) > 1 for nd in g.nodes):
            seeds.append(s)
        s += 1
    return seeds


def _residual_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds of random CNN graphs where a residual ADD is fused into a folded convolution."""
    seeds, s = [], start
    while len(seeds) < n:
        info = build_project(random_graph(s, kind="cnn")).info
        if any("conv2d" in L["op"] and "add" in L["op"] for L in info["layers"]):
            seeds.append(s)
        s += 1
    return seeds


def test_pixel_style_facts():
    g = _small_digits_cnn()
    pix = build_project(g, conv_style="pixel").info
    par = build_project(g, conv_style="parallel").info
    assert pix["ii"] == 64 and par["ii"] == 1  # 8x8 output pixels per convolution
    assert pix["latency"] == (pix["stages"] - 1) * 64 + 1
    assert sum(L["folded_pixels"] > 0 for L in pix["layers"]) == 3
    # BN, the residual ADD (its other operand read pixel by pixel) and ReLU run per pixel inside the folded conv
    assert [L["op"] for L in pix["layers"]][:4] == (["conv2d+scale_shift+relu"] * 2
                                                    + ["conv2d+scale_shift+add+relu", "maxpool2d"])
    assert pix["stages"] < par["stages"]
    assert pix["adders"] * 4 < par["adders"]  # one adder graph per layer instead of one per pixel
    with pytest.raises(Exception, match="conv_style"):
        build_project(g, conv_style="lines")


@pytest.mark.verilator
@pytest.mark.parametrize("seed", _conv_seeds(8, 500) + _residual_seeds(4, 900))
def test_lint_wall_clean(tmp_path, seed):
    g = random_graph(seed, kind="cnn", khot_prob=0.3)
    write_project(g, tmp_path, register_stages=seed % 3 != 0)
    info = json.loads((tmp_path / "cosim.json").read_text())
    r = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", info["top"],
                        *[str(tmp_path / f) for f in info["rtl_files"]]],
                       env=verilator_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "%Warning" not in r.stdout + r.stderr, (r.stdout + r.stderr)[:3000]


def _mutate(path, pattern: str, fn) -> None:
    text = path.read_text()
    m = re.search(pattern, text)
    assert m, f"no {pattern!r} in {path.name}"
    path.write_text(text[:m.start(1)] + fn(m.group(1)) + text[m.end(1):])


@pytest.mark.verilator
def test_cosim_pixel_and_parallel_bit_exact_and_mutations_caught(tmp_path):
    from qfx.sim.cosim import run_cosim_many

    digits = _small_digits_cnn()
    graphs = [("dpix", digits, "pixel", True), ("dpar", digits, "parallel", True)]
    graphs += [(f"r{s}", random_graph(s, kind="cnn", khot_prob=0.5), "pixel", s % 2 == 0)
               for s in _conv_seeds(4, 700) + _residual_seeds(4, 800)]
    graphs += [("mwin", digits, "pixel", True), ("mcon", digits, "pixel", True)]
    dirs = []
    for name, g, style, stages in graphs:
        d = tmp_path / name
        d.mkdir()
        write_project(g, d, conv_style=style, register_stages=stages, top_name=f"t_{name}")
        dirs.append(d)
    # a window bug: the first convolution's row 1 selects the row of pixel row 2
    _mutate(tmp_path / "mwin" / "rtl" / "t_mwin_l0.sv", r"'d1: rowsel_0 = \{x\[(\d+):", lambda v: str(int(v) + 8 * 8))
    _mutate(tmp_path / "mwin" / "rtl" / "t_mwin_l0.sv", r"'d1: rowsel_0 = \{x\[\d+:(\d+)\]", lambda v: str(int(v) + 8 * 8))
    # a constant bug: one CSD digit of the residual block's first convolution gets another power of two
    _mutate(tmp_path / "mcon" / "rtl" / "t_mcon_l3_pix.sv", r"<<< (\d+)\)", lambda v: str(int(v) + 1))
    reps = {r.top: r for r in run_cosim_many(dirs, 150, seed=5, backpressure=True, work_dir=tmp_path / "work")}
    good = [r for t, r in reps.items() if not t.startswith("t_m")]
    assert all(r.ok and r.outputs_compared > 0 for r in good), [(r.top, r.mismatches, r.received) for r in good]
    assert reps["t_mwin"].mismatches > 0 and reps["t_mcon"].mismatches > 0
