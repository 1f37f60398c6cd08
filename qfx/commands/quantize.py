"""``qfx quantize``: post-training quantization of a float ONNX model into a QONNX model qfx imports."""
from __future__ import annotations

import argparse
from pathlib import Path

from qfx.errors import BadInputError

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  qfx quantize model.onnx --calib calib.npy -o model_q.onnx
  qfx quantize model.onnx --calib calib.npy -o model_q.onnx --weight-bits 6 --act-bits 8 --force
  qfx export model_q.onnx --to hls -o hls_prj

Power-of-two (fixed-point) scales at the given widths, calibrated on the data: the graph input, weights, biases
and the end of every Conv/Gemm/MatMul(+BN)(+ReLU) chain get a QONNX Quant node. A final Softmax is dropped. The
agreement of the quantized model (qfx's golden interpreter) with the float model on the calibration data is
printed.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("quantize", help="post-training quantization of a float ONNX model (QONNX out)",
                              description="Insert calibrated power-of-two QONNX Quant nodes into a float ONNX model.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="float ONNX model (torch or Keras export)")
    p.add_argument("--calib", required=True, metavar="NPY",
                   help="calibration inputs: a .npy array of shape (N, ...) laid out as the model's input, or an "
                        ".npz with one array per input name (several inputs)")
    p.add_argument("-o", "--output", required=True, help="QONNX model to write (.onnx)")
    p.add_argument("--weight-bits", type=int, default=8, help="weight width (default 8)")
    p.add_argument("--act-bits", type=int, default=8, help="activation width (default 8)")
    p.add_argument("--bias-bits", type=int, default=16, help="bias width (default 16)")
    p.add_argument("--input-bits", type=int, default=None, help="input width (default: --act-bits)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from qfx.onnx.importer import import_model, load_model_file
    from qfx.onnx.quantize import quantize_onnx
    from qfx.outdir import atomic_output_file

    out = Path(args.output).expanduser().absolute()
    if out.suffix.lower() != ".onnx":
        raise BadInputError(f"output {out.name!r} must end in .onnx")
    if out.exists() and not args.force:
        raise BadInputError(f"output {out} already exists (use --force to replace it)")
    try:
        calib = np.load(Path(args.calib).expanduser(), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read calibration data {args.calib}: {str(exc).splitlines()[0][:120]}") from None
    model = load_model_file(args.model)
    qmodel, report = quantize_onnx(model, calib, args.weight_bits, args.act_bits, args.bias_bits, args.input_bits)
    graph = import_model(qmodel, origin=str(out))  # it must import, or nothing is written
    with atomic_output_file(out, args.force) as fh:
        fh.write(qmodel.SerializeToString())
    if not args.quiet:
        for line in report:
            print(f"[quantize] {line}")
        agree = float_agreement(model, graph, calib)
        if agree:
            n = len(calib[calib.files[0]]) if hasattr(calib, "files") else len(calib)
            print(f"[quantize] vs the float model on {n} calibration inputs: {agree}")
        print(f"wrote {out} ({len(graph.nodes)} qfx nodes after import)")
    return 0


def float_agreement(model, graph, calib) -> str:
    """Argmax agreement and largest difference of qfx's interpreter on the quantized model vs the float model."""
    import numpy as np
    import onnxruntime as ort

    from qfx.ir import run
    from qfx.onnx.importer import input_codes, output_values

    from qfx.onnx.quantize import (
        _INT_TYPES, agreement_text, free_batch, multi_input_agreement, quiet_options, run_batches,
    )

    if hasattr(calib, "files"):  # an .npz: one array per graph input
        return multi_input_agreement(model, graph, calib)

    try:
        sess = ort.InferenceSession(free_batch(model).SerializeToString(), quiet_options(),
                                    providers=["CPUExecutionProvider"])
        ints = model.graph.input[0].type.tensor_type.elem_type in _INT_TYPES  # token indices stay integers
        ref = run_batches(sess, sess.get_inputs()[0].name, calib.astype(np.int64 if ints else np.float32))[0]
    except Exception:  # the float model may not run under onnxruntime as is (custom ops): no comparison
        return ""
    got = output_values(graph, run(graph, input_codes(graph, calib))).reshape(len(calib), -1)
    last = next((n for n in model.graph.node if model.graph.output[0].name in n.output), None)
    if last is not None and last.op_type == "Softmax":  # dropped by quantize: compare probabilities
        e = np.exp(got - got.max(axis=1, keepdims=True))
        got = e / e.sum(axis=1, keepdims=True)
    return agreement_text(got, np.asarray(ref, dtype=np.float64).reshape(len(calib), -1))
