"""``qfx export``: a model (.pt checkpoint, .onnx, IR .json) to ONNX, an HLS project or SystemVerilog."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from qfx.errors import BadInputError, OutputExistsError, UnsupportedError

__all__ = ["add_parser", "run", "export_graph"]

EPILOG = """\
examples:
  qfx export model.pt --target onnx -o model.onnx
  qfx export model.onnx --to hls -o hls_prj --part xcu250-figd2104-2L-e --clock-ns 5 --io stream
  qfx export graph.json --target rtl -o rtl_out --register-stages 1 --force
  qfx export brevitas_qonnx.onnx --to onnx -o qfx.onnx --name mlp

The pass flow (format checks, dead-node removal, accumulator sizing, exact BN folding) runs first; its report is
printed. Outputs are written atomically: nothing is left behind on failure, and an existing output is replaced
only with --force.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="export a model to ONNX, an HLS project or SystemVerilog",
                              description="Export a qfx model (.pt checkpoint, .onnx, IR .json) bit-exactly.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model file: .pt/.pth (qfx checkpoint), .onnx (qfx or QONNX), .json (qfx IR)")
    p.add_argument("--target", "--to", dest="target", required=True, choices=("onnx", "hls", "rtl"),
                   help="what to write")
    p.add_argument("-o", "--output", required=True, help="output file (onnx) or folder (hls, rtl)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--name", help="model name to use in the output (default: from the model)")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the pass report and summary")
    h = p.add_argument_group("hls options")
    h.add_argument("--part", help="FPGA part (HLS project)")
    h.add_argument("--clock-ns", type=float, help="clock period in ns (HLS project)")
    h.add_argument("--reuse-factor", type=int, help="multiplier reuse factor (HLS)")
    h.add_argument("--io", choices=("parallel", "stream"), help="HLS interface style")
    r = p.add_argument_group("rtl options")
    r.add_argument("--register-stages", type=int, help="pipeline register stages (RTL)")
    r.add_argument("--conv-style", choices=("pixel", "parallel"),
                   help="RTL convolutions: 'pixel' (default) computes one output pixel per clock with one adder "
                   "graph per layer (one vector every H*W clocks); 'parallel' unrolls every pixel (one vector per "
                   "clock, size grows with the image)")
    return p


def _options(args: argparse.Namespace) -> dict:
    keys = {"hls": ("part", "clock_ns", "reuse_factor", "io"), "rtl": ("register_stages", "conv_style")}
    given = {k: getattr(args, k) for k in ("part", "clock_ns", "reuse_factor", "io", "register_stages", "conv_style")
             if getattr(args, k, None) is not None}
    allowed = keys.get(args.target, ())
    wrong = [k for k in given if k not in allowed]
    if wrong:
        flags = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise BadInputError(f"{flags} do(es) not apply to --target {args.target}")
    return given


def _backend(target: str):
    modname = f"qfx.backends.{target}"
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == modname or modname.startswith(exc.name + ".") or exc.name == "qfx.backends"):
            raise UnsupportedError(f"target {target!r} not available ({modname} is not installed)") from None
        raise
    fn = getattr(mod, "write_project", None)
    if fn is None:
        raise UnsupportedError(f"target {target!r} not available ({modname} has no write_project)")
    return fn


def export_graph(graph, target: str, output: str | os.PathLike[str], force: bool = False, **options) -> Path:
    """Write ``graph`` (already through the pass flow) to ``output`` for ``target``; atomic; returns the path."""
    out = Path(output).expanduser().absolute()
    if target == "onnx":
        if options:
            raise BadInputError(f"options {sorted(options)} do not apply to ONNX export")
        if out.exists() and not force:
            raise OutputExistsError(f"output {out} already exists (use --force to replace it)")
        from qfx.onnx.export import export_onnx

        return export_onnx(graph, out, force=force)
    write_project = _backend(target)
    from qfx.outdir import atomic_output_dir

    with atomic_output_dir(out, force=force) as tmp:
        write_project(graph, Path(tmp), **options)
    return out


def run(args: argparse.Namespace) -> int:
    from qfx.ir.load import load_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow, summary

    options = _options(args)
    out = Path(args.output).expanduser().absolute()
    if out.exists() and not args.force:  # refuse early, before any work
        raise OutputExistsError(f"output {out} already exists (use --force to replace it)")
    graph = load_graph(args.model, name=args.name)
    res = run_flow(graph, DEFAULT_FLOW)
    if not args.quiet:
        print(res.text())
        print(summary(res.graph))
    path = export_graph(res.graph, args.target, out, force=args.force, **options)
    print(f"wrote {args.target} export of {res.graph.name!r} to {path}", file=sys.stdout)
    return 0


