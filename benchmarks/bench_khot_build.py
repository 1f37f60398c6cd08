"""C-simulation build time of K-hot vs plain weights for the same model (issue 16: K-hot HLS code compiled ~14x
slower than plain when every weight was unrolled into shift-add statements).

Writes the HLS project of one model twice (plain weights, then the same weights projected to K-hot), builds each
testbench with g++ in a fresh, empty build cache (nothing cached), runs the C simulation and prints, side by side:
generated C++ size, g++ wall time and CPU time, csim mismatches against the golden interpreter, and the K-hot/plain
ratio (target: <= 2x).

    python benchmarks/bench_khot_build.py [--model mlp|cnn|both] [--khot 2] [--vectors 1000]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qfx.backends.hls import write_project
from qfx.fixed.csd import khot_project
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.fixed.ops import conv_out_size
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec
from qfx.sim.csim import run_csim

FX = FxFormat(8, 3)
FW = FxFormat(8, 1)
FB = FxFormat(12, 4)


def child_cpu() -> float:
    """CPU seconds (user + sys) of finished child processes (g++ and the csim binary)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _weights(rng: np.random.Generator, shape: tuple[int, ...], khot: int) -> np.ndarray:
    w = rng.integers(FW.min_code, FW.max_code, shape, endpoint=True)
    return khot_project(w, khot, FW.min_code, FW.max_code) if khot else w


def mlp_graph(khot: int, sizes: tuple[int, ...] = (64, 32, 10), seed: int = 0) -> Graph:
    """Dense-ReLU-...-Dense MLP, 8-bit weights; the same random weights for every ``khot`` before projection."""
    rng = np.random.default_rng(seed)
    tensors = {"x": TensorSpec("x", (sizes[0],), FX)}
    nodes, cur = [], "x"
    for i in range(len(sizes) - 1):
        w = _weights(rng, (sizes[i + 1], sizes[i]), khot)
        b = rng.integers(FB.min_code, FB.max_code, (sizes[i + 1],), endpoint=True)
        acc = lossless_acc_format(w, FW, tensors[cur].fmt, b, FB)
        tensors[f"fc{i}"] = TensorSpec(f"fc{i}", (sizes[i + 1],), FX)
        nodes.append(Node(f"fc{i}", Op.DENSE, (cur,), f"fc{i}", {"weight": Constant(w, FW), "bias": Constant(b, FB)},
                          {"khot": khot}, acc))
        cur = f"fc{i}"
        if i < len(sizes) - 2:
            tensors[f"relu{i}"] = TensorSpec(f"relu{i}", (sizes[i + 1],), FX)
            nodes.append(Node(f"relu{i}", Op.RELU, (cur,), f"relu{i}"))
            cur = f"relu{i}"
    name = "mlp_" + "_".join(map(str, sizes)) + (f"_k{khot}" if khot else "")
    return Graph(name, ("x",), (cur,), tensors, tuple(nodes)).validate()


def cnn_graph(khot: int, seed: int = 0) -> Graph:
    """Digits-sized CNN: conv3x3(1->8)-ReLU-conv3x3(8->8)-ReLU-flatten-dense(10), every weight layer K-hot or not."""
    rng = np.random.default_rng(seed)
    tensors = {"x": TensorSpec("x", (1, 8, 8), FX)}
    nodes, cur, c, h = [], "x", 1, 8
    for i, o in enumerate((8, 8)):
        w = _weights(rng, (o, c, 3, 3), khot)
        b = rng.integers(FB.min_code, FB.max_code, (o,), endpoint=True)
        acc = lossless_acc_format(w.reshape(o, -1), FW, tensors[cur].fmt, b, FB)
        h = conv_out_size(h, 3, 1, 1)
        tensors[f"conv{i}"] = TensorSpec(f"conv{i}", (o, h, h), FX)
        consts = {"weight": Constant(w, FW), "bias": Constant(b, FB)}
        nodes.append(Node(f"conv{i}", Op.CONV2D, (cur,), f"conv{i}", consts,
                          {"stride": (1, 1), "padding": (1, 1), "khot": khot}, acc))
        tensors[f"relu{i}"] = TensorSpec(f"relu{i}", (o, h, h), FX)
        nodes.append(Node(f"relu{i}", Op.RELU, (f"conv{i}",), f"relu{i}"))
        cur, c = f"relu{i}", o
    tensors["flat"] = TensorSpec("flat", (c * h * h,), FX)
    nodes.append(Node("flat", Op.FLATTEN, (cur,), "flat"))
    w = _weights(rng, (10, c * h * h), khot)
    acc = lossless_acc_format(w, FW, FX)
    tensors["fc"] = TensorSpec("fc", (10,), FX)
    nodes.append(Node("fc", Op.DENSE, ("flat",), "fc", {"weight": Constant(w, FW)}, {"khot": khot}, acc))
    return Graph("cnn" + (f"_k{khot}" if khot else ""), ("x",), ("fc",), tensors, tuple(nodes)).validate()


def measure(graph: Graph, vectors: int) -> dict[str, float]:
    """Write the project, build it in an empty cache (wall and CPU seconds of g++, timed with a 1-vector run), then
    run ``vectors`` vectors through the cached binary (mismatches, vectors/s)."""
    with tempfile.TemporaryDirectory(prefix="qfx-khot-bench-") as tmp:
        prj = Path(tmp) / "prj"
        prj.mkdir()
        t0 = time.perf_counter()
        write_project(graph, prj)
        write_s = time.perf_counter() - t0
        kb = sum(p.stat().st_size for p in (prj / "firmware").glob("*")) / 1024
        old = os.environ.get("QFX_CACHE_DIR")
        os.environ["QFX_CACHE_DIR"] = str(Path(tmp) / "cache")  # fresh: nothing cached
        try:
            cpu0 = child_cpu()
            build = run_csim(prj, 1, write_report=False)
            cpu = child_cpu() - cpu0
            rep = run_csim(prj, vectors, write_report=False)  # cache hit: the same binary
        finally:
            if old is None:
                os.environ.pop("QFX_CACHE_DIR", None)
            else:
                os.environ["QFX_CACHE_DIR"] = old
    return {"write_s": write_s, "firmware_kb": kb, "build_s": build.build_s, "cpu_s": cpu,
            "mismatches": rep.mismatches, "outputs": rep.outputs_compared, "vps": rep.vectors_per_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn", "both"), default="mlp")
    ap.add_argument("--khot", type=int, default=2)
    ap.add_argument("--vectors", type=int, default=1000)
    a = ap.parse_args(argv)
    models = ("mlp", "cnn") if a.model == "both" else (a.model,)
    build = {"mlp": mlp_graph, "cnn": cnn_graph}
    print(f"{'model':<16} {'weights':<8} {'firmware KB':>11} {'write s':>8} {'g++ wall s':>10} {'g++ CPU s':>9} "
          f"{'csim vectors/s':>14} {'mismatches':>16}")
    bad = 0
    for m in models:
        res = {}
        for k in (0, a.khot):
            g = build[m](k)
            r = measure(g, a.vectors)
            res[k] = r
            bad += r["mismatches"]
            print(f"{g.name:<16} {'K=' + str(k) if k else 'plain':<8} {r['firmware_kb']:>11.1f} {r['write_s']:>8.2f} "
                  f"{r['build_s']:>10.1f} {r['cpu_s']:>9.1f} {r['vps']:>14,.0f} "
                  f"{r['mismatches']:>6} / {r['outputs']:<7}", flush=True)
        print(f"{m}: K-hot / plain build: wall {res[a.khot]['build_s'] / res[0]['build_s']:.2f}x, "
              f"CPU {res[a.khot]['cpu_s'] / res[0]['cpu_s']:.2f}x (target <= 2x)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
