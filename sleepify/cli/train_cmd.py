"""``sleepify warmup`` and ``sleepify train``: argument parsing and printing over :func:`sleepify.warmup` /
:func:`sleepify.train` (the stage itself is :mod:`sleepify.stages.train`). Launching ``torchrun`` for
``--nproc`` and the resume command printed after an interruption live here: they are about the command
line."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import click

from sleepify.cli.common import (
    count,
    dry_run_option,
    echo_info,
    progress_enabled,
    recipe_options,
    verbosity_options,
)
from sleepify.errors import Interrupted, SleepifyError

log = logging.getLogger("sleepify")


def launch_torchrun(nproc: int, args: list[str]) -> None:
    """``sleepify STAGE --nproc K ...`` = ``torchrun --nproc-per-node K -m sleepify STAGE ...``."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    log.info("launching: torchrun %s", " ".join(cmd[3:] + ["-m", "sleepify", *args]))
    result = subprocess.run([*cmd, "-m", "sleepify", *args], check=False)
    if result.returncode:
        raise SleepifyError(f"torchrun exited with code {result.returncode} (see the ranks' output above)")


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The command that resumes an interrupted run: this one, with ``--resume`` and its ``--out``."""
    args = [a for a in argv if a not in ("--resume", "--overwrite", "latest", "auto")]
    if "--out" not in args:
        args += ["--out", str(run_dir)]
    return shlex.join(["sleepify", *args, "--resume"])


def _stage_command(stage: str, doc: str) -> click.Command:
    @click.command(stage, help=doc)
    @click.argument("model", required=False)
    @recipe_options
    @click.option("--N", "passes", type=int, help="sleep passes per window (sleep.passes)")
    @click.option("--L", "window", type=int, help="window length (sleep.window)")
    @click.option(
        "--data",
        "data_path",
        help="data.path: a `sleepify data` folder, a saved dataset, a .jsonl/.json/.parquet/.csv file or a "
        "Hub dataset id (default: the previous stage's)",
    )
    @click.option("--steps", type=int, help="optimizer steps (train.steps)")
    @click.option("--out", help="run folder for this stage (default: next to the previous stage)")
    @click.option(
        "--resume",
        type=click.Choice(["latest", "auto"]),
        is_flag=False,
        flag_value="latest",
        default=None,
        help="continue from the latest checkpoint in the run folder (an error if there is none); "
        "`--resume auto`: continue if there is one, else start fresh (relaunching a preempted job)",
    )
    @click.option("--overwrite", is_flag=True, help="replace a non-empty run folder")
    @click.option(
        "--nproc",
        type=count(1),
        default=1,
        show_default=True,
        help="processes on this machine (re-launches itself through torchrun; DDP, or FSDP2 with "
        "train.distributed=fsdp)",
    )
    @click.option(
        "--memory",
        "memory",
        help="with --dry-run: the memory to fit (e.g. 80GiB, 24GB; default: this device's): the plan then "
        "names the largest N and micro-batch that fit",
    )
    @click.option(
        "--probe",
        is_flag=True,
        help="with --dry-run: time one optimizer step of the real model (needs the weights) to predict the "
        "time per step",
    )
    @click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
    @dry_run_option
    @verbosity_options
    def command(
        model: str | None,
        recipes: tuple[str, ...],
        overrides: tuple[str, ...],
        passes: int | None,
        window: int | None,
        data_path: str | None,
        steps: int | None,
        out: str | None,
        resume: str | None,
        overwrite: bool,
        nproc: int,
        memory: str | None,
        probe: bool,
        as_json: bool,
        dry_run: bool,
    ) -> None:
        import sleepify.api as api

        if model is not None and "=" in model and not Path(model).exists():
            overrides, model = (model, *overrides), None  # `sleepify train key=value` (no model folder)
        args = dict(N=passes, L=window, steps=steps, recipe=list(recipes), overrides=list(overrides), out=out,
                    resume=resume or False, overwrite=overwrite)  # fmt: skip
        plan = api.plan(
            stage, model, data_path, **args
        )  # recipe, data and run folder checked: nothing written
        if dry_run:
            _print_dry_run(plan, nproc, memory, probe, as_json)
            return
        if memory or probe or as_json:
            raise click.UsageError("--memory, --probe and --json go with --dry-run")
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            from sleepify.training.parallel import check_fsdp_supported

            rec = plan.resolved.recipe
            check_fsdp_supported(rec.train.distributed, rec.sleep.checkpoint_windows)  # once, not per rank
            argv = [stage, *([model] if model else []), *[a for r in recipes for a in ("-r", r)]]
            for flag, value in (("--N", passes), ("--L", window), ("--data", data_path), ("--steps", steps),
                                ("--out", out)):  # fmt: skip
                if value is not None:
                    argv += [flag, str(value)]
            argv += ["--resume", resume] if resume else []
            argv += ["--overwrite"] if overwrite else []
            launch_torchrun(nproc, [*argv, *overrides])
            return
        try:
            final = api.run(plan, progress=progress_enabled())
        except Interrupted as err:
            if getattr(err, "headline", None) is None:
                raise
            cmd = resume_command(sys.argv[1:], err.run_dir)
            raise Interrupted(f"{err.headline}; resume with: {cmd}", err.exit_code) from None
        echo_info(f"{stage} done: model in {final}")

    return command


def _print_dry_run(plan: object, nproc: int, memory: str | None, probe: bool, as_json: bool) -> None:
    """The stage plan, the memory plan (and what fits ``memory``), the time per step, the recipe."""
    import json

    from transformers import AutoConfig

    from sleepify.fsutil import human_size
    from sleepify.memory_plan import device_memory, fits, parse_memory
    from sleepify.stages.train import plan_memory_for, probe_step

    mem = plan_memory_for(plan, world=nproc)
    budget = parse_memory(memory) if memory else device_memory()[1]
    room = fits(mem, AutoConfig.from_pretrained(plan.model_dir), budget)
    timing = None
    if probe:
        timing = probe_step(plan)
    if as_json:
        out = {
            "stage": plan.stage,
            "model": str(plan.model_dir),
            "run_dir": str(plan.run_dir),
            "memory": {**mem.to_dict(), **room},
            "time_per_step_s": timing,
            "recipe": plan.resolved.to_dict(),
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(plan.describe())
    for line in mem.lines():
        click.echo(line)
    where = f"--memory {memory}" if memory else f"this {mem.settings['device']}"
    verdict = "fits" if room["fits"] else "does NOT fit"
    click.echo(
        f"  {verdict} {human_size(budget)} ({where}); largest N that fits: {room['largest_passes']}, "
        f"largest micro-batch: {room['largest_micro_batch']}"
    )
    if timing is None:
        click.echo("  time per step: no probe (pass --probe to time one step of the real model)")
    else:
        click.echo(f"  time per step: {timing:.1f} s (one step measured by --probe)")
    click.echo("# resolved recipe")
    click.echo(plan.resolved.to_yaml(), nl=False)


warmup = _stage_command(
    "warmup",
    "SSM-only warm-up: train only the inserted Jet layers (or the SSM layers of a model without "
    "insertions; train.trainable overrides), hard eviction, N sleep passes.",
)
train = _stage_command("train", "Full sleep fine-tuning with N sleep passes at every window boundary.")
