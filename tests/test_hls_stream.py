"""HLS io=stream: pixel streams through line buffers (hls/qfx_window_stream.h), bit-exact against the interpreter.

The windowed layers here cover what the scan must get right: kernels 1/3/5 with strides 1 and 2, zero padding made
at the window (including a 1x1 convolution with padding 1, whose border outputs see no pixel at all), max pooling
with padding (padded positions must never win), average pooling with padding (counted as zero), a K-hot
convolution, a residual add through a fan-out, and dense layers at the tail.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from qfx.backends.hls import write_project
from qfx.backends.hls_ops import stream_form
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import avgpool_format, conv_out_size
from qfx.ir.graph import Constant, Graph, Node, TensorSpec

N_VECTORS = 300


class _Chain:
    """A small graph builder: each call appends one node reading ``x`` (or the given inputs)."""

    def __init__(self, name: str, shape: tuple[int, int, int], fmt: FxFormat, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.tensors = {"x": TensorSpec("x", shape, fmt)}
        self.nodes: list[Node] = []

    def _out(self, name: str, shape: tuple[int, ...], fmt: FxFormat | None = None) -> str:
        self.tensors[name] = TensorSpec(name, shape, fmt or FxFormat(10, 4, True, "RND", "SAT"))
        return name

    def conv(self, x: str, o: int, k: int, stride: int, pad: int, khot: int = 0, bias: bool = True) -> str:
        c, h, w = self.tensors[x].shape
        fw = FxFormat(6, 1)
        if khot:
            codes = self.rng.choice([-16, -4, -1, 0, 1, 2, 8], (o, c, k, k))
        else:
            codes = self.rng.integers(-31, 32, (o, c, k, k))
        consts = {"weight": Constant(codes, fw)}
        fb = FxFormat(10, 4)
        b = self.rng.integers(-300, 300, (o,)) if bias else None
        if bias:
            consts["bias"] = Constant(b, fb)
        acc = lossless_acc_format(codes.reshape(o, -1), fw, self.tensors[x].fmt, b, fb if bias else None)
        name = f"conv{len(self.nodes)}"
        shape = (o, conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad))
        self.nodes.append(Node(name, "conv2d", (x,), self._out(name, shape), consts,
                               {"stride": (stride, stride), "padding": (pad, pad), "khot": khot}, acc))
        return name

    def pool(self, x: str, op: str, k: int, stride: int, pad: int) -> str:
        c, h, w = self.tensors[x].shape
        name = f"{op}{len(self.nodes)}"
        shape = (c, conv_out_size(h, k, stride, pad), conv_out_size(w, k, stride, pad))
        attrs = {"kernel": (k, k), "stride": (stride, stride), "padding": (pad, pad)}
        fx = self.tensors[x].fmt
        if op == "maxpool2d":
            self.nodes.append(Node(name, op, (x,), self._out(name, shape, fx), {}, attrs))
        else:
            fr = FxFormat(8, 0, signed=False)
            recip = Constant(np.array([int(fr.to_int(1.0 / (k * k)))]), fr)
            self.nodes.append(Node(name, op, (x,), self._out(name, shape), {"recip": recip}, attrs,
                                   avgpool_format(fx, fr, k * k)))
        return name

    def unary(self, x: str, op: str) -> str:
        name = f"{op}{len(self.nodes)}"
        self.nodes.append(Node(name, op, (x,), self._out(name, self.tensors[x].shape)))
        return name

    def transpose(self, x: str) -> str:
        name = f"transpose{len(self.nodes)}"
        c, h, w = self.tensors[x].shape
        self.nodes.append(Node(name, "transpose", (x,), self._out(name, (c, w, h), self.tensors[x].fmt), {},
                               {"perm": (0, 2, 1)}))
        return name

    def add(self, a: str, b: str) -> str:
        name = f"add{len(self.nodes)}"
        self.nodes.append(Node(name, "add", (a, b), self._out(name, self.tensors[a].shape)))
        return name

    def head(self, x: str, n: int) -> str:
        flat = f"flat{len(self.nodes)}"
        self.nodes.append(Node(flat, "flatten", (x,), self._out(flat, (self.tensors[x].size,),
                                                                   self.tensors[x].fmt)))
        fw = FxFormat(6, 1)
        codes = self.rng.integers(-31, 32, (n, self.tensors[x].size))
        acc = lossless_acc_format(codes, fw, self.tensors[x].fmt)
        name = f"dense{len(self.nodes)}"
        self.nodes.append(Node(name, "dense", (flat,), self._out(name, (n,)), {"weight": Constant(codes, fw)},
                               {"khot": 0}, acc))
        return name

    def graph(self, *outputs: str) -> Graph:
        return Graph(self.name, ("x",), tuple(outputs), self.tensors, tuple(self.nodes)).validate()


def stream_graphs() -> list[Graph]:
    """The windowed-layer cases of this module (also a quick way to look at the generated code)."""
    fx = FxFormat(8, 3, True, "TRN", "WRAP")
    a = _Chain("k5_pads", (2, 9, 9), fx, 1)
    y = a.conv("x", 3, 5, 1, 2)                        # K = 5, padding 2: three padded rows and columns per edge
    y = a.pool(y, "maxpool2d", 3, 2, 1)                # padded max pooling, stride 2
    y = a.conv(y, 4, 3, 2, 1, khot=1, bias=False)      # K-hot, stride 2, padding 1
    out = a.head(y, 5)
    b = _Chain("pad_over_k", (3, 6, 7), fx, 2)
    z = b.conv("x", 2, 1, 1, 1)                        # 1x1 with padding 1: border outputs are the bias alone
    z = b.pool(z, "avgpool2d", 3, 1, 1)                # padded average pooling (padding counts as zero)
    z2 = b.conv(z, 2, 3, 2, 0)                         # stride 2, no padding, rows and columns skipped
    c = _Chain("residual", (1, 8, 8), fx, 3)
    h = c.unary(c.conv("x", 4, 3, 1, 1), "relu")
    r = c.add(c.conv(h, 4, 3, 1, 1), h)                # fan-out of h: one branch through a window, one direct
    r = c.pool(c.unary(r, "relu"), "maxpool2d", 2, 2, 0)
    d = _Chain("transposed_skip", (2, 5, 5), fx, 4)
    u = d.unary(d.conv("x", 3, 3, 1, 1), "relu")
    v = d.add(d.transpose(u), d.conv(u, 3, 1, 1, 0))  # a whole-tensor layer on one path to the join
    return [a.graph(out), b.graph(z2, z), c.graph(c.head(r, 10)), d.graph(v)]


def test_forms_and_structure(tmp_path):
    """Convolutions and pools become sliding windows over line buffers (K-1 rows, no frame array), element-wise
    ops run per pixel, streams are shallow along a chain and a frame deep where a fan-out splits."""
    g = stream_graphs()[2]
    forms = {n.op.value: stream_form(g, n) for n in g.nodes}
    assert forms == {"conv2d": "window", "relu": "pixel", "add": "pixel", "maxpool2d": "window",
                     "flatten": "tensor", "dense": "tensor"}
    write_project(g, tmp_path, io="stream", top_name="res")
    top = (tmp_path / "firmware" / "res.cpp").read_text()
    params = (tmp_path / "firmware" / "parameters.h").read_text()
    assert (tmp_path / "firmware" / "qfx_window_stream.h").is_file()
    conv_fn = top[top.index("static void conv0_stream"):top.index("static void relu1_stream")]
    # K-1 = 2 line buffers of the 9 scan columns (8 pixels + 1 padding column), no frame buffer
    assert "static x_t lb[2][9][1];" in conv_fn and "in0.read()" in conv_fn and "[64]" not in conv_fn
    assert "window_shift" in conv_fn and "HLS ARRAY_PARTITION variable=m complete dim=0" in conv_fn
    assert "PIPELINE II=1" in conv_fn
    lb = params[params.index("struct conv0_lb_config"):]
    assert "k_h = 3;" in lb and "h_lo = 0;" in lb and "h_hi = 8;" in lb and "w_hi = 8;" in lb
    depths = dict(re.findall(r"STREAM variable=(\w+) depth=(\d+)", top))
    # the branch through conv2 (3x3, padding 1, W = 8) lags (3-1-1)*8 + (3-1-1) = 9 pixels; 3 layers up to the
    # end of the frame-sized region (conv2, add3, relu4): 9 + 2*3 + 2 = 17 instead of a 64-pixel frame
    assert depths["conv0"] == "2" and depths["relu1_fan0"] == "17" and depths["relu1_fan1"] == "17", depths
    assert "hls::stream<qfx::pixel<relu1_t, 4> >" in top
    readme = (tmp_path / "README.md").read_text()
    assert "| `relu1_fan0` | relu1 | `qfx::pixel<relu1_t, 4>` | 17 | fan-out (latency difference 9 + 8) |" in readme
    d = stream_graphs()[3]  # the skip path holds a whole-tensor transpose: the fan-out FIFOs get the 25-pixel frame
    write_project(d, tmp_path / "d", io="stream", top_name="tskip")
    top = (tmp_path / "d" / "firmware" / "tskip.cpp").read_text()
    depths = dict(re.findall(r"STREAM variable=(\w+) depth=(\d+)", top))
    assert depths["relu1_fan0"] == "25" and depths["relu1_fan1"] == "25" and depths["conv0"] == "2", depths


def test_parallel_unchanged_by_stream_names(tmp_path):
    """io=parallel projects never see the io=stream identifiers or headers."""
    g = stream_graphs()[0]
    write_project(g, tmp_path, io="parallel", top_name="par")
    files = " ".join(p.read_text() for p in (tmp_path / "firmware").iterdir())
    assert "qfx::pixel" not in files and "_lb_config" not in files and "_window_config" not in files
    assert not (tmp_path / "firmware" / "qfx_window_stream.h").exists()


def _mutants(tmp_path) -> list:
    """Two wrong designs of the first case: max pooling that lets zero padding win (edge = 0; its border windows
    hold negative values), and a convolution scan whose padding is off by one column."""
    g = stream_graphs()[0]
    d0, d1 = tmp_path / "mut_edge", tmp_path / "mut_scan"
    for d, top in ((d0, "m0"), (d1, "m1")):
        write_project(g, d, io="stream", top_name=top)
    p0 = d0 / "firmware" / "parameters.h"
    s = p0.read_text()
    assert s.count("static const unsigned edge = 1;") == 1
    p0.write_text(s.replace("static const unsigned edge = 1;", "static const unsigned edge = 0;"))
    p1 = d1 / "firmware" / "parameters.h"
    s = p1.read_text()
    i = s.index("struct conv0_lb_config")
    j = s.index("static const unsigned pad_w = 2;", i)
    p1.write_text(s[:j] + "static const unsigned pad_w = 1;" + s[j + len("static const unsigned pad_w = 2;"):])
    return [d0, d1]


@pytest.mark.gxx
def test_stream_windows_bit_exact(tmp_path):
    """Every case through g++ C simulation against the golden interpreter (-Werror; reuse factor 1, and 2 for one
    case); in the same binary, the two mutants must mismatch (a wrong padding rule or scan is caught)."""
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for k, g in enumerate(stream_graphs()):
        for r in (1, 2) if k == 0 else (1,):
            d = tmp_path / f"p{k}_{r}"
            write_project(g, d, io="stream", top_name=f"s{k}_{r}", reuse_factor=r)
            dirs.append(d)
    reports = run_csim_batch(dirs + _mutants(tmp_path), N_VECTORS, seed=3, flags=("-Werror",))
    good, bad = reports[:len(dirs)], reports[len(dirs):]
    assert [r.mismatches for r in good] == [0] * len(dirs), [r.first_mismatch for r in good]
    assert all(r.vectors == N_VECTORS and r.outputs_compared > 0 for r in good)
    assert all(r.mismatches > 0 for r in bad), [r.mismatches for r in bad]


@pytest.mark.gxx
@pytest.mark.slow
def test_stream_random_cnns_bit_exact(tmp_path):
    """24 informative random CNNs (convolutions with strides 1/2 and padding, pools, residual adds, K-hot, up to 6
    layers) in io=stream, one binary, against the interpreter."""
    from qfx.ir.random_graph import random_graph
    from qfx.sim.csim import run_csim_batch

    graphs = [random_graph(s, "cnn", khot_prob=0.4, max_layers=6, informative=True) for s in range(300, 324)]
    assert sum(stream_form(g, n) == "window" for g in graphs for n in g.nodes) >= 24
    dirs = []
    for k, g in enumerate(graphs):
        write_project(g, tmp_path / f"r{k}", io="stream", top_name=f"r{k}")
        dirs.append(tmp_path / f"r{k}")
    reports = run_csim_batch(dirs, 500, seed=2, flags=("-Werror",))
    assert [r.mismatches for r in reports] == [0] * len(graphs), [r.first_mismatch for r in reports if r.mismatches]
