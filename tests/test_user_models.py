"""Models written by others the usual PyTorch way (``tests/models/user.py``), each with an idiom that once broke
the path quantize_model -> a few training steps -> exact mode -> export: every output's codes agree between train
mode, torch exact mode, the golden interpreter and onnxruntime; a few run through C simulation, one through RTL
co-simulation. Also: what qfx refuses, it refuses in ``quantize_model`` (before training), in one line naming the
module or function and what to use instead."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import qfx
import qfx.nn as qn
from qfx.api import capture_model
from qfx.errors import UnsupportedError
from qfx.ir import run
from qfx.ir.graph import Graph

from models.user import USER

#: IR ops each model's idioms must become
IR_OPS = {
    "mnist_example": {"conv2d", "maxpool2d", "flatten", "softmax", "lut"},
    "logsoftmax_mlp": {"dense", "softmax", "lut", "scale_shift"},
    "conv1d_functional_pools": {"reshape", "conv2d", "maxpool2d", "avgpool2d"},
    "squeeze_head": {"conv2d", "avgpool2d", "lut", "flatten"},
    "se_net": {"avgpool2d", "upsample2d", "mul", "lut"},
    "clamp_variants": {"relu", "clip", "concat", "scale_shift"},
    "feature_mean": {"avgpool2d", "concat", "lut"},
    "shared_gate": {"dense", "upsample2d", "mul", "sub"},
    "torchvision_resnet": {"conv2d", "add", "avgpool2d"},
    "three_heads": {"dense", "relu"},
    "vgg_config": {"conv2d", "maxpool2d", "avgpool2d", "dense"},
    "layernorm_mlp": {"avgpool2d", "sub", "mul", "lut", "scale_shift", "upsample2d"},
    "dcgan_generator": {"dense", "zeropad2d", "conv2d", "scale_shift", "lut"},
    "transpose_unet": {"zeropad2d", "conv2d", "concat", "avgpool2d", "maxpool2d"},
    "kws_transposed": {"zeropad2d", "conv2d", "maxpool2d", "scale_shift", "avgpool2d"},
    "bilinear_unet": {"zeropad2d", "conv2d", "concat", "maxpool2d", "lut"},
    "norm_autoencoder": {"conv2d", "reshape", "avgpool2d", "sub", "mul", "lut", "scale_shift", "zeropad2d"},
    "cbam_net": {"conv2d", "transpose", "avgpool2d", "maxpool2d", "upsample2d", "mul", "lut", "dense"},
}


def _data(shape: Any, n: int, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    if isinstance(shape[0], tuple):
        return tuple(torch.randn(n, *s, generator=g) for s in shape)
    return torch.randn(n, *shape, generator=g)


def _call(m: nn.Module, x: Any) -> tuple[torch.Tensor, ...]:
    y = m(*x) if isinstance(x, tuple) else m(x)
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _outputs(g: Graph, y: Any) -> tuple[np.ndarray, ...]:
    return tuple(y[o] for o in g.outputs) if isinstance(y, dict) else (y,)


@dataclass
class Done:
    model: nn.Module
    graph: Graph
    grads_missing: list[str]
    moved: bool
    exact_vs_interp: int
    train_vs_exact: int
    onnx: Path


def _build(name: str, out: Path) -> Done:
    cls, shape = USER[name]
    torch.manual_seed(0)
    f = cls()
    x = _data(shape, 128, 0)
    q = qfx.quantize_model(f, qfx.QFXConfig(), x)
    before = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("weight")}
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], 1e-2)
    q.train()
    missing: list[str] = []
    for step in range(3):
        opt.zero_grad()
        sum(y.float().square().mean() for y in _call(q, x)).backward()
        if step == 0:
            missing = [k for k, p in q.named_parameters() if p.requires_grad and (p.grad is None or not
                                                                                  torch.isfinite(p.grad).all())]
        opt.step()
    moved = any(not torch.equal(v, q.state_dict()[k]) for k, v in before.items())
    q.eval()
    xt = _data(shape, 64, 1)
    example = tuple(t[:1] for t in xt) if isinstance(xt, tuple) else xt[:1]
    g = capture_model(q, example)
    with torch.no_grad():
        with qn.mode(q, "exact"):
            ye = _call(q, xt)
        yt = _call(q, xt)
    xs = xt if isinstance(xt, tuple) else (xt,)
    codes = {t: np.asarray(g.tensor(t).fmt.to_int(v.double().numpy()), dtype=np.int64) for t, v in zip(g.inputs, xs)}
    yi = _outputs(g, run(g, codes if len(codes) > 1 else codes[g.inputs[0]]))
    assert len(yi) == len(ye) == len(g.outputs)
    ei = te = 0
    for o, a, b, c in zip(g.outputs, ye, yt, yi):
        fo = g.tensor(o).fmt
        ca = np.asarray(fo.to_int(a.double().numpy()), dtype=np.int64).reshape(c.shape)
        cb = np.asarray(fo.to_int(b.double().numpy()), dtype=np.int64).reshape(c.shape)
        ei += int((ca != c).sum()) + (0 if np.array_equal(fo.from_int(ca).reshape(a.shape), a.numpy()) else 1)
        te += int((cb != ca).sum())
    path = qfx.export(q, example, "onnx", out / f"{name}.onnx", name=f"user_{name}")
    return Done(q, g, missing, moved, ei, te, path)


class _Cache:
    def __init__(self, root: Path) -> None:
        self.root, self.done = root, {}

    def get(self, name: str) -> Done:
        if name not in self.done:
            self.done[name] = _build(name, self.root)
        return self.done[name]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    return _Cache(tmp_path_factory.mktemp("user"))


@pytest.mark.parametrize("name", list(USER))
def test_user_model_train_exact_interpreter_onnxruntime_agree(user, name):
    import onnxruntime as ort

    from qfx.sim.csim import make_inputs

    d = user.get(name)
    assert d.grads_missing == [], f"no gradient reaches {d.grads_missing}"
    assert d.moved, "training changed no weight"
    assert d.exact_vs_interp == 0, f"{d.exact_vs_interp} output codes of exact mode differ from the interpreter"
    assert d.train_vs_exact == 0, f"{d.train_vs_exact} output codes of train mode differ from exact mode"
    ops = {n.op.value for n in d.graph.nodes}
    assert IR_OPS[name] <= ops, f"IR ops {sorted(IR_OPS[name] - ops)} missing from {sorted(ops)}"
    g = d.graph
    codes = make_inputs(g, 200, 0)
    sess = ort.InferenceSession(str(d.onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {t: g.tensor(t).fmt.from_int(c) for t, c in codes.items()})
    want = _outputs(g, run(g, codes if len(codes) > 1 else codes[g.inputs[0]]))
    assert len(got) == len(want) == len(g.outputs)
    bad = sum(int((np.asarray(g.tensor(o).fmt.to_int(a), dtype=np.int64).reshape(w.shape) != w).sum())
              for o, a, w in zip(g.outputs, got, want))
    assert bad == 0


def test_user_models_have_no_qfx_inside():
    import inspect

    import models.user as mod
    assert "qfx" not in inspect.getsource(mod).replace("no qfx", "")


CSIM = ("mnist_example", "se_net", "feature_mean", "three_heads", "layernorm_mlp", "transpose_unet", "kws_transposed",
        "bilinear_unet", "norm_autoencoder", "cbam_net")


@pytest.mark.gxx
def test_csim_of_user_models(user, tmp_path):
    from qfx.sim.csim import run_csim_batch

    dirs = [qfx.export(user.get(n).model, torch.zeros(1, *USER[n][1]), "hls", tmp_path / n, name=f"user_{n}")
            for n in CSIM]
    reps = run_csim_batch(dirs, n_vectors=200)
    assert {r.top: r.mismatches for r in reps} == {f"user_{n}": 0 for n in CSIM}
    assert all(r.vectors == 200 for r in reps)


@pytest.mark.verilator
def test_cosim_of_the_se_gate_and_layernorm(user, tmp_path):
    """Broadcasts (upsample2d nodes), LayerNorm's rsqrt table and per-feature scale_shift through the RTL backend."""
    from qfx.sim.cosim import run_cosim_many

    names = ("se_net", "layernorm_mlp")
    dirs = [qfx.export(user.get(n).model, torch.zeros(1, *USER[n][1]), "rtl", tmp_path / n, name=f"user_{n}")
            for n in names]
    reps = run_cosim_many(dirs, n_vectors=40, work_dir=tmp_path / "w")
    assert {r.top: r.mismatches for r in reps} == {f"user_{n}": 0 for n in names}
    assert all(r.vectors == 40 and r.received == 40 for r in reps)


# ---------------------------------------------------------------------------------------------- refusals
class _Fwd(nn.Module):
    def __init__(self, fwd, **mods: nn.Module) -> None:
        super().__init__()
        self.fwd = fwd
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.fwd(self, x)


@pytest.mark.parametrize("fwd, mods, shape, expect", [
    (lambda s, x: s.up(x), {"up": nn.ConvTranspose2d(2, 2, 2, 2, padding=2)}, (2, 4, 4),
     r"module 'up' \(torch.nn.modules.conv.ConvTranspose2d\): QConvTranspose2d: padding 2 above dilation \* "
     r"\(kernel - 1\) = 1"),
    (lambda s, x: s.rnn(x)[0], {"rnn": nn.LSTM(4, 4, batch_first=True, proj_size=2)}, (3, 4),
     r"module 'rnn' \(torch.nn.modules.rnn.LSTM\): no fixed-point twin; qfx unrolls nn.LSTM/GRU/RNN"),
    (lambda s, x: s.c(x).sum(), {"c": nn.Conv2d(2, 2, 1)}, (2, 4, 4),
     r"Tensor.sum \(fx node 'sum_1' in forward\): a sum over all elements has no qfx op"),
    (lambda s, x: torch.erf(s.c(x)), {"c": nn.Conv2d(2, 2, 1)}, (2, 4, 4),
     r"torch.erf \(fx node 'erf' in forward\)"),
    (lambda s, x: s.c(x).flatten(2).max(2)[1], {"c": nn.Conv2d(2, 2, 1)}, (2, 4, 4),
     r"x\[...\] \(fx node 'getitem' in forward\): reads the indices of a max/min"),
    (lambda s, x: s.fc(x).unsqueeze(0), {"fc": nn.Linear(4, 4)}, (4,),
     r"unsqueeze.*dim 0 is the batch"),
    (lambda s, x: torch.cat([s.c(x), s.c(x).mean((2, 3), keepdim=True).expand_as(s.c(x))], 1),
     {"c": nn.Conv2d(2, 4, 1)}, (2, 4, 4), r"Tensor.expand_as \(fx node 'expand_as' in forward\)"),
])
def test_refused_in_quantize_model_in_one_line(fwd, mods, shape, expect):
    with pytest.raises(UnsupportedError, match=expect) as ei:
        qfx.quantize_model(_Fwd(fwd, **mods), qfx.QFXConfig(), torch.randn(8, *shape))
    assert "\n" not in str(ei.value)


def test_squeeze_and_unsqueeze_shapes():
    from qfx.ir.from_torch import _squeezed

    assert _squeezed("squeeze", (4, 1), (-1,), {}, "w") == (4,)
    assert _squeezed("squeeze", (4, 1), (1,), {}, "w") == (4, 1)  # size 4: torch leaves it
    assert _squeezed("squeeze", (1, 3, 1), (), {}, "w") == (3,)
    assert _squeezed("unsqueeze", (4,), (1,), {}, "w") == (1, 4)
    assert _squeezed("unsqueeze", (4,), (-1,), {}, "w") == (4, 1)
    assert _squeezed("unsqueeze", (), (1,), {}, "w") == (1,)
    with pytest.raises(UnsupportedError, match="dim 0 is the batch"):
        _squeezed("squeeze", (4,), (0,), {}, "w")
