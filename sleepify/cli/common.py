"""Options shared by the stage commands: recipes (stackable) and dotted ``key=value`` overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the recipe schema (pydantic) loads only when a command runs, not for --help
    from sleepify.config import ResolvedRecipe


def recipe_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-r/--recipe NAME_OR_FILE`` (repeatable, stacked left to right) and trailing ``key.sub=value``."""
    func = click.argument("overrides", nargs=-1, metavar="[KEY.SUB=VALUE]...")(func)
    func = click.option(
        "-r",
        "--recipe",
        "recipes",
        multiple=True,
        metavar="NAME|FILE",
        help="Recipe name (see `sleepify recipes list`) or YAML file; repeat to stack.",
    )(func)
    return func


def resolve(
    recipes: tuple[str, ...], overrides: tuple[str, ...], shorthands: dict[str, Any] | None = None
) -> ResolvedRecipe:
    """Load the recipes, then apply overrides; flag shorthands (e.g. ``--N``) come last and win."""
    from sleepify.config import load_recipe

    extra = [f"{key}={value}" for key, value in (shorthands or {}).items() if value is not None]
    return load_recipe(list(recipes), [*overrides, *extra])


def echo_kv(rows: list[tuple[str, str]]) -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"  {key.ljust(width)}  {value}")
