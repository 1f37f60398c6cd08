"""``qfx cosim DIR``: cocotb + Verilator simulation of a generated RTL project, compared bit for bit with qfx."""
from __future__ import annotations

import argparse
import json
import shutil

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cosim", help="simulate an RTL project (cocotb + Verilator, AXI-Stream) and compare every output bit with qfx",
        description="Build the project's SystemVerilog with Verilator (cached by content), stream N input vectors "
        "(edge values first, then random codes) through its AXI4-Stream ports with random tvalid gaps and tready "
        "stalls, and compare every output code with qfx's golden interpreter. Writes DIR/cosim_report.json. "
        "Exit status: 0 bit-exact, 1 mismatch, 2 bad input, 3 missing Verilator/cocotb.")
    p.add_argument("project", metavar="DIR", help="project folder written by 'qfx export --target rtl'")
    p.add_argument("-n", "--vectors", type=int, default=1000, help="number of input vectors (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the vectors and the stall patterns (default 0)")
    p.add_argument("--no-backpressure", action="store_true", help="no random tvalid gaps or tready stalls")
    p.add_argument("--hls-rtl", action="store_true",
                   help="simulate the RTL Vitis HLS synthesizes from an HLS project instead (needs vitis_hls)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    p.epilog = "example: qfx cosim rtl_prj -n 2000 --seed 1"
    return p


def _summary(rep) -> str:
    lines = [f"cosim {rep.top}: {rep.vectors} vectors, {rep.outputs_compared} outputs compared, "
             f"{rep.mismatches} mismatches ({'bit-exact' if rep.ok else 'MISMATCH'})",
             f"  latency {rep.latency} cycles, back-pressure {'on' if rep.backpressure else 'off'}, seed {rep.seed}, "
             f"build {'cached' if rep.build_cached else f'{rep.build_s:.1f} s'}, simulation {rep.sim_s:.1f} s "
             f"({rep.vectors_per_s:.0f} vectors/s)"]
    if rep.first_mismatch:
        m = rep.first_mismatch
        lines.append(f"  first mismatch: vector {m['vector']}, output index {m['output_index']}: "
                     f"expected {m['expected']}, got {m['got']}")
    if rep.received != rep.vectors:
        lines.append(f"  received {rep.received} of {rep.vectors} output vectors"
                     + (" (timed out)" if rep.timed_out else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from qfx.errors import BadInputError, MissingToolError

    if args.vectors < 1:
        raise BadInputError(f"-n must be >= 1, got {args.vectors}")
    if args.hls_rtl:
        if shutil.which("vitis_hls") is None:
            raise MissingToolError("--hls-rtl needs AMD Vitis HLS (vitis_hls not on PATH) to synthesize the HLS "
                                   "project to RTL; install Vitis and source its settings64.sh, or simulate qfx's "
                                   "own RTL with 'qfx export --target rtl' and 'qfx cosim'")
        raise MissingToolError("--hls-rtl: simulating Vitis HLS output is not wired up in this qfx version "
                               "(it needs a Vitis HLS synthesis run and its AXI-Stream top); use --target rtl")
    from qfx.sim.cosim import run_cosim

    rep = run_cosim(args.project, n_vectors=args.vectors, seed=args.seed, backpressure=not args.no_backpressure)
    if not args.quiet:
        print(json.dumps(rep.to_dict(), indent=1) if args.json else _summary(rep))
    return 0 if rep.ok else 1
