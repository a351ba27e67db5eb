"""``sleepify quickstart``: the whole pipeline on an embedded tiny default (see sleepify/quickstart.py)."""

from __future__ import annotations

from pathlib import Path

import click

from sleepify.cli.common import progress_enabled, verbosity_options


@click.command("quickstart")
@click.option("--out", type=click.Path(path_type=Path), default=Path("quickstart"), show_default=True,
              help="folder for every artefact")  # fmt: skip
@click.option("--N", "passes", type=int, default=2, show_default=True, help="sleep passes per window")
@click.option("--quick", is_flag=True, help="a shortened run (a few steps; for smoke tests)")
@click.option("--overwrite", is_flag=True, help="replace a non-empty --out")
@verbosity_options
def quickstart(out: Path, passes: int, quick: bool, overwrite: bool) -> None:
    """Run data -> convert -> warmup -> train -> eval -> export -> generate on a tiny embedded model (CPU)."""
    from sleepify.quickstart import QuickstartPlan, print_summary, run_quickstart

    plan = QuickstartPlan.quick(out) if quick else QuickstartPlan(out)
    plan.passes = passes
    print_summary(run_quickstart(plan, overwrite=overwrite, progress=progress_enabled()))
