"""softmax over the last axis of per-sample tensors of any rank (row-wise softmax, attention's scores): the golden
function row by row equals the vector op on each row; interpreter vs onnxruntime, C simulation (io parallel and
stream) and RTL co-simulation (vector and pixel-streaming designs, one Verilator build) on seeded random formats and
shapes; torch models with softmax over the last axis of (N, 4, 6) / (N, C, H, W) activations: train mode == exact
mode == interpreter; softmax over an inner axis between two transposes; over the batch axis refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph
from qfx.ir.interpret import run
from qfx.ops.base import one_node_graph, rand_fmt
from qfx.ops.softmax import softmax_tables
from qfx.sim.csim import make_inputs

from models.harness import exact_check, square_loss_steps


def _rows_graph(shape: tuple[int, ...], fin: FxFormat, fout: FxFormat, name: str = "smr", **kw) -> Graph:
    et, rt, shift = softmax_tables(shape[-1], fin, fout, **kw)
    return one_node_graph("softmax", [(shape, fin)], shape, fout, {"exp_table": et, "recip_table": rt},
                          {"shift": shift}).replace(name=name)


#: per-sample shapes: matrices, (heads, S, S), a single row, rows of one element
SHAPES = [(3, 5), (2, 3, 4), (1, 6), (4, 2), (2, 2, 3), (3, 1), (2, 6, 6)]


def _random_graphs(n: int = len(SHAPES), seed: int = 0) -> list[Graph]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        fin = rand_fmt(rng, 3, 8, signed=bool(k % 3), int_bits=int(rng.integers(1, 4, endpoint=True)))
        fout = rand_fmt(rng, 4, 10, signed=False, int_bits=1)
        out.append(_rows_graph(SHAPES[k % len(SHAPES)], fin, fout, name=f"smr{k}"))
    return out


def test_golden_is_the_vector_softmax_on_every_row():
    for g in _random_graphs():
        shape, fin = g.tensor("x0").shape, g.tensor("x0").fmt
        x = make_inputs(g, 40, 1)["x0"]
        vec = _rows_graph((shape[-1],), fin, g.tensor("y").fmt)
        want = run(vec, x.reshape(-1, shape[-1])).reshape(x.shape)
        np.testing.assert_array_equal(run(g, x), want)


def test_table_checks_use_the_row_length():
    """Tables sized for rows of 8 fit a (4, 8) input (the whole tensor's 32 elements would overflow them)."""
    from qfx.errors import BadInputError
    from qfx.ir.passes import run_flow

    fin, fout = FxFormat(8, 3), FxFormat(8, 1, False)
    et, rt, shift = softmax_tables(8, fin, fout)
    assert (32 * int(et.codes.max())) >> shift >= rt.codes.size  # x.size would not fit
    run_flow(_rows_graph((4, 8), fin, fout), ("check_formats",))
    g = one_node_graph("softmax", [((4, 8), fin)], (4, 8), fout, {"exp_table": et, "recip_table": rt},
                       {"shift": shift})
    from qfx.onnx.export import check_exact_in_double

    check_exact_in_double(g)
    bad = one_node_graph("softmax", [((4, 8), fin)], (32,), fout, {"exp_table": et, "recip_table": rt},
                         {"shift": shift})
    with pytest.raises(BadInputError, match="keeps the shape"):
        run_flow(bad, ("check_formats",))


def test_onnxruntime_matches_interpreter():
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    for g in _random_graphs(seed=1):
        m = to_onnx_model(g)
        red = [nd for nd in m.graph.node if nd.op_type in ("ReduceMax", "ReduceSum")]
        assert red and all(dict((a.name, a.i) for a in nd.attribute).get("keepdims") == 1 for nd in red)
        x = make_inputs(g, 200, 2)["x0"]
        np.testing.assert_array_equal(run_onnx_codes(m.SerializeToString(), g, x), run(g, x))


def test_rtl_design_has_one_row_circuit_per_row_sharing_the_roms():
    from qfx.backends.rtl_design import design_layer

    g = _rows_graph((2, 3, 4), FxFormat(8, 4), FxFormat(8, 1, False, "RND", "SAT"))
    d = design_layer(g, g.nodes[0], "smr_l0")
    assert len(d.roms) == 2 and d.n_mults == 24
    assert sum(1 for it in d.items if it["kind"] == "rom") == 24 + 6  # 24 exp reads, one reciprocal read per row


def test_hls_config_has_rows_and_row_length(tmp_path):
    from qfx.backends import hls

    g = _rows_graph((2, 3, 4), FxFormat(8, 4), FxFormat(8, 1, False))
    hls.write_project(g, tmp_path)
    params = (tmp_path / "firmware" / "parameters.h").read_text()
    assert "n_elem = 4;" in params and "n_rows = 6;" in params


# ------------------------------------------------------------------------------------------------ torch front end
class _Rows(nn.Module):
    """Softmax over the last axis of (N, 4, 6) three ways (nn.Softmax, F.softmax(dim=2), Tensor.softmax(-1) of a
    4-D view), as attention writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.sm = nn.Softmax(dim=-1)
        self.out = nn.Linear(24, 3)

    def forward(self, x):
        a = self.sm(self.fc(x))
        b = F.softmax(x, dim=2)
        c = x.unsqueeze(1).softmax(-1).flatten(1, 2)
        return self.out(torch.flatten(a + b + c, 1))


class _ConvRows(nn.Module):
    """Softmax over W of a conv's (N, C, H, W) output (the pixel-streaming RTL keeps it in the vector tail)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        return torch.softmax(torch.relu(self.conv(x)), dim=-1)


@pytest.fixture(scope="module")
def rows_model():
    torch.manual_seed(0)
    x = torch.randn(96, 4, 6)
    q = qfx.quantize_model(_Rows(), qfx.QFXConfig(act_width=8), calib_data=x)
    return square_loss_steps(q, x, 3), x


def test_torch_rows_train_exact_interpreter_agree(rows_model):
    q, x = rows_model
    q.train()
    q.zero_grad()
    q(x[:16]).pow(2).mean().backward()
    assert float(q.net.fc.weight.grad.abs().sum()) > 0  # float softmax gradients reach the layer before it
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    sm = [g.tensor(n.output).shape for n in g.nodes if n.op.value == "softmax"]
    assert sorted(sm) == [(1, 4, 6), (4, 6), (4, 6)]


def test_softmax_over_an_inner_axis_moves_it_last():
    """Softmax over an inner axis (the 4 rows' axis of (N, 4, 6); the channels of a conv's (N, C, H, W) output,
    as segmentation heads score pixels) is the row softmax between two transposes: train == exact == interpreter;
    the batch axis is refused in one line."""
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(x).softmax(1)

    class PixelScores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.sm = nn.Conv2d(2, 3, 3, padding=1), nn.Softmax(dim=-3)

        def forward(self, x):
            return self.sm(self.conv(x))

    torch.manual_seed(2)
    for m, x in ((Inner(), torch.randn(64, 4, 6)), (PixelScores(), torch.randn(64, 2, 4, 5))):
        q = square_loss_steps(qfx.quantize_model(m, qfx.QFXConfig(act_width=7, weight_width=7), calib_data=x), x, 2)
        g, exact_vs_interp, train_vs_exact = exact_check(q, x)
        assert exact_vs_interp == 0 and train_vs_exact == 0
        assert [n.op.value for n in g.nodes][-4:] == ["transpose", "quant", "softmax", "transpose"]
        with torch.no_grad():
            y = q.eval()(x)
        d = 1 if isinstance(m, Inner) else -3
        assert torch.allclose(y.sum(d), torch.ones(()), atol=0.1)
    with pytest.raises(UnsupportedError, match=r"softmax over dim=0") as e:
        qfx.quantize_model(nn.Sequential(nn.Linear(6, 6), nn.Softmax(dim=0)), qfx.QFXConfig(), torch.randn(8, 6))
    assert "\n" not in str(e.value)
    # (N, n) with dim=1 stays what it was
    q = qfx.quantize_model(nn.Sequential(nn.Linear(5, 4), nn.Softmax(dim=1)), qfx.QFXConfig(), torch.randn(8, 5))
    assert q(torch.randn(3, 5)).shape == (3, 4)


@pytest.fixture(scope="module")
def conv_rows():
    torch.manual_seed(1)
    x = torch.randn(64, 1, 4, 4)
    q = qfx.quantize_model(_ConvRows(), qfx.QFXConfig(act_width=6, weight_width=6), calib_data=x)
    g, ei, te = exact_check(q, x)
    assert ei == 0 and te == 0 and g.tensor(g.outputs[0]).shape == (2, 4, 4)
    return q, x, g


# ------------------------------------------------------------------------------------------------ C-sim and RTL
@pytest.mark.gxx
def test_csim_bit_exact_parallel_and_stream(tmp_path, conv_rows):
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    graphs = _random_graphs(4, seed=2) + [conv_rows[2].replace(name="smr_conv")]
    dirs = []
    for g in graphs:
        for io in ("parallel", "stream"):
            d = tmp_path / f"{g.name}_{io}"
            hls.write_project(g.replace(name=f"{g.name}_{io}"), d, io=io)
            dirs.append(d)
    reps = run_csim_batch(dirs, n_vectors=200, seed=5)
    assert [r.mismatches for r in reps] == [0] * len(dirs) and all(r.passed for r in reps)


@pytest.mark.verilator
def test_rtl_cosim_bit_exact_vector_and_stream(tmp_path, conv_rows):
    """Three row-softmax designs and the conv -> softmax model's pixel-streaming design, one Verilator build."""
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for g in _random_graphs(3, seed=3):
        d = tmp_path / g.name
        rtl.write_project(g, d)
        dirs.append(d)
    d = tmp_path / "conv_stream"
    rtl.write_project(conv_rows[2].replace(name="smr_conv_stream"), d, io="stream")
    dirs.append(d)
    reps = run_cosim_many(dirs, n_vectors=80, seed=7, work_dir=tmp_path / "w")
    assert [(r.mismatches, r.received == r.vectors) for r in reps] == [(0, True)] * len(dirs)
