"""The Python API: every stage of the pipeline as a function (docs/python-api.md).

A thin, documented façade over :mod:`sleepify.stages` (one module per stage, each with ``plan_*`` and
``run_*``): it turns the caller's loose arguments (strings, lists, dicts) into the stages' typed inputs
(paths, a :class:`~sleepify.config.overrides.RunOverrides`) and nothing else. ``import sleepify``
exposes these lazily (``sleepify.train(...)``) without importing torch; the ``sleepify`` command only
parses strings, calls these and prints. Each returns what it produced: a model folder, an
evaluation report, a generation result, a Hub URL. Messages go through :mod:`logging` (logger
``sleepify``); call ``logging.basicConfig(level=logging.INFO)`` to see them outside the CLI.

Recipes and overrides work as on the command line: ``recipe`` is a name or YAML file (or a list, stacked
left to right), ``overrides`` a list of ``"key.sub=value"`` strings or a ``{"key.sub": value}`` dict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sleepify.config.overrides import RunOverrides

log = logging.getLogger("sleepify")

__all__ = [
    "bench",
    "convert",
    "evaluate",
    "evaluate_tasks",
    "export",
    "generate",
    "make_data",
    "model_folder",
    "plan",
    "plan_data",
    "plan_eval",
    "plan_export",
    "plan_push",
    "plot",
    "push",
    "run",
    "train",
    "warmup",
]

Overrides = Sequence[str] | Mapping[str, Any] | RunOverrides


def _overrides(overrides: Overrides | None, **flags: Any) -> RunOverrides:
    """Typed overrides: ``overrides`` first, then the flags (``N``, ``data`` ...), which win as on the CLI."""
    return RunOverrides.of(overrides, **flags)


def _recipes(recipe: str | Path | Sequence[str | Path] | None) -> list[str]:
    if recipe is None:
        return []
    if isinstance(recipe, (str, Path)):
        return [str(recipe)]
    return [str(r) for r in recipe]


def convert(
    model: str | None = None,
    *,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    log_to: Callable[[str], None] | None = None,
) -> Path:
    """Convert ``model`` (alias such as ``ouro-1.4b``, Hub id, local folder, or ``builtin:NAME``) into a
    sleep-capable hybrid; returns the model folder (default ``runs/<name>/convert``, which
    ``runs/latest`` then points at). The report goes to the ``sleepify`` logger, or to ``log_to``.

    Example::

        folder = sleepify.convert("builtin:gdn-hybrid-4-tiny")
    """
    from sleepify.stages.convert import run_convert

    result = run_convert(
        model,
        recipe=_recipes(recipe) or None,
        out_dir=out,
        overwrite=overwrite,
        overrides=_overrides(overrides),
        log=log.info if log_to is None else log_to,
        runs_root=runs_root,
    )
    return Path(result.out_dir)


def plan(
    stage: str,
    model: str | Path | None = None,
    data: str | Path | None = None,
    *,
    N: int | None = None,
    L: int | None = None,
    steps: int | None = None,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
) -> Any:
    """What ``convert`` / ``warmup`` / ``train`` with these arguments would do, with nothing written (the dry
    run): for ``"convert"`` a :class:`~sleepify.stages.convert.ConvertResult` with ``dry_run=True`` (the plan,
    block table, parameter growth and report; only the config is read), otherwise a
    :class:`~sleepify.stages.train.StagePlan` (resolved recipe, data source and format, run folder) that
    :func:`run` carries out.

    Example::

        print(sleepify.plan("convert", "builtin:gdn-hybrid-4-tiny").report)
        print(sleepify.plan("train", data="notes.jsonl", N=2).describe())
    """
    if stage == "convert":
        from sleepify.stages.convert import plan_convert

        return plan_convert(
            None if model is None else str(model),
            recipe=_recipes(recipe) or None,
            out_dir=out,
            overwrite=overwrite,
            overrides=_overrides(overrides, N=N, L=L),
            runs_root=runs_root,
        )
    from sleepify.stages.train import plan_train

    flags = _overrides(overrides, N=N, L=L, data=data, steps=steps, overwrite=True if overwrite else None)
    return plan_train(stage, model, recipes=_recipes(recipe), overrides=flags, out=out, resume=resume,
                      runs_root=runs_root)  # fmt: skip


def run(plan: Any, *, progress: bool = True) -> Path:
    """Carry out a warmup / train plan from :func:`plan` (e.g. after showing ``plan.describe()``); returns
    the trained model folder."""
    from sleepify.stages.train import run_train

    return run_train(plan, progress=progress)


def warmup(
    model: str | Path | None = None,
    data: str | Path | None = None,
    *,
    N: int | None = None,
    L: int | None = None,
    steps: int | None = None,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
    runs_root: str | Path = "runs",
) -> Path:
    """SSM-only warm-up of a converted model (its inserted Jet layers, hard eviction, ``N`` sleep passes);
    returns the trained model folder (``<run>/warmup/model``). ``model``: a model folder, a stage run
    folder, or None for ``runs/latest``. ``data``: anything ``--data`` takes (docs/data.md).

    Example::

        folder = sleepify.warmup(data="data/rule110", N=2, steps=20)
    """
    p = plan("warmup", model, data, N=N, L=L, steps=steps, recipe=recipe, overrides=overrides, out=out,
             resume=resume, overwrite=overwrite, runs_root=runs_root)  # fmt: skip
    return run(p, progress=progress)


def train(
    model: str | Path | None = None,
    data: str | Path | None = None,
    *,
    N: int | None = None,
    L: int | None = None,
    steps: int | None = None,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    out: str | Path | None = None,
    resume: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
    runs_root: str | Path = "runs",
) -> Path:
    """Full sleep fine-tuning with ``N`` sleep passes at every window boundary; returns the trained model
    folder (``<run>/train/model``). Without ``data`` the previous stage's ``data.path`` is used (logged).

    Example::

        folder = sleepify.train(data="my_corpus.jsonl", N=4, steps=200)
    """
    p = plan("train", model, data, N=N, L=L, steps=steps, recipe=recipe, overrides=overrides, out=out,
             resume=resume, overwrite=overwrite, runs_root=runs_root)  # fmt: skip
    return run(p, progress=progress)


def evaluate(
    model: str | Path | Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    *,
    N: int | Sequence[int] | None = None,
    split: str | None = None,
    batch_size: int | None = None,
    max_examples: int | None = None,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    plot: bool = True,
    progress: bool = True,
    runs_root: str | Path = "runs",
) -> dict[str, Any]:
    """Score one or several models on the held-out rows of ``data``: exact match and answer loss per
    difficulty bucket (task / prompt-answer / chat data), or loss and perplexity (plain text). ``N`` (an
    int or a list) evaluates with other sleep passes than the trained ones. Writes ``eval.json``,
    ``eval.md`` and ``eval.png`` into ``out`` (default ``<run>/eval``); returns the report with ``"out"``
    (that folder) added.

    Example::

        report = sleepify.evaluate("runs/gdn-hybrid-4-tiny/train", data="data/rule110", N=[1, 2])
        print(report["results"][0]["overall"])
    """
    from sleepify.stages.eval import run_eval

    models = [model] if model is None or isinstance(model, (str, Path)) else list(model)
    passes = [N] if isinstance(N, int) else list(N or [])
    report, out_dir = run_eval(
        [None if m is None else str(m) for m in models],
        None if data is None else str(data),
        out=out,
        split=split,
        batch_size=batch_size,
        max_examples=max_examples,
        passes=passes,
        recipes=_recipes(recipe),
        overrides=_overrides(overrides),
        device=device,
        runs_root=runs_root,
        progress=progress,
        plot=plot,
        log=log.info,
    )
    return {**report, "out": str(out_dir)}


def evaluate_tasks(
    model: str | Path | None,
    tasks: Sequence[str],
    *,
    N: int | Sequence[int] | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    include_path: str | Path | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    runs_root: str | Path = "runs",
) -> dict[str, Any]:
    """lm-evaluation-harness ``tasks`` on ``model`` once per sleep-pass count in ``N`` (default: the
    trained N): the harness's numbers as a table task x N in ``eval.json`` / ``eval.md`` (needs the
    ``sleepify[eval]`` extra; ``include_path``: a folder of task YAMLs of your own).

    Example::

        report = sleepify.api.evaluate_tasks("exports/tiny", ["hellaswag"], N=[1, 2, 4], batch_size=8)
    """
    from sleepify.evaluation.harness import run_harness

    passes = [N] if isinstance(N, int) else list(N or [])
    return run_harness(
        model, list(tasks), passes, out=out, batch_size=batch_size, limit=limit,
        include_path=include_path, device=device, runs_root=runs_root,
    )  # fmt: skip


def plot(
    runs: str | Path | Sequence[str | Path],
    out: str | Path = "curves.png",
    labels: Sequence[str] | None = None,
) -> Path:
    """Training curves (loss, learning rate, gradient norm against the step) of one or several runs
    overlaid in one PNG: a run folder (its train, else warmup stage) or a stage folder holding
    ``metrics.jsonl``. Returns the PNG's path.

    Example::

        sleepify.api.plot(["runs/r110-n1", "runs/r110-n4"], "n1-vs-n4.png")
    """
    from sleepify.training.curves import plot_curves

    return plot_curves([runs] if isinstance(runs, (str, Path)) else list(runs), out, labels)


def export(
    run: str | Path | None = None,
    out: str | Path = "exported",
    *,
    dtype: str | None = None,
    max_shard_size: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Path:
    """Export a run (a run folder, a stage's model folder, or None for ``runs/latest``) as a clean Hugging
    Face folder with a model card; returns ``out``. ``push_to_hub="ORG/NAME"`` (or a bare ``NAME``, the
    token owner's namespace) uploads it afterwards, with ``private`` / ``token`` / ``revision`` /
    ``create_pr`` as :func:`push` takes them.

    Example::

        folder = sleepify.export("runs/gdn-hybrid-4-tiny/train", "exported")
    """
    from sleepify.stages.export import run_export

    result = run_export(
        run,
        out,
        dtype=dtype,
        max_shard_size=max_shard_size,
        push_to_hub=push_to_hub,
        private=private,
        overwrite=overwrite,
        runs_root=runs_root,
        log=log.info,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )
    return Path(result.out_dir)


def generate(
    model: str | Path | None,
    prompt: str | Sequence[str],
    *,
    max_new_tokens: int = 128,
    greedy: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    N: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
    on_token: Callable[[int, int, str | None], None] | None = None,
    runs_root: str | Path = "runs",
) -> Any:
    """Sleep-capable streaming generation from a model folder (an export, a stage's model, None for
    ``runs/latest``) or a Hub id; returns a :class:`~sleepify.generation.GenerationResult` (``.texts``: one
    per prompt). ``on_token(prompt_index, token_id, text_piece)`` streams the text as it comes. ``N`` is
    written into the model's config, as train and eval hand it over.

    Example::

        result = sleepify.generate("exported", "0110=", max_new_tokens=4, greedy=True)
        print(result.texts[0])
    """
    from sleepify.stages.generate import run_generate

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return run_generate(
        model_folder(model, runs_root), prompts, max_new_tokens=max_new_tokens, greedy=greedy,
        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, batch_size=batch_size,
        passes=N, backend=backend, device=device, dtype=dtype, compile=compile, on_token=on_token,
    )  # fmt: skip


def model_folder(source: str | Path | None, runs_root: str | Path = "runs") -> Path | str:
    """A local model folder (a stage folder with ``model/``; None = ``runs/latest``) or a Hub id ORG/NAME."""
    from sleepify.runs import model_folder as find

    return find(source, runs_root)


def push(
    folder: str | Path,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload an exported folder to the Hub model repo ``repo`` (``ORG/NAME``, or a bare ``NAME`` in the
    token owner's namespace; created if needed); the token is ``token``, ``HF_TOKEN`` or the saved login.
    ``private`` makes a new repo, or an existing public one, private; ``revision`` is the branch (created if
    needed); ``create_pr`` opens a pull request instead of committing. Returns the repo URL (the pull
    request's with ``create_pr``).

    Example::

        url = sleepify.push("exported", "me/tiny-sleeper", private=True)
    """
    from sleepify.stages.push import run_push

    return run_push(
        folder,
        repo,
        private=private,
        revision=revision,
        token=token,
        commit_message=message,
        create_pr=create_pr,
        log=log.info,
    )


def plan_data(task: str, out: str | Path, *, overwrite: bool = False, **params: Any) -> str:
    """What :func:`make_data` would write, as text; checks ``task`` and ``out`` and writes nothing."""
    from sleepify.stages.data import plan_data as plan_task

    return plan_task(task, out, overwrite=overwrite, **params)


def make_data(
    task: str,
    out: str | Path,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **params: Any,
) -> Any:
    """Write a dataset folder for ``--data``: ``task`` is ``rule110``, ``depo``, ``gsm-infinite`` or
    ``prepare``; ``params`` are the options of ``sleepify data TASK`` as keywords (``n_train=1000``,
    ``t_values="0,4,8"``, ``dataset=`` / ``text_field=`` / ``answer_field=`` for ``prepare``). Returns a
    :class:`~sleepify.stages.data.DataResult` (``.out``, ``.rows`` per split). (``sleepify.data`` is the
    package of generators, hence the name.)

    Example::

        sleepify.make_data("rule110", "data/rule110", n_train=200, n_test=50, t_values="0,4")
    """
    from sleepify.stages.data import run_data

    return run_data(task, out, seed=seed, overwrite=overwrite, progress=progress, **params)


def bench(
    model: str | Path | None = None,
    *,
    contexts: Sequence[int] | None = None,
    quick: bool = False,
    steps: int | None = None,
    N: Sequence[int] = (1, 2, 4),
    repeats: int | None = None,
    device: str = "auto",
    compile: bool = False,
    log_to: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Decode latency, memory and sleep cost of a sleep-capable model (a folder, None = a small converted
    Qwen2 built in a temp folder) against its base with a full KV cache; returns the numbers
    (``sleepify.stages.bench.format_report`` renders them).

    Example::

        res = sleepify.bench(quick=True)
    """
    from sleepify.stages.bench import plan_bench, run_bench

    settings = plan_bench(contexts=contexts, quick=quick, steps=steps, repeats=repeats, device=device)
    return run_bench(
        None if model is None else model_folder(model),
        passes=list(N),
        log=log_to,
        compile=compile,
        **settings,
    )


def plan_eval(
    model: str | Path | Sequence[str | Path] | None = None,
    data: str | Path | None = None,
    *,
    N: int | Sequence[int] | None = None,
    split: str | None = None,
    recipe: str | Path | Sequence[str | Path] | None = None,
    overrides: Overrides | None = None,
    runs_root: str | Path = "runs",
) -> str:
    """What :func:`evaluate` would score, as text; nothing is loaded or written."""
    from sleepify.stages.eval import plan_eval as plan_stage

    models = [model] if model is None or isinstance(model, (str, Path)) else list(model)
    passes = [N] if isinstance(N, int) else list(N or [])
    return plan_stage([None if m is None else str(m) for m in models], None if data is None else str(data),
                      split=split, passes=passes, recipes=_recipes(recipe), overrides=_overrides(overrides),
                      runs_root=runs_root)  # fmt: skip


def plan_export(
    run: str | Path | None = None,
    out: str | Path = "exported",
    *,
    dtype: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """What :func:`export` would do, as text; nothing is written and the Hub is not contacted."""
    from sleepify.stages.export import plan_export as plan_stage

    return plan_stage(
        run, out, dtype=dtype, push_to_hub=push_to_hub, overwrite=overwrite, runs_root=runs_root,
        private=private, revision=revision, create_pr=create_pr,
    )  # fmt: skip


def plan_push(
    folder: str | Path,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """What :func:`push` would upload, as text; the Hub is not contacted."""
    from sleepify.stages.push import plan_push as plan_stage

    return plan_stage(folder, repo, private=private, revision=revision, create_pr=create_pr)
