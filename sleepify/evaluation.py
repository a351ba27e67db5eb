"""Exact-match accuracy and answer-token loss per difficulty bucket (``sleepify eval``; docs/evaluation.md).

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

Metrics per bucket (``bucket[j]``: Rule 110 t, Depo k, GSM ops):

- ``accuracy``: exact match per answer (``meta.json["exact_match"] == "answer"``) or per row (``"row"``,
  Rule 110: all four answer bits right; the row's answers must share one bucket);
- ``loss``: mean cross entropy over the answer tokens of the bucket (the paper plots the Depo test loss).

:func:`evaluate` takes the model as an object (anything callable as ``model(input_ids=...,
attention_mask=..., loss_mask=...)`` returning an object with ``.logits``), so tests can pass stubs;
:func:`run_eval` loads converted models from folders and writes ``eval.json``, ``eval.md`` and ``eval.png``.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.errors import ModelLoadError, SleepifyError, did_you_mean

__all__ = [
    "EVAL_FILE",
    "PLOT_FILE",
    "REQUIRED_COLUMNS",
    "TABLE_FILE",
    "AnswerRecord",
    "BucketStats",
    "EvalError",
    "EvalResult",
    "aggregate",
    "evaluate",
    "format_table",
    "load_eval_data",
    "plot_report",
    "resolve_model_dir",
    "run_eval",
]

EVAL_FILE = "eval.json"
TABLE_FILE = "eval.md"
PLOT_FILE = "eval.png"
SCHEMA_VERSION = 1
REQUIRED_COLUMNS = ("input_ids", "loss_mask", "answer_starts", "answer_lengths", "bucket")
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


# ------------------------------------------------------------------------------------------------------------
# the forward pass and the verdicts


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


# ------------------------------------------------------------------------------------------------------------
# data and models from folders


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


def resolve_model_dir(source: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """A model folder from a model folder, a stage run folder holding ``model/``, or ``runs/latest``."""
    from sleepify.convert import latest_run

    if source is None:
        latest = latest_run(runs_root)
        if latest is None:
            raise EvalError(
                f"no model given and {Path(runs_root) / 'latest'} does not exist: pass a model folder"
            )
        path = latest
    else:
        path = Path(source)
        if not path.exists():
            raise EvalError(f"{source} does not exist: pass a model folder or a stage run folder")
    if (path / "model" / "config.json").is_file():
        path = path / "model"
    config = path / "config.json"
    if not config.is_file():
        raise EvalError(
            f"{path} is not a model folder (no config.json): pass a folder written by `sleepify convert`, "
            "`warmup` or `train`, or a stage run folder holding model/"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise EvalError(f"{config} is not valid JSON ({err})") from None
    if model_type != "sleep_hybrid":
        raise EvalError(
            f"{path} holds a '{model_type}' model, not a sleep-capable one: "
            f"run `sleepify convert {path}` first"
        )
    return path


def run_dir_of(model_dir: Path) -> Path:
    """``runs/x/train/model`` -> ``runs/x/train``; a convert folder (itself a model) -> itself."""
    return model_dir.parent if model_dir.name == "model" else model_dir


def _run_name(model_dir: Path) -> str:
    run = run_dir_of(model_dir.resolve())
    return f"{run.parent.name}/{run.name}" if run.parent.name else run.name


def _stored_recipe(model_dir: Path) -> list[str]:
    from sleepify.config.loader import RESOLVED_RECIPE_FILE

    for folder in (model_dir, model_dir.parent):
        if (folder / RESOLVED_RECIPE_FILE).is_file():
            return [str(folder / RESOLVED_RECIPE_FILE)]
    return []


# recipe sleep.* key -> model config attribute (applied only when the user's recipes/overrides change it)
SLEEP_FIELDS = {
    "window": "sleep_window",
    "passes": "sleep_passes",
    "eviction": "eviction",
    "wake_passes": "wake_passes",
}


def _load_model(model_dir: Path, dtype: str, device: Any) -> Any:
    import torch

    import sleepify  # noqa: F401  (registers the model types)

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    try:
        from sleepify.model_io import load_model

        model = load_model(model_dir, torch_dtype)
    except ModelLoadError:  # already the one line
        raise
    except Exception as err:  # noqa: BLE001 - any other load failure (no config.json, ...) becomes one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"cannot load the model in {model_dir}: {first}") from None
    return model.to(device)


# ------------------------------------------------------------------------------------------------------------
# the command


def _bucket_name(meta: dict[str, Any]) -> str:
    text = str(meta.get("bucket") or "bucket").strip()
    return text.split()[0] if text else "bucket"


def run_eval(
    sources: Sequence[str | None],
    data: str | None = None,
    *,
    out: str | Path | None = None,
    split: str | None = None,
    batch_size: int | None = None,
    max_examples: int | None = None,
    passes: Sequence[int] | None = None,
    recipes: Sequence[str] = (),
    overrides: Sequence[str] = (),
    device: str | None = None,
    runs_root: str | Path = "runs",
    progress: bool = True,
    plot: bool = True,
    log: Any = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate every model of ``sources`` (``[None]`` = ``runs/latest``) at every N of ``passes``
    (default: each model's own ``sleep_passes``); write ``eval.json``, ``eval.md`` and ``eval.png`` into
    ``out`` (default: ``<first run>/eval``). Returns the report and the output folder."""
    import torch

    from sleepify import __version__
    from sleepify.config import load_recipe

    model_dirs = [resolve_model_dir(s, runs_root) for s in (list(sources) or [None])]
    out_dir = check_report_folder(out if out else run_dir_of(model_dirs[0]) / "eval")
    if not progress:
        from sleepify.training.stage import quiet_library_bars

        quiet_library_bars()
    passes = list(passes or [])
    if any(int(p) < 1 for p in passes):
        raise EvalError(f"--N values must be >= 1, got {passes}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    plans = []
    for model_dir in model_dirs:
        stored = _stored_recipe(model_dir)
        base = load_recipe(stored, []).recipe
        full = load_recipe([*stored, *recipes], list(overrides)).recipe
        changed = {
            attr: getattr(full.sleep, key)
            for key, attr in SLEEP_FIELDS.items()
            if getattr(full.sleep, key) != getattr(base.sleep, key)
        }
        plans.append((model_dir, full, changed))
    first = plans[0][1]
    data_path = data or first.data.path
    if not data_path:
        raise EvalError(
            "no data (data.path is not set): pass --data (a `sleepify data` folder, a saved dataset, a "
            ".jsonl/.json/.parquet/.csv file or a Hub dataset id)"
        )
    data_section = first.data.model_copy(update={"path": str(data_path)})
    if split:
        data_section = data_section.model_copy(update={"eval_split": split})
    batch_size = batch_size or first.eval.batch_size
    max_examples = max_examples or first.eval.max_examples
    dataset, meta, exact_match, opened = _eval_rows(data_section, split, model_dirs[0], progress)
    split = split or (data_section.eval_split if opened.held_out is None else "held-out")
    n_rows = len(dataset) if max_examples is None else min(len(dataset), max_examples)

    vocab_needed = None
    results = []
    for model_dir, recipe, changed in plans:
        model = _load_model(model_dir, recipe.model.dtype, dev)
        cfg = model.config
        trained_n = int(cfg.sleep_passes)
        for attr, value in changed.items():
            setattr(cfg, attr, value)
        vocab = int(getattr(cfg, "vocab_size", 0) or 0)
        if vocab:
            if vocab_needed is None:
                sub = dataset.select(range(n_rows)).with_format(None)
                vocab_needed = 1 + max(max(ids) for ids in sub["input_ids"])
            if vocab_needed > vocab:
                raise EvalError(
                    f"{data_path} holds token ids up to {vocab_needed - 1} but the model in {model_dir} "
                    f"has a vocabulary of {vocab}: the data was tokenized with another tokenizer"
                )
        pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        for n_passes in passes or [int(cfg.sleep_passes)]:
            cfg.sleep_passes = int(n_passes)
            if log is not None:
                log(
                    f"evaluating {model_dir} (N={cfg.sleep_passes}, L={cfg.sleep_window}, "
                    f"eviction={cfg.eviction}) on {n_rows} rows of {data_path} [{split}]"
                )
            if exact_match is None:  # plain text: loss and perplexity
                lm = evaluate_lm(
                    model, dataset, batch_size=batch_size, max_examples=max_examples, pad_id=pad_id,
                    device=dev, progress=progress,
                )  # fmt: skip
                scores = {"buckets": {}, "overall": lm}
            else:
                res = evaluate(
                    model,
                    dataset,
                    exact_match=exact_match,
                    batch_size=batch_size,
                    max_examples=max_examples,
                    pad_id=pad_id,
                    device=dev,
                    progress=progress,
                )
                scores = res.to_dict()
            entry = {
                "name": _run_name(model_dir),
                "path": str(model_dir.resolve()),
                "N": int(cfg.sleep_passes),
                "trained_N": trained_n,
                "L": int(cfg.sleep_window),
                "eviction": str(cfg.eviction),
                "wake_passes": int(cfg.wake_passes),
                **scores,
            }
            results.append(entry)
        del model
    _label(results)
    report = {
        "schema": SCHEMA_VERSION,
        "sleepify_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "path": str(Path(data_path).resolve()),
            "split": split,
            "task": meta.get("task"),
            "format": opened.format,
            "metric": "exact_match" if exact_match else "perplexity",
            "held_out": opened.held_out,
            "bucket": _bucket_name(meta),
            "exact_match": exact_match,
            "rows": n_rows,
            "max_examples": max_examples,
            "batch_size": batch_size,
        },
        "results": results,
    }
    write_report(report, out_dir, plot=plot)
    return report, out_dir


def plan_eval(
    sources: Sequence[str | None],
    data: str | None = None,
    *,
    split: str | None = None,
    passes: Sequence[int] = (),
    recipes: Sequence[str] = (),
    overrides: Sequence[str] = (),
    runs_root: str | Path = "runs",
) -> str:
    """What :func:`run_eval` would score, as text (``sleepify eval --dry-run``): nothing loaded or written."""
    from sleepify.config import load_recipe
    from sleepify.data.sources import open_data

    model_dirs = [resolve_model_dir(s, runs_root) for s in (list(sources) or [None])]
    first = load_recipe([*_stored_recipe(model_dirs[0]), *recipes], list(overrides)).recipe
    path = data or first.data.path
    if not path:
        raise EvalError("no data (data.path is not set): pass --data")
    section = first.data.model_copy(update={"path": str(path), **({"eval_split": split} if split else {})})
    opened = open_data(section)
    how = "loss and perplexity" if opened.exact_match is None else f"exact match per {opened.exact_match}"
    lines = [f"eval: {len(model_dirs)} model(s), {how}, N = {', '.join(map(str, passes)) or 'as trained'}"]
    lines += [f"  model: {d}" for d in model_dirs]
    lines.append(f"  {opened.describe()}")
    return "\n".join(lines)


def _eval_rows(
    data: Any, split: str | None, model_dir: Path, progress: bool
) -> tuple[Any, dict[str, Any], str | None, Any]:
    """The held-out rows of ``data`` (any source ``--data`` takes, tokenized with the model's tokenizer),
    the dataset's ``meta.json``, how to score it (``"answer"`` / ``"row"`` exact match, or None: loss and
    perplexity on plain text) and the opened source."""
    from sleepify.data.sources import load_tokenizer_for, open_data

    opened = open_data(data, need_train=False)
    if split and opened.split_names and split not in opened.split_names:
        raise EvalError(
            f"{data.path} has no split '{split}'{did_you_mean(split, opened.split_names)}; "
            f"splits: {', '.join(opened.split_names)}"
        )
    tokenizer = load_tokenizer_for(model_dir, opened)
    rows = opened.rows("eval", tokenizer, progress=progress)
    exact_match = opened.exact_match
    if exact_match not in (None, *EXACT_MATCH_MODES):
        raise EvalError(
            f"{data.path}/meta.json: exact_match must be one of {EXACT_MATCH_MODES}, got {exact_match!r}"
        )
    if exact_match is not None:
        missing = [c for c in REQUIRED_COLUMNS if c not in rows.column_names]
        if missing:
            raise EvalError(f"{data.path} lacks the column(s) {', '.join(missing)} that exact match needs")
    return rows, opened.meta, exact_match, opened


def _label(results: list[dict[str, Any]]) -> None:
    """``N=2`` when every entry is the same model; ``name N=2`` otherwise (unique labels)."""
    same_model = len({r["path"] for r in results}) == 1
    for r in results:
        r["label"] = f"N={r['N']}" if same_model else f"{r['name']} N={r['N']}"
    seen: dict[str, int] = {}
    for r in results:
        seen[r["label"]] = seen.get(r["label"], 0) + 1
        if seen[r["label"]] > 1:
            r["label"] = f"{r['label']} #{seen[r['label']]}"


REPORT_FILES = (PLOT_FILE, TABLE_FILE, EVAL_FILE)  # publish order: eval.json, the record, last


def check_report_folder(out_dir: str | Path) -> Path:
    """One line, before any model loads, when ``--out`` cannot hold the report."""
    out_dir = Path(out_dir)
    if out_dir.name in ("", ".."):  # `--out .` / `..`: stage and lock next to the folder's real name
        out_dir = out_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"--out {out_dir} is a file: choose a folder for eval.json / eval.md / eval.png")
    return out_dir


def write_report(report: dict[str, Any], out_dir: str | Path, plot: bool = True) -> Path:
    """Write ``eval.json`` (the report), ``eval.md`` (the table) and, with ``plot``, ``eval.png``.

    All three are built in a temporary sibling of ``out_dir`` first (a kill or a full disk leaves the
    previous report as it was). A folder holding nothing but a report is then replaced in one rename; a
    folder with other files keeps them and gets each report file renamed in, ``eval.json`` last (a stale
    ``eval.png`` from an earlier report is removed when this one has no plot)."""
    from sleepify.fsutil import RunLock, publish_folder, staging

    out_dir = check_report_folder(out_dir)
    with RunLock(out_dir), staging(out_dir) as tmp:
        (tmp / EVAL_FILE).write_text(json.dumps(_json_safe(report), indent=2) + "\n")
        (tmp / TABLE_FILE).write_text(format_table(report) + "\n")
        if plot:
            plot_report(report, tmp / PLOT_FILE)
        if not out_dir.exists() or {p.name for p in out_dir.iterdir()} <= set(REPORT_FILES):
            publish_folder(tmp, out_dir)
        else:
            for name in REPORT_FILES:
                if (tmp / name).exists():
                    (tmp / name).replace(out_dir / name)
                elif name == PLOT_FILE:
                    (out_dir / name).unlink(missing_ok=True)
    return out_dir / EVAL_FILE


def _json_safe(value: Any) -> Any:
    """NaN (a bucket without units) becomes null so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _all_buckets(report: dict[str, Any]) -> list[str]:
    keys = {b for r in report["results"] for b in r["buckets"]}
    return sorted(keys, key=int)


def _fmt(x: Any, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """A markdown table: one line per bucket (and overall), accuracy and loss columns per result."""
    data = report["data"]
    results = report["results"]
    if data.get("metric") == "perplexity":
        lines = ["| model | rows | tokens | loss | perplexity |", "|---|---|---|---|---|"]
        for r in results:
            o = r["overall"]
            lines.append(
                f"| {r['label']} | {o['count']} | {o['tokens']} | {_fmt(o['loss'], 4)} "
                f"| {_fmt(o['perplexity'], 3)} |"
            )
        title = (
            f"Language-modelling loss (nats per token) and perplexity — {data['path']} "
            f"[{data['split']}], {data['rows']} rows"
        )
        return title + "\n\n" + "\n".join(lines)
    unit = "rows" if data["exact_match"] == "row" else "answers"
    head = [data["bucket"], unit] + [h for r in results for h in (f"{r['label']} acc", f"{r['label']} loss")]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for key in [*_all_buckets(report), "overall"]:
        stats = [r["overall"] if key == "overall" else r["buckets"].get(key, {}) for r in results]
        count = next((s.get("count") for s in stats if s), 0)
        cells = [key, str(count)]
        for s in stats:
            cells += [_fmt(s.get("accuracy"), 3), _fmt(s.get("loss"), 4)]
        lines.append("| " + " | ".join(cells) + " |")
    title = (
        f"Exact-match accuracy ({'all answers of a row' if unit == 'rows' else 'per answer'}) and mean "
        f"answer-token loss by {data['bucket']} — {data.get('task') or 'data'} [{data['split']}], "
        f"{data['rows']} rows"
    )
    return title + "\n\n" + "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Two panels side by side, accuracy and loss against the bucket, one curve per result (per N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = report["data"]
    if data.get("metric") == "perplexity":  # one number per result: a bar each
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = [r["label"] for r in report["results"]]
        ax.bar(labels, [_nan(r["overall"]["perplexity"]) for r in report["results"]])
        ax.set_ylabel("perplexity")
        ax.set_title(f"{Path(str(data['path'])).name} [{data['split']}], {data['rows']} rows")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return Path(path)
    buckets = _all_buckets(report)
    xs = list(range(len(buckets)))
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for r in report["results"]:
        acc = [_nan(r["buckets"].get(b, {}).get("accuracy")) for b in buckets]
        loss = [_nan(r["buckets"].get(b, {}).get("loss")) for b in buckets]
        ax_acc.plot(xs, acc, marker="o", label=r["label"])
        ax_loss.plot(xs, loss, marker="o", label=r["label"])
    for ax, what in ((ax_acc, "exact-match accuracy"), (ax_loss, "answer-token loss (nats)")):
        ax.set_xticks(xs, buckets)
        ax.set_xlabel(data["bucket"])
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_ylim(-0.02, 1.02)
    fig.suptitle(f"{data.get('task') or 'eval'} [{data['split']}], {data['rows']} rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)
