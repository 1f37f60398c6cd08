"""``einsum`` equations as the steps qfx converts: permutes, size-1 axes, sums, elementwise products and batched
matrix products. One plan serves the torch tracer (fx nodes) and the ONNX clean-up (ONNX nodes): each passes a
builder that makes its own kind of node, so both read an equation the same way."""
from __future__ import annotations

from typing import Any, Protocol, Sequence

__all__ = ["EinsumBuilder", "einsum_plan"]


class EinsumBuilder(Protocol):
    """Makes one step on the caller's values (fx nodes, ONNX tensor names)."""

    def sum(self, x: Any, axes: tuple[int, ...]) -> Any: ...  # keepdim=False

    def permute(self, x: Any, perm: tuple[int, ...]) -> Any: ...

    def unsqueeze(self, x: Any, axis: int) -> Any: ...

    def squeeze(self, x: Any, axis: int) -> Any: ...

    def matmul(self, a: Any, b: Any) -> Any: ...

    def mul(self, a: Any, b: Any) -> Any: ...


def _parse(eq: str, n_ops: int) -> tuple[list[str], str] | None:
    eq = eq.replace(" ", "")
    if "." in eq or n_ops not in (1, 2):
        return None
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_ops or any(len(set(t)) != len(t) or not t.isalpha() for t in terms):
        return None
    if not arrow:  # implicit output: the letters that appear once, in alphabetical order
        out = "".join(sorted(ch for ch in set(lhs) if ch.isalpha() and lhs.count(ch) == 1))
    if len(set(out)) != len(out) or not out.isalpha() and out or any(ch not in lhs for ch in out):
        return None
    return terms, out


def einsum_plan(eq: str, ops: Sequence[Any], b: EinsumBuilder) -> Any | None:
    """``einsum(eq, *ops)`` built with ``b``, or None for an equation outside these forms: one operand (a permute
    and sums), or two operands without repeated letters where no letter is contracted (an outer or elementwise
    product: ``bi,bj->bij``), no letter is free (a product summed: ``bi,bi->b``), or one letter is contracted with
    at most one free letter per operand (a batched ``A @ B``: attention's ``bhqd,bhkd->bhqk``). Letters only one
    operand has and the output lacks are summed away first."""
    parsed = _parse(eq, len(ops))
    if parsed is None:
        return None
    terms, out = parsed

    def summed(x: Any, term: str, keep: str) -> tuple[Any, str]:
        drop = tuple(i for i, ch in enumerate(term) if ch not in keep)
        if not drop:
            return x, term
        return b.sum(x, drop), "".join(ch for ch in term if ch in keep)

    def arranged(x: Any, term: str, order: str) -> Any:
        """x (letters ``term``) permuted to ``order``'s letters it has, with size-1 axes for the others."""
        have = [ch for ch in order if ch in term]
        perm = tuple(term.index(ch) for ch in have)
        if perm != tuple(range(len(term))):
            x = b.permute(x, perm)
        for i, ch in enumerate(order):
            if ch not in term:
                x = b.unsqueeze(x, i)
        return x

    if len(ops) == 1:
        x, term = summed(ops[0], terms[0], out)
        return arranged(x, term, out)
    (xa, xb), (ta, tb) = ops, terms
    xa, ta = summed(xa, ta, tb + out)
    xb, tb = summed(xb, tb, ta + out)
    contract = [ch for ch in ta if ch in tb and ch not in out]
    if not contract:
        return b.mul(arranged(xa, ta, out), arranged(xb, tb, out))
    fa = [ch for ch in ta if ch not in tb]
    fb = [ch for ch in tb if ch not in ta]
    batch = [ch for ch in out if ch in ta and ch in tb]
    if not fa and not fb:
        order = "".join(batch + contract)
        x, term = summed(b.mul(arranged(xa, ta, order), arranged(xb, tb, order)), order, out)
        return arranged(x, term, out)
    if len(contract) != 1 or len(fa) > 1 or len(fb) > 1:
        return None
    k = contract[0]
    ia, ib = "".join(batch + fa + [k]), "".join(batch + [k] + fb)
    ma = arranged(xa, ta, ia) if fa else b.unsqueeze(arranged(xa, ta, ia), len(ia) - 1)
    mb = arranged(xb, tb, ib) if fb else b.unsqueeze(arranged(xb, tb, ib), len(ib))
    prod = b.matmul(ma, mb)  # batch + [fa or 1] + [fb or 1]
    if not fb:
        prod = b.squeeze(prod, len(batch) + 1)
    if not fa:
        prod = b.squeeze(prod, len(batch))
    return arranged(prod, "".join(batch + fa + fb), out)
