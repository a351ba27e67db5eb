"""The model sanity checks (sleepify/sanity.py) on their own: what counts as non-finite weights and as a
collapsed run. Every stage calling them is tests/reliability/test_more_bad_inputs.py (NaN weights)."""

from __future__ import annotations

import math

import pytest
import torch

from sleepify.errors import ModelSanityError
from sleepify.sanity import MIN_STEPS, check_weights, collapse_warning


def test_non_finite_weights_are_refused_and_named() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    check_weights(model, "ok")  # finite: nothing
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(ModelSanityError, match=r"1 of 4 tensors hold NaN or Inf \(first: 1.bias\)"):
        check_weights(model, "folder")


def test_collapse_warning() -> None:
    healthy = [3.0 - 0.1 * i for i in range(MIN_STEPS)]
    assert collapse_warning(healthy, [0.5] * MIN_STEPS, 100) is None
    assert "gradient norm was 0" in collapse_warning(healthy, [0.3, 0.0, 0.0, 0.0], 100)
    stuck = [math.log(100) + 0.01] * MIN_STEPS
    assert "chance level" in collapse_warning(stuck, [0.5] * MIN_STEPS, 100)
    assert collapse_warning(stuck[:3], [0.5] * 3, 100) is None  # too short to tell
    assert collapse_warning(stuck, [], None) is None  # no vocabulary known
