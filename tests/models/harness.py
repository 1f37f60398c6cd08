"""Quantize, train, check and export the zoo models: what tests/test_model_zoo.py and benchmarks/bench_tables.py
share. Every check compares integer codes, never values within a tolerance."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import qfx
import qfx.nn as qn
from qfx.api import capture_model
from qfx.errors import QfxError
from qfx.ir import run
from qfx.ir.graph import Graph

from models.zoo import ZOO, ZooEntry

__all__ = ["make_data", "quantize", "train_steps", "square_loss_steps", "cross_entropy_steps", "loss_fn",
           "exact_check", "Built", "build", "input_codes", "onnx_check", "onnxruntime_agrees", "rtl_supported"]


def _teacher_labels(x: torch.Tensor, n_classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    w = torch.randn(x[0].numel(), n_classes, generator=g)
    return (x.flatten(1) @ w).argmax(1)


def make_data(e: ZooEntry, n: int, seed: int = 0, full: bool = False, split: str = "train") -> tuple[Any, torch.Tensor]:
    """``(x, y)``: x a tensor (or a tuple, one per input), y the labels or targets the entry's loss wants."""
    shape = (e.full_shape or e.shape) if full else e.shape
    if e.data.startswith("digits"):
        from qfx.data import load_digits_split

        xtr, ytr, xte, yte = load_digits_split()
        x, y = (xtr, ytr) if split == "train" else (xte, yte)
        x, y = x[:n], y[:n]
        if e.data == "digits64" or e.data == "digits_ae":
            x = x.reshape(len(x), -1)
        if tuple(x.shape[1:]) != tuple(shape):  # a bigger image: nearest upsampling of the digits
            x = F.interpolate(x, size=shape[1:], mode="nearest")
        if e.data == "digits_ae":
            return x, x
        if e.data == "digits_mask":
            return x, (x > 0.5).float()
        return x, y
    g = torch.Generator().manual_seed(seed)
    if e.inputs > 1:
        xs = tuple(torch.randn(n, *s, generator=g) for s in shape)
        return xs, _teacher_labels(torch.cat([t.flatten(1) for t in xs], 1), e.n_classes, seed)
    x = torch.randn(n, *shape, generator=g)
    return x, _teacher_labels(x, e.n_classes, seed)


def loss_fn(e: ZooEntry, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if e.data == "digits_ae":
        return F.mse_loss(out, y)
    if e.data == "digits_mask":
        return F.binary_cross_entropy(out.clamp(1e-3, 1 - 1e-3), y)
    if e.softmax:
        return F.nll_loss(torch.log(out.clamp_min(1e-3)), y)
    return F.cross_entropy(out, y)


def _call(m: nn.Module, x: Any) -> torch.Tensor:
    return m(*x) if isinstance(x, tuple) else m(x)


def quantize(name: str, full: bool = False, config: qfx.QFXConfig | None = None, seed: int = 0,
             n_calib: int = 256) -> tuple[nn.Module, nn.Module]:
    """(float model, quantized model calibrated on ``n_calib`` training samples)."""
    e = ZOO[name]
    torch.manual_seed(seed)
    f = e.build(**(e.full if full else e.ci))
    x, _ = make_data(e, n_calib, seed, full)
    q = qfx.quantize_model(f, config or qfx.QFXConfig(), x)
    return f, q


def square_loss_steps(q: nn.Module, x: torch.Tensor, steps: int, lr: float = 1e-2) -> nn.Module:
    """A few Adam steps on mean(y**2) over all of ``x`` in train mode (moves weights and binary points so that the
    exact-mode checks that follow do not see calibration-only formats); returns ``q``."""
    opt = torch.optim.Adam(q.parameters(), lr)
    q.train()
    for _ in range(steps):
        opt.zero_grad()
        q(x).pow(2).mean().backward()
        opt.step()
    return q


def cross_entropy_steps(q: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    """Adam steps on the cross-entropy of all of ``x`` against labels ``y`` in train mode; returns the losses."""
    opt = torch.optim.Adam(q.parameters(), lr)
    q.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(q(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_steps(name: str, m: nn.Module, steps: int, seed: int = 0, full: bool = False, batch: int = 64,
                lr: float = 1e-2, epochs_data: int | None = None) -> list[float]:
    """Adam steps on the entry's data (train mode); returns the losses."""
    e = ZOO[name]
    x, y = make_data(e, epochs_data or batch * max(1, min(steps, 8)), seed, full)
    n = len(y)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr)
    m.train()
    losses = []
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:batch]
        xb = tuple(t[idx] for t in x) if isinstance(x, tuple) else x[idx]
        opt.zero_grad()
        loss = loss_fn(e, _call(m, xb), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def input_codes(g: Graph, x: Any) -> dict[str, np.ndarray]:
    """The graph inputs' codes of real input values (what the exported design receives)."""
    xs = x if isinstance(x, tuple) else (x,)
    return {t: np.asarray(g.tensor(t).fmt.to_int(v.double().numpy()), dtype=np.int64) for t, v in zip(g.inputs, xs)}


def exact_check(q: nn.Module, x: Any) -> tuple[Graph, int, int]:
    """Capture ``q``; returns (graph, mismatches exact mode vs interpreter, mismatches train vs exact mode), both
    counted in output codes on ``x``."""
    q.eval()
    example = tuple(t[:1] for t in x) if isinstance(x, tuple) else x[:1]
    g = capture_model(q, example)
    with torch.no_grad():
        with qn.mode(q, "exact"):
            ye = _call(q, x).numpy()
        yt = _call(q, x).double().numpy()
    codes = input_codes(g, x)
    yi = run(g, codes if len(codes) > 1 else codes[g.inputs[0]])
    fout = g.tensor(g.outputs[0]).fmt
    ce = np.asarray(fout.to_int(ye), dtype=np.int64).reshape(yi.shape)
    ct = np.asarray(fout.to_int(yt), dtype=np.int64).reshape(yi.shape)
    exact_values = np.array_equal(fout.from_int(ce).reshape(ye.shape), ye)  # exact mode holds output codes
    return g, int((ce != yi).sum()) + (0 if exact_values else 1), int((ct != ce).sum())


def onnxruntime_agrees(q: nn.Module, x: torch.Tensor, path: Path, n_vectors: int) -> None:
    """Export ``q`` to ONNX at ``path`` and assert, under onnxruntime: exact mode's outputs on ``x``, and the golden
    interpreter's output codes on ``n_vectors`` edge and random input vectors (``make_inputs``)."""
    import onnxruntime as ort

    from qfx.ir.load import load_graph
    from qfx.sim.csim import make_inputs

    path = qfx.export(q, x[:1], "onnx", path)
    g = load_graph(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fin, fout = g.tensor(g.inputs[0]).fmt, g.tensor(g.outputs[0]).fmt
    q.eval()
    with torch.no_grad(), qn.mode(q, "exact"):
        want = q(x).double().numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: fin.from_int(input_codes(g, x)[g.inputs[0]])})[0]
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float64).reshape(want.shape), want)
    codes = make_inputs(g, n_vectors, 3)[g.inputs[0]]  # edge + random vectors
    got = sess.run(None, {sess.get_inputs()[0].name: fin.from_int(codes)})[0]
    np.testing.assert_array_equal(np.asarray(fout.to_int(got), dtype=np.int64).reshape(-1), run(g, codes).reshape(-1))


def rtl_supported(e: ZooEntry, full: bool = False) -> bool:
    """Whether the entry is built as RTL: every entry at its CI size (a several-input model gets one AXI4-Stream port
    per input); ``full_rtl=False`` entries (LeNet-5 at 28x28: 68k adders) are not built at their full size."""
    return e.full_rtl or not full


@dataclass
class Built:
    """One zoo model quantized, trained, captured and exported."""

    name: str
    entry: ZooEntry
    model: nn.Module
    graph: Graph
    losses: list[float]
    exact_vs_interp: int
    train_vs_exact: int
    grads_missing: list[str]
    onnx: Path | None
    hls: Path | None
    rtl: Path | None
    errors: dict[str, str]


def build(name: str, out: Path, steps: int = 3, seed: int = 0, full: bool = False,
          targets: tuple[str, ...] = ("onnx", "hls", "rtl")) -> Built:
    """Quantize and train ``name``, check exact mode against the interpreter, export to ``targets`` under
    ``out`` (design name ``zoo_<name>``); export errors are recorded per target, not raised."""
    e = ZOO[name]
    f, q = quantize(name, full, seed=seed)
    # gradients reach every trainable parameter on the first step
    x, y = make_data(e, 64, seed, full)
    q.train()
    q.zero_grad()
    loss_fn(e, _call(q, x), y).backward()
    missing = [k for k, p in q.named_parameters() if p.requires_grad and (p.grad is None or not
                                                                          torch.isfinite(p.grad).all())]
    losses = train_steps(name, q, steps, seed, full)
    xt, _ = make_data(e, 128, seed + 1, full, split="test")
    g, ei, te = exact_check(q, xt)
    dirs: dict[str, Path | None] = {"onnx": None, "hls": None, "rtl": None}
    errors: dict[str, str] = {}
    example = tuple(t[:1] for t in xt) if isinstance(xt, tuple) else xt[:1]
    for t in targets:
        dest = out / (f"{name}.onnx" if t == "onnx" else f"{name}_{t}")
        try:
            dirs[t] = qfx.export(q, example, t, dest, name=f"zoo_{name}")
        except QfxError as exc:
            errors[t] = f"{type(exc).__name__}: {exc}"
    return Built(name, e, q, g, losses, ei, te, missing, dirs["onnx"], dirs["hls"], dirs["rtl"], errors)


def onnx_check(b: Built, n: int = 300, seed: int = 0) -> int:
    """Mismatching output codes of onnxruntime vs the interpreter on ``n`` edge + random vectors."""
    import onnxruntime as ort

    from qfx.sim.csim import make_inputs

    g = b.graph
    codes = make_inputs(g, n, seed)
    sess = ort.InferenceSession(str(b.onnx), providers=["CPUExecutionProvider"])
    feeds = {t: g.tensor(t).fmt.from_int(c) for t, c in codes.items()}
    got = sess.run(None, feeds)[0]
    fout = g.tensor(g.outputs[0]).fmt
    want = run(g, codes if len(codes) > 1 else codes[g.inputs[0]])
    return int((np.asarray(fout.to_int(got), dtype=np.int64).reshape(want.shape) != want).sum())


def csim_agrees(q: nn.Module, x: Any, out: Path, n_vectors: int) -> None:
    """Capture ``q``, run export's pass flow, write the HLS project under ``out`` and assert that g++ C simulation
    with the real ap_fixed headers computes every output code of the golden interpreter."""
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.csim import run_csim

    g, _, _ = exact_check(q, x)
    rep = run_csim(export_graph(run_flow(g, DEFAULT_FLOW).graph, "hls", out), n_vectors=n_vectors)
    assert rep.mismatches == 0 and rep.outputs_compared > 0
