"""sleepify: convert pretrained language models into sleep-capable SSM-attention hybrids.

Importing the package registers sleepify's model types (Ouro, Jet-Nemotron and the sleep-capable
hybrid) with transformers' Auto classes, so ``AutoModelForCausalLM.from_pretrained`` loads them
without ``trust_remote_code``.

The registration imports torch and transformers (seconds), so it is deferred until transformers is
imported: at once when it already is, else right after ``import transformers`` finishes (every way to
load a model goes through it). ``import sleepify`` alone, and so ``sleepify --help``, stays cheap.
``register_models()`` registers explicitly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0.dev0"

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
