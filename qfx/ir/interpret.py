"""Golden interpreter: executes a ``Graph`` on int64 codes, batched and vectorised, through ``qfx.fixed.ops``.

Generated C++ and RTL are compared with this, bit for bit.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from qfx.errors import BadInputError, UnsupportedError
from qfx.fixed import kernels as K
from qfx.fixed import ops
from qfx.ir.graph import Graph, Node, Op

__all__ = ["run", "run_all", "random_inputs", "edge_inputs"]

Env = dict[str, np.ndarray]


def _c(n: Node, key: str):
    c = n.consts.get(key)
    return (None, None) if c is None else (c.codes, c.fmt)


def _exec(g: Graph, n: Node, env: Env) -> np.ndarray:
    xs = [env[t] for t in n.inputs]
    fin = [g.tensor(t).fmt for t in n.inputs]
    out = g.tensor(n.output)
    batch = xs[0].shape[0]
    if n.op is Op.DENSE:
        w, fw = _c(n, "weight")
        b, fb = _c(n, "bias")
        return ops.dense(xs[0], fin[0], w, fw, out.fmt, b, fb, n.acc_fmt)
    if n.op is Op.CONV2D:
        w, fw = _c(n, "weight")
        b, fb = _c(n, "bias")
        return ops.conv2d(xs[0], fin[0], w, fw, out.fmt, b, fb, tuple(n.attr("stride", (1, 1))),
                          tuple(n.attr("padding", (0, 0))), n.acc_fmt)
    if n.op is Op.SCALE_SHIFT:
        s, fs = _c(n, "scale")
        h, fh = _c(n, "shift")
        return ops.scale_shift(xs[0], fin[0], s, fs, h, fh, out.fmt)
    if n.op is Op.ADD:
        return ops.add(xs[0], fin[0], xs[1], fin[1], out.fmt)
    if n.op is Op.RELU:
        return ops.relu(xs[0], fin[0], out.fmt)
    if n.op is Op.CLIP:
        return ops.clip(xs[0], fin[0], int(n.attr("lo")), int(n.attr("hi")), out.fmt)
    if n.op is Op.MAXPOOL2D:
        return ops.maxpool2d(xs[0], fin[0], out.fmt, tuple(n.attr("kernel")), tuple(n.attr("stride")),
                             tuple(n.attr("padding", (0, 0))))
    if n.op is Op.AVGPOOL2D:
        r, fr = _c(n, "recip")
        return ops.avgpool2d(xs[0], fin[0], out.fmt, tuple(n.attr("kernel")), tuple(n.attr("stride")),
                             int(np.asarray(r).reshape(-1)[0]), fr, tuple(n.attr("padding", (0, 0))))
    if n.op in (Op.FLATTEN, Op.RESHAPE):
        return K.cast(xs[0].reshape((batch,) + out.shape), fin[0], out.fmt)
    if n.op is Op.QUANT:
        return K.cast(xs[0], fin[0], out.fmt)
    raise UnsupportedError(f"interpreter has no rule for op {n.op.value!r} (node {n.name!r})")


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


def edge_inputs(graph: Graph) -> np.ndarray:
    """Input vectors at the edges of the input format: all max, all min, all zero, +1 step, -1 step, alternating."""
    spec = graph.tensor(graph.inputs[0])
    f = spec.fmt
    vals = [f.max_code, f.min_code, 0, min(1, f.max_code), max(-1, f.min_code)]
    rows = [np.full(spec.shape, v, dtype=np.int64) for v in vals]
    alt = np.where(np.arange(spec.size) % 2 == 0, f.max_code, f.min_code).reshape(spec.shape).astype(np.int64)
    rows.append(alt)
    return np.stack(rows)


def random_inputs(graph: Graph, n: int, seed: int = 0, edges: bool = True) -> np.ndarray:
    """``n`` input code vectors: the edge vectors first (if ``edges``), then uniform random codes in range."""
    spec = graph.tensor(graph.inputs[0])
    rng = np.random.default_rng(seed)
    head = edge_inputs(graph)[:n] if edges else np.zeros((0,) + spec.shape, dtype=np.int64)
    rest = rng.integers(spec.fmt.min_code, spec.fmt.max_code, size=(n - len(head),) + spec.shape, endpoint=True,
                        dtype=np.int64)
    return np.concatenate([head, rest]) if len(head) else rest
