"""The op registry: one ``OpDef`` per IR op (``qfx/ops/<family>.py``), looked up by every executor and backend.

Importing this package registers every built-in op. ``REGISTRY`` maps op names to their ``OpDef``; ``get(name)``
looks one up (UnsupportedError for an unknown name); ``emitter_for(table, node, backend)`` is the one lookup a
backend uses for its per-op emitters. See docs/adding-an-op.md for the worked example of adding an op.
"""
import importlib

from qfx.ops.base import REGISTRY, AttrSpec, Categories, OpDef, emitter_for, get, names, register

#: the op modules; importing one registers its ops
BUILTIN_MODULES = ("linear", "affine", "elementwise", "binary", "pool", "shape", "arith", "gather", "lut", "softmax",
                   "matmul")
for _m in BUILTIN_MODULES:
    importlib.import_module(f"qfx.ops.{_m}")

__all__ = ["REGISTRY", "AttrSpec", "Categories", "OpDef", "emitter_for", "get", "names", "register", "with_category"]


def with_category(category: str) -> frozenset[str]:
    """Names of the registered ops in ``category`` (see ``Categories``)."""
    return frozenset(k for k, d in REGISTRY.items() if category in d.categories)
