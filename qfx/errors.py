"""Error types: every failure a user can cause is a QfxError with a one-line message.

The CLI maps the classes to exit codes (see ``exit_code``): 1 mismatch, 2 bad input (a model, file or generated
project that cannot be used or built), 3 missing tool (only that).
"""
from __future__ import annotations

__all__ = [
    "QfxError",
    "BadInputError",
    "FormatError",
    "UnsupportedError",
    "OverflowRiskError",
    "MissingToolError",
    "MismatchError",
    "OutputExistsError",
    "BuildError",
    "RunError",
    "HdlBuildError",
    "exit_code",
]


class QfxError(Exception):
    """Base class; ``str(err)`` is a single line fit for a terminal."""

    exit_code = 2


class BadInputError(QfxError, ValueError):
    """A file, argument or model the user gave cannot be used."""


class FormatError(BadInputError):
    """A fixed-point format is impossible or out of the supported range."""


class UnsupportedError(BadInputError):
    """An op, module or feature qfx does not handle (yet)."""


class OverflowRiskError(QfxError, ArithmeticError):
    """An exact integer computation would not fit in int64."""


class OutputExistsError(BadInputError):
    """The output path exists and ``--force`` was not given."""


class MissingToolError(QfxError):
    """A required external tool (g++, Verilator, Yosys, ap_types headers) was not found."""

    exit_code = 3


class MismatchError(QfxError):
    """Two executors disagreed on at least one output bit."""

    exit_code = 1


class BuildError(QfxError):
    """A C++ build (g++) of generated code failed; the message names the first compiler error and the full log's
    path. Exit 2: the project given cannot be built (3 means a missing tool, which is ``MissingToolError``)."""

    exit_code = 2


class RunError(QfxError):
    """A compiled helper program crashed, timed out or wrote unreadable results."""

    exit_code = 3


class HdlBuildError(RunError):
    """A design's HDL did not build (Verilator/g++, Icarus or Yosys refused it); the message names the first error
    and the full log's path. Exit 2: the design given cannot be simulated (never 3, which means a missing tool)."""

    exit_code = 2


def exit_code(err: BaseException) -> int:
    """Exit status the CLI uses for ``err``."""
    return getattr(err, "exit_code", 2) if isinstance(err, QfxError) else 2
