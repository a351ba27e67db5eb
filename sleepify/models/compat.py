"""The transformers internals that sleepify's models depend on, in one place.

We support every transformers release that ``pyproject.toml`` allows (``>=5.6.2,<6``; CI tests the newest
and the floor). When transformers renames something our hand-written models touch, this module is the one
file to change.

What differs across the supported range:

- **The cache keyword.** transformers 5.24 renamed ``past_key_values`` to ``cache`` everywhere: model
  ``forward`` arguments, the field of the model outputs, ``create_causal_mask``'s argument and the key that
  ``generate()`` keeps in its ``model_kwargs`` (older releases use ``past_key_values`` in all four places).
  Our models name the argument ``cache`` and accept ``past_key_values`` as well
  (:func:`accepts_legacy_cache`), so both generations of ``generate()`` and user code written for either
  work without warnings.
- **cache_position.** 5.24 no longer creates it; our models never read it.

Example::

    >>> from sleepify.models.compat import CACHE_KWARG, cache_kwargs
    >>> CACHE_KWARG in ("cache", "past_key_values")
    True
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = [
    "CACHE_KWARG",
    "transformers_at_least",
    "LEGACY_CACHE_KWARG",
    "TRANSFORMERS_VERSION",
    "accepts_legacy_cache",
    "cache_kwargs",
    "generation_cache",
    "output_cache",
    "set_generation_cache",
]

TRANSFORMERS_VERSION: str = importlib.metadata.version("transformers")

LEGACY_CACHE_KWARG = "past_key_values"
CACHE_KWARG: str  # set at the end of this module, from transformers' output classes

F = TypeVar("F", bound=Callable[..., Any])


def transformers_at_least(version: str) -> bool:
    """Whether the installed transformers is ``version`` or newer."""
    from packaging.version import Version

    return Version(TRANSFORMERS_VERSION) >= Version(version)


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name this transformers uses: for model outputs, ``create_causal_mask`` and
    calls into transformers' own decoder layers."""
    return {CACHE_KWARG: cache}


def output_cache(outputs: Any) -> Any:
    """The cache held by a transformers model output (``None`` when it holds none)."""
    return getattr(outputs, CACHE_KWARG, None)


def generation_cache(model_kwargs: Mapping[str, Any]) -> Any:
    """The cache ``generate()`` keeps in its ``model_kwargs`` (``None`` before one is made)."""
    return model_kwargs.get(CACHE_KWARG)


def set_generation_cache(model_kwargs: dict[str, Any], cache: Any) -> None:
    """Hand ``generate()`` the cache it should decode with."""
    model_kwargs[CACHE_KWARG] = cache


def accepts_legacy_cache(forward: F) -> F:
    """Let a ``forward(..., cache=...)`` also be called with ``past_key_values=...`` (older ``generate()``,
    user code written for transformers < 5.24). Passing both is an error. The signature shows both names:
    ``generate()`` checks its keyword arguments against it."""

    @functools.wraps(forward)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if LEGACY_CACHE_KWARG in kwargs:
            legacy = kwargs.pop(LEGACY_CACHE_KWARG)
            if kwargs.get("cache") is not None and legacy is not None:
                raise TypeError("pass the cache as `cache` or as `past_key_values`, not both")
            if legacy is not None:
                kwargs["cache"] = legacy
        return forward(*args, **kwargs)

    signature = inspect.signature(forward)
    params = list(signature.parameters.values())
    if LEGACY_CACHE_KWARG not in signature.parameters:
        legacy = inspect.Parameter(LEGACY_CACHE_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)
        at = len(params) - 1 if params and params[-1].kind is inspect.Parameter.VAR_KEYWORD else len(params)
        params.insert(at, legacy)
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# transformers is imported last: importing it registers sleepify's model types (sleepify/__init__.py), whose
# modules import this one; everything they take from here is defined by now (a first import of this module
# would otherwise meet itself half-initialised). Detected from the output dataclasses, not the version
# number: the rename reached all of them at once.
from transformers.modeling_outputs import BaseModelOutputWithPast  # noqa: E402

CACHE_KWARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else LEGACY_CACHE_KWARG
