"""sleepify: convert pretrained language models into sleep-capable SSM-attention hybrids.

Importing the package registers sleepify's model types (Ouro, Jet-Nemotron and the sleep-capable
hybrid) with transformers' Auto classes, so ``AutoModelForCausalLM.from_pretrained`` loads them
without ``trust_remote_code``. The registration imports torch and transformers (seconds), so it is
deferred until transformers is imported: at once when it already is, else right after ``import
transformers`` finishes (every way to load a model goes through it). ``import sleepify`` alone, and so
``sleepify --help``, stays cheap. ``register_models()`` registers explicitly.

The stages are functions (docs/python-api.md): ``sleepify.convert``, ``warmup``, ``train``,
``evaluate``, ``export``, ``generate``, ``push``, ``make_data``, ``bench``, ``plan`` (a dry run) and ``run``
(a plan), loaded on first use so that ``import sleepify`` stays light; they are ``sleepify/api.py``, a
façade over ``sleepify/stages/``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

__version__ = "0.1.0.dev0"

API = (
    "convert",
    "warmup",
    "train",
    "evaluate",
    "export",
    "generate",
    "push",
    "plan",
    "run",
    "make_data",
    "bench",
)
# `sleepify.convert` and `sleepify.export` are also modules (deprecated stubs forwarding to
# sleepify.stages): importing them sets the package attribute to the module, which would hide the
# function. Those two modules are made callable (calling one runs the API function), so
# `sleepify.convert(...)`, `import sleepify.convert as m` and `m.X` all keep working.
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
        return importlib.import_module(f"{__name__}.{name}")
    if name in API:
        from sleepify import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package


_MODEL_PACKAGES = (
    "sleepify.models.ouro",
    "sleepify.models.jet_nemotron",
    "sleepify.models.scratch",
    "sleepify.models.hybrid",
)
_registered = False


def register_models() -> None:
    """Register sleepify's model types with transformers' Auto classes (idempotent; imports torch).

    Example::

        import sleepify
        sleepify.register_models()
        AutoModelForCausalLM.from_pretrained("runs/latest/model")
    """
    global _registered
    if _registered:
        return
    _registered = True
    # Model packages register themselves on import; missing ones (during development) are skipped.
    for name in _MODEL_PACKAGES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
    # A model loaded from an export through the package writes the export's remote code when re-saved
    # (the kernel cannot import sleepify.remote_code itself: it sits above the kernel).
    hybrid = sys.modules.get("sleepify.models.hybrid.modeling_sleep_hybrid")
    if hybrid is not None:
        hybrid.SleepHybridPreTrainedModel._write_remote_code = staticmethod(_write_remote_code)


def _write_remote_code(folder: Any) -> None:
    from sleepify.remote_code import write_remote_code

    write_remote_code(folder)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Finds ``transformers`` through the other finders and runs ``register_models`` after it executed."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: ANN201
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: object) -> None:
            exec_module(module)
            register_models()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    register_models()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
