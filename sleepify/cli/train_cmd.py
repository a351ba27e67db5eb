"""``sleepify warmup`` and ``sleepify train``: sleep fine-tuning of a converted model.

Both read the model folder of the previous stage (an argument, or the one ``runs/latest`` points at),
stack the recipe stored there under the user's recipes and overrides, train with the loop in
``sleepify/training/loop.py`` and write ``<run>/<stage>/model`` (a loadable HF folder), checkpoints,
metrics and the resolved recipe; ``runs/latest`` then points at the new model, so the stages chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import click

from sleepify.cli.common import recipe_options
from sleepify.config import load_recipe
from sleepify.config.loader import RESOLVED_RECIPE_FILE, read_provenance, sets_key
from sleepify.errors import RecipeError, SleepifyError


def warmup_trainable(model: object) -> list[str]:
    """What warm-up trains unless the recipe sets ``train.trainable``: the inserted Jet layers (whole
    blocks) of a converted model; for a model without insertions (Jet-Nemotron, built-in models) its
    SSM mixers (every JetBlock / GatedDeltaNet module)."""
    from sleepify.layers.gated_deltanet import GatedDeltaNet
    from sleepify.layers.jet_block import JetBlock

    names = [n for n, _ in model.named_parameters()]  # type: ignore[attr-defined]
    if any(n.startswith("jet_layers.") for n in names):
        return ["jet_layers.*"]
    mixers = [n for n, m in model.named_modules() if isinstance(m, (JetBlock, GatedDeltaNet))]  # type: ignore[attr-defined]
    if not mixers:
        raise SleepifyError("warmup: the model has no SSM layers to warm up; set train.trainable")
    return [f"{n}.*" for n in mixers]


def run_stage(
    stage: str,
    source: str | None,
    recipes: tuple[str, ...],
    overrides: tuple[str, ...],
    shorthands: dict[str, object],
    out: str | None,
    resume: bool | str,
    runs_root: Path = Path("runs"),
    progress: bool = True,
) -> Path:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import sleepify  # noqa: F401  (registers the model types)
    from sleepify.convert import LATEST_POINTER
    from sleepify.evaluation import resolve_model_dir
    from sleepify.training.loop import init_distributed, train
    from sleepify.training.parallel import full_model_state
    from sleepify.training.passes import PassesSchedule

    model_dir = resolve_model_dir(source, runs_root)  # a converted model folder, a stage folder, runs/latest
    stored = model_dir / RESOLVED_RECIPE_FILE
    if not stored.is_file() and (model_dir.parent / RESOLVED_RECIPE_FILE).is_file():
        stored = model_dir.parent / RESOLVED_RECIPE_FILE
    refs = ([str(stored)] if stored.is_file() else []) + list(recipes)
    extra = [f"{k}={v}" for k, v in shorthands.items() if v is not None]
    restore: list[str] = []
    provenance = read_provenance(stored) if stored.is_file() else {}
    if provenance.get("stage") == "warmup" and stage != "warmup":
        # what warm-up forced (hard eviction, Jet-only training) does not carry over to the next stage,
        # unless the user's own recipes or overrides say so
        for key, value in provenance.get("restore", {}).items():
            if not sets_key(recipes, key) and not any(o.startswith(f"{key}=") for o in overrides):
                restore.append(f"{key}={json.dumps(value)}")
    header: dict[str, object] = {}
    if stage == "warmup":
        before = load_recipe(refs, [*overrides, *extra]).recipe
        header["restore"] = {
            "sleep.eviction": before.sleep.eviction,
            "train.trainable": before.train.trainable,
        }
        extra.append("sleep.eviction=hard")  # warm-up always evicts hard (paper §6.4)
    resolved = load_recipe(refs, [*restore, *overrides, *extra])
    rec = resolved.recipe
    if not rec.data.path:
        raise RecipeError("data.path is not set: pass --data DIR (a folder written by `sleepify data`)")
    # runs/<name>/convert (a model folder) or runs/<name>/<stage>/model -> runs/<name>/<this stage>
    name_dir = model_dir.parent.parent if model_dir.name == "model" else model_dir.parent
    run_dir = Path(out) if out else name_dir / stage
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 touches the run folder
    restart = False
    if resume == "auto":  # continue if a checkpoint exists, else start fresh (a relaunched preempted job)
        from sleepify.training.checkpoint import latest_checkpoint

        restart = latest_checkpoint(run_dir) is None
        if restart and is_main and run_dir.is_dir():
            # what a killed attempt logged before its first checkpoint is discarded with it
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    resume = bool(resume) and not restart
    if (
        is_main
        and run_dir.exists()
        and any(run_dir.iterdir())
        and not (resume or restart or rec.run.overwrite)
    ):
        raise SleepifyError(f"{run_dir} exists and is not empty: pass --resume, --overwrite or another --out")
    if is_main and rec.run.overwrite and run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    distributed = init_distributed()
    try:
        data = datasets.load_from_disk(rec.data.path)
    except FileNotFoundError as err:
        raise SleepifyError(f"data.path {rec.data.path}: not a dataset folder ({err})") from None
    split = data[rec.data.train_split] if isinstance(data, datasets.DatasetDict) else data
    if rec.data.max_examples:
        split = split.select(range(min(rec.data.max_examples, len(split))))
    split = split.with_format(None)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[rec.model.dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if stage == "warmup" and rec.train.trainable == ["*"]:  # the recipe did not choose: SSM layers only
        rec.train.trainable = warmup_trainable(model)
    cfg = model.config
    cfg.sleep_window, cfg.sleep_passes, cfg.eviction = rec.sleep.window, rec.sleep.passes, rec.sleep.eviction
    cfg.conv_state = rec.sleep.conv_state
    if torch.cuda.is_available():
        model.cuda()
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    if is_main:
        resolved.save(run_dir, stage=stage, extra=header)

    def loss_fn(m, batch):  # noqa: ANN001, ANN202
        return m(
            **batch,
            logits="none",  # the loss is computed window by window; no B x T x V logits are kept
            checkpoint_windows=rec.sleep.checkpoint_windows,
            truncate_passes=rec.sleep.truncate_passes,
            truncate_windows=rec.sleep.truncate_windows,
        ).loss

    schedule = PassesSchedule.from_recipe(rec.sleep)  # None: every step uses sleep.passes
    train(
        model,
        split,
        rec.train,
        run_dir,
        pad_id=pad_id,
        loss_fn=loss_fn,
        resume=resume,
        progress=progress,
        passes_schedule=schedule,
    )
    weights = full_model_state(model)  # under FSDP every rank takes part in gathering the full weights
    final = run_dir / "model"
    if is_main:
        model.save_pretrained(final, state_dict=weights)
        # a model folder may have no tokenizer (built-in char models keep theirs with the data)
        with contextlib.suppress(OSError, ValueError):
            AutoTokenizer.from_pretrained(model_dir).save_pretrained(final)
        resolved.save(final, stage=stage, extra=header)
        runs_root.mkdir(parents=True, exist_ok=True)
        (runs_root / LATEST_POINTER).write_text(str(final.resolve()) + "\n")
    if distributed:
        # every rank leaves together and closes the process group: a rank exiting with it open while
        # rank 0 still writes can abort in gloo's teardown ("terminate called without an active exception")
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return final


def launch_torchrun(nproc: int, args: list[str]) -> None:
    """``sleepify STAGE --nproc K ...`` = ``torchrun --nproc-per-node K -m sleepify STAGE ...``."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    click.echo("launching: torchrun " + " ".join(cmd[3:] + ["-m", "sleepify", *args]))
    result = subprocess.run([*cmd, "-m", "sleepify", *args], check=False)
    if result.returncode:
        raise SleepifyError(f"torchrun exited with code {result.returncode} (see the ranks' output above)")


def _stage_command(stage: str, doc: str) -> click.Command:
    @click.command(stage, help=doc)
    @click.argument("model", required=False)
    @recipe_options
    @click.option("--N", "passes", type=int, help="sleep passes per window (sleep.passes)")
    @click.option("--L", "window", type=int, help="window length (sleep.window)")
    @click.option("--data", "data_path", help="dataset folder (data.path)")
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
        type=int,
        default=1,
        show_default=True,
        help="processes on this machine (re-launches itself through torchrun; DDP, or FSDP2 with "
        "train.distributed=fsdp)",
    )
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
    ) -> None:
        if model is not None and "=" in model and not Path(model).exists():
            overrides, model = (model, *overrides), None  # `sleepify train key=value` (no model folder)
        if nproc > 1 and "WORLD_SIZE" not in os.environ:
            args = [stage, *([model] if model else []), *[a for r in recipes for a in ("-r", r)]]
            for flag, value in (("--N", passes), ("--L", window), ("--data", data_path), ("--steps", steps),
                                ("--out", out)):  # fmt: skip
                if value is not None:
                    args += [flag, str(value)]
            args += ["--resume", resume] if resume else []
            args += ["--overwrite"] if overwrite else []
            launch_torchrun(nproc, [*args, *overrides])
            return
        shorthands = {
            "sleep.passes": passes,
            "sleep.window": window,
            "data.path": data_path,
            "train.steps": steps,
            "run.overwrite": "true" if overwrite else None,
        }
        final = run_stage(stage, model, recipes, overrides, shorthands, out, resume or False)
        click.echo(f"{stage} done: model in {final}")

    return command


warmup = _stage_command(
    "warmup",
    "SSM-only warm-up: train only the inserted Jet layers (or the SSM layers of a model without "
    "insertions; train.trainable overrides), hard eviction, N sleep passes.",
)
train = _stage_command("train", "Full sleep fine-tuning with N sleep passes at every window boundary.")
