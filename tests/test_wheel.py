"""The built wheel carries the data folders (templates/, hls/, tb/) and ``qfx.resources`` finds them when installed.

The wheel is built from this checkout with the installed hatchling (``--no-isolation``: no network), installed with
``pip --no-deps`` into a fresh bare venv, and checked by that venv's interpreter in isolated mode (``-I``: no
PYTHONPATH, no user site, no checkout on sys.path). The fresh venv has no numpy, so the check imports
``qfx.resources`` (which needs only ``qfx.errors``) through a package stub instead of running ``qfx/__init__``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys, sysconfig, types
from pathlib import Path
site = Path(sysconfig.get_paths()["purelib"]).resolve()
assert all(not p or Path(p).resolve() != Path(sys.argv[1]) for p in sys.path), "checkout leaked onto sys.path"
pkg = types.ModuleType("qfx")
pkg.__path__ = [str(site / "qfx")]
sys.modules["qfx"] = pkg  # skip qfx/__init__ (it imports numpy, absent here)
from qfx.resources import data_dir, DATA_DIRS
import qfx.resources
out = {"resources": qfx.resources.__file__, "site": str(site)}
for name in DATA_DIRS:
    d = data_dir(name)
    out[name] = {"path": str(d), "files": sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())}
try:
    data_dir("nope")
except ValueError as e:
    out["bad"] = str(e)
print(json.dumps(out))
"""


def _pip_supports_python_option() -> bool:
    out = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()
    try:
        major, minor = (int(v) for v in out[1].split(".")[:2])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (22, 3)


def test_wheel_installs_data_folders(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    try:  # the dev extra installs hatchling: build offline with it; otherwise let pip fetch it (isolated build)
        import hatchling  # noqa: F401

        offline = ["--no-build-isolation", "--no-index"]
    except ImportError:  # pragma: no cover
        offline = []
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-w", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheels = list(dist.glob("qfx-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    for must in ("qfx/__init__.py", "qfx/py.typed", "qfx/resources.py", "qfx/_data/templates/README.md",
                 "qfx/_data/hls/README.md", "qfx/_data/tb/README.md"):
        assert must in names, must
    assert not any(n.startswith(("tests/", "qfx/_data/tests")) or "__pycache__" in n for n in names)

    env_dir = tmp_path / "venv"
    if _pip_supports_python_option():
        venv.EnvBuilder(with_pip=False).create(env_dir)
    else:  # pragma: no cover - old pip: give the venv its own
        venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = ([sys.executable, "-m", "pip", "--python", str(py)] if _pip_supports_python_option()
           else [str(py), "-m", "pip"])
    inst = subprocess.run([*pip, "install", "--no-deps", "--no-index", str(wheels[0])],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stdout[-2000:] + inst.stderr[-2000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QFX_"))}
    res = subprocess.run([str(py), "-I", "-c", CHECK, str(REPO)], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    site = Path(info["site"])
    assert Path(info["resources"]).resolve().is_relative_to(site)
    for name in ("templates", "hls", "tb"):
        d = Path(info[name]["path"]).resolve()
        assert d == site / "qfx" / "_data" / name, d
        assert "README.md" in info[name]["files"]
    # every file of the checkout's folders made it into the wheel
    for name in ("templates", "hls", "tb"):
        src = {str(p.relative_to(REPO / name)) for p in (REPO / name).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
        assert src <= set(info[name]["files"]), sorted(src - set(info[name]["files"]))[:5]
    assert "unknown data folder" in info["bad"]
    assert (env_dir / "bin" / "qfx").exists() or os.name == "nt"  # console script entry point
