"""cocotb testbench for the requantization module: apply each packed input word, read the packed output word.

Purely combinational design (``din`` -> ``dout``); the Python side (tests/test_rtl_cast.py) builds the words and the
expected results from ``qfx.fixed.kernels.requantize``. Config and results travel through JSON files.
"""
from __future__ import annotations

import json
import os

import cocotb
from cocotb.triggers import Timer


@cocotb.test()
async def qfx_cast(dut):
    with open(os.environ["QFX_CAST_CONFIG"]) as f:
        conf = json.load(f)
    out = []
    for w in conf["inputs"]:
        dut.din.value = int(w, 16)
        await Timer(1, unit="ns")
        out.append(format(int(dut.dout.value), "x"))
    with open(conf["results"], "w") as f:
        json.dump({"outputs": out}, f)
