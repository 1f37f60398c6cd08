"""Bench/test-only Verilog for ONE constant matrix-vector product ``y = W @ x`` (no templates, no AXI, no IR).

Why: resource benchmarks and the Yosys-report tests need a small, self-contained module to synthesize the same
integer matrix three ways (``*`` by constants, per-output CSD trees, shared adder graph). The real RTL backend renders
through ``templates/rtl``; nothing in a generated project uses this file.

Ports: ``x`` packs ``n`` inputs of ``in_width`` bits (input ``i`` at bits ``[i*in_width +: in_width]``), ``y`` packs
``m`` outputs of ``out_width`` bits. With ``registered=True`` inputs and outputs get one register each (``clk``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qfx.backends.adder_graph import AdderGraph, signed_width

__all__ = ["render_bench_cmvm", "render_bench_mult", "bench_out_width"]


def _box(n: int, in_width: int, signed: bool) -> list[tuple[int, int]]:
    return [(-(1 << (in_width - 1)), (1 << (in_width - 1)) - 1) if signed else (0, (1 << in_width) - 1)] * n


def bench_out_width(w: np.ndarray, in_width: int, signed: bool = True) -> int:
    """Signed width holding every output of ``W @ x`` over the input box (same for all three styles)."""
    lo_hi = []
    box = _box(w.shape[1], in_width, signed)
    for row in np.asarray(w, dtype=object):
        lo = sum(int(c) * (b[0] if c > 0 else b[1]) for c, b in zip(row, box))
        hi = sum(int(c) * (b[1] if c > 0 else b[0]) for c, b in zip(row, box))
        lo_hi.append(signed_width(lo, hi))
    return max(lo_hi + [1])


def _header(name: str, n: int, m: int, in_width: int, out_width: int, registered: bool, signed: bool) -> list[str]:
    ports = ["input wire clk, "] if registered else []
    lines = [f"// bench-only module written by qfx.report.bench_rtl (not part of a qfx project)",
             f"module {name} ({''.join(ports)}input wire [{n * in_width - 1}:0] x, "
             f"output wire [{m * out_width - 1}:0] y);"]
    src = "x"
    if registered:
        lines.append(f"  reg [{n * in_width - 1}:0] x_r; always @(posedge clk) x_r <= x;")
        src = "x_r"
    iw = in_width if signed else in_width + 1
    for i in range(n):
        sl = f"{src}[{i * in_width + in_width - 1}:{i * in_width}]"
        expr = f"$signed({sl})" if signed else f"$signed({{1'b0, {sl}}})"
        lines.append(f"  wire signed [{iw - 1}:0] v{i} = {expr};")
    return lines


def _footer(m: int, out_width: int, registered: bool) -> list[str]:
    lines = []
    if registered:
        lines.append(f"  reg [{m * out_width - 1}:0] y_r;")
        lines.append("  always @(posedge clk) begin")
        lines += [f"    y_r[{j * out_width + out_width - 1}:{j * out_width}] <= o{j};" for j in range(m)]
        lines += ["  end", "  assign y = y_r;"]
    else:
        lines += [f"  assign y[{j * out_width + out_width - 1}:{j * out_width}] = o{j};" for j in range(m)]
    return lines + ["endmodule", ""]


def _term(v: str, shift: int, neg: bool) -> str:
    t = f"({v} <<< {shift})" if shift else v
    return f"-{t}" if neg else t


def _node_lines(k: int, w: int, t1: tuple[int, int, bool], t2: tuple[int, int, bool]) -> list[str]:
    """One adder; when the operand that gets added/subtracted is shifted by s, the low s bits of the other operand
    pass straight through and only the upper ``w - s`` bits go through the carry chain."""
    if t1[2] and not t2[2]:
        t1, t2 = t2, t1  # positive operand first
    (a, sa, na), (b, sb, nb) = t1, t2
    base = min(sa, sb)
    sa, sb = sa - base, sb - base
    if na:  # both negative (not produced by build_adder_graph; kept for completeness)
        expr = f"-{_term(f'v{a}', sa, False)} - {_term(f'v{b}', sb, False)}"
        return [f"  wire signed [{w - 1}:0] v{k} = {_term(f'({expr})', base, False)};"]
    op = "-" if nb else "+"
    if sa == 0 and sb > 0 and sb < w:  # v = (a + -b*2^s) = ((a >>> s) +- b) * 2^s + a[s-1:0]
        s = sb
        return [f"  wire signed [{w - 1}:0] v{k}_x = v{a};",
                f"  wire signed [{w - s - 1}:0] v{k}_h = (v{k}_x >>> {s}) {op} v{b};",
                f"  wire signed [{w - 1}:0] v{k} = {_term(f'$signed({{v{k}_h, v{k}_x[{s - 1}:0]}})', base, False)};"]
    if sb == 0 and sa > 0 and sa < w and not nb:  # symmetric case for an addition
        s = sa
        return [f"  wire signed [{w - 1}:0] v{k}_x = v{b};",
                f"  wire signed [{w - s - 1}:0] v{k}_h = (v{k}_x >>> {s}) + v{a};",
                f"  wire signed [{w - 1}:0] v{k} = {_term(f'$signed({{v{k}_h, v{k}_x[{s - 1}:0]}})', base, False)};"]
    expr = f"{_term(f'v{a}', sa, False)} {op} {_term(f'v{b}', sb, False)}"
    return [f"  wire signed [{w - 1}:0] v{k} = {_term(f'({expr})', base, False) if base else expr};"]


def render_bench_cmvm(graph: AdderGraph, name: str, in_width: int, *, signed: bool = True,
                      registered: bool = False) -> str:
    """Shift-add module for an adder graph; every wire is sized from the graph's exact bounds."""
    n, m = graph.n_inputs, graph.n_outputs
    box = _box(n, in_width, signed)
    widths = graph.widths(box)
    obounds = graph.output_bounds(box)
    out_width = max([signed_width(lo, hi) for lo, hi in obounds] + [1])
    lines = _header(name, n, m, in_width, out_width, registered, signed)
    for nd in graph.nodes:
        lines += _node_lines(nd.id, widths[nd.id], (nd.a, nd.a_shift, nd.a_neg), (nd.b, nd.b_shift, nd.b_neg))
    for j, o in enumerate(graph.outputs):
        expr = "0" if o.src is None else _term(f"v{o.src}", o.shift, o.neg)
        lines.append(f"  wire signed [{out_width - 1}:0] o{j} = {expr};")
    return "\n".join(lines + _footer(m, out_width, registered))


def render_bench_mult(w: np.ndarray, name: str, in_width: int, *, signed: bool = True,
                      registered: bool = False) -> str:
    """The same product written with ``*`` by constants (what a naive generator emits; Yosys maps it to DSPs)."""
    w = np.asarray(w, dtype=np.int64)
    m, n = w.shape
    out_width = bench_out_width(w, in_width, signed)
    lines = _header(name, n, m, in_width, out_width, registered, signed)
    for j in range(m):
        terms = []
        for i in range(n):
            c = int(w[j, i])
            if c:
                cw = signed_width(c, c)
                lit = f"{cw}'sd{c}" if c > 0 else f"-{cw + 1}'sd{-c}"
                terms.append(f"v{i} * {lit}")
        lines.append(f"  wire signed [{out_width - 1}:0] o{j} = {' + '.join(terms) or '0'};")
    return "\n".join(lines + _footer(m, out_width, registered))


def render_bench_files(w: np.ndarray, graphs: Sequence[tuple[str, AdderGraph]], in_width: int) -> dict[str, str]:
    """Convenience for benchmarks: ``{module_name: source}`` for the ``*`` form and each named graph."""
    out = {"cmvm_mult": render_bench_mult(w, "cmvm_mult", in_width)}
    for nm, g in graphs:
        out[nm] = render_bench_cmvm(g, nm, in_width)
    return out
