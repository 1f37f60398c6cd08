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
    p.add_argument("--inputs", metavar="NPZ", default=None,
                   help="input codes to run instead of random ones: an .npz with one int array (N, *shape) per "
                   "graph input name (np.savez(path, **{name: codes})); a graph with one input also takes a .npy")
    p.add_argument("--axis", action="store_true",
                   help="drive the AXI4-Stream top (firmware/<top>_axis.cpp: packed words, one port per graph input "
                   "and output) instead of the plain top")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    p.epilog = "examples: qfx csim hls_prj -n 5000 --seed 3;  qfx csim hls_prj --axis --inputs codes.npz"
    return p


def run(args: argparse.Namespace) -> int:
    from qfx.commands.cosim import load_inputs
    from qfx.errors import BadInputError
    from qfx.sim.csim import run_csim

    if args.vectors < 1:
        raise BadInputError(f"-n must be >= 1, got {args.vectors}")
    rep = run_csim(args.project, n_vectors=args.vectors, seed=args.seed, ap_include=args.ap_include,
                   inputs=None if args.inputs is None else load_inputs(args.inputs), axis=args.axis)
    if not args.quiet:
        print(json.dumps(rep.to_dict(), indent=1) if args.json else rep.summary())
    return 0 if rep.passed else 1
