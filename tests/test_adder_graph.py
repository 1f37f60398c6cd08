"""Adder-graph generator: exact ``W @ x``, safe and tight bounds, sharing that pays, structure invariants."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qfx.backends import adder_graph
from qfx.backends.adder_graph import CSE_BLOCK, AdderGraph, OutputRef, build_adder_graph, signed_width
from qfx.errors import BadInputError
from qfx.fixed.csd import csd_weight, khot_project


@st.composite
def matrices(draw, max_dim: int = 16):
    m = draw(st.integers(1, max_dim))
    n = draw(st.integers(1, max_dim))
    bits = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["dense", "sparse", "khot1", "khot2", "zero_rows"]))
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 1:
        lo, hi = -1, 0
    w = rng.integers(lo, hi, size=(m, n), endpoint=True, dtype=np.int64)
    if kind == "sparse":
        w[rng.random((m, n)) < 0.8] = 0
    elif kind.startswith("khot"):
        w = khot_project(w, int(kind[-1]), lo, hi)
    elif kind == "zero_rows":
        w[rng.random(m) < 0.5, :] = 0
    return w


def _input_box(rng: np.random.Generator, n: int, bits: int, signed: bool) -> list[tuple[int, int]]:
    return [(-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1) for _ in range(n)]


def _extreme_inputs(box: list[tuple[int, int]], rng: np.random.Generator, n_random: int = 64) -> np.ndarray:
    """All-low, all-high, alternating and random corners of the box, plus random interior points."""
    lo = np.array([b[0] for b in box], dtype=np.int64)
    hi = np.array([b[1] for b in box], dtype=np.int64)
    n = len(box)
    alt = np.arange(n) % 2 == 0
    corners = [lo, hi, np.where(alt, lo, hi), np.where(alt, hi, lo)]
    pick = rng.random((n_random, n)) < 0.5
    corners += list(np.where(pick, lo, hi))
    inner = rng.integers(lo, hi, size=(n_random, n), endpoint=True)
    return np.vstack([np.array(corners), inner])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=matrices(), share=st.booleans(), xbits=st.integers(1, 16), signed=st.booleans(), seed=st.integers(0, 999))
def test_evaluate_is_exact_and_bounds_are_safe(w, share, xbits, signed, seed):
    rng = np.random.default_rng(seed)
    box = _input_box(rng, w.shape[1], xbits, signed)
    _check_graph(build_adder_graph(w, input_bounds=box, share=share), w, _extreme_inputs(box, rng))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=matrices(max_dim=40), block=st.sampled_from([2, 3, 4, 8]), xbits=st.integers(1, 12),
       signed=st.booleans(), seed=st.integers(0, 999))
def test_bounded_cse_is_exact_and_bounds_are_safe(w, block, xbits, signed, seed):
    """Small blocks force many blocks, merge rounds and the merge cap on small matrices."""
    rng = np.random.default_rng(seed)
    box = _input_box(rng, w.shape[1], xbits, signed)
    _check_graph(build_adder_graph(w, input_bounds=box, cse_block=block), w, _extreme_inputs(box, rng))


def _check_graph(g: AdderGraph, w: np.ndarray, x: np.ndarray) -> None:
    """``g`` computes ``w @ x`` exactly, its values lie in its bounds, and its structure keeps the invariants."""
    m, n = w.shape
    want = x.astype(object) @ w.T.astype(object)
    got = g.evaluate(x)
    assert got.shape == (x.shape[0], m)
    assert np.array_equal(got.astype(object), want)
    # every node value lies in its bounds; outputs in output_bounds; widths hold the bounds
    vals = g.values(x)
    bounds = g.bounds()
    for i, (lo, hi) in enumerate(bounds):
        assert lo <= int(vals[:, i].min()) and int(vals[:, i].max()) <= hi
        assert signed_width(lo, hi) == g.width(i)
    for j, (lo, hi) in enumerate(g.output_bounds()):
        assert lo <= int(got[:, j].min()) and int(got[:, j].max()) <= hi
    # structure: topological ids, non-negative shifts, reconstructs W
    for k, nd in enumerate(g.nodes):
        assert nd.id == n + k and nd.a < nd.id and nd.b < nd.id and nd.a_shift >= 0 and nd.b_shift >= 0
        assert not nd.a_neg and min(nd.a_shift, nd.b_shift) == 0
    assert all(o.shift >= 0 and (o.src is None or o.src < n + len(g.nodes)) for o in g.outputs)
    assert np.array_equal(g.matrix().astype(np.int64), w)
    zero_rows = ~w.any(axis=1)
    assert [o.src is None for o in g.outputs] == zero_rows.tolist()


@settings(max_examples=40, deadline=None)
@given(w=matrices(max_dim=5), xbits=st.integers(1, 9), signed=st.booleans(), share=st.booleans())
def test_bounds_are_tight_over_all_corners(w, xbits, signed, share):
    """A linear form's min/max over a box is reached at a corner: brute force every corner."""
    n = w.shape[1]
    box = _input_box(np.random.default_rng(0), n, xbits, signed)
    g = build_adder_graph(w, input_bounds=box, share=share)
    corners = np.array(list(itertools.product(*box)), dtype=np.int64)
    vals = g.values(corners)
    for i, (lo, hi) in enumerate(g.bounds()):
        assert (lo, hi) == (int(vals[:, i].min()), int(vals[:, i].max()))


def test_signed_width_table():
    table = {(0, 0): 1, (-1, 0): 1, (0, 1): 2, (-2, 1): 2, (-128, 127): 8, (-129, 0): 9, (0, 128): 9,
             (0, 255): 9, (-(1 << 40), (1 << 40) - 1): 41}
    for (lo, hi), bits in table.items():
        assert signed_width(lo, hi) == bits, (lo, hi)


def test_sharing_reduces_adders_on_dense_16x16_8bit(capsys):
    rng = np.random.default_rng(1234)
    w = rng.integers(-128, 127, size=(16, 16), endpoint=True)
    plain = build_adder_graph(w, share=False)
    shared = build_adder_graph(w, share=True)
    naive = int(sum(max(int(c) - 1, 0) for c in csd_weight(w).sum(axis=1)))
    assert plain.adder_count <= naive
    assert shared.adder_count < plain.adder_count
    # at least 15 % fewer adders is what Hartley-style CSE typically buys on dense random 8-bit matrices
    assert shared.adder_count <= 0.85 * plain.adder_count
    with capsys.disabled():
        print(f"\n16x16 8-bit: {plain.adder_count} adders (CSD, no sharing) -> {shared.adder_count} shared "
              f"({100 * (1 - shared.adder_count / plain.adder_count):.1f} % fewer); depth {plain.depth} -> "
              f"{shared.depth}")


def test_balanced_tree_depth_is_logarithmic():
    # one row of 13 distinct single-digit terms: 12 adders, depth ceil(log2(13)) = 4
    w = np.array([[1, 2, -4, 8, 16, -1, 1, 2, 4, -8, 16, 32, 64]], dtype=np.int64)
    g = build_adder_graph(w, share=False)
    assert g.adder_count == 12 and g.depth == math.ceil(math.log2(13))


def test_zero_matrix_and_single_terms():
    g = build_adder_graph(np.zeros((3, 4), dtype=np.int64), input_bounds=[(-8, 7)] * 4)
    assert g.adder_count == 0 and g.outputs == (OutputRef(None, 0, False),) * 3
    assert np.array_equal(g.evaluate(np.ones((2, 4), dtype=np.int64)), np.zeros((2, 3), dtype=np.int64))
    g = build_adder_graph(np.array([[0, -8], [4, 0]]))
    assert g.adder_count == 0
    assert g.outputs == (OutputRef(1, 3, True), OutputRef(0, 2, False))


def test_large_values_fall_back_to_python_ints():
    w = np.array([[(1 << 40) + 1, -(1 << 41)], [3, 0]], dtype=np.int64)
    x = np.array([[(1 << 30), -(1 << 30)], [-(1 << 30), (1 << 30) - 1]], dtype=np.int64)
    g = build_adder_graph(w)
    got = g.evaluate(x)
    assert got.dtype == object
    assert np.array_equal(got, x.astype(object) @ w.T.astype(object))
    small = g.evaluate(np.array([[1, 2]], dtype=np.int64))
    assert small.dtype == np.int64 and small.tolist() == [[(1 << 40) + 1 - (1 << 42), 3]]


def test_dict_round_trip():
    w = np.random.default_rng(5).integers(-30, 30, size=(5, 6))
    g = build_adder_graph(w, input_bounds=[(0, 15)] * 6)
    assert AdderGraph.from_dict(g.to_dict()) == g


def test_bad_inputs():
    with pytest.raises(BadInputError):
        build_adder_graph(np.ones(4, dtype=np.int64))
    with pytest.raises(BadInputError):
        build_adder_graph(np.ones((2, 2)) * 0.5)
    with pytest.raises(BadInputError):
        build_adder_graph(np.ones((2, 2), dtype=np.int64), input_bounds=[(0, 1)])
    g = build_adder_graph(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(BadInputError):
        g.bounds()  # no box given anywhere
    with pytest.raises(BadInputError):
        g.evaluate(np.ones((3, 5), dtype=np.int64))


def test_64x64_8bit_layer_is_exact_and_shares():
    # build time is a benchmark figure (benchmarks/bench_resources.py), not asserted here
    w = np.random.default_rng(7).integers(-128, 127, size=(64, 64), endpoint=True)
    g = build_adder_graph(w)
    x = np.random.default_rng(8).integers(-128, 127, size=(32, 64), endpoint=True)
    assert np.array_equal(g.evaluate(x), x @ w.T)
    assert g.adder_count < build_adder_graph(w, share=False).adder_count


def _random_4bit(m: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8, 7, size=(m, n), endpoint=True)


def test_narrow_matrices_get_the_unbounded_search():
    w = _random_4bit(24, CSE_BLOCK, 3)
    assert build_adder_graph(w).to_dict() == build_adder_graph(w, cse_block=None).to_dict()
    assert build_adder_graph(w, cse_block=16).to_dict() != build_adder_graph(w, cse_block=None).to_dict()


def test_bounded_cse_work_grows_linearly_with_the_row(monkeypatch):
    """Term pairs the CSE searches (its time and memory): 4x the columns gives about 4x the pairs, not 16x."""
    pairs = [0]
    init = adder_graph._Cse.__init__

    def counting_init(self, b, rows):
        pairs[0] += sum(len(r) * (len(r) - 1) // 2 for r in rows)
        init(self, b, rows)

    monkeypatch.setattr(adder_graph._Cse, "__init__", counting_init)
    got = []
    for n in (256, 1024):
        w = _random_4bit(16, n, 5)
        pairs[0] = 0
        g = build_adder_graph(w, cse_block=16)
        x = np.random.default_rng(6).integers(-128, 127, size=(8, n), endpoint=True)
        assert np.array_equal(g.evaluate(x), x @ w.T)
        got.append(pairs[0])
    assert got[1] < 4.6 * got[0], got
    assert got[0] < 0.5 * 16 * (256 * 1.2) ** 2 / 2  # far below one search over the whole rows


def test_bounded_cse_keeps_most_of_the_sharing():
    w = _random_4bit(24, 160, 11)
    bounded = build_adder_graph(w, cse_block=32).adder_count
    full = build_adder_graph(w, cse_block=None).adder_count
    plain = build_adder_graph(w, share=False).adder_count
    assert bounded <= 1.10 * full and bounded < 0.7 * plain, (full, bounded, plain)


@pytest.mark.parametrize("block", [0, 1, 2.5, True, "64"])
def test_bad_cse_block(block):
    with pytest.raises(BadInputError, match="cse_block"):
        build_adder_graph(np.ones((2, 2), dtype=np.int64), cse_block=block)


@pytest.mark.parametrize("bits,block", [(8, CSE_BLOCK), (4, 16)])
def test_vectorized_pair_counting_builds_the_same_graph(monkeypatch, bits, block):
    """Long rows count their term pairs with numpy: the graph must be node-for-node the one the per-term Python
    loop builds (same picks, same tie-breaks), including rows that grow, merge and compact their slot arrays."""
    rng = np.random.default_rng(21)
    w = rng.integers(-(1 << (bits - 1)) + 1, 1 << (bits - 1), size=(12, 3 * block), endpoint=False)
    w[:, ::5] = 0  # some zero weights: rows of different lengths
    fast = build_adder_graph(w, cse_block=block)
    monkeypatch.setattr(adder_graph, "_VEC_MIN", 1 << 30)  # every row through the Python loop
    slow = build_adder_graph(w, cse_block=block)
    assert fast.to_dict() == slow.to_dict()
    x = rng.integers(-128, 128, size=(4, w.shape[1]))
    assert np.array_equal(fast.evaluate(x), x @ w.T)
