"""Training-loss curves of several runs (one per N) from their metrics.jsonl, as in the paper's Fig. 2b.

Usage: python experiments/plot_curves.py OUT.png RUN[=LABEL] [RUN[=LABEL] ...] [--title TEXT]

Each curve is labelled N=<passes> from the run's recipe.yaml; an optional =LABEL after a run folder replaces
that label (to tell apart runs with the same N, e.g. different steps or learning rates).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLE = "Rule 110, t = 2, L = 24, hard eviction (CPU scale)"


def main(out: str, runs: list[str], title: str = TITLE) -> list[str]:
    """Draw the curves into ``out``; returns their labels."""
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = []
    for arg in runs:
        run, _, label = arg.partition("=")
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        if not label:  # a run without recipe.yaml (experiments/gpu_science.py) is always given one
            recipe = (Path(run) / "recipe.yaml").read_text()
            passes = next(
                line.split(":")[1].strip()
                for line in recipe.splitlines()
                if line.strip().startswith("passes:")
            )
            label = f"N={passes}"
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label=label)
        labels.append(label)
    ax.axhline(0.6931, color="grey", linestyle="--", linewidth=0.8, label="chance (ln 2)")
    ax.set_xlabel("optimizer step (64 rows each, same data order for every N)")
    ax.set_ylabel("answer-token loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return labels


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]")
    p.add_argument("--title", default=TITLE)
    args = p.parse_args()
    main(args.out, args.runs, args.title)
