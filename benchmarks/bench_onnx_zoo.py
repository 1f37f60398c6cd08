"""Import real (Q)ONNX models unmodified and check them against QONNX's executor, C simulation and RTL co-simulation.

For every ``.onnx`` file under the given folders (or the files given), one table row:

* **import**: ``ok`` or the one-line refusal (``qfx export`` would exit 2 with the same line). A model whose float
  input has no format (no QONNX annotation, no Quant on the input) is imported with ``--input-format NAME=TYPE``
  for that file, else with ``--default-input-format`` (the row says which).
* **QONNX agreement**: ``qonnx.core.onnx_exec.execute_onnx`` (after ``qonnx.util.cleanup.cleanup_model``, QONNX's
  own clean-up) on random inputs that are exactly codes of the IR input format (so both executors see the same
  numbers), one sample at a time; compared with ``qfx.ir.run`` through ``output_values``. Quantized outputs (a
  Quant/BipolarQuant/Trunc writes them): share of equal output codes and largest difference in output LSBs.
  Float outputs (e.g. a final BatchNorm): largest difference relative to the largest |output|, and the share of
  equal argmax for vector outputs.
* **C-sim / RTL co-sim**: the model through ``qfx export``'s pass flow, written as an HLS project and an RTL
  project; ``qfx.sim.csim.run_csim`` and ``qfx.sim.cosim.run_cosim`` compare every output code with the golden
  interpreter (both must report 0 mismatches). Vector counts shrink for large models (``--work-budget``).
* ONNX **QDQ / QOperator** models (QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, QGemm) are
  compared with onnxruntime on the whole model instead (what their users run; the row says "vs onnxruntime").
* **--quantize-float**: a float model (refused: "quantize the model") is first put through ``qfx quantize`` with
  synthetic calibration data (uniform in [0, 1), 256 inputs; 8-bit weights and activations), and the row is about
  that QONNX model (its agreement with QONNX's executor is then exact: power-of-two scales).
* **times**: wall seconds of import, of the QONNX reference, of C-sim (build + run) and of co-sim (build + run).

    python benchmarks/bench_onnx_zoo.py ../shared/models/qonnx-public $(python -c "import qonnx, os; \
print(os.path.join(os.path.dirname(qonnx.__file__), 'data', 'onnx'))") --markdown zoo.md
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from qfx.errors import QfxError

_MOVES = frozenset({"DepthToSpace", "SpaceToDepth", "Transpose", "Reshape", "Flatten", "MaxPool", "Resize", "Upsample",
                    "Identity", "Relu", "Squeeze", "Unsqueeze"})
DEFAULT_INPUT_FORMAT = "ap_ufixed<8,0,AP_RND_CONV,AP_SAT>"  # images in [0, 1) (MNIST-style) when nothing says


def find_models(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob("*.onnx")) if p.is_dir() else [p])
    return out


def _short(msg: str, n: int = 150) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def import_model(path: Path, fmts: dict[str, str], default_fmt: str | None):
    """(graph or None, input format used or None, refusal line or None, seconds)."""
    from qfx.onnx import import_onnx

    t0 = time.perf_counter()
    given = fmts.get(path.name)
    try:
        return import_onnx(path, input_fmt=given), given, None, time.perf_counter() - t0
    except QfxError as exc:
        if given is None and default_fmt and "--input-format" in str(exc):
            try:
                return import_onnx(path, input_fmt=default_fmt), default_fmt, None, time.perf_counter() - t0
            except QfxError as exc2:
                return None, default_fmt, str(exc2), time.perf_counter() - t0
        return None, given, str(exc), time.perf_counter() - t0


def quantize_float(path: Path, out_dir: Path) -> Path:
    """``qfx quantize`` with synthetic calibration data: the QONNX model's path."""
    import onnx

    from qfx.onnx.importer import load_model_file
    from qfx.onnx.cleanup import cleanup
    from qfx.onnx.quantize import quantize_onnx
    from qfx.onnx.whole_sample import BATCH_AXIS_KEY

    model = load_model_file(path)
    whole = BATCH_AXIS_KEY in {p.key: p.value for p in cleanup(model)[0].metadata_props}
    inits = {i.name for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    calib = {}
    for inp in (i for i in model.graph.input if i.name not in inits):
        shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim][0 if whole else 1:]
        calib[inp.name] = rng.uniform(0, 1, (256 if not whole else 32, *shape)).astype(np.float32)
    q, _ = quantize_onnx(model, calib if len(calib) > 1 else next(iter(calib.values())))
    dest = out_dir / f"{path.stem}_q.onnx"
    onnx.save(q, dest)
    return dest


def _meta(graph, k: int) -> dict[str, Any]:
    return graph.meta["input_meta"][k] if "input_meta" in graph.meta else graph.meta


def random_codes(graph, n: int, seed: int) -> list[np.ndarray]:
    """Random IR input codes, one batch per graph input (every input is fed, not only the first)."""
    rng = np.random.default_rng(seed)
    out = []
    for k, name in enumerate(graph.inputs):
        spec = graph.tensor(name)
        shape = (n, *spec.shape)
        if _meta(graph, k).get("input_quant") == "bipolar":
            out.append(rng.choice(np.array([-1, 1]), size=shape))
        else:
            out.append(rng.integers(spec.fmt.min_code, spec.fmt.max_code, size=shape, endpoint=True))
    return out


def float_inputs(graph, codes: list[np.ndarray]) -> list[np.ndarray]:
    """The ONNX model's float inputs whose IR codes are ``codes`` (inverse of ``input_codes``), one per input."""
    xs = []
    for k, c in enumerate(codes):
        meta = _meta(graph, k)
        if meta.get("input_quant") == "bipolar":
            x = c.astype(np.float64)
        else:
            x = graph.tensor(graph.inputs[k]).fmt.from_int(c) * float(meta.get("input_scale", 1.0))
        perm = meta.get("input_perm")
        xs.append(np.transpose(x, np.argsort(perm)) if perm else x)
    return xs


def _ir_codes(graph, xs: list[np.ndarray], codes: list[np.ndarray]) -> Any:
    """Interpreter inputs from the float inputs (None when a code does not round-trip through float32)."""
    from qfx.onnx.importer import input_codes

    cin = [input_codes(graph, x.astype(np.float64), k) for k, x in enumerate(xs)]
    if not all(np.array_equal(a, b) for a, b in zip(cin, codes)):
        return None
    return cin[0] if len(cin) == 1 else dict(zip(graph.inputs, cin))


def qonnx_agreement(path: Path, graph, n: int, seed: int) -> dict[str, Any]:
    """QONNX's executor vs the qfx golden interpreter on ``n`` inputs."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.util.cleanup import cleanup_model
    except ImportError:
        return {"note": "qonnx not installed (pip install qonnx)"}
    from qfx.ir import run
    from qfx.onnx.importer import output_values

    t0 = time.perf_counter()
    import onnx

    raw = onnx.load(str(path))
    if any(nd.op_type in _QDQ_OPS for nd in raw.graph.node):  # ONNX QDQ / QOperator: onnxruntime is the reference
        return ort_agreement(raw, graph, n, seed, t0)
    mw = None
    for kw in ({"override_inpsize": 1}, {}):  # batch 1 (some exports fix a large batch), else as exported
        try:
            mw = cleanup_model(ModelWrapper(str(path)), **kw)
            break
        except Exception:
            continue
    if mw is None:  # qonnx's clean-up is a help for its executor; shape inference alone may do
        from qonnx.transformation.infer_shapes import InferShapes

        mw = ModelWrapper(str(path)).transform(InferShapes())
    inits = {t.name for t in mw.graph.initializer}
    gins = [i for i in mw.graph.input if i.name not in inits]
    loose = [vi for vi in (*gins, *mw.graph.output) if vi.type.tensor_type.shape.dim and
             not vi.type.tensor_type.shape.dim[0].dim_value]
    if loose:  # qonnx's override_inpsize fixes the first input only; its executor wants every batch fixed
        from qonnx.transformation.infer_shapes import InferShapes

        for vi in loose:
            vi.type.tensor_type.shape.dim[0].dim_value = 1
        mw = mw.transform(InferShapes())
        gins = [i for i in mw.graph.input if i.name not in inits]
    ishapes = [[1] + [d.dim_value or 1 for d in i.type.tensor_type.shape.dim][1:] for i in gins]
    oname = mw.graph.output[0].name
    prod = next((nd for nd in mw.graph.node if oname in nd.output), None)
    while prod is not None and prod.op_type in _MOVES:  # ops that only move (or max) quantized values
        prod = next((nd for nd in mw.graph.node if prod.input[0] in nd.output), None)
    quantized = prod is not None and prod.op_type in ("Quant", "BipolarQuant", "Trunc")
    codes = random_codes(graph, n, seed)
    xs = [x.astype(np.float32) for x in float_inputs(graph, codes)]
    cin = _ir_codes(graph, xs, codes)
    if cin is None:
        return {"note": "input codes do not round-trip through float32"}
    for k, x in enumerate(xs):
        perm = _meta(graph, k).get("input_perm")
        if perm and any(p.key == "qfx.input_perm" for p in mw.model.metadata_props):
            xs[k] = np.transpose(x, perm)  # a qfx quantize output: the file's input is already the IR's layout
    ys = []
    for i in range(n):
        out = execute_onnx(mw, {gi.name: x[i:i + 1].reshape(sh) for gi, x, sh in zip(gins, xs, ishapes)})
        ys.append(np.asarray(out[oname], dtype=np.float64).reshape(-1))
    ref = np.stack(ys)
    got = output_values(graph, run(graph, cin)).reshape(n, -1)
    res: dict[str, Any] = {"n": n, "qonnx_s": time.perf_counter() - t0, "quantized_output": quantized}
    if quantized:
        fout = graph.tensor(graph.outputs[0]).fmt
        sc = (graph.meta.get("output_scale") or [None])[0]
        s = np.asarray(sc if sc is not None else [1.0], dtype=np.float64)
        per = got.shape[1] // s.size if s.size > 1 else 1
        lsb = fout.step * (np.repeat(s, per) if s.size > 1 else s)
        d = np.abs(got - ref) / lsb
        res.update(equal=float(np.mean(d < 0.5)), max_lsb=float(d.max()))
    else:
        res.update(max_rel=float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)))
    if got.shape[1] > 1:
        res["argmax_equal"] = float(np.mean(got.argmax(1) == ref.argmax(1)))
    return res


_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"})


def ort_agreement(model, graph, n: int, seed: int, t0: float) -> dict[str, Any]:
    """onnxruntime (its default optimizations, i.e. what a user of the QDQ/QOperator model runs) vs the qfx golden
    interpreter on ``n`` inputs that are codes of the IR input format."""
    import onnxruntime as ort

    from qfx.ir import run
    from qfx.onnx.importer import output_values

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sins = sess.get_inputs()
    ishapes = [[1] + [d if isinstance(d, int) else 1 for d in si.shape][1:] for si in sins]
    codes = random_codes(graph, n, seed)
    xs = [x.astype(np.float32) for x in float_inputs(graph, codes)]
    cin = _ir_codes(graph, xs, codes)
    if cin is None:
        return {"note": "input codes do not round-trip through float32"}
    ref = np.stack([np.asarray(sess.run(None, {si.name: x[i:i + 1].reshape(sh) for si, x, sh in
                                                zip(sins, xs, ishapes)})[0], np.float64).reshape(-1)
                    for i in range(n)])
    got = output_values(graph, run(graph, cin)).reshape(n, -1)
    oname = model.graph.output[0].name
    prod = next((nd for nd in model.graph.node if oname in nd.output), None)
    while prod is not None and prod.op_type in _MOVES:
        prod = next((nd for nd in model.graph.node if prod.input[0] in nd.output), None)
    res: dict[str, Any] = {"n": n, "qonnx_s": time.perf_counter() - t0, "reference": "onnxruntime"}
    if prod is not None and prod.op_type == "DequantizeLinear":
        from onnx import numpy_helper

        lsb = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name == prod.input[1]]
        d = np.abs(got - ref) / float(np.ravel(lsb[0])[0]) if lsb else np.abs(got - ref)
        res.update(quantized_output=True, equal=float(np.mean(d < 0.5)), max_lsb=float(d.max()))
    else:
        res.update(quantized_output=False, max_rel=float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)))
    if got.shape[1] > 1:
        res["argmax_equal"] = float(np.mean(got.argmax(1) == ref.argmax(1)))
    return res


def _work(graph) -> int:
    """Multiply-accumulates per vector (a rough cost, to size the simulations)."""
    w = 0
    for nd in graph.nodes:
        out = graph.tensor(nd.output).size
        wt = nd.consts.get("weight")
        if nd.op.value == "matmul":  # two activations: K products per output
            w += out * int(graph.tensor(nd.inputs[0]).shape[-1])
        else:
            w += out * (int(np.prod(wt.codes.shape[1:])) if wt is not None else 1)
    return max(w, 1)


def simulate(graph, csim_n: int, cosim_n: int, budget: float, do_csim: bool, do_cosim: bool,
             csim_max: float = float("inf"), cosim_max: float = float("inf")) -> dict[str, Any]:
    from qfx.commands.export import export_graph
    from qfx.ir.passes import DEFAULT_FLOW, run_flow

    g = run_flow(graph, DEFAULT_FLOW).graph
    work = _work(g)
    res: dict[str, Any] = {}
    res["work"] = work
    if work > csim_max:
        res["csim"], do_csim = {"skipped": f"{work / 1e6:.0f} M MAC/vector > --csim-max-work"}, False
    if work > cosim_max:
        res["cosim"], do_cosim = {"skipped": f"{work / 1e6:.1f} M MAC/vector > --cosim-max-work"}, False
    with tempfile.TemporaryDirectory(prefix="qfx_zoo_") as tmp:
        if do_csim:
            from qfx.sim.csim import run_csim

            n = int(max(5, min(csim_n, budget / work)))
            t0 = time.perf_counter()
            try:
                d = export_graph(g, "hls", Path(tmp) / "hls")
                r = run_csim(d, n_vectors=n)
                res["csim"] = {"n": n, "mismatches": r.mismatches, "s": time.perf_counter() - t0}
            except QfxError as exc:
                res["csim"] = {"error": _short(exc)}
        if do_cosim:
            from qfx.sim.cosim import run_cosim

            n = int(max(3, min(cosim_n, budget / 20 / work)))
            t0 = time.perf_counter()
            try:
                d = export_graph(g, "rtl", Path(tmp) / "rtl")
                r = run_cosim(d, n_vectors=n)
                res["cosim"] = {"n": n, "mismatches": r.mismatches, "received": r.received, "ok": r.ok,
                                "s": time.perf_counter() - t0}
            except QfxError as exc:
                res["cosim"] = {"error": _short(exc)}
    return res


def fmt_row(r: dict[str, Any]) -> list[str]:
    imp = "ok" if r.get("ok") else f"refused: {_short(r.get('refusal', ''), 120)}"
    if r.get("input_format"):
        imp += f" (with input {r['input_format']})"
    q = r.get("qonnx", {})
    if "note" in q or "error" in q:
        agree = q.get("note") or q.get("error")
    elif "equal" in q:
        agree = f"{100 * q['equal']:.1f} % equal, max {q['max_lsb']:.2g} LSB"
    elif "max_rel" in q:
        agree = f"float out: max rel diff {q['max_rel']:.1e}"
    else:
        agree = "–"
    if "argmax_equal" in q:
        agree += f", argmax {100 * q['argmax_equal']:.0f} %"
    if q.get("n"):
        agree += f" (n={q['n']}{', vs onnxruntime' if q.get('reference') == 'onnxruntime' else ''})"

    def sim(k: str) -> str:
        s = r.get("sim", {}).get(k)
        if not s:
            return "–"
        if "error" in s:
            return f"error: {s['error']}"
        if "skipped" in s:
            return f"skipped ({s['skipped']})"
        extra = "" if k == "csim" or s.get("ok") else " NOT OK"
        return f"{s['mismatches']} / {s['n']} vectors{extra}"

    t = [f"{r.get('import_s', 0):.1f}"]
    if q.get("qonnx_s") is not None:
        t.append(f"{q['qonnx_s']:.1f}")
    for k in ("csim", "cosim"):
        s = r.get("sim", {}).get(k)
        if s and "s" in s:
            t.append(f"{s['s']:.0f}")
    return [r["model"], imp, agree, sim("csim"), sim("cosim"), " / ".join(t)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="folders (searched for *.onnx) or .onnx files")
    ap.add_argument("--input-format", action="append", default=[], metavar="FILE=TYPE",
                    help="input format for one model file name, e.g. tfc_2w2a.onnx='ap_ufixed<8,0,AP_RND_CONV,AP_SAT>'")
    ap.add_argument("--default-input-format", default=DEFAULT_INPUT_FORMAT,
                    help=f"format for float inputs nothing else gives (default {DEFAULT_INPUT_FORMAT}; '' = refuse)")
    ap.add_argument("--vectors", type=int, default=100, help="inputs for the QONNX comparison")
    ap.add_argument("--csim-vectors", type=int, default=200)
    ap.add_argument("--cosim-vectors", type=int, default=50)
    ap.add_argument("--work-budget", type=float, default=5e8, help="MACs per simulation; fewer vectors for big models")
    ap.add_argument("--qonnx-work-budget", type=float, default=3e8,
                    help="MACs for the QONNX reference runs; fewer inputs for big models")
    ap.add_argument("--csim-max-work", type=float, default=2e8, help="skip C-sim above this many MACs per vector")
    ap.add_argument("--cosim-max-work", type=float, default=3e6,
                    help="skip RTL co-sim above this many MACs per vector (the Verilator build grows with the image)")
    ap.add_argument("--no-csim", action="store_true")
    ap.add_argument("--no-cosim", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantize-float", action="store_true",
                    help="put float models through qfx quantize (synthetic calibration) instead of reporting the "
                    "refusal")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="also write all results to this JSON file")
    args = ap.parse_args(argv)
    fmts = dict(kv.split("=", 1) for kv in args.input_format)
    rows = []
    for path in find_models(args.paths):
        r: dict[str, Any] = {"model": path.name if path.parent.name in ("", ".") else f"{path.parent.name}/{path.name}"}
        g, fmt, refusal, secs = import_model(path, fmts, args.default_input_format or None)
        if g is None and args.quantize_float and "qfx quantize" in (refusal or ""):
            t0 = time.perf_counter()
            try:
                path = quantize_float(path, Path(tempfile.mkdtemp(prefix="qfx_zoo_q_")))
                g, fmt, refusal, secs = import_model(path, fmts, None)
                r["model"] += " (qfx quantize)"
                secs += time.perf_counter() - t0
            except QfxError as exc:
                refusal = f"qfx quantize: {exc}"
        r.update(ok=g is not None, input_format=fmt, import_s=secs)
        if g is None:
            r["refusal"] = refusal
        else:
            try:
                nq = int(max(3, min(args.vectors, args.qonnx_work_budget / _work(g))))
                r["qonnx"] = qonnx_agreement(path, g, nq, args.seed)
            except Exception as exc:  # the reference itself failing is reported, not fatal
                r["qonnx"] = {"error": _short(f"{type(exc).__name__}: {exc}")}
            try:
                r["sim"] = simulate(g, args.csim_vectors, args.cosim_vectors, args.work_budget,
                                    not args.no_csim, not args.no_cosim, args.csim_max_work, args.cosim_max_work)
            except Exception as exc:
                r["sim"] = {"csim": {"error": _short(f"{type(exc).__name__}: {exc}")}}
                traceback.print_exc()
        rows.append(r)
        print(" | ".join(fmt_row(r)), flush=True)
    head = ["model", "import", "agreement with QONNX executor", "C-sim mismatches", "RTL co-sim mismatches",
            "times s (import / qonnx / csim / cosim)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in fmt_row(r)) + " |" for r in rows]
    ok = sum(r["ok"] for r in rows)
    lines.append("")
    lines.append(f"{ok} of {len(rows)} models imported.")
    table = "\n".join(lines)
    print()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    bad = [r for r in rows if any(isinstance(s, dict) and s.get("mismatches") for s in r.get("sim", {}).values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
