"""``sleepify data TASK --out DIR``: generate a task dataset or prepare any dataset (docs/data.md)."""

from __future__ import annotations

import click

from sleepify.cli.common import FiniteFloat, count
from sleepify.errors import did_you_mean

TASK_NAMES = ("rule110", "depo", "gsm-infinite", "prepare")


class DataGroup(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            from sleepify.data.common import DataError

            raise DataError(
                f"unknown data task '{name}'{did_you_mean(name, self.list_commands(ctx))}; "
                f"tasks: {', '.join(TASK_NAMES)}"
            )
        return super().resolve_command(ctx, args)


@click.group(cls=DataGroup)
def data() -> None:
    """Generate a task dataset (rule110, depo, gsm-infinite) or prepare any dataset (prepare).

    Writes a datasets.DatasetDict (train/test, disjoint) to --out, with meta.json and the tokenizer.
    """


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    from sleepify.cli.common import progress_enabled

    return value or not progress_enabled()  # the global `sleepify -q` too


def _dry_run(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    ctx.meta["sleepify.dry_run"] = value


def _run(task: str, out: str, seed: int, overwrite: bool, quiet: bool, **params) -> None:
    """``--dry-run``: print what would be written; else build and write the dataset (through the API)."""
    from sleepify import api

    if click.get_current_context().meta.get("sleepify.dry_run"):
        click.echo(api.plan_data(task, out, overwrite=overwrite, seed=seed, **params))
        return
    result = api.make_data(task, out, seed=seed, overwrite=overwrite, progress=not quiet, **params)
    click.echo(result.describe())


def _common(fn):
    fn = click.option("--dry-run", is_flag=True, expose_value=False, callback=_dry_run,
                      help="Print the task and its parameters; write nothing.")(fn)  # fmt: skip
    fn = click.option("-q", "--quiet", is_flag=True, callback=_quiet, help="No progress bar.")(fn)
    fn = click.option("--overwrite", is_flag=True, help="Replace an existing non-empty --out.")(fn)
    fn = click.option("--seed", type=count(0), default=0, show_default=True, help="Random seed.")(fn)
    fn = click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")(fn)
    return fn


def _counts(n_train: int, n_test: int):
    def deco(fn):
        counts = count(0)
        fn = click.option("--n-test", type=counts, default=n_test, show_default=True,
                          help="Test examples (0: a train-only dataset).")(fn)  # fmt: skip
        fn = click.option("--n-train", type=counts, default=n_train, show_default=True,
                          help="Train examples (0: an evaluation-only dataset).")(fn)  # fmt: skip
        return fn

    return deco


@data.command("rule110")
@_common
@_counts(10_000, 1_000)
@click.option("--t", "t_values", default="32", show_default=True, help="Rollout steps, e.g. 0,4,8,16,32.")
@click.option("--width", type=count(1), default=24, show_default=True, help="Cells per state (= window L).")
def rule110_cmd(out, seed, overwrite, quiet, **params) -> None:
    """Four random Rule 110 states; answers = first bit of each after t steps (bucket = t)."""
    _run("rule110", out, seed, overwrite, quiet, **params)


@data.command("depo")
@_common
@_counts(10_000, 1_000)
@click.option("--max-nodes", type=count(1), default=75, show_default=True)
@click.option("--min-nodes", type=count(1), default=3, show_default=True)
@click.option("--n-queries", type=count(1), default=10, show_default=True)
@click.option("--max-k", type=count(1), default=16, show_default=True, help="Train k uniform in [1, max-k].")
@click.option("--test-k", default=None, help="Test k values (default: powers of two <= max-k).")
@click.option(
    "--cycle-tokens", type=count(1), default=None, help="Left-padded cycle length (default 4*max-nodes)."
)
@click.option(
    "--query-tokens", type=count(1), default=None, help="Right-padded query part (default 7*n-queries)."
)
@click.option("--arrow", default="", help="Text between an edge's two names (default none).")
@click.option("--edge-sep", default="", help="Text after each edge (default none).")
def depo_cmd(out, seed, overwrite, quiet, **params) -> None:
    """Shuffled directed cycle + k-hop queries (bucket = k of each query)."""
    _run("depo", out, seed, overwrite, quiet, **params)


@data.command("gsm-infinite")
@_common
@_counts(1_000, 200)
@click.option("--min-ops", type=count(1), default=1, show_default=True)
@click.option("--max-ops", type=count(1), default=8, show_default=True)
@click.option(
    "--min-tokens", type=count(1), default=2000, show_default=True, help="Shortest problem (tokens)."
)
@click.option(
    "--max-tokens", type=count(1), default=3300, show_default=True, help="Longest problem (tokens)."
)
@click.option(
    "--max-value", type=count(0), default=99, show_default=True, help="Values stay in [0, max-value]."
)
@click.option("--tokenizer", "tokenizer_name", default=None, help="Local path or Hub id (default: char).")
@click.option(
    "--from-hub", default=None, help="Load a published GSM-Infinite dataset instead (needs the Hub)."
)
@click.option("--text-field", default="problem", show_default=True, help="With --from-hub.")
@click.option("--answer-field", default="solution", show_default=True, help="With --from-hub.")
@click.option("--bucket-field", default="op", show_default=True, help="With --from-hub.")
@click.option("--answer-regex", default=r"(-?\d+)", show_default=True, help="With --from-hub: last match.")
def gsm_cmd(out, seed, overwrite, quiet, **params) -> None:
    """Long arithmetic word problems with distractors, question first (bucket = ops)."""
    _run("gsm-infinite", out, seed, overwrite, quiet, **params)


@data.command("prepare")
@_common
@click.option(
    "--dataset", required=True, help="Local .json/.jsonl/.parquet/.csv, saved dataset, or Hub name."
)
@click.option("--text-field", required=True, help="Column with the prompt text.")
@click.option("--answer-field", required=True, help="Column with the answer (loss mask on its tokens).")
@click.option("--tokenizer", "tokenizer_name", default=None, help="Local path or Hub id (default: char).")
@click.option("--bucket-field", default=None, help="Integer column used as the difficulty bucket.")
@click.option("--answer-regex", default=None, help="Take the last match (group 1) of this regex as answer.")
@click.option("--sep", default=" ", show_default=True, help="Text between prompt and answer.")
@click.option("--config", "config_name", default=None, help="Dataset config name (Hub datasets).")
@click.option(
    "--test-size",
    type=FiniteFloat(min=0, min_open=True),
    default=0.1,
    show_default=True,
    help="Fraction (<1) or count.",
)
@click.option("--limit", type=count(1), default=None, help="At most this many rows per split.")
def prepare_cmd(out, seed, overwrite, quiet, **params) -> None:
    """Tokenize any dataset with a text and an answer field into the same row format."""
    _run("prepare", out, seed, overwrite, quiet, **params)
