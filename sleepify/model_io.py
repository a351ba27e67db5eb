"""Loading a model folder so that a damaged one ends in one line (``train``, ``warmup``, ``eval``, ``export``,
``generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleepify.errors import ModelLoadError


def load_model(model_dir: Path, dtype: Any = "auto") -> Any:
    """``AutoModelForCausalLM.from_pretrained`` with every way a model folder can be broken (truncated or
    random safetensors, weights that do not match config.json, pickle files) as one line."""
    from transformers import AutoModelForCausalLM

    import sleepify  # noqa: F401  (registers the model types)

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except Exception as err:  # noqa: BLE001  (safetensors, torch.load, config mismatches: many kinds)
        if isinstance(err, OSError) and err.errno is not None:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"cannot load the model in {model_dir} ({type(err).__name__}: {first[:300]}): the weights are "
            "damaged or do not match its config.json; rerun the stage that wrote it"
        ) from None
