"""Training-loss curves of several runs (one per N) from their metrics.jsonl, as in the paper's Fig. 2b.

Usage: python experiments/plot_curves.py OUT.png RUN[=LABEL] [RUN[=LABEL] ...]

Each curve is labelled N=<passes> from the run's recipe.yaml; an optional =LABEL after a run folder replaces
that label (to tell apart runs with the same N, e.g. different steps or learning rates).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(out: str, runs: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for arg in runs:
        run, _, label = arg.partition("=")
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        recipe = (Path(run) / "recipe.yaml").read_text()
        passes = next(
            line.split(":")[1].strip() for line in recipe.splitlines() if line.strip().startswith("passes:")
        )
        label = label or f"N={passes}"
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=label)
    ax.axhline(0.6931, color="grey", linestyle="--", linewidth=0.8, label="chance (ln 2)")
    ax.set_xlabel("optimizer step (64 rows each, same data order for every N)")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_title("Rule 110, t = 2, L = 24, hard eviction (CPU scale)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
