"""``sleepify plot RUN [RUN ...]``: training curves of runs overlaid in one PNG."""

from __future__ import annotations

import click

from sleepify.cli.common import echo_info, verbosity_options


@click.command("plot")
@click.argument("runs", nargs=-1, required=True, metavar="RUN [RUN]...")
@click.option("--out", default="curves.png", show_default=True, type=click.Path(dir_okay=False),
              help="The PNG to write.")  # fmt: skip
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="A legend label per run, in order (default: the run's folder and N).",
)
@verbosity_options
def plot(runs: tuple[str, ...], out: str, labels: tuple[str, ...]) -> None:
    """Plot the training curves (loss, learning rate, gradient norm) of runs, overlaid in one PNG.

    RUN is a run folder (its train stage, else warmup) or a stage folder holding metrics.jsonl; give
    several (e.g. runs trained with N = 1 and N = 4) to compare them. train and warmup also write
    curves.png next to metrics.jsonl at every checkpoint.
    """
    import sleepify.api as api

    path = api.plot(list(runs), out, list(labels) or None)
    echo_info(f"wrote {path}")
