"""Import the ImageNet architectures the onnx wheel ships as test data, through ``qfx quantize``.

``onnx/backend/test/data/light/*.onnx`` are the ONNX model zoo's AlexNet, DenseNet-121, GoogLeNet (Inception v1),
Inception v2, ResNet-50, ShuffleNet, SqueezeNet 1.0, VGG-19 and ZFNet-512 at opset 9, with every weight written as a
``ConstantOfShape`` (one repeated value: the files are small). Each row: ``qfx quantize`` on ``--calib`` synthetic
images (uniform in [0, 1)), import, and, with ``--run``, the golden interpreter on two more images against
onnxruntime's float output (largest difference relative to the largest output). ``--random-weights`` first replaces
every ConstantOfShape weight by He-scaled random values (the repeated constants make activations grow by orders of
magnitude per layer, so some accumulators need more than 64 bits: a property of those weights, not of the
architecture).

    python benchmarks/bench_onnx_testzoo.py [--random-weights] [--run] [--calib 4] [names...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np


def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def with_random_weights(model, seed: int = 0):
    """A copy whose ConstantOfShape weights are He-scaled normal values (biases small, BN scales/variances ~1)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g, r = m.graph, np.random.default_rng(seed)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in inits:
            keep.append(n)
            continue
        shape = [int(v) for v in inits[n.input[0]].ravel()]
        if len(shape) > 1:
            val = r.normal(0, np.sqrt(2.0 / max(int(np.prod(shape[1:])), 1)), shape)
        elif any(k in n.output[0] for k in ("var", "riv", "scale", "_s_")):
            val = r.uniform(0.5, 1.5, shape)
        else:
            val = r.normal(0, 0.05, shape)
        g.initializer.append(numpy_helper.from_array(val.astype(np.float32), n.output[0]))
    del g.node[:]
    g.node.extend(keep)
    m.ir_version = max(m.ir_version, 4)  # initializers that are not graph inputs
    return m


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    from qfx.errors import QfxError
    from qfx.ir.interpret import run
    from qfx.onnx.importer import import_model, input_codes, output_values
    from qfx.onnx.quantize import quantize_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="model names (light_alexnet ...; default: all)")
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--run", action="store_true", help="interpreter vs onnxruntime on two images")
    ap.add_argument("--random-weights", action="store_true")
    args = ap.parse_args(argv)
    files = sorted(light_dir().glob("*.onnx"))
    if args.names:
        files = [f for f in files if any(n in f.stem for n in args.names)]
    if not files:
        print(f"no models under {light_dir()}", file=sys.stderr)
        return 2
    print(f"load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}; weights: "
          f"{'He-scaled random' if args.random_weights else 'as shipped (ConstantOfShape)'}\n")
    print("| model | nodes (ONNX) | result | IR nodes | quantize + import s | interpreter vs onnxruntime |")
    print("|---|---|---|---|---|---|")
    imported = 0
    for f in files:
        model = onnx.load(f)
        if args.random_weights:
            model = with_random_weights(model)
        x = np.random.default_rng(0).uniform(0, 1, (args.calib + 2, 3, 224, 224)).astype(np.float32)
        t0 = time.time()
        try:
            qm, _ = quantize_onnx(model, x[:args.calib])
            g = import_model(qm)
        except QfxError as exc:
            msg = " ".join(str(exc).split())
            print(f"| {f.stem} | {len(model.graph.node)} | refused: {msg[:140]} | – | {time.time() - t0:.0f} | – |")
            continue
        secs = time.time() - t0
        imported += 1
        agree = "–"
        if args.run:
            got = output_values(g, run(g, input_codes(g, x[-2:]))).reshape(2, -1)
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            ref = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in (len(x) - 2, len(x) - 1)])
            ref = ref.reshape(2, -1)
            agree = f"max rel diff {np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12):.1e}"
        print(f"| {f.stem} | {len(model.graph.node)} | ok | {len(g.nodes)} | {secs:.0f} | {agree} |", flush=True)
    print(f"\n{imported} of {len(files)} imported")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
