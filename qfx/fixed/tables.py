"""Lookup tables of non-linear functions, defined once from the input and output formats.

A table holds, for every code of the input format (in order from ``min_code``), the output format's code of
``fn(value)``: the float64 function value converted exactly as ap_fixed converts a double (the output format's
rounding and overflow). The interpreter, ONNX (Gather), HLS (a ROM array) and RTL (a ROM) all read this one
table, so they cannot disagree; train mode applies the float function (with the output fake-quantizer).

Function specs are strings: a name, optionally with one float parameter, e.g. ``"sigmoid"``, ``"leaky_relu(0.01)"``;
the two-branch ``select_gt(c,ka,ca,kb,cb)`` (and ge/lt/le) is ``torch.where(x > c, ka*x + ca, kb*x + cb)``.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import numpy as np

from qfx.errors import BadInputError, FormatError
from qfx.fixed.format import FxFormat

__all__ = ["index_table", "FUNCTIONS", "COMPOSITE_FUNCTIONS", "MAX_TABLE_BITS", "parse_fn", "evaluate", "build_table",
           "select_spec", "SELECT_OPS"]

#: widest input format a table covers (2**12 entries); wider inputs are requantized first by the layer
MAX_TABLE_BITS = 12


def _gelu(x: np.ndarray, _: float) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _sigmoid(x: np.ndarray, _: float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


#: name -> (function of (values, parameter), default parameter)
FUNCTIONS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], float]] = {
    "sigmoid": (_sigmoid, 0.0),
    "tanh": (lambda x, _: np.tanh(x), 0.0),
    "silu": (lambda x, _: x * _sigmoid(x, 0.0), 0.0),
    "gelu": (_gelu, 0.0),
    "hardsigmoid": (lambda x, _: np.clip(x / 6.0 + 0.5, 0.0, 1.0), 0.0),
    "hardswish": (lambda x, _: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0, 0.0),
    "leaky_relu": (lambda x, a: np.where(x >= 0, x, a * x), 0.01),
    "elu": (lambda x, a: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0))), 1.0),
    "softplus": (lambda x, _: np.logaddexp(0.0, x), 0.0),
    "exp": (lambda x, _: np.exp(np.minimum(x, 700.0)), 0.0),
    "reciprocal": (lambda x, _: np.where(x != 0, 1.0 / np.where(x != 0, x, 1.0), np.inf), 0.0),
    "sqrt": (lambda x, _: np.sqrt(np.maximum(x, 0.0)), 0.0),
}

#: tables added after the random op and graph samplers were pinned (they draw from FUNCTIONS by index, so new
#: entries there would change every seeded graph): composite layers' log(max(p, floor)) and 1 / sqrt(var + eps),
#: Mish, SELU, LogSigmoid, Softsign and the shrinkage functions
COMPOSITE_FUNCTIONS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], float]] = {
    "log": (lambda x, a: np.log(np.maximum(x, a)), 2.0 ** -24),
    "rsqrt": (lambda x, e: 1.0 / np.sqrt(np.maximum(x, 0.0) + e), 1e-5),
    "mish": (lambda x, _: x * np.tanh(np.logaddexp(0.0, x)), 0.0),
    "selu": (lambda x, _: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0.0))),
             0.0),
    "logsigmoid": (lambda x, _: -np.logaddexp(0.0, -x), 0.0),
    "softsign": (lambda x, _: x / (1.0 + np.abs(x)), 0.0),
    "hardshrink": (lambda x, a: np.where(np.abs(x) > a, x, 0.0), 0.5),
    "softshrink": (lambda x, a: np.where(x > a, x - a, np.where(x < -a, x + a, 0.0)), 0.5),
    "tanhshrink": (lambda x, _: x - np.tanh(x), 0.0),
}


def _function(name: str) -> tuple[Callable[[np.ndarray, float], np.ndarray], float] | None:
    return FUNCTIONS.get(name) or COMPOSITE_FUNCTIONS.get(name)


_SPEC = re.compile(r"^([a-z_]+)(?:\(([-+0-9.eE]+)\))?$")
_NUM = r"[-+0-9.eEinfa]+"
#: ``select_gt(c,ka,ca,kb,cb)``: ``ka*x + ca`` where ``x > c``, else ``kb*x + cb`` (``torch.where(x > 0, x, 0.1 * x)``,
#: ``x.masked_fill(x < t, v)``, ONNX Where of a comparison): the comparison and both branches as one table
_SELECT = re.compile(rf"^select_(gt|ge|lt|le)\(({_NUM}(?:,{_NUM}){{4}})\)$")
SELECT_OPS: dict[str, Callable[[Any, Any], Any]] = {"gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
                                                    "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}


def select_spec(op: str, c: float, ka: float, ca: float, kb: float, cb: float) -> str:
    """The spec of a two-branch table (see ``_SELECT``); ``op`` one of gt, ge, lt, le."""
    return f"select_{op}({','.join(repr(float(v)) for v in (c, ka, ca, kb, cb))})"


def _select(x: np.ndarray, op: str, p: tuple[float, ...]) -> np.ndarray:
    c, ka, ca, kb, cb = p
    return np.where(SELECT_OPS[op](x, c), ka * x + ca, kb * x + cb)


def parse_fn(spec: str) -> tuple[str, Any]:
    """``"leaky_relu(0.1)"`` -> ("leaky_relu", 0.1); ``select_*`` specs -> (name, 5-tuple); one-line BadInputError
    for an unknown name."""
    ms = _SELECT.match(spec.strip()) if isinstance(spec, str) else None
    if ms:
        vals = tuple(float(v) for v in ms.group(2).split(","))
        if not all(np.isfinite(vals)):
            raise BadInputError(f"table function {spec!r} has a non-finite parameter")
        return f"select_{ms.group(1)}", vals
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if not m or _function(m.group(1)) is None:
        raise BadInputError(f"unknown table function {spec!r}; known: "
                            f"{', '.join(sorted(FUNCTIONS) + sorted(COMPOSITE_FUNCTIONS))}")
    name = m.group(1)
    return name, float(m.group(2)) if m.group(2) is not None else _function(name)[1]  # type: ignore[index]


def evaluate(spec: str, values: np.ndarray) -> np.ndarray:
    """The float64 function the table samples (also the reference for error measurements)."""
    name, p = parse_fn(spec)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if name.startswith("select_"):
            return _select(np.asarray(values, dtype=np.float64), name[7:], p)
        return _function(name)[0](np.asarray(values, dtype=np.float64), p)  # type: ignore[index]


def build_table(spec: str, in_fmt: FxFormat, out_fmt: FxFormat) -> np.ndarray:
    """Output codes of ``fn`` at every input code, ``in_fmt.min_code`` first (int64, length 2**in_fmt.width)."""
    if in_fmt.width > MAX_TABLE_BITS:
        raise FormatError(f"a {spec} table over {in_fmt.ap_type()} needs 2**{in_fmt.width} entries; requantize "
                          f"the input to at most {MAX_TABLE_BITS} bits first")
    codes = np.arange(in_fmt.min_code, in_fmt.max_code + 1, dtype=np.int64)
    y = evaluate(spec, in_fmt.from_int(codes))
    y = np.nan_to_num(y, nan=0.0, posinf=np.finfo(np.float64).max, neginf=-np.finfo(np.float64).max)
    return np.asarray(out_fmt.to_int(y), dtype=np.int64)


def index_table(weight_codes: np.ndarray, in_fmt: FxFormat) -> np.ndarray:
    """(codes of in_fmt, columns) table: row c holds the weight row of index value(c) when that value is an integer
    in [0, rows), else zeros (torch would raise; the hardware reads a zero vector)."""
    codes = np.arange(in_fmt.min_code, in_fmt.max_code + 1, dtype=np.int64)
    vals = in_fmt.from_int(codes)
    rows = weight_codes.shape[0]
    ok = (vals == np.floor(vals)) & (vals >= 0) & (vals < rows)
    out = np.zeros((codes.size, weight_codes.shape[1]), dtype=np.int64)
    out[ok] = weight_codes[vals[ok].astype(np.int64)]
    return out
