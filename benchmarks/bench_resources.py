"""FPGA resources (Yosys 0.23 synth_xilinx, xc7, out of context) of constant matrix-vector products and whole models.

Part ``cmvm``: one 16x16 dense layer of 8-bit signed constants (seed 0) on 8-bit signed inputs, four ways, all
flattened and synthesized by the same Yosys:
  (1) ``*`` by constants (Yosys maps them to DSP48E1), (2) per-output CSD adder trees, no sharing,
  (3) qfx shared adder graph (``build_adder_graph``), (4) da4ml 0.6 (``da4ml.cmvm.solve`` + ``RTLModel``;
  its design is a 2-stage pipeline, so its FFs are pipeline registers; compare LUT/CARRY). da4ml's
  ``shift_adder.v`` is patched in the temporary copy (see ``_patch_shift_adder``) so Yosys does not turn
  out-of-range bits into don't-cares.
Prints LUT/FF/CARRY/DSP and the LUT ratio qfx/da4ml.

Part ``models``: the RTL backend's whole AXI4-Stream designs (``qfx.backends.rtl``, adder graph with sharing, one
register stage per layer) of the real digits models, ``qfx.models.build_model("mlp")`` (64-64-32-10) and
``build_model("cnn")`` (``DigitsCNN``: 16-channel conv stem + residual block, max-pool, dense head; its convs are
pixel-folded, one output pixel per clock, with the BN/ReLU/residual add after them fused in), quantized as
``qfx train``/the demo do (``QFXConfig``: weights, BN, activations W bits, biases 2W, input 8 bits) at W = 8 and 4,
K-hot off and on (K=2 at 8 bits, K=1 at 4 bits: every 4-bit code already has at most 2 CSD digits). Weights are trained, briefly: float pre-training (default 20 epochs,
seed 0, shared by all rows of a model) then per row a short QAT (default 2 epochs) — realistic weight
distributions, not a tuned model; the exact-mode test accuracy is printed. K-hot rows assert 0 DSP.

Why per-part synthesis: the 8-bit MLP took > 10 min as one Yosys run. Measured with Yosys ``-t`` timestamps on one
hierarchical run of an 8-bit digits MLP (6.6k shift-add adders): 267 s CPU but 9 min wall, because the shared
2-core machine (load 5-9) gave it half a core. No pass is pathological; the time is spread over the LUT-level work
and grows with the adder count: ``techmap`` to gates/cells 32 %, ``abc`` 22 %, the ``opt_expr``/``opt_clean``/
``opt_dff``/``opt_merge`` rounds on the gate netlist 33 %, ``opt_lut_ins`` 7 %; the 64->64 layer alone is half of it
(133 s CPU, 0.95 GB). ``-abc9`` changes the mapping being measured and is slower (32->10 layer: 30 s vs 17 s CPU);
``-flatten`` would only add cross-layer optimization. So the design is synthesized as ``qfx report`` reports it
(hierarchy kept), but in parts: every layer module in its own Yosys run (with the shared requantizer and the layer's
own ``<module>_*.sv`` helpers), the top level with the layer modules as black boxes (``run_synth(lib=...)``: its
pipeline/frame registers and handshake), at most ``--jobs`` (default 2) Yosys runs at a time — shared by every bench
process on the machine — and summed. Without flattening nothing crosses module boundaries, so the sum equals the
one-run figure up to ABC's context-dependent LUT mapping (``--check-split`` runs both: 4-bit MLP 39,610 vs 39,607
LUT, K=1 26,888 vs 26,895; 4-bit CNN 32,546 vs 32,499, K=1 28,673 vs 28,497; FF, CARRY, DSP identical). Splitting lets two cores work on one design, gives every part
its own ``--timeout`` (a part over it prints ``timeout`` in the row instead of figures) and caches per part. The
table prints wall time (including waits for a Yosys slot) and the load-independent CPU time of the Yosys processes.

    /work/venv/bin/python benchmarks/bench_resources.py [--part cmvm|models|all] [--kinds mlp cnn] [--bits 8 4]
        [--jobs 2] [--timeout S] [--float-epochs 20] [--qat-epochs 2] [--check-split] [--no-cache] [--json OUT]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qfx.backends.adder_graph import build_adder_graph  # noqa: E402
from rtl_bench_designs import render_bench_cmvm, render_bench_mult  # noqa: E402
from qfx.report.yosys import Resources, run_synth  # noqa: E402


def _row(label: str, r: Resources | None, extra: str = "") -> str:
    if r is None:
        return f"{label:<34} {'-':>7} {'-':>6} {'-':>6} {'-':>4}  {extra}"
    return f"{label:<34} {r.lut:>7} {r.ff:>6} {r.carry:>6} {r.dsp:>4}  {extra}"


def _patch_shift_adder(path: Path) -> None:
    """da4ml's shift_adder may declare BW_OUT > BW_ADD; Yosys 0.23 makes the out-of-range select bits undef (x)
    and then deletes logic that depends on them (a 16x16 layer fell from ~4.4k to 1.1k LUT). Extend instead, as
    the value needs (sign-extend signed results and differences), so every design is synthesized as intended."""
    s = path.read_text()
    old = "  assign out = accum[BW_OUT-1:0];"
    if old not in s:
        raise RuntimeError("unexpected da4ml shift_adder.v (patch point not found)")
    new = ("  wire accum_ext_bit = (SIGNED0 == 1 || SIGNED1 == 1 || IS_SUB == 1) ? accum[BW_ADD-1] : 1'b0;\n"
           "  wire [BW_ADD+BW_OUT-1:0] accum_sx = {{BW_OUT{accum_ext_bit}}, accum};\n"
           "  assign out = accum_sx[BW_OUT-1:0];")
    path.write_text(s.replace(old, new))


def _da4ml_sources(w: np.ndarray, in_width: int, outdir: Path) -> tuple[list[Path], str, dict]:
    """Verilog from da4ml for y = W @ x (x signed in_width-bit integers); checked against W @ x before use."""
    from da4ml.cmvm import solve
    from da4ml.codegen import RTLModel

    lo, hi = -(1 << (in_width - 1)), (1 << (in_width - 1)) - 1
    # da4ml computes x @ kernel; its binding reads the raw buffer, so the kernel must be C-contiguous
    kernel = np.ascontiguousarray(w.T.astype(np.float32))
    t0 = time.perf_counter()
    sol = solve(kernel, qintervals=[(float(lo), float(hi), 1.0)] * w.shape[1])
    secs = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    xs = np.vstack([np.full(w.shape[1], lo), np.full(w.shape[1], hi),
                    rng.integers(lo, hi, size=(30, w.shape[1]), endpoint=True)])
    for x in xs:
        got = np.asarray(sol(x.astype(np.float64)), dtype=np.float64)
        if not np.array_equal(got.astype(np.int64), w @ x):
            raise RuntimeError("da4ml solution does not compute W @ x")
    RTLModel(sol, "da4ml_cmvm", outdir).write()
    src = outdir / "src"
    _patch_shift_adder(src / "static" / "shift_adder.v")
    files = sorted(src.glob("da4ml_cmvm*.v")) + sorted((src / "static").glob("*.v"))
    files = [f for f in files if "wrapper" not in f.name and "lookup_table" not in f.name]
    n_add = sum(1 for s in sol.solutions for op in s.ops if op.opcode in (0, 1))
    return files, "da4ml_cmvm", {"adders": n_add, "solve_s": secs, "stages": len(sol.solutions)}


def bench_cmvm(timeout: float) -> dict:
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 127, size=(16, 16), endpoint=True)
    iw = 8
    out: dict = {"matrix": "16x16 int8 (seed 0)", "inputs": "int8", "designs": {}}
    print("16x16 dense layer, 8-bit constants, 8-bit inputs; Yosys 0.23 synth_xilinx -flatten (xc7, OOC)")
    print(f"{'design':<34} {'LUT':>7} {'FF':>6} {'CARRY':>6} {'DSP':>4}  notes")
    with tempfile.TemporaryDirectory(prefix="qfx-bench-res-") as td:
        tdir = Path(td)
        t0 = time.perf_counter()
        g_csd = build_adder_graph(w, share=False)
        t_csd = time.perf_counter() - t0
        t0 = time.perf_counter()
        g_cse = build_adder_graph(w, share=True)
        t_cse = time.perf_counter() - t0
        designs = [("(1) '*' by constants", "cm_mult", render_bench_mult(w, "cm_mult", iw), ""),
                   ("(2) CSD trees, no sharing", "cm_csd", render_bench_cmvm(g_csd, "cm_csd", iw),
                    f"{g_csd.adder_count} adders, depth {g_csd.depth}, {t_csd:.2f} s"),
                   ("(3) qfx shared adder graph", "cm_cse", render_bench_cmvm(g_cse, "cm_cse", iw),
                    f"{g_cse.adder_count} adders, depth {g_cse.depth}, {t_cse:.2f} s")]
        for label, top, src, note in designs:
            f = tdir / f"{top}.v"
            f.write_text(src)
            r = run_synth([f], top=top, flatten=True, timeout=timeout, use_cache=True)
            print(_row(label, r.total, f"{note} (synth {r.seconds:.0f} s{', cached' if r.cached else ''})"),
                  flush=True)
            out["designs"][top] = {**r.total.to_dict(), "note": note}
        try:
            files, top, meta = _da4ml_sources(w, iw, tdir / "da4ml")
            r = run_synth(files, top=top, flatten=True, timeout=timeout, use_cache=True)
            note = f"{meta['adders']} adders, {meta['stages']} stages, {meta['solve_s']:.2f} s"
            print(_row("(4) da4ml 0.6 (cmvm.solve)", r.total, f"{note} (synth {r.seconds:.0f} s)"), flush=True)
            out["designs"]["da4ml"] = {**r.total.to_dict(), "note": note}
            ratio = out["designs"]["cm_cse"]["lut"] / max(r.total.lut, 1)
            out["lut_ratio_qfx_over_da4ml"] = round(ratio, 3)
            print(f"LUT ratio qfx/da4ml = {ratio:.3f} (goal <= 1.0); "
                  f"CARRY ratio = {out['designs']['cm_cse']['carry'] / max(r.total.carry, 1):.3f}")
        except Exception as e:  # noqa: BLE001 - a benchmark reports why the comparison is missing
            print(_row("(4) da4ml", None, f"not run: {type(e).__name__}: {e}"))
            out["designs"]["da4ml"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _trained_graphs(kind: str, configs: list[tuple[int, int]], float_epochs: int, qat_epochs: int, seed: int):
    """Yield (bits, khot, IR graph, exact test accuracy) per config: one float training, then PTQ + short QAT."""
    import copy

    import torch

    from qfx.data import load_digits_split
    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.models import build_model
    from qfx.nn import QFXConfig, quantize_model
    from qfx.nn.train import evaluate, fit_epochs, make_optimizer

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xtr, ytr, xte, yte = load_digits_split(seed=0)
    fmodel = build_model(kind)
    if float_epochs:
        fit_epochs(fmodel, make_optimizer(fmodel, 1e-2), xtr, ytr, float_epochs, 64, gen)
    calib = xtr[torch.randperm(len(xtr), generator=gen)[:512]]
    for bits, khot in configs:
        cfg = QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits, input_width=8,
                        khot=khot or None)
        q = quantize_model(copy.deepcopy(fmodel), cfg, calib)
        if qat_epochs:
            fit_epochs(q, make_optimizer(q, 2e-3, 1e-2), xtr, ytr, qat_epochs, 64,
                       torch.Generator().manual_seed(seed + 1))
        q.eval()
        acc = evaluate(q, xte, yte, exact=True)
        g = run_flow(capture(q, torch.zeros(1, 1, 8, 8), name=f"digits_{kind}_w{bits}_k{khot}"), DEFAULT_FLOW).graph
        yield bits, khot, g, acc


@contextlib.contextmanager
def _yosys_slot(jobs: int):
    """One of ``jobs`` slots shared by every bench process on this machine (flock on files in the cache folder):
    two benchmarks started side by side still run at most ``jobs`` Yosys processes together."""
    import fcntl

    from qfx.sim.toolchain import cache_dir

    d = cache_dir("yosys-slots")
    d.mkdir(parents=True, exist_ok=True)
    while True:
        for i in range(max(1, jobs)):
            f = open(d / f"slot{i}", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        time.sleep(1.0)


def _children_cpu() -> float:
    """CPU seconds of finished child processes (Yosys and its ABC): the load-independent synthesis cost."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def synth_split(prj: Path, *, jobs: int, timeout: float, use_cache: bool = True) -> dict:
    """Yosys figures of a qfx RTL project, synthesized in parts (see the module docstring) with ``jobs`` at a time.

    Returns total Resources (None if a part failed), per-part results, the wall time and the CPU time."""
    from concurrent.futures import ThreadPoolExecutor

    from qfx.errors import QfxError
    from qfx.report.resources import load_rtl_project

    p, info, files = load_rtl_project(prj)
    top = info["top"]
    by_name = {f.stem: f for f in files}
    layer_mods = [la["module"] for la in info.get("layers", []) if la.get("module") in by_name]
    # a layer's own helper files are named after it (``<module>_pix.sv``: a folded conv's pixel kernel)
    own = {m: [f for f in files if f.stem.startswith(m + "_")] for m in layer_mods}
    mine = {f for fs in own.values() for f in fs}
    shared = [f for f in files if f.stem not in layer_mods and f.stem != top and f not in mine]
    parts = {m: ([*shared, *own[m], by_name[m]], m, ()) for m in layer_mods}
    parts[top] = ([*shared, by_name[top]], top, [by_name[m] for m in layer_mods])
    order = sorted(parts, key=lambda m: -sum(f.stat().st_size for f in parts[m][0]))  # longest first

    def one(m: str):
        srcs, t, lib = parts[m]
        try:
            with _yosys_slot(jobs):
                return m, run_synth(srcs, top=t, lib=lib, timeout=timeout, use_cache=use_cache)
        except QfxError as e:
            return m, ("timeout" if "exceeded" in str(e) else f"error: {e}")

    t0, c0 = time.perf_counter(), _children_cpu()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        results = dict(ex.map(one, order))
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    bad = {m: r for m, r in results.items() if isinstance(r, str)}
    total = None
    if not bad:
        top_r = results[top]
        total = top_r.total
        for m in layer_mods:
            total = total + results[m].total.scaled(top_r.instances.get(m, 1))
    return {"total": total, "parts": results, "failed": bad, "wall_s": wall, "cpu_s": cpu,
            "cached": all(getattr(r, "cached", False) for r in results.values()), "info": info}


_MODEL_HEAD = (f"{'model':<5} {'W':>2} {'K-hot':>5} {'LUT':>7} {'FF':>6} {'CARRY':>6} {'DSP':>4} {'latency':>7} "
               f"{'II':>3} {'synth wall/CPU':>15}  notes")


def bench_models(kinds: list[str], widths: list[int], jobs: int, timeout: float, float_epochs: int,
                 qat_epochs: int, check_split: bool, use_cache: bool) -> dict:
    from qfx.backends.rtl import write_project
    from qfx.report.resources import report_project

    res: dict = {}
    print(f"\nWhole RTL designs of the digits models (adder=cse, register stage per layer); Yosys synth_xilinx xc7 "
          f"OOC, per-part runs, -j{jobs}")
    print(_MODEL_HEAD)
    for kind in kinds:
        configs = [(b, k) for b in widths for k in (0, 2 if b > 4 else 1)]
        t0 = time.perf_counter()
        for bits, khot, g, acc in _trained_graphs(kind, configs, float_epochs, qat_epochs, seed=0):
            t_train = time.perf_counter() - t0
            label = f"{kind} W={bits} {'K=' + str(khot) if khot else 'plain'}"
            with tempfile.TemporaryDirectory(prefix="qfx-bench-res-") as td:
                prj = Path(td) / "prj"
                write_project(g, prj)
                r = synth_split(prj, jobs=jobs, timeout=timeout, use_cache=use_cache)
                info = r["info"]
                lat, ii = info.get("latency"), info.get("ii", 1)
                row = {"model": kind, "bits": bits, "khot": khot, "latency": lat, "ii": ii,
                       "adders": info.get("adders"), "accuracy": round(acc, 4), "synth_wall_s": round(r["wall_s"], 1),
                       "synth_cpu_s": round(r["cpu_s"], 1), "cached": r["cached"]}
                note = f"{info.get('adders')} adders, acc {100 * acc:.2f} %, train {t_train:.0f} s"
                head = f"{kind:<5} {bits:>2} {khot or '-':>5} "
                if r["total"] is None:
                    what = "; ".join(f"{m}: {v}" for m, v in r["failed"].items())
                    print(f"{head}{'timeout' if 'timeout' in what else 'failed':>7} {'-':>6} {'-':>6} {'-':>4} "
                          f"{lat:>7} {ii:>3} {'':>15}  {what}; {note}", flush=True)
                    row["failed"] = r["failed"]
                else:
                    t = r["total"]
                    if khot:
                        assert t.dsp == 0, f"{label}: K-hot design uses {t.dsp} DSP"
                    synth = "cached" if r["cached"] else f"{r['wall_s']:.0f} / {r['cpu_s']:.0f} s"
                    print(f"{head}{t.lut:>7} {t.ff:>6} {t.carry:>6} {t.dsp:>4} {lat:>7} {ii:>3} {synth:>15}  {note}",
                          flush=True)
                    row.update(t.to_dict())
                    if check_split:
                        c0 = _children_cpu()
                        one = report_project(prj, timeout=timeout, use_cache=use_cache)
                        row["one_run_cpu_s"] = round(_children_cpu() - c0, 1)
                        d = {k: getattr(t, k) - getattr(one.total, k) for k in ("lut", "ff", "carry", "dsp")}
                        row["one_run"] = {**one.total.to_dict(), "synth_s": round(one.seconds, 1)}
                        print(f"      one hierarchical run: LUT {one.total.lut} FF {one.total.ff} CARRY "
                              f"{one.total.carry} DSP {one.total.dsp} ({one.seconds:.0f} / {row['one_run_cpu_s']:.0f} s); "
                              f"split - one = {d}",
                              flush=True)
                res[label] = row
            t0 = time.perf_counter()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("cmvm", "models", "all"), default="all")
    ap.add_argument("--kinds", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"])
    ap.add_argument("--bits", nargs="+", type=int, choices=(4, 8), default=[8, 4])
    ap.add_argument("--jobs", type=int, default=2, help="Yosys runs at a time (default 2)")
    ap.add_argument("--timeout", type=float, default=900, help="per-synthesis-run limit in seconds (default 900)")
    ap.add_argument("--float-epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--check-split", action="store_true",
                    help="also synthesize each model design in one run and print the difference")
    ap.add_argument("--no-cache", action="store_true", help="re-run Yosys even when a cached result exists")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    out: dict = {}
    if args.part in ("cmvm", "all"):
        out["cmvm"] = bench_cmvm(args.timeout)
    if args.part in ("models", "all"):
        out["models"] = bench_models(args.kinds, args.bits, args.jobs, args.timeout, args.float_epochs,
                                     args.qat_epochs, args.check_split, not args.no_cache)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
