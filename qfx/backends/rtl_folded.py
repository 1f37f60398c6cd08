"""Folded dense layers for the RTL backend: a reuse factor R trades clock cycles for multiply-accumulate units.

A dense layer ``y = requant(W @ x + b)`` with ``n_in`` inputs and reuse factor ``R`` runs in ``R`` steps. Step ``t``
reads the input block ``x[t*B : (t+1)*B]`` (``B = ceil(n_in / R)``, selected from the registered input vector by the
step counter) and adds ``W[:, block] @ block`` to one accumulator per output, so the layer has ``n_out * B``
multiply-accumulate units instead of ``n_out * n_in`` constant products. The weights live in ROMs: one ``case``
function per output, addressed by the step, whose row ``t`` is that output's ``B`` weights of block ``t``. After the
last step the accumulators go through the same bias-and-requantize logic an unfolded layer uses (``_affine``), so a
folded layer computes exactly what the adder graph computes.

Products: a K-hot layer (``khot`` attribute > 0) or one whose weights are all signed powers of two stores each weight
as K ``(nz, neg, shift)`` terms and applies them with shifters: no ``*``, no DSP. Other layers store the weight codes
and write one ``*`` per unit (a DSP or LUT multiplier). All arithmetic is modulo ``2**AW`` with ``AW`` the width of the
exact accumulator bound; every partial sum lies inside that bound (each product's range contains 0), so the wrapping
arithmetic is exact.

Choosing R (``reuse_map``): an int applies to every dense layer (capped at its ``n_in``); a mapping gives it per node
(an entry above the node's ``n_in`` or on a node that cannot fold is refused); ``target_ii=N`` picks, per dense layer,
the largest ``R <= min(N, n_in)`` that divides ``n_in`` (so every step has the same ``B`` and the products
``n_in * n_out`` split evenly). R = 1 leaves the layer as today's fully parallel adder graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qfx.backends.adder_graph import CSE_BLOCK, signed_width
from qfx.backends.rtl_design import LayerDesign, Sig, _affine, _bias, _lit, _lossless_acc
from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed.csd import csd_digits
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph, Node, op_def
from qfx.ops import Categories

__all__ = ["FoldedDenseDesign", "design_folded_dense", "reuse_map", "foldable"]


def foldable(n: Node) -> bool:
    """Dense layers (``Categories.LINEAR`` without ``Categories.CONV``) fold; convolutions fold over pixels instead."""
    d = op_def(n.op)
    return d.is_(Categories.LINEAR) and not d.is_(Categories.CONV)


def _n_in(g: Graph, n: Node) -> int:
    return int(g.tensor(n.inputs[0]).size)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def reuse_map(graph: Graph, reuse_factor: int | Mapping[str, int] = 1, target_ii: int | None = None) -> dict[str, int]:
    """Reuse factor per foldable node (only entries > 1), from an int, a per-node mapping or a target II."""
    dense = {n.name: n for n in graph.nodes if foldable(n)}
    out: dict[str, int] = {}
    if target_ii is not None:
        if not _is_int(target_ii) or target_ii < 1:
            raise BadInputError(f"target_ii must be an integer >= 1, got {target_ii!r}")
        if not (_is_int(reuse_factor) and reuse_factor == 1):
            raise BadInputError("give reuse_factor or target_ii, not both")
        for name, n in dense.items():
            m = _n_in(graph, n)
            r = max(r for r in range(1, min(int(target_ii), m) + 1) if m % r == 0)
            if r > 1:
                out[name] = r
        return out
    if isinstance(reuse_factor, Mapping):
        names = {n.name for n in graph.nodes}
        for name, r in reuse_factor.items():
            if name not in names:
                raise BadInputError(f"reuse_factor names unknown node {name!r}")
            if not _is_int(r) or r < 1:
                raise BadInputError(f"reuse_factor of node {name!r} must be an integer >= 1, got {r!r}")
            if r == 1:
                continue
            if name not in dense:
                raise BadInputError(f"reuse_factor of node {name!r}: only dense layers fold in RTL "
                                    "(convolutions fold over pixels, conv_style='pixel')")
            if r > _n_in(graph, dense[name]):
                raise BadInputError(f"reuse_factor {r} of node {name!r} exceeds its {_n_in(graph, dense[name])} "
                                    "inputs")
            out[name] = int(r)
        return out
    if not _is_int(reuse_factor) or reuse_factor < 1:
        raise BadInputError(f"reuse_factor must be an integer >= 1 or a dict of node name -> integer, got "
                            f"{reuse_factor!r}")
    for name, n in dense.items():
        r = min(int(reuse_factor), _n_in(graph, n))
        if r > 1:
            out[name] = r
    return out


@dataclass
class FoldedDenseDesign:
    """What ``folded_dense.sv.j2`` renders (see the module docstring); ``tail`` is the combinational
    bias-and-requantize module reading the ``n_out`` accumulators."""

    module: str
    comment: str
    n_in: int
    n_out: int
    steps: int  # R: clock cycles per vector (the layer's II)
    block: int  # B: inputs per step
    tw: int  # step counter bits (counts 0 .. steps, steps = idle)
    in_bits: int
    xw: int  # width of one input as a signed wire
    aw: int  # accumulator / arithmetic width
    pw: int  # product width (multiplier mode)
    shift_mode: bool
    k: int  # terms per weight (shift mode)
    shw: int  # shift field bits (shift mode)
    ew: int  # bits per weight in a ROM row
    xsel: list[list[str]]  # per block position b: per step t the input expression (or "" for none)
    roms: list[list[str]]  # per output: per step the row literal
    tail: LayerDesign
    live: list[bool]  # per output: has a non-zero weight (else its accumulator is constant zero)
    out_bits: int = 0
    n_mults: int = 0
    n_shifters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def row_bits(self) -> int:
        return self.block * self.ew


def _terms(code: int, k: int) -> list[tuple[int, int]]:
    return [(sg, sh) for sg, sh in csd_digits(int(code))][:k] if code else []


def design_folded_dense(g: Graph, n: Node, module: str, reuse: int,
                        cse_block: int | None = CSE_BLOCK) -> FoldedDenseDesign:
    """Structured description of dense node ``n`` folded by ``reuse`` (>= 2, <= n_in)."""
    fx, of = g.tensor(n.inputs[0]).fmt, g.tensor(n.output).fmt
    w = np.asarray(n.consts["weight"].codes, dtype=np.int64)
    _lossless_acc(n, fx, w)
    fw = n.consts["weight"].fmt
    n_out, n_in = w.shape
    if not 2 <= reuse <= n_in:  # pragma: no cover - reuse_map's contract
        raise UnsupportedError(f"node {n.name!r}: reuse factor {reuse} outside 2..{n_in}")
    block = -(-n_in // reuse)
    steps = -(-n_in // block)
    xlo, xhi = fx.min_code, fx.max_code
    lo = np.minimum(w * xlo, w * xhi).sum(axis=1)
    hi = np.maximum(w * xlo, w * xhi).sum(axis=1)
    aw = max(2, max(signed_width(int(a), int(b)) for a, b in zip(lo, hi)))
    ends = [int(w.min()) * xlo, int(w.min()) * xhi, int(w.max()) * xlo, int(w.max()) * xhi]
    pw = signed_width(min(ends), max(ends))
    digits = [len(csd_digits(int(c))) for c in np.unique(w) if c]
    khot = int(n.attrs.get("khot", 0) or 0)
    shift_mode = khot > 0 or max(digits, default=0) <= 1
    k = max(digits, default=1) if shift_mode else 0
    k = max(1, k)
    smax = max((sh for c in np.unique(w) if c for _, sh in csd_digits(int(c))), default=0)
    shw = max(1, smax.bit_length())
    wwid = signed_width(int(w.min()), int(w.max()))
    ew = k * (shw + 2) if shift_mode else wwid
    xw = fx.width + (0 if fx.signed else 1)

    def enc(code: int) -> int:
        if not shift_mode:
            return code & ((1 << ew) - 1)
        v = 0
        for i, (sg, sh) in enumerate(_terms(code, k)):
            v |= ((1 << (shw + 1)) | ((1 if sg < 0 else 0) << shw) | sh) << (i * (shw + 2))
        return v

    roms = []
    for o in range(n_out):
        rows = []
        for t in range(steps):
            v = 0
            for b in range(block):
                j = t * block + b
                if j < n_in:
                    v |= enc(int(w[o, j])) << (b * ew)
            rows.append(_lit(v, block * ew))
        roms.append(rows)
    ew_in = fx.width
    xsel = []
    for b in range(block):
        arms = []
        for t in range(steps):
            j = t * block + b
            if j >= n_in:
                arms.append("")
                continue
            bits = f"x[{j * ew_in + ew_in - 1}:{j * ew_in}]"
            arms.append(bits if fx.signed else "{1'b0, " + bits + "}")
        xsel.append(arms)
    tail = LayerDesign(f"{module}_out", f"bias and requantization of folded {n.op.value} {n.name}", cse_block=cse_block)
    port = tail.input_port("acc", n_out, FxFormat(aw, aw, signed=True))
    accs = [Sig(s.name, aw, int(a), int(b)) for s, a, b in zip(port, lo, hi)]
    dots = [(s, 0, False) for s in accs]
    outs = _affine(tail, dots, fx.frac_bits + fw.frac_bits, *_bias(n), of)
    tail.finish(outs, of)
    live = [bool(np.any(w[o])) for o in range(n_out)]
    units = n_out * block
    return FoldedDenseDesign(
        module=module, comment=f"{n.op.value} {n.name}", n_in=n_in, n_out=n_out, steps=steps, block=block,
        tw=max(1, steps.bit_length()), in_bits=n_in * fx.width, xw=xw, aw=aw, pw=pw, shift_mode=shift_mode, k=k,
        shw=shw, ew=ew, xsel=xsel, roms=roms, tail=tail, live=live, out_bits=tail.out_bits,
        n_mults=0 if shift_mode else units, n_shifters=units * k if shift_mode else 0)
