"""HLS backend without a compiler: project layout, headers, options, exact literals, K-hot terms, identifiers."""
from __future__ import annotations

import json
import re
from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qfx import __version__
from qfx.backends.hls import exact_literal, khot_term_format, write_project
from qfx.backends.naming import (CXX_KEYWORDS, SV_KEYWORDS, comment_text, is_identifier, sanitize_identifiers)
from qfx.errors import BadInputError
from qfx.fixed.csd import csd_digits, khot_project
from qfx.fixed.format import FxFormat
from qfx.ir.graph import Graph
from qfx.ir.random_graph import random_graph

HOSTILE = ["in", "exp", "got", 'x"; system("rm -rf /"); //', "class", "../../etc/passwd", "a b", "int", "__x", "always", "ap_fixed",
           "1abc", "\u00e9t\u00e9", "??/", "end\\", "X", "x", "t_t", "main", "*/ #define x", "module", "", "_"]


def rename(g: Graph, names: list[str]) -> Graph:
    """``g`` with every tensor and node renamed from ``names`` (cycled, made unique by a counter)."""
    tmap = {t: f"{names[i % len(names)]}" + ("" if i < len(names) else f"#{i}") for i, t in enumerate(g.tensors)}
    nmap = {n.name: f"{names[(i + 3) % len(names)]}" + ("" if i + 3 < len(names) else f"#{i}") or "n"
            for i, n in enumerate(g.nodes)}
    nmap = {k: (v if v else "node") for k, v in nmap.items()}
    tmap = {k: (v if v else "tensor") for k, v in tmap.items()}
    tensors = {tmap[t]: s.__class__(tmap[t], s.shape, s.fmt) for t, s in g.tensors.items()}
    nodes = [n.replace(name=nmap[n.name], inputs=tuple(tmap[i] for i in n.inputs), output=tmap[n.output])
             for n in g.nodes]
    return Graph('my "model"\\ ??/', tuple(tmap[i] for i in g.inputs), tuple(tmap[o] for o in g.outputs), tensors,
                 tuple(nodes), g.meta).validate()


# ------------------------------------------------------------------------------------------------ naming
@given(st.lists(st.text(max_size=30), max_size=30), st.lists(st.sampled_from(sorted(CXX_KEYWORDS)), max_size=5))
@settings(max_examples=200, deadline=None)
def test_sanitize_identifiers_valid_unique(names, reserved):
    ids = sanitize_identifiers(names, reserved)
    assert set(ids) == set(names)
    vals = list(ids.values())
    assert len({v.lower() for v in vals}) == len(vals)
    for v in vals:
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v)
        assert v not in CXX_KEYWORDS and v not in SV_KEYWORDS and v not in reserved
        assert "__" not in v and not v.endswith("_")
        assert is_identifier(v, reserved)
    assert sanitize_identifiers(names, reserved) == ids  # deterministic


def test_sanitize_hostile_names():
    ids = sanitize_identifiers(HOSTILE)
    assert ids["class"] != "class" and ids["int"] != "int" and ids["always"] != "always"
    assert ids["ap_fixed"] != "ap_fixed" and ids["main"] != "main"
    assert ids["x"].lower() != ids["X"].lower()
    assert ids["1abc"][0].isalpha()


@given(st.text(max_size=200))
def test_comment_text_is_inert(s):
    c = comment_text(s)
    assert "\n" not in c and "\\" not in c and "?" not in c and "*" not in c and "/" not in c and '"' not in c


# ------------------------------------------------------------------------------------------------ literals
@given(st.integers(2, 64), st.integers(-70, 70), st.data())
@settings(max_examples=300, deadline=None)
def test_exact_literal_value(w, i, data):
    f = FxFormat(w, i)
    code = data.draw(st.integers(f.min_code, f.max_code))
    lit = exact_literal(code, f)
    want = Fraction(code) * Fraction(2) ** (-f.frac_bits)
    getcontext().prec = 400
    if lit.startswith("("):  # wide code: two exact parts, each a code of the format (the high one may be min_code)
        parts = re.findall(r"\((-?[0-9.]+)\)", lit)
        got = sum(Fraction(Decimal(p)) for p in parts)
        part_codes = [Fraction(Decimal(p)) * Fraction(2) ** f.frac_bits for p in parts]
        assert len(parts) == 2 and all(c.denominator == 1 and f.min_code <= c <= f.max_code for c in part_codes)
        assert all(abs(c) < 2**53 or c % 2**32 == 0 for c in part_codes)  # each part is an exact double
        # parts are wrapped in the format's width/binary point with TRN/WRAP (no overflow step on a min code)
        assert lit.count(f.with_modes("TRN", "WRAP").ap_type() + "(") == 2
    else:
        got = Fraction(Decimal(lit))
        assert float(lit) == float(want)  # the compiler's double is exactly the value (< 2**53 significant)
    assert got == want


def test_exact_literal_wide_min_code_parts():
    """Hypothesis's find: the high part of -2**63 + 2**32 - 1 in a 64-bit format is min_code itself (-2**63)."""
    f = FxFormat(64, 10, overflow="SAT_SYM")
    code = -(1 << 63) + (1 << 32) - 1
    lit = exact_literal(code, f)
    t = f.with_modes("TRN", "WRAP").ap_type()
    parts = [Fraction(Decimal(p)) * 2**54 for p in re.findall(r"\((-?[0-9.]+)\)", lit)]
    assert parts == [-(1 << 63), (1 << 32) - 1] and lit.count(t + "(") == 2 and "AP_SAT_SYM" not in lit


@pytest.mark.gxx
def test_exact_literal_compiles_to_the_code_in_every_overflow_mode(tmp_path):
    """g++ + ap_types: every literal (wide ones split in two parts) converted into the format's TRN/WRAP type (what
    const_typedef declares) holds exactly its code, also for AP_SAT_SYM formats at min_code."""
    from qfx.sim.build import compile_cxx, run_binary

    cases = []
    for ovf in ("WRAP", "SAT", "SAT_SYM"):
        for w, i in ((64, 10), (64, -3), (60, 70), (54, 1), (12, 3)):
            f = FxFormat(w, i, overflow=ovf)
            for code in (f.min_code, f.min_code + 1, f.min_code + (1 << 32) - 1, f.min_code + (1 << 40) + 5,
                         -1, 0, 1, f.max_code, f.max_code - (1 << 33)):
                if f.min_code <= code <= f.max_code:
                    cases.append((f, code))
    lines = []
    for k, (f, code) in enumerate(cases):
        t = f.with_modes("TRN", "WRAP").ap_type()
        lines.append(f"    {{ {t} v = {exact_literal(code, f)}; ap_int<{f.width}> r = v.range({f.width - 1}, 0); "
                     f"std::printf(\"%lld\\n\", (long long)r.to_int64()); }}")
    src = tmp_path / "lit.cpp"
    src.write_text("#include <cstdio>\n#include <ap_fixed.h>\nint main() {\n" + "\n".join(lines) + "\n}\n")
    out = run_binary(compile_cxx([src], name="exact_literal", flags=["-Wno-unused-variable"])).stdout.split()
    assert [int(v) for v in out] == [c for _, c in cases]


# ------------------------------------------------------------------------------------------------ K-hot term type
@given(st.integers(2, 10), st.integers(-4, 12), st.booleans(), st.integers(2, 8), st.integers(-4, 10), st.data())
@settings(max_examples=300, deadline=None)
def test_khot_term_format_holds_every_partial_sum(wx, ix, sx, ww, iw, data):
    fx, fw = FxFormat(wx, ix, sx), FxFormat(ww, iw)
    codes = np.array(data.draw(st.lists(st.integers(fw.min_code, fw.max_code), min_size=1, max_size=6)))
    codes = khot_project(codes, data.draw(st.integers(1, 3)), fw.min_code, fw.max_code)
    tf = khot_term_format(fx, fw, codes)
    assert tf.signed and tf.frac_bits >= fx.frac_bits
    for x in (fx.min_code, fx.max_code, 1, -1 if sx else 0):
        xt = x << (tf.frac_bits - fx.frac_bits)  # x cast into the term type
        assert tf.min_code <= xt <= tf.max_code
        for c in codes.tolist():
            partial = 0
            for sign, s in csd_digits(c):
                e = s - fw.frac_bits
                term = xt << e if e >= 0 else xt >> -e
                assert (term << max(0, -e)) == (xt << max(0, e)) or e >= 0  # right shift exact
                partial += sign * term
                assert tf.min_code <= partial <= tf.max_code
            # t == x * w exactly, in units of the term type
            two = Fraction(2)
            assert partial * two ** -tf.frac_bits == x * two ** -fx.frac_bits * c * two ** -fw.frac_bits


# ------------------------------------------------------------------------------------------------ project layout
def test_project_layout_and_headers(tmp_path):
    g = random_graph(3, "mlp", khot_prob=0.5)
    write_project(g, tmp_path, part="xc7z020clg400-1", clock_ns=4.0)
    top = "random_mlp_3"
    for rel in (f"firmware/{top}.h", f"firmware/{top}.cpp", "firmware/parameters.h", "firmware/weights.h",
                "firmware/qfx_dense.h", f"tb/tb_{top}.cpp", "build_prj.tcl", "model.json", "README.md",
                "tb/tb_input_codes.bin", "tb/tb_expected_codes.bin"):
        assert (tmp_path / rel).is_file(), rel
    for rel in (f"firmware/{top}.h", f"firmware/{top}.cpp", "firmware/parameters.h", "firmware/weights.h",
                f"tb/tb_{top}.cpp", "build_prj.tcl", "README.md"):
        head = (tmp_path / rel).read_text().splitlines()[0]
        assert f"qfx {__version__}" in head and "random_mlp_3" in head, rel
    tcl = (tmp_path / "build_prj.tcl").read_text()
    for cmd in ("open_project", f"set_top {top}", "add_files", "open_solution", "set_part xc7z020clg400-1",
                "create_clock -period 4", "csim_design", "csynth_design", "cosim_design",
                "export_design -format ip_catalog"):
        assert cmd in tcl, cmd
    saved = Graph.load(tmp_path / "model.json")
    assert saved.meta["exported_by"] == f"qfx {__version__} HLS backend"
    assert saved.replace(meta=g.meta).to_json() == g.to_json()
    for h in (tmp_path / "firmware").glob("qfx_*.h"):
        first = h.read_text().splitlines()[0]
        assert f"qfx {__version__}" in first and "random_mlp_3" in first, h.name
    params = (tmp_path / "firmware/parameters.h").read_text()
    for t, spec in g.tensors.items():
        assert re.search(rf"typedef {re.escape(spec.fmt.ap_type())} {t}_t;", params), t
    for n in g.nodes:
        if n.acc_fmt is not None:
            assert f"typedef {n.acc_fmt.ap_type()} {n.name}_acc_t;" in params


def _const_array(weights_h: str, name: str) -> list[int]:
    m = re.search(rf"static const [\w ]+ {re.escape(name)}\[(\d+)\] = \{{\n(.*?)\n\}};", weights_h, re.S)
    assert m, name
    vals = [int(x.strip().rstrip("L")) for x in m.group(2).replace("\n", " ").split(",") if x.strip()]
    assert len(vals) == int(m.group(1))
    return vals


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_khot_layers_are_shift_tables(tmp_path, kind):
    """A K-hot layer is a call of the shift-add kernel over a table that decodes to exactly its weight codes."""
    g = random_graph(7 if kind == "mlp" else 2, kind, khot_prob=1.0)
    write_project(g, tmp_path)
    fw = tmp_path / "firmware"
    src, weights = (fw / f"{g.name}.cpp").read_text(), (fw / "weights.h").read_text()
    params = (fw / "parameters.h").read_text()
    khot = [n for n in g.nodes if n.attr("khot")]
    assert khot and (fw / "qfx_khot.h").is_file()
    kinds = set()
    for n in khot:
        kinds.add(n.op.value)
        assert re.search(rf"qfx::khot_{n.op.value}<[^;]*>\(\w+, \w+, {n.name}_w\b", src), n.name
        codes = n.consts["weight"].codes.reshape(-1).tolist()
        tab = _const_array(weights, f"{n.name}_w")
        k = int(re.search(rf"struct {n.name}_config \{{[^}}]*k_terms = (\d+);", params).group(1))
        assert len(tab) == len(codes) * k
        decoded = [sum((1 if v > 0 else -1) << (abs(v) - 1) for v in tab[i * k:(i + 1) * k] if v)
                   for i in range(len(codes))]
        assert decoded == codes, n.name
        assert f"w_frac = {n.consts['weight'].fmt.frac_bits};" in params
    assert ("conv2d" in kinds) == (fw / "qfx_khot_conv2d.h").is_file() == (kind == "cnn")


def test_khot_kernels_have_no_multiplier():
    """Outside array sizes and indices (constant after unrolling), the K-hot kernels only shift and add."""
    from qfx.resources import data_dir

    for h in ("qfx_khot.h", "qfx_khot_conv2d.h"):
        text = (data_dir("hls") / h).read_text()
        code = re.sub(r"//.*", "", text)
        while re.search(r"\[[^\[\]]*\]", code):
            code = re.sub(r"\[[^\[\]]*\]", "", code)
        assert "*" not in code, h
    assert "q << e" in (data_dir("hls") / "qfx_khot.h").read_text()


@pytest.mark.parametrize("kw", [dict(io="axi"), dict(top_name="class"), dict(top_name="a b"),
                                dict(reuse_factor={"nope": 2}), dict(reuse_factor=0), dict(clock_ns=-1),
                                dict(part="xc7 z; rm")])
def test_bad_options(tmp_path, kw):
    with pytest.raises(BadInputError):
        write_project(random_graph(1, "mlp"), tmp_path, **kw)
    assert not any(tmp_path.iterdir())


def test_refuses_non_empty_folder_creates_missing_one(tmp_path):
    (tmp_path / "x").write_text("keep")
    with pytest.raises(BadInputError):
        write_project(random_graph(1, "mlp"), tmp_path)
    assert (tmp_path / "x").read_text() == "keep"
    with pytest.raises(BadInputError):
        write_project(random_graph(1, "mlp"), tmp_path / "x")  # a file in the way
    write_project(random_graph(1, "mlp"), tmp_path / "missing" / "prj")
    assert (tmp_path / "missing" / "prj" / "model.json").is_file()


def test_hostile_names_are_sanitized(tmp_path):
    g = rename(random_graph(5, "cnn", khot_prob=0.5), HOSTILE)
    write_project(g, tmp_path)
    files = [p for p in (tmp_path / "firmware").glob("*") if not p.name.startswith("qfx_")]
    text = "\n".join(p.read_text() for p in files) + (tmp_path / "build_prj.tcl").read_text()
    assert "\\" not in text and "??" not in text  # no line continuation or trigraph, even inside comments
    code = "\n".join(re.sub(r"//.*", "", ln) for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "rm -rf" not in code and "system(" not in code and "../" not in code
    for line in code.splitlines():
        assert '"' not in line or "hls::stream" in line or "-cflags" in line, line
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["name"] == g.name  # the IR keeps the user's names; only code uses identifiers
