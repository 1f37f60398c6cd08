"""``report.html``: the demo's figures as one self-contained page (inline SVG plots, inline CSS, no URLs).

Python decides what goes in (plots, rows, verdicts); ``templates/report/report.html.j2`` holds the layout.
"""
from __future__ import annotations

import datetime as _dt
from typing import Any, Mapping, Sequence

import jinja2
from markupsafe import Markup

from qfx.backends.templating import template_env as _template_env
from qfx.report.levels import LEVEL_TITLES

__all__ = ["render_report", "template_env"]

_STATUS_CLASS = {"ok": "ok", "mismatch": "bad", "error": "bad", "skipped": "skip", "unavailable": "skip"}


def template_env() -> jinja2.Environment:
    return _template_env("report", autoescape=jinja2.select_autoescape(["html", "j2"]), keep_trailing_newline=False)


def _pct(a: float | None) -> str:
    return "n/a" if a is None else f"{100 * a:.2f} %"


def _levels(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in summary["levels"]:
        st = s["status"]
        if st == "ok":
            result = f"0 mismatches / {s['outputs_compared']:,} outputs"
        elif st == "mismatch":
            result = f"{s['mismatches']:,} mismatches / {s['outputs_compared']:,} outputs"
        else:
            result = "not available" if st == "unavailable" else st
        rows.append({"name": LEVEL_TITLES.get(s["name"], s["name"]), "status": st,
                     "cls": _STATUS_CLASS.get(st, "skip"), "result": result, "vectors": s["vectors"],
                     "detail": s["detail"], "seconds": s["seconds"], "first": s.get("first_mismatch")})
    return rows


def render_report(summary: Mapping[str, Any], weight_layers: Sequence[Mapping[str, Any]] = ()) -> str:
    """The HTML text for ``summary`` (the demo's summary dict) plus weight data for the histograms."""
    from qfx import __version__
    from qfx.report import plots

    res = summary["resources"]
    per_layer = res.get("extra", {}).get("per_layer", []) if res["status"] == "ok" else []
    figures = {
        "int_bits": plots.int_bits_history_plot(summary.get("int_bits_history", {})),
        "weights": plots.weight_histograms_plot(list(weight_layers)),
        "accuracy": plots.accuracy_vs_bits_plot(summary.get("sweep", []), summary["accuracy"]["float"]),
        "resources": plots.resources_plot(per_layer),
    }
    acc = summary["accuracy"]
    ctx = {
        "version": __version__,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "s": summary,
        "passed": summary["exit_code"] == 0,
        "acc": [("float", _pct(acc["float"]), "float32 model after pre-training"),
                ("fixed point (QAT)", _pct(acc["qat"]), "exact int64 inference, learned binary points"),
                ("PTQ", _pct(acc["ptq"]), "same formats, calibrated binary points, no training")],
        "sweep": [{"bits": p["bits"], "qat": _pct(p.get("qat")), "ptq": _pct(p.get("ptq")), "epochs": p.get("epochs")}
                  for p in summary.get("sweep", [])],
        "levels": _levels(summary),
        "resources": res,
        "res_cls": _STATUS_CLASS.get(res["status"], "skip"),
        "per_layer": per_layer,
        "figures": {k: Markup(v) if v else None for k, v in figures.items()},
    }
    return template_env().get_template("report.html.j2").render(**ctx)
