"""cocotb testbench for qfx-generated RTL: AXI4-Stream ports in/out, random stalls on every port.

Driven by ``qfx.sim.cosim``: the JSON file named by ``QFX_COSIM_CONFIG`` lists one or more designs (``duts``), each
with its input ports and output ports (``in_ports``/``out_ports``: ``prefix``, ``width`` bits per beat, ``beats`` per
vector, ``words`` = the packed beats to send or expect, in order). Every port of every design gets its own seeded
random pattern (``tvalid`` gaps on inputs, ``tready`` stalls on outputs), so a design that joins several inputs or
forks to several outputs sees them skewed. ``tlast``, where a port has one, marks the last beat of each vector:
driven so on inputs, checked on outputs (``tlast_errors``). A design that accepts one beat every ``ii`` cycles (the entry's ``ii``, default 1) gets
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


class _InPort:
    """One AXI4-Stream slave port of the design (the testbench drives it): ``tlast``, when the port has one, is 1
    exactly on the last beat of each vector."""

    def __init__(self, dut, cfg: dict, rng: random.Random, p_gap: float) -> None:
        pre = cfg["prefix"]
        self.tdata = getattr(dut, f"{pre}_tdata")
        self.tvalid = getattr(dut, f"{pre}_tvalid")
        self.tready = getattr(dut, f"{pre}_tready")
        self.tlast = getattr(dut, f"{pre}_tlast", None)
        self.words = [int(w, 16) for w in cfg["words"]]
        self.beats = int(cfg.get("beats", 1))
        self.rng, self.p_gap = rng, p_gap
        self.sent = 0          # beats accepted by the design
        self.valid = False     # tvalid as driven for the cycle that just ended (0 from time 0)

    def idle(self) -> None:
        """Defined values on every input of the design (used at time 0, before any clock edge)."""
        self.tdata.value = 0
        self.tvalid.value = 0
        if self.tlast is not None:
            self.tlast.value = 1 if self.beats == 1 else 0

    def sample(self) -> int:
        """After an edge: count the beat the design took; returns 1 when tready was X/Z during a valid beat."""
        if not self.valid:
            return 0
        r = _bit(self.tready)
        if r is None:
            return 1
        if r:
            self.sent += 1
            self.valid = False
        return 0

    def drive(self, was_valid: bool) -> None:
        """What the design sees at the next edge: the next beat (unless a random gap) or tvalid low."""
        if self.valid:
            return
        if self.sent < len(self.words) and not (self.p_gap and self.rng.random() < self.p_gap):
            self.tdata.value = self.words[self.sent]
            if self.tlast is not None and self.beats > 1:
                self.tlast.value = int(self.sent % self.beats == self.beats - 1)
            self.tvalid.value = 1
            self.valid = True
        elif was_valid:  # the beat was taken and no new one follows yet
            self.tvalid.value = 0


class _OutPort:
    """One AXI4-Stream master port of the design (the testbench takes its beats, with random ``tready`` stalls);
    ``tlast``, when the port has one, must be 1 exactly on the last beat of each vector."""

    def __init__(self, dut, cfg: dict, rng: random.Random, p_stall: float) -> None:
        pre = cfg["prefix"]
        self.tdata = getattr(dut, f"{pre}_tdata")
        self.tvalid = getattr(dut, f"{pre}_tvalid")
        self.tready = getattr(dut, f"{pre}_tready")
        self.tlast = getattr(dut, f"{pre}_tlast", None)
        self.n = len(cfg["words"])
        self.beats = int(cfg.get("beats", 1))
        self.rng, self.p_stall = rng, p_stall
        self.got: list[str] = []
        self.tlast_errors = 0
        self.ready = False     # tready as driven for the cycle that just ended (0 from time 0)

    def idle(self) -> None:
        self.tready.value = 0

    def sample(self) -> int:
        mv = _bit(self.tvalid)
        if mv is None:
            return 1
        if mv and self.ready:
            if self.tlast is not None:
                want = int(len(self.got) % self.beats == self.beats - 1)
                if _bit(self.tlast) != want:
                    self.tlast_errors += 1
            self.got.append(_word(self.tdata))
        return 0

    def drive(self) -> None:
        want = len(self.got) >= self.n or not (self.p_stall and self.rng.random() < self.p_stall)
        if want != self.ready:
            self.tready.value = int(want)
            self.ready = want


def _port_configs(cfg: dict) -> tuple[list[dict], list[dict]]:
    """(input ports, output ports) of a dut entry; the one-port form (``s_prefix``/``inputs``/``expected``) is
    read as one port each side with one beat per vector."""
    if "in_ports" in cfg:
        return cfg["in_ports"], cfg["out_ports"]
    return ([{"prefix": cfg["s_prefix"], "beats": 1, "words": cfg["inputs"]}],
            [{"prefix": cfg["m_prefix"], "beats": 1, "words": cfg["expected"]}])


class _Dut:
    """Every port of one design, each with its own seeded random pattern."""

    def __init__(self, dut, cfg: dict, seed: int, backpressure: bool) -> None:
        ins, outs = _port_configs(cfg)
        p_gap = cfg.get("valid_gap", 0.3) if backpressure else 0.0
        p_stall = cfg.get("ready_stall", 0.3) if backpressure else 0.0
        # port 0 keeps the one-port seeds (seed * 2 + 1, seed * 2 + 2); further ports get their own streams
        self.ins = [_InPort(dut, c, random.Random(seed * 2 + 1 + 1000003 * k), p_gap) for k, c in enumerate(ins)]
        self.outs = [_OutPort(dut, c, random.Random(seed * 2 + 2 + 1000003 * k), p_stall) for k, c in enumerate(outs)]

    def idle(self) -> None:
        for p in self.ins:
            p.idle()
        for q in self.outs:
            q.idle()


async def _run_one(clk, d: _Dut, cfg: dict) -> dict:
    vectors = max(len(q.words) // q.beats for q in d.ins)
    beats = max([q.beats for q in d.ins] + [q.beats for q in d.outs])
    limit = cycle_limit(vectors * beats, cfg["latency"], cfg.get("ii", 1))
    drain = cfg["latency"] + 4  # idle cycles after the last expected output: nothing extra may appear
    x_handshake = 0
    cycles = after = 0
    edge = RisingEdge(clk)
    t0 = time.perf_counter()
    while True:
        await edge
        cycles += 1
        # the values the design saw at this edge
        was = [p.valid for p in d.ins]
        for p in d.ins:
            x_handshake += p.sample()
        for q in d.outs:
            x_handshake += q.sample()
        if all(len(q.got) >= q.n for q in d.outs):
            after += 1
            if after > drain:
                break
        elif cycles >= limit:
            break
        # what the design sees at the next edge
        for p, w in zip(d.ins, was):
            p.drive(w)
        for q in d.outs:
            q.drive()
    for p in d.ins:
        p.tvalid.value = 0
    res_ports = []
    bad_vectors: set[int] = set()
    missing = 0
    for q, c in zip(d.outs, _port_configs(cfg)[1]):
        expected = [int(w, 16) for w in c["words"]]
        bad = [i for i, (a, b) in enumerate(zip(expected, q.got)) if b.startswith("bits:") or a != int(b, 16)]
        bad_vectors |= {i // q.beats for i in bad}
        missing = max(missing, -(-abs(len(expected) - len(q.got)) // q.beats))
        res_ports.append({"prefix": c["prefix"], "received": len(q.got), "got": q.got, "tlast_errors": q.tlast_errors})
    first = d.outs[0]
    timed_out = any(len(q.got) < q.n for q in d.outs)
    return {"name": cfg["name"], "sent": min(p.sent // p.beats for p in d.ins),
            "received": min(len(q.got) // q.beats for q in d.outs), "timed_out": timed_out,
            "mismatched_vectors": len(bad_vectors) + missing, "first_bad": min(bad_vectors) if bad_vectors else None,
            "x_handshake_cycles": x_handshake, "cycles": cycles, "got": first.got,
            "tlast_errors": sum(q.tlast_errors for q in d.outs), "out_ports": res_ports,
            "wall_s": time.perf_counter() - t0}


@cocotb.test()
async def qfx_cosim(dut):
    with open(os.environ["QFX_COSIM_CONFIG"]) as f:
        conf = json.load(f)
    for name in ("cocotb", "cocotb.regression", "cocotb.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ports = [_Dut(dut, cfg, conf["seed"] + i, conf["backpressure"]) for i, cfg in enumerate(conf["duts"])]
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
    tasks = [cocotb.start_soon(_run_one(clk, p, cfg)) for p, cfg in zip(ports, conf["duts"])]
    results = [await t for t in tasks]
    with open(conf["results"], "w") as f:
        json.dump({"duts": results, "wall_s": time.perf_counter() - t0}, f)
