"""The RTL backend looks ops up in its emitter tables by name and selects them by category: an op it has no emitter
for fails loudly (UnsupportedError naming the op, the node and the backend), whether it is a layer of its own or fused
into a pixel-folded convolution, and every registered op has the emitters its categories promise."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

from qfx import ops
from qfx.backends.rtl import build_project
from qfx.backends.rtl_design import ELEMENTWISE_EMITTERS, LAYER_EMITTERS
from qfx.errors import UnsupportedError
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Constant, Graph, Node, TensorSpec
from qfx.ops import Categories

_NAME = "rtl_test_negate"


@pytest.fixture
def throwaway_op() -> Iterator[str]:
    """A registered element-wise, fusable op no backend knows; removed from the registry afterwards."""
    ops.register(ops.OpDef(
        name=_NAME, doc="-x (test only)", n_inputs=1, golden=lambda g, n, xs, fin, out: -xs[0],
        check=lambda g, n: None, categories=frozenset({Categories.ELEMENTWISE, Categories.FUSABLE})))
    try:
        yield _NAME
    finally:
        ops.REGISTRY.pop(_NAME, None)


def _conv_then(op: str, h: int) -> Graph:
    """x (1, h, h) -> 3x3 conv, 2 channels -> ``op`` -> y."""
    fx, fw = FxFormat(4, 2), FxFormat(4, 1)
    w = Constant(np.arange(18).reshape(2, 1, 3, 3) % 15 - 7, fw)
    ho = h - 2
    t = {"x": TensorSpec("x", (1, h, h), fx), "c": TensorSpec("c", (2, ho, ho), FxFormat(8, 4)),
         "y": TensorSpec("y", (2, ho, ho), FxFormat(8, 4))}
    nodes = (Node("conv", "conv2d", ("x",), "c", {"weight": w}, {"stride": (1, 1), "padding": (0, 0)},
                  FxFormat(20, 15)),
             Node("neg", op, ("c",), "y"))
    return Graph("reg", ("x",), ("y",), t, nodes).validate()


def test_missing_layer_emitter_names_op_node_and_backend(throwaway_op):
    # a 1x1 conv output is not folded, so the op is a layer of its own (design_layer's table)
    with pytest.raises(UnsupportedError, match=rf"RTL backend has no emitter for op '{_NAME}' \(node 'neg'\)"):
        build_project(_conv_then(throwaway_op, 3))


def test_missing_fused_emitter_names_op_node_and_backend(throwaway_op):
    g = _conv_then(throwaway_op, 4)  # 2x2 output pixels: folded, the FUSABLE op is fused into its kernel
    with pytest.raises(UnsupportedError, match=rf"RTL backend has no emitter for op '{_NAME}' \(node 'neg'\)"):
        build_project(g)


def test_known_op_builds_where_the_throwaway_fails():
    # the same graphs with relu instead: the failures above come from the missing emitter, nothing else
    for h in (3, 4):
        assert build_project(_conv_then("relu", h)).files


def test_every_registered_op_has_its_rtl_emitters():
    for name, d in ops.REGISTRY.items():
        assert name in LAYER_EMITTERS, name
        if d.is_(Categories.ELEMENTWISE) or d.is_(Categories.FUSABLE):  # fused into folded convs by this table
            assert name in ELEMENTWISE_EMITTERS, name
    assert ops.with_category(Categories.FUSABLE) <= ops.with_category(Categories.ELEMENTWISE)
    assert len(ops.with_category(Categories.BINARY)) >= 1 and len(ops.with_category(Categories.CONV)) >= 1
