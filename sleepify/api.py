"""The Python API: every stage of the pipeline as a function (docs/python-api.md).

``import sleepify`` exposes these lazily (``sleepify.train(...)``) without importing torch; the
``sleepify`` command is a thin layer over them. Each returns what it produced: a model folder, an
evaluation report, a generation result, a Hub URL. Messages go through :mod:`logging` (logger
``sleepify``); call ``logging.basicConfig(level=logging.INFO)`` to see them outside the CLI.

Recipes and overrides work as on the command line: ``recipe`` is a name or YAML file (or a list, stacked
left to right), ``overrides`` a list of ``"key.sub=value"`` strings or a ``{"key.sub": value}`` dict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("sleepify")

__all__ = ["convert", "evaluate", "export", "generate", "plan", "push", "train", "warmup"]

Overrides = Sequence[str] | Mapping[str, Any]


def _overrides(overrides: Overrides | None, **shorthands: Any) -> list[str]:
    """``key=value`` strings; shorthands (``N``, ``data`` ...) come last and win, as flags do on the CLI."""
    if overrides is None:
        items: list[str] = []
    elif isinstance(overrides, Mapping):
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    else:
        items = [str(o) for o in overrides]
    return items + [f"{k}={json.dumps(v)}" for k, v in shorthands.items() if v is not None]


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
) -> Path:
    """Convert ``model`` (alias such as ``ouro-1.4b``, Hub id, local folder, or ``builtin:NAME``) into a
    sleep-capable hybrid; returns the model folder (default ``runs/<name>/convert``, which
    ``runs/latest`` then points at).

    Example::

        folder = sleepify.convert("builtin:gdn-hybrid-4-tiny")
    """
    from sleepify.convert import convert as run_convert

    result = run_convert(
        model,
        recipe=_recipes(recipe) or None,
        out_dir=out,
        overwrite=overwrite,
        overrides=_overrides(overrides),
        log=log.info,
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
    run): for ``"convert"`` a :class:`~sleepify.convert.ConvertResult` with ``dry_run=True`` (the plan, block
    table, parameter growth and report; only the config is read), otherwise a
    :class:`~sleepify.training.stage.StagePlan` (resolved recipe, data source and format, run folder).

    Example::

        print(sleepify.plan("convert", "builtin:gdn-hybrid-4-tiny").report)
        print(sleepify.plan("train", data="notes.jsonl", N=2).describe())
    """
    if stage == "convert":
        from sleepify.convert import convert as run_convert

        convert_overrides = _overrides(overrides, **{"sleep.passes": N, "sleep.window": L})
        return run_convert(
            None if model is None else str(model),
            recipe=_recipes(recipe) or None,
            out_dir=out,
            overwrite=overwrite,
            overrides=convert_overrides,
            log=None,
            runs_root=runs_root,
            dry_run=True,
        )
    from sleepify.training.stage import plan_stage

    shorthands = {
        "sleep.passes": N,
        "sleep.window": L,
        "data.path": None if data is None else str(data),
        "train.steps": steps,
        "run.overwrite": True if overwrite else None,
    }
    return plan_stage(
        stage,
        model,
        recipes=_recipes(recipe),
        overrides=_overrides(overrides, **shorthands),
        out=out,
        resume=resume,
        runs_root=runs_root,
    )


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
    from sleepify.training.stage import run_stage

    p = plan("warmup", model, data, N=N, L=L, steps=steps, recipe=recipe, overrides=overrides, out=out,
             resume=resume, overwrite=overwrite, runs_root=runs_root)  # fmt: skip
    return run_stage(p, progress=progress)


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
    from sleepify.training.stage import run_stage

    p = plan("train", model, data, N=N, L=L, steps=steps, recipe=recipe, overrides=overrides, out=out,
             resume=resume, overwrite=overwrite, runs_root=runs_root)  # fmt: skip
    return run_stage(p, progress=progress)


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
    from sleepify.evaluation import run_eval

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
    from sleepify.export import export as run_export

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
    per prompt). ``on_token(prompt_index, token_id, text_piece)`` streams the text as it comes.

    Example::

        result = sleepify.generate("exported", "0110=", max_new_tokens=4, greedy=True)
        print(result.texts[0])
    """
    from sleepify.generation_stage import generate_text

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return generate_text(
        model_folder(model, runs_root), prompts, max_new_tokens=max_new_tokens, greedy=greedy,
        temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop, batch_size=batch_size,
        passes=N, backend=backend, device=device, dtype=dtype, compile=compile, on_token=on_token,
    )  # fmt: skip


def model_folder(source: str | Path | None, runs_root: str | Path = "runs") -> Path | str:
    """A local model folder (a stage folder with ``model/``; None = ``runs/latest``) or a Hub id ORG/NAME."""
    from sleepify.evaluation import resolve_model_dir

    text = None if source is None else str(source)
    if text and not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/")):
        return text  # a Hub repo id: transformers downloads it
    return resolve_model_dir(text, Path(runs_root))


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
    from sleepify.hub import push as run_push

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
