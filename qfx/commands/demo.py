"""``qfx demo``: the whole flow on the bundled digits data (train, quantize, export, prove bit-exactness, report)."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  qfx demo                                  # everything, into ./qfx_demo (about 3-5 minutes on 2 cores)
  qfx demo -o out --force --bits 6 --khot 2
  qfx demo --model mlp -o mlp_demo          # small enough for RTL co-simulation and Yosys in the 5 minutes
  qfx demo --epochs 2 --float-epochs 3 --vectors 500 --skip sweep,resources --quiet

Stages that need a tool which is not installed (g++ for C simulation, Verilator for RTL co-simulation, Yosys for
resources) print "skipped: <why>" with an install hint; the demo still completes. Exit status: 0 bit-exact at every
level that ran, 1 a mismatch (or a check that could not complete), 2 bad input (e.g. the output exists without
--force). The output folder is written atomically: DIR/report.html, summary.json, model.pt/.json/.onnx, hls/, rtl/.
"""


def _widths(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "off"):
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 4,6, got {text!r}") from None


def _stages(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from qfx.demo import DemoConfig

    d = DemoConfig()
    p = subparsers.add_parser(
        "demo", help="train, quantize, export and verify a digits CNN end to end; writes report.html",
        description="Train a float CNN and a fixed-point CNN (learned binary points) on the bundled digits data, "
        "compare with post-training quantization, export ONNX + HLS + RTL, check every output bit of onnxruntime, "
        "C simulation and RTL co-simulation against the golden interpreter, estimate resources with Yosys, and "
        "write one summary, summary.json and a self-contained report.html.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="qfx_demo", help="output folder (default: ./qfx_demo)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--bits", type=int, default=d.bits, help=f"width W of weights/activations (default {d.bits})")
    p.add_argument("--khot", type=int, default=None, help="K-hot weights: at most K signed power-of-two terms")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"QAT fine-tuning epochs (default {d.epochs})")
    p.add_argument("--float-epochs", type=int, default=d.float_epochs,
                   help=f"float pre-training epochs (default {d.float_epochs})")
    p.add_argument("--sweep", type=_widths, default=d.sweep_bits, metavar="W,W",
                   help="extra widths for the accuracy-vs-bits plot, QAT and PTQ each (default "
                   f"{','.join(map(str, d.sweep_bits))}; 'none' to skip)")
    p.add_argument("--sweep-epochs", type=int, default=None, help="QAT epochs of the sweep widths (default: --epochs)")
    p.add_argument("--vectors", type=int, default=d.vectors,
                   help=f"input vectors checked at every level (default {d.vectors}: test images, then random)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of training and random vectors (default 0)")
    p.add_argument("--skip", type=_stages, default=(), metavar="STAGE,...",
                   help="leave stages out: onnx, csim, rtl, resources, sweep")
    p.add_argument("--synth-timeout", type=float, default=d.synth_timeout,
                   help=f"seconds Yosys may take before the resource stage is skipped (default {d.synth_timeout:g})")
    p.add_argument("--model", choices=("cnn", "mlp"), default=d.model,
                   help="digits model: cnn (conv + residual block) or mlp (64-64-32-10); default cnn")
    p.add_argument("--rtl-max-products", type=int, default=d.rtl_max_products,
                   help="skip RTL co-simulation and Yosys when the RTL design has more constant products "
                   f"(default {d.rtl_max_products:,})")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: 2, or 1 when the load average leaves less than 2 cores free)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines (the summary is still printed)")
    p.add_argument("--json", action="store_true", help="print summary.json instead of the text summary")
    return p


def _interrupt(signum, frame):  # SIGTERM unwinds like Ctrl-C: the temporary output folder is removed
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal

    from qfx.demo import DemoConfig, run_demo

    try:
        signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (embedded use): keep the default
        pass

    cfg = DemoConfig(output=args.output, force=args.force, bits=args.bits, khot=args.khot, epochs=args.epochs,
                     float_epochs=args.float_epochs, sweep_bits=tuple(args.sweep), sweep_epochs=args.sweep_epochs,
                     vectors=args.vectors, seed=args.seed, quiet=args.quiet, skip=tuple(args.skip),
                     synth_timeout=args.synth_timeout, threads=args.threads, model=args.model,
                     rtl_max_products=args.rtl_max_products)
    res = run_demo(cfg)
    if args.json:
        print(json.dumps(res.summary, indent=1))
    else:
        print(res.text)
    sys.stdout.flush()
    return res.exit_code
