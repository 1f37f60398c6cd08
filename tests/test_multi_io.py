"""Graphs with several inputs and outputs through the backends: two inputs joined (two dense branches added; two
conv branches concatenated) and one input forked to two outputs, checked by the interpreter, C simulation (io_parallel
and io_stream) and cocotb co-simulation of the RTL (one AXI4-Stream port per input and output, independent random
stalls on every port), plus the testbench's port packing (several beats per vector, pixel order)."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


class _TwoDense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(4, 5)

    def forward(self, x, y):
        return torch.relu(self.a(x)) + self.b(y)


class _TwoConvCat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, y):
        return torch.cat([torch.relu(self.a(x)), self.b(y)], 1)


class _OneTwo(nn.Module):
    """One input, two outputs of different depth (the shorter branch must be delayed to line up)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 3), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))), self.c(x)


_MODELS = {"two_dense": (_TwoDense, ((6,), (4,))), "two_conv_cat": (_TwoConvCat, ((2, 4, 4), (1, 4, 4))),
           "one_two": (_OneTwo, ((8,),))}


@pytest.fixture(scope="module")
def graphs():
    import qfx
    from qfx.ir.from_torch import capture
    from qfx.ir.passes import run_flow

    torch.manual_seed(0)
    res = {}
    for name, (cls, shapes) in _MODELS.items():
        q = qfx.quantize_model(cls()).eval()
        res[name] = run_flow(capture(q, tuple(torch.randn(1, *s) for s in shapes), name=f"mio_{name}")).graph
    return res


@pytest.fixture(scope="module")
def rtl_projects(graphs, tmp_path_factory):
    from qfx.backends import rtl

    root = tmp_path_factory.mktemp("mio_rtl")
    for g in graphs.values():
        rtl.write_project(g, root / g.name)
    return {k: root / g.name for k, g in graphs.items()}


def test_graphs_have_several_inputs_or_outputs(graphs):
    from qfx.ir import run
    from qfx.sim.csim import make_inputs

    assert [(len(g.inputs), len(g.outputs)) for g in graphs.values()] == [(2, 1), (2, 1), (1, 2)]
    g = graphs["one_two"]
    y = run(g, make_inputs(g, 5)[g.inputs[0]])
    assert set(y) == set(g.outputs) and [y[o].shape for o in g.outputs] == [(5, 3), (5, 2)]


def test_rtl_top_has_one_port_per_input_and_output(graphs, rtl_projects):
    d = rtl_projects["two_dense"]
    info = json.loads((d / "cosim.json").read_text())
    g = graphs["two_dense"]
    assert [q["prefix"] for q in info["in_ports"]] == ["s0_axis", "s1_axis"]
    assert [q["tensor"] for q in info["in_ports"]] == list(g.inputs)
    assert [q["prefix"] for q in info["out_ports"]] == ["m0_axis"] and "in_tw" not in info
    sv = (d / "rtl" / f"{info['top']}.sv").read_text()
    for q in info["in_ports"] + info["out_ports"]:
        assert f"{q['prefix']}_tdata" in sv and f"{q['prefix']}_tready" in sv
        assert q["tw"] % 8 == 0 and q["tw"] >= q["count"] * q["ew"]
    # join: an input is taken only when every input has a beat
    assert re.search(r"assign s1_axis_tready = ce && all_valid;", sv)
    readme = (d / "README.md").read_text()
    assert "`s0_axis_tdata`" in readme and "`s1_axis_tdata`" in readme and "Join and fork" in readme
    # fork: the shallower output is delayed to the deeper one's stage
    info2 = json.loads((rtl_projects["one_two"] / "cosim.json").read_text())
    sv2 = (rtl_projects["one_two"] / "rtl" / f"{info2['top']}.sv").read_text()
    assert "assign m0_axis_tvalid = vld_last && !taken[0];" in sv2 and re.search(r"assign m1_axis_tdata = t\d+_d", sv2)


def test_single_io_cosim_facts_unchanged(tmp_path):
    """One input and one output: the legacy keys, ``s_axis``/``m_axis``, no port lists (byte-identical output)."""
    from qfx.backends import rtl
    from qfx.ir.random_graph import random_graph
    from qfx.sim.cosim import project_ports

    g = random_graph(0, "mlp", max_width=8)
    rtl.write_project(g, tmp_path / "p")
    info = json.loads((tmp_path / "p" / "cosim.json").read_text())
    assert "in_ports" not in info and "s_axis_tdata" in (tmp_path / "p" / "rtl" / f"{info['top']}.sv").read_text()
    (pin,), (pout,) = project_ports(info)
    assert (pin["prefix"], pin["tw"], pin["beats"], pout["prefix"], pout["count"]) == (
        "s_axis", info["in_tw"], 1, "m_axis", info["out_count"])


def test_pack_port_beats_and_pixel_order():
    from qfx.sim.cosim import pack_port, unpack_port

    codes = np.arange(-6, 6, dtype=np.int64).reshape(1, 12)  # (C, H, W) = (3, 2, 2)
    flat = {"count": 12, "ew": 4, "signed": True, "beats": 4, "order": "flat"}
    words = pack_port(codes, flat)
    assert len(words) == 4 and words[0] == (-6 & 15) | ((-5 & 15) << 4) | ((-4 & 15) << 8)
    pix = {**flat, "order": "pixel", "shape": [3, 2, 2]}
    pw = pack_port(codes, pix)
    # pixel 0 carries channels 0, 1, 2 of (h, w) = (0, 0): flat elements 0, 4, 8
    assert pw[0] == (-6 & 15) | ((-2 & 15) << 4) | ((2 & 15) << 8)
    for port, w in ((flat, words), (pix, pw)):
        back, unknown = unpack_port([format(v, "x") for v in w * 2], port)
        assert back.tolist() == [codes[0].tolist()] * 2 and not unknown.any()
    # a trailing partial vector is dropped
    assert unpack_port([format(v, "x") for v in pw[:3]], pix)[0].shape == (0, 12)


def test_project_ports_rejects_bad_facts():
    from qfx.sim.cosim import project_ports

    good = {"prefix": "s0_axis", "count": 12, "ew": 4, "tw": 16, "beats": 4}
    project_ports({"in_ports": [good], "out_ports": [good]})
    for bad in ({"beats": 5}, {"tw": 8}, {"order": "zigzag"}, {"order": "pixel", "shape": [3, 2, 3]}):
        with pytest.raises((ValueError, KeyError)):
            project_ports({"in_ports": [{**good, **bad}], "out_ports": [good]})


def test_cosim_inputs_by_name_are_checked(graphs, rtl_projects):
    from qfx.errors import BadInputError
    from qfx.sim.cosim import check_input_dict

    g = graphs["two_dense"]
    a, b = g.inputs
    with pytest.raises(BadInputError, match="give one array per input name"):
        check_input_dict(g, np.zeros((3, 6), dtype=np.int64))
    with pytest.raises(BadInputError, match="the graph's inputs are"):
        check_input_dict(g, {a: np.zeros((3, 6), dtype=np.int64)})
    with pytest.raises(BadInputError, match="different numbers of vectors"):
        check_input_dict(g, {a: np.zeros((3, 6), dtype=np.int64), b: np.zeros((2, 4), dtype=np.int64)})
    ok = check_input_dict(g, {a: np.zeros((3, 6), dtype=np.int64), b: np.ones((3, 4), dtype=np.int64)})
    assert list(ok) == [a, b]


@pytest.mark.gxx
def test_csim_parallel_and_stream(graphs, tmp_path):
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for g in graphs.values():
        for io in ("parallel", "stream"):
            d = tmp_path / f"{g.name}_{io}"
            hls.write_project(g, d, io=io, top_name=f"{g.name}_{io}")
            dirs.append(d)
    reps = run_csim_batch(dirs, n_vectors=100)
    assert {r.top: (r.mismatches, r.vectors) for r in reps} == {d.name: (0, 100) for d in dirs}


@pytest.mark.verilator
def test_rtl_cosim_joins_and_forks_bit_exactly(graphs, rtl_projects, tmp_path):
    """One Verilator build for the three designs; every port stalls on its own random pattern."""
    from qfx.sim.cosim import run_cosim_many

    reps = run_cosim_many(list(rtl_projects.values()), n_vectors=150, seed=3, work_dir=tmp_path)
    assert {r.top: (r.mismatches, r.received, r.ok) for r in reps} == {
        g.name: (0, 150, True) for g in graphs.values()}
    assert reps[1].ii > 1  # the conv design is pixel-folded: the join/fork also holds over a frame period


@pytest.mark.verilator
def test_rtl_cosim_catches_a_join_that_takes_a_lone_input(graphs, tmp_path):
    """Mutation: s1_axis_tready no longer waits for s0's beat, so the inputs of a vector drift apart."""
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim

    g = graphs["two_dense"].replace(name="mio_mutant")
    d = tmp_path / "mutant"
    rtl.write_project(g, d)
    top = d / "rtl" / "mio_mutant.sv"
    text = top.read_text()
    assert "assign s1_axis_tready = ce && all_valid;" in text
    top.write_text(text.replace("assign s1_axis_tready = ce && all_valid;", "assign s1_axis_tready = ce;"))
    rep = run_cosim(d, n_vectors=80, work_dir=tmp_path / "w")
    assert not rep.ok and rep.mismatches > 0


def test_cli_cosim_and_csim_take_several_inputs(graphs, rtl_projects, tmp_path, monkeypatch):
    """``--inputs`` npz: one array per input name; a missing name is bad input (exit 2), before any tool runs."""
    from qfx.cli import main

    g = graphs["two_dense"]
    a, _ = g.inputs
    npz = tmp_path / "x.npz"
    np.savez(npz, **{a: np.zeros((4, 6), dtype=np.int64)})
    d = tmp_path / "p"
    shutil.copytree(rtl_projects["two_dense"], d)
    assert main(["cosim", str(d), "--inputs", str(npz), "--quiet"]) == 2


# ------------------------------------------------------------------------------------------------ HLS AXI-Stream top
class _TwoTwo(nn.Module):
    """Two inputs and two outputs: a join (add) and a branch that reads only the second input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 5), nn.Linear(4, 5), nn.Linear(4, 3)

    def forward(self, x, y):
        return torch.relu(self.a(x)) + self.b(y), self.c(y)


@pytest.fixture(scope="module")
def two_two():
    import qfx
    from qfx.ir.from_torch import capture
    from qfx.ir.passes import run_flow

    torch.manual_seed(1)
    q = qfx.quantize_model(_TwoTwo()).eval()
    return run_flow(capture(q, (torch.randn(1, 6), torch.randn(1, 4)), name="mio_two_two")).graph


def test_hls_axis_top_has_one_port_per_input_and_output(two_two, tmp_path):
    from qfx.backends import hls

    (s0, s1), (m0, m1) = hls.axis_ports(two_two)
    assert [(q.prefix, q.tensor) for q in (s0, s1, m0, m1)] == [
        ("s0_axis", two_two.inputs[0]), ("s1_axis", two_two.inputs[1]), ("m0_axis", two_two.outputs[0]),
        ("m1_axis", two_two.outputs[1])]
    assert (s0.count, s1.count, m0.count, m1.count) == (6, 4, 5, 3) and all(q.tw % 8 == 0 for q in (s0, m1))
    hls.write_project(two_two, tmp_path / "p")
    src = (tmp_path / "p" / "firmware" / "mio_two_two_axis.cpp").read_text()
    assert re.search(r"void mio_two_two_axis\(hls::stream<ap_uint<\d+> > &s0_axis,\s+hls::stream<ap_uint<\d+> > "
                     r"&s1_axis,\s+hls::stream<ap_uint<\d+> > &m0_axis,\s+hls::stream<ap_uint<\d+> > &m1_axis\)", src)
    assert "mio_two_two(xs0, xs1, ys0, ys1);" in src
    readme = (tmp_path / "p" / "README.md").read_text()
    assert "| `s1_axis` | in |" in readme and "| `m1_axis` | out |" in readme
    tcl = (tmp_path / "p" / "build_prj.tcl").read_text()
    assert "mio_two_two_axis" in tcl and "add_files -tb tb/tb_input_codes.bin" in tcl
    # the stand-alone testbench vectors: both inputs side by side per vector, both outputs likewise
    from qfx.backends.hls import TB_VECTORS
    from qfx.ir import run
    from qfx.sim.build import read_codes

    x = read_codes(tmp_path / "p" / "tb" / "tb_input_codes.bin", (TB_VECTORS, 10))
    y = run(two_two, {two_two.inputs[0]: x[:, :6], two_two.inputs[1]: x[:, 6:]})
    want = np.concatenate([y[o].reshape(TB_VECTORS, -1) for o in two_two.outputs], axis=1)
    np.testing.assert_array_equal(read_codes(tmp_path / "p" / "tb" / "tb_expected_codes.bin", want.shape), want)


@pytest.mark.gxx
def test_hls_axis_top_csim_two_in_two_out_and_csim_inputs(two_two, tmp_path, capsys):
    """The C++ AXI top (packed words on four ports) against the interpreter, io_parallel and io_stream; then
    ``qfx csim --axis --inputs NPZ`` on the same build: given codes run, bad ones are exit 2 before any build."""
    from qfx.backends import hls
    from qfx.cli import main
    from qfx.sim.csim import make_inputs, run_csim

    dirs = {}
    for io in ("parallel", "stream"):
        dirs[io] = tmp_path / io
        hls.write_project(two_two, dirs[io], io=io)
        rep = run_csim(dirs[io], n_vectors=150, seed=2, axis=True)
        assert (rep.top, rep.vectors, rep.mismatches, rep.outputs_compared) == ("mio_two_two_axis", 150, 0, 150 * 8)
        assert set(rep.per_output_mismatches) == set(two_two.outputs)
    a, b = two_two.inputs
    xs = make_inputs(two_two, 9, seed=5)
    npz = tmp_path / "x.npz"
    np.savez(npz, **xs)
    d = str(dirs["parallel"])
    assert main(["csim", d, "--axis", "--inputs", str(npz), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["vectors"], rep["mismatches"], rep["inputs"], rep["top"]) == (9, 0, "given", "mio_two_two_axis")
    bad = tmp_path / "bad.npz"
    hi = two_two.tensor(b).fmt.max_code
    np.savez(bad, **{a: xs[a], b: xs[b] + hi + 1})
    np.save(tmp_path / "one.npy", xs[a])
    np.savez(tmp_path / "half.npz", **{a: xs[a]})
    for path, text in ((bad, "outside"), (tmp_path / "one.npy", "one array per input name"),
                       (tmp_path / "half.npz", "the graph's inputs are"), (tmp_path / "none.npz", "cannot read")):
        assert main(["csim", d, "--inputs", str(path)]) == 2
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
