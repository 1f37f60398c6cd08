"""Fourth pass of user-style models (``tests/models/user4.py``): each found a gap in quantize_model -> train -> exact
mode -> export: torch.cat of a one-item list (DenseNet), x ** 2 / torch.square / torch.abs (siamese distances),
nn.Unflatten (a reshape node), no-op casts (x.float(), .to(torch.float32), .type_as(y)), an nn.Parameter read in
forward as a learned per-channel scale/shift or scalar (QParamAffine: a scale_shift node, still trained). Every
output code agrees between train mode, exact mode, the interpreter and onnxruntime; what stays refused is refused
in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qfx
import test_user_models as T
from qfx.errors import UnsupportedError
from qfx.ir import run

from models.user4 import USER4

IR_OPS = {
    "densenet": {"concat", "conv2d", "scale_shift"},
    "siamese": {"sub", "mul", "dense"},
    "siamese_abs": {"sub", "relu", "add", "mul", "concat"},
    "unflatten_decoder": {"dense", "reshape", "conv2d"},
    "casts_cat": {"dense", "concat", "lut"},
    "param_scale": {"conv2d", "scale_shift", "avgpool2d"},
    "param_vector": {"dense", "scale_shift"},
}


@pytest.fixture(scope="module")
def user4(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setattr(T, "USER", USER4)
    return T._Cache(tmp_path_factory.mktemp("user4"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("name", list(USER4))
def test_user4_model_train_exact_interpreter_onnxruntime_agree(user4, name):
    import onnxruntime as ort

    from qfx.sim.csim import make_inputs

    d = user4.get(name)
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
    want = T._outputs(g, run(g, codes if len(codes) > 1 else codes[g.inputs[0]]))
    assert len(got) == len(want) == len(g.outputs)
    bad = sum(int((np.asarray(g.tensor(o).fmt.to_int(a), dtype=np.int64).reshape(w.shape) != w).sum())
              for o, a, w in zip(g.outputs, got, want))
    assert bad == 0


def test_abs_is_exact_on_every_code():
    """|x| of the captured graph equals numpy's on every input code, the most negative one included (the lossless
    relu/sub/add chain widens the format instead of wrapping)."""
    q = qfx.quantize_model(T._Fwd(lambda s, x: torch.abs(x)), qfx.QFXConfig(), torch.randn(64, 3))
    g = qfx.api.capture_model(q, torch.zeros(1, 3))
    fi, fo = g.tensor(g.inputs[0]).fmt, g.tensor(g.outputs[0]).fmt
    c = np.arange(-(2 ** (fi.width - 1)), 2 ** (fi.width - 1), dtype=np.int64)
    codes = np.stack([c, c[::-1], np.roll(c, 7)], 1)
    assert np.array_equal(fo.from_int(run(g, codes)), np.abs(fi.from_int(codes)))
    with torch.no_grad(), qfx.nn.mode(q, "exact"):
        y = q(torch.from_numpy(fi.from_int(codes)).float()).double().numpy()
    assert np.array_equal(y, np.abs(fi.from_int(codes)))


@pytest.mark.parametrize("fwd, mods, shape, expect", [
    (lambda s, x: s.c(x).to(torch.float16), {"c": nn.Conv2d(2, 2, 1)}, (2, 4, 4), r"cast to torch.float16"),
    (lambda s, x: s.fc(x) ** 3, {"fc": nn.Linear(4, 4)}, (4,), r"x \*\* 3: qfx squares tensors"),
    (lambda s, x: s.fc(x) / s.t, {"fc": nn.Linear(4, 4), "t": nn.Parameter(torch.ones(1))}, (4,),
     r"div with a parameter read in forward"),
    (lambda s, x: s.c(x) * s.w, {"c": nn.Conv2d(2, 2, 1), "w": nn.Parameter(torch.ones(2))}, (2, 4, 4),
     r"broadcasts over dim 3 of a 4-D tensor"),
    (lambda s, x: s.act(x), {"act": nn.CELU()}, (4,), r"module 'act' \(torch.nn.modules.activation.CELU\)"),
    (lambda s, x: s.p(x), {"p": nn.AvgPool1d(3, 2, 1, count_include_pad=False)}, (2, 8),
     r"supports ceil_mode=False, count_include_pad=True"),
])
def test_refused_in_quantize_model_in_one_line(fwd, mods, shape, expect):
    with pytest.raises(UnsupportedError, match=expect) as ei:
        qfx.quantize_model(T._Fwd(fwd, **mods), qfx.QFXConfig(), torch.randn(8, *shape))
    assert "\n" not in str(ei.value)


def test_parameter_read_in_forward_keeps_training():
    """The parameter itself sits in the QParamAffine (one copy in model.parameters(), gradients reach it)."""
    from models.user4 import ParamScale

    from qfx.nn.extra_layers import QParamAffine
    q = qfx.quantize_model(ParamScale(), qfx.QFXConfig(), torch.randn(16, 1, 6, 6))
    affine = [m for m in q.modules() if isinstance(m, QParamAffine)]
    assert sorted(m.role for m in affine) == ["add", "scale"]
    params = list(q.parameters())
    assert all(sum(p is m.param for p in params) == 1 for m in affine)
    q.train()
    q(torch.randn(16, 1, 6, 6)).square().mean().backward()
    assert all(m.param.grad is not None and m.param.grad.abs().sum() > 0 for m in affine)
