"""qfx.FixedQuant (ONNX local function) vs the integer kernel: every rounding/overflow mode, bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qfx.fixed import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.fixed import kernels as K
from qfx.onnx.fixedquant import DOMAIN, IR_VERSION_ONNX, OPSET, fixedquant_function, fixedquant_node
from qfx.onnx.runtime import ort_session, values_to_codes


def _model(fmts: list[FxFormat]) -> bytes:
    nodes = [fixedquant_node(f"x{i}", f"y{i}", f, f"q{i}") for i, f in enumerate(fmts)]
    g = helper.make_graph(nodes, "fq",
                          [helper.make_tensor_value_info(f"x{i}", TensorProto.DOUBLE, [f"n{i}"]) for i in range(len(fmts))],
                          [helper.make_tensor_value_info(f"y{i}", TensorProto.DOUBLE, [f"n{i}"]) for i in range(len(fmts))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=[fixedquant_function()], ir_version=IR_VERSION_ONNX)
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def _check(pairs: list[tuple[FxFormat, FxFormat]], codes: list[np.ndarray]) -> None:
    sess = ort_session(_model([d for _, d in pairs]))
    feeds = {f"x{i}": s.from_int(c) for i, ((s, _), c) in enumerate(zip(pairs, codes))}
    outs = sess.run(None, feeds)
    for (s, d), c, y in zip(pairs, codes, outs):
        np.testing.assert_array_equal(values_to_codes(y, d), K.cast(c, s, d), err_msg=f"{s} -> {d}")


def test_all_modes_edge_table():
    """Every mode pair on codes around ties, limits and wrap points; sources finer, coarser and equal."""
    pairs, codes = [], []
    sources = (FxFormat(9, 4), FxFormat(9, 6, False), FxFormat(3, 5), FxFormat(4, 2))
    for r in ROUNDING_MODES:
        for o in OVERFLOW_MODES:
            for signed in (True, False):
                dst = FxFormat(4, 2, signed, r, o)
                # one node per destination: the values of all sources, concatenated (values are what it sees)
                vals = np.concatenate([s.from_int(np.arange(s.min_code, s.max_code + 1)) for s in sources])
                src = FxFormat(14, 8)  # holds every value above exactly
                pairs.append((src, dst))
                c = src.to_int(vals)
                assert np.array_equal(src.from_int(c), vals)
                codes.append(c)
    _check(pairs, codes)


def test_sat_sym_edges():
    """SAT_SYM around the most negative code, for 1-bit, narrow and unsigned formats."""
    src = FxFormat(10, 10)
    c = np.array([-128, -129, -200, -127, -2, -1, 0, 1, 127, 300], dtype=np.int64)
    pairs = [(src, FxFormat(w, w, s, overflow="SAT_SYM")) for w in (1, 2, 8) for s in (True, False)]
    _check(pairs, [c] * len(pairs))


@settings(max_examples=10, deadline=None)
@given(st.data())
def test_random_formats_53_bits(data):
    pairs, codes = [], []
    for _ in range(12):
        src = FxFormat(data.draw(st.integers(1, 53)), data.draw(st.integers(-40, 60)), data.draw(st.booleans()))
        dst = FxFormat(data.draw(st.integers(1, 53)), data.draw(st.integers(-40, 60)), data.draw(st.booleans()),
                       data.draw(st.sampled_from(ROUNDING_MODES)), data.draw(st.sampled_from(OVERFLOW_MODES)))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
        c = rng.integers(src.min_code, src.max_code, size=300, endpoint=True, dtype=np.int64)
        c[:3] = [src.min_code, src.max_code, 0]
        pairs.append((src, dst))
        codes.append(c)
    _check(pairs, codes)


def test_extreme_exponents():
    """Large |frac| formats: powers of two are built from exact table entries, not Pow."""
    pairs = [(FxFormat(20, -300), FxFormat(12, -290, rounding="RND_CONV", overflow="SAT")),
             (FxFormat(20, 400), FxFormat(30, 380, rounding="RND", overflow="WRAP")),
             (FxFormat(53, 500), FxFormat(53, 480, True, "TRN_ZERO", "WRAP"))]
    rng = np.random.default_rng(0)
    codes = [rng.integers(s.min_code, s.max_code, size=200, endpoint=True, dtype=np.int64) for s, _ in pairs]
    _check(pairs, codes)
