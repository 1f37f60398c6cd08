"""SystemVerilog backend: a fully pipelined, multiplier-free AXI4-Stream design from a qfx IR graph.

Layout lives in ``templates/rtl/*.j2``; this module decides what goes in them: one combinational module per layer
(``qfx.backends.rtl_design``), one shared requantization module, and a top level that places a register stage after
every computing layer, balances residual branches with delay registers, and runs a valid pipeline whose registers
all advance on ``ce = !m_axis_tvalid || m_axis_tready`` (nothing lost or duplicated under back-pressure).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jinja2

from qfx.backends.adder_graph import CSE_BLOCK
from qfx.backends.axis import pad8
from qfx.backends.naming import sanitize_one
from qfx.backends.rtl_design import (ADDER_MODES, CONV_STYLES, LayerDesign, design_conv_pixel, design_layer,
                                     layer_ports)
from qfx.backends.rtl_folded import design_folded_dense, reuse_map
from qfx.backends.templating import template_env as _template_env
from qfx.errors import BadInputError
from qfx.ir.graph import Graph, Node, op_def
from qfx.ops import Categories

__all__ = ["write_project", "RtlProject", "build_project", "render_requant", "template_env", "pad8"]


def _version() -> str:
    try:
        from qfx import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def template_env() -> jinja2.Environment:
    return _template_env("rtl")


def render_requant(name: str, header: str) -> str:
    return template_env().get_template("requant.sv.j2").render(name=name, header=header)


@dataclass
class RtlProject:
    """Rendered design: file name -> text, plus the interface facts the testbench and README need."""

    top: str
    files: dict[str, str]
    info: dict[str, Any]
    #: products of two variables (``mul``): the only ``*`` in the design, where synthesis may use DSP blocks
    multipliers: int = 0


def _folded(graph: Graph, conv_style: str) -> dict[str, int]:
    """Conv2d nodes folded over output pixels -> their pixel count (a 1x1 output gains nothing from folding)."""
    if conv_style != "pixel":
        return {}
    res = {}
    for n in graph.nodes:
        if op_def(n.op).is_(Categories.CONV):
            shape = graph.tensor(n.output).shape
            if shape[1] * shape[2] > 1:
                res[n.name] = shape[1] * shape[2]
    return res


def _fusions(graph: Graph, folded: dict[str, int]) -> dict[str, tuple[Node, ...]]:
    """Per folded conv: the chain of same-shape ``Categories.FUSABLE`` nodes after it (at most one residual
    ``Categories.BINARY`` add, whose other operand the kernel reads pixel by pixel), each the sole reader of its
    input."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    made_by = {nd.output: i for i, nd in enumerate(graph.nodes)}
    res = {}
    for pos, n in enumerate(graph.nodes):
        if n.name not in folded:
            continue
        chain, t = [], n.output
        while t not in graph.outputs and len(readers.get(t, [])) == 1:
            m = readers[t][0]
            if graph.tensor(m.output).shape != graph.tensor(t).shape:
                break
            md = op_def(m.op)
            residual = (md.is_(Categories.BINARY) and len(m.inputs) == 2 and m.inputs[0] != m.inputs[1]
                        and not any(op_def(c.op).is_(Categories.BINARY) for c in chain)
                        and all(graph.tensor(u).shape == graph.tensor(t).shape for u in m.inputs)
                        # the other operand must exist before this layer is placed (a graph input or made earlier)
                        and all(made_by.get(u, -1) < pos for u in m.inputs if u != t))
            if not residual and (not md.is_(Categories.FUSABLE) or m.inputs != (t,)):
                break
            chain.append(m)
            t = m.output
        res[n.name] = tuple(chain)
    return res


def build_project(graph: Graph, *, register_stages: bool | int = True, top_name: str | None = None,
                  adder: str = "cse", conv_style: str = "pixel", cse_block: int | None = CSE_BLOCK,
                  reuse_factor: int | Mapping[str, int] = 1, target_ii: int | None = None,
                  progress: Callable[[str, float], None] | None = None) -> RtlProject:
    """Render the design for ``graph`` without writing anything.

    With ``conv_style="pixel"`` every Conv2d computes one output pixel per clock, so the whole pipeline advances one
    step every ``ii`` = (largest conv output height x width) clocks; without convolutions (or with ``"parallel"``)
    it accepts one vector per clock. ``cse_block`` bounds the adder graphs' sharing search so that generation time
    grows near-linearly with the weights (``qfx.backends.adder_graph.build_adder_graph``; None: unbounded, quadratic
    in the row length, a few percent fewer adders on wide layers). ``reuse_factor`` / ``target_ii`` fold dense
    layers (``qfx.backends.rtl_folded``): a layer folded by R takes R clocks, and ``ii`` is the largest R or conv
    pixel count. ``progress(line, seconds)`` is called after each layer (the CLI prints those over 2 s).
    """
    graph.validate()
    if adder not in ADDER_MODES:
        raise BadInputError(f"adder must be one of {', '.join(ADDER_MODES)}, got {adder!r}")
    if conv_style not in CONV_STYLES:
        raise BadInputError(f"conv_style must be one of {', '.join(CONV_STYLES)}, got {conv_style!r}")
    if cse_block is not None and (isinstance(cse_block, bool) or not isinstance(cse_block, int) or cse_block < 2):
        raise BadInputError(f"cse_block must be an integer >= 2 or None, got {cse_block!r}")
    top = sanitize_one(top_name or graph.name or "qfx_top")
    if top_name is not None and top != top_name:
        raise BadInputError(f"top_name {top_name!r} is not a valid SystemVerilog identifier (try {top!r})")
    env = template_env()
    header = f"Generated by qfx {_version()} from model {sanitize_one(graph.name)}; do not edit."
    requant = f"{top}_requant"
    files: dict[str, str] = {f"{requant}.sv": env.get_template("requant.sv.j2").render(name=requant, header=header)}
    layer_tpl = env.get_template("layer.sv.j2")
    conv_tpl = env.get_template("conv_pixel.sv.j2")
    folded = _folded(graph, conv_style)
    reuse = reuse_map(graph, reuse_factor, target_ii)
    fold_tpl = env.get_template("folded_dense.sv.j2") if reuse else None
    ii = max([*folded.values(), *reuse.values()], default=1)
    fusions = _fusions(graph, folded)
    fused_into = {m.name: c for c, ms in fusions.items() for m in ms}
    regs: list[dict[str, Any]] = []
    layers: list[dict[str, Any]] = []
    multi = len(graph.inputs) != 1 or len(graph.outputs) != 1
    stage: dict[str, int] = {t: 0 for t in graph.inputs}
    sig: dict[tuple[str, int], str] = {(t, 0): f"x_in{k}" if multi else "x_in" for k, t in enumerate(graph.inputs)}
    bits: dict[str, int] = {t.name: t.size * t.fmt.width for t in graph.tensors.values()}
    ids = {t: i for i, t in enumerate(graph.tensors)}

    def at(t: str, s: int) -> str:
        if (t, s) not in sig:
            prev = at(t, s - 1)
            name = f"t{ids[t]}_d{s}"
            regs.append({"name": name, "bits": bits[t], "src": prev})
            sig[(t, s)] = name
        return sig[(t, s)]

    adders = 0
    mults = 0
    per_layer = []
    for i, n in enumerate(graph.nodes):
        if n.name in fused_into:
            continue  # computed per pixel inside its convolution's kernel
        mod = f"{top}_l{i}"
        s_in = max(stage[t] for t in n.inputs)
        chain = fusions.get(n.name, ())
        lay_out = chain[-1].output if chain else n.output
        comment = " + ".join(f"{m.op.value} {sanitize_one(m.name)}" for m in (n, *chain))
        t0 = time.perf_counter()
        if n.name in reuse:  # a folded dense layer: R steps through MAC units, weights in ROMs
            fd = design_folded_dense(graph, n, mod, reuse[n.name], cse_block)
            d = fd.tail
            files[f"{d.module}.sv"] = layer_tpl.render(d=d, header=header, requant=requant)
            files[f"{mod}.sv"] = fold_tpl.render(f=fd, header=header, module=mod, tail=d.module, comment=comment)
            out_bits = fd.out_bits
            s_in = max(s_in, 1)  # reads its input for R clocks: it must come from registers
            extra = [{"port": "ap_clk", "sig": "ap_clk"}, {"port": "ap_rst_n", "sig": "ap_rst_n"},
                     {"port": "en", "sig": "en"}, {"port": "step", "sig": "step"}]
            mults += fd.n_mults
        elif n.name in folded:
            p = design_conv_pixel(graph, n, mod, adder, chain, cse_block)
            d: LayerDesign = p.kernel
            files[f"{d.module}.sv"] = layer_tpl.render(d=d, header=header, requant=requant)
            files[f"{mod}.sv"] = conv_tpl.render(p=p, header=header, module=mod, kernel=d.module, comment=comment)
            out_bits = p.out_bits
            # the folded layer reads its frame for a whole period: it must come from registers (stage >= 1)
            s_in = max(s_in, 1)
            extra = [{"port": "ap_clk", "sig": "ap_clk"}, {"port": "ap_rst_n", "sig": "ap_rst_n"},
                     {"port": "en", "sig": "en"}, {"port": "step", "sig": "step"}]
        else:
            d = design_layer(graph, n, mod, adder, cse_block)
            files[f"{mod}.sv"] = layer_tpl.render(d=d, header=header, requant=requant)
            out_bits = d.out_bits
            extra = []
        adders += d.n_adders
        mults += d.n_mults
        ports = layer_ports(len(n.inputs))
        ins = list(n.inputs)
        if n.name in folded and p.residual_input is not None:  # a fused residual ADD reads its other operand as r
            ins.append(p.residual_input)
            ports.append("r")
        s_in = max([s_in] + [stage[t] for t in ins])
        comb = f"c{i}"
        layers.append({"module": mod, "comment": f"{comment} -> tensor t{ids[lay_out]}", "bits": out_bits,
                       "comb": comb,
                       "conns": extra + [{"port": p, "sig": at(t, s_in)} for p, t in zip(ports, ins)]})
        # ops that only move elements (WIRING; GATHER by an index map) are wires when no format changes: no register
        wiring = ((op_def(n.op).is_(Categories.WIRING) or op_def(n.op).is_(Categories.GATHER))
                  and all(graph.tensor(t).fmt == graph.tensor(n.output).fmt for t in n.inputs))
        if (register_stages and not wiring) or n.name in folded or n.name in reuse:
            name = f"r{i}"
            regs.append({"name": name, "bits": out_bits, "src": comb})
            stage[lay_out] = s_in + 1
        else:
            name = comb
            stage[lay_out] = s_in
        sig[(lay_out, stage[lay_out])] = name
        per_layer.append({"node": "+".join(m.name for m in (n, *chain)), "op": "+".join(m.op.value for m in (n, *chain)),
                          "module": mod, "adders": d.n_adders, "out_stage": stage[lay_out],
                          "folded_pixels": folded.get(n.name, 0), "nodes": [m.name for m in (n, *chain)]})
        if n.name in reuse:  # only on folded layers, so unfolded designs' cosim.json stays as it was
            per_layer[-1].update(reuse=reuse[n.name], steps=fd.steps, macs=fd.n_out * fd.block,
                                 multipliers=fd.n_mults, shifters=fd.n_shifters)
        if progress is not None:
            dt = time.perf_counter() - t0
            progress(f"[rtl] layer {i + 1}/{len(graph.nodes)} {comment}: {dt:.1f} s", dt)
    if multi:
        info = _multi_io_top(graph, files, env, at, stage, bits, header=header, top=top, layers=layers, regs=regs,
                             ii=ii)
        info.update({"top": top, "conv_style": conv_style, "adder": adder, "cse_block": cse_block,
                     "register_stages": bool(register_stages), "adders": adders, "layers": per_layer,
                     "rtl_files": [f"rtl/{f}" for f in files]})
        return RtlProject(top, files, info, mults)
    out_t = graph.outputs[0]
    stages = stage[out_t]
    if stages == 0:
        regs.append({"name": "r_out", "bits": bits[out_t], "src": sig[(out_t, 0)]})
        sig[(out_t, 1)] = "r_out"
        stages = 1
    ins, outs = graph.tensor(graph.inputs[0]), graph.tensor(out_t)
    info = {
        "top": top, "latency": (stages - 1) * ii + 1, "stages": stages, "ii": ii, "conv_style": conv_style, "adder": adder,
        "cse_block": cse_block,
        "register_stages": bool(register_stages),
        "in_count": ins.size, "in_ew": ins.fmt.width, "in_signed": ins.fmt.signed, "in_fmt": ins.fmt.ap_type(),
        "in_bits": bits[ins.name], "in_tw": pad8(bits[ins.name]), "in_shape": list(ins.shape),
        "out_count": outs.size, "out_ew": outs.fmt.width, "out_signed": outs.fmt.signed, "out_fmt": outs.fmt.ap_type(),
        "out_bits": bits[out_t], "out_tw": pad8(bits[out_t]), "out_shape": list(outs.shape),
        "adders": adders, "layers": per_layer,
    }
    files[f"{top}.sv"] = env.get_template("top.sv.j2").render(
        header=header, top=top, layers=layers, regs=regs, input_sig="x_in", output_sig=sig[(out_t, stages)],
        **{k: info[k] for k in ("latency", "stages", "ii", "in_count", "in_fmt", "in_ew", "in_bits", "in_tw", "out_count",
                                "out_fmt", "out_ew", "out_bits", "out_tw")})
    # dependency order: requant, layers, top (Yosys and Verilator accept any order; this reads naturally)
    info["rtl_files"] = [f"rtl/{f}" for f in files]
    return RtlProject(top, files, info, mults)


def _multi_io_top(graph: Graph, files: dict[str, str], env: jinja2.Environment, at: Any, stage: dict[str, int],
                  bits: dict[str, int], *, header: str, top: str, layers: list[dict[str, Any]],
                  regs: list[dict[str, Any]], ii: int) -> dict[str, Any]:
    """Render the top of a graph with several inputs or outputs into ``files``; returns its interface facts.

    One AXI4-Stream port per graph input (``s<k>_axis``) and per output (``m<k>_axis``), k = its position in
    ``graph.inputs`` / ``graph.outputs``. Every output is delayed to the deepest output's stage (``at`` adds the
    registers), so one valid pipeline serves all of them (``templates/rtl/top_multi_io.sv.j2``: join and fork).
    """
    stages = max(1, max(stage[t] for t in graph.outputs))

    def port(t: str, prefix: str, sig: str) -> dict[str, Any]:
        spec = graph.tensor(t)
        return {"tensor": t, "prefix": prefix, "sig": sig, "note": sanitize_one(t), "count": spec.size,
                "ew": spec.fmt.width, "signed": spec.fmt.signed, "fmt": spec.fmt.ap_type(), "bits": bits[t],
                "tw": pad8(bits[t]), "shape": list(spec.shape), "beats": 1, "order": "flat", "tlast": False}

    in_ports = [port(t, f"s{k}_axis", f"x_in{k}") for k, t in enumerate(graph.inputs)]
    out_ports = [port(t, f"m{k}_axis", at(t, stages)) for k, t in enumerate(graph.outputs)]
    latency = (stages - 1) * ii + 1
    files[f"{top}.sv"] = env.get_template("top_multi_io.sv.j2").render(
        header=header, top=top, layers=layers, regs=regs, in_ports=in_ports, out_ports=out_ports, latency=latency,
        stages=stages, ii=ii)
    return {"latency": latency, "stages": stages, "ii": ii,
            "in_ports": [{k: v for k, v in q.items() if k != "sig"} for q in in_ports],
            "out_ports": [{k: v for k, v in q.items() if k != "sig"} for q in out_ports]}


def write_project(graph: Graph, outdir: Path, *, register_stages: bool | int = True, top_name: str | None = None,
                  adder: str = "cse", conv_style: str = "pixel", cse_block: int | None = CSE_BLOCK,
                  reuse_factor: int | Mapping[str, int] = 1, target_ii: int | None = None,
                  progress: Callable[[str, float], None] | None = None, io: str = "vector") -> None:
    """Write ``rtl/*.sv``, ``model.json``, ``cosim.json`` and ``README.md`` into ``outdir`` (created if missing; an
    existing one must be empty). ``io="stream"``: one pixel per beat (``qfx.backends.rtl_stream``)."""
    from qfx.backends.rtl_stream import IO_MODES, build_stream_project

    if io not in IO_MODES:
        raise BadInputError(f"io must be one of {', '.join(IO_MODES)}, got {io!r}")
    outdir = Path(outdir)
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise BadInputError(f"output {outdir} is not an empty folder")
    proj = (build_stream_project if io == "stream" else build_project)(
        graph, register_stages=register_stages, top_name=top_name, adder=adder, conv_style=conv_style,
        cse_block=cse_block, reuse_factor=reuse_factor, target_ii=target_ii, progress=progress)
    (outdir / "rtl").mkdir(parents=True, exist_ok=True)
    for name, text in proj.files.items():
        (outdir / "rtl" / name).write_text(text)
    graph.save(outdir / "model.json")
    (outdir / "cosim.json").write_text(json.dumps({"qfx_rtl_version": 1, **proj.info}, indent=1))
    readme_tpl = "stream_readme.md.j2" if proj.info.get("io") == "stream" else "README.md.j2"
    readme = template_env().get_template(readme_tpl).render(info=proj.info, version=_version(),
                                                                model=sanitize_one(graph.name),
                                                                multipliers=proj.multipliers)
    (outdir / "README.md").write_text(readme)
