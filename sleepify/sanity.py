"""Model sanity checks that every stage runs: weights that are not finite (a diverged run saved anyway, a
corrupted file whose bytes still parse) and a training run that collapsed (no gradient, or a loss stuck at
chance, ln V). Either would otherwise give garbage with exit code 0.

:func:`check_weights` refuses, in one line, a model with NaN / Inf weights; ``train``, ``warmup``,
``eval``, ``export`` and ``generate`` call it on every model they load (:func:`sleepify.model_io.load_model`).
:func:`collapse_warning` words a collapsed run for ``train`` / ``warmup`` to print when they end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sleepify.errors import ModelSanityError

CHANCE_MARGIN = 0.02  # a final loss within 2 % of ln V is chance level: the model predicts nothing
MIN_STEPS = 20  # a shorter run (a smoke test, a first step) has not had the time to leave chance level


def check_weights(model: Any, where: Path | str) -> None:
    """Raise :class:`ModelSanityError` when a parameter or buffer of ``model`` holds NaN or Inf."""
    import torch

    bad, total, first = 0, 0, None
    with torch.no_grad():
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            if not tensor.is_floating_point():
                continue
            total += 1
            if not bool(torch.isfinite(tensor).all()):
                bad += 1
                first = first or name
    if bad:
        raise ModelSanityError(
            f"the weights in {where} are not finite: {bad} of {total} tensors hold NaN or Inf (first: "
            f"{first}); the run that wrote them diverged or the file is corrupted: use an earlier "
            "checkpoint, or retrain with a lower learning rate"
        )


def collapse_warning(losses: list[float], grad_norms: list[float], vocab_size: int | None) -> str | None:
    """One line when a finished run collapsed: the last gradient norms are all 0 (nothing trains), or the
    last loss sits at chance level ``ln(vocab_size)``; None for a healthy run."""
    if grad_norms and all(g == 0 for g in grad_norms[-3:]):
        return (
            "warning: the gradient norm was 0 in the last logged steps: nothing trained (check "
            "train.trainable and the loss mask of the data); the model was saved unchanged"
        )
    if len(losses) >= MIN_STEPS and vocab_size and vocab_size > 2:
        chance = math.log(vocab_size)
        if abs(losses[-1] - chance) <= CHANCE_MARGIN * chance:
            return (
                f"warning: the final loss {losses[-1]:.3f} is chance level (ln V = {chance:.3f} for a "
                f"vocabulary of {vocab_size}): the model learned nothing; try a lower learning rate, more "
                "steps or check the data"
            )
    return None
