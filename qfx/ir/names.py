"""One helper for unique names: IR capture, ONNX import and ONNX export all hand out names that must not repeat."""
from __future__ import annotations

from typing import Callable, Iterable

__all__ = ["UniqueNames"]


class UniqueNames:
    """``names(base)`` returns ``clean(base)``, or ``clean(base)_1``, ``_2``, ... if that is already taken."""

    def __init__(self, taken: Iterable[str] = (), clean: Callable[[str], str] | None = None) -> None:
        self.taken = set(taken)
        self.clean = clean

    def __call__(self, base: str) -> str:
        b = self.clean(base) if self.clean is not None else base
        name, i = b, 1
        while name in self.taken:
            name = f"{b}_{i}"
            i += 1
        self.taken.add(name)
        return name

    def __contains__(self, name: str) -> bool:
        return name in self.taken
