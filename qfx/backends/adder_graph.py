"""Multiplier-free constant matrix-vector products: an adder graph for ``y = W @ x`` with integer ``W``.

Every weight is split into canonical signed digits (CSD), so each output is a signed sum of shifted inputs. With
``share=True`` the generator then removes common subexpressions across the whole matrix (Hartley-style two-term
CSE for constant matrix multiplication): it repeatedly takes the most frequent pair pattern
``(input a, input b, relative shift, relative sign)`` over all outputs' term lists, builds it once as an adder and
substitutes it everywhere (patterns may themselves contain earlier shared nodes, so vertical ``x + (x << k)`` and
horizontal ``x_i +- (x_j << k)`` sharing both happen). The remaining terms of each output are summed by a balanced
tree that always combines the two shallowest terms first, which keeps the adder depth low.

Why: Yosys (and Vivado) map ``x * const`` onto DSP48 blocks or large LUT multipliers; a shift-add graph uses only
LUT+CARRY4 adders, and sharing across outputs cuts their number well below per-weight CSD.

Node ids ``0..n_inputs-1`` are the inputs; adders follow in topological order. All shifts are >= 0. Bounds are the
exact min/max of each node over a box of input ranges (each node is a linear form of the inputs), so RTL wire widths
sized from them can neither overflow nor waste bits on the box.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from qfx.errors import BadInputError
from qfx.fixed.csd import csd_digits

__all__ = ["AddNode", "OutputRef", "AdderGraph", "build_adder_graph", "signed_width", "CSE_BLOCK", "CSE_WIDE"]

_I64_SAFE = 1 << 62


@dataclass(frozen=True)
class AddNode:
    """``value = (+-v[a] << a_shift) + (+-v[b] << b_shift)``; ``a``/``b`` are ids of inputs or earlier nodes.

    Graphs built here never negate both operands, and never ``a`` alone: a node is ``a + b`` or ``a - b``.
    """

    id: int
    a: int
    a_shift: int
    a_neg: bool
    b: int
    b_shift: int
    b_neg: bool


@dataclass(frozen=True)
class OutputRef:
    """Output ``= +-(v[src] << shift)``; ``src is None`` is a constant-zero output (an all-zero weight row)."""

    src: int | None
    shift: int
    neg: bool


def signed_width(lo: int, hi: int) -> int:
    """Bits of the smallest two's-complement signed type holding every integer in ``[lo, hi]`` (at least 1)."""

    def bits(v: int) -> int:
        return (v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1

    return max(bits(int(lo)), bits(int(hi)))


@dataclass(frozen=True)
class AdderGraph:
    """A shift-add DAG computing ``y = W @ x`` for integer ``x`` of ``n_inputs`` entries.

    ``input_bounds`` (optional, one ``(lo, hi)`` per input) is the default box for ``bounds``/``width``.
    """

    n_inputs: int
    nodes: tuple[AddNode, ...]
    outputs: tuple[OutputRef, ...]
    input_bounds: tuple[tuple[int, int], ...] | None = None

    @property
    def n_outputs(self) -> int:
        return len(self.outputs)

    @property
    def adder_count(self) -> int:
        """Number of two-input adders/subtractors (negated outputs are not counted)."""
        return len(self.nodes)

    def depths(self) -> list[int]:
        """Adder depth of every id (inputs 0)."""
        d = [0] * (self.n_inputs + len(self.nodes))
        for nd in self.nodes:
            d[nd.id] = max(d[nd.a], d[nd.b]) + 1
        return d

    @property
    def depth(self) -> int:
        """Longest input-to-output adder chain."""
        d = self.depths()
        return max((d[o.src] for o in self.outputs if o.src is not None), default=0)

    def coefficients(self) -> list[list[int]]:
        """Each id's value as a linear form of the inputs: ``v[id] == sum(c[i] * x[i])`` (exact Python ints)."""
        return [list(c) for c in self._coefficients]

    @cached_property
    def _coefficients(self) -> tuple[tuple[int, ...], ...]:
        n = self.n_inputs
        co: list[list[int]] = [[1 if j == i else 0 for j in range(n)] for i in range(n)]
        for nd in self.nodes:
            ca, cb = co[nd.a], co[nd.b]
            fa = -(1 << nd.a_shift) if nd.a_neg else (1 << nd.a_shift)
            fb = -(1 << nd.b_shift) if nd.b_neg else (1 << nd.b_shift)
            co.append([fa * p + fb * q for p, q in zip(ca, cb)])
        return tuple(tuple(c) for c in co)

    def matrix(self) -> np.ndarray:
        """The weight matrix the graph computes (object ints, shape (m, n)): reconstructs ``W``."""
        co = self._coefficients
        rows = []
        for o in self.outputs:
            if o.src is None:
                rows.append([0] * self.n_inputs)
            else:
                f = -(1 << o.shift) if o.neg else (1 << o.shift)
                rows.append([f * c for c in co[o.src]])
        return np.array(rows, dtype=object).reshape(len(self.outputs), self.n_inputs)

    def _box(self, input_bounds: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
        box = input_bounds if input_bounds is not None else self.input_bounds
        if box is None:
            raise BadInputError("adder graph bounds need input_bounds (none given at build time)")
        box = [(int(lo), int(hi)) for lo, hi in box]
        if len(box) != self.n_inputs or any(lo > hi for lo, hi in box):
            raise BadInputError(f"input_bounds must be {self.n_inputs} (lo, hi) pairs with lo <= hi")
        return box

    def bounds(self, input_bounds: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """Exact ``(min, max)`` of every id (inputs first, then nodes) over the box of input ranges."""
        return list(self._bounds(tuple(self._box(input_bounds))))

    def _bounds(self, box: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        # graphs are immutable; RTL generators ask width(id) node by node, so keep the last few boxes' results
        cache: dict = self.__dict__.setdefault("_bounds_cache", {})
        got = cache.get(box)
        if got is not None:
            return got
        if len(cache) >= 8:
            cache.clear()
        out = []
        for c in self._coefficients:
            lo = sum(k * (b[0] if k > 0 else b[1]) for k, b in zip(c, box) if k)
            hi = sum(k * (b[1] if k > 0 else b[0]) for k, b in zip(c, box) if k)
            out.append((lo, hi))
        cache[box] = tuple(out)
        return cache[box]

    def output_bounds(self, input_bounds: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """Exact ``(min, max)`` of every output (after its shift and sign)."""
        b = self.bounds(input_bounds)
        res = []
        for o in self.outputs:
            if o.src is None:
                res.append((0, 0))
                continue
            lo, hi = b[o.src][0] << o.shift, b[o.src][1] << o.shift
            res.append((-hi, -lo) if o.neg else (lo, hi))
        return res

    def width(self, id: int, input_bounds: Sequence[tuple[int, int]] | None = None) -> int:
        """Signed bits that hold every value of ``id`` over the input box."""
        lo, hi = self._bounds(tuple(self._box(input_bounds)))[id]
        return signed_width(lo, hi)

    def widths(self, input_bounds: Sequence[tuple[int, int]] | None = None) -> list[int]:
        """``width`` of every id at once."""
        return [signed_width(lo, hi) for lo, hi in self.bounds(input_bounds)]

    def values(self, x: np.ndarray) -> np.ndarray:
        """Value of every id (inputs, then nodes) for a batch ``x`` (batch, n_inputs), exactly.

        int64 when every intermediate provably fits (checked from the batch's own ranges), else Python ints
        (object array).
        """
        xa = np.asarray(x)
        if xa.ndim != 2 or xa.shape[1] != self.n_inputs:
            raise BadInputError(f"adder graph expects inputs of shape (batch, {self.n_inputs}), got {xa.shape}")
        if xa.dtype != object and not np.issubdtype(xa.dtype, np.integer):
            raise BadInputError(f"adder graph expects integer codes, got dtype {xa.dtype}")
        batch, total = xa.shape[0], self.n_inputs + len(self.nodes)
        if batch == 0:
            return np.zeros((0, total), dtype=np.int64)
        box = [(int(min(col)), int(max(col))) for col in xa.T]
        nb = self.bounds(box)
        fits = all(-_I64_SAFE < v < _I64_SAFE for lo_hi in nb for v in lo_hi) and \
            all(-_I64_SAFE < (v << o.shift) < _I64_SAFE for o in self.outputs if o.src is not None
                for v in nb[o.src]) and self._max_shift() < 62
        dt: Any = np.int64 if fits else object
        v = np.zeros((batch, total), dtype=dt)
        v[:, : self.n_inputs] = xa
        for nd in self.nodes:
            a = v[:, nd.a] * (1 << nd.a_shift)
            b = v[:, nd.b] * (1 << nd.b_shift)
            v[:, nd.id] = (-a if nd.a_neg else a) + (-b if nd.b_neg else b)
        return v

    def _max_shift(self) -> int:
        return max([0] + [max(n.a_shift, n.b_shift) for n in self.nodes] + [o.shift for o in self.outputs])

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """``W @ x`` for a batch ``x`` of shape (batch, n_inputs), exactly (int64, or object ints if needed)."""
        v = self.values(x)
        y = np.zeros((v.shape[0], len(self.outputs)), dtype=v.dtype)
        for j, o in enumerate(self.outputs):
            if o.src is not None:
                t = v[:, o.src] * (1 << o.shift)
                y[:, j] = -t if o.neg else t
        return y

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for generated-project metadata)."""
        return {
            "n_inputs": self.n_inputs,
            "nodes": [[n.id, n.a, n.a_shift, int(n.a_neg), n.b, n.b_shift, int(n.b_neg)] for n in self.nodes],
            "outputs": [[o.src, o.shift, int(o.neg)] for o in self.outputs],
            "input_bounds": None if self.input_bounds is None else [list(b) for b in self.input_bounds],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdderGraph":
        nodes = tuple(AddNode(int(i), int(a), int(sa), bool(na), int(b), int(sb), bool(nb))
                      for i, a, sa, na, b, sb, nb in d["nodes"])
        outs = tuple(OutputRef(None if s is None else int(s), int(k), bool(g)) for s, k, g in d["outputs"])
        ib = d.get("input_bounds")
        return cls(int(d["n_inputs"]), nodes, outs, None if ib is None else tuple((int(a), int(b)) for a, b in ib))


# ---------------------------------------------------------------------------------------------------------------
# construction


class _Builder:
    """Mutable state of the generator: nodes (deduplicated), depths, and per-output term maps."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.nodes: list[AddNode] = []
        self.depth: list[int] = [0] * n
        self.memo: dict[tuple[int, int, bool, int, int, bool], int] = {}

    def add(self, a: int, sa: int, na: bool, b: int, sb: int, nb: bool) -> int:
        """Id of ``(+-a << sa) + (+-b << sb)``, reusing an identical node; operands in canonical order."""
        if (na, a, sa) > (nb, b, sb):  # canonical order; a negated operand always comes second (``a - b``)
            a, sa, na, b, sb, nb = b, sb, nb, a, sa, na
        key = (a, sa, na, b, sb, nb)
        got = self.memo.get(key)
        if got is not None:
            return got
        nid = self.n + len(self.nodes)
        self.nodes.append(AddNode(nid, a, sa, na, b, sb, nb))
        self.depth.append(max(self.depth[a], self.depth[b]) + 1)
        self.memo[key] = nid
        return nid


_VEC_MIN = 24  # rows at least this long compute a term's pair keys with numpy (shorter: a Python loop is faster)
_SRC_BITS = 20  # node ids < 2**20; relative shifts within +-511 (codes are at most 64 bits)


def _pair_key(s1: int, k1: int, g1: int, s2: int, k2: int, g2: int) -> int:
    """Canonical pattern of two terms packed in one int: (src a, src b, shift_b - shift_a, signs differ), (a,ka)<(b,kb)."""
    if s1 < s2 or (s1 == s2 and k1 < k2):
        return (((s1 << _SRC_BITS | s2) << 10 | (k2 - k1 + 512)) << 1) | (g1 != g2)
    return (((s2 << _SRC_BITS | s1) << 10 | (k1 - k2 + 512)) << 1) | (g1 != g2)


def _unpack(key: int) -> tuple[int, int, int, int]:
    return key >> (11 + _SRC_BITS), (key >> 11) & ((1 << _SRC_BITS) - 1), ((key >> 1) & 1023) - 512, \
        -1 if key & 1 else 1


class _Cse:
    """Greedy most-frequent-pair elimination over all rows.

    Pair counts are kept incrementally (a substitution only touches the pairs of the terms it removes/adds) in a
    bucket queue indexed by count, so picking the most frequent pattern is O(1) amortized. Each row's terms are
    mirrored in numpy slot arrays (insertion order, dead slots masked) so the pair keys of a removed or added term
    against a long row are computed in one vector step; the counts are then updated in the row's order, as before.
    """

    def __init__(self, b: _Builder, rows: list[dict[tuple[int, int], int]]) -> None:
        if b.n + len(b.nodes) + sum(len(r) for r in rows) >= 1 << _SRC_BITS:  # ids this search may create
            raise BadInputError("weight matrix too large for the adder-graph generator")
        self.b = b
        self.rows = rows
        self.src_rows: dict[int, set[int]] = {}
        keys = []
        self.shifts: list[dict[int, set[int]]] = [{} for _ in rows]
        self.slots: list[dict[tuple[int, int], int]] = []  # row -> (src, shift) -> slot in the arrays below
        self.arr: list[np.ndarray] = []  # row -> (3, capacity) int64: src, shift, sign per slot
        self.alive: list[np.ndarray] = []
        self.used: list[int] = []
        for r, row in enumerate(rows):
            self._reset_slots(r)
            for (s, k) in row:
                self.src_rows.setdefault(s, set()).add(r)
                self.shifts[r].setdefault(s, set()).add(k)
            t = len(row)
            if t < 2:
                continue
            arr = np.array([(s, k, g) for (s, k), g in row.items()], dtype=np.int64)  # sorted by (s, k) below
            arr = arr[np.lexsort((arr[:, 1], arr[:, 0]))]
            i, j = np.triu_indices(t, 1)
            s1, k1, g1 = arr[i, 0], arr[i, 1], arr[i, 2]
            s2, k2, g2 = arr[j, 0], arr[j, 1], arr[j, 2]
            keys.append((((s1 << _SRC_BITS | s2) << 10 | (k2 - k1 + 512)) << 1) | (g1 != g2))
        self.count: dict[int, int] = {}
        self.buckets: list[set[int]] = [set(), set()]
        self.top = 0
        if keys:
            uk, uc = np.unique(np.concatenate(keys), return_counts=True)
            self.count = dict(zip(uk.tolist(), uc.tolist()))
            top = int(uc.max())
            self.buckets = [set() for _ in range(top + 1)]
            for key, c in zip(uk[uc >= 2].tolist(), uc[uc >= 2].tolist()):
                self.buckets[c].add(key)
            self.top = top

    def _reset_slots(self, r: int) -> None:
        """(Re)build row ``r``'s slot arrays from its dict, in the dict's (insertion) order, with spare room."""
        row = self.rows[r]
        cap = max(2 * len(row), 16)
        a = np.zeros((3, cap), dtype=np.int64)
        if row:
            a[:, :len(row)] = np.array([(s, k, g) for (s, k), g in row.items()], dtype=np.int64).T
        alive = np.zeros(cap, dtype=bool)
        alive[:len(row)] = True
        sl = {sk: i for i, sk in enumerate(row)}
        if r == len(self.arr):
            self.slots.append(sl)
            self.arr.append(a)
            self.alive.append(alive)
            self.used.append(len(row))
        else:
            self.slots[r], self.arr[r], self.alive[r], self.used[r] = sl, a, alive, len(row)

    def _keys(self, r: int, s: int, k: int, g: int) -> list[int]:
        """Pair keys of term ``(s, k, g)`` with every live term of row ``r``, in the row's order (``_pair_key``)."""
        n = self.used[r]
        a = self.arr[r][:, :n][:, self.alive[r][:n]]
        S, K, G = a[0], a[1], a[2]
        lt = (s < S) | ((s == S) & (k < K))
        lo = np.where(lt, s, S)
        hi = np.where(lt, S, s)
        d = np.where(lt, K - k, k - K) + 512
        return ((((lo << _SRC_BITS | hi) << 10 | d) << 1) | (G != g)).tolist()

    def _remove(self, r: int, s: int, k: int) -> None:
        row = self.rows[r]
        g = row.pop((s, k))
        self.alive[r][self.slots[r].pop((s, k))] = False
        sh = self.shifts[r][s]
        sh.discard(k)
        if not sh:
            del self.shifts[r][s]
        cnt = self.count
        if len(row) >= _VEC_MIN:
            for key in self._keys(r, s, k, g):
                cnt[key] -= 1
            return
        for (s2, k2), g2 in row.items():
            if s < s2 or (s == s2 and k < k2):
                key = (((s << _SRC_BITS | s2) << 10 | (k2 - k + 512)) << 1) | (g != g2)
            else:
                key = (((s2 << _SRC_BITS | s) << 10 | (k - k2 + 512)) << 1) | (g != g2)
            cnt[key] -= 1  # bucket entries go stale; _pick re-files them lazily

    def _insert(self, r: int, s: int, k: int, g: int) -> None:
        row = self.rows[r]
        old = row.get((s, k))
        if old is not None:  # same node at the same shift: merge (2x -> shift+1, x - x -> nothing)
            self._remove(r, s, k)
            if old == g:
                self._insert(r, s, k + 1, g)
            return
        cnt, buckets = self.count, self.buckets
        if len(row) >= _VEC_MIN:
            keys = self._keys(r, s, k, g)
        else:
            keys = [(((s << _SRC_BITS | s2) << 10 | (k2 - k + 512)) << 1) | (g != g2)
                    if s < s2 or (s == s2 and k < k2)
                    else (((s2 << _SRC_BITS | s) << 10 | (k - k2 + 512)) << 1) | (g != g2)
                    for (s2, k2), g2 in row.items()]
        for key in keys:
            c = cnt.get(key, 0) + 1
            cnt[key] = c
            if c >= 2:
                if c >= len(buckets):
                    buckets.append(set())
                buckets[c].add(key)
                if c > self.top:
                    self.top = c
        row[(s, k)] = g
        n = self.used[r]
        if n == self.alive[r].size:
            self._reset_slots(r)  # compacts in order (the dict already holds the new term) and makes room
        else:
            self.arr[r][:, n] = (s, k, g)
            self.alive[r][n] = True
            self.slots[r][(s, k)] = n
            self.used[r] = n + 1
        self.shifts[r].setdefault(s, set()).add(k)
        self.src_rows.setdefault(s, set()).add(r)

    def _pick(self) -> int | None:
        """Most frequent pattern; among equals (buckets up to 4096) the one with the shallowest operands.

        Buckets are filled on increments only; an entry whose count has since dropped is moved down when seen.
        """
        buckets, cnt = self.buckets, self.count
        while self.top >= 2:
            bucket = buckets[self.top]
            if len(bucket) <= 4096:
                for q in [q for q in bucket if cnt[q] != self.top]:
                    bucket.discard(q)
                    if cnt[q] >= 2:
                        buckets[cnt[q]].add(q)
                if bucket:
                    dep = self.b.depth
                    return min(bucket, key=lambda q: (max(dep[q >> (11 + _SRC_BITS)],
                                                          dep[(q >> 11) & ((1 << _SRC_BITS) - 1)]), q))
            else:
                while bucket:
                    q = bucket.pop()
                    c = cnt[q]
                    if c == self.top:
                        bucket.add(q)
                        return q
                    if c >= 2:
                        buckets[c].add(q)
            if not bucket:
                self.top -= 1
        return None

    def _apply(self, key: int) -> int:
        a, bsrc, d, sgn = _unpack(key)
        nid = -1
        done = 0
        for r in sorted(self.src_rows.get(a, set()) & self.src_rows.get(bsrc, set())):
            row = self.rows[r]
            for ka in sorted(self.shifts[r].get(a, ())):
                kb = ka + d
                ga = row.get((a, ka))
                gb = row.get((bsrc, kb))
                if ga is None or gb is None or ga * gb != sgn or (bsrc == a and kb == ka):
                    continue
                if nid < 0:
                    if d >= 0:
                        nid = self.b.add(a, 0, False, bsrc, d, sgn < 0)
                    elif sgn > 0:
                        nid = self.b.add(a, -d, False, bsrc, 0, False)
                    else:  # (a << s) - b costs a full-width carry chain; b - (a << s) lets b's low bits pass
                        nid = self.b.add(bsrc, 0, False, a, -d, True)
                self._remove(r, a, ka)
                self._remove(r, bsrc, kb)
                self._insert(r, nid, min(ka, kb), -ga if (d < 0 and sgn < 0) else ga)
                done += 1
        return done

    def run(self) -> None:
        while True:
            key = self._pick()
            if key is None:
                return
            if self._apply(key) == 0:  # only overlapping instances were counted: retire the pattern
                self.buckets[self.count[key]].discard(key)


def _normalize_weights(w: Any) -> np.ndarray:
    arr = np.asarray(w)
    if arr.ndim != 2:
        raise BadInputError(f"adder graph weights must be a 2-D (m, n) matrix, got shape {arr.shape}")
    if arr.dtype != object and not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"adder graph weights must be integer codes, got dtype {arr.dtype}")
    return arr


#: default ``cse_block``: columns per first-level CSE search (see ``build_adder_graph``)
CSE_BLOCK = 64
#: matrices with more weights than this search blocks of ``cse_block // 2`` columns (see ``build_adder_graph``)
CSE_WIDE = 16384


def _cse_blocked(b: _Builder, rows: list[dict[tuple[int, int], int]], n: int,
                 block: int | None) -> list[dict[tuple[int, int], int]]:
    """Bounded CSE: search each block of ``block`` contiguous columns on its own, then merge neighbouring groups
    pairwise and search again (what is left of each row, shared nodes included) while the merged group's longest
    row holds at most ``4 * block`` terms; ``block=None`` searches the whole matrix at once."""
    if block is None or n <= block:
        _Cse(b, rows).run()
        return rows
    nb = -(-n // block)
    col_group = [i * nb // n for i in range(n)]  # near-equal contiguous blocks
    groups: list[list[dict[tuple[int, int], int]]] = [[{} for _ in rows] for _ in range(nb)]
    for j, row in enumerate(rows):
        for (s, k), g in row.items():
            groups[col_group[s]][j][(s, k)] = g
    for grp in groups:
        _Cse(b, grp).run()
    cap = 4 * block
    while len(groups) > 1:
        nxt: list[list[dict[tuple[int, int], int]]] = []
        merged = False
        for i in range(0, len(groups), 2):
            if i + 1 == len(groups):
                nxt.append(groups[i])
                continue
            both = [{**r1, **r2} for r1, r2 in zip(groups[i], groups[i + 1])]  # disjoint sources: no key collides
            if max(len(r) for r in both) <= cap:
                _Cse(b, both).run()
                nxt.append(both)
                merged = True
            else:
                nxt += [groups[i], groups[i + 1]]
        if not merged:
            break
        groups = nxt
    return [{sk: g for grp in groups for sk, g in grp[j].items()} for j in range(len(rows))]


def build_adder_graph(w: np.ndarray, *, input_bounds: Sequence[tuple[int, int]] | None = None,
                      share: bool = True, cse_block: int | None = CSE_BLOCK) -> AdderGraph:
    """Adder graph computing ``y = w @ x`` for integer ``w`` (m, n) and integer input codes ``x`` (n,).

    ``share=False`` gives the baseline: each output's CSD terms summed by its own balanced tree (identical adders
    are still built once). ``input_bounds`` is stored for ``bounds``/``width``; it does not change the structure.

    ``cse_block`` bounds the sharing search. A row of ``t`` terms has ``t**2 / 2`` term pairs, so searching the
    whole matrix at once (``None``) costs time and memory quadratic in the row length (a 120x400 4-bit layer: 18 M
    pairs, 90 s). Bounded, the columns are cut into contiguous blocks of at most ``cse_block`` and each block is
    searched over all rows (patterns repeat across rows there as well); then neighbouring blocks are merged pairwise
    and what is left of their rows (shared nodes included) is searched again, as long as a merged row holds at most
    ``4 * cse_block`` terms. Every term then meets at most ``4 * cse_block`` others in each of ``log2(n /
    cse_block)`` rounds: near-linear in the number of weights (that layer: 11 s, 5 % more adders than the
    unbounded search). Matrices with ``n <= cse_block`` get exactly the unbounded result.

    Matrices of more than ``CSE_WIDE`` weights (a 3x3 conv over 64 channels into 64: 36,864) search blocks of
    ``cse_block // 2`` columns: each substitution touches rows half as long, so the search takes about half the
    time (a random 64x576 8-bit matrix: 26 s -> 13 s) for about 4 % more adders; smaller matrices are unchanged.
    """
    if cse_block is not None and (isinstance(cse_block, bool) or not isinstance(cse_block, int) or cse_block < 2):
        raise BadInputError(f"cse_block must be an integer >= 2 or None, got {cse_block!r}")
    arr = _normalize_weights(w)
    m, n = arr.shape
    if input_bounds is not None:
        input_bounds = tuple((int(lo), int(hi)) for lo, hi in input_bounds)
        if len(input_bounds) != n or any(lo > hi for lo, hi in input_bounds):
            raise BadInputError(f"input_bounds must be {n} (lo, hi) pairs with lo <= hi")
    b = _Builder(n)
    rows: list[dict[tuple[int, int], int]] = []
    for j in range(m):
        row: dict[tuple[int, int], int] = {}
        for i in range(n):
            c = int(arr[j, i])
            if c:
                for g, k in csd_digits(c):
                    row[(i, k)] = g
        rows.append(row)
    if share:
        if cse_block is not None and m * n > CSE_WIDE:
            cse_block = max(2, cse_block // 2)
        rows = _cse_blocked(b, rows, n, cse_block)
    outputs = [_sum_tree(b, row) for row in rows]
    return AdderGraph(n, tuple(b.nodes), tuple(outputs), input_bounds)


def _sum_tree(b: _Builder, row: dict[tuple[int, int], int]) -> OutputRef:
    """Balanced sum of a row's terms: combine the two shallowest first (ties: lowest shift, then id)."""
    if not row:
        return OutputRef(None, 0, False)
    heap = [(b.depth[s], k, s, g) for (s, k), g in row.items()]
    heapq.heapify(heap)
    while len(heap) > 1:
        _, k1, s1, g1 = heapq.heappop(heap)
        _, k2, s2, g2 = heapq.heappop(heap)
        base = min(k1, k2)
        if g1 < 0 and g2 < 0:  # -(a + b): keep the node positive, carry the sign upwards
            nid, g = b.add(s1, k1 - base, False, s2, k2 - base, False), -1
        elif g1 == g2:
            nid, g = b.add(s1, k1 - base, False, s2, k2 - base, False), 1
        else:  # p - n; when n has the lower shift write -(n - p): the minuend should be the unshifted operand,
            # so its low bits bypass the carry chain
            (kp, sp), (kn, sn) = ((k1, s1), (k2, s2)) if g1 > 0 else ((k2, s2), (k1, s1))
            if kp <= kn:
                nid, g = b.add(sp, kp - base, False, sn, kn - base, True), 1
            else:
                nid, g = b.add(sn, kn - base, False, sp, kp - base, True), -1
        heapq.heappush(heap, (b.depth[nid], base, nid, g))
    _, k, s, g = heap[0]
    return OutputRef(s, k, g < 0)
