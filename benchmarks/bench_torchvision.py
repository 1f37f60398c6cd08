"""Reach over torchvision's classification architectures (random weights, 10 classes): models qfx did not write.

    python benchmarks/bench_torchvision.py                 # the default list, both routes
    python benchmarks/bench_torchvision.py resnet18 vit_b_32 --route torch

Two routes per architecture, one row each:

* **torch**: ``qfx.quantize_model`` on the model (eval mode) with a batch of 2 random images, then one forward in
  train mode; OK, or the first line of qfx's refusal.
* **onnx**: ``torch.onnx.export`` (batch 1, opset 17; ``--dynamo`` for the dynamo exporter), ``qfx quantize``
  (``quantize_onnx``: 8-bit, 16 random calibration images), import, the golden interpreter on 4 images; the largest
  difference from onnxruntime's float output relative to its largest |output|. A model whose torchvision
  initialisation makes every output zero (EfficientNet's and ViT's zero-initialised heads) gets its head
  re-initialised so the error means something; ViT's class token (initialised to zeros, so its first LayerNorm
  normalizes a row of 0.02-scale position-embedding noise that 8-bit per-tensor activations cannot resolve:
  errors near 100 %) is drawn from N(0, 1), as a trained token is not zero.

torchvision's PyPI wheel links CUDA libraries this CPU build of torch does not have; its model code needs none of
its compiled operators, so when the plain import fails the script imports it with torch's fake-kernel
registration turned off for that import only (``register_fake`` is what fails). Single-threaded torch; input sizes
are the smallest each architecture takes (32x32 for most).
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import qfx  # noqa: E402
from qfx.errors import QfxError  # noqa: E402

DEFAULT = ["resnet18", "resnext50_32x4d", "squeezenet1_1", "densenet121", "googlenet", "inception_v3",
           "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "efficientnet_b0",
           "regnet_y_400mf", "convnext_tiny", "vit_b_32", "swin_t", "maxvit_t"]
SIZES = {"inception_v3": 75, "vit_b_32": 224, "swin_t": 64, "maxvit_t": 224, "alexnet": 64, "squeezenet1_1": 64}


def import_torchvision():
    try:
        import torchvision
    except (RuntimeError, OSError):  # the C extension: register_fake of its operators fails without it
        import torch.library as tl

        saved = tl.register_fake
        tl.register_fake = lambda *a, **k: (lambda f: f)
        try:
            for name in [m for m in sys.modules if m.startswith("torchvision")]:
                del sys.modules[name]
            import torchvision
        finally:
            tl.register_fake = saved
    return torchvision


def build(tv, name: str) -> torch.nn.Module:
    kw = {"num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=False)
    torch.manual_seed(0)
    m = tv.models.get_model(name, weights=None, **kw).eval()
    heads = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]  # SqueezeNet's head is a conv
    with torch.no_grad():
        if heads and not heads[-1].weight.abs().sum():  # zero-initialised head: every output would be 0
            heads[-1].weight.normal_(0, 0.3)
        if isinstance(getattr(m, "class_token", None), torch.nn.Parameter):
            m.class_token.normal_()  # as trained: a zero token's first LayerNorm normalizes pos-embedding noise
    return m


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:150]


def torch_route(m: torch.nn.Module, size: int) -> str:
    x = torch.randn(2, 3, size, size)
    try:
        q = qfx.quantize_model(m, qfx.QFXConfig(), x)
        q.train()
        q(x)
    except QfxError as e:
        return "refused: " + first_line(e)
    return "OK"


def onnx_route(m: torch.nn.Module, size: int, dynamo: bool) -> str:
    import contextlib
    import os

    import onnx
    import onnxruntime as ort

    from qfx.ir.interpret import run
    from qfx.onnx.importer import import_model, input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx

    shape = (3, size, size)
    buf = io.BytesIO()
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            torch.onnx.export(m, torch.zeros(1, *shape), buf, opset_version=17, dynamo=dynamo, input_names=["x"],
                              output_names=["y"])
    except Exception as e:  # noqa: BLE001 - torch's exporter, not qfx
        return "export failed (torch): " + first_line(e)
    model = onnx.load_from_string(buf.getvalue())
    r = np.random.default_rng(1)
    try:
        qm, _ = quantize_onnx(model, r.uniform(-1, 1, (16, *shape)).astype(np.float32))
        g = import_model(qm)
    except QfxError as e:
        return "refused: " + first_line(e)
    x = r.uniform(-1, 1, (4, *shape)).astype(np.float32)
    got = output_values(g, run(g, input_codes(g, x))).reshape(len(x), -1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))]).reshape(len(x), -1)
    err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))
    return f"OK, error {err:.3f} of max |output|"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=DEFAULT)
    ap.add_argument("--route", choices=["torch", "onnx", "both"], default="both")
    ap.add_argument("--dynamo", action="store_true", help="export with torch's dynamo exporter")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tv = import_torchvision()
    counts = {"torch": 0, "onnx": 0}
    for name in a.names:
        for route in (["torch", "onnx"] if a.route == "both" else [a.route]):
            t = time.perf_counter()
            m = build(tv, name)
            size = SIZES.get(name, 32)
            res = torch_route(m, size) if route == "torch" else onnx_route(m, size, a.dynamo)
            counts[route] += res.startswith("OK")
            print(f"{name:20s} {route:5s} {res}  ({time.perf_counter() - t:.0f} s)", flush=True)
    n = len(a.names)
    print("\n" + ", ".join(f"{r}: {c} of {n}" for r, c in counts.items() if a.route in (r, "both")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
