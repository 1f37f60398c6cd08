"""The whole qfx flow on the bundled digits data, as a Python API (``qfx demo`` is a thin wrapper around it).

Train a float CNN, quantize it without training (PTQ) and with quantization-aware fine-tuning (learned binary
points), capture the IR, export ONNX + a Vitis HLS project + an RTL project, then check the output bits of every
executor on the same input vectors: golden interpreter vs the exact-mode torch model, onnxruntime, C simulation and
RTL co-simulation; finally a Yosys resource estimate, ``summary.json`` and a self-contained ``report.html``.

Why one function with stages: every stage that needs an external tool (g++, Verilator, Yosys) or a module that is
not installed reports ``skipped``/``not available`` with the reason and an install hint, and the rest still runs.
The exit status is 1 only when an executor disagrees (or a check could not complete); a missing tool never fails.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qfx.errors import BadInputError, MissingToolError, OutputExistsError, QfxError
from qfx.report.levels import LEVEL_TITLES

__all__ = ["DemoConfig", "StageResult", "DemoResult", "run_demo", "demo_vectors", "format_summary", "LEVELS"]

#: bit-exactness levels, in the order they are checked and printed
LEVELS = ("emulation", "onnxruntime", "csim", "rtl")
LEVEL_WHAT = {"emulation": "golden interpreter vs exact-mode torch model",
              "onnxruntime": "golden interpreter vs onnxruntime on model.onnx",
              "csim": "golden interpreter vs g++ + ap_types (hls/)",
              "rtl": "golden interpreter vs Verilator + cocotb, AXI4-Stream with stalls (rtl/)"}


@dataclass
class DemoConfig:
    """What ``run_demo`` does; the defaults are ``qfx demo``'s (about 3-4 minutes on 2 idle cores)."""

    output: str | Path = "qfx_demo"
    force: bool = False
    bits: int = 8
    khot: int | None = None
    epochs: int = 6  # fixed-point fine-tuning epochs (QAT)
    float_epochs: int = 8
    sweep_bits: tuple[int, ...] = (4, 6)  # extra widths for the accuracy-vs-bits plot (QAT + PTQ each)
    sweep_epochs: int | None = None  # QAT epochs of the sweep widths (default: ``epochs``)
    vectors: int = 1000
    seed: int = 0
    quiet: bool = False
    skip: tuple[str, ...] = ()  # stages to leave out: onnx, csim, rtl, resources, sweep
    synth_timeout: float = 600.0  # a safety net: the default CNN takes ~155 s of Yosys wall time on 2 idle cores
    threads: int | None = None
    model: str = "cnn"  # "cnn" or "mlp" (qfx.models)
    rtl_max_products: int = 20_000  # fully parallel RTL above this many constant products is skipped (too slow)

    def validate(self) -> None:
        if not 2 <= int(self.bits) <= 16:
            raise BadInputError(f"--bits must be in 2..16, got {self.bits}")
        if self.khot is not None and not 1 <= int(self.khot) <= 8:
            raise BadInputError(f"--khot must be in 1..8, got {self.khot}")
        if int(self.epochs) < 0 or int(self.float_epochs) < 1:
            raise BadInputError("--epochs must be >= 0 and --float-epochs >= 1")
        if int(self.vectors) < 1 or int(self.vectors) > 1_000_000:
            raise BadInputError(f"--vectors must be in 1..1000000, got {self.vectors}")
        bad = set(self.skip) - set(SKIPPABLE)
        if bad:
            raise BadInputError(f"--skip: unknown stage(s) {', '.join(sorted(bad))}; choose from "
                                f"{', '.join(SKIPPABLE)}")
        if self.model not in ("cnn", "mlp"):
            raise BadInputError(f"--model must be cnn or mlp, got {self.model!r}")
        for w in self.sweep_bits:
            if not 2 <= int(w) <= 16:
                raise BadInputError(f"--sweep widths must be in 2..16, got {w}")


SKIPPABLE = ("onnx", "csim", "rtl", "resources", "sweep")


@dataclass
class StageResult:
    """One bit-exactness level (or the resource stage): ``status`` is ok | mismatch | skipped | unavailable | error."""

    name: str
    status: str
    detail: str = ""
    vectors: int = 0
    outputs_compared: int = 0
    mismatches: int = 0
    seconds: float = 0.0
    first_mismatch: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "error")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoResult:
    summary: dict[str, Any]
    text: str
    exit_code: int
    output: Path


# ------------------------------------------------------------------------------------------------ progress
class _Progress:
    """``[k/n] stage ...  done (s)`` lines on stderr; silent when quiet."""

    def __init__(self, quiet: bool, total: int) -> None:
        self.quiet = quiet
        self.total = total
        self.k = 0
        self.t0 = time.perf_counter()

    def stage(self, what: str) -> "_Stage":
        self.k += 1
        return _Stage(self, what)

    def line(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


class _Stage:
    def __init__(self, p: _Progress, what: str) -> None:
        self.p, self.what = p, what

    def __enter__(self) -> "_Stage":
        self.t = time.perf_counter()
        self.note = ""
        self.p.line(f"qfx demo: [{self.p.k}/{self.p.total}] {self.what} ...")
        return self

    def __exit__(self, et, ev, tb) -> None:
        dt = time.perf_counter() - self.t
        if et is None:
            self.p.line(f"qfx demo: [{self.p.k}/{self.p.total}] {self.what}: {self.note or 'done'} ({dt:.1f} s)")
        self.seconds = dt


# ------------------------------------------------------------------------------------------------ helpers
def _unavailable(modname: str, exc: ModuleNotFoundError) -> bool:
    """True when ``exc`` says ``modname`` itself (or a parent package) is missing, not one of its imports."""
    return bool(exc.name) and (exc.name == modname or modname.startswith(exc.name + "."))


def _import(modname: str):
    """The module, or None when it is not part of this installation (any other ImportError propagates)."""
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if _unavailable(modname, exc):
            return None
        raise


def _compare(name: str, expected: np.ndarray, got: np.ndarray, seconds: float, detail: str = "",
             layer: str = "") -> StageResult:
    e = np.asarray(expected, dtype=np.int64).reshape(len(expected), -1)
    g = np.asarray(got, dtype=np.int64).reshape(len(got), -1)
    if e.shape != g.shape:
        return StageResult(name, "mismatch", f"output shape {g.shape} != expected {e.shape}", len(e), int(e.size),
                           int(e.size), seconds)
    diff = e != g
    n = int(diff.sum())
    first = None
    if n:
        v, k = (int(a) for a in np.argwhere(diff)[0])
        first = {"vector": v, "index": k, "expected": int(e[v, k]), "got": int(g[v, k]), "layer": layer}
    return StageResult(name, "mismatch" if n else "ok", detail, len(e), int(e.size), n, round(seconds, 3), first)


def _skipped(name: str, exc: BaseException) -> StageResult:
    return StageResult(name, "skipped", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def demo_vectors(graph, test_codes: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, int]:
    """The first ``n`` of: the test-set images as input codes, then edge and random codes (``random_inputs``).
    Returns (codes, how many came from the test set)."""
    from qfx.ir.interpret import random_inputs

    test = np.asarray(test_codes, dtype=np.int64)[:n]
    extra = n - len(test)
    if extra <= 0:
        return test, len(test)
    return np.concatenate([test, random_inputs(graph, extra, seed)]), len(test)


def _data():
    from qfx.data import load_digits_split

    return load_digits_split(seed=0)


# ------------------------------------------------------------------------------------------------ training
def _float_model_from(ptq_model, kind: str):
    """The float model a PTQ model was converted from (the qfx twins keep torch's parameter names)."""
    from qfx.models import build_model

    fm = build_model(kind)
    missing, _ = fm.load_state_dict(ptq_model.net.state_dict(), strict=False)
    if missing:  # pragma: no cover - conversion keeps every float parameter
        raise QfxError(f"cannot recover the float model: missing {missing[:3]}")
    return fm


def _config(bits: int, khot: int | None):
    from qfx.nn.convert import QFXConfig

    return QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits, input_width=8, khot=khot)


def _finetune(model, epochs: int, seed: int, lr: float, progress: Callable[[int], None] | None,
              history: dict[str, list[list[int]]] | None) -> None:
    """Quantization-aware fine-tuning with the train API's optimizer and loop (same schedule as ``train_model``)."""
    import torch

    from qfx.nn.train import fit_epochs, int_bits_snapshot, make_optimizer

    xtr, ytr, _, _ = _data()
    gen = torch.Generator().manual_seed(seed + 1)

    def snap(_ep: int = -1) -> None:
        if history is not None:
            for k, v in int_bits_snapshot(model).items():
                history.setdefault(k, []).append(list(v))

    snap()
    if epochs:
        fit_epochs(model, make_optimizer(model, lr, 1e-2), xtr, ytr, epochs, 64, gen, on_epoch=snap, progress=progress)


def auto_threads(max_threads: int = 2) -> int:
    """Torch CPU threads when ``--threads`` is not given: at most ``max_threads`` and no more than the cores the
    1-minute load average leaves free, at least 1. Two OpenMP threads on a machine whose other core is busy spin
    on barriers while their sibling waits for a core: training steps then take 10-100x longer, so a loaded machine
    gets one thread."""
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on this platform
        return max(1, min(max_threads, n))
    free = math.floor(n - load + 0.5)
    return max(1, min(max_threads, n, free))


def _train(cfg: DemoConfig, prog: _Progress) -> dict[str, Any]:
    """Float pre-training + PTQ (``train_model`` with no fixed-point epochs), then QAT fine-tuning of a copy."""
    import torch

    from qfx.nn.train import evaluate, train_model

    torch.set_num_threads(int(cfg.threads) if cfg.threads else auto_threads())
    xtr, _, xte, yte = _data()
    steps = math.ceil(len(xtr) / 64)
    t0 = time.perf_counter()
    ptq = train_model(cfg.model, bits=cfg.bits, khot=cfg.khot, epochs=0, float_epochs=cfg.float_epochs,
                      seed=cfg.seed, quiet=prog.quiet, config=_config(cfg.bits, cfg.khot))
    float_s = time.perf_counter() - t0
    bar = None
    if not prog.quiet and cfg.epochs and sys.stderr.isatty():  # no bar in piped logs
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs * steps, desc=f"QAT W={cfg.bits}", unit="step", leave=False, file=sys.stderr)
    qat = copy.deepcopy(ptq.model)
    qat.qfx_config = ptq.model.qfx_config  # type: ignore[attr-defined]
    history: dict[str, list[list[int]]] = {}
    try:
        _finetune(qat, cfg.epochs, cfg.seed, 2e-3, bar.update if bar else None, history)
    finally:
        if bar is not None:
            bar.close()
    qat.eval()
    qat_acc = evaluate(qat, xte, yte, exact=True)
    return {"ptq": ptq, "qat": qat, "history": history, "float_accuracy": ptq.float_accuracy,
            "ptq_accuracy": ptq.accuracy, "qat_accuracy": qat_acc,
            "qat_train_mode_accuracy": evaluate(qat, xte, yte, exact=False), "float_s": float_s,
            "seconds": time.perf_counter() - t0}


def _sweep(cfg: DemoConfig, trained: dict[str, Any], prog: _Progress) -> list[dict[str, Any]]:
    """Accuracy vs width: PTQ (calibration only) and QAT (fine-tuning) of the same float model at each width."""
    import torch

    from qfx.nn.convert import quantize_model
    from qfx.nn.train import evaluate

    xtr, _, xte, yte = _data()
    points = [{"bits": cfg.bits, "qat": trained["qat_accuracy"], "ptq": trained["ptq_accuracy"],
               "epochs": cfg.epochs}]
    widths = sorted({int(w) for w in cfg.sweep_bits} - {cfg.bits})
    if not widths or "sweep" in cfg.skip:
        return points
    fm = _float_model_from(trained["ptq"].model, cfg.model)
    ep = cfg.epochs if cfg.sweep_epochs is None else int(cfg.sweep_epochs)
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg.seed))[:512]]
    for w in widths:
        q = quantize_model(fm, _config(w, cfg.khot), calib)
        ptq_acc = evaluate(q, xte, yte, exact=True)
        qat_acc = None
        if ep:
            _finetune(q, ep, cfg.seed, 2e-3, None, None)
            qat_acc = evaluate(q, xte, yte, exact=True)
        points.append({"bits": w, "qat": qat_acc, "ptq": ptq_acc, "epochs": ep})
        prog.line(f"qfx demo:       W={w}: PTQ {100 * ptq_acc:.2f} %"
                  + (f", QAT {100 * qat_acc:.2f} % ({ep} epochs)" if qat_acc is not None else ""))
    return sorted(points, key=lambda p: p["bits"])


# ------------------------------------------------------------------------------------------------ checks
def _check_emulation(graph, model, x: np.ndarray, expected: np.ndarray) -> StageResult:
    import torch

    from qfx.nn.exact import mode
    from qfx.onnx.runtime import values_to_codes

    t = time.perf_counter()
    fin = graph.tensor(graph.inputs[0]).fmt
    fout = graph.tensor(graph.outputs[0]).fmt
    outs = []
    with torch.no_grad(), mode(model, "exact"):
        for i in range(0, len(x), 256):
            v = torch.from_numpy(fin.from_int(x[i:i + 256]).astype(np.float64))
            outs.append(values_to_codes(model(v).numpy(), fout, "exact-mode output"))
    return _compare("emulation", expected, np.concatenate(outs), time.perf_counter() - t, LEVEL_WHAT["emulation"])


def _check_onnx(graph, onnx_path: Path, x: np.ndarray, expected: np.ndarray) -> StageResult:
    from qfx.onnx.runtime import run_onnx_codes

    t = time.perf_counter()
    got = run_onnx_codes(onnx_path, graph, x)
    return _compare("onnxruntime", expected, got, time.perf_counter() - t, LEVEL_WHAT["onnxruntime"])


def _check_csim(graph, project: Path, x: np.ndarray, expected: np.ndarray) -> StageResult:
    """Build the project's testbench (cached, like ``qfx csim``) and run exactly the demo's vectors through it."""
    import tempfile

    from qfx.sim.build import compile_cxx, read_codes, run_binary, write_codes
    from qfx.sim.csim import NDEBUG, project_top

    t = time.perf_counter()
    top, tb, src = project_top(project)
    exe = compile_cxx([tb, src], include_dirs=[project / "firmware"], defines=NDEBUG, name=f"csim_{top}")
    build_s = time.perf_counter() - t
    n = len(x)
    y = np.asarray(expected, dtype=np.int64).reshape(n, -1)
    with tempfile.TemporaryDirectory(prefix="qfx-demo-csim-") as tmp:
        d = Path(tmp)
        write_codes(d / "in.bin", x.reshape(n, -1))
        write_codes(d / "exp.bin", y)
        res = run_binary(exe, [str(d / "in.bin"), str(d / "exp.bin"), str(d / "got.bin")], cwd=d, check=False)
        if res.returncode not in (0, 1):
            tail = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
            return StageResult("csim", "error", f"testbench exit status {res.returncode}"
                               + (f": {tail[-1][:200]}" if tail else ""), n, seconds=time.perf_counter() - t)
        got = read_codes(d / "got.bin", y.shape)
    r = _compare("csim", y, got, time.perf_counter() - t, LEVEL_WHAT["csim"])
    r.extra["build_s"] = round(build_s, 2)
    return r


def _check_rtl(cosim, project: Path, x: np.ndarray, seed: int, work: Path) -> StageResult:
    """``qfx.sim.cosim.run_cosim`` on the RTL project; the demo's own vectors when cosim accepts ``inputs``,
    otherwise the same number of cosim's edge + random vectors."""
    t = time.perf_counter()
    params = inspect.signature(cosim.run_cosim).parameters
    kw: dict[str, Any] = {"n_vectors": len(x), "seed": seed, "backpressure": True}
    if "work_dir" in params:
        kw["work_dir"] = work
    own = "inputs" in params
    if own:
        kw["inputs"] = x
    rep = cosim.run_cosim(project, **kw)
    d = rep.to_dict() if hasattr(rep, "to_dict") else dict(vars(rep))
    mism = int(d.get("mismatches", 0))
    ok = d.get("ok", d.get("passed", mism == 0))
    status = "ok" if ok and not mism else "mismatch"
    detail = LEVEL_WHAT["rtl"]
    if d.get("timed_out"):
        detail += "; the design stopped answering (timeout)"
    if not own:
        detail += "; cosim's edge + random vectors (it takes no given inputs)"
    return StageResult("rtl", status, detail, int(d.get("vectors", len(x))), int(d.get("outputs_compared", 0)),
                       mism, round(time.perf_counter() - t, 3), d.get("first_mismatch"),
                       {k: d[k] for k in ("latency", "build_s", "build_cached", "sim_s", "vectors_per_s") if k in d})


def _resources(project: Path, timeout: float, quiet: bool) -> StageResult:
    """Yosys ``synth_xilinx`` of the RTL project through ``qfx.report.resources.report_project`` (what ``qfx report``
    runs): design totals and per-layer figures (one module per layer)."""
    from qfx.report.resources import report_project
    from qfx.report.yosys import stderr_progress

    t = time.perf_counter()
    # one Yosys run per layer, several at a time: the demo's time budget is wall time
    jobs = max(1, min(4, os.cpu_count() or 1))
    rep = report_project(project, progress=None if quiet else stderr_progress("  yosys"), timeout=timeout, jobs=jobs)
    if not quiet:
        print(file=sys.stderr)
    per_layer = [{"layer": la.name, "op": la.op, "module": la.module, "adders": la.adders,
                  **la.resources.to_dict()} for la in rep.layers]
    return StageResult("resources", "ok", f"Yosys synth_xilinx ({rep.family}), top {rep.top}"
                       + (" (cached)" if rep.cached else ""), seconds=round(time.perf_counter() - t, 2),
                       extra={"total": rep.total.to_dict(), "per_layer": per_layer, "synth_s": round(rep.seconds, 2),
                              "latency_cycles": rep.latency})


# ------------------------------------------------------------------------------------------------ tables
def layer_rows(graph) -> list[dict[str, str]]:
    """Per node: layer, op, in/weight/acc/out formats and K-hot (what the exported designs use)."""
    rows = []
    for n in graph.nodes:
        w = n.consts.get("weight") or n.consts.get("scale")
        rows.append({"layer": n.name, "op": n.op.value,
                     "in": ", ".join(graph.tensor(t).fmt.ap_type() for t in n.inputs),
                     "weight": w.fmt.ap_type() if w else "-",
                     "acc": n.acc_fmt.ap_type() if n.acc_fmt else "-",
                     "out": graph.tensor(n.output).fmt.ap_type(),
                     "khot": str(n.attr("khot", 0) or "-")})
    return rows


def _table(rows: Sequence[dict[str, str]], cols: Sequence[str], indent: str = "  ") -> str:
    data = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    fmt = lambda vals: indent + "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(list(cols))] + [fmt(d) for d in data])


def _pct(a: float | None) -> str:
    return "n/a" if a is None else f"{100 * a:6.2f} %"


def _level_line(s: dict[str, Any]) -> str:
    name = LEVEL_TITLES.get(s["name"], s["name"])
    st = s["status"]
    if st == "ok":
        return f"  {name:<12} 0 mismatches / {s['outputs_compared']:,} outputs ({s['vectors']:,} vectors)  " \
               f"{s['detail']}  [{s['seconds']:.1f} s]"
    if st == "mismatch":
        fm = s.get("first_mismatch") or {}
        where = (f"; first at vector {fm.get('vector')}, output {fm.get('index', fm.get('output_index'))}: "
                 f"expected {fm.get('expected')}, got {fm.get('got')}") if fm else ""
        return f"  {name:<12} {s['mismatches']:,} MISMATCHES / {s['outputs_compared']:,} outputs{where}"
    return f"  {name:<12} {st if st != 'unavailable' else 'not available'}: {s['detail']}"


def format_summary(summary: dict[str, Any]) -> str:
    """The one summary ``qfx demo`` prints (from ``summary.json``'s figures)."""
    acc = summary["accuracy"]
    cfg = summary["config"]
    v = summary["vectors"]
    verdict = {0: "PASS: bit-exact at every level that ran", 1: "FAIL: see the mismatches below"}[summary["exit_code"]]
    lines = [f"qfx demo: digits {cfg.get('model', 'cnn').upper()}, W={cfg['bits']}" + (f", K-hot {cfg['khot']}" if cfg.get("khot") else "")
             + f", {cfg['epochs']} QAT epochs after {cfg['float_epochs']} float epochs — {verdict}", "",
             f"accuracy (digits test set, {acc['test_images']} images)",
             f"  float              {_pct(acc['float'])}",
             f"  fixed point (QAT)  {_pct(acc['qat'])}   exact int64 inference, learned binary points",
             f"  PTQ (no training)  {_pct(acc['ptq'])}   same formats, binary points from calibration only"]
    sweep = [p for p in summary.get("sweep", []) if p["bits"] != cfg["bits"]]
    if sweep:
        lines.append("  other widths       " + "; ".join(
            f"W={p['bits']}: QAT {_pct(p['qat']).strip()}, PTQ {_pct(p['ptq']).strip()}" for p in sweep))
    lines += ["", "layer formats (exported graph)",
              _table(summary["layers"], ("layer", "op", "in", "weight", "acc", "out", "khot")), "",
              f"bit-exactness on {v['total']:,} input vectors ({v['from_test_set']} test images + "
              f"{v['total'] - v['from_test_set']} edge/random codes)"]
    lines += [_level_line(s) for s in summary["levels"]]
    lines += ["", "resources"]
    r = summary["resources"]
    if r["status"] == "ok":
        t = r["extra"]["total"]
        lines.append(f"  LUT {t['lut']:,}  FF {t['ff']:,}  DSP {t['dsp']:,}  CARRY {t['carry']:,}   ({r['detail']}, "
                     f"{r['extra']['synth_s']:.0f} s)")
    else:
        lines.append(f"  {r['status'] if r['status'] != 'unavailable' else 'not available'}: {r['detail']}")
    lines += ["", f"artifacts in {summary['output']}"]
    width = max(len(k) for k in summary["artifacts"]) if summary["artifacts"] else 0
    lines += [f"  {k:<{width}}  {desc}" for k, desc in summary["artifacts"].items()]
    lines.append(f"\n{summary['seconds']:.0f} s in all")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main flow
def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the whole flow into ``cfg.output`` (written atomically; an existing folder only with ``force``)."""
    from qfx.outdir import atomic_output_dir

    cfg.validate()
    out = Path(cfg.output).expanduser().absolute()
    if out.exists() and not cfg.force:  # refuse before minutes of training
        raise OutputExistsError(f"output {out} already exists (use --force to replace it)")
    t_all = time.perf_counter()
    with atomic_output_dir(out, force=cfg.force) as tmp:
        summary = _run(cfg, Path(tmp), out, t_all)
        text = format_summary(summary)
        (Path(tmp) / "summary.txt").write_text(text + "\n")
    return DemoResult(summary, text, summary["exit_code"], out)


def _run(cfg: DemoConfig, tmp: Path, out: Path, t_all: float) -> dict[str, Any]:
    import torch

    from qfx.ir.from_torch import capture
    from qfx.ir.interpret import run
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.nn.train import save_checkpoint, TrainResult

    prog = _Progress(cfg.quiet, 9)
    with prog.stage(f"training: float {cfg.model.upper()} ({cfg.float_epochs} epochs), PTQ and QAT at W={cfg.bits} "
                    f"({cfg.epochs} epochs)") as st:
        trained = _train(cfg, prog)
        st.note = (f"float {100 * trained['float_accuracy']:.2f} %, QAT {100 * trained['qat_accuracy']:.2f} %, "
                   f"PTQ {100 * trained['ptq_accuracy']:.2f} %")
    qat = trained["qat"]
    res = TrainResult(qat, cfg.model, qat.qfx_config, trained["qat_accuracy"], trained["float_accuracy"],
                      trained["qat_train_mode_accuracy"], trained["history"],
                      dict(trained["ptq"].args, epochs=cfg.epochs), trained["seconds"])
    save_checkpoint(res, tmp / "model.pt")

    with prog.stage(f"accuracy vs bit width (W in {sorted({cfg.bits, *cfg.sweep_bits})})"
                    if cfg.sweep_bits and "sweep" not in cfg.skip else "accuracy vs bit width (main width only)"):
        sweep = _sweep(cfg, trained, prog)

    with prog.stage("capturing the IR (torch.fx) and running the pass flow") as st:
        g0 = capture(qat, torch.zeros(1, 1, 8, 8), name=f"digits_{cfg.model}")
        flow = run_flow(g0, DEFAULT_FLOW)
        graph = flow.graph
        graph.save(tmp / "model.json")
        (tmp / "passes.txt").write_text(flow.text() + "\n")
        st.note = f"{len(graph.nodes)} nodes"

    _, _, xte, _ = _data()
    test_codes = qat.input.input_codes(xte)
    x, n_test = demo_vectors(graph, test_codes, cfg.vectors, cfg.seed)
    expected = run(graph, x)

    levels: dict[str, StageResult] = {}
    artifacts: dict[str, str] = {"model.pt": "QAT checkpoint (qfx train format)",
                                 "model.json": "qfx IR after the pass flow (passes.txt: its report)"}
    with prog.stage("emulation: golden interpreter vs exact-mode torch model") as st:
        levels["emulation"] = _check_emulation(graph, qat, x, expected)
        st.note = levels["emulation"].status

    with prog.stage("ONNX export + onnxruntime") as st:
        levels["onnxruntime"] = _stage_onnx(cfg, graph, tmp, x, expected, artifacts)
        st.note = levels["onnxruntime"].status

    with prog.stage("HLS export + C simulation (g++ + ap_types)") as st:
        levels["csim"] = _stage_csim(cfg, graph, tmp, x, expected, artifacts)
        st.note = levels["csim"].status

    with prog.stage("RTL export + co-simulation (Verilator + cocotb)") as st:
        levels["rtl"] = _stage_rtl(cfg, graph, tmp, x, artifacts)
        st.note = levels["rtl"].status

    with prog.stage("resources (Yosys synth_xilinx)") as st:
        resources = _stage_resources(cfg, tmp, levels, prog.quiet)
        st.note = resources.status

    failed = any(s.failed for s in levels.values())
    exit_code = 1 if failed else 0
    _, _, xte, yte = _data()
    summary: dict[str, Any] = {
        "qfx_demo": 1,
        "output": str(out),
        "exit_code": exit_code,
        "passed": not failed,
        "config": {"model": cfg.model, "bits": cfg.bits, "khot": cfg.khot, "epochs": cfg.epochs, "float_epochs": cfg.float_epochs,
                   "sweep_bits": sorted({cfg.bits, *cfg.sweep_bits}) if "sweep" not in cfg.skip else [cfg.bits],
                   "vectors": cfg.vectors, "seed": cfg.seed, "skip": list(cfg.skip)},
        "accuracy": {"float": trained["float_accuracy"], "qat": trained["qat_accuracy"],
                     "ptq": trained["ptq_accuracy"], "qat_train_mode": trained["qat_train_mode_accuracy"],
                     "test_images": int(len(yte))},
        "sweep": sweep,
        "int_bits_history": trained["history"],
        "layers": layer_rows(graph),
        "vectors": {"total": int(len(x)), "from_test_set": int(n_test)},
        "levels": [levels[k].to_dict() for k in LEVELS],
        "resources": resources.to_dict(),
        "artifacts": {},
        "seconds": 0.0,
    }
    with prog.stage("report.html and summary.json") as st:
        artifacts.update({"report.html": "self-contained report (plots inline; opens offline)",
                          "summary.json": "every figure of this summary", "summary.txt": "this summary"})
        summary["artifacts"] = {k: artifacts[k] for k in sorted(artifacts, key=_artifact_order)}
        summary["seconds"] = round(time.perf_counter() - t_all, 1)
        from qfx.report.html import render_report

        (tmp / "report.html").write_text(render_report(summary, _weight_layers(qat, graph)))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    return json.loads(json.dumps(summary, default=_json_default))


_ORDER = ("report.html", "summary.json", "summary.txt", "model.pt", "model.json", "model.onnx", "hls/", "rtl/")


def _artifact_order(k: str) -> int:
    return _ORDER.index(k) if k in _ORDER else len(_ORDER)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _stage_onnx(cfg, graph, tmp: Path, x, expected, artifacts) -> StageResult:
    if "onnx" in cfg.skip:
        return StageResult("onnxruntime", "skipped", "left out (--skip onnx)")
    try:
        from qfx.commands.export import export_graph

        path = export_graph(graph, "onnx", tmp / "model.onnx")
        artifacts["model.onnx"] = "ONNX (qfx.FixedQuant local functions; stock onnxruntime runs it exactly)"
        return _check_onnx(graph, path, x, expected)
    except ModuleNotFoundError as exc:
        if exc.name in ("onnx", "onnxruntime"):
            return StageResult("onnxruntime", "skipped", f"{exc.name} is not installed (pip install {exc.name})")
        raise
    except MissingToolError as exc:
        return _skipped("onnxruntime", exc)


def _stage_csim(cfg, graph, tmp: Path, x, expected, artifacts) -> StageResult:
    if "csim" in cfg.skip:
        return StageResult("csim", "skipped", "left out (--skip csim)")
    from qfx.commands.export import export_graph

    try:
        export_graph(graph, "hls", tmp / "hls")
    except QfxError as exc:
        if "not available" in str(exc):
            return StageResult("csim", "unavailable", str(exc))
        raise
    artifacts["hls/"] = "Vitis HLS project (firmware/, tb/, build_prj.tcl)"
    if _import("qfx.sim.csim") is None:
        return StageResult("csim", "unavailable", "qfx.sim.csim is not in this installation")
    try:
        return _check_csim(graph, tmp / "hls", x, expected)
    except MissingToolError as exc:
        return _skipped("csim", exc)
    except QfxError as exc:
        return StageResult("csim", "error", str(exc))


def _stage_rtl(cfg, graph, tmp: Path, x, artifacts) -> StageResult:
    if "rtl" in cfg.skip:
        return StageResult("rtl", "skipped", "left out (--skip rtl)")
    products = constant_products(graph)
    if products > cfg.rtl_max_products:
        return StageResult("rtl", "skipped", f"the RTL design has {products:,} constant products "
                           f"(limit {cfg.rtl_max_products:,}: minutes of RTL generation and Verilator/Yosys time); "
                           "raise --rtl-max-products to build it anyway",
                           extra={"constant_products": products})
    from qfx.commands.export import export_graph

    try:
        export_graph(graph, "rtl", tmp / "rtl")
    except QfxError as exc:
        if "not available" in str(exc):
            return StageResult("rtl", "unavailable", str(exc))
        raise
    artifacts["rtl/"] = "SystemVerilog project (rtl/*.sv, AXI4-Stream top, cosim.json)"
    cosim = _import("qfx.sim.cosim")
    if cosim is None or not hasattr(cosim, "run_cosim"):
        return StageResult("rtl", "unavailable", "qfx.sim.cosim is not in this installation")
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="qfx-demo-cosim-") as work:
            return _check_rtl(cosim, tmp / "rtl", x, cfg.seed, Path(work))
    except MissingToolError as exc:
        return _skipped("rtl", exc)
    except QfxError as exc:
        return StageResult("rtl", "error", str(exc))


def constant_products(graph, conv_style: str = "pixel") -> int:
    """Nonzero constant products the RTL design holds: a pixel-folded conv has one set for all output pixels, a
    parallel conv one set per output pixel."""
    from qfx.ir.graph import op_def
    from qfx.ops import Categories

    total = 0
    for n in graph.nodes:
        w = n.consts.get("weight")
        if w is None:
            continue
        nz = int(np.count_nonzero(w.codes))
        if op_def(n.op).is_(Categories.CONV) and conv_style == "parallel":
            out = graph.tensor(n.output).shape
            total += nz * int(np.prod(out[1:]))
        else:
            total += nz
    return total


def _stage_resources(cfg, tmp: Path, levels, quiet: bool) -> StageResult:
    if "resources" in cfg.skip:
        return StageResult("resources", "skipped", "left out (--skip resources)")
    if not (tmp / "rtl" / "cosim.json").is_file():
        return StageResult("resources", "skipped", "no RTL project to synthesize")
    if _import("qfx.report.resources") is None:
        return StageResult("resources", "unavailable", "qfx.report.resources is not in this installation")
    try:
        return _resources(tmp / "rtl", cfg.synth_timeout, quiet)
    except MissingToolError as exc:
        return _skipped("resources", exc)
    except QfxError as exc:
        if "exceeded" in str(exc):
            # report_project gives each layer's run what is left of the budget, so its message names that
            # remainder; say the stage's budget instead (and keep the log path)
            log = re.search(r"\(log: ([^)]*)\)", str(exc))
            msg = f"Yosys synthesis exceeded the resource stage's {cfg.synth_timeout:g} s budget"
            return StageResult("resources", "skipped", msg + (f" (log: {log.group(1)})" if log else "")
                               + "; raise --synth-timeout")
        return StageResult("resources", "error", str(exc))


def _weight_layers(model, graph, limit: int = 4) -> list[dict[str, Any]]:
    """A few weight layers for the histograms: latent float weights (from the model) with the exported codes and
    format (from the graph, so K-hot projection and per-layer formats are the ones the hardware uses)."""
    from qfx.ir.from_torch import sanitize

    mods = {sanitize(name): m for name, m in model.named_modules() if name}
    out = []
    for n in graph.nodes:
        c = n.consts.get("weight")
        m = mods.get(n.name)
        if c is None or m is None or getattr(m, "weight", None) is None:
            continue
        w = m.weight.detach().double().cpu().numpy()
        if w.size != c.codes.size:
            continue
        out.append({"name": n.name, "weights": w, "fmt": c.fmt, "codes": np.asarray(c.codes, dtype=np.int64)})
    if len(out) > limit:
        idx = np.linspace(0, len(out) - 1, limit).round().astype(int)
        out = [out[i] for i in sorted(set(idx.tolist()))]
    return out
