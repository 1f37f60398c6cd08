"""The model zoo (``tests/models/``): models written the way people write PyTorch (plain torch.nn, functional calls,
no qfx imports in the model classes), converted by ``qfx.quantize_model``, trained a few steps, then checked
through every executor: train mode vs torch exact mode vs the golden interpreter (on test data), onnxruntime
(edge + random vectors), C simulation of the HLS project and cocotb + Verilator co-simulation of the RTL, each
with 0 mismatching output codes. CI sizes are small (all designs share one C++ binary and one Verilator build);
the real sizes run with ``-m slow``."""
from __future__ import annotations

import math

import pytest
import torch

from models.harness import build, onnx_check, rtl_supported
from models.zoo import ZOO

NAMES = list(ZOO)
#: IR ops each model's idioms must become (the conversion reached the graph the backends see)
IR_OPS = {
    "lenet5": {"conv2d", "relu", "maxpool2d", "flatten", "dense"},
    "jet_mlp": {"dense", "scale_shift", "softmax"},
    "kws_conv1d": {"conv2d", "reshape", "avgpool2d"},
    "radioml_vgg1d": {"conv2d", "maxpool2d", "flatten", "dense"},
    "mobilenet_v1": {"conv2d", "clip", "avgpool2d"},
    "resnet8": {"conv2d", "add", "avgpool2d"},
    "padded_cnn": {"scale_shift", "zeropad2d", "clip", "add", "avgpool2d"},
    "autoencoder": {"dense", "lut"},
    "tiny_unet": {"maxpool2d", "upsample2d", "concat", "lut"},
    "act_mix": {"lut"},
    "gated_ffn": {"lut", "add", "mul"},
    "preprocess": {"scale_shift", "relu", "sub", "lut", "clip"},
    "two_input": {"lut", "mul", "sub", "concat"},
}


class _Zoo:
    """Each model built once per module (quantized, trained, captured, exported), on first use."""

    def __init__(self, root, full: bool = False, steps: int = 2) -> None:
        self.root, self.full, self.steps, self.built = root, full, steps, {}

    def get(self, name: str):
        if name not in self.built:
            d = self.root / name
            d.mkdir()
            targets = ("onnx", "hls") + (("rtl",) if rtl_supported(ZOO[name], self.full) else ())
            self.built[name] = build(name, d, steps=self.steps, full=self.full, targets=targets)
        return self.built[name]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _Zoo(tmp_path_factory.mktemp("zoo"))


def _in_batch(name: str, level: str, full: bool = False) -> bool:
    return level != "rtl" or rtl_supported(ZOO[name], full)


def test_the_zoo_is_what_the_issue_lists():
    assert len(ZOO) >= 12 and set(IR_OPS) == set(ZOO)
    notes = " ".join(e.note for e in ZOO.values())
    for idiom in ("F.max_pool2d", "Softmax", "Conv1d", "MaxPool1d", "depthwise", "out += shortcut",
                  "AdaptiveAvgPool2d(1)", "Sigmoid", "torch.cat", "Upsample", "Tanh", "LeakyReLU", "two inputs"):
        assert idiom in notes, idiom
    import inspect

    import models.zoo as zoo_mod
    assert "qfx" not in inspect.getsource(zoo_mod).replace("no qfx", "")  # plain PyTorch, no qfx inside


@pytest.mark.parametrize("name", NAMES)
def test_trains_and_train_exact_interpreter_agree(zoo, name):
    b = zoo.get(name)
    assert b.grads_missing == [], f"no gradient reaches {b.grads_missing}"
    assert len(b.losses) == zoo.steps and all(math.isfinite(v) for v in b.losses)
    float_model = ZOO[name].build(**ZOO[name].ci)
    trained = {k.removeprefix("net."): v for k, v in b.model.state_dict().items()}
    moved = [k for k, v in float_model.state_dict().items() if k.endswith("weight") and k in trained
             and v.shape == trained[k].shape and not torch.equal(v, trained[k])]
    assert moved, "training changed no weight"
    assert b.exact_vs_interp == 0, f"{b.exact_vs_interp} output codes of exact mode differ from the interpreter"
    assert b.train_vs_exact == 0, f"{b.train_vs_exact} output codes of train mode differ from exact mode"
    ops = {n.op.value for n in b.graph.nodes}
    assert IR_OPS[name] <= ops, f"{name}: expected IR ops {sorted(IR_OPS[name] - ops)} missing from {sorted(ops)}"


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_the_interpreter(zoo, name):
    b = zoo.get(name)
    assert "onnx" not in b.errors, b.errors.get("onnx")
    assert onnx_check(b, n=300) == 0


@pytest.mark.verilator
def test_two_input_model_rtl_cosim(zoo, tmp_path):
    """The two-input model through ``qfx.export(..., "rtl")``: one AXI4-Stream port per input (s0_axis, s1_axis),
    co-simulated with independent random stalls on each, 0 mismatches."""
    import json

    import qfx
    from qfx.sim.cosim import run_cosim

    b = zoo.get("two_input")
    assert len(b.graph.inputs) == 2 and b.hls is not None and b.onnx is not None
    out = qfx.export(b.model, tuple(torch.zeros(1, *s) for s in ZOO["two_input"].shape), "rtl", tmp_path / "r")
    info = json.loads((out / "cosim.json").read_text())
    assert [q["prefix"] for q in info["in_ports"]] == ["s0_axis", "s1_axis"]
    rep = run_cosim(out, n_vectors=60, work_dir=tmp_path / "w")
    assert rep.ok and rep.mismatches == 0 and rep.received == 60


@pytest.mark.gxx
def test_csim_of_every_model(zoo):
    from qfx.sim.csim import run_csim_batch

    names = [n for n in NAMES if _in_batch(n, "hls")]
    for n in names:
        assert "hls" not in zoo.get(n).errors, zoo.get(n).errors["hls"]
    reps = run_csim_batch([zoo.get(n).hls for n in names], n_vectors=200)
    assert {r.top: r.mismatches for r in reps} == {f"zoo_{n}": 0 for n in names}
    assert all(r.vectors == 200 for r in reps)


@pytest.mark.verilator
def test_cosim_of_every_model(zoo, tmp_path):
    from qfx.sim.cosim import run_cosim_many

    names = [n for n in NAMES if _in_batch(n, "rtl")]
    for n in names:
        assert "rtl" not in zoo.get(n).errors, zoo.get(n).errors["rtl"]
    reps = run_cosim_many([zoo.get(n).rtl for n in names], n_vectors=60, work_dir=tmp_path)
    assert {r.top: r.mismatches for r in reps} == {f"zoo_{n}": 0 for n in names}
    assert all(r.vectors == 60 and r.received == 60 for r in reps)


# ---------------------------------------------------------------------------------------------- full sizes
@pytest.fixture(scope="module")
def zoo_full(tmp_path_factory):
    return _Zoo(tmp_path_factory.mktemp("zoo_full"), full=True, steps=5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_models_agree(zoo_full, name):
    b = zoo_full.get(name)
    assert b.grads_missing == [] and b.exact_vs_interp == 0 and b.train_vs_exact == 0
    assert onnx_check(b, n=200) == 0


@pytest.mark.slow
@pytest.mark.gxx
def test_full_size_models_csim(zoo_full):
    from qfx.sim.csim import run_csim_batch

    reps = run_csim_batch([zoo_full.get(n).hls for n in NAMES], n_vectors=200)
    assert {r.top: r.mismatches for r in reps} == {f"zoo_{n}": 0 for n in NAMES}


@pytest.mark.slow
@pytest.mark.verilator
def test_full_size_models_cosim(zoo_full, tmp_path):
    """Every full-size model with one input, except LeNet-5 at 28x28 (68k adders: C-sim only)."""
    from qfx.sim.cosim import run_cosim_many

    rtl = [n for n in NAMES if _in_batch(n, "rtl", full=True)]
    assert "lenet5" not in rtl and "resnet8" in rtl
    reps = run_cosim_many([zoo_full.get(n).rtl for n in rtl], n_vectors=30, work_dir=tmp_path)
    assert {r.top: r.mismatches for r in reps} == {f"zoo_{n}": 0 for n in rtl}
