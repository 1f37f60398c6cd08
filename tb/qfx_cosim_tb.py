"""cocotb testbench for qfx-generated RTL: AXI4-Stream in/out, one vector per beat, random stalls on both sides.

Driven by ``qfx.sim.cosim``: the JSON file named by ``QFX_COSIM_CONFIG`` lists one or more designs (``duts``), each
with its port prefixes, the packed input words to send and the packed expected output words. Every design gets its
own AXI4-Stream master (input) and slave (output) loop, run concurrently; ``tvalid`` gaps and ``tready`` stalls come
from seeded random patterns. A design that accepts one beat every ``ii`` cycles (the entry's ``ii``, default 1) gets
a proportionally longer cycle limit. Received words are compared bit for bit with the expected words here and
written to the results JSON for the Python side.

Built for 4-state simulators (Icarus, gate-level netlists) as well as Verilator:

* every signal the testbench owns (reset, ``s_axis_tdata``/``tvalid``/``tlast``, ``m_axis_tready``) is driven from
  time 0, before the first clock edge, so the design never sees X or Z on an input;
* the design's outputs are sampled only after reset, and ``m_axis_tdata`` only in a cycle with ``tvalid`` and
  ``tready`` both high (``tdata`` of an invalid beat is allowed to be X: data registers have no reset);
* an output beat whose data holds X or Z bits is recorded as such (its bits as a string, MSB first) and counted as
  a mismatch by the Python side, never turned into a crash; X or Z on a handshake signal (``m_axis_tvalid``,
  ``s_axis_tready``) after reset is counted in ``x_handshake_cycles``.

The loops are written here rather than taken from cocotbext-axi, whose drivers start driving only when created and
turn an X on ``tvalid`` or ``tdata`` into an exception inside the driver task.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

RESET_CYCLES = 3


def cycle_limit(n_vectors: int, latency: int, ii: int = 1) -> int:
    """Clock cycles to wait for all outputs before calling it a hang.

    A design takes one beat every ``ii`` cycles; random stalls add about one cycle per vector on each side, so
    ``2 * ii + 48`` cycles per vector is a wide margin (50 per vector when ``ii`` is 1, as before), plus the latency.
    """
    return (2 * ii + 48) * n_vectors + 100 * latency + 1000


def _bit(handle) -> int | None:
    """A 1-bit signal's value, None when it is X or Z."""
    try:
        return int(handle.value)
    except ValueError:
        return None


def _word(handle) -> str:
    """A data bus as lower-case hex, or, when any bit is X or Z, as ``"bits:"`` + its bits MSB first."""
    v = handle.value
    try:
        return format(int(v), "x")
    except ValueError:
        return "bits:" + str(v).lower()


class _Port:
    """The six AXI4-Stream signals of one design (``tlast`` is driven high when the input port has one)."""

    def __init__(self, dut, s_prefix: str, m_prefix: str) -> None:
        self.s_tdata = getattr(dut, f"{s_prefix}_tdata")
        self.s_tvalid = getattr(dut, f"{s_prefix}_tvalid")
        self.s_tready = getattr(dut, f"{s_prefix}_tready")
        self.s_tlast = getattr(dut, f"{s_prefix}_tlast", None)
        self.m_tdata = getattr(dut, f"{m_prefix}_tdata")
        self.m_tvalid = getattr(dut, f"{m_prefix}_tvalid")
        self.m_tready = getattr(dut, f"{m_prefix}_tready")

    def idle(self) -> None:
        """Defined values on every input of the design (used at time 0, before any clock edge)."""
        self.s_tdata.value = 0
        self.s_tvalid.value = 0
        if self.s_tlast is not None:
            self.s_tlast.value = 1
        self.m_tready.value = 0


async def _run_one(clk, port: _Port, cfg: dict, seed: int, backpressure: bool) -> dict:
    words = [int(w, 16) for w in cfg["inputs"]]
    n = len(words)
    p_gap = cfg.get("valid_gap", 0.3) if backpressure else 0.0
    p_stall = cfg.get("ready_stall", 0.3) if backpressure else 0.0
    rng_v, rng_r = random.Random(seed * 2 + 1), random.Random(seed * 2 + 2)
    limit = cycle_limit(n, cfg["latency"], cfg.get("ii", 1))
    drain = cfg["latency"] + 4  # idle cycles after the last expected output: nothing extra may appear
    got: list[str] = []
    sent = 0           # input beats accepted by the design
    valid = False      # s_axis_tvalid as driven for the cycle that just ended (0 from time 0)
    ready = False      # m_axis_tready as driven for the cycle that just ended (0 from time 0)
    x_handshake = 0
    cycles = after = 0
    edge = RisingEdge(clk)
    t0 = time.perf_counter()
    while True:
        await edge
        cycles += 1
        # the values the design saw at this edge
        was_valid = valid
        if valid:
            r = _bit(port.s_tready)
            if r is None:
                x_handshake += 1
            elif r:
                sent += 1
                valid = False
        mv = _bit(port.m_tvalid)
        if mv is None:
            x_handshake += 1
        elif mv and ready:
            got.append(_word(port.m_tdata))
        if len(got) >= n:
            after += 1
            if after > drain:
                break
        elif cycles >= limit:
            break
        # what the design sees at the next edge
        if not valid:
            if sent < n and not (p_gap and rng_v.random() < p_gap):
                port.s_tdata.value = words[sent]
                port.s_tvalid.value = 1
                valid = True
            elif was_valid:  # the beat was taken and no new one follows yet
                port.s_tvalid.value = 0
        want = len(got) >= n or not (p_stall and rng_r.random() < p_stall)
        if want != ready:
            port.m_tready.value = int(want)
            ready = want
    timed_out = len(got) < n
    port.s_tvalid.value = 0
    expected = [int(w, 16) for w in cfg["expected"]]
    bad = [i for i, (a, b) in enumerate(zip(expected, got)) if b.startswith("bits:") or a != int(b, 16)]
    return {"name": cfg["name"], "sent": sent, "received": len(got), "timed_out": timed_out,
            "mismatched_vectors": len(bad) + abs(len(expected) - len(got)), "first_bad": bad[0] if bad else None,
            "x_handshake_cycles": x_handshake, "cycles": cycles, "got": got, "wall_s": time.perf_counter() - t0}


@cocotb.test()
async def qfx_cosim(dut):
    with open(os.environ["QFX_COSIM_CONFIG"]) as f:
        conf = json.load(f)
    for name in ("cocotb", "cocotb.regression", "cocotb.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ports = [_Port(dut, cfg["s_prefix"], cfg["m_prefix"]) for cfg in conf["duts"]]
    # time 0: reset asserted and every input defined; the clock starts low, so its first rising edge (5 ns) comes
    # after these values are in place
    dut.ap_rst_n.value = 0
    for p in ports:
        p.idle()
    clk = dut.ap_clk
    cocotb.start_soon(Clock(clk, 10, unit="ns").start(start_high=False))
    await ClockCycles(clk, RESET_CYCLES)
    dut.ap_rst_n.value = 1
    await RisingEdge(clk)
    t0 = time.perf_counter()
    tasks = [cocotb.start_soon(_run_one(clk, p, cfg, conf["seed"] + i, conf["backpressure"]))
             for i, (p, cfg) in enumerate(zip(ports, conf["duts"]))]
    results = [await t for t in tasks]
    with open(conf["results"], "w") as f:
        json.dump({"duts": results, "wall_s": time.perf_counter() - t0}, f)
