"""Training curves as a picture: loss, learning rate and gradient norm against the step, read from
``metrics.jsonl``. ``train`` / ``warmup`` write ``curves.png`` next to it at every checkpoint;
``sleepify plot RUN [RUN ...]`` overlays runs (the N = 1 vs N = 4 comparison)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sleepify.errors import SleepifyError

__all__ = ["CURVES_FILE", "METRICS_FILE", "find_metrics", "plot_curves", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
PANELS = (("loss", "training loss"), ("lr_muon", "learning rate"), ("grad_norm", "gradient norm"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line of a killed run is skipped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def find_metrics(run: str | Path) -> Path:
    """``metrics.jsonl`` of a stage folder, or of a run folder's train (else warmup) stage."""
    from sleepify.runs import training_stage_dirs

    path = Path(run)
    for candidate in [path / METRICS_FILE] + [d / METRICS_FILE for d in training_stage_dirs(path)]:
        if candidate.is_file():
            return candidate
    if path.is_file() and path.name == METRICS_FILE:
        return path
    raise SleepifyError(f"{run} holds no {METRICS_FILE}: pass a train / warmup folder or a run folder")


def _label(metrics: Path, records: list[dict[str, Any]]) -> str:
    folder = metrics.parent
    name = f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name
    passes = [r["sleep_passes"] for r in records if "sleep_passes" in r]
    return f"{name} (N = {passes[-1]})" if passes else name


def plot_curves(runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """One PNG, three panels (loss, learning rate, gradient norm against the step), one curve per run;
    a metric a run never logged (no gradient clipping: no norm) is left out of its panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise SleepifyError("plot needs at least one run")
    files = [find_metrics(r) for r in runs]
    if labels is not None and len(labels) != len(files):
        raise SleepifyError(f"{len(labels)} labels for {len(files)} runs")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for i, path in enumerate(files):
        records = read_metrics(path)
        label = labels[i] if labels is not None else _label(path, records)
        for ax, (key, _) in zip(axes, PANELS, strict=True):
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
            if points:
                ax.plot(*zip(*points, strict=True), label=label)
    for ax, (_, title) in zip(axes, PANELS, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)  # a reader never sees a half-written picture
    return out
