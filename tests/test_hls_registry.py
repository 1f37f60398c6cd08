"""HLS backend on the op registry: per-op emitter table, per-op call macros that fail loudly, per-project headers,
and the shared template environment / AXI4-Stream layout helpers."""
from __future__ import annotations

import re

import jinja2
import numpy as np
import pytest

from qfx.backends import axis, hls, rtl
from qfx.backends.hls import BASE_HEADERS, HLS_EMITTERS, write_project
from qfx.backends.templating import template_env
from qfx.errors import UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, TensorSpec
from qfx.ir.random_graph import random_graph
from qfx.ops import REGISTRY, OpDef, register
from qfx.ops.base import same_shape
from qfx.resources import data_dir

FX = FxFormat(8, 3)
FW = FxFormat(6, 1)


@pytest.fixture
def throwaway_op():
    """An op registered for this test only (no HLS emitter), removed from the registry afterwards."""
    name = "zz_hls_throwaway"
    register(OpDef(name=name, doc="test only: identity", n_inputs=1, golden=lambda g, n, xs, fin, out: xs[0],
                   check=same_shape))
    try:
        yield name
    finally:
        REGISTRY.pop(name, None)


def _dense(name: str = "d", khot: int = 0, bias: bool = True) -> Graph:
    r = np.random.default_rng(0)
    w = r.integers(-3, 4, (3, 5)) if khot else r.integers(FW.min_code, FW.max_code, (3, 5), endpoint=True)
    b = r.integers(-8, 8, (3,))
    consts = {"weight": Constant(w, FW)} | ({"bias": Constant(b, FW)} if bias else {})
    acc = lossless_acc_format(w, FW, FX, b if bias else None, FW if bias else None)
    t = {"x": TensorSpec("x", (5,), FX), "y": TensorSpec("y", (3,), acc)}
    return Graph(name, ("x",), ("y",), t, (Node("fc", "dense", ("x",), "y", consts, {"khot": khot}, acc),)).validate()


def _firmware_headers(d) -> set[str]:
    return {p.name for p in (d / "firmware").glob("qfx_*.h")}


def test_op_without_emitter_fails_naming_op_node_backend(tmp_path, throwaway_op):
    t = {"x": TensorSpec("x", (4,), FX), "y": TensorSpec("y", (4,), FX)}
    g = Graph("g", ("x",), ("y",), t, (Node("my_node", throwaway_op, ("x",), "y"),)).validate()
    with pytest.raises(UnsupportedError) as e:
        write_project(g, tmp_path)
    msg = str(e.value)
    assert throwaway_op in msg and "my_node" in msg and "HLS" in msg and "\n" not in msg
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_builtin_op_has_an_emitter_and_a_call_macro():
    calls = template_env("hls").get_template("macros.j2").module.CALLS
    builtin = {"dense", "conv2d", "scale_shift", "relu", "clip", "quant", "add", "maxpool2d", "avgpool2d",
               "flatten", "reshape"}
    assert builtin <= set(REGISTRY)
    assert builtin <= set(HLS_EMITTERS)
    assert {"dense", "conv2d", "khot_dense", "khot_conv2d", "cast"} <= set(calls)


def test_missing_call_macro_fails_before_writing(tmp_path, monkeypatch):
    real = HLS_EMITTERS["dense"]
    monkeypatch.setitem(HLS_EMITTERS, "dense", lambda ctx, n, L: real(ctx, n, L) | {"call": "no_such_kernel"})
    with pytest.raises(UnsupportedError, match=r"no call macro for 'no_such_kernel'.*'dense'"):
        write_project(_dense(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_call_macro_lookup_is_strict():
    """The template itself refuses an unknown call name (no silent qfx::cast fallback)."""
    env = template_env("hls")
    tpl = env.from_string('{% import "macros.j2" as m %}{{ m.call(L, ["a"], "b") }}')
    L = {"call": "relu", "in_types": ["in_t"], "out_type": "out_t", "out_size": 4}
    assert tpl.render(L=L).strip() == "qfx::relu<in_t, out_t, 4>(a, b);"
    with pytest.raises(jinja2.UndefinedError):
        tpl.render(L=L | {"call": "softmax"})


@pytest.mark.parametrize("io", ["parallel", "stream"])
def test_dense_only_project_copies_only_its_headers(tmp_path, io):
    write_project(_dense(), tmp_path, io=io)
    want = set(BASE_HEADERS) | {"qfx_dense.h"} | ({"qfx_stream.h"} if io == "stream" else set())
    assert _firmware_headers(tmp_path) == want
    src = (tmp_path / "firmware" / "d.cpp").read_text()
    assert re.findall(r'#include "(qfx_\w+\.h)"', src) == sorted(want - set(BASE_HEADERS))


def test_khot_dense_needs_no_dense_or_conv_header(tmp_path):
    write_project(_dense(khot=2, bias=False), tmp_path)
    assert _firmware_headers(tmp_path) == set(BASE_HEADERS) | {"qfx_khot.h"}


# K-hot conv without a plain conv (19 cnn), K-hot dense only (1 any, 18 cnn), mixed models
@pytest.mark.parametrize("seed,kind,io", [(19, "cnn", "parallel"), (1, "any", "stream"), (18, "cnn", "parallel"),
                                          (5, "cnn", "stream"), (0, "cnn", "parallel"), (3, "any", "parallel")])
def test_headers_are_closed_under_include(tmp_path, seed, kind, io):
    """Every qfx_*.h that a generated file or a copied header includes was copied, and every copied one is used."""
    g = random_graph(seed, kind, khot_prob=0.5)
    write_project(g, tmp_path, io=io)
    fw = tmp_path / "firmware"
    copied = _firmware_headers(tmp_path)
    included = set()
    for p in list(fw.glob("*")) + list((tmp_path / "tb").glob("*.cpp")):
        included |= set(re.findall(r'#include "(qfx_\w+\.h)"', p.read_text()))
    assert included == copied
    for h in copied:
        assert (data_dir("hls") / h).is_file()


def test_one_template_env_factory_and_axis_helpers():
    for env in (template_env("hls"), rtl.template_env()):
        assert env.undefined is jinja2.StrictUndefined and env.keep_trailing_newline and not env.autoescape
    with pytest.raises(ValueError):
        template_env("no_such_folder")
    assert rtl.pad8 is axis.pad8 and hls.AxisLayout is axis.AxisLayout
    assert [axis.pad8(b) for b in (1, 8, 9, 4096)] == [8, 8, 16, 4096]
