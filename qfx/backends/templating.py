"""The one Jinja2 environment factory of qfx: every backend and the report render through it.

Why one: the rules that keep generated files safe and stable (``StrictUndefined`` so a missing field fails instead of
rendering empty, block trimming so templates can be indented, no autoescaping of C++/SystemVerilog text) live in one
place instead of being repeated, slightly differently, by each renderer.
"""
from __future__ import annotations

from typing import Callable

import jinja2

from qfx.resources import data_dir

__all__ = ["template_env"]


def template_env(subdir: str, *, autoescape: bool | Callable[[str | None], bool] = False,
                 keep_trailing_newline: bool = True) -> jinja2.Environment:
    """Environment loading ``templates/<subdir>/`` with qfx's rendering rules.

    ``autoescape`` stays off for code (C++, SystemVerilog, Tcl); the HTML report passes
    ``jinja2.select_autoescape(...)``. ``keep_trailing_newline`` keeps a generated file's last newline.
    """
    root = data_dir("templates") / subdir
    if not root.is_dir():
        raise ValueError(f"no template folder {subdir!r} in {root.parent}")
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=keep_trailing_newline,
                              autoescape=autoescape)
