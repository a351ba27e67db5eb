"""Options shared by the stage commands: recipes (stackable) and dotted ``key=value`` overrides."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from sleepify.config import ResolvedRecipe, load_recipe


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
    extra = [f"{key}={value}" for key, value in (shorthands or {}).items() if value is not None]
    return load_recipe(list(recipes), [*overrides, *extra])


def echo_kv(rows: list[tuple[str, str]]) -> None:
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        click.echo(f"  {key.ljust(width)}  {value}")


# ------------------------------------------------------------------------------------------------------------
# -q/--quiet and -v/--verbose: the library logs through `logging` (logger "sleepify"); the CLI decides what
# is shown. INFO goes to stdout, warnings and errors to stderr; progress bars follow --quiet.

LOGGER = "sleepify"


class _EchoHandler(logging.Handler):
    """Writes through click.echo, which looks up the current stdout/stderr at every call (so a handler set
    up once keeps working under click's test runner)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=record.levelno >= logging.WARNING)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """-1 quiet (warnings and errors only, no progress bars), 0 normal, 1 verbose (debug messages)."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
        logger.removeHandler(handler)
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if verbosity < 1 else "%(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False
    if verbosity < 0:  # datasets' own bars (loading files, map): read at import, or switched off now
        import os
        import sys

        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()


def progress_enabled() -> bool:
    """Progress bars unless --quiet."""
    return logging.getLogger(LOGGER).getEffectiveLevel() <= logging.INFO


def echo_info(text: str) -> None:
    """A message of the command itself (results, plans): shown unless --quiet."""
    logging.getLogger(LOGGER).info(text)


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
