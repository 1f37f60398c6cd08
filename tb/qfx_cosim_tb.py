"""cocotb testbench for qfx-generated RTL: AXI4-Stream in/out, one vector per beat, random stalls on both sides.

Driven by ``qfx.sim.cosim``: the JSON file named by ``QFX_COSIM_CONFIG`` lists one or more designs (``duts``), each
with its port prefixes, the packed input words to send and the packed expected output words. Every design is driven
concurrently by a cocotbext-axi ``AxiStreamSource`` / ``AxiStreamSink`` (byte size = whole tdata word, so one frame
is one beat); ``tvalid`` gaps and ``tready`` stalls come from seeded pause generators. A design that accepts one
beat every ``ii`` cycles (the entry's ``ii``, default 1) gets a proportionally longer timeout. Received words are
compared bit for bit with the expected words here and written to the results JSON for the Python side.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource


def _pauses(rng: random.Random, prob: float):
    """Endless pause pattern: bursts of stalls with probability ``prob`` per cycle."""
    while True:
        yield rng.random() < prob


def cycle_limit(n_vectors: int, latency: int, ii: int = 1) -> int:
    """Clock cycles to wait for all outputs before calling it a hang.

    A design takes one beat every ``ii`` cycles; random stalls add about one cycle per vector on each side, so
    ``2 * ii + 48`` cycles per vector is a wide margin (50 per vector when ``ii`` is 1, as before), plus the latency.
    """
    return (2 * ii + 48) * n_vectors + 100 * latency + 1000


async def _run_one(dut, clk, cfg: dict, seed: int, backpressure: bool) -> dict:
    tw_in, tw_out = cfg["in_tw"], cfg["out_tw"]
    src = AxiStreamSource(AxiStreamBus.from_prefix(dut, cfg["s_prefix"]), clk, byte_size=tw_in)
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, cfg["m_prefix"]), clk, byte_size=tw_out)
    for drv in (src, sink):
        drv.log.setLevel(logging.WARNING)
    if backpressure:
        src.set_pause_generator(_pauses(random.Random(seed * 2 + 1), cfg.get("valid_gap", 0.3)))
        sink.set_pause_generator(_pauses(random.Random(seed * 2 + 2), cfg.get("ready_stall", 0.3)))
    words = [int(w, 16) for w in cfg["inputs"]]
    for w in words:
        src.send_nowait(AxiStreamFrame([w]))
    got = []
    limit = cycle_limit(len(words), cfg["latency"], cfg.get("ii", 1))
    t0 = time.perf_counter()

    async def collect():
        for _ in words:
            fr = await sink.recv()
            got.extend(int(v) for v in fr.tdata)

    try:
        await with_timeout(collect(), limit * 10, "ns")
        timed_out = False
    except Exception:  # cocotb.triggers.SimTimeoutError; a hang is reported, not raised
        timed_out = True
    # a few idle cycles more: nothing extra may appear (no duplicates)
    if backpressure:
        sink.clear_pause_generator()
        sink.pause = False
    await ClockCycles(clk, cfg["latency"] + 4)
    while not sink.empty():
        fr = sink.recv_nowait()
        got.extend(int(v) for v in fr.tdata)
    expected = [int(w, 16) for w in cfg["expected"]]
    bad = [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]
    return {"name": cfg["name"], "sent": len(words), "received": len(got), "timed_out": timed_out,
            "mismatched_vectors": len(bad) + abs(len(expected) - len(got)), "first_bad": bad[0] if bad else None,
            "got": [format(v, "x") for v in got], "wall_s": time.perf_counter() - t0}


@cocotb.test()
async def qfx_cosim(dut):
    with open(os.environ["QFX_COSIM_CONFIG"]) as f:
        conf = json.load(f)
    for name in ("cocotb", "cocotb.regression", "cocotb.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    clk = dut.ap_clk
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    dut.ap_rst_n.value = 0
    await ClockCycles(clk, 3)
    dut.ap_rst_n.value = 1
    await RisingEdge(clk)
    t0 = time.perf_counter()
    tasks = [cocotb.start_soon(_run_one(dut, clk, cfg, conf["seed"] + i, conf["backpressure"]))
             for i, cfg in enumerate(conf["duts"])]
    results = [await t for t in tasks]
    with open(conf["results"], "w") as f:
        json.dump({"duts": results, "wall_s": time.perf_counter() - t0}, f)
