"""``qfx report DIR``: FPGA resource estimates (Yosys synth_xilinx) of a generated RTL project, per layer."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="estimate LUT/FF/CARRY/DSP/BRAM of an RTL project with Yosys synth_xilinx, per layer",
        description="Synthesize the project's rtl/*.sv with Yosys synth_xilinx (out of context: no I/O or clock "
        "buffers, hierarchy kept), print LUT, FF, CARRY, DSP and BRAM per layer and in total plus the latency in "
        "cycles, and write DIR/report.json. Results are cached by content under $QFX_CACHE_DIR/yosys. "
        "Exit status: 0 ok, 2 not a qfx RTL project / bad option, 3 Yosys missing.")
    p.add_argument("project", metavar="DIR", help="project folder written by the RTL backend (rtl/, cosim.json)")
    p.add_argument("--top", default=None, help="top module (default: the one recorded in cosim.json)")
    p.add_argument("--part", default=None, help="Xilinx part, picks the synth_xilinx family (default xc7; "
                   "e.g. xc7a35t, xczu9eg, xcvu13p)")
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="Yosys processes: with N > 1 every layer module and the top are synthesized separately, N "
                   "at a time (less wall time; FF/CARRY/DSP identical, LUTs within ~10 %% as ABC maps each run on its "
                   "own; default 1: one hierarchical run, or one run per layer for designs over 1 MB of SystemVerilog)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--no-cache", action="store_true", help="always run Yosys (ignore cached results)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.epilog = "examples: qfx report rtl_prj --part xczu9eg;  qfx report rtl_prj -j 4 --json"
    return p


def run(args: argparse.Namespace) -> int:
    from qfx.outdir import current_umask
    from qfx.report.resources import report_project
    from qfx.report.yosys import stderr_progress

    from qfx.errors import BadInputError

    if args.jobs < 1:
        raise BadInputError(f"--jobs must be >= 1, got {args.jobs}")
    progress = None if args.quiet else stderr_progress("qfx report: yosys")
    rep = report_project(args.project, top=args.top, part=args.part, progress=progress,
                         use_cache=not args.no_cache, jobs=args.jobs)
    if progress is not None:
        import sys

        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    data = rep.to_dict()
    out = Path(args.project) / "report.json"
    fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".json", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 -> what the umask gives any file
    os.replace(tmp, out)
    print(json.dumps(data, indent=1) if args.json else rep.table())
    return 0
