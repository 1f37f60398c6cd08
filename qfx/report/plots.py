"""Plots for the demo report, rendered with matplotlib (Agg) to inline SVG text: the page stays self-contained.

Each function takes plain data (lists, dicts, NumPy arrays) and returns an ``<svg ...>`` string, or ``None`` when
there is nothing to draw; the HTML template decides where they go.
"""
from __future__ import annotations

import io
import re
from typing import Mapping, Sequence

import numpy as np

__all__ = ["int_bits_history_plot", "weight_histograms_plot", "accuracy_vs_bits_plot", "resources_plot",
           "figure_to_svg"]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "svg.hashsalt": "qfx"})
    return plt


def figure_to_svg(fig) -> str:
    """SVG text of a figure without the XML prolog/doctype (embeddable inline in HTML), figure closed."""
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    start = text.find("<svg")
    text = text[start:] if start >= 0 else text
    # Inline SVG in HTML5 needs no namespace declarations (the parser puts <svg> in the SVG namespace and knows
    # xlink:href); dropping them and the RDF metadata leaves no URL of any kind in the page.
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S).strip()


def _short(name: str) -> str:
    return name.replace("net.", "").replace(".out_quant", ".out").replace("_quant", "")


def int_bits_history_plot(history: Mapping[str, Sequence[Sequence[int]]], max_lines: int = 12) -> str | None:
    """Learned integer bits of each quantizer per epoch (epoch 0 = after calibration). Per-channel quantizers are
    drawn as their mean."""
    rows = {k: [float(np.mean(v)) if len(v) else 0.0 for v in hist] for k, hist in history.items() if len(hist)}
    if not rows:
        return None
    plt = _plt()
    weights = [k for k in rows if "weight" in k]
    acts = [k for k in rows if k not in weights]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4), sharey=False)
    for ax, keys, title in ((axes[0], weights, "weights"), (axes[1], acts, "activations / BN / bias")):
        for i, k in enumerate(keys[:max_lines]):
            y = rows[k]
            ax.plot(range(len(y)), y, marker="o", ms=3, lw=1.4, color=_COLORS[i % len(_COLORS)], label=_short(k),
                    drawstyle="steps-post" if len(y) > 1 else "default")
        ax.set_title(f"learned integer bits: {title}")
        ax.set_xlabel("epoch (0 = calibration)")
        ax.set_ylabel("integer bits I")
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        vals = [v for k in keys[:max_lines] for v in rows[k]]
        if vals and max(vals) - min(vals) < 2:  # flat lines: keep integer ticks around them
            ax.set_ylim(min(vals) - 1, max(vals) + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7, ncol=2, frameon=False)
    fig.tight_layout()
    return figure_to_svg(fig)


def weight_histograms_plot(layers: Sequence[Mapping]) -> str | None:
    """One panel per layer: histogram of the latent float weights with the format's grid (every representable value
    when there are few, otherwise the range ends and step) and the quantized values actually used.

    ``layers``: dicts with ``name``, ``weights`` (float array), ``fmt`` (an ``FxFormat``), ``codes`` (int array).
    """
    layers = [lay for lay in layers if np.asarray(lay["weights"]).size]
    if not layers:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(layers), figsize=(3.3 * len(layers), 3.0), squeeze=False)
    for ax, lay in zip(axes[0], layers):
        w = np.asarray(lay["weights"], dtype=np.float64).ravel()
        f = lay["fmt"]
        codes = np.asarray(lay["codes"], dtype=np.int64).ravel()
        lo, hi = f.min, f.max
        span = max(hi - lo, f.step)
        ax.hist(w, bins=60, range=(min(w.min(), lo) - 0.05 * span, max(w.max(), hi) + 0.05 * span),
                color="#9ecae1", label="float weights")
        n_levels = f.max_code - f.min_code + 1
        if n_levels <= 64:
            for c in range(f.min_code, f.max_code + 1):
                ax.axvline(c * f.step, color="#444", lw=0.5, alpha=0.5)
        else:
            for v in (lo, hi):
                ax.axvline(v, color="#444", lw=0.8)
        used, counts = np.unique(codes, return_counts=True)
        ax2 = ax.twinx()
        ax2.plot(used * f.step, counts, "o", ms=2.5, color="#d62728", alpha=0.8, label="quantized")
        ax2.set_ylim(bottom=0)
        ax2.set_yticks([])
        ax2.spines["right"].set_visible(False)
        ax2.spines["top"].set_visible(False)
        ax.set_title(f"{lay['name']}\n{f.ap_type().split(',AP_')[0]}{'>' if ',AP_' in f.ap_type() else ''}",
                     fontsize=8)
        ax.set_xlabel("weight value")
        ax.set_yticks([])
    fig.tight_layout()
    return figure_to_svg(fig)


def accuracy_vs_bits_plot(points: Sequence[Mapping], float_accuracy: float | None) -> str | None:
    """Test accuracy against weight/activation width: QAT and PTQ, float as a reference line.

    ``points``: dicts with ``bits``, ``qat`` and ``ptq`` accuracies (0..1, either may be None)."""
    pts = sorted((p for p in points if p.get("qat") is not None or p.get("ptq") is not None), key=lambda p: p["bits"])
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for key, label, color, marker in (("qat", "QAT (learned binary points)", _COLORS[0], "o"),
                                      ("ptq", "PTQ (no training)", _COLORS[1], "s")):
        xs = [p["bits"] for p in pts if p.get(key) is not None]
        ys = [100 * p[key] for p in pts if p.get(key) is not None]
        if xs:
            ax.plot(xs, ys, marker=marker, color=color, label=label, lw=1.5)
    if float_accuracy is not None:
        ax.axhline(100 * float_accuracy, color="#555", ls="--", lw=1, label="float")
    ax.set_xlabel("bit width W (weights, activations)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted({p["bits"] for p in pts}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_to_svg(fig)


def resources_plot(per_layer: Sequence[Mapping]) -> str | None:
    """Stacked horizontal bars: LUT / FF / CARRY per layer module (DSP noted in the label)."""
    rows = [r for r in per_layer if any(r.get(k, 0) for k in ("lut", "ff", "carry", "dsp"))]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(rows) + 1.2))
    labels = [f"{r['layer']}" + (f" ({r['dsp']} DSP)" if r.get("dsp") else "") for r in rows]
    left = np.zeros(len(rows))
    for key, color in (("lut", _COLORS[0]), ("ff", _COLORS[2]), ("carry", _COLORS[1])):
        vals = np.array([float(r.get(key, 0)) for r in rows])
        ax.barh(labels, vals, left=left, color=color, label=key.upper())
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel("cells (Yosys synth_xilinx)")
    ax.legend(fontsize=8, frameon=False, ncol=3)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return figure_to_svg(fig)
