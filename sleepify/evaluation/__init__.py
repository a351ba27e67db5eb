"""Scoring a model on held-out rows (docs/evaluation.md): :mod:`~sleepify.evaluation.metrics` (exact match
and answer loss per difficulty bucket), :mod:`~sleepify.evaluation.scoring` (the forward pass and the
verdicts, on a model object) and :mod:`~sleepify.evaluation.report` (``eval.json`` / ``eval.md`` /
``eval.png``). The ``sleepify eval`` stage that loads models from run folders is
:mod:`sleepify.stages.eval`.

The names of the former ``sleepify/evaluation.py`` module still resolve from here; the stage's and the run
layout's (``run_eval``, ``plan_eval``, ``resolve_model_dir``, ``run_dir_of``) with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_HOMES = {
    "metrics": ("EXACT_MATCH_MODES", "AnswerRecord", "BucketStats", "EvalError", "EvalResult", "aggregate"),
    "scoring": (
        "REQUIRED_COLUMNS",
        "batch_records",
        "evaluate",
        "evaluate_lm",
        "load_eval_data",
        "predicting_columns",
    ),
    "report": (
        "EVAL_FILE",
        "PLOT_FILE",
        "REPORT_FILES",
        "TABLE_FILE",
        "check_report_folder",
        "format_table",
        "plot_report",
        "write_report",
    ),
}
_MOVED = {
    "run_eval": "sleepify.stages.eval",
    "plan_eval": "sleepify.stages.eval",
    "resolve_model_dir": "sleepify.runs",
    "run_dir_of": "sleepify.runs",
}


def __getattr__(name: str) -> Any:
    for module, names in _HOMES.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    if name in _MOVED:
        warnings.warn(f"sleepify.evaluation.{name} moved to {_MOVED[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
