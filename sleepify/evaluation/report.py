"""The evaluation report: ``eval.json`` (the record), ``eval.md`` (a table per bucket) and ``eval.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sleepify.evaluation.metrics import EvalError

__all__ = [
    "EVAL_FILE",
    "PLOT_FILE",
    "REPORT_FILES",
    "TABLE_FILE",
    "check_report_folder",
    "format_table",
    "label_results",
    "plot_report",
    "write_report",
]

EVAL_FILE = "eval.json"
TABLE_FILE = "eval.md"
PLOT_FILE = "eval.png"
SCHEMA_VERSION = 1


def label_results(results: list[dict[str, Any]]) -> None:
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
    single = len(buckets) == 1  # one difficulty: a bar per result (lone dots would show nothing)
    for i, r in enumerate(report["results"]):
        acc = [_nan(r["buckets"].get(b, {}).get("accuracy")) for b in buckets]
        loss = [_nan(r["buckets"].get(b, {}).get("loss")) for b in buckets]
        if single:
            ax_acc.bar([i], acc, label=r["label"])
            ax_loss.bar([i], loss, label=r["label"])
        else:
            ax_acc.plot(xs, acc, marker="o", label=r["label"])
            ax_loss.plot(xs, loss, marker="o", label=r["label"])
    for ax, what in ((ax_acc, "exact-match accuracy"), (ax_loss, "answer-token loss (nats)")):
        if single:
            labels = [r["label"] for r in report["results"]]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlabel(f"{data['bucket']} = {buckets[0]}")
        else:
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
