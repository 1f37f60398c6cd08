"""Co-simulation benchmark: Verilator build time (cold vs cached), and throughput of the same testbench under
Verilator, Icarus and on the Yosys gate-level netlist, side by side in one run.

Model: a digits-MLP-sized graph 64-64-32-10 with 8-bit activations and weights (random weights; the figures depend
on the sizes, not on training). Run: ``python benchmarks/bench_cosim.py [--vectors N] [--adder cse|csd]
[--icarus-vectors N] [--netlist-vectors N] [--before-vectors N] [--no-netlist] [--no-before]``.
Targets: cold build < 60 s, >= 5,000 vectors/s under Verilator (one vector per beat). Prints one JSON object.

Build figures: ``cold_*`` is the first build in an empty cache (Verilator's design-independent runtime objects are
compiled too); ``second_design_*`` builds the same-sized MLP with other weights, reusing those runtime objects, which
is what every later new design costs. ``*_cpu_s`` is the CPU time of the child processes (verilate and g++, iverilog,
yosys, the simulator itself): on a loaded machine wall time says little.

``side_by_side``: the same design, seed and random back-pressure under Verilator, Icarus (RTL) and Icarus on the
gate-level netlist (``synth -flatten``); ``vectors_per_s`` is the testbench's streaming rate (wall clock, after
start-up), ``sim_cpu_s`` the simulator process's CPU time including its start-up (vvp loading, elaboration).

``unused_lines``: the former lint-only ``assign unused = ^{...every wire...}`` line of every layer module (what
the templates emitted before the lint pragmas replaced it) is put back into a copy of the project, exactly as it was
written, and both copies run under Verilator and Icarus with the same vectors. (The former small per-requantizer
and input-padding reductions are not put back.)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

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


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of the child processes it ran)."""
    t0, c0 = time.perf_counter(), _child_cpu()
    res = fn()
    return res, time.perf_counter() - t0, _child_cpu() - c0


_DECL = re.compile(r"^\s*logic(?: signed)? \[\d+:0\] (\w+);", re.M)


def with_unused_lines(src: Path, dst: Path) -> int:
    """Copy the RTL project ``src`` to ``dst`` with the former lint-only reduction put back into every layer module:
    ``logic unused; assign unused = ^{ <every wire of the module> };`` just before ``assign y``, as the templates
    wrote it before the Verilator lint pragmas replaced it. Returns the length of the longest line written."""
    shutil.copytree(src, dst)
    longest = 0
    for f in sorted((dst / "rtl").glob("*.sv")):
        text = f.read_text()
        at = text.find("\n    assign y = {\n")
        if at < 0:
            continue
        names = _DECL.findall(text[:at])
        if not names:
            continue
        line = f"    assign unused = ^{{ {', '.join(names)} }};"
        longest = max(longest, len(line))
        f.write_text(text[:at + 1] + "    // every wire also feeds this reduction so that lint sees no unused bits "
                     "(dropped bits are intended)\n    logic unused;\n" + line + "\n" + text[at + 1:])
    return longest


def _sig(x: float) -> float:
    """Three significant digits (rates span from 0.01 to 10,000 vectors/s here)."""
    return float(f"{x:.3g}")


def _measure(run: Callable[[int, Path], Any], n: int, work: Path) -> dict:
    """Build first (a 1-vector run; cached builds are reused), then time an ``n``-vector run: its streaming rate
    (testbench wall clock), its simulation wall time and the simulator process's CPU time (start-up included)."""
    warm, wall_b, cpu_b = _timed(lambda: run(1, work.with_name(work.name + "_build")))
    rep, wall, cpu = _timed(lambda: run(n, work))
    return {"ok": rep.ok and warm.ok, "vectors": rep.vectors, "mismatches": rep.mismatches,
            "build_wall_s": round(wall_b, 1), "build_cpu_s": round(cpu_b, 1), "build_was_cached": warm.build_cached,
            "vectors_per_s": _sig(rep.vectors_per_s), "sim_wall_s": round(wall, 2), "sim_cpu_s": round(cpu, 2),
            "vectors_per_cpu_s": _sig(rep.vectors / max(cpu, 1e-9))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=5000)
    ap.add_argument("--adder", choices=("cse", "csd"), default="cse")
    ap.add_argument("--icarus-vectors", type=int, default=200, help="vectors of the side-by-side runs (default 200)")
    ap.add_argument("--netlist-vectors", type=int, default=20,
                    help="vectors of the gate-level run (default 20: ~100k gates in an event-driven simulator)")
    ap.add_argument("--before-vectors", type=int, default=10,
                    help="vectors of the with/without unused-line runs (default 10: with the lines, Icarus needs "
                    "~20 CPU s per vector of the digits MLP)")
    ap.add_argument("--no-netlist", action="store_true", help="skip the Yosys netlist and gate-level run")
    ap.add_argument("--no-before", action="store_true", help="skip the unused-line comparison")
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

    # side by side: the same design, seed and stalls under each simulator (the Verilator build is cached by now)
    side: dict[str, Any] = {}
    nv = args.icarus_vectors

    def runner(p: Path, **kw: Any) -> Callable[[int, Path], Any]:
        return lambda n, w: run_cosim(p, n_vectors=n, seed=5, backpressure=True, work_dir=w, **kw)

    side["verilator"] = _measure(runner(proj), nv, root / "sv")
    side["icarus"] = _measure(runner(proj, sim="icarus"), nv, root / "si")
    if not args.no_netlist:
        from qfx.report.yosys import write_netlist

        net, wn, cn = _timed(lambda: write_netlist([proj / f for f in info["rtl_files"]], info["top"]))
        side["icarus_netlist"] = {**_measure(runner(proj, netlist=True), args.netlist_vectors, root / "sn"),
                                  "synth_wall_s": round(wn, 1), "synth_cpu_s": round(cn, 1),
                                  "netlist_mb": round(net.path.stat().st_size / 1e6, 1),
                                  "netlist_assigns": net.path.read_text().count("assign ")}

    # with and without the former unused-reduction lines, same vectors, both simulators
    unused: dict[str, Any] = {}
    if not args.no_before:
        before = root / "proj_before"
        longest = with_unused_lines(proj, before)
        nb = args.before_vectors
        for label, p in (("after", proj), ("before", before)):
            row: dict[str, Any] = {"longest_line": longest if label == "before" else max(
                len(ln) for f in (p / "rtl").glob("*.sv") for ln in f.read_text().splitlines())}
            for sim in ("verilator", "icarus"):
                try:
                    row[sim] = _measure(runner(p, sim=sim), nb, root / f"u_{label}_{sim}")
                except Exception as exc:  # e.g. a tool refusing the long line: that is the figure
                    row[sim] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            unused[label] = row

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
        "side_by_side": side, "side_by_side_vectors_per_s": {k: v["vectors_per_s"] for k, v in side.items()},
        "side_by_side_vectors_per_cpu_s": {k: v["vectors_per_cpu_s"] for k, v in side.items()},
        "unused_lines": unused, "load_avg_1min_end": round(os.getloadavg()[0], 1),
    }, indent=1))


if __name__ == "__main__":
    main()
