"""Yosys ``synth_xilinx`` resource estimates: run the synthesis, parse ``stat -json``, group cells into resources.

Why Yosys: it is open and installed everywhere qfx is tested; its 7-series mapping (LUT6/CARRY4/FDRE/DSP48E1)
is close enough to Vivado's to compare designs with each other (not to promise Vivado numbers). Synthesis keeps the
hierarchy (out-of-context: no I/O or clock buffers), so every module gets its own figures. Results are cached by
content hash (sources, options, Yosys version) under ``$QFX_CACHE_DIR/yosys``.

Large designs can be synthesized in parts: ``lib`` sources are read as black boxes (``read_verilog -lib``), so a
top level can be synthesized without its submodules and each submodule in its own (parallel) run. Without
``-flatten`` nothing is optimized across module boundaries, so the parts add up to the whole-design figures (up to
ABC's LUT mapping, which varies slightly with the surrounding netlist: the 64->64 layer of an 8-bit digits MLP maps
to 56,246 LUTs alone and 56,270 in the whole-design run).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from qfx.errors import BadInputError, HdlBuildError, MissingToolError, RunError
from qfx.sim.toolchain import cache_dir, find_yosys

__all__ = ["Resources", "SynthResult", "Netlist", "classify_cells", "parse_stat_json", "part_family", "run_synth",
           "write_netlist"]


@dataclass(frozen=True)
class Resources:
    """Xilinx primitive counts of one module (or a whole design)."""

    lut: int = 0
    ff: int = 0
    carry: int = 0
    dsp: int = 0
    bram: int = 0
    lutram: int = 0
    srl: int = 0
    muxf: int = 0
    other: int = 0

    def __add__(self, o: "Resources") -> "Resources":
        return Resources(**{k: getattr(self, k) + getattr(o, k) for k in asdict(self)})

    def scaled(self, k: int) -> "Resources":
        return Resources(**{f: getattr(self, f) * k for f in asdict(self)})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("lut", re.compile(r"^LUT[1-6]$")),
    ("ff", re.compile(r"^FD[RSCP]E?(_1)?$|^FD$|^LD[CP]E?$")),
    ("carry", re.compile(r"^CARRY(4|8)$|^MUXCY$|^XORCY$")),
    ("dsp", re.compile(r"^DSP48")),
    ("bram", re.compile(r"^RAMB(18|36)|^URAM")),
    ("lutram", re.compile(r"^RAM(16|32|64|128|256)")),
    ("srl", re.compile(r"^SRL")),
    ("muxf", re.compile(r"^MUXF[5-9]$")),
]
_IGNORED = re.compile(r"^(BUFG|IBUF|OBUF|IOBUF|GND|VCC|INV)$")


def classify_cells(cells: Mapping[str, int], submodules: Sequence[str] = ()) -> Resources:
    """Group Yosys cell types into resources; instances of ``submodules`` are skipped (counted by their module)."""
    acc = dict.fromkeys(asdict(Resources()), 0)
    for typ, n in cells.items():
        t = typ.lstrip("\\")
        if t in submodules or typ in submodules:
            continue
        if _IGNORED.match(t):
            continue
        for key, pat in _PATTERNS:
            if pat.match(t):
                acc[key] += int(n)
                break
        else:
            acc["other"] += int(n)
    return Resources(**acc)


def _clean(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


@dataclass
class SynthResult:
    """Per-module resources (one instance, submodules included), instance counts in the top's hierarchy, total."""

    top: str
    family: str
    modules: dict[str, Resources]
    instances: dict[str, int]
    total: Resources
    seconds: float
    cached: bool = False
    log_tail: str = field(default="", repr=False)
    cpu_seconds: float | None = None  # Yosys + ABC CPU time of the run that gave these figures

    def to_dict(self) -> dict:
        return {"top": self.top, "family": self.family, "seconds": round(self.seconds, 2), "cached": self.cached,
                "total": self.total.to_dict(), "instances": self.instances,
                "modules": {k: v.to_dict() for k, v in self.modules.items()}}


def _load_stat_json(text: str) -> dict:
    """The ``modules`` object of ``stat -json`` (Yosys 0.23 may append a non-JSON hierarchy table after it)."""
    try:
        return {"modules": json.loads(text)["modules"]}
    except (ValueError, KeyError, TypeError):
        pass
    i = text.find('"modules"')
    j = text.find("{", i) if i >= 0 else -1
    try:
        if j < 0:
            raise ValueError("no modules section")
        mods, _ = json.JSONDecoder().raw_decode(text, j)
        if not isinstance(mods, dict):
            raise ValueError("modules is not an object")
        return {"modules": mods}
    except ValueError as e:
        raise RunError(f"cannot parse Yosys stat output ({e})") from None


def parse_stat_json(text: str, top: str | None = None, blackboxes: Sequence[str] = ()
                    ) -> tuple[dict[str, Resources], dict[str, int], Resources]:
    """Parse ``stat -json``: resources of each module (its own cells plus everything it instantiates, recursively),
    instance counts in the top's hierarchy, and the design total. Instances of ``blackboxes`` (modules read with
    ``-lib``, absent from ``stat``) count as empty modules: they appear in the instance counts only."""
    data = _load_stat_json(text)
    mods = {_clean(k): v.get("num_cells_by_type", {}) for k, v in data["modules"].items()}
    boxes = {_clean(b) for b in blackboxes} - set(mods)
    mods.update({b: {} for b in boxes})
    names = set(mods)
    res = {k: classify_cells({_clean(t): n for t, n in cells.items()}, tuple(names)) for k, cells in mods.items()}
    # instance counts: walk the hierarchy from the top (the module no other module instantiates, or the given one)
    children = {k: {_clean(t): int(n) for t, n in cells.items() if _clean(t) in names} for k, cells in mods.items()}
    if top is None:
        used = {c for ch in children.values() for c in ch}
        roots = sorted(names - used)
        top = roots[0] if len(roots) == 1 else None
    inst: dict[str, int] = dict.fromkeys(names, 0)
    if top is not None and top in names:
        def walk(mod: str, k: int) -> None:
            inst[mod] += k
            for c, n in children[mod].items():
                walk(c, k * n)
        walk(top, 1)
    else:
        inst = dict.fromkeys(names, 1)
    total = Resources()
    for k, r in res.items():
        total = total + r.scaled(inst[k])
    incl: dict[str, Resources] = {}

    def inclusive(mod: str) -> Resources:
        if mod not in incl:
            r = res[mod]
            for c, n in children[mod].items():
                r = r + inclusive(c).scaled(n)
            incl[mod] = r
        return incl[mod]

    return {k: inclusive(k) for k in sorted(names - boxes)}, inst, total


def part_family(part: str | None) -> str:
    """``synth_xilinx -family`` for a Xilinx part name (xc7* -> xc7, UltraScale+ -> xcup, UltraScale -> xcu)."""
    if not part:
        return "xc7"
    p = part.lower()
    if p in ("xc7", "xcu", "xcup"):
        return p
    if p.startswith("xc7"):
        return "xc7"
    if p.startswith(("xczu", "xcvu", "xcku", "xcau", "xck26", "xcvc", "xcve")):
        return "xcup" if (p.startswith(("xczu", "xcau", "xck26")) or re.match(r"^xc(vu|ku)\d+p", p)) else "xcu"
    raise BadInputError(f"unsupported part {part!r} (expected a Xilinx 7-series or UltraScale(+) part, e.g. "
                        f"xc7a35t, xczu9eg, xcvu13p)")


# ABC's own LUT mapping (the first command of map_luts): lut_map.v turns its $lut cells into Xilinx primitives one by
# one (width 1: INV; 2..6: one LUTn; 7: two LUT6 + MUXF7; 8: four LUT6 + two MUXF7 + MUXF8), then opt_lut_ins drops
# unused inputs, which removes some halves of split 7/8-input LUTs. For a netlist without flip-flops nothing else in
# the rest of the flow changes a count, so ``count_luts`` maps only the wide LUTs, runs opt_lut_ins and counts the
# narrow $lut cells by width: the techmap of thousands of distinct truth tables (most of map_luts' time) is skipped.
# ResNet-20's 650 kB stage-2 pixel kernel: 100,549 LUT / 1,830 MUXF / 15,421 CARRY4 either way, in 72 % of the CPU.
_ABC_LUTS = "opt_expr -mux_undef -noclkinv; abc -luts 2:2,3,6:5,10,20; clean"
_COUNT_LUTS = (_ABC_LUTS + "; techmap -map +/xilinx/lut_map.v -D LUT_WIDTH=6 t:$lut r:WIDTH>=7 %i; "
               "opt_lut_ins -tech xilinx; clean")
_LUT_PRIMS = {1: {"INV": 1}, 2: {"LUT2": 1}, 3: {"LUT3": 1}, 4: {"LUT4": 1}, 5: {"LUT5": 1}, 6: {"LUT6": 1},
              7: {"LUT6": 2, "MUXF7": 1}, 8: {"LUT6": 4, "MUXF7": 2, "MUXF8": 1}}


# synth_xilinx's map_luts stage (Yosys 0.23, LUT6 families, default options), spelled out so that its LUT techmap can
# run in chunks: techmap derives one template module per distinct $lut (width, truth table) and slows down as they
# accumulate (a 400-row weight ROM gives thousands of distinct LUT6 truth tables: ~11k of them took 75 s CPU in one
# techmap call, 33 s in chunks of 1,000). Mapping is per cell, so the chunks give the same netlist.
_MAP_LUTS = (_ABC_LUTS + "; techmap -map +/xilinx/ff_map.v; "
             "xilinx_srl -fixed -minlen 3; {chunks}"
             "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6; xilinx_dffopt; "
             "opt_lut_ins -tech xilinx")


def _counted_cells(cells: Mapping[str, int]) -> dict[str, int] | None:
    """``stat -width`` cells of a run stopped after ABC's LUT mapping (``_COUNT_LUTS``), as the primitives lut_map.v
    would make of them; None when anything else of Yosys's own is left (a flip-flop, a latch, a memory): not a LUT-only netlist."""
    out: dict[str, int] = {}
    for typ, n in cells.items():
        m = re.fullmatch(r"\$lut_(\d+)", typ)
        if m and int(m.group(1)) in _LUT_PRIMS:
            for prim, k in _LUT_PRIMS[int(m.group(1))].items():
                out[prim] = out.get(prim, 0) + k * int(n)
        elif typ.startswith("$") and not typ.startswith(("$paramod", "$abstract")):
            return None
        else:
            out[typ] = out.get(typ, 0) + int(n)
    return out


def _counted_stat(text: str) -> str | None:
    """``stat -json -width`` text with every module's $lut cells replaced by primitives (``_counted_cells``)."""
    data = _load_stat_json(text)
    for v in data["modules"].values():
        cells = _counted_cells(v.get("num_cells_by_type", {}))
        if cells is None:
            return None
        v["num_cells_by_type"] = cells
    return json.dumps(data)


def _script(sources: Sequence[Path], top: str | None, family: str, flatten: bool, dsp: bool,
            lib: Sequence[Path] = (), lut_chunk: int = 0, count_luts: bool = False) -> str:
    reads = "; ".join([f"read_verilog -sv -lib {json.dumps(str(p))}" for p in lib]
                      + [f"read_verilog -sv {json.dumps(str(p))}" for p in sources])
    top_cmd = f"hierarchy -check -top {top}" if top else "hierarchy -check -auto-top"
    opts = ["-family", family, "-noiopad", "-noclkbuf"]
    if top:
        opts += ["-top", top]
    if flatten:
        opts.append("-flatten")
    if not dsp:
        opts.append("-nodsp")
    o = " ".join(opts)
    if count_luts:
        return f"{reads}; {top_cmd}; synth_xilinx {o} -run :map_luts; {_COUNT_LUTS}; tee -q -o stat.json stat -json -width"
    if lut_chunk > 0:
        chunks = f"techmap -map +/xilinx/lut_map.v -D LUT_WIDTH=6 t:$lut %R{lut_chunk}; " * _LUT_CHUNKS
        synth = f"synth_xilinx {o} -run :map_luts; {_MAP_LUTS.format(chunks=chunks)}; synth_xilinx {o} -run finalize:"
    else:
        synth = f"synth_xilinx {o}"
    return f"{reads}; {top_cmd}; {synth}; tee -q -o stat.json stat -json"


_LUT_CHUNKS = 48  # chunked techmap calls (an empty selection costs ~nothing); what is left is mapped in one call


_MODULE = re.compile(r"^\s*module\s+([A-Za-z_][A-Za-z0-9_$]*)", re.M)


def _module_names(path: Path) -> list[str]:
    """Module names declared in a Verilog file (comments stripped; enough for generated sources)."""
    text = re.sub(r"/\*.*?\*/", " ", path.read_text(errors="replace"), flags=re.S)
    return _MODULE.findall(re.sub(r"//[^\n]*", "", text))


def _yosys_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd + ["-V"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise MissingToolError(f"cannot run Yosys ({e})") from None


def _run_yosys(cmd: list[str], script: str, wd: Path, timeout: float, progress: Callable[[str], None] | None,
               top: str | None, log: Path | None = None, usage: dict | None = None
               ) -> tuple[int, list[str], str | None, float]:
    """Run ``cmd -p script`` in ``wd``: (exit status, last 40 log lines, top module Yosys chose, seconds).

    ``progress`` gets the pass Yosys is in; ``log``, when given, receives every line as it comes; ``usage``, when
    given, receives ``cpu_s``: CPU seconds of Yosys and the ABC processes it ran (wall time on a shared machine
    says little). Raises
    MissingToolError when Yosys cannot start and RunError when it runs past ``timeout`` seconds (it is killed).
    """
    t0 = time.monotonic()
    tail: list[str] = []
    try:
        proc = subprocess.Popen(cmd + ["-p", script], cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
    except OSError as e:
        raise MissingToolError(f"cannot run Yosys ({e})") from None
    detected_top = top
    step = re.compile(r"^\d+(\.\d+)*\. Executing (.*)")
    assert proc.stdout is not None
    logf = open(log, "w") if log is not None else None
    try:
        for line in proc.stdout:
            if logf is not None:
                logf.write(line)
            tail.append(line.rstrip())
            if len(tail) > 40:
                del tail[:-40]
            mt = re.match(r"^Top module:\s+\\?(\S+)", line.strip())
            if mt and detected_top is None:
                detected_top = mt.group(1)
            if progress is not None:
                ms = step.match(line)
                if ms:
                    progress(ms.group(2).strip().rstrip(".")[:60])
            if time.monotonic() - t0 > timeout:
                proc.kill()
                raise RunError(f"Yosys synthesis exceeded {timeout:.0f} s" + (f" (log: {log})" if log else ""))
        try:  # wait4: the exit status with the CPU time of Yosys and its reaped children (ABC)
            _, status, ru = os.wait4(proc.pid, 0)
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
            if usage is not None:
                usage["cpu_s"] = ru.ru_utime + ru.ru_stime
        except ChildProcessError:
            rc = proc.wait()
    finally:
        if logf is not None:
            logf.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, tail, detected_top, time.monotonic() - t0


def run_synth(sources: Sequence[str | Path], *, top: str | None = None, family: str = "xc7", flatten: bool = False,
              dsp: bool = True, timeout: float = 1800, workdir: str | Path | None = None,
              progress: Callable[[str], None] | None = None, use_cache: bool = True,
              lib: Sequence[str | Path] = (), lut_chunk: int = 0, count_luts: bool = False) -> SynthResult:
    """Synthesize ``sources`` with ``synth_xilinx`` (out-of-context) and return the ``stat`` figures.

    ``lut_chunk`` > 0 runs synth_xilinx's last mapping stage (map_luts) as separate commands, with the LUT techmap
    applied to at most that many ``$lut`` cells per call: same cells, much faster for modules with many distinct LUT
    truth tables (large weight ROMs); only for the LUT6 families (xc7, xcu, xcup) with default options.

    ``count_luts`` (LUT6 families, default options) stops after ABC's LUT mapping and counts the primitives each
    $lut cell becomes (see ``_ABC_LUTS``): for a netlist of LUTs and carry chains only (a combinational pixel
    kernel) the same figures in about 70 % of the CPU time; a run whose netlist holds anything else (flip-flops) is
    repeated with the full flow (``lut_chunk`` as given).

    ``progress`` receives short status strings (the pass Yosys is in) while it runs. ``lib`` files are read as black
    boxes: their modules' instances are counted in ``instances`` but contribute no cells. Raises MissingToolError
    when Yosys is absent and HdlBuildError (one line, last log line) when synthesis fails.
    """
    cmd = find_yosys()
    paths = [Path(s).resolve() for s in sources]
    if not paths:
        raise BadInputError("no Verilog sources to synthesize")
    lib_paths = [Path(s).resolve() for s in lib]
    for p in paths + lib_paths:
        if not p.is_file():
            raise BadInputError(f"Verilog source not found: {p}")
    boxes = [m for p in lib_paths for m in _module_names(p)]
    script = _script(paths, top, family, flatten, dsp, lib_paths, lut_chunk, count_luts)
    h = hashlib.sha256()
    h.update(_yosys_version(cmd).encode())
    h.update(_script([Path(p.name) for p in paths], top, family, flatten, dsp,
                     [Path(p.name) for p in lib_paths], lut_chunk, count_luts).encode())
    for p in paths + lib_paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    cdir = cache_dir("yosys") / key
    if use_cache and (cdir / "meta.json").is_file() and (cdir / "stat.json").is_file():
        meta = json.loads((cdir / "meta.json").read_text())
        mods, inst, total = parse_stat_json((cdir / "stat.json").read_text(), top or meta.get("top"), boxes)
        return SynthResult(meta["top"], family, mods, inst, total, meta["seconds"], cached=True,
                           cpu_seconds=meta.get("cpu_seconds"))

    wd = Path(workdir) if workdir is not None else cdir
    wd.mkdir(parents=True, exist_ok=True)
    usage: dict = {}
    rc, tail, detected_top, secs = _run_yosys(cmd, script, wd, timeout, progress, top, usage=usage)
    cpu = usage.get("cpu_s")
    (wd / "yosys.log").write_text("\n".join(tail) + "\n")
    if rc != 0 or not (wd / "stat.json").is_file():
        errs = [t for t in tail if "ERROR" in t] or tail[-1:] or ["(no output)"]
        if rc < 0:  # killed from outside (out of memory, a stray pkill): say so, not a misleading log line
            raise RunError(f"Yosys was killed by signal {-rc} (last log line: {errs[-1].strip()[:120]})")
        raise HdlBuildError(f"Yosys synthesis failed: {errs[-1].strip()}")
    stat_text = (wd / "stat.json").read_text()
    if count_luts:
        counted = _counted_stat(stat_text)
        if counted is None:  # not LUTs and carries only: the full flow
            return run_synth(sources, top=top, family=family, flatten=flatten, dsp=dsp, timeout=timeout,
                             workdir=workdir, progress=progress, use_cache=use_cache, lib=lib, lut_chunk=lut_chunk)
        stat_text = counted
    mods, inst, total = parse_stat_json(stat_text, detected_top, boxes)
    if detected_top is None:
        roots = [k for k, v in inst.items() if v == 1]
        detected_top = roots[0] if len(roots) == 1 else "?"
    if use_cache:
        cdir.mkdir(parents=True, exist_ok=True)
        if wd != cdir or count_luts:  # a counted run keeps the primitives, not Yosys's $lut cells
            (cdir / "stat.json").write_text(stat_text)
        (cdir / "meta.json").write_text(json.dumps({"top": detected_top, "seconds": secs, "cpu_seconds": cpu}))
    return SynthResult(detected_top, family, mods, inst, total, secs, cached=False, log_tail="\n".join(tail[-10:]),
                       cpu_seconds=cpu)


_NETLIST_FORMAT = "qfx-netlist-1"


@dataclass
class Netlist:
    """A gate-level Verilog netlist written by ``write_netlist``: one flattened module named ``top``."""

    path: Path
    top: str
    seconds: float
    cached: bool
    log: Path

    def to_dict(self) -> dict:
        return {"path": str(self.path), "top": self.top, "seconds": round(self.seconds, 2), "cached": self.cached,
                "log": str(self.log)}


def _netlist_script(sources: Sequence[Path], top: str, out: str) -> str:
    reads = "; ".join(f"read_verilog -sv {json.dumps(str(p))}" for p in sources)
    return (f"{reads}; hierarchy -check -top {top}; synth -flatten -top {top}; "
            f"write_verilog -noattr {json.dumps(out)}")


def write_netlist(sources: Sequence[str | Path], top: str, *, timeout: float = 1800,
                  progress: Callable[[str], None] | None = None, use_cache: bool = True) -> Netlist:
    """Synthesize ``sources`` with Yosys's generic ``synth -flatten`` and write the gate-level netlist
    (``write_verilog -noattr``): one module ``top`` with the same ports, built from Yosys's internal gates
    (AND/OR/XOR/MUX/NOT written as ``assign`` expressions, flip-flops as ``always`` blocks), so any Verilog simulator
    can run it without a cell library.

    Cached by content hash (sources, script, Yosys version) under ``$QFX_CACHE_DIR/netlist``. Raises
    MissingToolError when Yosys is absent, HdlBuildError (one line, first error, log path) when synthesis fails.
    """
    from qfx.errors import HdlBuildError

    cmd = find_yosys()
    paths = [Path(s).resolve() for s in sources]
    if not paths:
        raise BadInputError("no Verilog sources to synthesize")
    for p in paths:
        if not p.is_file():
            raise BadInputError(f"Verilog source not found: {p}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", top):
        raise BadInputError(f"top module name {top!r} is not a plain Verilog identifier")
    out_name = f"{top}_netlist.v"
    h = hashlib.sha256()
    h.update(f"{_NETLIST_FORMAT}\0{_yosys_version(cmd)}\0".encode())
    h.update(_netlist_script([Path(p.name) for p in paths], top, out_name).encode())
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = h.hexdigest()[:32]
    root = cache_dir("netlist")
    dest = root / f"{top[:40]}-{key}"
    if use_cache and (dest / out_name).is_file() and (dest / "meta.json").is_file():
        meta = json.loads((dest / "meta.json").read_text())
        return Netlist(dest / out_name, top, float(meta["seconds"]), True, dest / "yosys.log")
    tmp = Path(tempfile.mkdtemp(prefix=f".{top[:40]}-", dir=root))
    try:
        log = tmp / "yosys.log"
        rc, tail, _, secs = _run_yosys(cmd, _netlist_script(paths, top, out_name), tmp, timeout, progress, top, log)
        if rc != 0 or not (tmp / out_name).is_file():
            errs = [ln for ln in tail if "ERROR" in ln] or tail[-1:] or ["(no output)"]
            keep = root / f"failed-{top[:40]}-{key}"  # the log outlives the failed build, for the message
            shutil.rmtree(keep, ignore_errors=True)
            os.replace(tmp, keep)
            why = f"killed by signal {-rc}" if rc < 0 else errs[-1].strip()[:300]
            raise HdlBuildError(f"Yosys synthesis of {top} to a netlist failed: {why} (log: {keep / 'yosys.log'})")
        (tmp / "meta.json").write_text(json.dumps({"top": top, "seconds": secs, "sources": [p.name for p in paths]}))
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.replace(tmp, dest)
        except OSError:  # a concurrent run of the same design won; use it
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Netlist(dest / out_name, top, secs, False, dest / "yosys.log")


def stderr_progress(prefix: str = "yosys") -> Callable[[str], None]:
    """A progress callback printing one updating status line on stderr (a new line every 5 s when not a tty)."""
    t0 = time.monotonic()
    last = [0.0]
    tty = sys.stderr.isatty()

    def cb(msg: str) -> None:
        now = time.monotonic() - t0
        if tty:
            sys.stderr.write(f"\r\x1b[K{prefix}: [{now:5.0f} s] {msg}")
            sys.stderr.flush()
        elif now - last[0] >= 5:
            last[0] = now
            sys.stderr.write(f"{prefix}: [{now:5.0f} s] {msg}\n")

    return cb
