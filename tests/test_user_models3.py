"""Third pass of user-style models (``tests/models/user.py: USER3``): each found a bug in quantize_model -> train
-> exact mode -> export. Slices (x[:, :, :-pad], x[:, a:b], x[..., ::2]), chunk/split/narrow, transpose/permute
(channel shuffle, (N, L, C) tokens), torch.stack, sizes computed from x.size()/x.shape (folded to constants, the
batch size kept), a Linear on (N, L, C) (a 1x1 conv in the IR), a module registered under two paths (the TCN's
self.conv1 and self.net[0]). Every output code agrees between train mode, exact mode, the interpreter and
onnxruntime; three run through C simulation in one binary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import qfx
import qfx.nn as qn
from qfx.api import capture_model
from qfx.errors import UnsupportedError
from qfx.ir import run

from models.user import USER3

IR_OPS = {
    "shufflenet": {"reshape", "transpose", "conv2d"},
    "tcn": {"slice", "conv2d", "add", "flatten"},
    "channel_split": {"slice", "concat", "conv2d", "add"},
    "token_mlp": {"transpose", "conv2d", "dense"},
    "seq_linear": {"transpose", "conv2d", "maxpool2d"},
    "inplace_ops": {"add", "avgpool2d"},
    "stack_head": {"reshape", "concat", "dense"},
    "narrow_slice": {"slice", "concat"},
}


def _build(name: str, out: Path) -> dict:
    cls, shape = USER3[name]
    torch.manual_seed(0)
    x = torch.randn(128, *shape, generator=torch.Generator().manual_seed(0))
    q = qfx.quantize_model(cls(), qfx.QFXConfig(), x)
    opt = torch.optim.Adam([p for p in q.parameters() if p.requires_grad], 1e-2)
    q.train()
    missing: list[str] = []
    for step in range(3):
        opt.zero_grad()
        q(x).square().mean().backward()
        if step == 0:
            missing = [k for k, p in q.named_parameters() if p.requires_grad and p.grad is None]
        opt.step()
    q.eval()
    xt = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    g = capture_model(q, xt[:1])
    with torch.no_grad():
        with qn.mode(q, "exact"):
            ye = q(xt).double().numpy()
        yt = q(xt).double().numpy()
    fo = g.tensor(g.outputs[0]).fmt
    yi = run(g, np.asarray(g.tensor(g.inputs[0]).fmt.to_int(xt.double().numpy()), dtype=np.int64))
    ce = np.asarray(fo.to_int(ye), dtype=np.int64).reshape(yi.shape)
    ct = np.asarray(fo.to_int(yt), dtype=np.int64).reshape(yi.shape)
    onnx = qfx.export(q, xt[:1], "onnx", out / f"{name}.onnx", name=f"user3_{name}")
    return {"model": q, "graph": g, "missing": missing, "ei": int((ce != yi).sum()), "te": int((ct != ce).sum()),
            "onnx": onnx}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root, done = tmp_path_factory.mktemp("user3"), {}

    def get(name: str) -> dict:
        if name not in done:
            done[name] = _build(name, root)
        return done[name]
    return get


@pytest.mark.parametrize("name", list(USER3))
def test_user3_model_train_exact_interpreter_onnxruntime_agree(built, name):
    import onnxruntime as ort

    from qfx.sim.csim import make_inputs

    d = built(name)
    g = d["graph"]
    assert d["missing"] == [], f"no gradient reaches {d['missing']}"
    assert d["ei"] == 0 and d["te"] == 0, (d["ei"], d["te"])
    ops = {n.op.value for n in g.nodes}
    assert IR_OPS[name] <= ops, f"IR ops {sorted(IR_OPS[name] - ops)} missing from {sorted(ops)}"
    codes = make_inputs(g, 200, 0)
    sess = ort.InferenceSession(str(d["onnx"]), providers=["CPUExecutionProvider"])
    got = sess.run(None, {t: g.tensor(t).fmt.from_int(c) for t, c in codes.items()})[0]
    want = run(g, codes[g.inputs[0]])
    assert int((np.asarray(g.tensor(g.outputs[0]).fmt.to_int(got), dtype=np.int64).reshape(want.shape)
                != want).sum()) == 0


def test_aliased_module_is_converted_at_every_path(built):
    q = built("tcn")["model"]
    blk = q.net.tcn[0]
    assert blk.conv1 is blk.net[0] and type(blk.conv1).__name__ == "QConv1d"


@pytest.mark.gxx
def test_csim_of_user3_models(built, tmp_path):
    from qfx.sim.csim import run_csim_batch

    names = ("tcn", "token_mlp", "channel_split")
    dirs = [qfx.export(built(n)["model"], torch.zeros(1, *USER3[n][1]), "hls", tmp_path / n, name=f"user3_{n}")
            for n in names]
    reps = run_csim_batch(dirs, n_vectors=200)
    assert {r.top: r.mismatches for r in reps} == {f"user3_{n}": 0 for n in names}


class _F(torch.nn.Module):
    def __init__(self, fwd) -> None:
        super().__init__()
        self.fwd, self.c = fwd, torch.nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return self.fwd(self.c(x))


@pytest.mark.parametrize("fwd, expect", [
    (lambda y: y[1:], r"x\[...\] \(fx node 'getitem' in forward\): indexing the batch dim"),
    (lambda y: torch.chunk(y, 2, 0)[0], r"chunk along dim 0 \(the batch\)"),
    (lambda y: y.permute(1, 0, 2), r"returns a tensor whose batch is dim 1"),  # relabelled, then refused at the end
    (lambda y: torch.stack([y, y], 0), r"torch.stack\(dim=0\)"),
])
def test_element_moves_on_the_batch_refused_in_one_line(fwd, expect):
    with pytest.raises(UnsupportedError, match=expect) as ei:
        qfx.quantize_model(_F(fwd), qfx.QFXConfig(), torch.randn(8, 4, 6))
    assert "\n" not in str(ei.value)


def test_slice_gather_map_is_the_numpy_slice():
    from qfx.ops.gather import _slice_map
    from qfx.ops.base import one_node_graph
    from qfx.fixed.format import FxFormat

    f = FxFormat(8, 4)
    g = one_node_graph("slice", [((3, 4, 5), f)], (2, 2, 3), f,
                       attrs={"starts": (1, 0, 0), "stops": (3, 4, 5), "steps": (1, 2, 2)})
    want = np.arange(60).reshape(3, 4, 5)[1:3, 0:4:2, 0:5:2].reshape(-1)
    np.testing.assert_array_equal(_slice_map(g, g.nodes[0]), want)
