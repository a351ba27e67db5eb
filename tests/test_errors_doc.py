"""docs/troubleshooting.md lists every kind of user-facing error the code has: every subclass of
``SleepifyError`` (found by importing every sleepify module) and every OS error that
``sleepify.fsutil.OS_ERRORS`` words as one line. The list between the ``errors:`` markers is generated
here; ``python -m tests.test_errors_doc`` rewrites it."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re
import sys
from pathlib import Path

import sleepify
from sleepify.errors import SleepifyError
from sleepify.fsutil import OS_ERRORS

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"
MARKERS = re.compile(r"(<!-- errors:begin -->\n)(.*?)(<!-- errors:end -->)", re.S)
SKIP = ("sleepify.ops.gated_delta_rule.fla", "sleepify.models.hybrid.remote")  # need CUDA-only imports


def error_classes() -> list[type[SleepifyError]]:
    """Every subclass of SleepifyError that sleepify's modules define."""
    for info in pkgutil.walk_packages(sleepify.__path__, "sleepify."):
        if info.name.startswith(SKIP) or info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001, S112 - a module that needs a GPU library: its errors are elsewhere
            continue
    found, todo = [], [SleepifyError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted({c for c in found if c.__module__.startswith("sleepify")}, key=lambda c: c.__name__)


def catalogue() -> str:
    rows = ["| error | exit code | what it is |", "|---|---|---|"]
    for cls in error_classes():
        doc = " ".join((cls.__doc__ or "").split()).split(". ")[0].rstrip(".")
        code = getattr(cls, "exit_code", 2)
        code = "130 / 143" if cls.__name__ == "Interrupted" else code
        rows.append(f"| `{cls.__name__}` ({cls.__module__}) | {code} | {doc} |")
    rows += ["", "OS errors on an output, as one line `PATH <meaning>: <what to do>; nothing was replaced`:",
             "", "| errno | meaning | what to do |", "|---|---|---|"]  # fmt: skip
    for code, (meaning, todo) in OS_ERRORS.items():
        rows.append(f"| `{errno.errorcode[code]}` | {meaning} | {todo} |")
    rows.append("| `ENOSPC`, `EDQUOT` | disk full while writing PATH (needs about X) | free some space |")
    return "\n".join(rows) + "\n"


def test_troubleshooting_lists_every_error() -> None:
    text = DOC.read_text()
    match = MARKERS.search(text)
    assert match, "docs/troubleshooting.md lost its <!-- errors:begin/end --> markers"
    assert match.group(2) == catalogue(), "run: python -m tests.test_errors_doc (the error list is stale)"
    for cls in error_classes():  # and each kind is also explained in the sections above the list
        assert text.count(cls.__name__) >= 2 or cls.__name__ in ("SleepifyError",), cls.__name__


if __name__ == "__main__":
    text = DOC.read_text()
    DOC.write_text(MARKERS.sub(lambda m: m.group(1) + catalogue() + m.group(3), text))
    sys.exit(0)
