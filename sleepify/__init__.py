"""sleepify: convert pretrained language models into sleep-capable SSM-attention hybrids.

Importing the package registers sleepify's model types (Ouro, Jet-Nemotron and the sleep-capable
hybrid) with transformers' Auto classes, so ``AutoModelForCausalLM.from_pretrained`` loads them
without ``trust_remote_code``.

The stages are functions (docs/python-api.md): ``sleepify.convert``, ``warmup``, ``train``,
``evaluate``, ``export``, ``generate``, ``push`` and ``plan`` (a dry run), loaded on first use so that
``import sleepify`` stays light.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0.dev0"

API = ("convert", "warmup", "train", "evaluate", "export", "generate", "push", "plan")
# `sleepify.convert` and `sleepify.export` are also modules: importing them sets the package attribute to
# the module, which would hide the function. Those two modules are made callable (calling one runs the
# API function), so `sleepify.convert(...)`, `import sleepify.convert as m` and `m.X` all keep working.
_CALLABLE_MODULES = ("convert", "export")


class _StageModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from sleepify import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _StageModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name in API:
        from sleepify import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package


def _register_models() -> None:
    # Model packages register themselves on import; missing ones (during development) are skipped.
    import importlib

    for name in (
        "sleepify.models.ouro",
        "sleepify.models.jet_nemotron",
        "sleepify.models.scratch",
        "sleepify.models.hybrid",
    ):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


_register_models()
