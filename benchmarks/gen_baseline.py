"""Write the generated HLS C++, SystemVerilog and ONNX of a fixed set of graphs, to diff two qfx trees.

    PYTHONPATH=TREE python benchmarks/gen_baseline.py OUTDIR

Used to show that a refactor leaves generated code byte-identical (diff -r OUT_BEFORE OUT_AFTER).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def graphs():
    from qfx.ir.random_graph import random_graph

    for seed in range(24):
        yield random_graph(seed, "mlp" if seed % 3 == 0 else ("cnn" if seed % 3 == 1 else "any"), max_width=8)


def main(out: Path) -> None:
    from qfx.backends import hls, rtl
    from qfx.ir.passes import run_flow
    from qfx.onnx.export import to_onnx_model

    out.mkdir(parents=True, exist_ok=True)
    for g in graphs():
        g = run_flow(g).graph
        d = out / g.name
        d.mkdir()
        hls.write_project(g, _empty(d / "hls"))
        hls.write_project(g, _empty(d / "hls_stream"), io="stream")
        rtl.write_project(g, d / "rtl")
        m = to_onnx_model(g)
        (d / "model.onnx.txt").write_text(str(m.graph))
    print(f"wrote {len(list(out.iterdir()))} designs to {out}")


def _empty(p: Path) -> Path:
    p.mkdir()
    return p


if __name__ == "__main__":
    np.random.seed(0)
    main(Path(sys.argv[1]))
