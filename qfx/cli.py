"""The ``qfx`` command. Each subcommand lives in ``qfx/commands/<name>.py`` with ``add_parser`` and ``run``.

Exit codes: 0 ok, 1 mismatch, 2 bad input or usage, 3 missing tool. Errors print one line, never a traceback
(set ``QFX_DEBUG=1`` to see one).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from qfx import __version__
from qfx.errors import QfxError, exit_code

__all__ = ["main", "build_parser", "COMMANDS"]

COMMANDS = ("train", "export", "quantize", "csim", "cosim", "report", "demo")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.exit(2, f"qfx: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="qfx", description="qfx: trainable fixed-point quantization for PyTorch, exported bit-exactly "
                "to Vitis HLS C++ and SystemVerilog.", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"qfx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        modname = f"qfx.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        sp = mod.add_parser(sub)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = args._run(args)
        return int(rc or 0)
    except QfxError as exc:
        if os.environ.get("QFX_DEBUG"):
            raise
        print(f"qfx {args.command}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"qfx {args.command}: interrupted; outputs left as they were", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
