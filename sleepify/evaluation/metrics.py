"""Exact-match accuracy and answer-token loss per difficulty bucket, from the verdicts of single answers.

Metrics per bucket (``bucket[j]``: Rule 110 t, Depo k, GSM ops):

- ``accuracy``: exact match per answer (``meta.json["exact_match"] == "answer"``) or per row (``"row"``,
  Rule 110: all four answer bits right; the row's answers must share one bucket);
- ``loss``: mean cross entropy over the answer tokens of the bucket (the paper plots the Depo test loss).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sleepify.errors import SleepifyError

__all__ = ["EXACT_MATCH_MODES", "AnswerRecord", "BucketStats", "EvalError", "EvalResult", "aggregate"]

EXACT_MATCH_MODES = ("answer", "row")


class EvalError(SleepifyError):
    """Evaluation cannot run: missing or malformed data, a folder that is not a converted model."""


# ------------------------------------------------------------------------------------------------------------
# aggregation


@dataclass(frozen=True)
class AnswerRecord:
    """The verdict on one answer: its row, bucket, whether every token was right, and its CE."""

    row: int
    bucket: int
    correct: bool
    loss_sum: float  # summed cross entropy over the answer's tokens (nats)
    tokens: int


@dataclass
class BucketStats:
    """Accuracy over ``count`` scored units (answers or rows) and mean CE over ``tokens`` answer tokens."""

    correct: int = 0
    count: int = 0
    loss_sum: float = 0.0
    tokens: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": self.count,
            "correct": self.correct,
            "tokens": self.tokens,
        }


@dataclass
class EvalResult:
    """Per-bucket and overall statistics of one model on one dataset split."""

    buckets: dict[int, BucketStats]
    overall: BucketStats
    exact_match: str
    rows: int
    answers: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "exact_match": self.exact_match,
            "rows": self.rows,
            "answers": self.answers,
            "buckets": {str(b): self.buckets[b].to_dict() for b in sorted(self.buckets)},
            "overall": self.overall.to_dict(),
        }


def aggregate(records: Iterable[AnswerRecord], exact_match: str = "answer") -> EvalResult:
    """Group answer verdicts by bucket.

    ``exact_match="answer"``: every answer is one unit. ``"row"``: every row is one unit, correct iff all
    its answers are; the unit's bucket is the bucket its answers share (an error if they differ). The loss
    is always per answer token, grouped by each answer's bucket.
    """
    if exact_match not in EXACT_MATCH_MODES:
        raise EvalError(f"exact_match must be one of {EXACT_MATCH_MODES}, got {exact_match!r}")
    records = list(records)
    buckets: dict[int, BucketStats] = {}
    overall = BucketStats()

    def stats(bucket: int) -> BucketStats:
        return buckets.setdefault(int(bucket), BucketStats())

    for rec in records:
        for s in (stats(rec.bucket), overall):
            s.loss_sum += float(rec.loss_sum)
            s.tokens += int(rec.tokens)
    if exact_match == "answer":
        units = [(rec.bucket, rec.correct) for rec in records]
    else:
        by_row: dict[int, list[AnswerRecord]] = {}
        for rec in records:
            by_row.setdefault(rec.row, []).append(rec)
        units = []
        for row, recs in by_row.items():
            row_buckets = {r.bucket for r in recs}
            if len(row_buckets) != 1:
                raise EvalError(
                    f"row {row}: exact match per row needs one bucket per row, got {sorted(row_buckets)}"
                )
            units.append((recs[0].bucket, all(r.correct for r in recs)))
    for bucket, correct in units:
        for s in (stats(bucket), overall):
            s.count += 1
            s.correct += int(bool(correct))
    return EvalResult(
        buckets=dict(sorted(buckets.items())),
        overall=overall,
        exact_match=exact_match,
        rows=len({rec.row for rec in records}),
        answers=len(records),
    )
