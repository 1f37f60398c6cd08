"""``qfx cosim DIR``: cocotb simulation (Verilator or Icarus; RTL or the Yosys gate-level netlist) of a generated RTL
project, compared bit for bit with qfx."""
from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cosim", help="simulate an RTL project (cocotb + Verilator or Icarus, AXI-Stream; RTL or gate-level netlist) "
        "and compare every output bit with qfx",
        description="Build the project's SystemVerilog with the chosen simulator (cached by content), stream N input "
        "vectors (edge values first, then random codes) through its AXI4-Stream ports with random tvalid gaps and "
        "tready stalls, and compare every output code with qfx's golden interpreter. Writes DIR/cosim_report.json. "
        "--sim icarus runs the same testbench under Icarus Verilog (4-state: X and Z propagate). --netlist first "
        "synthesizes the RTL with Yosys (generic synth -flatten, cached) and simulates that gate-level netlist, so a "
        "difference between simulation and synthesis semantics (signedness, widths, X) shows as a mismatch; it runs "
        "under Icarus unless --sim verilator is given. "
        "With --hls-rtl, DIR is an HLS project instead: Vitis HLS synthesizes its AXI-Stream top "
        "(firmware/<top>_axis.cpp; C synthesis only, skipped when the firmware is unchanged) and the same testbench "
        "drives that RTL under Verilator. A design with several inputs or outputs has one AXI4-Stream port per "
        "graph input (s0_axis, s1_axis, ...) and output (m0_axis, ...); each port gets its own random stalls and "
        "random input codes (or --inputs). Exit status: 0 bit-exact, 1 mismatch (X/Z outputs included), 2 bad input "
        "or a design that does not build (the message names the log), 3 missing "
        "Verilator/Icarus/Yosys/cocotb/vitis_hls.")
    p.add_argument("project", metavar="DIR",
                   help="project folder written by 'qfx export --target rtl' (or --target hls with --hls-rtl)")
    p.add_argument("-n", "--vectors", type=int, default=1000, help="number of input vectors (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the vectors and the stall patterns (default 0)")
    p.add_argument("--inputs", metavar="NPZ", default=None,
                   help="input codes to stream instead of random ones: an .npz with one int array (N, *shape) per "
                   "graph input name (np.savez(path, **{name: codes})); a graph with one input also takes a .npy")
    p.add_argument("--no-backpressure", action="store_true", help="no random tvalid gaps or tready stalls")
    p.add_argument("--sim", choices=("verilator", "icarus"), default=None,
                   help="simulator: verilator (2-state, compiled, fast) or icarus (4-state, iverilog -g2012 on "
                   "PATH); default verilator, or icarus with --netlist")
    p.add_argument("--netlist", action="store_true",
                   help="simulate the Yosys gate-level netlist (synth -flatten; yosys on PATH) instead of the RTL")
    p.add_argument("--hls-rtl", action="store_true",
                   help="DIR is an HLS project: synthesize its AXI-Stream top with Vitis HLS (vitis_hls on PATH) "
                   "and simulate that RTL")
    p.add_argument("--resynth", action="store_true", help="with --hls-rtl: run Vitis synthesis even if up to date")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print nothing; only the exit status tells")
    p.epilog = ("examples: qfx cosim rtl_prj -n 2000 --seed 1;  qfx cosim rtl_prj --sim icarus -n 300;  "
                "qfx cosim rtl_prj --netlist -n 300;  qfx cosim hls_prj --hls-rtl -n 500")
    return p


def _rate(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.3g}"


def _summary(rep) -> str:
    lat = rep.latency if rep.latency >= 0 else "unknown"
    what = f"{rep.sim}" + (", gate-level netlist" if rep.netlist else "")
    lines = [f"cosim {rep.top} ({what}): {rep.vectors} vectors, {rep.outputs_compared} outputs compared, "
             f"{rep.mismatches} mismatches ({'bit-exact' if rep.ok else 'MISMATCH'})",
             f"  latency {lat} cycles, one vector per {rep.ii} clock(s), "
             f"back-pressure {'on' if rep.backpressure else 'off'}, seed {rep.seed}, "
             f"build {'cached' if rep.build_cached else f'{rep.build_s:.1f} s'}, simulation {rep.sim_s:.1f} s "
             f"({_rate(rep.vectors_per_s)} vectors/s)"]
    if rep.netlist and "netlist" in rep.extra:
        n = rep.extra["netlist"]
        how = "cached" if n["cached"] else f"synthesized in {n['seconds']:.0f} s"
        lines.append(f"  Yosys netlist {n['path']} ({how})")
    if rep.extra.get("x_outputs"):
        lines.append(f"  {rep.extra['x_outputs']} output code(s) held X or Z bits")
    if rep.x_handshake_cycles:
        lines.append(f"  {rep.x_handshake_cycles} cycle(s) with X or Z on m_axis_tvalid or s_axis_tready")
    if getattr(rep, "tlast_errors", 0):
        lines.append(f"  {rep.tlast_errors} output beat(s) with tlast not on a vector's last beat")
    if "synth_cached" in rep.extra:
        x = rep.extra
        how = "synthesis up to date" if x["synth_cached"] else f"synthesized in {x['synth_s']:.0f} s"
        lines.append(f"  Vitis HLS RTL from {x['verilog']} ({how})")
    if rep.first_mismatch:
        m = rep.first_mismatch
        lines.append(f"  first mismatch: vector {m['vector']}, output index {m['output_index']}: "
                     f"expected {m['expected']}, got {m['got']}")
    if rep.received != rep.vectors:
        lines.append(f"  received {rep.received} of {rep.vectors} output vectors"
                     + (" (timed out)" if rep.timed_out else ""))
    return "\n".join(lines)


def load_inputs(path: str) -> Any:
    """Input codes from ``--inputs``: a ``.npy`` array, or an ``.npz`` mapping of input name -> array (a mapping the
    simulators check against the graph's input names); BadInputError when the file cannot be read."""
    import numpy as np

    from qfx.errors import BadInputError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise BadInputError(f"--inputs {path}: cannot read it as .npy or .npz ({type(exc).__name__})") from None
    if isinstance(data, np.ndarray):
        return data
    with data:
        return {k: data[k] for k in data.files}


def run(args: argparse.Namespace) -> int:
    from qfx.errors import BadInputError

    if args.vectors < 1:
        raise BadInputError(f"-n must be >= 1, got {args.vectors}")
    if args.hls_rtl:
        if args.inputs is not None:
            raise BadInputError("--inputs applies to qfx RTL projects, not with --hls-rtl")
        if args.netlist or args.sim == "icarus":
            raise BadInputError("--netlist and --sim icarus apply to qfx RTL projects, not with --hls-rtl")
        from qfx.sim.hls_rtl import find_vitis_hls, run_hls_rtl_cosim

        find_vitis_hls()  # the missing tool first: its message says how to get it
        rep = run_hls_rtl_cosim(args.project, n_vectors=args.vectors, seed=args.seed,
                                backpressure=not args.no_backpressure, resynth=args.resynth)
    else:
        if args.resynth:
            raise BadInputError("--resynth applies only with --hls-rtl")
        from qfx.sim.cosim import run_cosim

        rep = run_cosim(args.project, n_vectors=args.vectors, seed=args.seed, backpressure=not args.no_backpressure,
                        sim=args.sim, netlist=args.netlist,
                        inputs=None if args.inputs is None else load_inputs(args.inputs))
    if not args.quiet:
        print(json.dumps(rep.to_dict(), indent=1) if args.json else _summary(rep))
    return 0 if rep.ok else 1
