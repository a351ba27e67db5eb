"""``sleepify eval [RUN_OR_MODEL ...] --data DIR``: accuracy and loss per bucket (docs/evaluation.md)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sleepify.cli.common import count, dry_run_option, echo_info, progress_enabled, verbosity_options

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def split_args(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Model folders and ``key.sub=value`` overrides share the positional arguments; an existing path
    is always a model, anything else shaped ``key=value`` an override."""
    sources: list[str] = []
    overrides: list[str] = []
    for arg in args:
        (overrides if OVERRIDE.match(arg) and not Path(arg).exists() else sources).append(arg)
    return sources, overrides


def parse_passes(value: str | None) -> list[int]:
    from sleepify.evaluation.metrics import EvalError

    if not value:
        return []
    try:
        items = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise EvalError(
            f"--N must be an integer or a comma-separated list such as 1,2,4, got '{value}'"
        ) from None
    if not items or min(items) < 1:
        raise EvalError(f"--N values must be >= 1, got '{value}'")
    return list(dict.fromkeys(items))


@click.command("eval")
@click.argument("args", nargs=-1, metavar="[RUN_OR_MODEL]... [KEY.SUB=VALUE]...")
@click.option(
    "--data",
    "data_path",
    help="A `sleepify data` folder, a saved dataset, a .jsonl/.json/.parquet/.csv file or a Hub dataset id "
    "(default: data.path, the data the model was trained on; its held-out rows are scored).",
)
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: <first run>/eval).")
@click.option("--split", help="Held-out split to score (default: data.eval_split = test).")
@click.option("--batch-size", type=count(1), help="Rows per forward (default: eval.batch_size = 16).")
@click.option(
    "--max-examples", type=count(1), help="Score only the first N rows (default: eval.max_examples)."
)
@click.option(
    "--N", "passes", help="Sleep passes to evaluate with instead of the trained N; a list (1,2,4) sweeps."
)
@click.option(
    "-r",
    "--recipe",
    "recipes",
    multiple=True,
    metavar="NAME|FILE",
    help="Recipe name or YAML file stacked on each model's stored recipe; repeat to stack.",
)
@click.option("--device", help="torch device (default: cuda if available, else cpu).")
@click.option("--no-plot", is_flag=True, help="Do not write eval.png.")
@click.option(
    "--tasks",
    help="lm-evaluation-harness tasks (comma-separated) instead of the held-out split: the harness's "
    "numbers per task and N (needs sleepify[eval]).",
)
@click.option("--include-path", type=click.Path(), help="With --tasks: a folder of task YAMLs of your own.")
@click.option("--limit", type=int, help="With --tasks: at most this many documents per task.")
@dry_run_option
@verbosity_options
def eval_cmd(
    args: tuple[str, ...],
    data_path: str | None,
    out: str | None,
    split: str | None,
    batch_size: int | None,
    max_examples: int | None,
    passes: str | None,
    recipes: tuple[str, ...],
    device: str | None,
    no_plot: bool,
    tasks: str | None,
    include_path: str | None,
    limit: int | None,
    dry_run: bool,
) -> None:
    """Exact-match accuracy and mean answer-token loss per difficulty bucket on the held-out split (task,
    prompt/answer and chat data), or loss and perplexity (plain text).

    RUN_OR_MODEL is a model folder, a stage run folder holding model/, or nothing for runs/latest; give
    several (e.g. runs trained with N = 1, 2, 4) to compare them in one table and plot. Each row is run
    through the model's forward exactly as in training: the context is slept on and evicted, and the
    answers are predicted in one wake pass (teacher-forced greedy exact match). Writes eval.json, eval.md
    and eval.png. With --tasks, lm-evaluation-harness tasks instead (one model; --N 1,2,4 gives a table
    task x N in eval.json / eval.md).
    """
    import sleepify.api as api
    from sleepify.evaluation.metrics import EvalError
    from sleepify.evaluation.report import format_table

    sources, overrides = split_args(args)
    if batch_size is not None and batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise EvalError(f"--max-examples must be >= 1, got {max_examples}")
    if tasks is not None:
        _harness(sources, overrides, tasks, passes, data_path, out, batch_size, limit, include_path, device,
                 dry_run)  # fmt: skip
        return
    if dry_run:
        click.echo(api.plan_eval(sources or None, data_path, N=parse_passes(passes), split=split,
                                 recipe=list(recipes), overrides=list(overrides)))  # fmt: skip
        return
    report = api.evaluate(
        sources or None,
        data_path,
        out=out,
        split=split,
        batch_size=batch_size,
        max_examples=max_examples,
        N=parse_passes(passes),
        recipe=list(recipes),
        overrides=list(overrides),
        device=device,
        progress=progress_enabled(),
        plot=not no_plot,
    )
    click.echo(format_table(report))  # the result itself: shown under --quiet too
    echo_info(f"wrote {report['out']}")


def _harness(
    sources: list[str],
    overrides: list[str],
    tasks: str,
    passes: str | None,
    data_path: str | None,
    out: str | None,
    batch_size: int | None,
    limit: int | None,
    include_path: str | None,
    device: str | None,
    dry_run: bool,
) -> None:
    """``sleepify eval MODEL --tasks ...``: lm-evaluation-harness across N."""
    import sleepify.api as api
    from sleepify.evaluation.harness import format_harness_table
    from sleepify.evaluation.metrics import EvalError

    if data_path is not None or overrides:
        raise EvalError("--tasks runs the harness's own tasks: drop --data and KEY=VALUE overrides")
    if len(sources) > 1:
        raise EvalError("--tasks evaluates one model (compare N with --N 1,2,4)")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    names = [t for t in tasks.replace(" ", "").split(",") if t]
    if dry_run:
        n = ", ".join(map(str, parse_passes(passes))) or "the trained N"
        click.echo(f"would run lm-evaluation-harness tasks {', '.join(names)} with N = {n}")
        return
    report = api.evaluate_tasks(
        sources[0] if sources else None, names, N=parse_passes(passes), batch_size=batch_size or 1,
        limit=limit, include_path=include_path, out=out, device=device,
    )  # fmt: skip
    click.echo(format_harness_table(report))
    echo_info(f"wrote {report['out']}")
