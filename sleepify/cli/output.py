"""What the CLI shows: -q/--quiet and -v/--verbose over the library's `logging` (logger "sleepify").

Light on purpose (logging and click only): the group callback imports it for every command.
"""

from __future__ import annotations

import logging

import click

# INFO goes to stdout, warnings and errors to stderr; progress bars follow --quiet.

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
    if verbosity < 0:
        from sleepify.stages.common import quiet_library_bars

        quiet_library_bars()


def progress_enabled() -> bool:
    """Progress bars unless --quiet."""
    return logging.getLogger(LOGGER).getEffectiveLevel() <= logging.INFO


def echo_info(text: str) -> None:
    """A message of the command itself (results, plans): shown unless --quiet."""
    logging.getLogger(LOGGER).info(text)
