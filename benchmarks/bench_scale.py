"""Cost versus model size of the RTL flow: digits MLP, digits CNN, LeNet-5 and ResNet-20, one run.

    PYTHONPATH=. python benchmarks/bench_scale.py [--models mlp,cnn,lenet5,resnet20] [--bits 4,8]
        [--io vector,stream] [--no-cosim] [--no-yosys] [--vectors 200] [--export-timeout 600] [--yosys-timeout 1800]
        [--jobs 2] [--json out.json]

Per model, weight width W and RTL form: weights, RTL export time (wall and CPU: the machine may be shared) and peak
memory (the export runs in a child process, so ``ru_maxrss`` is that export's own peak), size of the generated
SystemVerilog (bytes and longest line), Verilator build time and simulation rate with the co-simulation mismatch
count (``qfx.sim.cosim``), Yosys ``synth_xilinx`` time and LUT/FF/DSP (``qfx.report.resources``: one run per layer
module, ``--jobs`` at a time, a streaming design's dense tail one run per dense layer; the per-layer figures and each
run's seconds are printed after the main table and kept in ``--json``), and the design's II and latency in clocks.

Folding: convolutions compute one output pixel per clock (``conv_style="pixel"``), so a CNN accepts one image every
``HO*WO`` clocks of its largest convolution; the dense layers are then folded with ``target_ii`` = that period (no
throughput lost, far fewer constant products). The MLP has no convolution: it is folded with ``--mlp-ii`` (default 8).
``--io stream`` measures the pixel-streaming design (``qfx export --rtl-io stream``: one pixel per beat, line
buffers, FIFOs on residual joins) with the same dense folding; ``--io vector,stream`` measures both forms.
Models are untrained (weights uniform in [-0.9, 0.9], so few W = 4 codes are zero; formats and BN statistics
calibrated on random inputs): the cost figures do not depend on accuracy.
Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

MODELS = ("mlp", "cnn", "lenet5", "resnet20")


def lenet5() -> nn.Module:
    """LeNet-5 on 1x28x28: conv5x5 6 (padding 2) -> maxpool2 -> conv5x5 16 -> maxpool2 -> 400-120-84-10 (ReLU activations)."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


class _Block(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (identity, or 1x1 stride-2 conv + BN), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        from qfx.nn import QAdd

        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else None)
        self.add = QAdd()
        self.act = nn.ReLU()

    def forward(self, x):
        s = x if self.short is None else self.short(x)
        return self.act(self.add(self.body(x), s))


class ResNet20(nn.Module):
    """ResNet-20 for 3x32x32: stem conv 16, three stages of 3 blocks (16/32/64 channels, stride 2 between stages,
    1x1 stride-2 shortcuts), global average pool (AvgPool2d(8)), Linear(64, 10)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.flatten(self.pool(self.features(x))))


def build(kind: str, bits: int):
    """The captured, flow-processed qfx graph of model ``kind`` at weight/activation width ``bits``."""
    from qfx.ir.from_torch import capture
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.models import DigitsCNN, digits_mlp
    from qfx.nn.convert import QFXConfig, quantize_model
    from qfx.nn.exact import set_mode

    torch.manual_seed(0)
    model, shape = {"mlp": (digits_mlp, (1, 64)), "cnn": (lambda: DigitsCNN(8), (1, 8, 8)),
                    "lenet5": (lenet5, (1, 28, 28)), "resnet20": (ResNet20, (3, 32, 32))}[kind]
    m = model()
    with torch.no_grad():  # stand-in for trained weights: spread enough that W = 4 codes are not mostly zero
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.uniform_(-0.9, 0.9)
    q = quantize_model(m, QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits,
                                          input_width=8))
    q(torch.rand(64, *shape) * 4)  # calibrate formats (and BN statistics) on random inputs
    q.eval()
    set_mode(q, "exact")
    return run_flow(capture(q, torch.zeros(1, *shape), name=f"{kind}_w{bits}"), DEFAULT_FLOW).graph


def conv_period(graph) -> int:
    """Clocks per image of a pixel-folded CNN: the largest convolution output H*W (1 without convolutions)."""
    from qfx.ir.graph import op_def
    from qfx.ops import Categories

    return max([graph.tensor(n.output).shape[1] * graph.tensor(n.output).shape[2] for n in graph.nodes
                if op_def(n.op).is_(Categories.CONV)], default=1)


def _child_export(args: argparse.Namespace) -> None:
    """Child process: export one graph (JSON) to RTL; print time and this process's peak RSS as JSON."""
    from qfx.backends.rtl import write_project
    from qfx.ir.graph import Graph

    g = Graph.load(args.graph)
    t0, c0 = time.perf_counter(), time.process_time()
    write_project(g, Path(args.out), target_ii=args.target_ii, io=args.io,
                  progress=lambda line, s: print(line, file=sys.stderr, flush=True) if s > 2 else None)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    print(json.dumps({"export_s": round(dt, 2), "export_cpu_s": round(cpu, 2), "peak_mb": round(rss, 1)}))


def _log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(kind: str, bits: int, work: Path, a: argparse.Namespace, io: str = "vector", g=None) -> dict:
    """One row: export ``kind`` at ``bits`` in RTL form ``io`` and measure it (``g``: the graph, if already built)."""
    row: dict = {"model": kind, "bits": bits, "io": io}
    if g is None:
        _log(f"{kind} W={bits}: capture")
        g = build(kind, bits)
    row["weights"] = int(sum(c.codes.size for n in g.nodes for k, c in n.consts.items() if k == "weight"))
    row["nonzero"] = int(sum((c.codes != 0).sum() for n in g.nodes for k, c in n.consts.items() if k == "weight"))
    row["nodes"] = len(g.nodes)
    tii = conv_period(g) if conv_period(g) > 1 else a.mlp_ii
    row["target_ii"] = tii
    gj = work / f"{kind}_w{bits}.json"
    g.save(gj)
    out = work / f"{kind}_w{bits}_{io}_rtl"
    kind = f"{kind} ({io})"
    _log(f"{kind} W={bits}: {row['weights']} weights, RTL export (target II {tii})")
    try:
        r = subprocess.run([sys.executable, __file__, "--_export", str(gj), str(out), str(tii), io],
                           capture_output=True, text=True, timeout=a.export_timeout)
    except subprocess.TimeoutExpired:
        row["export"] = f"timeout > {a.export_timeout} s"
        _log(f"{kind} W={bits}: export did not finish in {a.export_timeout} s")
        return row
    if r.returncode != 0:
        row["export"] = "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        _log(f"{kind} W={bits}: export failed")
        return row
    row.update(json.loads(r.stdout.strip().splitlines()[-1]))
    info = json.loads((out / "cosim.json").read_text())
    sv = [out / f for f in info["rtl_files"]]
    row["sv_kb"] = round(sum(p.stat().st_size for p in sv) / 1024, 1)
    row["sv_files"] = len(sv)
    row["longest_line"] = max(len(line) for p in sv for line in p.read_text().splitlines())
    row["ii"], row["latency"] = info["ii"], info["latency"]
    row["folded_dense"] = sum(1 for L in info["layers"] if L.get("reuse"))
    _log(f"{kind} W={bits}: export {row['export_s']} s ({row['export_cpu_s']} s CPU), {row['peak_mb']} MB, "
         f"{row['sv_kb']} kB SV, II {row['ii']}, latency {row['latency']}")
    if not a.no_cosim:
        from qfx.sim.cosim import run_cosim_many

        _log(f"{kind} W={bits}: Verilator build + co-simulation of {a.vectors} vectors")
        try:
            rep = run_cosim_many([out], a.vectors, seed=1, backpressure=True,
                                 work_dir=out.with_name(out.name + "_sim"))[0]
            row.update(verilator_build_s=round(rep.build_s, 1), build_cached=rep.build_cached,
                       vectors=rep.received, mismatches=rep.mismatches, vectors_per_s=rep.vectors_per_s)
        except Exception as exc:  # noqa: BLE001 - a benchmark records the failure and goes on
            row["cosim"] = f"failed: {str(exc)[:200]}"
        _log(f"{kind} W={bits}: " + (row.get("cosim") or f"{row['mismatches']} mismatches, build "
                                     f"{row['verilator_build_s']} s, {row['vectors_per_s']} vectors/s"))
    if not a.no_yosys:
        from qfx.report.resources import report_project

        _log(f"{kind} W={bits}: Yosys synth_xilinx (per layer, {a.jobs} jobs)")
        load0 = os.getloadavg()[0]
        try:
            rep = report_project(out, jobs=a.jobs, use_cache=False, split=True, timeout=a.yosys_timeout)
            row.update(yosys_s=round(rep.seconds, 1), lut=rep.total.lut, ff=rep.total.ff, dsp=rep.total.dsp,
                       carry=rep.total.carry, yosys_runs_s=rep.extra.get("runs_seconds"),
                       yosys_cpu_s=rep.extra.get("runs_cpu_seconds"),
                       layers=[{"layer": la.name, "op": la.op, "module": la.module, "lut": la.resources.lut,
                                "ff": la.resources.ff, "carry": la.resources.carry, "dsp": la.resources.dsp,
                                "seconds": la.seconds, "cpu_seconds": la.cpu_seconds, "parts": la.parts}
                               for la in rep.layers]
                       + [{"layer": "(top)", "op": "", "module": rep.top, "lut": rep.top_own.lut, "ff": rep.top_own.ff,
                           "carry": rep.top_own.carry, "dsp": rep.top_own.dsp,
                           "seconds": rep.extra.get("top_seconds"), "cpu_seconds": rep.extra.get("top_cpu_seconds"),
                           "parts": []}])
        except Exception as exc:  # noqa: BLE001
            row["yosys"] = f"failed: {str(exc)[:200]}"
        row["yosys_load"] = [round(load0, 2), round(os.getloadavg()[0], 2)]  # 1-min load average before, after
        load = f" (load {row['yosys_load'][0]} -> {row['yosys_load'][1]})"
        _log(f"{kind} W={bits}: " + (row.get("yosys") or f"LUT {row['lut']} FF {row['ff']} DSP {row['dsp']}, "
                                     f"{row['yosys_s']} s") + load)
    return row


def layer_table(row: dict) -> str:
    """Per-layer Yosys figures of one row (a split layer's modules indented below it), as a Markdown table."""
    out = [f"\n{row['model']} ({row['io']}) W={row['bits']}: per-layer Yosys synth_xilinx",
           "| layer | op | LUT | FF | CARRY | DSP | Yosys s (wall) | CPU s |", "|---|---|---|---|---|---|---|---|"]

    def f(v) -> str:
        return "-" if v is None else f"{v:.1f}"

    for la in row.get("layers", []):
        out.append(f"| {la['layer']} | {la['op']} | {la['lut']} | {la['ff']} | {la['carry']} | {la['dsp']} "
                   f"| {f(la['seconds'])} | {f(la.get('cpu_seconds'))} |")
        for p in la.get("parts") or []:
            out.append(f"| &nbsp;&nbsp;{p['module']} | | {p['lut']} | {p['ff']} | {p['carry']} | {p['dsp']} "
                       f"| {f(p['seconds'])} | {f(p.get('cpu_seconds'))} |")
    return "\n".join(out)


COLS = ("model", "io", "bits", "weights", "nonzero", "target_ii", "export_s", "export_cpu_s", "peak_mb", "sv_kb",
        "longest_line", "ii", "latency",
        "verilator_build_s", "vectors", "mismatches", "vectors_per_s", "yosys_s", "lut", "ff", "dsp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--bits", default="4,8", help="comma list of weight/activation widths")
    p.add_argument("--io", default="vector", help="comma list of RTL forms: vector, stream")
    p.add_argument("--no-cosim", action="store_true", help="skip the Verilator build and co-simulation")
    p.add_argument("--no-yosys", action="store_true", help="skip Yosys synthesis")
    p.add_argument("--vectors", type=int, default=200, help="co-simulation vectors per design")
    p.add_argument("--mlp-ii", type=int, default=8, help="target II of models without convolutions")
    p.add_argument("--jobs", type=int, default=2, help="parallel Yosys runs")
    p.add_argument("--export-timeout", type=float, default=600, help="seconds before an RTL export is given up")
    p.add_argument("--yosys-timeout", type=float, default=1800, help="seconds of Yosys (all runs of a design)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--work", help="keep the designs in this folder (default: a temporary one)")
    p.add_argument("--_export", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._export:
        a.graph, a.out, tii, a.io = a._export
        a.target_ii = int(tii)
        _child_export(a)
        return 0
    kinds = [k.strip() for k in a.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    bits = [int(b) for b in a.bits.split(",")]
    ios = [m.strip() for m in a.io.split(",") if m.strip()]
    if not ios or any(m not in ("vector", "stream") for m in ios):
        p.error(f"--io takes a comma list of vector, stream; got {a.io!r}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="qfx_scale_") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            for b in bits:
                _log(f"{kind} W={b}: capture")
                g = build(kind, b)
                for io in ios:
                    rows.append(measure(kind, b, work, a, io, g))
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, r.get("export", "-") if c == "export_s" else "-")) for c in COLS) + " |")
    for r in rows:
        if r.get("layers"):
            print(layer_table(r))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
