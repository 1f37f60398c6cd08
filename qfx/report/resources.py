"""Resource report of a generated qfx RTL project: Yosys ``synth_xilinx`` figures per layer and in total.

Reads what the RTL backend writes (``cosim.json``: top, latency, layers with their module names, ``rtl_files``;
``model.json``: the IR), synthesizes ``rtl/*.sv`` once with the hierarchy kept, and attributes each layer module's
cells (its requantizers included) to that layer; what remains (pipeline registers, AXI handshake) is the top's own.
With ``jobs`` > 1, or for designs over 1 MB, each layer module is its own Yosys run instead (see ``report_project``).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from qfx.errors import BadInputError, QfxError
from qfx.report.yosys import Resources, SynthResult, part_family, run_synth

__all__ = ["LayerResources", "ProjectReport", "report_project", "load_rtl_project"]

_COLS = ("lut", "ff", "carry", "dsp", "bram")
_HEAD = {"lut": "LUT", "ff": "FF", "carry": "CARRY", "dsp": "DSP", "bram": "BRAM"}


@dataclass
class LayerResources:
    name: str
    op: str
    module: str
    resources: Resources
    adders: int | None = None
    seconds: float | None = None  # Yosys wall time of this layer's own run(s) (per-layer runs only)
    cpu_seconds: float | None = None  # their CPU time (Yosys and ABC), which a shared machine's load does not inflate
    parts: list[dict[str, Any]] = field(default_factory=list)  # a split layer's runs: module, seconds, resources

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "op": self.op, "module": self.module, "adders": self.adders,
             **self.resources.to_dict()}
        if self.seconds is not None:
            d["seconds"] = round(self.seconds, 2)
        if self.cpu_seconds is not None:
            d["cpu_seconds"] = round(self.cpu_seconds, 2)
        if self.parts:
            d["parts"] = self.parts
        return d


@dataclass
class ProjectReport:
    project: str
    top: str
    family: str
    latency: int | None
    layers: list[LayerResources]
    top_own: Resources
    total: Resources
    seconds: float
    cached: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "top": self.top, "family": self.family, "tool": "yosys synth_xilinx",
                "latency_cycles": self.latency, "total": self.total.to_dict(), "top_own": self.top_own.to_dict(),
                "layers": [la.to_dict() for la in self.layers], "synth_seconds": round(self.seconds, 2),
                "cached": self.cached, **self.extra}

    def table(self) -> str:
        timed = all(la.seconds is not None for la in self.layers) and "top_seconds" in self.extra and not self.cached

        def secs(wall: float | None, cpu: float | None) -> list[str]:
            return [f"{wall or 0:.1f}", "-" if cpu is None else f"{cpu:.1f}"] if timed else []

        x = self.extra
        rows = [["layer", "op", *(_HEAD[c] for c in _COLS), *(["Yosys s", "CPU s"] if timed else [])]]
        for la in self.layers:
            rows.append([la.name, la.op, *(str(getattr(la.resources, c)) for c in _COLS),
                         *secs(la.seconds, la.cpu_seconds)])
        rows.append(["(top: registers, handshake)", "", *(str(getattr(self.top_own, c)) for c in _COLS),
                     *secs(x.get("top_seconds"), x.get("top_cpu_seconds"))])
        rows.append(["total", "", *(str(getattr(self.total, c)) for c in _COLS),
                     *secs(x.get("runs_seconds"), x.get("runs_cpu_seconds"))])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            if k == len(rows) - 1 or k == 1:
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        lat = "unknown" if self.latency is None else f"{self.latency} cycles"
        src = "cached" if self.cached else f"{self.seconds:.1f} s" + (" wall" if timed else "")
        lines.append(f"top {self.top}, Yosys synth_xilinx -family {self.family} (out of context, {src}); "
                     f"latency {lat}")
        return "\n".join(lines)


def load_rtl_project(path: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], list[Path]]:
    """The project folder, its ``cosim.json`` facts and its SystemVerilog sources; BadInputError if it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise BadInputError(f"RTL project folder {p} does not exist")
    cj = p / "cosim.json"
    if not (p / "model.json").is_file() or not cj.is_file():
        raise BadInputError(f"{p} is not a qfx RTL project (model.json/cosim.json missing; export with --target rtl)")
    try:
        info = json.loads(cj.read_text())
        if not isinstance(info, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as e:
        raise BadInputError(f"{cj}: malformed cosim.json ({e})") from None
    files = [p / f for f in info.get("rtl_files", [])] or sorted((p / "rtl").glob("*.sv"))
    if not files:
        raise BadInputError(f"{p} is not a qfx RTL project (no rtl/*.sv files)")
    for f in files:
        if not f.is_file():
            raise BadInputError(f"RTL file {f} listed in cosim.json is missing")
    return p, info, files


# A layer file over _SPLIT_BYTES that holds several modules (the folded dense tail behind a streaming design's
# collector: one module per dense layer, 2.3 MB with 400-row weight ROMs in LeNet-5) is synthesized module by module.
# A run whose sources exceed _CHUNK_BYTES maps its LUTs in chunks (``run_synth(lut_chunk=...)``: same cells, faster).
# A pixel kernel file over _PIX_BYTES (ResNet-20's 3x3 convs: up to 2.6 MB of adder graphs) is its own run that
# counts ABC's LUTs instead of techmapping them (``run_synth(count_luts=True)``: same figures for a netlist without
# flip-flops, ~70 % of the CPU time), the layer module around it (line buffers, control) a second, full run.
# Small designs (the digits MLP/CNN, the demo) stay below all three: their runs are the plain synth_xilinx ones.
_SPLIT_BYTES = 512 * 1024
_PIX_BYTES = 512 * 1024
_CHUNK_BYTES = 256 * 1024
_LUT_CHUNK = 1000


@dataclass
class _Part:
    """One Yosys run of a per-layer report: ``module`` as the top over ``srcs`` (``boxes`` read as black boxes),
    counted toward layer module ``layer`` (None: the design's top); ``parent``: the module that instantiates it when
    a layer was split (its instance count is read from the parent's run)."""

    module: str
    srcs: list[Path]
    boxes: list[Path]
    layer: str | None
    parent: str | None = None
    count_luts: bool = False  # a combinational kernel: LUTs counted from ABC's mapping (``run_synth(count_luts=)``)

    def lut_chunk(self) -> int:
        return _LUT_CHUNK if sum(f.stat().st_size for f in self.srcs) > _CHUNK_BYTES else 0


_MOD_SPAN = re.compile(r"^[ \t]*module\s+([A-Za-z_][A-Za-z0-9_$]*)\b.*?^[ \t]*endmodule\b[^\n]*\n?", re.M | re.S)


def _split_modules(path: Path) -> dict[str, str]:
    """Module name -> its text (``module`` .. ``endmodule``) of a generated SystemVerilog file; {} when the file has
    compiler directives (they would not survive the split) or the modules cannot be told apart."""
    text = path.read_text(errors="replace")
    if re.search(r"^\s*`", text, re.M):
        return {}
    mods = {m.group(1): m.group(0) for m in _MOD_SPAN.finditer(text)}
    return mods if len(mods) == len(re.findall(r"^[ \t]*module\s", text, re.M)) else {}


def _instantiates(text: str, names: list[str]) -> set[str]:
    """Which of ``names`` the module ``text`` instantiates (``name u_x (`` or ``name #(``)."""
    return {n for n in names if re.search(rf"^\s*{re.escape(n)}\s*(#\s*\(|[A-Za-z_]\w*\s*\()", text, re.M)}


def _split_layer(m: str, main: Path, extra: list[Path], tmp: Path) -> list[_Part] | None:
    """Parts of a big multi-module layer file: each module that layer module ``m`` instantiates, with everything
    below it, as its own run, then ``m`` over them as black boxes. None when the file does not split that way."""
    mods = _split_modules(main)
    if m not in mods or len(mods) < 2:
        return None
    names = list(mods)
    kids = {n: _instantiates(mods[n], [k for k in names if k != n]) for n in names}
    d = tmp / m
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    for n, text in mods.items():
        files[n] = d / f"{n}.sv"
        files[n].write_text(f"// module {n} of {main.name}, split out for a per-module Yosys run\n{text}")

    def below(n: str, seen: set[str]) -> set[str]:
        for k in kids[n] - seen:
            seen.add(k)
            below(k, seen)
        return seen

    direct = sorted(kids[m], key=names.index)
    parts = [_Part(c, [files[c], *[files[k] for k in sorted(below(c, set()) - {c}, key=names.index)], *extra], [],
                   m, m) for c in direct]
    return parts + [_Part(m, [files[m], *extra], [files[c] for c in direct], m)]


def _parts(info: dict[str, Any], files: list[Path], top: str, tmp: Path | None = None) -> list[_Part] | None:
    """The Yosys runs of a per-layer report: each layer module with its own submodules, then the top over its layers
    as black boxes; None when the project does not name its layer modules (then only a whole-design run is
    possible). With ``tmp`` (a scratch folder), a layer file over ``_SPLIT_BYTES`` holding several modules is split
    into one run per module it instantiates (written under ``tmp``)."""
    by_stem = {f.stem: f for f in files}
    layers = [la.get("module") for la in info.get("layers", [])]
    if top not in by_stem or not layers or any(m not in by_stem for m in layers):
        return None
    common = [by_stem[f"{top}_requant"]] if f"{top}_requant" in by_stem else []
    parts: list[_Part] = []
    for m in layers:
        # a layer's own submodules: a folded conv's kernel (_pix), a folded dense tail (_out)
        extra = [*[by_stem[f"{m}{s}"] for s in ("_pix", "_out") if f"{m}{s}" in by_stem], *common]
        pix = by_stem.get(f"{m}_pix")
        if tmp is not None and pix is not None and pix.stat().st_size > _PIX_BYTES:
            # a big pixel kernel (adder graphs only) in its own run, LUTs counted; the layer over it as a black box
            parts += [_Part(pix.stem, [pix, *common], [], m, m, count_luts=True),
                      _Part(m, [by_stem[m], *[f for f in extra if f != pix]], [pix], m)]
            continue
        split = (_split_layer(m, by_stem[m], extra, tmp)
                 if tmp is not None and by_stem[m].stat().st_size > _SPLIT_BYTES else None)
        parts += split or [_Part(m, [by_stem[m], *extra], [], m)]
    return parts + [_Part(top, [by_stem[top]], [by_stem[m] for m in layers], None)]


def _cpu_sum(cpus: list[float | None]) -> float | None:
    return None if None in cpus else round(sum(cpus), 2)  # type: ignore[arg-type]


def _report_in_parts(p: Path, info: dict[str, Any], parts: list[_Part], family: str,
                     top: str, progress: Callable[[str], None] | None, timeout: float, use_cache: bool,
                     jobs: int) -> ProjectReport:
    """Each layer module (or, for a split layer, each of its modules) and the top synthesized separately, ``jobs``
    Yosys processes at a time. The hierarchy is kept in the whole-design run too (no optimization across module
    boundaries), so the parts add up to it up to ABC's LUT mapping (which differs by up to ~10 % per module)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()
    lut6 = family in ("xc7", "xcu", "xcup")

    def one(part: _Part) -> SynthResult:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            raise QfxError(f"Yosys synthesis exceeded {timeout:.0f} s")
        cb = None if progress is None else (lambda msg, m=part.module: progress(f"{m}: {msg}"))
        return run_synth(part.srcs, top=part.module, family=family, progress=cb, timeout=left, use_cache=use_cache,
                         lib=part.boxes, lut_chunk=part.lut_chunk() if lut6 else 0,
                         count_luts=part.count_luts and lut6)

    # the biggest runs first, so that a small one does not hold the last slot while a big one starts late
    order = sorted(range(len(parts)), key=lambda i: -sum(f.stat().st_size for f in parts[i].srcs))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = dict(zip(order, pool.map(one, [parts[i] for i in order])))
    results = [done[i] for i in range(len(parts))]
    res_of = {pt.module: r for pt, r in zip(parts, results)}
    by_mod = {la.get("module"): la for la in info.get("layers", [])}
    layers = []
    for m in [la.get("module") for la in info.get("layers", [])]:
        mine = [(pt, r) for pt, r in zip(parts, results) if pt.layer == m]
        total, secs, sub = Resources(), 0.0, []
        cpus = [r.cpu_seconds for _, r in mine]
        for pt, r in mine:
            k = res_of[pt.parent].instances.get(pt.module, 1) if pt.parent else 1
            own = r.total.scaled(k)
            total, secs = total + own, secs + r.seconds
            if len(mine) > 1:
                sub.append({"module": pt.module, "instances": k, "seconds": round(r.seconds, 2),
                            "cpu_seconds": None if r.cpu_seconds is None else round(r.cpu_seconds, 2),
                            "lut_chunk": pt.lut_chunk(), "luts_counted": pt.count_luts and lut6,
                            **own.to_dict()})
        la = by_mod[m]
        layers.append(LayerResources(str(la.get("node", m)), str(la.get("op", "")), m, total, la.get("adders"),
                                     secs, _cpu_sum(cpus), sub))
    top_own = results[-1].total
    total = top_own
    for la in layers:
        total = total + la.resources
    lat = info.get("latency")
    return ProjectReport(str(p), top, family, int(lat) if isinstance(lat, int) else None, layers, top_own, total,
                         time.monotonic() - t0, all(r.cached for r in results),
                         {"part": None, "adder": info.get("adder"), "jobs": jobs,
                          "runs_seconds": round(sum(r.seconds for r in results), 2),
                          "runs_cpu_seconds": _cpu_sum([r.cpu_seconds for r in results]),
                          "top_seconds": round(results[-1].seconds, 2),
                          "top_cpu_seconds": _cpu_sum([results[-1].cpu_seconds])})


def report_project(path: str | os.PathLike[str], *, top: str | None = None, part: str | None = None,
                   progress: Callable[[str], None] | None = None, timeout: float = 1800,
                   use_cache: bool = True, jobs: int = 1, split: bool | None = None) -> ProjectReport:
    """Synthesize a qfx RTL project with Yosys and attribute resources to its layers.

    ``jobs`` > 1 synthesizes each layer module (and the top, over black boxes) as its own Yosys run, that many at a
    time: less wall time on several cores, identical FF/CARRY/DSP, LUTs within ~10 % (ABC maps each run on
    its own); ``seconds`` is then the wall time of all runs together. ``split`` forces (True) or forbids (False)
    those per-layer runs whatever ``jobs`` is; None (default): per-layer runs when ``jobs`` > 1 or the SystemVerilog
    exceeds 1 MB (one Yosys run over a design that size takes too long: LeNet-5's streaming design, 2.4 MB, did not
    finish in 30 min). In per-layer runs, a layer file over 512 kB holding several modules (a folded dense tail, one
    module per dense layer) is split into one run per module, a pixel kernel over 512 kB gets its own run whose LUTs
    are counted from ABC's mapping (``run_synth(count_luts=True)``), and runs over 256 kB of sources map their LUTs
    in chunks (see ``run_synth``): same cells, a fraction of the time.
    """
    p, info, files = load_rtl_project(path)
    family = part_family(part)
    top = top or info.get("top")
    if split is None:
        split = jobs > 1 or sum(f.stat().st_size for f in files) > 1024 * 1024
    if split and top:
        with tempfile.TemporaryDirectory(prefix="qfx_report_") as tmp:
            parts = _parts(info, files, top, Path(tmp))
            if parts is not None:
                rep = _report_in_parts(p, info, parts, family, top, progress, timeout, use_cache, jobs)
                rep.extra["part"] = part
                return rep
    res: SynthResult = run_synth(files, top=top, family=family, progress=progress, timeout=timeout,
                                 use_cache=use_cache)
    layers: list[LayerResources] = []
    attributed = Resources()
    for la in info.get("layers", []):
        mod = la.get("module")
        if mod not in res.modules:
            continue  # wiring-only layers may have been optimized away
        r = res.modules[mod]
        layers.append(LayerResources(str(la.get("node", mod)), str(la.get("op", "")), mod, r, la.get("adders")))
        attributed = attributed + r.scaled(res.instances.get(mod, 1) or 1)
    total = res.modules.get(res.top, res.total)
    top_own = Resources(**{k: max(v - getattr(attributed, k), 0) for k, v in total.to_dict().items()})
    lat = info.get("latency")
    return ProjectReport(str(p), res.top, family, int(lat) if isinstance(lat, int) else None, layers, top_own,
                         total, res.seconds, res.cached, {"part": part, "adder": info.get("adder")})
