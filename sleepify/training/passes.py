"""``sleep.passes_schedule``: the number of sleep passes N as a function of the optimizer step.

A curriculum over N (for example N = 2 until a model leaves the loss plateau, then N = 4) is a list of
``(step, passes)`` entries: from optimizer step ``step`` on (0-based: the first step is step 0) the model
sleeps with ``passes`` passes, until the next entry. The training loop asks :meth:`PassesSchedule.at` before
every step, hands N to the model through its config (``sleep.apply_sleep_settings``, as every command
does), logs it, and stores the schedule in every
checkpoint so that ``--resume`` continues it (or stops if the recipe now says otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sleepify.errors import TrainingError

__all__ = ["PassesSchedule"]


@dataclass(frozen=True)
class PassesSchedule:
    """``entries``: ``((step, passes), ...)``, steps strictly increasing from 0.

    Example::

        schedule = PassesSchedule(((0, 2), (250, 4)))
        assert [schedule.at(s) for s in (0, 249, 250, 499)] == [2, 2, 4, 4]
    """

    entries: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        steps = [s for s, _ in self.entries]
        if not self.entries or steps[0] != 0:
            raise TrainingError(f"a passes schedule starts at step 0, got {list(self.entries)}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise TrainingError(f"passes schedule steps must increase strictly, got {steps}")
        if any(int(n) < 1 for _, n in self.entries):
            raise TrainingError(f"passes must be >= 1, got {list(self.entries)}")

    @classmethod
    def from_recipe(cls, sleep: Any) -> PassesSchedule | None:
        """The schedule of a recipe's ``sleep`` section (None when ``sleep.passes_schedule`` is not set)."""
        entries = getattr(sleep, "passes_schedule", None)
        if entries is None:
            return None
        return cls(tuple((int(e.step), int(e.passes)) for e in entries))

    @classmethod
    def from_list(cls, entries: Sequence[Sequence[int]]) -> PassesSchedule:
        return cls(tuple((int(s), int(n)) for s, n in entries))

    def to_list(self) -> list[list[int]]:
        return [[s, n] for s, n in self.entries]

    def at(self, step: int) -> int:
        """N for the optimizer step ``step`` (0-based)."""
        passes = self.entries[0][1]
        for start, n in self.entries:
            if start > step:
                break
            passes = n
        return passes

    def starts_at(self, step: int) -> bool:
        """Whether an entry begins at ``step`` (N may change there)."""
        return any(s == step for s, _ in self.entries)
