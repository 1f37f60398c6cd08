"""Pixel-streaming RTL (``io="stream"``): plan and interface facts, the CLI flag, bit-exact co-simulation against
the golden interpreter with back-pressure (hand-built geometries, random CNNs, the digits-CNN structure with its
residual FIFO, streamed outputs), a wrong line-buffer tap or window position caught, lint-clean under Verilator, and
fewer flip-flops than the whole-vector design under Yosys."""
from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qfx.backends.rtl import build_project, write_project
from qfx.backends.rtl_stream import build_stream_project, stream_plan
from qfx.cli import main
from qfx.errors import BadInputError
from qfx.ir.random_graph import random_graph


def _quantized(layers, shape, name: str, bits: int = 6, seed: int = 0, scale: float = 4.0):
    """A torch Sequential quantized as ``qfx train`` does, calibrated on random data and captured to the IR."""
    import torch

    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.nn.convert import QFXConfig, quantize_model
    from qfx.nn.exact import set_mode

    torch.manual_seed(seed)
    q = quantize_model(torch.nn.Sequential(*layers), QFXConfig(weight_width=bits, bias_width=2 * bits,
                                                               act_width=bits, bn_width=bits, input_width=8))
    q(torch.randn(64, *shape) * scale)
    q.eval()
    set_mode(q, "exact")
    return run_flow(capture(q, torch.zeros(1, *shape), name=name), DEFAULT_FLOW).graph


@functools.lru_cache(maxsize=2)
def _digits_cnn(channels: int = 2, bits: int = 6):
    """qfx.models.DigitsCNN (conv-BN-ReLU stem, residual block, max-pool, dense head), captured."""
    import torch

    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.models import DigitsCNN
    from qfx.nn.convert import QFXConfig, quantize_model
    from qfx.nn.exact import set_mode

    torch.manual_seed(3)
    q = quantize_model(DigitsCNN(channels), QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits,
                                                     bn_width=bits, input_width=8))
    q(torch.rand(32, 1, 8, 8) * 16)
    q.eval()
    set_mode(q, "exact")
    return run_flow(capture(q, torch.zeros(1, 1, 8, 8), name="digits_s"), DEFAULT_FLOW).graph


def _resnet_block(stride: int):
    """A ResNet basic block with a 1x1 (strided) convolution shortcut: both residual branches hold pixels."""
    from torch import nn

    from qfx.nn.layers import QAdd

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 3, padding=1)
            self.main = nn.Sequential(nn.Conv2d(2, 3, 3, stride=stride, padding=1), nn.ReLU(),
                                      nn.Conv2d(3, 3, 3, padding=1))
            self.short = nn.Conv2d(2, 3, 1, stride=stride)
            self.add = QAdd()
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.stem(x)
            return self.act(self.add(self.main(h), self.short(h)))

    return Block()


@functools.lru_cache(maxsize=1)
def _two_joins():
    """``u`` is the long branch of one add and the short branch of the next: a join input with two readers."""
    from torch import nn

    from qfx.nn.layers import QAdd

    class TwoJoins(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 3, padding=1)
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.add1, self.add2 = QAdd(), QAdd()

        def forward(self, x):
            h = self.stem(x)
            u = self.conv(h)
            return self.add2(self.add1(h, u), u)

    return TwoJoins()


def _hand_graphs() -> dict:
    """Geometries the random generator rarely draws: kernels 1/3/5, strides 1/2 (and mixed), padding 0/1/2, max and
    average pooling (padded too), an even kernel padded by half of it, conv-only models whose output streams, a
    ResNet block with a strided 1x1 shortcut, a tensor read by two joins."""
    from torch import nn

    return {
        "k5s2": _quantized([nn.Conv2d(2, 3, 5, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(3, 2, 1)],
                           (2, 9, 8), "k5s2"),
        "k3mp": _quantized([nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(3, stride=1, padding=1),
                            nn.Conv2d(3, 2, 3, stride=2)], (1, 7, 6), "k3mp"),
        "k1s2": _quantized([nn.Conv2d(2, 2, 1, stride=2), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)],
                           (2, 8, 9), "k1s2"),
        "k5p2": _quantized([nn.Conv2d(1, 2, 5, padding=2), nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(),
                            nn.Linear(18, 4)], (1, 6, 6), "k5p2"),
        "mpfirst": _quantized([nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=1, stride=(1, 2))],
                              (2, 6, 7), "mpfirst"),
        # a 1x1 conv padded by 1 has outputs made of padding only: it and what follows stay whole-vector (a
        # pixel-folded conv behind the collector)
        "padk1": _quantized([nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 1, padding=1)], (1, 4, 5),
                            "padk1"),
        "res_s2": _quantized([_resnet_block(2), nn.AvgPool2d(2)], (1, 8, 8), "res_s2"),
        "joins2": _quantized([_two_joins()], (1, 5, 6), "joins2"),
        "k2p1": _quantized([nn.Conv2d(1, 2, 2, padding=1), nn.ReLU(), nn.Conv2d(2, 2, (3, 2), padding=(1, 1))],
                           (1, 5, 6), "k2p1"),
        # global pools: a running per-channel sum (signed input) / maximum (unsigned) instead of a frame buffer;
        # the max pool's 1x1 output streams on through a conv to the output
        "gap": _quantized([nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)],
                          (2, 5, 6), "gap"),
        "gmp": _quantized([nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Conv2d(3, 2, 1)],
                          (1, 6, 5), "gmp"),
    }


#: random CNN seeds (informative) covering residual add and mul joins, pools, anchors that need row gaps or a hold
RANDOM_SEEDS = (5, 11, 13, 14, 18, 27)


def _write(tmp_path: Path, name: str, g, **kw) -> Path:
    d = tmp_path / name
    write_project(g, d, io="stream", top_name=f"s_{name}", **kw)
    return d


# ------------------------------------------------------------------------------------------------ facts (no tools)
def test_digits_plan_and_interface_facts(tmp_path):
    """Conv+BN+ReLU fused per pixel, the residual add a join with a FIFO, max-pool windowed, flatten + dense kept
    whole-vector behind a collector; one pixel per beat; one image per 64 clocks, as the folded vector design."""
    g = _digits_cnn()
    plan = stream_plan(g)
    assert [s.kind for s in plan.stages] == ["window", "window", "window", "join", "window"]
    assert [n.op.value for n in plan.tail] == ["flatten", "dense"]
    d = _write(tmp_path, "digits", g)
    info = json.loads((d / "cosim.json").read_text())
    assert info["io"] == "stream" and info["in_beats"] == 64 and info["in_beat_count"] == 1
    assert info["in_ports"][0]["order"] == "pixel" and info["in_ports"][0]["tlast"]
    assert info["out_ports"][0]["beats"] == 1 and info["out_beats"] == 1
    kinds = [L["kind"] for L in info["layers"]]
    assert kinds == ["window", "window", "window", "fifo", "join", "window", "collect", "vector"]
    conv = info["layers"][0]
    assert conv["kernel"] == [3, 3] and conv["line_buffer_pixels"] == 2 * 8 + 2  # K-1 rows of W pixels + K-1
    assert info["layers"][3]["fifo_depth"] >= 2 * (18 + 2)  # the two convs' pixels in flight, at least
    assert info["ii"] == build_project(g).info["ii"] == 64
    top = (d / "rtl" / "s_digits.sv").read_text()
    assert "m_axis_tlast" in top and "s_axis_tlast" in top
    assert "one input pixel" in (d / "README.md").read_text()
    assert max(len(line) for f in (d / "rtl").iterdir() for line in f.read_text().splitlines()) < 2000


def test_conv_only_model_streams_its_output(tmp_path):
    g = _hand_graphs()["k5s2"]
    info = json.loads((_write(tmp_path, "k5s2", g) / "cosim.json").read_text())
    assert stream_plan(g).boundary is None
    assert info["out_beats"] == 2 * 1 and info["out_ports"][0]["order"] == "pixel"
    assert info["out_beat_count"] == 2


def test_even_kernel_half_padding_gets_row_gaps():
    """An even kernel padded by half of it at stride 1: a row's last output and the next row's first would share an
    anchor; one empty slot per row separates them (the frame takes H more clocks)."""
    g = _hand_graphs()["k2p1"]
    files = build_stream_project(g, top_name="k2p1").files
    assert "rowgap = wrapped ?" in files["k2p1_s0.sv"] and "rowgap = 1'b0" not in files["k2p1_s0.sv"]
    info = build_stream_project(g, top_name="k2p1").info
    # 6 rows of 7 + 1 slots; the last output row (bottom padding) needs the whole frame and the next frame's first
    # output only its first pixel, so frames cannot overlap: the next one waits for the previous one's last row
    assert info["ii"] == 48


def test_padding_only_outputs_stay_in_the_vector_tail():
    g = _hand_graphs()["padk1"]
    info = build_stream_project(g, top_name="padk1").info
    assert [L["kind"] for L in info["layers"]] == ["window", "collect", "vector"]
    assert info["ii"] == 6 * 7 and info["out_beats"] == 1  # the folded 6x7 conv behind the collector


def test_dense_only_model_keeps_the_vector_design():
    g = random_graph(3, kind="mlp")
    a, b = build_stream_project(g), build_project(g)
    assert a.files == b.files and a.info["io"] == "vector"


def test_io_option_checked_and_default_unchanged(tmp_path):
    g = random_graph(1, kind="cnn", informative=True)
    with pytest.raises(BadInputError, match="io must be one of"):
        write_project(g, tmp_path / "bad", io="pixels")
    write_project(g, tmp_path / "v1")
    write_project(g, tmp_path / "v2", io="vector")
    for f in (tmp_path / "v1" / "rtl").iterdir():
        assert f.read_text() == (tmp_path / "v2" / "rtl" / f.name).read_text()


def test_cli_rtl_io_flag(tmp_path, capsys):
    g = random_graph(1, kind="cnn", informative=True)
    src = tmp_path / "g.json"
    g.save(src)
    assert main(["export", str(src), "--target", "rtl", "-o", str(tmp_path / "s"), "-q", "--rtl-io", "stream"]) == 0
    assert json.loads((tmp_path / "s" / "cosim.json").read_text())["io"] == "stream"
    assert main(["export", str(src), "--target", "hls", "-o", str(tmp_path / "h"), "-q", "--rtl-io", "stream"]) == 2
    err = capsys.readouterr().err
    assert "--rtl-io" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- co-simulation (Icarus)
def _mutate(path: Path, pattern: str, repl) -> None:
    text = path.read_text()
    new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
    assert n == 1, f"pattern {pattern!r} not found in {path.name}"
    path.write_text(new)


def _shift_tap(m: re.Match) -> str:
    """``lb[hi:lo]`` -> the pixel one slot older (a wrong line-buffer tap)."""
    hi, lo = int(m.group(2)), int(m.group(3))
    w = hi - lo + 1
    return f"{m.group(1)}lb[{hi + w}:{lo + w}]"


@pytest.mark.icarus
def test_stream_designs_bit_exact_and_mutations_caught(tmp_path, monkeypatch):
    """Every hand geometry, random CNNs and the digits-CNN structure, one Icarus simulation with random tvalid gaps
    and tready stalls: 0 mismatches, TLAST right; a line-buffer tap one pixel off, and a padding mask one row off,
    are caught."""
    from qfx.sim.cosim import run_cosim_many

    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = [_write(tmp_path, k, g) for k, g in _hand_graphs().items()]
    dirs += [_write(tmp_path, f"r{s}", random_graph(s, kind="cnn", informative=True)) for s in RANDOM_SEEDS]
    dirs.append(_write(tmp_path, "digits", _digits_cnn()))
    dirs.append(_write(tmp_path, "bad_tap", _hand_graphs()["k3mp"]))
    # the 3x3 conv reads its window's (ky=1) row one pixel too early
    _mutate(dirs[-1] / "rtl" / "s_bad_tap_s0.sv", r"^(    assign tap_1_0 = .*?)lb\[(\d+):(\d+)\]", _shift_tap)
    dirs.append(_write(tmp_path, "bad_pos", _hand_graphs()["k5p2"]))
    # the top padding row mask of the 5x5 window ends one output row late
    _mutate(dirs[-1] / "rtl" / "s_bad_pos_s0.sv", r"\(oy >= (\d+)'d1\)", lambda m: f"(oy >= {m.group(1)}'d2)")
    reps = {r.top: r for r in run_cosim_many(dirs, 10, seed=3, backpressure=True, work_dir=tmp_path / "work",
                                             sim="icarus")}
    good = {t: r for t, r in reps.items() if not t.startswith("s_bad")}
    assert len(good) == len(dirs) - 2
    bad = [(t, r.mismatches, r.received, r.timed_out, r.tlast_errors, r.first_mismatch) for t, r in good.items()
           if not r.ok or r.outputs_compared == 0]
    assert not bad, bad
    assert any(json.loads((d / "cosim.json").read_text())["out_beats"] > 1 for d in dirs)  # a streamed output
    for t in ("s_bad_tap", "s_bad_pos"):
        assert not reps[t].ok and reps[t].mismatches > 0, t


@pytest.mark.icarus
def test_wide_kernel_half_block_search_is_bit_exact(tmp_path, monkeypatch):
    """Kernels of more than ``CSE_WIDE`` weights (ResNet-20's 64x576) get a cheaper sharing search (half-size
    blocks): a different adder graph, the same bits. With ``CSE_WIDE = 0`` the 3x3 conv over 9 channels (81
    columns) is cut into 3 blocks instead of 2; Icarus with back-pressure must see 0 mismatches."""
    from torch import nn

    from qfx.backends import adder_graph
    from qfx.sim.cosim import run_cosim_many

    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    g = _quantized([nn.Conv2d(9, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3)], (9, 5, 5), "wide")
    write_project(g, tmp_path / "ref", io="stream", top_name="s_wide")
    monkeypatch.setattr(adder_graph, "CSE_WIDE", 0)
    d = tmp_path / "half"
    write_project(g, d, io="stream", top_name="s_wide")

    def text(p: Path) -> str:
        return "".join(f.read_text() for f in sorted((p / "rtl").glob("*.sv")))

    assert text(d) != text(tmp_path / "ref")  # the cheaper search did run and built another graph
    rep = run_cosim_many([d], 20, seed=5, backpressure=True, work_dir=tmp_path / "work", sim="icarus")[0]
    assert rep.ok and rep.received == 20 and rep.mismatches == 0, (rep.mismatches, rep.received)


@pytest.mark.slow
@pytest.mark.icarus
def test_stream_random_sweep(tmp_path, monkeypatch):
    from qfx.sim.cosim import run_cosim_many

    monkeypatch.setenv("QFX_CACHE_DIR", str(tmp_path / "cache"))
    dirs = [_write(tmp_path, f"r{s}", random_graph(s, kind="cnn", informative=True)) for s in range(1, 41)]
    reps = run_cosim_many(dirs, 20, seed=11, backpressure=True, work_dir=tmp_path / "work", sim="icarus")
    bad = [(r.top, r.mismatches, r.received) for r in reps if not r.ok]
    assert not bad, bad


# ------------------------------------------------------------------------------------------- Verilator and Yosys
@pytest.mark.verilator
def test_stream_designs_lint_clean(tmp_path):
    from qfx.sim.toolchain import find_verilator, verilator_env

    hand = _hand_graphs()
    for name, g in (("digits", _digits_cnn()), ("k2p1", hand["k2p1"]), ("joins2", hand["joins2"]),
                    ("gap", hand["gap"]), ("gmp", hand["gmp"]), ("r11", random_graph(11, kind="cnn", informative=True))):
        d = _write(tmp_path, name, g)
        files = [str(f) for f in sorted((d / "rtl").glob("*.sv"))]
        r = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", f"s_{name}", *files],
                           env=verilator_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.yosys
def test_stream_uses_fewer_flip_flops_than_vector(tmp_path):
    """Same model, same adder graphs: the streaming design keeps line buffers instead of whole frames."""
    from qfx.report.resources import report_project

    from torch import nn

    g = _quantized([nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)], (1, 6, 6), "tiny", bits=4)
    write_project(g, tmp_path / "v", top_name="v_tiny")
    _write(tmp_path, "tiny", g)
    vec = report_project(tmp_path / "v", use_cache=False).total
    st = report_project(tmp_path / "tiny", use_cache=False).total
    assert st.ff * 2 < vec.ff, (st, vec)
    assert np.isfinite(st.lut) and st.lut < vec.lut, (st, vec)


def test_global_pools_are_running_reductions(tmp_path):
    """A global average / max pool streams as a per-channel running sum / maximum: no line buffer holding the
    frame; its accumulator is the exact sum's width."""
    gs = _hand_graphs()
    for name in ("gap", "gmp"):
        plan = stream_plan(gs[name])
        assert "frame" in [s.kind for s in plan.stages], name
        info = json.loads((_write(tmp_path, name, gs[name]) / "cosim.json").read_text())
        frame = next(L for L in info["layers"] if L["kind"] == "frame")
        assert "line_buffer_pixels" not in frame and frame["kernel"] == list(gs[name].tensor(
            next(s for s in plan.stages if s.kind == "frame").node.inputs[0]).shape[1:])
        assert frame["accumulator_bits"] <= 3 * 16, frame
