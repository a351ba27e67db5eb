"""What a caller sets over the recipes, typed: the command-line flags (``--N``, ``--L``, ``--data``,
``--steps``, ``--overwrite``) as fields and free ``key.sub=value`` pairs (``--set``, the API's
``overrides=``). Only the recipe loader (:func:`sleepify.config.load_recipe`) merges it into a recipe;
a stage asks :meth:`RunOverrides.sets` whether the caller chose a key instead of matching strings.

Example::

    >>> RunOverrides.of({"train.lr": 1e-3}, N=2).texts()
    ['train.lr=0.001', 'sleep.passes=2']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["FLAG_KEYS", "RunOverrides"]

# field -> the recipe key it sets (the one place a flag's meaning is written down)
FLAG_KEYS = {
    "N": "sleep.passes",
    "L": "sleep.window",
    "eviction": "sleep.eviction",
    "data": "data.path",
    "steps": "train.steps",
    "overwrite": "run.overwrite",
}


@dataclass(frozen=True)
class RunOverrides:
    """The caller's settings, applied over the stacked recipes: ``pairs`` first, then the flags (which win,
    as on the command line). None = not set."""

    N: int | None = None
    L: int | None = None
    eviction: str | None = None
    data: str | None = None
    steps: int | None = None
    overwrite: bool | None = None
    pairs: tuple[str, ...] = ()  # "key.sub=value", the value parsed as YAML by the loader

    @classmethod
    def of(
        cls, overrides: RunOverrides | Sequence[str] | Mapping[str, Any] | None = None, **flags: Any
    ) -> RunOverrides:
        """From what the API and the CLI take: a ``RunOverrides``, ``"key=value"`` strings or a
        ``{"key.sub": value}`` dict, plus flags (``N=2``, ``data="x"``; None values ignored)."""
        if isinstance(overrides, RunOverrides):
            base = overrides
        elif isinstance(overrides, Mapping):
            base = cls(pairs=tuple(f"{k}={json.dumps(v)}" for k, v in overrides.items()))
        else:
            base = cls(pairs=tuple(str(o) for o in overrides or ()))
        unknown = set(flags) - set(FLAG_KEYS)
        if unknown:
            raise TypeError(f"unknown override flag(s) {sorted(unknown)}: {', '.join(FLAG_KEYS)}")
        chosen = {k: v for k, v in flags.items() if v is not None}
        return cls(**{**{f.name: getattr(base, f.name) for f in fields(cls)}, **chosen})

    def flag_values(self) -> dict[str, Any]:
        """``{"sleep.passes": 2, ...}`` for the flags that are set."""
        out = {}
        for name, key in FLAG_KEYS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = str(value) if name == "data" else value
        return out

    def texts(self) -> list[str]:
        """Every override as ``key=value`` (what the loader applies and the provenance records)."""
        return [*self.pairs, *(f"{k}={json.dumps(v)}" for k, v in self.flag_values().items())]

    def sets(self, key: str) -> bool:
        """Whether the caller chose ``key`` (a flag or a pair)."""
        return key in self.flag_values() or any(p.partition("=")[0].strip() == key for p in self.pairs)

    def __iter__(self):  # noqa: ANN204 - iterating gives the texts, as a list of override strings did
        return iter(self.texts())

    def __bool__(self) -> bool:
        return bool(self.texts())
