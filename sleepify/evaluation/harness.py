"""lm-evaluation-harness across N: ``sleepify eval MODEL --tasks TASKS --N 1,2,4`` (docs/evaluation.md).

The harness runs the model as any Hugging Face causal LM (its ``HFLM`` wrapper around the loaded model):
rows are batch-invariant (every row's windows count its own tokens), so the numbers do not depend on the
batch size. For each N the model's config gets ``sleep_passes = N`` and the harness evaluates the tasks;
the report holds the harness's own numbers as a table task x N (``eval.json``, ``eval.md``). Needs the
optional extra ``sleepify[eval]`` (``lm_eval``).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepify.evaluation.metrics import EvalError
from sleepify.evaluation.report import EVAL_FILE, TABLE_FILE, check_report_folder

__all__ = ["format_harness_table", "run_harness"]


def _harness() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise EvalError(
            "sleepify eval --tasks runs lm-evaluation-harness, which is not installed: "
            "pip install 'sleepify[eval]' (or lm_eval>=0.4.13)"
        ) from None
    return lm_eval


def run_harness(
    model: str | Path | None,
    tasks: Sequence[str],
    N: Sequence[int] = (),
    *,
    out: str | Path | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    include_path: str | Path | None = None,
    device: str | None = None,
    runs_root: str | Path = "runs",
) -> dict[str, Any]:
    """Evaluate ``model`` (a model folder, a stage run folder or None = ``runs/latest``) on the harness's
    ``tasks`` once per sleep-pass count in ``N`` (empty = the trained N). ``include_path``: a folder of
    task YAMLs of your own. Writes ``eval.json`` / ``eval.md`` into ``out`` (default ``<run>/eval``) and
    returns the report with ``"out"`` added."""
    lm_eval = _harness()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    from sleepify.runs import eval_dir, load_model, resolve_model_dir
    from sleepify.sleep import apply_sleep_settings

    if not tasks:
        raise EvalError("--tasks needs at least one task name")
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    if include_path is not None and not Path(include_path).is_dir():
        raise EvalError(f"--include-path {include_path} is not a folder of task YAMLs")
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvalError(f"--tasks: lm-eval knows no task {', '.join(unknown)} (see `lm_eval ls tasks`)")
    model_dir = resolve_model_dir(model, runs_root)
    out_dir = check_report_folder(out if out is not None else eval_dir(model_dir))
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = load_model(model_dir).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = int(net.config.sleep_passes)
    passes = list(dict.fromkeys(N)) or [trained]
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for n in passes:
            apply_sleep_settings(net.config, passes=n)
            lm = HFLM(
                pretrained=net, backend="causal", tokenizer=tokenizer, batch_size=batch_size, device=device
            )
            res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit)
            for task, metrics in res["results"].items():
                numbers = {
                    k: float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k != "sample_len"
                }
                results.setdefault(task, {})[str(n)] = numbers
    finally:
        apply_sleep_settings(net.config, passes=trained)
    report = {
        "kind": "lm-eval",
        "model": str(model_dir),
        "harness": f"lm_eval {importlib.metadata.version('lm_eval')}",
        "tasks": list(tasks),
        "N": passes,
        "trained_N": trained,
        "batch_size": batch_size,
        "limit": limit,
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (TABLE_FILE, format_harness_table(report) + "\n"),
        (EVAL_FILE, json.dumps(report, indent=2)),
    ):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out_dir / name)  # eval.json last: the record
    return {**report, "out": str(out_dir)}


def format_harness_table(report: dict[str, Any]) -> str:
    """Markdown: one row per task and metric, one column per N (the harness's numbers)."""
    passes = [str(n) for n in report["N"]]
    lines = [
        f"lm-evaluation-harness ({report['harness']}) on {report['model']}, "
        f"batch size {report['batch_size']}",
        "",
        "| task | metric | " + " | ".join(f"N = {n}" for n in passes) + " |",
        "|---|---|" + "---:|" * len(passes),
    ]
    for task, by_n in report["results"].items():
        metrics = sorted({m for values in by_n.values() for m in values})
        for metric in metrics:
            cells = []
            for n in passes:
                v = by_n.get(n, {}).get(metric)
                cells.append("" if v is None or math.isnan(v) else f"{v:.4f}")
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
