"""Resource report of a generated qfx RTL project: Yosys ``synth_xilinx`` figures per layer and in total.

Reads what the RTL backend writes (``cosim.json``: top, latency, layers with their module names, ``rtl_files``;
``model.json``: the IR), synthesizes ``rtl/*.sv`` once with the hierarchy kept, and attributes each layer module's
cells (its requantizers included) to that layer; what remains (pipeline registers, AXI handshake) is the top's own.
"""
from __future__ import annotations

import json
import os
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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "module": self.module, "adders": self.adders,
                **self.resources.to_dict()}


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
        rows = [["layer", "op", *(_HEAD[c] for c in _COLS)]]
        for la in self.layers:
            rows.append([la.name, la.op, *(str(getattr(la.resources, c)) for c in _COLS)])
        rows.append(["(top: registers, handshake)", "", *(str(getattr(self.top_own, c)) for c in _COLS)])
        rows.append(["total", "", *(str(getattr(self.total, c)) for c in _COLS)])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for k, r in enumerate(rows):
            if k == len(rows) - 1 or k == 1:
                lines.append("  ".join("-" * w for w in widths))
            lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        lat = "unknown" if self.latency is None else f"{self.latency} cycles"
        src = "cached" if self.cached else f"{self.seconds:.1f} s"
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


def _parts(info: dict[str, Any], files: list[Path], top: str) -> list[tuple[str, list[Path], list[Path]]] | None:
    """(module, sources, black-box sources) per layer module, then the top over its layers as black boxes; None when
    the project does not name its layer modules (then only a whole-design run is possible)."""
    by_stem = {f.stem: f for f in files}
    layers = [la.get("module") for la in info.get("layers", [])]
    if top not in by_stem or not layers or any(m not in by_stem for m in layers):
        return None
    common = [by_stem[f"{top}_requant"]] if f"{top}_requant" in by_stem else []
    parts = [(m, [by_stem[m], *[by_stem[f"{m}{s}"] for s in ("_pix", "_out") if f"{m}{s}" in by_stem], *common], [])
             for m in layers]  # a layer's own submodules: a folded conv's kernel (_pix), a folded dense tail (_out)
    return parts + [(top, [by_stem[top]], [by_stem[m] for m in layers])]


def _report_in_parts(p: Path, info: dict[str, Any], parts: list[tuple[str, list[Path], list[Path]]], family: str,
                     top: str, progress: Callable[[str], None] | None, timeout: float, use_cache: bool,
                     jobs: int) -> ProjectReport:
    """Each layer module and the top synthesized separately, ``jobs`` Yosys processes at a time. The hierarchy is
    kept in the whole-design run too (no optimization across module boundaries), so the parts add up to it up to
    ABC's LUT mapping (which differs by up to ~10 % per module)."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.monotonic()

    def one(part: tuple[str, list[Path], list[Path]]) -> SynthResult:
        mod, srcs, boxes = part
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            raise QfxError(f"Yosys synthesis exceeded {timeout:.0f} s")
        cb = None if progress is None else (lambda msg, m=mod: progress(f"{m}: {msg}"))
        return run_synth(srcs, top=mod, family=family, progress=cb, timeout=left, use_cache=use_cache, lib=boxes)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, parts))
    by_mod = {la.get("module"): la for la in info.get("layers", [])}
    layers = [LayerResources(str(by_mod[m].get("node", m)), str(by_mod[m].get("op", "")), m, r.total,
                             by_mod[m].get("adders")) for (m, _, _), r in zip(parts[:-1], results[:-1])]
    top_own = results[-1].total
    total = top_own
    for la in layers:
        total = total + la.resources
    lat = info.get("latency")
    return ProjectReport(str(p), top, family, int(lat) if isinstance(lat, int) else None, layers, top_own, total,
                         time.monotonic() - t0, all(r.cached for r in results),
                         {"part": None, "adder": info.get("adder"), "jobs": jobs,
                          "runs_seconds": round(sum(r.seconds for r in results), 2)})


def report_project(path: str | os.PathLike[str], *, top: str | None = None, part: str | None = None,
                   progress: Callable[[str], None] | None = None, timeout: float = 1800,
                   use_cache: bool = True, jobs: int = 1) -> ProjectReport:
    """Synthesize a qfx RTL project with Yosys and attribute resources to its layers.

    ``jobs`` > 1 synthesizes each layer module (and the top, over black boxes) as its own Yosys run, that many at a
    time: less wall time on several cores, identical FF/CARRY/DSP, LUTs within ~10 % (ABC maps each run on
    its own); ``seconds`` is then the wall time of all runs together.
    """
    p, info, files = load_rtl_project(path)
    family = part_family(part)
    top = top or info.get("top")
    parts = _parts(info, files, top) if jobs > 1 and top else None
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
