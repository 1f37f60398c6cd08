"""C simulation of a generated HLS project: g++ + ap_types, every output code compared with the golden interpreter.

Why one run over a file of vectors: compiling the ap_fixed headers costs seconds, running one vector costs
microseconds; the testbench binary is built once (content-cached by ``qfx.sim.build``) and reads all vectors at once.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qfx.errors import BadInputError
from qfx.ir.graph import Graph
from qfx.ir.interpret import random_inputs, run

__all__ = ["CsimReport", "run_csim", "run_csim_batch", "project_top", "make_inputs", "axis_driver", "REPORT_NAME"]

REPORT_NAME = "csim_report.json"
NDEBUG = {"NDEBUG": ""}


@dataclass
class CsimReport:
    """Outcome of one C simulation; ``passed`` is True when every output code matched."""

    project: str
    model: str
    top: str
    vectors: int
    outputs_compared: int
    mismatches: int
    first_mismatch: dict[str, Any] | None
    build_s: float
    run_s: float
    vectors_per_s: float
    seed: int
    executable: str
    per_output_mismatches: dict[str, int] = field(default_factory=dict)
    inputs: str = "edge + random"

    @property
    def passed(self) -> bool:
        return self.mismatches == 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}

    def summary(self) -> str:
        head = (f"qfx csim: {self.model} ({self.top}): {self.vectors} vectors, {self.outputs_compared} outputs "
                f"compared, {self.mismatches} mismatches (build {self.build_s:.1f} s, "
                f"{self.vectors_per_s:,.0f} vectors/s)")
        if not self.first_mismatch:
            return head + " — bit-exact"
        m = self.first_mismatch
        return (head + f"\n  first mismatch: vector {m['vector']}, output {m['output']!r}[{m['index']}] "
                f"(flat output index {m['flat_index']}): expected code {m['expected']}, got {m['got']}; "
                f"produced by layer {m['layer']!r}" + (f" (source {m['source']})" if m.get("source") else ""))


def project_top(project_dir: Path) -> tuple[str, Path, Path]:
    """(top name, testbench source, top source) of a project folder written by ``qfx.backends.hls``."""
    tbs = sorted((project_dir / "tb").glob("tb_*.cpp"))
    if len(tbs) != 1:
        raise BadInputError(f"{project_dir} is not a qfx HLS project: expected one tb/tb_<top>.cpp, found {len(tbs)}")
    top = tbs[0].stem[3:]
    src = project_dir / "firmware" / f"{top}.cpp"
    if not src.is_file():
        raise BadInputError(f"{project_dir} is not a qfx HLS project: firmware/{top}.cpp is missing")
    return top, tbs[0], src


def make_inputs(graph: Graph, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` vectors per graph input: the edge vectors (max, min, zero, +-1 step, alternating) first, then random."""
    if len(graph.inputs) == 1:
        return {graph.inputs[0]: random_inputs(graph, n, seed)}
    out = {}
    for k, name in enumerate(graph.inputs):
        sub = graph.replace(inputs=(name,))
        out[name] = random_inputs(sub, n, seed + k)
    return out


def _flat(graph: Graph, arrays: dict[str, np.ndarray] | np.ndarray, names: Sequence[str], n: int) -> np.ndarray:
    if not isinstance(arrays, dict):
        arrays = {names[0]: arrays}
    return np.concatenate([np.asarray(arrays[t], dtype=np.int64).reshape(n, -1) for t in names], axis=1)


def run_csim(project_dir: str | Path, n_vectors: int = 1000, seed: int = 0, ap_include: str | Path | None = None,
             *, flags: Sequence[str] = (), write_report: bool = True, timeout: float = 600.0,
             inputs: Any | None = None, axis: bool = False) -> CsimReport:
    """Build the project's testbench (cached), run ``n_vectors`` vectors through it in one process and compare every
    output code with ``qfx.ir.run`` on the project's ``model.json``. Writes ``csim_report.json`` into the project.

    ``inputs``: input codes to run instead of edge + random ones (one int array ``(N, *shape)`` per graph input
    name, or the array of a one-input graph; ``n_vectors`` then does not apply). ``axis``: drive the AXI4-Stream
    top ``firmware/<top>_axis.cpp`` (packed words on every port, what Vitis synthesizes) instead of the plain top.
    """
    from qfx.sim.build import compile_cxx

    d = Path(project_dir)
    _check_project(d)
    n = int(n_vectors)
    if n < 1 and inputs is None:
        raise BadInputError(f"number of vectors must be >= 1, got {n}")
    graph = Graph.load(d / "model.json")
    xs = None
    if inputs is not None:
        from qfx.sim.cosim import check_input_dict

        xs = check_input_dict(graph, inputs)
        n = len(next(iter(xs.values())))
    top, tb, src = project_top(d)
    t0 = time.perf_counter()
    # NDEBUG: the 2019 ap_types snapshot asserts ("Attempting to read bit beyond MSB") inside valid conversions
    # that drop more fraction bits than the source has; the guarded read returns the sign extension, which is the
    # right bit (the csim tests check the result against qfx.fixed bit for bit).
    # One translation unit (the design, then the testbench): the ap_types headers are parsed once, not twice.
    if axis:
        top, text = axis_driver(d, graph, top, src)
        drv = _driver(text, "axis")
    else:
        drv = _driver(f"// qfx csim driver for {top}: design and testbench in one translation unit\n"
                      f'#include "{src.resolve()}"\n#include "{tb.resolve()}"\n', "single")
    exe = compile_cxx([drv], include_dirs=[d / "firmware"], ap_include=ap_include, flags=flags, defines=NDEBUG,
                      name=f"csim_{top}", timeout=timeout)
    build_s = time.perf_counter() - t0
    return _simulate(d, graph, top, exe, [], n, seed, build_s, write_report, timeout, xs)


def axis_driver(d: Path, graph: Graph, top: str, src: Path) -> tuple[str, str]:
    """(AXI top name, C++ source) of a testbench for ``firmware/<top>_axis.cpp`` with the plain testbench's command
    line (inputs.bin expected.bin got.bin): it packs each vector's input codes into one word per input port, calls
    the AXI top once and unpacks one word per output port, so the C++ packing is checked, not only the layers."""
    from qfx.backends.hls import axis_ports
    from qfx.errors import UnsupportedError

    name = f"{top}_axis"
    axis_src = d / "firmware" / f"{name}.cpp"
    if not axis_src.is_file():
        try:
            axis_ports(graph)
        except UnsupportedError as exc:
            raise UnsupportedError(f"{d} has no AXI-Stream top: {exc}") from None
        raise BadInputError(f"{d} has no AXI-Stream top firmware/{name}.cpp; re-export it with this qfx version")
    ins, outs = axis_ports(graph)
    n_in, n_out = sum(q.count for q in ins), sum(q.count for q in outs)
    body, off = [], 0
    for k, q in enumerate(ins):
        body += [f"        {{ ap_uint<{q.tw}> w = 0;",
                 f"          for (unsigned i = 0; i < {q.count}; i++) w.range(i * {q.ew} + {q.ew - 1}, i * {q.ew}) = "
                 f"ap_uint<{q.ew}>(src[{off} + i]);",
                 f"          in{k}.write(w); }}"]
        off += q.count
    call = ", ".join([f"in{k}" for k in range(len(ins))] + [f"out{k}" for k in range(len(outs))])
    body.append(f"        {name}({call});")
    off = 0
    for k, q in enumerate(outs):
        t = f"ap_int<{q.ew}>" if q.signed else f"ap_uint<{q.ew}>"
        get = "to_int64" if q.signed else "to_uint64"
        body += [f"        {{ if (out{k}.empty()) {{ std::fprintf(stderr, \"{name}: no word on {q.prefix}\\n\"); return 3; }}",
                 f"          const ap_uint<{q.tw}> w = out{k}.read();",
                 f"          for (unsigned i = 0; i < {q.count}; i++) {{ {t} c; c.range({q.ew - 1}, 0) = "
                 f"w.range(i * {q.ew} + {q.ew - 1}, i * {q.ew}); dst[{off} + i] = (long long)c.{get}(); }} }}"]
        off += q.count
    left = " || ".join([f"!in{k}.empty()" for k in range(len(ins))] + [f"!out{k}.empty()" for k in range(len(outs))])
    decl = [f"    hls::stream<ap_uint<{q.tw}> > in{k}(\"in{k}\");" for k, q in enumerate(ins)]
    decl += [f"    hls::stream<ap_uint<{q.tw}> > out{k}(\"out{k}\");" for k, q in enumerate(outs)]
    lines = [f"// qfx csim driver for the AXI-Stream top {name}: the axis top first (it may define AP_INT_MAX_W,",
             "// which must precede the first ap_int.h include), then the design, then a packing testbench.",
             f'#include "{axis_src.resolve()}"', f'#include "{src.resolve()}"', "#include <cstdio>",
             "#include <vector>", '#include "qfx_io.h"', "int main(int argc, char **argv) {",
             "    if (argc < 4) return 2;", "    std::vector<long long> in;",
             f"    if (!qfx::read_codes(argv[1], in) || in.size() % {n_in} != 0) {{",
             f'        std::fprintf(stderr, "{name}: cannot read input codes from %s\\n", argv[1]);',
             "        return 2;", "    }", f"    const unsigned long n_vec = in.size() / {n_in};",
             f"    std::vector<long long> got(n_vec * {n_out});", *decl,
             "    for (unsigned long vec = 0; vec < n_vec; vec++) {",
             f"        const long long *src = &in[vec * {n_in}];", f"        long long *dst = &got[vec * {n_out}];",
             *body,
             f'        if ({left}) {{ std::fprintf(stderr, "{name}: words left on a port\\n"); return 3; }}',
             "    }",
             f'    if (!qfx::write_codes(argv[3], got)) {{ std::fprintf(stderr, "{name}: cannot write %s\\n", argv[3]); return 2; }}',
             "    return 0;", "}", ""]
    return name, "\n".join(lines)


def _driver(text: str, kind: str) -> Path:
    """A generated driver source in the build cache, named by its content."""
    import hashlib

    from qfx.sim.toolchain import cache_dir

    drv = cache_dir("csim-drivers") / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.cpp"
    if not drv.is_file():
        tmp = drv.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, drv)
    return drv


def run_csim_batch(project_dirs: Sequence[str | Path], n_vectors: int = 1000, seed: int = 0,
                   ap_include: str | Path | None = None, *, flags: Sequence[str] = (), write_report: bool = True,
                   timeout: float = 600.0) -> list[CsimReport]:
    """``run_csim`` for several projects compiled into ONE binary (the ap_fixed headers are parsed once).

    Each project's firmware and testbench are included inside their own C++ namespace; the testbench ``main`` of
    project ``k`` runs when the binary's first argument is ``k``. Top names must be distinct. Saves most of the
    compile time when many small models are checked (tests, sweeps); the per-project code is the same files.
    """
    from qfx.sim.build import compile_cxx

    dirs = [Path(p) for p in project_dirs]
    if not dirs:
        return []
    infos = []
    for d in dirs:
        _check_project(d)
        top, tb, src = project_top(d)
        infos.append((d, Graph.load(d / "model.json"), top, tb.resolve(), src.resolve()))
    tops = [i[2] for i in infos]
    if len(set(tops)) != len(tops):
        raise BadInputError("run_csim_batch needs distinct top names")
    fw0 = infos[0][0] / "firmware"
    lines = ["// qfx csim batch driver: several generated projects in one binary, each in its own namespace.",
             "#include <cstdio>", "#include <cstdlib>", "#include <vector>", '#include "qfx_types.h"',
             '#include "qfx_io.h"']
    # every support header any project copied (each copies only those it uses), at file scope before the namespaces
    used = {h.name for i in infos for h in (i[0] / "firmware").glob("qfx_*.h")} - {"qfx_types.h", "qfx_io.h"}
    lines += [f'#include "{h}"' for h in sorted(used)]
    for k, (_, _, top, tb, src) in enumerate(infos):
        lines += [f"namespace qfx_batch_{k} {{", f'#include "{src}"', "#define main qfx_tb_main",
                  f'#include "{tb}"', "#undef main", "}"]
    lines += ["int main(int argc, char **argv) {", "    if (argc < 2) return 2;",
              "    switch (std::atoi(argv[1])) {"]
    lines += [f"    case {k}: return qfx_batch_{k}::qfx_tb_main(argc - 1, argv + 1);" for k in range(len(infos))]
    lines += ["    default: return 2;", "    }", "}", ""]
    drv = _driver("\n".join(lines), "batch")
    t0 = time.perf_counter()
    exe = compile_cxx([drv], include_dirs=[fw0] + [i[0] / "firmware" for i in infos[1:]], ap_include=ap_include,
                      flags=flags, defines=NDEBUG, name="csim_batch", timeout=timeout)
    build_s = (time.perf_counter() - t0) / len(infos)
    return [_simulate(d, g, top, exe, [str(k)], int(n_vectors), seed, build_s, write_report, timeout)
            for k, (d, g, top, _, _) in enumerate(infos)]


def _check_project(d: Path) -> None:
    if not d.is_dir():
        raise BadInputError(f"{d} is not a folder (expected a project written by 'qfx export MODEL --target hls -o DIR')")
    if not (d / "model.json").is_file():
        raise BadInputError(f"{d} is not a qfx HLS project: model.json is missing")


def _simulate(d: Path, graph: Graph, top: str, exe: Path, prefix: list[str], n: int, seed: int, build_s: float,
              write_report: bool, timeout: float, given: dict[str, np.ndarray] | None = None) -> CsimReport:
    from qfx.sim.build import read_codes, run_binary, write_codes

    xs = make_inputs(graph, n, seed) if given is None else given
    y = run(graph, xs if len(xs) > 1 else xs[graph.inputs[0]])
    x_flat = _flat(graph, xs, graph.inputs, n)
    y_flat = _flat(graph, y, graph.outputs, n)
    with tempfile.TemporaryDirectory(prefix="qfx-csim-") as tmp:
        t = Path(tmp)
        write_codes(t / "in.bin", x_flat)
        write_codes(t / "exp.bin", y_flat)
        t1 = time.perf_counter()
        res = run_binary(exe, prefix + [str(t / "in.bin"), str(t / "exp.bin"), str(t / "got.bin")], cwd=t, timeout=timeout,
                         check=False)
        run_s = time.perf_counter() - t1
        if res.returncode not in (0, 1):
            from qfx.errors import RunError

            tail = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
            raise RunError(f"testbench of {top} failed (exit status {res.returncode})"
                           + (f": {tail[-1].strip()[:300]}" if tail else ""))
        got = read_codes(t / "got.bin", y_flat.shape)
    diff = got != y_flat
    mism = int(diff.sum())
    first = None
    per_out: dict[str, int] = {}
    offsets = np.cumsum([0] + [graph.tensor(o).size for o in graph.outputs])
    for i, o in enumerate(graph.outputs):
        per_out[o] = int(diff[:, offsets[i]:offsets[i + 1]].sum())
    if mism:
        v, k = (int(a) for a in np.argwhere(diff)[0])
        i = int(np.searchsorted(offsets, k, side="right") - 1)
        out_name = graph.outputs[i]
        prod = graph.producer(out_name)
        first = {"vector": v, "flat_index": k, "output": out_name, "index": k - int(offsets[i]),
                 "expected": int(y_flat[v, k]), "got": int(got[v, k]),
                 "layer": prod.name if prod else "", "source": prod.source if prod else "",
                 "input_codes": [int(c) for c in x_flat[v][:64]]}
    rep = CsimReport(project=str(d.resolve()), model=graph.name, top=top, vectors=n, outputs_compared=int(y_flat.size),
                     mismatches=mism, first_mismatch=first, build_s=round(build_s, 3), run_s=round(run_s, 4),
                     vectors_per_s=round(n / max(run_s, 1e-9), 1), seed=int(seed), executable=str(exe),
                     per_output_mismatches=per_out, inputs="edge + random" if given is None else "given")
    if write_report:
        try:
            (d / REPORT_NAME).write_text(json.dumps(rep.to_dict(), indent=1) + "\n")
        except OSError as exc:
            raise BadInputError(f"cannot write {d / REPORT_NAME}: {exc.strerror or exc}") from None
    return rep


