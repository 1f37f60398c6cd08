"""Folded dense layers in the RTL backend (reuse factor R): the choice of R, the pipeline II, bit-exact co-simulation
against the golden interpreter (R = 2, 4, n_in; plain and K-hot weights; informative random graphs), a wrong ROM word
caught, lint-clean output, shift-only K-hot layers (0 DSP under Yosys) and the CLI flags."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from qfx.backends.rtl import build_project, write_project
from qfx.backends.rtl_folded import foldable, reuse_map
from qfx.cli import main
from qfx.errors import BadInputError
from qfx.ir.random_graph import random_graph


def _mlp(seed: int, khot: float):
    return random_graph(seed, kind="mlp", informative=True, khot_prob=khot)


def _dense(g):
    return [n for n in g.nodes if foldable(n)]


def test_reuse_map_rules():
    g = _mlp(3, 0.0)
    dense = _dense(g)
    n_in = {n.name: g.tensor(n.inputs[0]).size for n in dense}
    assert dense and all(v == 8 for v in n_in.values())
    assert reuse_map(g, 1) == {}
    assert reuse_map(g, 4) == {k: 4 for k in n_in}
    assert reuse_map(g, 1000) == {k: 8 for k in n_in}  # an int is capped at each layer's inputs
    # target II: the largest R <= N that divides n_in
    assert reuse_map(g, target_ii=7) == {k: 4 for k in n_in}
    assert reuse_map(g, target_ii=1) == {}
    first = dense[0].name
    assert reuse_map(g, {first: 2}) == {first: 2}
    for bad, match in [({first: 9}, "exceeds"), ({"nope": 2}, "unknown"), ({first: 0}, ">= 1"), (0, ">= 1")]:
        with pytest.raises(BadInputError, match=match):
            reuse_map(g, bad)
    other = next(n.name for n in g.nodes if not foldable(n))
    with pytest.raises(BadInputError, match="only dense"):
        reuse_map(g, {other: 2})
    with pytest.raises(BadInputError, match="not both"):
        reuse_map(g, 2, target_ii=4)


def test_folded_facts_and_unfolded_unchanged():
    g = _mlp(3, 0.0)
    base = build_project(g)
    assert build_project(g, reuse_factor=1).files == base.files  # R = 1 is today's adder graph, byte for byte
    p = build_project(g, reuse_factor=4)
    info = p.info
    assert info["ii"] == 4 and info["latency"] == (info["stages"] - 1) * 4 + 1
    folded = [L for L in info["layers"] if L.get("reuse")]
    assert len(folded) == len(_dense(g)) and all(L["steps"] == 4 and L["macs"] == 8 * 2 for L in folded)
    assert "folded by reuse factor 4" in p.files[f"{folded[0]['module']}.sv"]
    assert max(len(line) for text in p.files.values() for line in text.splitlines()) < 400
    lines = sum(t.count("\n") for t in p.files.values())
    assert lines < sum(t.count("\n") for t in build_project(g, reuse_factor=8).files.values()) * 3
    # K-hot weights: shift terms, no multiplier; plain weights: one `*` per unit
    kh = build_project(_mlp(3, 1.0), reuse_factor=2)
    assert kh.multipliers == 0 and all(L["shifters"] > 0 for L in kh.info["layers"] if L.get("reuse"))
    assert p.multipliers == sum(L["multipliers"] for L in folded) > 0


def _mutate_rom(path) -> None:
    """Flip the lowest bit of the first non-zero ROM row (one wrong weight word)."""
    text = path.read_text()
    m = re.search(r"'d0: rom\d+ = \d+'h([0-9a-f]+);", text)
    assert m, f"no ROM row in {path.name}"
    v = int(m.group(1), 16) ^ 1
    path.write_text(text[:m.start(1)] + f"{v:x}" + text[m.end(1):])


def _cosim_folded(tmp_path, seeds: list[tuple[int, float]], mutate: bool) -> None:
    from qfx.sim.cosim import run_cosim_many
    from qfx.sim.toolchain import find_verilator, verilator_env

    cases = []
    for seed, khot in seeds:
        g = _mlp(seed, khot)
        n_in = {n.name: g.tensor(n.inputs[0]).size for n in _dense(g)}
        cases += [(f"s{seed}r2", g, 2), (f"s{seed}r4", g, 4), (f"s{seed}rn", g, n_in)]
    if mutate:
        cases.append(("mrom", _mlp(3, 0.0), 2))
    dirs = []
    for name, g, r in cases:
        d = tmp_path / name
        write_project(g, d, reuse_factor=r, top_name=f"t_{name}")
        dirs.append(d)
        if name == "s3r2":
            info = json.loads((d / "cosim.json").read_text())
            lint = subprocess.run([str(find_verilator()), "--lint-only", "-Wall", "--top-module", info["top"],
                                   *[str(d / f) for f in info["rtl_files"]]],
                                  env=verilator_env(), capture_output=True, text=True, timeout=300)
            assert lint.returncode == 0 and "%Warning" not in lint.stdout + lint.stderr, lint.stderr[:3000]
    if mutate:
        info = json.loads((tmp_path / "mrom" / "cosim.json").read_text())
        mod = next(L["module"] for L in info["layers"] if L.get("reuse"))
        _mutate_rom(tmp_path / "mrom" / "rtl" / f"{mod}.sv")
    reps = {r.top: r for r in run_cosim_many(dirs, 120, seed=4, backpressure=True, work_dir=tmp_path / "work")}
    good = [r for t, r in reps.items() if t != "t_mrom"]
    assert len(good) == 3 * len(seeds)
    assert all(r.ok and r.outputs_compared > 0 for r in good), [(r.top, r.mismatches) for r in good]
    if mutate:
        assert reps["t_mrom"].mismatches > 0


@pytest.mark.verilator
def test_cosim_folded_bit_exact_and_rom_mutation_caught(tmp_path):
    _cosim_folded(tmp_path, [(3, 0.0), (5, 1.0)], mutate=True)


@pytest.mark.slow
@pytest.mark.verilator
def test_cosim_folded_random_sweep(tmp_path):
    _cosim_folded(tmp_path, [(s, (0.0, 1.0, 0.5)[s % 3]) for s in range(20, 32)], mutate=False)


@pytest.mark.yosys
@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_khot_folded_layer_uses_no_dsp(tmp_path):
    from qfx.report.yosys import run_synth

    g = _mlp(5, 1.0)
    write_project(g, tmp_path / "p", reuse_factor=4)
    info = json.loads((tmp_path / "p" / "cosim.json").read_text())
    assert any(L.get("shifters") for L in info["layers"])
    mod = next(L["module"] for L in info["layers"] if L.get("shifters"))  # one folded layer, its tail, requant
    srcs = [tmp_path / "p" / "rtl" / f"{m}.sv" for m in (f"{info['top']}_requant", f"{mod}_out", mod)]
    res = run_synth(srcs, top=mod, workdir=tmp_path / "y", use_cache=False)
    assert res.total.dsp == 0 and res.total.lut > 0 and res.total.ff > 0


def test_cli_reuse_factor_and_target_ii(tmp_path, capsys):
    g = _mlp(3, 0.0)
    g.save(tmp_path / "g.json")
    assert main(["export", str(tmp_path / "g.json"), "--target", "rtl", "-o", str(tmp_path / "a"),
                 "--target-ii", "6"]) == 0
    info = json.loads((tmp_path / "a" / "cosim.json").read_text())
    assert info["ii"] == 4 and all(L.get("reuse") == 4 for L in info["layers"] if "dense" in L["op"])
    assert "[rtl]" not in capsys.readouterr().err  # small models export quietly
    assert main(["export", str(tmp_path / "g.json"), "--target", "rtl", "-o", str(tmp_path / "b"), "-q",
                 "--reuse-factor", "2", "--verbose"]) == 0
    assert json.loads((tmp_path / "b" / "cosim.json").read_text())["ii"] == 2
    assert capsys.readouterr().err.count("[rtl] layer") == len(g.nodes)
    assert main(["export", str(tmp_path / "g.json"), "--target", "rtl", "-o", str(tmp_path / "c"),
                 "--target-ii", "0"]) == 2
    assert main(["export", str(tmp_path / "g.json"), "--target", "rtl", "-o", str(tmp_path / "d"),
                 "--target-ii", "4", "--reuse-factor", "2"]) == 2
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
