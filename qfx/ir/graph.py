"""The qfx IR: a flat, immutable, serializable list of fixed-point ops in topological order.

Every tensor has an explicit ``FxFormat``; constants are int64 codes with their format; accumulators are explicit
and lossless. Semantics of each op are those of ``qfx.fixed.ops`` (exact intermediate, one cast to the output
format). Per-sample shapes exclude the batch dimension; images are CHW, flattening is C-order (torch's).

Ops are defined in the registry ``qfx.ops`` (one ``OpDef`` per op: schema, shape and accumulator rules, golden
function, categories); ``Graph.validate`` checks every node against its op's schema. ``python -m qfx.ops`` prints
the op reference.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import numpy as np

from qfx import ops as _ops
from qfx.errors import BadInputError, FormatError, UnsupportedError
from qfx.fixed.format import FxFormat

__all__ = ["Op", "op_def", "TensorSpec", "Constant", "Node", "Graph", "IR_VERSION"]

IR_VERSION = 1
_NAME_RE = re.compile(r"^[^\x00-\x1f]{1,200}$")


class OpName(str):
    """An op's name (a registry key). ``.value`` is the name, as for an enum member; instances are cached per name,
    so ``Op("dense") is Op.DENSE`` holds."""

    __slots__ = ()

    @property
    def value(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"Op.{self.upper()}"

    def __reduce__(self):  # pickles as the registry lookup
        return (Op, (str(self),))


_OP_NAMES: dict[str, OpName] = {}


class _OpMeta(type):
    """``Op.DENSE`` / ``Op("dense")`` look the registry up at call time, so an op registered after this module
    was imported (a plugin, a test's throwaway op) works like a built-in one."""

    def __call__(cls, value: Any) -> OpName:
        name = str(getattr(value, "value", value))
        if name not in _ops.REGISTRY:
            raise ValueError(f"{name!r} is not a registered op")
        op = _OP_NAMES.get(name)
        if op is None:
            op = _OP_NAMES[name] = OpName(name)
        return op

    def __getattr__(cls, attr: str) -> OpName:
        if attr.isupper() and attr.lower() in _ops.REGISTRY:
            return cls(attr.lower())
        raise AttributeError(attr)

    def __iter__(cls):
        return iter([cls(n) for n in _ops.names()])


class Op(metaclass=_OpMeta):
    """IR op names; ``Op.DENSE`` and ``Op("dense")`` give the cached ``OpName`` of a registered op (``qfx.ops``)."""


def op_def(op: "Op | str") -> "_ops.OpDef":
    """The registry entry of an op (by enum member or name)."""
    return _ops.get(op)


@dataclass(frozen=True)
class TensorSpec:
    """A named activation tensor: per-sample shape and its fixed-point format."""

    name: str
    shape: tuple[int, ...]
    fmt: FxFormat

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s < 1 for s in self.shape):
            raise BadInputError(f"tensor {self.name!r} has a non-positive dimension in shape {self.shape}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class Constant:
    """Integer codes of a constant (weights, bias, BN scale/shift) in one format; read-only."""

    codes: np.ndarray
    fmt: FxFormat

    def __post_init__(self) -> None:
        c = np.array(self.codes, dtype=np.int64, copy=True)
        if c.size and (c.min() < self.fmt.min_code or c.max() > self.fmt.max_code):
            raise FormatError(f"constant codes out of range for {self.fmt.ap_type()}")
        c.setflags(write=False)
        object.__setattr__(self, "codes", c)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Constant) and self.fmt == other.fmt and np.array_equal(self.codes, other.codes) \
            and self.codes.shape == other.codes.shape

    def values(self) -> np.ndarray:
        return self.fmt.from_int(self.codes)


def _freeze(d: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True)
class Node:
    """One op. ``inputs``/``output`` name tensors of the graph; ``source`` is the torch module path it came from."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    consts: Mapping[str, Constant] = field(default_factory=dict)
    attrs: Mapping[str, Any] = field(default_factory=dict)
    acc_fmt: FxFormat | None = None
    source: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "op", Op(self.op))
        except ValueError:
            raise UnsupportedError(f"node {self.name!r}: unknown op {self.op!r}; known ops: "
                                   f"{', '.join(_ops.names())}") from None
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "consts", _freeze(self.consts))
        object.__setattr__(self, "attrs", _freeze({k: _norm_attr(v) for k, v in (self.attrs or {}).items()}))

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def replace(self, **kw: Any) -> "Node":
        return replace(self, **kw)


def _norm_attr(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_norm_attr(x) for x in v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (bool, int, str, float)) or v is None:
        return v
    raise BadInputError(f"unsupported attribute value {v!r}")


@dataclass(frozen=True)
class Graph:
    """A whole model: inputs, outputs, every tensor's spec and the nodes in topological order."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    tensors: Mapping[str, TensorSpec]
    nodes: tuple[Node, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "tensors", _freeze(self.tensors))
        object.__setattr__(self, "meta", _freeze(self.meta))

    # ------------------------------------------------------------ queries
    def tensor(self, name: str) -> TensorSpec:
        try:
            return self.tensors[name]
        except KeyError:
            raise BadInputError(f"graph {self.name!r} has no tensor {name!r}") from None

    def producer(self, tensor: str) -> Node | None:
        return next((n for n in self.nodes if n.output == tensor), None)

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise BadInputError(f"graph {self.name!r} has no node {name!r}")

    def replace(self, **kw: Any) -> "Graph":
        return replace(self, **kw)

    # ------------------------------------------------------------ validation
    def validate(self) -> "Graph":
        """Check structure (names, topological order, op arity, constants, formats); returns self."""
        seen_nodes: set[str] = set()
        defined = set(self.inputs)
        for t in self.inputs:
            self.tensor(t)
        for n in self.nodes:
            if not n.name or not _NAME_RE.match(n.name):
                raise BadInputError(f"invalid node name {n.name!r}")
            if n.name in seen_nodes:
                raise BadInputError(f"duplicate node name {n.name!r}")
            seen_nodes.add(n.name)
            op_def(n.op).validate_node(n)
            for t in n.inputs:
                if t not in defined:
                    raise BadInputError(f"node {n.name!r} reads tensor {t!r} before it is defined")
                self.tensor(t)
            if n.output in defined:
                raise BadInputError(f"tensor {n.output!r} is written twice")
            self.tensor(n.output)
            defined.add(n.output)
        for t in self.outputs:
            if t not in defined:
                raise BadInputError(f"graph output {t!r} is never computed")
        return self

    # ------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        return {
            "qfx_ir_version": IR_VERSION,
            "name": self.name,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "meta": dict(self.meta),
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "fmt": t.fmt.to_dict()} for t in self.tensors.values()
            ],
            "nodes": [
                {
                    "name": n.name,
                    "op": n.op.value,
                    "inputs": list(n.inputs),
                    "output": n.output,
                    "source": n.source,
                    "attrs": {k: list(v) if isinstance(v, tuple) else v for k, v in n.attrs.items()},
                    "acc_fmt": n.acc_fmt.to_dict() if n.acc_fmt else None,
                    "consts": {
                        k: {"shape": list(c.codes.shape), "fmt": c.fmt.to_dict(),
                            # decimal strings: exact for any int64, readable, diff-able
                            "codes": [str(int(v)) for v in c.codes.reshape(-1)]}
                        for k, c in n.consts.items()
                    },
                }
                for n in self.nodes
            ],
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "Graph":
        try:
            if d.get("qfx_ir_version") != IR_VERSION:
                raise BadInputError(f"unsupported qfx IR version {d.get('qfx_ir_version')!r} (expected {IR_VERSION})")
            tensors = {}
            for t in d["tensors"]:
                tensors[t["name"]] = TensorSpec(t["name"], tuple(t["shape"]), FxFormat.from_dict(t["fmt"]))
            nodes = []
            for n in d["nodes"]:
                consts = {}
                for k, c in n.get("consts", {}).items():
                    codes = np.array([int(v) for v in c["codes"]], dtype=np.int64).reshape(c["shape"])
                    consts[k] = Constant(codes, FxFormat.from_dict(c["fmt"]))
                acc = FxFormat.from_dict(n["acc_fmt"]) if n.get("acc_fmt") else None
                nodes.append(Node(n["name"], Op(n["op"]), tuple(n["inputs"]), n["output"], consts,
                                  n.get("attrs", {}), acc, n.get("source", "")))
            g = cls(d["name"], tuple(d["inputs"]), tuple(d["outputs"]), tensors, tuple(nodes), d.get("meta", {}))
        except BadInputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"malformed qfx IR JSON: {type(exc).__name__}: {exc}") from None
        return g.validate()

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"not a qfx IR JSON file: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(d, dict):
            raise BadInputError("not a qfx IR JSON file: top level is not an object")
        return cls.from_json_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read IR file {path}: {exc}") from None
        return cls.from_json(text)


def topo_names(nodes: Iterable[Node]) -> list[str]:
    return [n.name for n in nodes]
