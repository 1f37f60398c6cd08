"""Per-layer resource reports of big designs: a multi-module layer file (a streaming design's folded dense tail) split
into one Yosys run per module, LUTs mapped in chunks (same cells as synth_xilinx's own map_luts), per-layer seconds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qfx.report import resources as R
from qfx.report.yosys import _script

needs_yosys = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not found")

_TAIL = """// Generated: a tail with two layers
module t_tail (input logic [7:0] x, output logic [7:0] y);
    logic [7:0] a;
    t_tail_l0 u_t_tail_l0 (.x(x), .y(a));
    t_tail_l1 u_t_tail_l1 (.x(a), .y(y));
endmodule

/* verilator lint_off DECLFILENAME */
// a comment naming module t_tail_l9, which is not one
module t_tail_l0 (input logic [7:0] x, output logic [7:0] y);
    assign y = x + 8'd1;
endmodule

module t_tail_l1_out (input logic [7:0] x, output logic [7:0] y);
    t_requant #(.W(8)) u_q (.d(x), .q(y));
endmodule

module t_tail_l1 (input logic [7:0] x, output logic [7:0] y);
    t_tail_l1_out u_out (.x(x), .y(y));
endmodule
/* verilator lint_on DECLFILENAME */
"""


def test_split_modules_and_layer_parts(tmp_path):
    f = tmp_path / "t_tail.sv"
    f.write_text(_TAIL)
    mods = R._split_modules(f)
    assert list(mods) == ["t_tail", "t_tail_l0", "t_tail_l1_out", "t_tail_l1"]
    assert all(t.lstrip().startswith("module") and t.rstrip().endswith("endmodule") for t in mods.values())
    assert R._instantiates(mods["t_tail"], list(mods)) == {"t_tail_l0", "t_tail_l1"}
    assert R._instantiates(mods["t_tail_l1_out"], ["t_requant", "t_tail"]) == {"t_requant"}
    common = tmp_path / "t_requant.sv"
    common.write_text("module t_requant #(parameter W = 8) (input logic [W-1:0] d, output logic [W-1:0] q);\n"
                      "    assign q = d;\nendmodule\n")
    parts = R._split_layer("t_tail", f, [common], tmp_path / "split")
    assert [(p.module, p.layer, p.parent) for p in parts] == [
        ("t_tail_l0", "t_tail", "t_tail"), ("t_tail_l1", "t_tail", "t_tail"), ("t_tail", "t_tail", None)]
    assert [x.name for x in parts[1].srcs] == ["t_tail_l1.sv", "t_tail_l1_out.sv", "t_requant.sv"]
    assert [x.name for x in parts[2].boxes] == ["t_tail_l0.sv", "t_tail_l1.sv"]
    # a file with compiler directives, or one module only, is not split
    g = tmp_path / "d.sv"
    g.write_text("`timescale 1ns/1ps\n" + _TAIL)
    assert R._split_modules(g) == {} and R._split_layer("t_tail", g, [], tmp_path / "s2") is None
    assert R._split_layer("t_requant", common, [], tmp_path / "s3") is None


def test_chunked_script_keeps_synth_xilinx_stages():
    plain = _script([Path("a.sv")], "a", "xc7", False, True)
    chunked = _script([Path("a.sv")], "a", "xc7", False, True, lut_chunk=500)
    assert plain.count("synth_xilinx") == 1 and "-run" not in plain
    assert "synth_xilinx -family xc7 -noiopad -noclkbuf -top a -run :map_luts;" in chunked
    assert chunked.rstrip().endswith("synth_xilinx -family xc7 -noiopad -noclkbuf -top a -run finalize:; "
                                     "tee -q -o stat.json stat -json")
    assert "t:$lut %R500" in chunked and "xilinx_dffopt; opt_lut_ins -tech xilinx" in chunked


def _stream_project(tmp_path: Path, m, hw: int, name: str, target_ii: int) -> Path:
    """``m`` (1-channel hw x hw input) quantized at W = 6, exported as a pixel-streaming RTL project."""
    import torch
    from torch import nn

    from qfx.backends.rtl import write_project
    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.nn.convert import QFXConfig, quantize_model
    from qfx.nn.exact import set_mode

    with torch.no_grad():  # after the caller's seed and model: its random stream goes on
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.uniform_(-0.9, 0.9)
    q = quantize_model(m, QFXConfig(weight_width=6, bias_width=12, act_width=6, bn_width=6, input_width=8))
    q(torch.rand(64, 1, hw, hw) * 4)
    q.eval()
    set_mode(q, "exact")
    g = run_flow(capture(q, torch.zeros(1, 1, hw, hw), name=name), DEFAULT_FLOW).graph
    write_project(g, tmp_path / "prj", io="stream", target_ii=target_ii)
    return tmp_path / "prj"


def _tail_project(tmp_path: Path) -> Path:
    """A small streaming CNN with a folded dense tail (its file holds one module per dense layer)."""
    import torch
    from torch import nn

    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 6),
                      nn.ReLU(), nn.Linear(6, 3))
    return _stream_project(tmp_path, m, 6, "split_t", 36)


@needs_yosys
@pytest.mark.yosys
def test_split_tail_and_chunked_luts_match_the_per_layer_report(tmp_path, monkeypatch):
    """The tail split into its modules (and every run's LUTs mapped in chunks) gives the unsplit per-layer report's
    FF/CARRY/DSP exactly and its LUTs within ABC's per-run variation; the chunked LUT mapping alone changes nothing."""
    prj = _tail_project(tmp_path)
    info = json.loads((prj / "cosim.json").read_text())
    tail = next(la["module"] for la in info["layers"] if la.get("kind") == "vector")
    assert len(R._split_modules(prj / "rtl" / f"{tail}.sv")) >= 3
    # per layer, the tail in one run (it is below the size thresholds)
    whole = R.report_project(prj, use_cache=False, split=True, jobs=2)
    assert all(la.seconds is not None and not la.parts for la in whole.layers)
    assert "Yosys s" in whole.table()
    monkeypatch.setattr(R, "_SPLIT_BYTES", 0)
    monkeypatch.setattr(R, "_CHUNK_BYTES", 0)
    monkeypatch.setattr(R, "_LUT_CHUNK", 16)
    split = R.report_project(prj, use_cache=False, split=True, jobs=2)
    st = next(la for la in split.layers if la.module == tail)
    assert len(st.parts) >= 3 and all(p["lut_chunk"] == 16 for p in st.parts)
    assert sum(p["ff"] for p in st.parts) == st.resources.ff
    key = ("ff", "carry", "dsp")
    for a, b in zip([*split.layers, split], [*whole.layers, whole]):
        ra = a.resources if hasattr(a, "resources") else a.total
        rb = b.resources if hasattr(b, "resources") else b.total
        assert [getattr(ra, k) for k in key] == [getattr(rb, k) for k in key], (a, b)
        assert abs(ra.lut - rb.lut) <= 0.12 * rb.lut + 4, (ra, rb)
    # every non-tail layer is the same single run, only its LUT mapping chunked: identical cells
    for a, b in zip(split.layers, whole.layers):
        if a.module != tail:
            assert a.resources == b.resources, (a.module, a.resources, b.resources)
    d = st.to_dict()
    assert d["parts"] and d["seconds"] >= 0


def test_big_projects_are_reported_per_layer_even_with_one_job(tmp_path, monkeypatch):
    """``report_project`` (``qfx report`` without ``-j``) synthesizes a design over 1 MB of SystemVerilog layer by
    layer: one Yosys run over LeNet-5's 2.4 MB streaming design did not finish in 30 min."""
    rtl = tmp_path / "rtl"
    rtl.mkdir()
    (rtl / "t.sv").write_text("module t (input logic a, output logic y);\n    t_l0 u_t_l0 (.a(a), .y(y));\nendmodule\n")
    (rtl / "t_l0.sv").write_text("module t_l0 (input logic a, output logic y);\n    assign y = a;\nendmodule\n")
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "cosim.json").write_text(json.dumps({"top": "t", "rtl_files": ["rtl/t_l0.sv", "rtl/t.sv"],
                                                     "layers": [{"node": "n0", "op": "relu", "module": "t_l0"}]}))
    calls = []
    monkeypatch.setattr(R, "_report_in_parts", lambda *a, **k: calls.append(a[2]) or R.ProjectReport(
        "p", "t", "xc7", None, [], R.Resources(), R.Resources(), 0.0, False))
    monkeypatch.setattr(R, "run_synth", lambda *a, **k: (_ for _ in ()).throw(AssertionError("whole-design run")))
    with pytest.raises(AssertionError, match="whole-design"):  # small: one hierarchical run
        R.report_project(tmp_path, jobs=1)
    with (rtl / "t_l0.sv").open("a") as f:
        f.write("// " + "x" * (1024 * 1024) + "\n")
    R.report_project(tmp_path, jobs=1)
    assert [[p.module for p in parts] for parts in calls] == [["t_l0", "t"]]
    with pytest.raises(AssertionError, match="whole-design"):
        R.report_project(tmp_path, jobs=4, split=False)


def test_counted_cells_are_lut_map_primitives():
    """ABC's $lut cells by width become what lut_map.v makes of them; anything else of Yosys's own (a flip-flop)
    means the netlist is not LUTs only (None: the caller runs the full flow)."""
    from qfx.report.yosys import _counted_cells, _script, classify_cells

    cells = {"$lut_1": 3, "$lut_2": 5, "$lut_6": 7, "$lut_7": 2, "$lut_8": 1, "CARRY4": 4,
             "$paramod$ab12\\t_requant": 2}
    got = _counted_cells(cells)
    assert got == {"INV": 3, "LUT2": 5, "LUT6": 7 + 4 + 4, "MUXF7": 2 + 2, "MUXF8": 1, "CARRY4": 4,
                   "$paramod$ab12\\t_requant": 2}
    r = classify_cells(got, ["$paramod$ab12\\t_requant"])
    assert (r.lut, r.muxf, r.carry, r.other) == (5 + 15, 5, 4, 0)  # INV is not counted, as in the full flow
    assert _counted_cells({"$lut_3": 1, "$_DFFE_PP_": 1}) is None
    s = _script([Path("a.sv")], "a", "xc7", False, True, count_luts=True)
    assert s.endswith("-run :map_luts; opt_expr -mux_undef -noclkinv; abc -luts 2:2,3,6:5,10,20; clean; "
                      "techmap -map +/xilinx/lut_map.v -D LUT_WIDTH=6 t:$lut r:WIDTH>=7 %i; "
                      "opt_lut_ins -tech xilinx; clean; tee -q -o stat.json stat -json -width")


def _pix_project(tmp_path: Path) -> Path:
    """A streaming two-conv CNN: its pixel kernels are combinational adder graphs in their own files."""
    import torch
    from torch import nn

    torch.manual_seed(5)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 3))
    return _stream_project(tmp_path, m, 4, "pix_t", 16)


@needs_yosys
@pytest.mark.yosys
def test_counted_luts_equal_the_mapped_ones(tmp_path, monkeypatch):
    """A combinational pixel kernel: the counted run gives synth_xilinx's own LUT/MUXF/CARRY figures; a layer with
    flip-flops asked to count falls back to the full flow (identical to it); the per-layer report over split pixel
    kernels equals the unsplit one in FF/CARRY/DSP and its LUTs within ABC's per-run variation."""
    from qfx.report.yosys import run_synth

    prj = _pix_project(tmp_path)
    rtl = prj / "rtl"
    pix = sorted(rtl.glob("*_pix.sv"), key=lambda f: f.stat().st_size)[-1]
    common = sorted(rtl.glob("*_requant.sv"))
    full = run_synth([pix, *common], top=pix.stem, use_cache=False)
    counted = run_synth([pix, *common], top=pix.stem, use_cache=False, count_luts=True)
    assert full.total.lut > 50 and full.total.ff == 0
    assert counted.total == full.total, (counted.total, full.total)
    layer = rtl / f"{pix.stem[:-4]}.sv"
    seq_full = run_synth([layer, pix, *common], top=layer.stem, use_cache=False)
    seq_counted = run_synth([layer, pix, *common], top=layer.stem, use_cache=False, count_luts=True)
    assert seq_full.total.ff > 0 and seq_counted.total == seq_full.total
    whole = R.report_project(prj, use_cache=False, split=True, jobs=2)
    monkeypatch.setattr(R, "_PIX_BYTES", 0)
    split = R.report_project(prj, use_cache=False, split=True, jobs=2)
    la = next(x for x in split.layers if x.module == pix.stem[:-4])
    assert [p["module"] for p in la.parts] == [pix.stem, la.module] and la.parts[0]["luts_counted"]
    for a, b in zip([*split.layers, split], [*whole.layers, whole]):
        ra = a.resources if hasattr(a, "resources") else a.total
        rb = b.resources if hasattr(b, "resources") else b.total
        assert (ra.ff, ra.carry, ra.dsp) == (rb.ff, rb.carry, rb.dsp), (a, b)
        assert abs(ra.lut - rb.lut) <= 0.12 * rb.lut + 4, (ra, rb)
