"""``qfx export``: a model (.pt checkpoint, .onnx, IR .json) to ONNX, an HLS project or SystemVerilog."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from qfx.errors import BadInputError, OutputExistsError, UnsupportedError

__all__ = ["add_parser", "run", "export_graph", "check_options", "check_output", "TARGET_OPTIONS"]

EPILOG = """\
examples:
  qfx export model.pt --target onnx -o model.onnx
  qfx export model.onnx --to hls -o hls_prj --part xcu250-figd2104-2L-e --clock-ns 5 --io stream
  qfx export graph.json --target rtl -o rtl_out --register-stages 1 --force
  qfx export brevitas_qonnx.onnx --to onnx -o qfx.onnx --name mlp
  qfx export tfc_2w2a.onnx --to hls -o tfc_hls --input-format 'ap_ufixed<8,0,AP_RND_CONV,AP_SAT>'

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
    o = p.add_argument_group("onnx import options")
    o.add_argument("--input-format", metavar="TYPE",
                   help="fixed-point format of a float ONNX input that no QONNX annotation or Quant node gives, "
                   "e.g. 'ap_fixed<8,3>' or 'ap_ufixed<8,0,AP_RND_CONV,AP_SAT>' (float inputs are rounded and "
                   "saturated with its modes)")
    h = p.add_argument_group("hls options")
    h.add_argument("--part", help="FPGA part (HLS project)")
    h.add_argument("--clock-ns", type=float, help="clock period in ns (HLS project)")
    h.add_argument("--reuse-factor", type=int, help="multiplier reuse factor (HLS; RTL: dense layers fold by it, "
                   "capped at each layer's input count)")
    h.add_argument("--io", choices=("parallel", "stream"), help="HLS interface style")
    r = p.add_argument_group("rtl options")
    r.add_argument("--register-stages", type=int, help="pipeline register stages (RTL)")
    r.add_argument("--conv-style", choices=("pixel", "parallel"),
                   help="RTL convolutions: 'pixel' (default) computes one output pixel per clock with one adder "
                   "graph per layer (one vector every H*W clocks); 'parallel' unrolls every pixel (one vector per "
                   "clock, size grows with the image)")
    r.add_argument("--target-ii", type=int, metavar="N",
                   help="RTL: fold each dense layer by the largest reuse factor R <= N that divides its input count")
    r.add_argument("--rtl-io", choices=("vector", "stream"),
                   help="RTL interface: 'vector' (default) one whole tensor per beat; 'stream' one pixel per beat "
                   "through line buffers (convolutional models)")
    r.add_argument("--verbose", "-v", action="store_true", help="RTL: one progress line per layer on stderr")
    return p


def _options(args: argparse.Namespace) -> dict:
    given = {k: getattr(args, k) for k in ("part", "clock_ns", "reuse_factor", "io", "register_stages", "conv_style",
                                           "target_ii") if getattr(args, k, None) is not None}
    if getattr(args, "rtl_io", None) is not None:  # the RTL writer's ``io``; other targets refuse it by name
        given["io" if args.target == "rtl" else "rtl_io"] = args.rtl_io
    options = check_options(args.target, given, cli=True)
    check_output(args.target, Path(args.output).expanduser().absolute(), args.force)
    return options


#: options each target's writer takes (the CLI flags are the first ones, with '-' for '_')
TARGET_OPTIONS: dict[str, tuple[str, ...]] = {
    "onnx": (),
    "hls": ("part", "clock_ns", "reuse_factor", "io", "top_name", "tb_vectors"),
    "rtl": ("register_stages", "conv_style", "top_name", "adder", "reuse_factor", "target_ii", "progress", "io"),
}


def check_options(target: str, options: Mapping[str, Any], cli: bool = False) -> dict[str, Any]:
    """Refuse unknown options and impossible values before any work, so a bad ``--clock-ns`` is reported before
    the model is loaded and the pass report printed (``cli`` names flags as ``--clock-ns``)."""
    def label(k: str) -> str:
        return "--" + k.replace("_", "-") if cli else k

    if target not in TARGET_OPTIONS:
        raise BadInputError(f"unknown target {target!r}; choose one of {', '.join(TARGET_OPTIONS)}")
    allowed = TARGET_OPTIONS[target]
    wrong = [k for k in options if k not in allowed]
    if wrong:
        names = ", ".join(label(k) for k in wrong)
        takes = ", ".join(label(k) for k in allowed) or "none"
        raise BadInputError(f"{names} do(es) not apply to {'--target ' if cli else 'target '}{target} (it takes: "
                            f"{takes})")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for k, v in options.items():
        bad = None
        if k == "clock_ns" and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6):
            bad = "a positive number of ns"
        elif k == "reuse_factor" and not (is_int(v) and v >= 1) and not (
                isinstance(v, Mapping) and all(is_int(r) and r >= 1 for r in v.values())):
            bad = "an integer >= 1 (or, in Python, a dict of node name -> integer >= 1)"
        elif k == "register_stages" and v not in (0, 1):
            bad = "0 (combinational) or 1 (one register stage per layer)"
        elif k in ("tb_vectors", "target_ii") and not (is_int(v) and v >= 1):
            bad = "an integer >= 1"
        elif k == "part" and (not isinstance(v, str) or not v or any(ch.isspace() or ch in "{}[]$\\\";" for ch in v)):
            bad = "an FPGA part name (no spaces or shell/Tcl characters)"
        elif k == "top_name" and not isinstance(v, str):
            bad = "a string"
        elif k in ("io", "conv_style", "adder"):
            from qfx.backends.hls import IO_MODES
            from qfx.backends.rtl_design import ADDER_MODES, CONV_STYLES

            from qfx.backends.rtl_stream import IO_MODES as RTL_IO_MODES

            choices = {"io": RTL_IO_MODES if target == "rtl" else IO_MODES, "conv_style": CONV_STYLES,
                       "adder": ADDER_MODES}[k]
            if v not in choices:
                bad = f"one of {', '.join(choices)}"
        if bad:
            raise BadInputError(f"{label(k)} must be {bad}, got {v!r}")
    return dict(options)


def check_output(target: str, out: Path, force: bool) -> None:
    """Refuse an existing output without ``force`` and an ONNX file name that does not end in ``.onnx``."""
    if out.exists() and not force:
        raise OutputExistsError(f"output {out} already exists (use --force to replace it)")
    if target == "onnx" and out.suffix.lower() != ".onnx":
        raise BadInputError(f"ONNX output {out.name!r} must end in .onnx (the IR JSON is written by "
                            "qfx.ir.from_torch.capture(model, x).save('model.json'))")


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
    options = check_options(target, options)
    check_output(target, out, force)
    if target == "onnx":
        from qfx.onnx.export import export_onnx

        return export_onnx(graph, out, force=force)
    write_project = _backend(target)
    from qfx.outdir import atomic_output_dir

    with atomic_output_dir(out, force=force) as tmp:
        write_project(graph, Path(tmp), **options)
    return out


def _load(args: argparse.Namespace):
    """The model as a Graph; ``--input-format`` goes to the ONNX importer (other model files state their formats)."""
    from qfx.ir.load import load_graph

    fmt = getattr(args, "input_format", None)
    if fmt is None:
        return load_graph(args.model, name=args.name)
    from qfx.fixed.format import FxFormat

    fin = FxFormat.parse(fmt)
    p = Path(args.model).expanduser()
    if p.suffix.lower() != ".onnx":
        raise BadInputError(f"--input-format applies to .onnx models only; {p.name} states its own formats")
    if not p.is_file():
        raise BadInputError(f"model file {p} does not exist")
    from qfx.onnx.importer import import_onnx

    g = import_onnx(p, input_fmt=fin)
    return g.replace(name=args.name) if args.name else g


def run(args: argparse.Namespace) -> int:
    from qfx.ir.passes import DEFAULT_FLOW, run_flow, summary

    options = _options(args)
    out = Path(args.output).expanduser().absolute()
    if out.exists() and not args.force:  # refuse early, before any work
        raise OutputExistsError(f"output {out} already exists (use --force to replace it)")
    graph = _load(args)
    res = run_flow(graph, DEFAULT_FLOW)
    if not args.quiet:
        for line in graph.meta.get("import_report", ()):
            print(f"[onnx import] {line}")
        print(res.text())
        print(summary(res.graph))
    if args.target == "rtl" and (getattr(args, "verbose", False) or not args.quiet):
        # --verbose: a line per layer; otherwise (not --quiet) only layers that took over 2 s
        options["progress"] = _progress if getattr(args, "verbose", False) else _slow_progress
    path = export_graph(res.graph, args.target, out, force=args.force, **options)
    print(f"wrote {args.target} export of {res.graph.name!r} to {path}", file=sys.stdout)
    return 0


def _progress(line: str, seconds: float) -> None:
    print(line, file=sys.stderr, flush=True)


def _slow_progress(line: str, seconds: float) -> None:
    """Only layers that took over 2 s: small models export quietly, big ones show they are alive."""
    if seconds > 2.0:
        print(line, file=sys.stderr, flush=True)
