"""Scoring a model on held-out rows: the forward pass and the verdicts (docs/evaluation.md).

How a prediction is made
------------------------
Each held-out row is run through the model's ``forward`` exactly as in training: the whole row (prompt and
answers), left-padded by :func:`sleepify.training.data.collate`, with its ``loss_mask``. The sleep engine
therefore sleeps on every window that makes no scored prediction (the context is consolidated and evicted)
and makes the answer predictions in a single wake pass. Answer ``j`` of a row is correct iff the argmax of
the logits at every position that predicts one of its tokens (``answer_starts[j] - 1 ...
answer_starts[j] + answer_lengths[j] - 2``) equals that token. This is teacher-forced greedy decoding:
inside an answer the forward conditions on the gold earlier answer tokens, which is exactly what greedy
generation would have produced whenever the answer is right so far, and exact match needs every token
right anyway, so the verdict equals that of greedy generation.

:func:`evaluate` takes the model as an object (anything callable as ``model(input_ids=...,
attention_mask=..., loss_mask=...)`` returning an object with ``.logits``), so tests can pass stubs.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepify.errors import did_you_mean
from sleepify.evaluation.metrics import EXACT_MATCH_MODES, AnswerRecord, EvalError, EvalResult, aggregate

__all__ = [
    "REQUIRED_COLUMNS",
    "batch_records",
    "evaluate",
    "evaluate_lm",
    "load_eval_data",
    "predicting_columns",
]

REQUIRED_COLUMNS = ("input_ids", "loss_mask", "answer_starts", "answer_lengths", "bucket")


def _check_row(i: int, row: dict[str, Any]) -> None:
    n = len(row["input_ids"])
    starts, lengths, buckets = row["answer_starts"], row["answer_lengths"], row["bucket"]
    if not (len(starts) == len(lengths) == len(buckets)):
        raise EvalError(
            f"row {i}: answer_starts, answer_lengths and bucket must have one entry per answer "
            f"(got {len(starts)}, {len(lengths)}, {len(buckets)})"
        )
    if len(row["loss_mask"]) != n:
        raise EvalError(f"row {i}: loss_mask has {len(row['loss_mask'])} entries for {n} tokens")
    for s, length in zip(starts, lengths, strict=True):
        if length < 1 or s < 1 or s + length > n:
            raise EvalError(f"row {i}: answer at {s} of length {length} does not fit a row of {n} tokens")


def predicting_columns(rows: Sequence[dict[str, Any]]) -> int:
    """How many trailing columns of the left-padded batch hold every position that predicts an answer
    token (the logits the metric reads; the model need not return the others)."""
    return max(
        (len(r["input_ids"]) - int(start) + 1 for r in rows for start in r["answer_starts"]), default=0
    )


def batch_records(
    logits: Any, input_ids: Any, rows: Sequence[dict[str, Any]], first_row: int = 0
) -> list[AnswerRecord]:
    """Verdicts for the answers of a left-padded batch.

    ``input_ids [B, T]`` is the batch as collated (row ``b`` occupies the last ``len(rows[b]["input_ids"])``
    columns); ``logits [B, K, V]`` cover its last ``K <= T`` columns (at least
    :func:`predicting_columns`); the answer positions come from the rows.
    """
    import torch
    import torch.nn.functional as F

    width = input_ids.shape[1]
    b_idx: list[int] = []
    p_idx: list[int] = []
    owner: list[int] = []
    meta: list[tuple[int, int, int]] = []  # (row, bucket, tokens) per answer
    for b, row in enumerate(rows):
        offset = width - len(row["input_ids"])
        for start, length, bucket in zip(
            row["answer_starts"], row["answer_lengths"], row["bucket"], strict=True
        ):
            a = len(meta)
            meta.append((first_row + b, int(bucket), int(length)))
            for p in range(offset + int(start) - 1, offset + int(start) + int(length) - 1):
                b_idx.append(b)
                p_idx.append(p)
                owner.append(a)
    if not meta:
        return []
    device = logits.device
    bt = torch.tensor(b_idx, device=device)
    pt = torch.tensor(p_idx, device=device)
    at = torch.tensor(owner, device=device)
    first = width - logits.shape[1]  # logits start at this column
    if first > min(p_idx):
        raise EvalError(f"the logits cover the last {logits.shape[1]} columns; answers need more")
    picked = logits[bt, pt - first].float()  # [M, V]: the logits that predict answer tokens
    targets = input_ids.to(device)[bt, pt + 1]
    if not torch.isfinite(picked).all():
        bad = int((~torch.isfinite(picked).all(-1)).nonzero()[0, 0])
        raise EvalError(
            f"row {first_row + b_idx[bad]}: the model gave no finite logits at position {p_idx[bad]}, which "
            "predicts an answer token (was that window awake? check the row's loss_mask)"
        )
    wrong = (picked.argmax(-1) != targets).to(torch.long)
    ce = F.cross_entropy(picked, targets, reduction="none").double()
    n = len(meta)
    wrong_per = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, at, wrong)
    loss_per = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, at, ce)
    wrong_list, loss_list = wrong_per.tolist(), loss_per.tolist()
    return [
        AnswerRecord(row=r, bucket=bucket, correct=wrong_list[a] == 0, loss_sum=loss_list[a], tokens=t)
        for a, (r, bucket, t) in enumerate(meta)
    ]


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def evaluate(
    model: Any,
    dataset: Any,
    *,
    exact_match: str = "answer",
    batch_size: int = 16,
    max_examples: int | None = None,
    pad_id: int = 0,
    device: Any = None,
    progress: bool = False,
    forward_kwargs: dict[str, Any] | None = None,
) -> EvalResult:
    """Score ``model`` on ``dataset`` (a ``datasets.Dataset`` or a sequence of row dicts).

    Batches of ``batch_size`` rows in dataset order are left-padded with
    :func:`sleepify.training.data.collate` and run through ``model(input_ids=..., attention_mask=...,
    loss_mask=..., **forward_kwargs)`` under ``no_grad`` -- the training forward, so the context is slept
    on and evicted and the answers are predicted awake. See the module docstring for the metric.
    """
    import torch

    from sleepify.training.data import collate

    if batch_size < 1:
        raise EvalError(f"batch size must be >= 1, got {batch_size}")
    if exact_match not in EXACT_MATCH_MODES:
        raise EvalError(f"exact_match must be one of {EXACT_MATCH_MODES}, got {exact_match!r}")
    n = len(dataset)
    if max_examples is not None:
        n = min(n, int(max_examples))
    if n == 0:
        raise EvalError("the evaluation split is empty")
    if hasattr(dataset, "with_format"):
        dataset = dataset.with_format(None)
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="eval", unit="row")
    records: list[AnswerRecord] = []
    forward = getattr(model, "forward", model)
    try:
        keeps_logits = "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        keeps_logits = False
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                if hasattr(dataset, "select"):
                    chunk = dataset.select(range(start, stop))
                    rows = [chunk[i] for i in range(len(chunk))]
                else:
                    rows = [dataset[i] for i in range(start, stop)]
                for i, row in enumerate(rows):
                    _check_row(start + i, row)
                batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
                kwargs = dict(forward_kwargs or {})
                if keeps_logits:  # only the columns that predict answers: B x K x V, not B x T x V
                    kwargs.setdefault("logits_to_keep", predicting_columns(rows))
                out = model(**batch, **kwargs)
                logits = out.logits if hasattr(out, "logits") else out[0]
                records += batch_records(logits, batch["input_ids"], rows, first_row=start)
                if bar is not None:
                    bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
        if was_training and hasattr(model, "train"):
            model.train()
    return aggregate(records, exact_match)


def evaluate_lm(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 16,
    max_examples: int | None = None,
    pad_id: int = 0,
    device: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Language-modelling loss and perplexity of ``model`` on plain-text rows (every ``loss_mask`` token).

    The rows run through the training forward (``logits="none"``: the engine sums the cross entropy window
    by window), so a window full of scored tokens is awake, as in training. Returns ``{"loss", "perplexity",
    "tokens", "count"}`` with the loss averaged over tokens (not rows).
    """
    import torch

    from sleepify.training.data import collate

    n = len(dataset) if max_examples is None else min(len(dataset), int(max_examples))
    if n == 0:
        raise EvalError("the evaluation split is empty")
    dataset = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = getattr(model, "training", False)
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="eval", unit="row")
    loss_sum, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                rows = [dataset[i] for i in range(start, min(n, start + batch_size))]
                batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
                out = model(**batch, logits="none")
                if out.loss_sum is not None:
                    loss_sum += float(out.loss_sum)
                    tokens += int(out.num_loss_tokens)
                if bar is not None:
                    bar.update(len(rows))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    loss = loss_sum / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if math.isfinite(loss) else float("nan"),
        "tokens": tokens,
        "count": n,
    }


def load_eval_data(path: str | Path, split: str = "test") -> tuple[Any, dict[str, Any]]:
    """The ``split`` of a dataset folder written by ``sleepify data`` (or any ``save_to_disk`` folder
    with the needed columns) and its ``meta.json`` (``{}`` if absent)."""
    import datasets

    folder = Path(path)
    if not folder.exists():
        raise EvalError(f"data folder {folder} does not exist: write one with `sleepify data TASK --out DIR`")
    if not folder.is_dir():
        raise EvalError(f"--data {folder} is a file: pass a dataset folder written by `sleepify data`")
    try:
        data = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise EvalError(
            f"{folder} is not a saved dataset ({first}): write one with `sleepify data`"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise EvalError(
                f"{folder} has no split '{split}'{did_you_mean(split, data.keys())}; "
                f"splits: {', '.join(data.keys())}"
            )
        data = data[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in data.column_names]
    if missing:
        raise EvalError(
            f"{folder} lacks the column(s) {', '.join(missing)} that evaluation needs "
            f"({', '.join(REQUIRED_COLUMNS)}): prepare it with `sleepify data`"
        )
    meta: dict[str, Any] = {}
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise EvalError(f"{meta_file} is not valid JSON ({err})") from None
    mode = meta.get("exact_match", "answer")
    if mode not in EXACT_MATCH_MODES:
        raise EvalError(f"{meta_file}: exact_match must be one of {EXACT_MATCH_MODES}, got {mode!r}")
    return data, meta
