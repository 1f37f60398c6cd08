"""Fifth pass of user-style models (``tests/models/user5.py``): architectures copied inline from torchvision, timm
and MLPerf Tiny in their own idioms (MobileNetV2/V3, EfficientNet MBConv with StochasticDepth, SqueezeNet Fire with
ceil_mode pools, GoogLeNet Inception, ResNeXt, GhostNet, ConvNeXt with channels-last LayerNorm/Linear/layer scale
and DropPath, DS-CNN, the ToyADMOS autoencoder, PointNet, VGG, an ECG 1-D CNN). Each is quantized at W = 8 on
random calibration data, trained a few Adam steps, and its output codes agree between train mode (eval), exact
mode, the golden interpreter and onnxruntime on the qfx ONNX export; four run through C simulation in one binary.
Dropout and stochastic depth are ``QTrainOnly``: random in train mode exactly as torch draws them, identities in
eval and exact mode."""
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
from qfx.nn.extra_layers import QTrainOnly

from models import user5 as U
from models.user5 import USER5

IR_OPS = {
    "mobilenet_v2": {"conv2d", "clip", "add", "avgpool2d", "dense"},
    "mobilenet_v3": {"conv2d", "lut", "mul", "upsample2d", "add", "dense"},
    "efficientnet": {"conv2d", "lut", "mul", "upsample2d", "add", "dense"},
    "squeezenet": {"conv2d", "zeropad2d", "maxpool2d", "concat", "avgpool2d"},
    "googlenet": {"conv2d", "zeropad2d", "maxpool2d", "concat", "dense"},
    "resnext": {"conv2d", "add", "maxpool2d", "dense"},
    "ghostnet": {"conv2d", "concat", "slice", "add", "dense"},
    "convnext": {"conv2d", "transpose", "reshape", "sub", "mul", "lut", "scale_shift", "add", "dense"},
    "ds_cnn": {"conv2d", "avgpool2d", "dense"},
    "toyadmos_ae": {"dense", "scale_shift", "relu"},
    "pointnet": {"conv2d", "maxpool2d", "dense", "softmax", "lut"},
    "vgg": {"conv2d", "maxpool2d", "avgpool2d", "dense"},
    "ecg": {"conv2d", "maxpool2d", "add", "lut", "dense"},
}

#: train-only regularizers (QTrainOnly) each model must get, by the float model's module paths (EfficientNet's
#: strided block has no residual, so its StochasticDepth is never called; GhostNet's is F.dropout in forward)
TRAIN_ONLY = {
    "mobilenet_v2": {"classifier.0"}, "mobilenet_v3": {"classifier.2"}, "squeezenet": {"classifier.0"},
    "efficientnet": {"features.1.0.stochastic_depth", "features.2.1.stochastic_depth", "classifier.0"},
    "googlenet": {"dropout"}, "ghostnet": {"dropout"}, "convnext": {"stage.1.drop_path"},
    "ds_cnn": {"dropout1", "dropout2"}, "pointnet": {"dropout"}, "vgg": {"classifier.2", "classifier.5"},
}


def _data(shape: Any, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@dataclass
class Done:
    model: nn.Module
    graph: Any
    grads_missing: list[str]
    moved: bool
    exact_vs_interp: int
    train_vs_exact: int
    onnx: Path


def _build(name: str, out: Path) -> Done:
    cls, shape = USER5[name]
    torch.manual_seed(0)
    x = _data(shape, 48, 0)
    q = qfx.quantize_model(cls(), qfx.QFXConfig(weight_width=8, act_width=8), x[:16])
    before = {k: v.clone() for k, v in q.state_dict().items() if k.endswith("weight")}
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], 1e-2)
    q.train()
    missing: list[str] = []
    for step in range(3):
        opt.zero_grad()
        q(x[16 * step:16 * step + 16]).float().square().mean().backward()
        if step == 0:
            missing = [k for k, p in q.named_parameters() if p.requires_grad and (p.grad is None or not
                                                                                  torch.isfinite(p.grad).all())]
        opt.step()
    moved = any(not torch.equal(v, q.state_dict()[k]) for k, v in before.items())
    q.eval()
    xt = _data(shape, 16, 1)
    g = capture_model(q, xt[:1])
    with torch.no_grad():
        with qn.mode(q, "exact"):
            ye = q(xt)
        yt = q(xt)
    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(xt.double().numpy()), dtype=np.int64)
    yi = run(g, codes)
    fo = g.tensor(g.outputs[0]).fmt
    ce = np.asarray(fo.to_int(ye.double().numpy()), dtype=np.int64).reshape(yi.shape)
    ct = np.asarray(fo.to_int(yt.double().numpy()), dtype=np.int64).reshape(yi.shape)
    ei = int((ce != yi).sum()) + (0 if np.array_equal(fo.from_int(ce).reshape(ye.shape), ye.numpy()) else 1)
    path = qfx.export(q, xt[:1], "onnx", out / f"{name}.onnx", name=f"user5_{name}")
    return Done(q, g, missing, moved, ei, int((ct != ce).sum()), path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root, done = tmp_path_factory.mktemp("user5"), {}

    def get(name: str) -> Done:
        if name not in done:
            done[name] = _build(name, root)
        return done[name]
    return get


@pytest.mark.parametrize("name", list(USER5))
def test_user5_model_train_exact_interpreter_onnxruntime_agree(built, name):
    import onnxruntime as ort

    from qfx.sim.csim import make_inputs

    d = built(name)
    assert d.grads_missing == [], f"no gradient reaches {d.grads_missing}"
    assert d.moved, "training changed no weight"
    assert d.exact_vs_interp == 0, f"{d.exact_vs_interp} output codes of exact mode differ from the interpreter"
    assert d.train_vs_exact == 0, f"{d.train_vs_exact} output codes of train mode differ from exact mode"
    g = d.graph
    ops = {n.op.value for n in g.nodes}
    assert IR_OPS[name] <= ops, f"IR ops {sorted(IR_OPS[name] - ops)} missing from {sorted(ops)}"
    codes = make_inputs(g, 100, 0)
    sess = ort.InferenceSession(str(d.onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {t: g.tensor(t).fmt.from_int(c) for t, c in codes.items()})[0]
    want = run(g, codes[g.inputs[0]])
    assert int((np.asarray(g.tensor(g.outputs[0]).fmt.to_int(got), dtype=np.int64).reshape(want.shape)
                != want).sum()) == 0
    paths = {p.removeprefix("net.") for p, m in d.model.named_modules() if isinstance(m, QTrainOnly)}
    assert paths == TRAIN_ONLY.get(name, set())


def test_user5_models_have_no_qfx_inside():
    import inspect

    assert "qfx" not in inspect.getsource(U).replace("no qfx", "")


CSIM = ("mobilenet_v3", "squeezenet", "convnext", "ecg")


@pytest.mark.gxx
def test_csim_of_user5_models(built, tmp_path):
    from qfx.sim.csim import run_csim_batch

    dirs = [qfx.export(built(n).model, torch.zeros(1, *USER5[n][1]), "hls", tmp_path / n, name=f"user5_{n}")
            for n in CSIM]
    reps = run_csim_batch(dirs, n_vectors=100)
    assert {r.top: r.mismatches for r in reps} == {f"user5_{n}": 0 for n in CSIM}


# ---------------------------------------------------------------------------------------------- regularizers
@pytest.mark.parametrize("make", [lambda: U.StochasticDepth(0.5, "row"), lambda: U.DropPath(0.5),
                                  lambda: nn.Dropout(0.5)], ids=["StochasticDepth", "DropPath", "Dropout"])
def test_train_only_module_draws_like_torch_and_is_identity_in_eval_and_exact(make):
    """The wrapped module itself runs in train mode: with the same RNG state the mask equals the float module's;
    model.eval() and exact mode give the input back (the identity the hardware computes)."""
    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)
            self.reg = make()

        def forward(self, x):
            return self.reg(self.conv(x))

    q = qfx.quantize_model(Body(), qfx.QFXConfig(), _data((2, 4, 4), 16, 0))
    assert isinstance(q.net.reg, QTrainOnly)
    x = _data((2, 4, 4), 64, 3)
    q.train()
    with torch.no_grad():
        h = q.net.conv(q.input(x))
        torch.manual_seed(7)
        got = q.net.reg(h)
        torch.manual_seed(7)
        want = make().train()(h)
    assert torch.equal(got, want) and not torch.equal(got, h)  # torch's own draw, not an identity
    q.eval()
    with torch.no_grad():
        assert torch.equal(q.net.reg(h), h)
        q.train()
        with qn.mode(q, "exact"):  # exact mode is the identity even with module.training set
            assert torch.equal(q.net.reg(h.double()), h.double())


def test_functional_dropout_follows_train_and_eval():
    """F.dropout(x, p, training=self.training) (GhostNet's head): a QTrainOnly(nn.Dropout(p)) that drops in train
    mode and is the identity after q.eval(), whatever fx recorded for ``training``."""
    q = qfx.quantize_model(U.GhostNetTiny().eval(), qfx.QFXConfig(), _data((3, 16, 16), 16, 0))
    drops = [m for m in q.modules() if isinstance(m, QTrainOnly)]
    assert len(drops) == 1 and isinstance(drops[0].module, nn.Dropout) and drops[0].module.p == 0.2
    x = _data((16,), 256, 1).abs() + 0.5
    q.train()
    y = drops[0](x)
    assert (y == 0).any() and torch.allclose(y[y != 0], (x / 0.8)[y != 0])
    q.eval()
    assert torch.equal(drops[0](x), x)


def test_stateless_user_modules_that_compute_are_not_train_only():
    """A stateless module that returns its input object after an in-place op, or computes, is traced as usual."""
    class InplaceAct(nn.Module):
        def forward(self, x):
            return torch.relu_(x)

    class Body(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)
            self.act = InplaceAct()

        def forward(self, x):
            return self.act(self.conv(x))

    q = qfx.quantize_model(Body(), qfx.QFXConfig(), _data((2, 4, 4), 16, 0))
    assert not any(isinstance(m, QTrainOnly) for m in q.modules())
    assert "relu" in {n.op.value for n in capture_model(q.eval(), torch.zeros(1, 2, 4, 4)).nodes}


def test_ceil_mode_max_pool_matches_torch_on_every_size():
    """ceil_mode=True as an edge-replicating pad before a floor-mode pool: torch's output shape and values for
    every size, kernel, stride and padding (SqueezeNet's 3/2, GoogLeNet's 3/1/1 and 3/2)."""
    from qfx.nn.layers import QMaxPool2d

    for k, s, p in [(3, 2, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1), (3, 3, 1)]:
        for size in range(max(k - 2 * p, 1), 12):
            x = _data((2, size, size + 1), 2, size).round(decimals=1)
            m = QMaxPool2d(k, s, p, ceil_mode=True)
            want = torch.nn.functional.max_pool2d(x, k, s, p, ceil_mode=True)
            assert torch.equal(m(x), want), (k, s, p, size)
            with qn.mode(m, "exact"):
                got = m(x.double())
            assert torch.equal(got.float(), want), (k, s, p, size)


@pytest.mark.parametrize("fwd, mods, shape, expect", [
    (lambda s, x: s.p(x), {"p": nn.AvgPool1d(3, 2, ceil_mode=True)}, (2, 9),
     r"module 'p' \(torch.nn.modules.pooling.AvgPool1d\): .*supports ceil_mode=False"),
    (lambda s, x: U.stochastic_depth(s.c(x), 0.2, "row", True), {"c": nn.Conv2d(2, 2, 1)}, (2, 4, 4),
     r"models.user5.stochastic_depth \(fx node 'stochastic_depth' in forward\): no fixed-point twin"),
])
def test_refused_in_quantize_model_in_one_line(fwd, mods, shape, expect):
    import test_user_models as T

    with pytest.raises(UnsupportedError, match=expect) as ei:
        qfx.quantize_model(T._Fwd(fwd, **mods), qfx.QFXConfig(), _data(shape, 8, 0))
    assert "\n" not in str(ei.value)
