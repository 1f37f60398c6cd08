"""Tool discovery order and messages, the content-addressed g++ build cache, running binaries, code files."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from qfx.errors import BuildError, MissingToolError, RunError, exit_code
from qfx.sim import build as qbuild
from qfx.sim import toolchain


def _fake_ap(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "ap_fixed.h").write_text("// fake\n")
    (d / "ap_int.h").write_text("// fake\n")
    return d


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("QFX_AP_INCLUDE", raising=False)
    monkeypatch.delenv("XILINX_HLS", raising=False)
    return monkeypatch


def test_ap_include_order(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    explicit, env, xil = _fake_ap(tmp_path / "explicit"), _fake_ap(tmp_path / "env"), _fake_ap(tmp_path / "xil" / "include")
    clean_env.setenv("QFX_AP_INCLUDE", str(env))
    clean_env.setenv("XILINX_HLS", str(tmp_path / "xil"))
    assert toolchain.find_ap_include(explicit) == explicit.resolve()
    assert toolchain.find_ap_include(str(explicit)) == explicit.resolve()
    assert toolchain.find_ap_include() == env.resolve()
    clean_env.delenv("QFX_AP_INCLUDE")
    assert toolchain.find_ap_include() == xil.resolve()
    clean_env.delenv("XILINX_HLS")
    if importlib.util.find_spec("hls4ml") is not None:
        found = toolchain.find_ap_include()
        assert "hls4ml" in str(found) and (found / "ap_fixed.h").is_file()


def test_ap_include_bad_explicit_names_source(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingToolError, match="--ap-include"):
        toolchain.find_ap_include(tmp_path)
    clean_env.setenv("QFX_AP_INCLUDE", str(tmp_path / "nope"))
    with pytest.raises(MissingToolError, match="QFX_AP_INCLUDE"):
        toolchain.find_ap_include()


def test_ap_include_missing_everywhere(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("XILINX_HLS", str(tmp_path / "no_xilinx"))
    real = importlib.util.find_spec
    clean_env.setattr(toolchain.importlib.util, "find_spec", lambda name, *a: None if name == "hls4ml" else real(name, *a))
    with pytest.raises(MissingToolError) as ei:
        toolchain.find_ap_include()
    msg = str(ei.value)
    assert "\n" not in msg
    for word in ("QFX_AP_INCLUDE", "XILINX_HLS", "hls4ml", "pip install"):
        assert word in msg, word
    assert exit_code(ei.value) == 3


def test_find_gxx_honours_cxx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "/definitely/not/a/compiler")
    with pytest.raises(MissingToolError, match="g\\+\\+"):
        toolchain.find_gxx()


# ----------------------------------------------------------------------------------------------- build cache
HELLO = """#include <ap_fixed.h>
#include <cstdio>
#include "extra.h"
int main() { ap_fixed<8, 3, AP_RND, AP_SAT> x = 1.37; printf("%d %d\\n", (int)x.range(7, 0), EXTRA); return 0; }
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("QFX_CACHE_DIR", str(d))
    return d


@pytest.mark.gxx
def test_build_cache_hit_and_invalidation(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "hello.cpp"
    src.write_text(HELLO)
    (tmp_path / "extra.h").write_text("#define EXTRA 5\n")
    exe = qbuild.compile_cxx([src], name="hello")
    assert exe.is_relative_to(cache / "cxx")
    assert qbuild.run_binary(exe).stdout.split() == ["44", "5"]  # 1.37 * 32 = 43.84 -> RND -> 44
    calls: list[object] = []
    real_run = subprocess.run
    monkeypatch.setattr(qbuild.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    t0 = time.perf_counter()
    again = qbuild.compile_cxx([src], name="hello")
    assert again == exe and time.perf_counter() - t0 < 1.0
    assert not calls, "a cache hit must not run the compiler"
    # an included header's text is part of the key
    (tmp_path / "extra.h").write_text("#define EXTRA 6\n")
    exe2 = qbuild.compile_cxx([src], name="hello")
    assert exe2 != exe and qbuild.run_binary(exe2).stdout.split() == ["44", "6"]
    # so are defines and flags
    exe3 = qbuild.compile_cxx([src], name="hello", defines={"UNUSED": "1"})
    exe4 = qbuild.compile_cxx([src], name="hello", flags=["-O0"])
    assert len({exe2, exe3, exe4}) == 3
    assert not list((cache / "cxx").glob("*.tmp")), "no temporary files left behind"


@pytest.mark.gxx
def test_compile_error_is_one_clean_line(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "bad.cpp"
    src.write_text("#include <ap_int.h>\nint main() {\n  return undeclared_thing;\n}\n")
    with pytest.raises(BuildError) as ei:
        qbuild.compile_cxx([src], name="bad")
    msg = str(ei.value)
    assert "\n" not in msg and "bad.cpp:3" in msg and "undeclared_thing" in msg
    log = Path(msg.rsplit("full log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "undeclared_thing" in log.read_text()
    assert exit_code(ei.value) == 2  # the sources are bad, no tool is missing
    with pytest.raises(BuildError, match="not found"):
        qbuild.compile_cxx([tmp_path / "missing.cpp"])


@pytest.mark.gxx
def test_run_binary_errors(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "rc.cpp"
    src.write_text('#include <cstdio>\n#include <cstdlib>\n#include <unistd.h>\n'
                   'int main(int c, char** v) { if (c > 1 && v[1][0] == \'s\') sleep(5);\n'
                   '  fprintf(stderr, "boom here\\n"); return c > 1 ? atoi(v[1]) : 0; }\n')
    exe = qbuild.compile_cxx([src], name="rc")
    assert qbuild.run_binary(exe, ["0"]).returncode == 0
    with pytest.raises(RunError, match=r"exit status 3\): boom here"):
        qbuild.run_binary(exe, ["3"])
    assert qbuild.run_binary(exe, ["3"], check=False).returncode == 3
    with pytest.raises(RunError, match="timed out"):
        qbuild.run_binary(exe, ["s"], timeout=0.5)
    with pytest.raises(RunError, match="cannot run"):
        qbuild.run_binary(tmp_path / "nothing")


def test_code_files_round_trip(tmp_path: Path) -> None:
    a = np.array([[-(2**63), 2**63 - 1, 0], [1, -1, 12345678901234]], dtype=np.int64)
    for name in ("codes.bin", "codes.txt"):
        p = qbuild.write_codes(tmp_path / name, a)
        np.testing.assert_array_equal(qbuild.read_codes(p, a.shape), a)
        np.testing.assert_array_equal(qbuild.read_codes(p), a.reshape(-1))
        with pytest.raises(RunError, match="expected 4 values"):
            qbuild.read_codes(p, (2, 2))
    assert (tmp_path / "codes.bin").stat().st_size == 6 * 8
    assert (tmp_path / "codes.txt").read_text().splitlines()[1] == "1 -1 12345678901234"
    (tmp_path / "junk.txt").write_text("1 2 x\n")
    with pytest.raises(RunError, match="not a list"):
        qbuild.read_codes(tmp_path / "junk.txt")
    with pytest.raises(RunError, match="not written"):
        qbuild.read_codes(tmp_path / "absent.bin")
    with pytest.raises(TypeError):
        qbuild.write_codes(tmp_path / "f.bin", np.array([0.5]))


@pytest.mark.gxx
def test_concurrent_identical_builds_share_one_binary(tmp_path: Path, cache: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src = tmp_path / "same.cpp"
    src.write_text("int main() { return 0; }\n")
    with ThreadPoolExecutor(3) as ex:
        paths = set(ex.map(lambda _: qbuild.compile_cxx([src], name="same"), range(3)))
    assert len(paths) == 1 and qbuild.run_binary(paths.pop()).returncode == 0
    assert shutil.which("g++") is not None
