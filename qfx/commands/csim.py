"""``qfx csim DIR``: bit-exact C simulation of a generated Vitis HLS project against qfx's golden interpreter."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "csim", help="C-simulate an HLS project (g++ + ap_types) and compare every output bit with qfx",
        description="Build the project's testbench with g++ against the ap_types headers (cached), run N input "
        "vectors (edge values first, then random codes) through it, and compare every output code with qfx's "
        "golden interpreter. Exit status: 0 bit-exact, 1 mismatch, 2 bad input, 3 missing g++/headers.")
    p.add_argument("project", metavar="DIR", help="project folder written by the HLS backend (holds model.json)")
    p.add_argument("-n", "--vectors", type=int, default=1000, help="number of input vectors (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the input vectors (default 0)")
    p.add_argument("--ap-include", metavar="PATH", default=None,
                   help="folder holding ap_fixed.h (default: $QFX_AP_INCLUDE, $XILINX_HLS/include, hls4ml's copy)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    p.epilog = "example: qfx csim hls_prj -n 5000 --seed 3"
    return p


def run(args: argparse.Namespace) -> int:
    from qfx.sim.csim import run_csim

    rep = run_csim(args.project, n_vectors=args.vectors, seed=args.seed, ap_include=args.ap_include)
    if not args.quiet:
        print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.summary())
    return 0 if rep.passed else 1
