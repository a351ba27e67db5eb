"""``sleepify eval``: score models from folders on a dataset's held-out rows and write the report.

The scoring itself is :mod:`sleepify.evaluation` (metrics, scoring, report); this stage finds the models
(:mod:`sleepify.runs`), opens the data, hands each N to the model
(:func:`sleepify.sleep.apply_sleep_settings`) and writes ``eval.json``, ``eval.md`` and ``eval.png``
(default ``<run>/eval``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepify.config.overrides import RunOverrides
from sleepify.errors import ModelLoadError, did_you_mean
from sleepify.evaluation.metrics import EXACT_MATCH_MODES, EvalError
from sleepify.evaluation.report import SCHEMA_VERSION, check_report_folder, label_results, write_report
from sleepify.evaluation.scoring import REQUIRED_COLUMNS, evaluate, evaluate_lm
from sleepify.fsutil import refuse_inputs
from sleepify.runs import eval_dir, load_model, resolve_model_dir, run_name, stored_recipe
from sleepify.stages.common import pad_id, quiet_library_bars

__all__ = ["plan_eval", "run_eval"]


SLEEP_KEYS = ("window", "passes", "eviction", "wake_passes")  # what an eval may change from the training


def _stored(model_dir: Path) -> list[str]:
    found = stored_recipe(model_dir)
    return [str(found)] if found else []


def _load_model(model_dir: Path, dtype: str, device: Any) -> Any:
    try:
        model = load_model(model_dir, dtype)
    except ModelLoadError:  # already the one line
        raise
    except Exception as err:  # noqa: BLE001 - any other load failure (no config.json, ...) becomes one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"cannot load the model in {model_dir}: {first}") from None
    return model.to(device)


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
    overrides: RunOverrides | Sequence[str] = (),
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
    from sleepify.sleep import apply_sleep_settings

    model_dirs = [resolve_model_dir(s, runs_root) for s in (list(sources) or [None])]
    out_dir = check_report_folder(out if out else eval_dir(model_dirs[0]))
    if not progress:
        quiet_library_bars()
    passes = list(passes or [])
    if any(int(p) < 1 for p in passes):
        raise EvalError(f"--N values must be >= 1, got {passes}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    plans = []
    for model_dir in model_dirs:
        stored = _stored(model_dir)
        base = load_recipe(stored, []).recipe
        full = load_recipe([*stored, *recipes], list(overrides)).recipe
        # only what the caller's recipes / overrides change reaches the model; the rest is as trained
        changed = {
            key: getattr(full.sleep, key)
            for key in SLEEP_KEYS
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
    refuse_inputs(out_dir, {"--data": str(data_path), "the model": model_dirs})  # the report goes elsewhere
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
        apply_sleep_settings(cfg, **changed)
        vocab = int(getattr(cfg, "vocab_size", 0) or 0)
        if vocab:
            if vocab_needed is None:
                sub = dataset.select(range(n_rows)).with_format(None)
                vocab_needed = 1 + max((max(ids) for ids in sub["input_ids"] if ids), default=-1)
            if vocab_needed > vocab:
                raise EvalError(
                    f"{data_path} holds token ids up to {vocab_needed - 1} but the model in {model_dir} "
                    f"has a vocabulary of {vocab}: the data was tokenized with another tokenizer"
                )
        pad = pad_id(cfg)
        for n_passes in passes or [int(cfg.sleep_passes)]:
            apply_sleep_settings(cfg, passes=int(n_passes))
            if log is not None:
                log(
                    f"evaluating {model_dir} (N={cfg.sleep_passes}, L={cfg.sleep_window}, "
                    f"eviction={cfg.eviction}) on {n_rows} rows of {data_path} [{split}]"
                )
            if exact_match is None:  # plain text: loss and perplexity
                lm = evaluate_lm(
                    model, dataset, batch_size=batch_size, max_examples=max_examples, pad_id=pad,
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
                    pad_id=pad,
                    device=dev,
                    progress=progress,
                )
                scores = res.to_dict()
            entry = {
                "name": run_name(model_dir),
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
    label_results(results)
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
    overrides: RunOverrides | Sequence[str] = (),
    runs_root: str | Path = "runs",
) -> str:
    """What :func:`run_eval` would score, as text (``sleepify eval --dry-run``): nothing loaded or written."""
    from sleepify.config import load_recipe
    from sleepify.data.sources import open_data

    model_dirs = [resolve_model_dir(s, runs_root) for s in (list(sources) or [None])]
    first = load_recipe([*_stored(model_dirs[0]), *recipes], list(overrides)).recipe
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
