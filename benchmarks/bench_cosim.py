"""Co-simulation benchmark: Verilator build time (cold vs cached) and cocotb + Verilator throughput.

Model: a digits-MLP-sized graph 64-64-32-10 with 8-bit activations and weights (random weights; the figures depend
on the sizes, not on training). Run: ``python benchmarks/bench_cosim.py [--vectors N] [--adder cse|csd]``.
Targets: cold build < 60 s, >= 5,000 vectors/s (one vector per beat). Prints one JSON object.

Build figures: ``cold_*`` is the first build in an empty cache (Verilator's design-independent runtime objects are
compiled too); ``second_design_*`` builds the same-sized MLP with other weights, reusing those runtime objects, which
is what every later new design costs. ``*_cpu_s`` is the CPU time of the verilate and g++ processes (on a loaded
machine wall time says little).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from qfx.backends.rtl import write_project
from qfx.fixed.format import FxFormat
from qfx.fixed.kernels import lossless_acc_format
from qfx.ir.graph import Constant, Graph, Node, Op, TensorSpec


def digits_mlp(seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    sizes = [64, 64, 32, 10]
    fa = FxFormat(8, 4, signed=False, rounding="RND", overflow="SAT")
    fw = FxFormat(8, 1)
    fb = FxFormat(8, 3)
    tensors = {"x": TensorSpec("x", (64,), fa)}
    nodes, x = [], "x"
    for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = rng.integers(-40, 40, (m, n), endpoint=True)
        b = rng.integers(fb.min_code, fb.max_code, (m,), endpoint=True)
        acc = lossless_acc_format(w, fw, tensors[x].fmt, b, fb)
        last = i == len(sizes) - 2
        y = f"fc{i}"
        tensors[y] = TensorSpec(y, (m,), FxFormat(12, 6, rounding="RND", overflow="SAT") if last else
                                FxFormat(8, 4, rounding="RND", overflow="SAT"))
        nodes.append(Node(f"fc{i}", Op.DENSE, (x,), y, {"weight": Constant(w, fw), "bias": Constant(b, fb)}, {}, acc))
        x = y
        if not last:
            r = f"relu{i}"
            tensors[r] = TensorSpec(r, (m,), fa)
            nodes.append(Node(r, Op.RELU, (x,), r))
            x = r
    return Graph("digits_mlp", ("x",), (x,), tensors, tuple(nodes)).validate()


def _child_cpu() -> float:
    """CPU seconds of this process's finished children (Verilator, make, g++, the simulator)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _cpu(steps: dict) -> float:
    return round(steps.get("verilate_cpu_s", 0) + steps.get("make_cpu_s", 0), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=5000)
    ap.add_argument("--adder", choices=("cse", "csd"), default="cse")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qfx-bench-cosim-"))
    os.environ["QFX_CACHE_DIR"] = str(root / "cache")  # cold cache for this run
    from qfx.sim.cosim import run_cosim

    proj = root / "proj"
    proj.mkdir()
    g = digits_mlp()
    t0 = time.perf_counter()
    write_project(g, proj, adder=args.adder)
    gen_s = time.perf_counter() - t0
    info = json.loads((proj / "cosim.json").read_text())
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), _child_cpu()
    cold = run_cosim(proj, n_vectors=200, seed=0, backpressure=True, work_dir=root / "w0")
    cold_total, cold_cpu = time.perf_counter() - t0, _child_cpu() - c0
    t0 = time.perf_counter()
    warm = run_cosim(proj, n_vectors=200, seed=1, backpressure=True, work_dir=root / "w1")
    warm_total = time.perf_counter() - t0
    fast = run_cosim(proj, n_vectors=args.vectors, seed=2, backpressure=False, work_dir=root / "w2")
    bp = run_cosim(proj, n_vectors=args.vectors, seed=3, backpressure=True, work_dir=root / "w3")
    proj2 = root / "proj2"
    proj2.mkdir()
    write_project(digits_mlp(seed=1), proj2, adder=args.adder)
    second = run_cosim(proj2, n_vectors=200, seed=0, backpressure=True, work_dir=root / "w4")
    cb, sb = cold.extra.get("build", {}), second.extra.get("build", {})
    print(json.dumps({
        "model": "64-64-32-10 dense, 8-bit", "adder": args.adder, "adders": info["adders"],
        "latency": info["latency"], "generate_s": round(gen_s, 2),
        "cold_build_s": cold.build_s, "cold_build_cpu_s": _cpu(cb), "cold_build_steps": cb,
        "cold_cosim_total_s": round(cold_total, 2), "cold_cosim_total_cpu_s": round(cold_cpu, 1),
        "second_design_build_s": second.build_s,
        "second_design_build_cpu_s": _cpu(sb),
        "second_design_build_steps": sb, "cpus": os.cpu_count(),
        "load_avg_1min_before": round(load_before, 1), "load_avg_1min_after": round(os.getloadavg()[0], 1),
        "cached_cosim_total_s": round(warm_total, 2), "cached_hit": warm.build_cached,
        "vectors": args.vectors, "vectors_per_s_no_backpressure": fast.vectors_per_s,
        "vectors_per_s_random_backpressure": bp.vectors_per_s,
        "mismatches": cold.mismatches + warm.mismatches + fast.mismatches + bp.mismatches + second.mismatches,
    }, indent=1))


if __name__ == "__main__":
    main()
