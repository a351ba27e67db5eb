"""``sleepify convert MODEL``: a pretrained checkpoint -> a sleep-capable hybrid (the stage:
sleepify/stages/convert.py)."""

from __future__ import annotations

import click

from sleepify.cli.common import recipe_options, verbosity_options


@click.command("convert")
@click.argument("model", required=False)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder (default: runs/<model>/convert; runs/latest then points at it for warmup).",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the full plan (block table, Jet sizes, loop, parameter and memory growth, where every "
    "choice came from, the resolved recipe) and stop: only the config is read, nothing is written.",
)
@recipe_options
@verbosity_options
def convert(
    model: str | None,
    out_dir: str | None,
    overwrite: bool,
    dry_run: bool,
    recipes: tuple[str, ...],
    overrides: tuple[str, ...],
) -> None:
    """Convert MODEL (alias such as ouro-1.4b, Hub id ORG/NAME, or local folder) into a sleep-capable
    hybrid. Without -r, an alias uses its default recipe (`sleepify models`); any other model gets a
    default plan (Jet layers every 4th block sized from the base, within conversion.max_param_growth;
    the middle blocks looped) that the report explains."""
    from sleepify import api

    if dry_run:
        plan = api.plan("convert", model, recipe=list(recipes), overrides=list(overrides), out=out_dir,
                        overwrite=overwrite)  # fmt: skip
        click.echo(plan.report)
        return
    api.convert(model, recipe=list(recipes), overrides=list(overrides), out=out_dir, overwrite=overwrite,
                log_to=click.echo)  # fmt: skip
