"""The data stage (``sleepify data TASK``, :func:`sleepify.make_data`): generate a task's rows (Rule 110,
Depo, GSM-Infinite) or tokenize any dataset with a text and an answer field (``prepare``), and write the
dataset folder (``train`` / ``test`` splits, ``meta.json`` with the tokenizer) that ``--data`` takes.

The generators and the row format are :mod:`sleepify.data`; this module picks the tokenizer, runs the
generator and writes the folder. :func:`plan_data` checks the task and ``out`` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.errors import SleepifyError, did_you_mean
from sleepify.fsutil import refuse_inputs

__all__ = ["TASKS", "DataResult", "plan_data", "run_data"]

TASKS = ("rule110", "depo", "gsm-infinite", "prepare")


@dataclass
class DataResult:
    """What :func:`run_data` wrote: the folder and the rows per split."""

    out: Path
    rows: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"wrote {self.out}: train {self.rows.get('train', 0)} rows, test {self.rows.get('test', 0)} rows"
        )


def plan_data(task: str, out: str | Path, *, overwrite: bool = False, **params: Any) -> str:
    """Check ``task`` and ``out`` (one line and nothing written when either is wrong); return what
    :func:`run_data` would write, as text."""
    from sleepify.data.common import check_out, hub_offline

    if task not in TASKS:
        raise SleepifyError(
            f"unknown data task '{task}'{did_you_mean(task, TASKS)}; tasks: {', '.join(TASKS)}"
        )
    if task == "gsm-infinite" and params.get("from_hub") and hub_offline():
        from sleepify.data import gsm_infinite

        raise gsm_infinite.hub_unreachable(params["from_hub"], "offline mode")
    check_out(str(out), overwrite)
    inputs = {"--dataset": params.get("dataset"), "--tokenizer": params.get("tokenizer_name")}
    refuse_inputs(Path(out), inputs)
    lines = [f"data {task}: would write {out} (nothing written)"]
    lines += [f"  {k}: {v}" for k, v in params.items()]
    return "\n".join(lines)


def _rule110(
    seed: int,
    progress: bool,
    n_train: int = 10_000,
    n_test: int = 1_000,
    t_values: str = "32",
    width: int = 24,
) -> tuple[Any, Any, Any, str | None]:
    from sleepify.data import rule110
    from sleepify.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    splits, meta = rule110.generate(
        n_train, n_test, t_values, seed, width=width, tokenizer=tok, progress=progress
    )
    return splits, meta, tok, "char"


def _depo(
    seed: int,
    progress: bool,
    n_train: int = 10_000,
    n_test: int = 1_000,
    max_nodes: int = 75,
    min_nodes: int = 3,
    n_queries: int = 10,
    max_k: int = 16,
    test_k: str | None = None,
    cycle_tokens: int | None = None,
    query_tokens: int | None = None,
    arrow: str = "",
    edge_sep: str = "",
) -> tuple[Any, Any, Any, str | None]:
    from sleepify.data import depo
    from sleepify.data.common import parse_int_list
    from sleepify.data.tokenizer import build_char_tokenizer

    cfg = depo.DepoConfig(
        max_nodes=max_nodes,
        min_nodes=min_nodes,
        n_queries=n_queries,
        max_k=max_k,
        test_ks=parse_int_list(test_k, "--test-k") if test_k else None,
        cycle_tokens=cycle_tokens,
        query_tokens=query_tokens,
        arrow=arrow,
        edge_sep=edge_sep,
    )
    tok = build_char_tokenizer()
    splits, meta = depo.generate(n_train, n_test, seed, config=cfg, tokenizer=tok, progress=progress)
    return splits, meta, tok, "char"


def _gsm(
    seed: int,
    progress: bool,
    n_train: int = 1_000,
    n_test: int = 200,
    min_ops: int = 1,
    max_ops: int = 8,
    min_tokens: int = 2000,
    max_tokens: int = 3300,
    max_value: int = 99,
    tokenizer_name: str | None = None,
    from_hub: str | None = None,
    text_field: str = "problem",
    answer_field: str = "solution",
    bucket_field: str = "op",
    answer_regex: str = r"(-?\d+)",
) -> tuple[Any, Any, Any, str | None]:
    from sleepify.data import gsm_infinite
    from sleepify.data.prepare import prepare
    from sleepify.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    if from_hub:
        hint = " — drop --from-hub: the built-in gsm-infinite generator works offline"
        splits, meta = prepare(
            from_hub, text_field=text_field, answer_field=answer_field, tokenizer=tok,
            bucket_field=bucket_field, answer_regex=answer_regex, seed=seed, progress=progress,
            hub_hint=hint, task="gsm-infinite (hub)",
        )  # fmt: skip
    else:
        splits, meta = gsm_infinite.generate(
            n_train, n_test, seed, min_ops=min_ops, max_ops=max_ops, min_tokens=min_tokens,
            max_tokens=max_tokens, max_value=max_value, tokenizer=tok, progress=progress,
        )  # fmt: skip
    return splits, meta, tok, tokenizer_name


def _prepare(
    seed: int,
    progress: bool,
    *,
    dataset: str,
    text_field: str,
    answer_field: str,
    tokenizer_name: str | None = None,
    bucket_field: str | None = None,
    answer_regex: str | None = None,
    sep: str = " ",
    config_name: str | None = None,
    test_size: float = 0.1,
    limit: int | None = None,
) -> tuple[Any, Any, Any, str | None]:
    from sleepify.data.prepare import prepare
    from sleepify.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    splits, meta = prepare(
        dataset, text_field=text_field, answer_field=answer_field, tokenizer=tok, bucket_field=bucket_field,
        answer_regex=answer_regex, sep=sep, config=config_name, test_size=test_size, seed=seed,
        limit=limit, progress=progress,
    )  # fmt: skip
    return splits, meta, tok, tokenizer_name


_BUILDERS: dict[str, Callable[..., tuple[Any, Any, Any, str | None]]] = {
    "rule110": _rule110,
    "depo": _depo,
    "gsm-infinite": _gsm,
    "prepare": _prepare,
}


def run_data(
    task: str,
    out: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **params: Any,
) -> DataResult:
    """Build ``task``'s rows with ``params`` (the command's options, e.g. ``n_train=``, ``t_values=``) and
    write the dataset folder ``out`` (published atomically); returns what was written."""
    from sleepify.data.common import tokenizer_meta, write_dataset

    plan_data(task, out, overwrite=overwrite, **params)
    if not progress:
        import datasets

        datasets.disable_progress_bars()
    splits, meta, tok, tokenizer_name = _BUILDERS[task](seed, progress, **params)
    meta = {**meta, "tokenizer": tokenizer_meta(tok, tokenizer_name)}
    dd = write_dataset(splits, str(out), meta, tok, overwrite=overwrite)
    return DataResult(Path(out), {name: dd[name].num_rows for name in ("train", "test") if name in dd})
