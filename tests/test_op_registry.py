"""Every registered op through every executor: a new op is covered by registering it.

Each op's ``OpDef.sample`` draws one-node graphs with random shapes, formats, modes and attributes. The golden
interpreter (the op's golden function) is compared bit for bit with onnxruntime on the exported ONNX, with g++ C
simulation of the HLS project (all ops in one batch binary) and with Verilator co-simulation of the RTL (all ops in
one simulator build). A registered op without a sample, golden function or emitter in any backend fails here.
"""
from __future__ import annotations

import numpy as np
import pytest

from qfx.errors import UnsupportedError
from qfx.ir.graph import Graph, Node, TensorSpec
from qfx.ir.interpret import run
from qfx.ops import REGISTRY, AttrSpec, Categories, OpDef, get, register
from qfx.sim.csim import make_inputs

OPS = sorted(REGISTRY)
SEEDS_FAST = (0, 1, 2, 3, 4, 5)


def _samples(op: str, seeds=SEEDS_FAST) -> list[Graph]:
    d = REGISTRY[op]
    return [d.sample(np.random.default_rng(1000 * OPS.index(op) + s)) for s in seeds]


def _x(g: Graph, n: int = 64, seed: int = 0):
    x = make_inputs(g, n, seed)
    return x[g.inputs[0]] if len(g.inputs) == 1 else x


@pytest.mark.parametrize("op", OPS)
def test_op_definition_is_complete(op: str) -> None:
    d = REGISTRY[op]
    assert d.name == op and d.doc and callable(d.golden) and callable(d.check)
    assert d.sample is not None, f"op {op!r} has no sample generator"
    assert d.generators, f"op {op!r} names no random-graph generator"
    assert d.hls_header, f"op {op!r} names no HLS support header"
    if d.needs_acc:
        assert d.required_acc is not None
    for a in d.attrs:
        assert a.kind in ("int", "pair", "ints", "str")


@pytest.mark.parametrize("op", OPS)
def test_op_samples_are_valid_and_vary(op: str) -> None:
    outs = set()
    for g in _samples(op, range(20)):
        g.validate()
        from qfx.ir.passes import run_flow

        run_flow(g, ("check_formats",))
        y = run(g, _x(g, 32))
        outs.update(np.unique(y).tolist())
    assert len(outs) > 1, f"op {op!r}: every sample output is constant"


@pytest.mark.parametrize("op", OPS)
def test_op_interpreter_matches_onnxruntime(op: str) -> None:
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    for g in _samples(op):
        if len(g.inputs) != 1:
            continue  # multi-input graphs: covered by test_onnx_roundtrip's dict inputs
        x = _x(g)
        got = run_onnx_codes(to_onnx_model(g).SerializeToString(), g, x)
        np.testing.assert_array_equal(got, run(g, x), err_msg=f"{op}: onnxruntime differs from the interpreter")


@pytest.mark.gxx
def test_every_op_csim_bit_exact(tmp_path) -> None:
    from qfx.backends import hls
    from qfx.sim.csim import run_csim_batch

    dirs = []
    for op in OPS:
        for k, g in enumerate(_samples(op, SEEDS_FAST[:2])):
            d = tmp_path / f"{op}_{k}"
            d.mkdir()
            hls.write_project(g.replace(name=f"s_{op}_{k}"), d)
            dirs.append(d)
    reps = run_csim_batch(dirs, n_vectors=200, seed=3)
    bad = [(d.name, r.summary()) for d, r in zip(dirs, reps) if not r.passed]
    assert not bad, bad


@pytest.mark.verilator
def test_every_op_rtl_cosim_bit_exact(tmp_path) -> None:
    from qfx.backends import rtl
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for op in OPS:
        for k, g in enumerate(_samples(op, SEEDS_FAST[:2])):
            d = tmp_path / f"{op}_{k}"
            rtl.write_project(g.replace(name=f"s_{op}_{k}"), d)
            dirs.append(d)
    reps = run_cosim_many(dirs, n_vectors=120, seed=5)
    bad = [(d.name, r.mismatches, r.received, r.vectors) for d, r in zip(dirs, reps) if not r.ok]
    assert not bad, bad


# ------------------------------------------------------------------------------------------------ registry rules
def _throwaway() -> OpDef:
    def golden(g, n, xs, fin, out):
        return xs[0]

    return OpDef(name="qfx_test_identity", doc="test-only op", n_inputs=1, golden=golden,
                 check=lambda g, n: None, attrs=(AttrSpec("k", "int", 0),), categories=frozenset({Categories.WIRING}))


def test_unknown_op_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedError, match="unknown op 'nope'"):
        Node("n", "nope", ("x",), "y")
    with pytest.raises(UnsupportedError, match="unknown op"):
        get("nope")


def test_schema_rejects_unknown_and_mistyped_attributes() -> None:
    from qfx.errors import BadInputError
    from qfx.fixed.format import FxFormat

    f = FxFormat(8, 4)
    t = {"x": TensorSpec("x", (4,), f), "y": TensorSpec("y", (4,), f)}
    with pytest.raises(BadInputError, match="unknown attribute"):
        Graph("g", ("x",), ("y",), t, (Node("r", "relu", ("x",), "y", attrs={"slope": 1}),)).validate()
    t2 = {"x": TensorSpec("x", (1, 4, 4), f), "y": TensorSpec("y", (1, 2, 2), f)}
    with pytest.raises(BadInputError, match="two integers"):
        Graph("g", ("x",), ("y",), t2, (Node("p", "maxpool2d", ("x",), "y", attrs={"kernel": 2}),)).validate()


def test_op_registered_later_works_in_graphs_and_interpreter() -> None:
    from qfx.fixed.format import FxFormat

    register(_throwaway())
    try:
        f = FxFormat(8, 4)
        t = {"x": TensorSpec("x", (3,), f), "y": TensorSpec("y", (3,), f)}
        g = Graph("g", ("x",), ("y",), t, (Node("i", "qfx_test_identity", ("x",), "y"),)).validate()
        x = np.array([[1, -2, 3]])
        np.testing.assert_array_equal(run(g, x), x)
        with pytest.raises(UnsupportedError, match=r"qfx_test_identity.*'i'"):
            from qfx.onnx.export import to_onnx_model

            to_onnx_model(g)
    finally:
        REGISTRY.pop("qfx_test_identity", None)
