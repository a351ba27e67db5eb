"""Deprecated import paths: a module that moved leaves a stub whose ``__getattr__`` finds each name in its
new home and warns (DeprecationWarning) once per name. Listed in docs/architecture.md ("Moved modules")."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any


def forward(old: str, homes: Sequence[str], renamed: dict[str, str] | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the stub ``old``: ``name`` (or ``renamed[name]``) from the first of
    ``homes`` that has it."""
    renamed = renamed or {}

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        target = renamed.get(name, name)
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, target):
                warnings.warn(
                    f"{old}.{name} moved to {home}.{target}; import it from there",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return getattr(module, target)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
