"""Errors that the CLI reports as one clear line (no traceback)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SleepifyError(Exception):
    """A user-facing error: the message names the problem and the fix."""

    exit_code = 2


class RecipeError(SleepifyError):
    """A recipe that does not validate (unknown key, wrong type, missing file)."""


class ModelLoadError(SleepifyError):
    """A checkpoint that cannot be loaded (unknown alias, mismatched weights, unreachable Hub)."""


class TrainingError(SleepifyError):
    """A run that must stop (NaN/Inf loss, nothing to resume)."""


class Interrupted(SleepifyError):
    """A run stopped by SIGINT (exit 130) or SIGTERM (exit 143); the message names the last good checkpoint
    and the command that resumes it."""

    prefix = "stopped"

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (exit code 143)."""

    exit_code = 143


def closest(name: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The closest valid names to ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.4)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    match = closest(name, choices)
    return f" (did you mean '{match[0]}'?)" if match else ""
