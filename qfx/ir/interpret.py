"""Golden interpreter: executes a ``Graph`` on int64 codes, batched and vectorised, through each op's golden
function in the registry (``qfx.ops``, which calls ``qfx.fixed.ops``).

Generated C++ and RTL are compared with this, bit for bit.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from qfx.errors import BadInputError
from qfx.ir.graph import Graph, Node, op_def

__all__ = ["run", "run_all", "random_inputs", "edge_inputs", "FULL_EDGES"]

Env = dict[str, np.ndarray]


def _exec(g: Graph, n: Node, env: Env) -> np.ndarray:
    """One node through its op's golden function (``qfx.ops``)."""
    xs = [env[t] for t in n.inputs]
    fin = [g.tensor(t).fmt for t in n.inputs]
    return op_def(n.op).golden(g, n, xs, fin, g.tensor(n.output).fmt)


def run_all(graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray],
            hook: Callable[[Node, np.ndarray], None] | None = None) -> Env:
    """Every tensor's codes (batch-first) for input codes; ``inputs`` is an array for single-input graphs."""
    if not isinstance(inputs, Mapping):
        if len(graph.inputs) != 1:
            raise BadInputError(f"graph {graph.name!r} has {len(graph.inputs)} inputs; pass a dict of arrays")
        inputs = {graph.inputs[0]: inputs}
    env: Env = {}
    for name in graph.inputs:
        if name not in inputs:
            raise BadInputError(f"missing graph input {name!r}")
        spec = graph.tensor(name)
        x = np.asarray(inputs[name])
        if not np.issubdtype(x.dtype, np.integer):
            raise BadInputError(f"input {name!r} must hold integer codes, got dtype {x.dtype}")
        x = x.astype(np.int64, copy=False)
        if x.shape[1:] != spec.shape:
            if x.shape == spec.shape:
                x = x[None]
            else:
                raise BadInputError(f"input {name!r} has shape {x.shape[1:]} per sample, expected {spec.shape}")
        if x.size and (x.min() < spec.fmt.min_code or x.max() > spec.fmt.max_code):
            raise BadInputError(f"input {name!r} holds codes outside {spec.fmt.ap_type()}")
        env[name] = x
    for n in graph.nodes:
        y = _exec(graph, n, env)
        env[n.output] = y
        if hook:
            hook(n, y)
    return env


def run(graph: Graph, inputs: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
    """Output codes: an array for single-output graphs, else a dict by output name."""
    env = run_all(graph, inputs)
    if len(graph.outputs) == 1:
        return env[graph.outputs[0]]
    return {o: env[o] for o in graph.outputs}


#: ``graph.meta["edge_inputs"]`` value that asks for the extended edge set (``random_graph(informative=True)`` sets
#: it, so C simulation, co-simulation and the HLS testbench, which all draw through ``random_inputs``, agree)
FULL_EDGES = "full"


def edge_inputs(graph: Graph, full: bool | None = None) -> np.ndarray:
    """Input vectors at the edges of the input format: all max, all min, all zero, +1 step, -1 step, alternating.

    ``full`` (default: ``graph.meta["edge_inputs"] == "full"``) appends vectors that reach what uniform random codes
    rarely do: the alternation the other way round, max - 1 and min + 1 steps, a ramp from min to max across the
    elements, one-hot max / min (a single weight or window tap visible alone), and three rows of rounding ties
    (every code an odd multiple of 2**(k-1) for k = 1, 2, 3: a tie whenever the first cast drops k bits). The
    default set is unchanged, so generated testbench vectors of existing graphs stay byte-identical.
    """
    spec = graph.tensor(graph.inputs[0])
    f = spec.fmt
    vals = [f.max_code, f.min_code, 0, min(1, f.max_code), max(-1, f.min_code)]
    rows = [np.full(spec.shape, v, dtype=np.int64) for v in vals]
    even = np.arange(spec.size) % 2 == 0
    alt = np.where(even, f.max_code, f.min_code).reshape(spec.shape).astype(np.int64)
    rows.append(alt)
    if full is None:
        full = graph.meta.get("edge_inputs") == FULL_EDGES
    if full:
        lo, hi = f.min_code, f.max_code
        rows.append(np.where(even, lo, hi).reshape(spec.shape).astype(np.int64))
        rows += [np.full(spec.shape, v, dtype=np.int64) for v in (max(hi - 1, lo), min(lo + 1, hi))]
        ramp = np.round(np.linspace(lo, hi, spec.size)).astype(np.int64) if spec.size > 1 else np.array([hi])
        rows.append(ramp.reshape(spec.shape))
        one = np.zeros(spec.size, dtype=np.int64)
        one[0] = hi
        rows.append(one.reshape(spec.shape))
        one = np.zeros(spec.size, dtype=np.int64)
        one[-1] = lo if lo < 0 else hi
        rows.append(one.reshape(spec.shape))
        rng = np.random.default_rng(12345)  # fixed: edge vectors are the same for every seed
        for k in (1, 2, 3):
            half = 1 << (k - 1)
            m = rng.integers(lo >> k, (hi - half) >> k, size=spec.size, endpoint=True, dtype=np.int64)
            rows.append(np.clip((m << k) + half, lo, hi).reshape(spec.shape))
    return np.stack(rows)


def random_inputs(graph: Graph, n: int, seed: int = 0, edges: bool = True) -> np.ndarray:
    """``n`` input code vectors: the edge vectors first (if ``edges``; see ``edge_inputs``), then uniform random
    codes in range."""
    spec = graph.tensor(graph.inputs[0])
    rng = np.random.default_rng(seed)
    head = edge_inputs(graph)[:n] if edges else np.zeros((0,) + spec.shape, dtype=np.int64)
    rest = rng.integers(spec.fmt.min_code, spec.fmt.max_code, size=(n - len(head),) + spec.shape, endpoint=True,
                        dtype=np.int64)
    return np.concatenate([head, rest]) if len(head) else rest
