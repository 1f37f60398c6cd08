"""qfx HLS export + C simulation vs hls4ml (ONNX -> compile -> predict) on the same 16-64-32-32-5 MLP.

Prints, side by side: build time (qfx: write_project + g++ of the testbench, cold cache; hls4ml: convert + compile),
throughput (qfx: C simulation binary over a file of vectors, and qfx's vectorised int64 golden emulation;
hls4ml: predict()), and the ratios against the targets (qfx build <= 0.5x hls4ml compile; qfx emulation >= 20x
hls4ml predict). Also reports qfx figures for a digits-sized CNN (1x8x8 input, 16-channel residual block).

The golden interpreter is also timed with the layer kernels of an earlier commit (``--before REV``, default HEAD:
``qfx/fixed/ops.py`` and ``qfx/fixed/kernels.py`` of that revision, read with ``git show`` and swapped in for the
timing only), side by side with the current ones on the same inputs, and both outputs are compared. Its throughput
target: >= 10x the C simulation on the digits CNN (CPU time).

    python benchmarks/bench_csim.py [--vectors 10000] [--skip-hls4ml] [--before REV | --no-before]
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qfx.backends.hls import write_project
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import conv_out_size, scale_shift_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.ir.interpret import random_inputs, run
from qfx.sim.csim import run_csim

F16 = FxFormat(16, 6)


def child_cpu() -> float:
    """CPU seconds (user + sys) used so far by finished child processes (g++, the csim binary, hls4ml's build)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
MLP_SIZES = (16, 64, 32, 32, 5)


def torch_mlp(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    layers = []
    for i in range(len(MLP_SIZES) - 1):
        layers.append(torch.nn.Linear(MLP_SIZES[i], MLP_SIZES[i + 1]))
        if i < len(MLP_SIZES) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def mlp_graph(model) -> Graph:
    """The torch MLP with weights, biases and activations in ap_fixed<16,6>; lossless accumulators."""
    tensors = {"x": TensorSpec("x", (MLP_SIZES[0],), F16)}
    nodes = []
    cur = "x"
    linears = [m for m in model if hasattr(m, "weight")]
    for i, lin in enumerate(linears):
        w = F16.to_int(lin.weight.detach().double().numpy())
        b = F16.to_int(lin.bias.detach().double().numpy())
        acc = lossless_acc_format(w, F16, tensors[cur].fmt, b, F16)
        out = f"fc{i}"
        tensors[out] = TensorSpec(out, (w.shape[0],), F16)
        nodes.append(Node(f"fc{i}", Op.DENSE, (cur,), out, {"weight": Constant(w, F16), "bias": Constant(b, F16)},
                          {"khot": 0}, acc))
        cur = out
        if i < len(linears) - 1:
            tensors[f"relu{i}"] = TensorSpec(f"relu{i}", (w.shape[0],), F16)
            nodes.append(Node(f"relu{i}", Op.RELU, (cur,), f"relu{i}"))
            cur = f"relu{i}"
    return Graph("mlp_16_64_32_32_5", ("x",), (cur,), tensors, tuple(nodes)).validate()


def cnn_graph(seed: int = 0, c: int = 16) -> Graph:
    """Digits-CNN shape: conv-BN-ReLU stem, residual block (conv-BN-ReLU, conv-BN, add, ReLU), maxpool, dense."""
    rng = np.random.default_rng(seed)
    fw, fb = FxFormat(8, 1), FxFormat(16, 6)
    tensors = {"x": TensorSpec("x", (1, 8, 8), F16)}
    nodes: list[Node] = []

    def t(name, shape, fmt=F16):
        tensors[name] = TensorSpec(name, shape, fmt)
        return name

    def conv(name, x, o):
        ci = tensors[x].shape[0]
        w = rng.integers(-60, 60, (o, ci, 3, 3))
        acc = lossless_acc_format(w.reshape(o, -1), fw, tensors[x].fmt)
        nodes.append(Node(name, Op.CONV2D, (x,), t(name, (o, 8, 8)), {"weight": Constant(w, fw)},
                          {"stride": (1, 1), "padding": (1, 1), "khot": 0}, acc))
        return name

    def bn(name, x):
        s = rng.integers(20, 120, (c,))
        h = rng.integers(-2000, 2000, (c,))
        f = scale_shift_format(tensors[x].fmt, fw, fb)
        nodes.append(Node(name, Op.SCALE_SHIFT, (x,), t(name, tensors[x].shape), {"scale": Constant(s, fw),
                                                                                    "shift": Constant(h, fb)}, {}, f))
        return name

    def relu(name, x):
        nodes.append(Node(name, Op.RELU, (x,), t(name, tensors[x].shape)))
        return name

    h = relu("stem_relu", bn("stem_bn", conv("stem_conv", "x", c)))
    b = relu("b_relu1", bn("b_bn1", conv("b_conv1", h, c)))
    b = bn("b_bn2", conv("b_conv2", b, c))
    nodes.append(Node("add", Op.ADD, (b, h), t("add", (c, 8, 8))))
    a = relu("act", "add")
    nodes.append(Node("pool", Op.MAXPOOL2D, (a,), t("pool", (c, conv_out_size(8, 2, 2, 0), 4)),
                      attrs={"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0)}))
    nodes.append(Node("flatten", Op.FLATTEN, ("pool",), t("flat", (c * 16,))))
    w = rng.integers(-100, 100, (10, c * 16))
    bias = rng.integers(-500, 500, (10,))
    acc = lossless_acc_format(w, fw, F16, bias, fb)
    nodes.append(Node("head", Op.DENSE, ("flat",), t("head", (10,)), {"weight": Constant(w, fw),
                                                                       "bias": Constant(bias, fb)}, {"khot": 0}, acc))
    return Graph("digits_cnn", ("x",), ("head",), tensors, tuple(nodes)).validate()


def before_ops(rev: str):
    """``qfx.fixed.ops`` functions as of ``rev`` (with that revision's kernels), or None when git cannot show them."""
    import subprocess
    import types

    root = Path(__file__).resolve().parent.parent
    try:
        src = {name: subprocess.run(["git", "show", f"{rev}:qfx/fixed/{name}.py"], cwd=root, capture_output=True,
                                    text=True, check=True).stdout for name in ("kernels", "ops")}
    except (OSError, subprocess.CalledProcessError):
        return None
    kern = types.ModuleType("qfx_before_kernels")
    kern.__dict__["__name__"] = "qfx_before_kernels"
    exec(compile(src["kernels"], f"{rev}:qfx/fixed/kernels.py", "exec"), kern.__dict__)
    ops_src = src["ops"].replace("from qfx.fixed import kernels as K", "K = _before_kernels")
    mod = types.ModuleType("qfx_before_ops")
    mod.__dict__.update(__name__="qfx_before_ops", _before_kernels=kern)
    exec(compile(ops_src, f"{rev}:qfx/fixed/ops.py", "exec"), mod.__dict__)
    return mod


def emulation_vps(g: Graph, x: np.ndarray, ops_module=None) -> tuple[float, float, np.ndarray]:
    """(wall, CPU) vectors/s of the golden interpreter on ``x``; with ``ops_module`` its functions replace
    ``qfx.fixed.ops``'s for the run (the registry calls them through the module)."""
    import qfx.fixed.ops as fops

    saved = {}
    if ops_module is not None:
        for name in fops.__all__:
            if hasattr(ops_module, name):
                saved[name] = getattr(fops, name)
                setattr(fops, name, getattr(ops_module, name))
    try:
        run(g, x[:10])
        t0, p0 = time.perf_counter(), time.process_time()
        y = run(g, x)
        wall, cpu = time.perf_counter() - t0, time.process_time() - p0
    finally:
        for name, f in saved.items():
            setattr(fops, name, f)
    return len(x) / wall, len(x) / max(cpu, 1e-9), y


def bench_qfx(g: Graph, n: int, io: str = "parallel") -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="qfx-bench-") as tmp:
        d = Path(tmp) / "prj"
        d.mkdir()
        t0 = time.perf_counter()
        write_project(g, d, io=io)
        out["export_s"] = time.perf_counter() - t0
        c0 = child_cpu()
        rep = run_csim(d, n, seed=0)
        c1 = child_cpu()
        out["build_s"] = rep.build_s
        out["csim_run_s"] = rep.run_s
        out["csim_vps"] = rep.vectors_per_s
        out["mismatches"] = rep.mismatches
        t0 = time.perf_counter()
        run_csim(d, n, seed=0)  # cached build: only the testbench runs
        out["csim_total_cached_s"] = time.perf_counter() - t0
        c2 = child_cpu()
        out["csim_cpu_vps"] = n / max(c2 - c1, 1e-9)
        out["build_cpu_s"] = (c1 - c0) - (c2 - c1)
    x = random_inputs(g, n, seed=1)
    out["emu_vps"], out["emu_cpu_vps"], y = emulation_vps(g, x)
    if BEFORE is not None:
        out["before_vps"], out["before_cpu_vps"], yb = emulation_vps(g, x, BEFORE)
        out["before_same"] = bool(np.array_equal(y, yb))
    return out


BEFORE = None  # set by main(): the ops module of the --before revision


def onnx_for_hls4ml(model, path: Path) -> None:
    """torch.onnx.export of the float MLP, then the graph rewrites hls4ml's ONNX reader needs without qonnx:
    Gemm -> MatMul + Add, initializer shapes in value_info, node/tensor names without '/' or '.'."""
    import onnx
    import torch
    from onnx import helper, numpy_helper

    raw = path.with_suffix(".raw.onnx")
    torch.onnx.export(model, torch.zeros(1, MLP_SIZES[0]), str(raw), input_names=["x"], output_names=["y"],
                      dynamo=False)
    om = onnx.load(str(raw))
    g = om.graph
    ren = {i.name: f"c{k}" for k, i in enumerate(g.initializer)}
    for i in g.initializer:
        i.name = ren[i.name]
    vals: dict[str, str] = {}
    for k, nd in enumerate(g.node):
        nd.name = f"node{k}"
        for j, o in enumerate(nd.output):
            if o not in ("x", "y"):
                vals[o] = f"v{k}_{j}"
                nd.output[j] = vals[o]
    for nd in g.node:
        for j, x in enumerate(nd.input):
            nd.input[j] = ren.get(x, vals.get(x, x))
    inits = {i.name: i for i in g.initializer}
    nodes = []
    for nd in g.node:
        if nd.op_type == "Gemm":
            a, w, b = nd.input
            W = numpy_helper.to_array(inits[w])
            if any(at.name == "transB" and at.i for at in nd.attribute):
                W = W.T.copy()
            g.initializer.remove(inits[w])
            g.initializer.append(numpy_helper.from_array(W, w))
            mid = nd.output[0] + "_mm"
            nodes.append(helper.make_node("MatMul", [a, w], [mid], name=nd.name + "_mm"))
            nodes.append(helper.make_node("Add", [mid, b], [nd.output[0]], name=nd.name + "_add"))
        else:
            nodes.append(nd)
    del g.node[:]
    g.node.extend(nodes)
    for i in g.initializer:
        g.value_info.append(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)))
    om = onnx.shape_inference.infer_shapes(om)
    onnx.save(om, str(path))


def bench_hls4ml(model, n: int) -> dict:
    import contextlib
    import io

    import hls4ml
    import onnx

    out = {}
    with tempfile.TemporaryDirectory(prefix="hls4ml-bench-") as tmp:
        p = Path(tmp) / "mlp.onnx"
        onnx_for_hls4ml(model, p)
        om = onnx.load(str(p))
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            cfg = hls4ml.utils.config_from_onnx_model(om, granularity="model", default_precision="ap_fixed<16,6>",
                                                      backend="Vitis")
            hm = hls4ml.converters.convert_from_onnx_model(om, output_dir=str(Path(tmp) / "prj"), hls_config=cfg,
                                                           backend="Vitis", io_type="io_parallel")
            out["convert_s"] = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), child_cpu()
            hm.compile()
            out["compile_s"] = time.perf_counter() - t0
            out["compile_cpu_s"] = child_cpu() - c0
        x = np.random.default_rng(0).uniform(-8, 8, (n, MLP_SIZES[0])).astype(np.float32)
        hm.predict(x[:10])
        t0, p0 = time.perf_counter(), time.process_time()
        hm.predict(x)
        out["predict_vps"] = n / (time.perf_counter() - t0)
        out["predict_cpu_vps"] = n / max(time.process_time() - p0, 1e-9)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=10000)
    ap.add_argument("--skip-hls4ml", action="store_true")
    ap.add_argument("--before", default="HEAD", help="git revision whose golden kernels are timed side by side")
    ap.add_argument("--no-before", action="store_true")
    args = ap.parse_args(argv)
    global BEFORE
    BEFORE = None if args.no_before else before_ops(args.before)
    cold = tempfile.mkdtemp(prefix="qfx-bench-cache-")
    os.environ["QFX_CACHE_DIR"] = cold  # cold build cache: every g++ run below is real
    try:
        model = torch_mlp()
        q_mlp = bench_qfx(mlp_graph(model), args.vectors)
        q_cnn = bench_qfx(cnn_graph(), min(args.vectors, 2000))
        q_cnn_s = bench_qfx(cnn_graph(), min(args.vectors, 2000), io="stream")
    finally:
        shutil.rmtree(cold, ignore_errors=True)
    print(f"MLP {'-'.join(map(str, MLP_SIZES))} ap_fixed<16,6>, {args.vectors} vectors "
          f"(wall time; CPU time in brackets: robust on a loaded machine; load average {os.getloadavg()[0]:.1f})")
    print(f"  qfx    export {q_mlp['export_s']:.2f} s, g++ build {q_mlp['build_s']:.2f} s [{q_mlp['build_cpu_s']:.2f} s "
          f"cpu] (cold cache), csim {q_mlp['csim_vps']:,.0f} [{q_mlp['csim_cpu_vps']:,.0f}] vectors/s, golden int64 "
          f"emulation {q_mlp['emu_vps']:,.0f} [{q_mlp['emu_cpu_vps']:,.0f}] vectors/s, mismatches "
          f"{q_mlp['mismatches']}, cached csim re-run {q_mlp['csim_total_cached_s']:.2f} s")
    h = None
    if not args.skip_hls4ml:
        try:
            h = bench_hls4ml(model, args.vectors)
        except Exception as exc:  # hls4ml path outside our control: say why, keep qfx's figures
            print(f"  hls4ml failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    if h:
        qb = q_mlp["export_s"] + q_mlp["build_s"]
        hb = h["convert_s"] + h["compile_s"]
        print(f"  hls4ml convert {h['convert_s']:.2f} s, compile {h['compile_s']:.2f} s [{h['compile_cpu_s']:.2f} s cpu],"
              f" predict {h['predict_vps']:,.0f} [{h['predict_cpu_vps']:,.0f}] vectors/s")
        print(f"  ratios (wall) : qfx export+build / hls4ml convert+compile = {qb / hb:.2f} (target <= 0.5); "
              f"qfx csim / hls4ml predict = {q_mlp['csim_vps'] / h['predict_vps']:.1f}x; "
              f"qfx emulation / hls4ml predict = {q_mlp['emu_vps'] / h['predict_vps']:.1f}x (target >= 20)")
        print(f"  ratios (cpu)  : qfx build / hls4ml compile = {q_mlp['build_cpu_s'] / h['compile_cpu_s']:.2f}; "
              f"qfx csim / hls4ml predict = {q_mlp['csim_cpu_vps'] / h['predict_cpu_vps']:.1f}x; "
              f"qfx emulation / hls4ml predict = {q_mlp['emu_cpu_vps'] / h['predict_cpu_vps']:.1f}x")
    for label, q in (("io_parallel", q_cnn), ("io_stream", q_cnn_s)):
        print(f"digits CNN (1x8x8, 16 ch, residual), {label}: export {q['export_s']:.2f} s, g++ build "
              f"{q['build_s']:.2f} s [{q['build_cpu_s']:.2f} s cpu], csim {q['csim_vps']:,.0f} "
              f"[{q['csim_cpu_vps']:,.0f}] vectors/s, emulation {q['emu_vps']:,.0f} [{q['emu_cpu_vps']:,.0f}] "
              f"vectors/s ({q['emu_cpu_vps'] / q['csim_cpu_vps']:.1f}x csim, CPU; target >= 10), mismatches "
              f"{q['mismatches']}")
    if BEFORE is not None:
        print(f"golden interpreter, kernels of {args.before} vs now (CPU vectors/s, same inputs, outputs identical: "
              f"{q_mlp['before_same'] and q_cnn['before_same']}):")
        for label, q in (("MLP", q_mlp), ("digits CNN", q_cnn)):
            print(f"  {label}: before {q['before_vps']:,.0f} [{q['before_cpu_vps']:,.0f}], now {q['emu_vps']:,.0f} "
                  f"[{q['emu_cpu_vps']:,.0f}] ({q['emu_cpu_vps'] / q['before_cpu_vps']:.1f}x)")
    print(f"load average at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())} (1 / 5 / 15 min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
