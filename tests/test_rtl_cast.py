"""The requantization module against ``qfx.fixed.kernels.requantize``: every rounding x overflow mode, signed and
unsigned, right and left shifts, narrowing and widening, in one Verilator build (many instances side by side)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from qfx.backends.rtl import render_requant, template_env
from qfx.fixed import kernels as K
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.sim.toolchain import find_verilator, verilator_env

pytestmark = pytest.mark.verilator

# (IN_W, IN_SIGNED, SHIFT, OUT_W): right shifts (also by more than the width), none, left shifts, 1-bit outputs
GEOMETRIES = [(8, 1, 3, 5), (7, 0, 2, 4), (6, 1, 1, 6), (5, 1, 7, 3), (4, 0, 5, 2), (9, 1, 0, 4),
              (6, 1, -2, 7), (5, 0, -3, 4), (3, 1, 2, 1), (10, 1, 4, 8)]
STEPS = 256
GEOS_PER_MODE = 3


def _cases():
    cases, lsb_in, lsb_out = [], 0, 0
    combos = [(os_, r, o) for os_ in (1, 0) for r in range(len(ROUNDING_MODES)) for o in range(len(OVERFLOW_MODES))]
    # every mode combination with GEOS_PER_MODE geometries (cycled), so each geometry meets many modes
    for i, (os_, r, o) in enumerate(combos):
        for g in range(GEOS_PER_MODE):
            in_w, in_s, sh, out_w = GEOMETRIES[(i * GEOS_PER_MODE + g) % len(GEOMETRIES)]
            cases.append({"in_w": in_w, "in_signed": in_s, "shift": sh, "out_w": out_w, "out_signed": os_,
                          "rnd": r, "ovf": o, "in_lsb": lsb_in, "out_lsb": lsb_out})
            lsb_in += in_w
            lsb_out += out_w
    return cases, lsb_in, lsb_out


def _sources(tmp_path):
    cases, in_bits, out_bits = _cases()
    rq = tmp_path / "qfx_t_requant.sv"
    rq.write_text(render_requant("qfx_t_requant", "test"))
    top = tmp_path / "qfx_cast_top.sv"
    top.write_text(template_env().get_template("cast_top.sv.j2").render(
        top="qfx_cast_top", requant="qfx_t_requant", cases=cases, in_bits=in_bits, out_bits=out_bits))
    return cases, [rq, top]


def test_requant_lint_all_parameterizations(tmp_path):
    _, srcs = _sources(tmp_path)
    r = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", "qfx_cast_top",
                        *map(str, srcs)], env=verilator_env(), capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[:3000]


def test_requant_matches_kernel_all_modes(tmp_path):
    from qfx.sim.cosim import run_testbench

    cases, srcs = _sources(tmp_path)
    rng = np.random.default_rng(7)
    ins, exp = [], []
    for c in cases:
        w, s = c["in_w"], c["in_signed"]
        lo, hi = (-(1 << (w - 1)), (1 << (w - 1)) - 1) if s else (0, (1 << w) - 1)
        vals = np.arange(lo, hi + 1) if hi - lo + 1 <= STEPS else rng.integers(lo, hi, STEPS, endpoint=True)
        vals = np.resize(vals, STEPS).astype(np.int64)
        vals[:2] = (lo, hi)
        fmt = FxFormat(c["out_w"], 0, bool(c["out_signed"]), ROUNDING_MODES[c["rnd"]], OVERFLOW_MODES[c["ovf"]])
        ins.append(vals)
        exp.append(K.requantize(vals, c["shift"], fmt))
    words = []
    for t in range(STEPS):
        v = 0
        for c, vals in zip(cases, ins):
            v |= (int(vals[t]) & ((1 << c["in_w"]) - 1)) << c["in_lsb"]
        words.append(format(v, "x"))
    res = tmp_path / "cast_results.json"
    conf = tmp_path / "cast_config.json"
    conf.write_text(json.dumps({"inputs": words, "results": str(res)}))
    run_testbench(srcs, "qfx_cast_top", "qfx_cast_tb", {"QFX_CAST_CONFIG": str(conf)}, tmp_path)
    outs = [int(w, 16) for w in json.loads(res.read_text())["outputs"]]
    bad = []
    for c, e in zip(cases, exp):
        mask = (1 << c["out_w"]) - 1
        got = np.array([(o >> c["out_lsb"]) & mask for o in outs], dtype=np.int64)
        if c["out_signed"]:
            got = np.where(got >> (c["out_w"] - 1) == 1, got - (1 << c["out_w"]), got)
        if not np.array_equal(got, e):
            i = int(np.argmax(got != e))
            bad.append((c, int(ins[cases.index(c)][i]), int(e[i]), int(got[i])))
    assert not bad, f"{len(bad)} of {len(cases)} cases differ; first: {bad[0]}"
