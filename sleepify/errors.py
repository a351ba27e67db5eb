"""Errors that the CLI reports as one clear line (no traceback), and the helpers that keep that line short.

Every user-facing message goes through :class:`SleepifyError`, which folds it onto one line and caps its
length; a user's value (a recipe entry, an override, a path) is put into a message with :func:`shown`,
which never builds more than a bounded repr, whatever the value holds (a YAML alias bomb expands to
billions of items, and formatting it whole would exhaust memory before the cap applies).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import reprlib
import signal
import threading
from collections.abc import Iterable, Iterator

MAX_MESSAGE = 2000  # characters of one error line; a longer message is cut with an ellipsis
MAX_VALUE = 80  # characters of one user value quoted in a message

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 2, 4, 4, 4, 4
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_VALUE


def shown(value: object, limit: int = MAX_VALUE) -> str:
    """``repr(value)`` bounded in time, memory and length: at most a few items of each container, two
    levels deep, ``limit`` characters in all (the one formatter for user values in error messages)."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip(text: str, limit: int = MAX_VALUE) -> str:
    """A user string (a name, a path, an override) cut to ``limit`` characters for a message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (line breaks become spaces) and at most ``limit`` characters."""
    text = " ".join(str(text)[: limit * 2].split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates print as \udcxx
    return clip(text, limit)


class SleepifyError(Exception):
    """A user-facing error: the message names the problem and the fix, on one bounded line.

    Each subclass is a family of messages that docs/troubleshooting.md lists (``tests/test_errors_doc.py``
    checks that every class is documented there)."""

    exit_code = 2

    def __init__(self, message: object = "", *args: object):
        super().__init__(one_line(str(message)), *args)


class RecipeError(SleepifyError):
    """A recipe that does not validate (unknown key, wrong type, missing file)."""


class ModelLoadError(SleepifyError):
    """A checkpoint that cannot be loaded (unknown alias, mismatched weights, unreachable Hub)."""


class ModelSanityError(ModelLoadError):
    """A model whose weights are not finite (NaN / Inf): loading it would give garbage, not an error."""


class TrainingError(SleepifyError):
    """A run that must stop (NaN/Inf loss, nothing to resume, a damaged checkpoint)."""


class OutputError(SleepifyError):
    """An output location that cannot be written (read-only, immutable, not a folder, permission)."""


class Interrupted(SleepifyError):
    """A run stopped by SIGINT (exit 130) or SIGTERM (exit 143); the message names the last good checkpoint
    and the command that resumes it."""

    prefix = "stopped"

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (exit code 143)."""

    exit_code = 143


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM until the block ends, then act on them as usual. For work an exception must not
    land in: the first import of a C extension (a pybind11 module whose initialisation is interrupted stays
    half-built, and the process can abort at exit: "Fatal Python error: PyThreadState_Get"). The signal is
    noted by a handler that raises nothing, whichever thread the OS delivers it to."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # sleepify's SIGTERM handler / Python's Ctrl-C: raises
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), caught[0])


def interrupt_within(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM hidden inside ``err``, if any. An interrupt that lands while a C extension
    initialises (pybind11 modules such as matplotlib's, imported lazily at a checkpoint) comes back as
    ``ImportError("initialization failed")`` raised from it; a handler that catches ``Exception`` to carry
    on would otherwise swallow the user's stop."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, KeyboardInterrupt):
            return e
        stack += [e.__cause__, e.__context__]
    return None


# Other words users write for a key: the suggestion looks for the canonical word among the valid keys.
ALIASES = {
    "lr": "lr",
    "learning_rate": "lr",
    "learningrate": "lr",
    "epochs": "steps",
    "max_steps": "steps",
    "iterations": "steps",
    "bs": "batch_size",
    "batch": "batch_size",
    "n": "passes",
    "sleep_passes": "passes",
}


def _tokens(name: str) -> set[str]:
    return {t for t in name.replace("-", "_").split("_") if t}


def closest(name: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """The closest valid names to ``name`` (for "did you mean" hints).

    Dotted keys (``train.lr``) are matched on their last component too: a near-identical spelling among
    the siblings first, then valid keys whose last component contains the word (or its alias: ``lr`` ->
    ``train.optimizer.muon_lr``, ``train.optimizer.adamw_lr``), then any similar spelling."""
    name = clip(name, 200)  # difflib is quadratic in the length
    choices = list(dict.fromkeys(choices))
    parent, _, leaf = name.rpartition(".")
    siblings = [c for c in choices if c.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(name, siblings, n=n, cutoff=0.8)
    if close:
        return close
    word = ALIASES.get(leaf.lower(), leaf.lower())
    if word:
        by_word = [
            c for c in choices if word in _tokens(c.rpartition(".")[2]) or word == c.rpartition(".")[2]
        ]
        leaf_of = {c: c.rpartition(".")[2] for c in by_word}  # the key is the word, ends with it, has it
        rank = {c: 0 if leaf_of[c] == word else 1 if leaf_of[c].endswith("_" + word) else 2 for c in by_word}
        by_word.sort(
            key=lambda c: (rank[c], not c.startswith(parent + "."), c.count("."), len(leaf_of[c]), c)
        )
        if by_word:
            return by_word[: max(n, 2)]
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    match = closest(name, choices)
    if not match:
        return ""
    return " (did you mean " + " or ".join(f"'{m}'" for m in match) + "?)"
