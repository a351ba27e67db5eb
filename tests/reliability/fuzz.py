"""The property-based layer of the reliability suite: Hypothesis generates recipes, overrides, command lines
and data files, and every one must meet the contract of the CLI:

- exit 0 with a valid output, or exit 2 with exactly one line on stderr (``error: ...``);
- never a traceback, never another exit code;
- the workspace byte-identical afterwards (the commands fuzzed here are checks, dry runs and generation:
  none of them writes, whether it succeeds or not);
- bounded time (a per-example deadline) and memory (the process's peak grows by a bounded amount).

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default: derandomized, so CI is not flaky, and a budget that
keeps tests/reliability/test_fuzz.py under a minute) and ``long`` (random, ``FUZZ_EXAMPLES`` examples per
test). The long run, as a script::

    python -m tests.reliability.fuzz --examples 2000
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SUPPRESS = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=timedelta(seconds=20), suppress_health_check=SUPPRESS
)
settings.register_profile(
    "long", derandomize=False, database=None, deadline=timedelta(seconds=60), suppress_health_check=SUPPRESS
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
MAX_GROWTH_KB = 1_000_000  # peak memory the whole fuzz run may add to the process (KiB, ru_maxrss)


def budget(ci_examples: int) -> settings:
    """``ci_examples`` examples under the ci profile; ``FUZZ_EXAMPLES`` (default 2000) under long."""
    n = ci_examples if PROFILE == "ci" else int(os.environ.get("FUZZ_EXAMPLES", "2000"))
    return settings(max_examples=n)


# ------------------------------------------------------------------------------------------------------------
# values and recipes

huge_text = st.integers(1_000, 200_000).map(lambda n: "x" * n)
texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=string.printable, max_size=40),
    st.sampled_from(
        ["", " ", "\x00", "\udce9", "\ud800", "café", "1e-3", ".inf", "-.nan", "null", "[", "{a: 1}", "*a"]
    ),
    huge_text,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 5000),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


def recipe_keys() -> list[str]:
    from sleepify.config.loader import all_keys
    from sleepify.config.schema import Recipe

    return all_keys(Recipe)


keys = st.one_of(
    st.sampled_from(recipe_keys()),
    st.sampled_from(recipe_keys()).map(lambda k: k + "x"),
    st.lists(
        st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=12), min_size=1, max_size=4
    ).map(".".join),
)


def nest(pairs: list[tuple[str, Any]], shared: list[bool]) -> dict[str, Any]:
    """Dotted ``key: value`` pairs as a nested mapping; where ``shared`` says so, the previous pair's value
    object is used again, so that ``yaml.safe_dump`` writes an anchor and an alias."""
    out: dict[str, Any] = {}
    previous: Any = None
    for (key, value), share in zip(pairs, shared, strict=False):
        if share and isinstance(previous, (list, dict)):
            value = previous
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
        previous = value
    return out


recipe_docs = st.builds(
    nest, st.lists(st.tuples(keys, values), max_size=8), st.lists(st.booleans(), max_size=8)
)


def bomb(levels: int, width: int, key: str) -> str:
    """width**levels strings once expanded, as a list under the dotted ``key``."""
    parts = key.split(".")
    lines = [" " * (2 * i) + f"{part}:" for i, part in enumerate(parts)]
    pad = " " * (2 * len(parts))
    lines += [pad + "- &a0 [" + ", ".join(['"x"'] * width) + "]"]
    lines += [pad + f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return repr(doc)


recipe_bytes = st.one_of(
    st.builds(
        lambda d, enc: dump(d).encode(enc, "replace"),
        recipe_docs,
        st.sampled_from(["utf-8", "utf-16", "latin-1"]),
    ),  # fmt: skip
    st.builds(
        lambda n, w, k: bomb(n, w, k).encode(),
        st.integers(1, 10),
        st.integers(1, 10),
        st.sampled_from(["train.trainable", "conversion.jet_layers", "description", "x.y.z"]),
    ),
    st.binary(max_size=300),
    st.builds(lambda d, junk: dump(d).encode() + junk, recipe_docs, st.binary(max_size=20)),
)


# ------------------------------------------------------------------------------------------------------------
# overrides and command lines

override_values = st.one_of(values.map(lambda v: dump(v).strip()), texts)
# keys of the schema with values of about the right type: most of these resolve (exit 0)
typed = {
    "sleep.passes": st.integers(-1, 5),
    "sleep.window": st.integers(-1, 64),
    "sleep.eviction": st.sampled_from(["hard", "sliding", "soft"]),
    "train.steps": st.integers(-1, 10**12),
    "train.batch_size": st.integers(0, 8),
    "train.optimizer.adamw_lr": st.floats(allow_nan=True, allow_infinity=True),
    "train.optimizer.muon_lr": st.floats(-1, 20),
    "train.optimizer.adamw_betas": st.lists(st.floats(-1, 2), max_size=3),
    "train.trainable": st.lists(st.text(alphabet="*._ab", max_size=6), max_size=3),
    "data.test_size": st.floats(0, 5),
    "sleep.passes_schedule": st.lists(st.fixed_dictionaries({"step": st.integers(-1, 9),
                                                             "passes": st.integers(0, 4)}), max_size=3),
    "description": texts,
}  # fmt: skip
typed_overrides = st.sampled_from(sorted(typed)).flatmap(
    lambda k: typed[k].map(lambda v, k=k: f"{k}={dump(v).strip().removesuffix('...').strip()}")
)
overrides = st.one_of(
    typed_overrides,
    typed_overrides,
    st.builds(
        lambda k, sep, v: f"{k}{sep}{v}", keys, st.sampled_from(["=", "=", "", " = "]), override_values
    ),
)
WORKSPACE_PATHS = ["runs/tiny/convert", "runs/tiny/warmup", "exported", "data/rule110", "a-file", "nope",
                   "bad/nan", "bad/pickle", "bad/bad-json", "empty.jsonl", "latin1.txt", "", "/",
                   "."]  # fmt: skip
option_values = st.one_of(
    st.sampled_from(WORKSPACE_PATHS),
    st.integers(-(2**40), 2**70).map(str),
    st.integers(-2, 6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    texts,
)
# commands fuzzed, and what every argv of theirs ends with: a dry run, or a generation kept short
COMMANDS: dict[tuple[str, ...], list[str]] = {
    ("train",): ["--dry-run"],
    ("warmup",): ["--dry-run"],
    ("eval",): ["--dry-run"],
    ("export",): ["--dry-run"],
    ("convert",): ["--dry-run"],
    ("generate",): ["--max-new-tokens", "2", "--device", "cpu"],
    ("recipes", "show"): [],
    ("recipes", "validate"): [],
    ("data", "rule110"): ["--dry-run"],
}
NEVER = {"--compile", "--nproc", "--push-to-hub", "--token", "--max-new-tokens", "--device"}  # slow or remote


def command_options(path: tuple[str, ...]) -> list[Any]:
    """The click options of ``sleepify PATH`` (looked up the way the CLI does, lazily)."""
    import click

    from sleepify.cli.main import cli

    command: Any = cli
    ctx = click.Context(cli)
    for name in path:
        command = command.get_command(ctx, name)
    return [p for p in command.params if isinstance(p, click.Option) and not set(p.opts) & NEVER]


# a command line that runs: half the examples start from it and add options to it
VALID: dict[tuple[str, ...], list[str]] = {
    ("train",): ["runs/tiny/convert", "--data", "data/rule110"],
    ("warmup",): ["runs/tiny/convert", "--data", "data/rule110"],
    ("eval",): ["runs/tiny/warmup", "--data", "data/rule110"],
    ("export",): ["runs/tiny/warmup", "--out", "elsewhere"],
    ("convert",): ["builtin:gdn-hybrid-4-tiny"],
    ("generate",): ["exported", "--prompt", "0110"],
    ("recipes", "show"): ["paper/rule110"],
    ("recipes", "validate"): ["paper/rule110"],
    ("data", "rule110"): ["--n-train", "4", "--n-test", "2"],
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    path = draw(st.sampled_from(sorted(COMMANDS)))
    argv = list(path)
    if draw(st.booleans()):
        argv += VALID[path]
    elif draw(st.booleans()):
        argv.append(draw(st.sampled_from(WORKSPACE_PATHS)))
    options = command_options(path)
    for option in draw(st.lists(st.sampled_from(options), max_size=5)) if options else []:
        argv.append(draw(st.sampled_from(option.opts)))
        if not option.is_flag:
            argv.append(draw(option_values))
    argv += draw(st.lists(overrides, max_size=2))
    return argv + COMMANDS[path]


# ------------------------------------------------------------------------------------------------------------
# data files

columns = st.sampled_from(["text", "prompt", "answer", "completion", "question", "messages", "input_ids",
                           "loss_mask", "bucket"]) | st.text(max_size=8)  # fmt: skip
cells = st.one_of(
    texts,
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(0, 300), max_size=6),
    st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "x"]), "content": texts}),
        max_size=3,
    ),  # fmt: skip
)
line_texts = st.one_of(st.text(alphabet="01 \n", max_size=30), texts, st.none(), st.integers(0, 9))
rows = st.one_of(
    st.lists(st.dictionaries(columns, cells, max_size=4), max_size=8),
    st.lists(st.fixed_dictionaries({"text": line_texts}), min_size=2, max_size=8),
    st.lists(st.fixed_dictionaries({"prompt": line_texts, "answer": line_texts}), min_size=2, max_size=8),
)


def write_rows(folder: Path, table: list[dict[str, Any]], kind: str, encoding: str, junk: bytes) -> Path:
    """``table`` as a .jsonl / .csv / .parquet file in ``folder`` (a table pyarrow cannot type is written
    as JSON lines); ``junk`` is appended to text files, ``encoding`` is theirs."""
    import csv
    import io
    import json

    path = folder / f"data.{kind}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist(table), path)
            return path
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            path, kind = folder / "data.jsonl", "jsonl"
    if kind == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table)
    else:
        buf = io.StringIO()
        names = list(dict.fromkeys(k for row in table for k in row))
        writer = csv.DictWriter(buf, fieldnames=names)
        writer.writeheader()
        writer.writerows(table)
        text = buf.getvalue()
    path.write_bytes(text.encode(encoding, "surrogatepass") + junk)
    return path


data_files = st.tuples(
    rows,
    st.sampled_from(["jsonl", "csv", "parquet"]),
    st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32"]),
    st.one_of(st.just(b""), st.binary(max_size=12), st.just(b"{not json\n")),
)


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.reliability.fuzz --examples N [pytest args]``: the long run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property (default 2000)")
    args, rest = parser.parse_known_args(argv)
    os.environ["HYPOTHESIS_PROFILE"] = "long"
    os.environ["FUZZ_EXAMPLES"] = str(args.examples)
    import pytest

    return pytest.main([str(Path(__file__).with_name("test_fuzz.py")), "-q", "-p", "no:cacheprovider", *rest])


if __name__ == "__main__":
    sys.exit(main())
