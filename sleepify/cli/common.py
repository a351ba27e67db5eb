"""Options shared by the stage commands: recipes (stackable) and dotted ``key=value`` overrides."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from sleepify.cli.output import configure_logging, echo_info, progress_enabled  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # the recipe schema (pydantic) loads only when a command runs, not for --help
    from sleepify.config import ResolvedRecipe


MAX_INT = 2**31 - 1  # the same bound as the recipe schema's ints (sleepify/config/schema.py)


class FiniteFloat(click.FloatRange):
    """A float option in a range that is also finite (click's FloatRange lets ``inf`` and ``nan`` by)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Count(click.IntRange):
    """An int option in ``[min, MAX_INT]``; the help shows only ``x>=min`` (the upper bound is a guard
    against overflow, not a setting)."""

    def _describe_range(self) -> str:
        return f"x>={self.min}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.INT.convert(value, param, ctx)
        if self.max is not None and number > self.max:
            self.fail(f"{number} is larger than {self.max}", param, ctx)
        return super().convert(number, param, ctx)


def count(min: int = 0) -> click.IntRange:  # noqa: A002 - the name click uses
    """An int option in ``[min, MAX_INT]``."""
    return Count(min=min, max=MAX_INT)


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


def verbosity_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-q/--quiet`` and ``-v/--verbose`` on a command too (``sleepify train ... -q``), same as the global
    ones (``sleepify -q train ...``)."""

    def set_level(level: int) -> Callable[[click.Context, click.Parameter, bool], None]:
        def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
            if value:
                configure_logging(level)

        return callback

    func = click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=set_level(1),
                        help="Debug messages.")(func)  # fmt: skip
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=set_level(-1),
                        help="Only warnings and errors; no progress bars.")(func)  # fmt: skip
    return func


def dry_run_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dry-run", is_flag=True, help="Print the resolved recipe and the plan; write nothing."
    )(func)
