"""``sleepify recipes``: list, show (fully resolved) and validate recipes."""

from __future__ import annotations

from pathlib import Path

import click

from sleepify.errors import RecipeError


@click.group()
def recipes() -> None:
    """List, show and validate recipes."""


@recipes.command("list")
def list_recipes() -> None:
    """The shipped recipes, with their stage and description."""
    from sleepify.config import available_recipes, load_recipe, recipes_dir  # pydantic: not for --help

    found = available_recipes()
    if not found:
        click.echo(f"no recipes found in {recipes_dir()}")
        return
    rows = []
    for name, path in found.items():
        try:
            recipe = load_recipe(str(path)).recipe
            rows.append((name, recipe.stage, recipe.description))
        except RecipeError as err:
            rows.append((name, "INVALID", str(err)))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, stage, desc in rows:
        click.echo(f"{name.ljust(w0)}  {stage.ljust(w1)}  {desc}")


@recipes.command("show")
@click.argument("names", nargs=-1, required=True, metavar="NAME|FILE... [KEY.SUB=VALUE]...")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY.SUB=VALUE")
def show(names: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Print the fully resolved recipe (bases merged, defaults filled in, overrides applied)."""
    from sleepify.config import load_recipe

    inline = [n for n in names if "=" in n and not Path(n).exists()]
    resolved = load_recipe([n for n in names if n not in inline], [*inline, *overrides])
    click.echo("# resolved from: " + ", ".join(resolved.sources))
    click.echo(resolved.to_yaml(), nl=False)


@recipes.command("validate")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|FILE...")
def validate_cmd(refs: tuple[str, ...]) -> None:
    """Validate recipes (files or shipped names, as -r takes them); exit code 2 on the first that does not
    validate."""
    from sleepify.config import load_recipe

    for ref in refs:
        load_recipe(ref)
        click.echo(f"{ref}: ok")


@recipes.command("reference")
@click.option("--out", type=click.Path(path_type=Path), help="write to this file instead of stdout")
def reference(out: Path | None) -> None:
    """Print the recipe reference (every key, type, default and meaning) generated from the schema."""
    from sleepify.config.reference import schema_reference

    text = schema_reference()
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
