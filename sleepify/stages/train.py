"""The train stage (and warmup: train with the warm-up recipe): sleep fine-tuning of a converted model
(``sleepify.warmup`` / ``sleepify.train`` and the commands of the same names).

A stage reads the model folder of the previous stage (given, or the one ``runs/latest`` points at),
stacks the recipe stored there under the caller's recipes and overrides, and trains with the loop in
:mod:`sleepify.training.loop`. It writes ``<run>/<stage>/model`` (a loadable HF folder), checkpoints,
metrics and the resolved recipe; ``runs/latest`` then points at the new model, so the stages chain.

:func:`plan_train` does everything that can fail cheaply and writes nothing (recipe, data source and
format, run folder); :func:`run_train` then tokenizes, loads the model and trains. ``--dry-run`` prints
the plan and stops. Where the folders are is :mod:`sleepify.runs`; launching ``torchrun`` and the resume
command printed after an interruption belong to the CLI (``sleepify/cli/train_cmd.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.config import load_recipe
from sleepify.config.loader import ResolvedRecipe, sets_key
from sleepify.config.overrides import RunOverrides
from sleepify.data.sources import OpenedData, load_tokenizer_for, open_data
from sleepify.errors import Interrupted, SleepifyError
from sleepify.fsutil import (
    RunLock,
    check_free_space,
    check_output_path,
    clean_stale_temps,
    publish_folder,
    refuse_inputs,
    staging,
    suppress_unless_disk_full,
    tensor_bytes,
)
from sleepify.runs import (
    TRAIN_STAGES,
    load_model,
    model_dir_of,
    point_latest,
    read_provenance,
    resolve_model_dir,
    stage_dir,
    stored_recipe,
)
from sleepify.stages.common import pad_id, quiet_library_bars

log = logging.getLogger(__name__)

STAGES = TRAIN_STAGES  # warmup is train with the warm-up recipe
CPU_FLOPS = 2e10  # rough sustained fp32 FLOP/s of a small CPU: only for the "this will be slow" notice
SLOW_SECONDS = 600


def warmup_trainable(model: Any) -> list[str]:
    """What warm-up trains unless the recipe sets ``train.trainable``: the inserted Jet layers (whole
    blocks) of a converted model; for a model without insertions (Jet-Nemotron, built-in models) its
    SSM mixers (every JetBlock / GatedDeltaNet module)."""
    from sleepify.layers.gated_deltanet import GatedDeltaNet
    from sleepify.layers.jet_block import JetBlock

    names = [n for n, _ in model.named_parameters()]
    if any(n.startswith("jet_layers.") for n in names):
        return ["jet_layers.*"]
    mixers = [n for n, m in model.named_modules() if isinstance(m, (JetBlock, GatedDeltaNet))]
    if not mixers:
        raise SleepifyError("warmup: the model has no SSM layers to warm up; set train.trainable")
    return [f"{n}.*" for n in mixers]


@dataclass
class StagePlan:
    """What a warmup / train run will do, decided before anything is written or loaded."""

    stage: str
    model_dir: Path
    run_dir: Path
    resolved: ResolvedRecipe
    data: OpenedData
    header: dict[str, Any] = field(default_factory=dict)  # extra provenance stored with the recipe
    resume: bool = False
    restart: bool = False  # resume="auto" with no checkpoint: start fresh, discard the killed attempt's logs
    data_reused: bool = False  # data.path came from the previous stage's recipe
    runs_root: Path = Path("runs")

    def describe(self) -> str:
        """The plan in a few lines (printed by ``--dry-run``, logged before a run)."""
        rec = self.resolved.recipe
        train = rec.train
        lines = [
            f"{self.stage}: {self.model_dir} -> {model_dir_of(self.run_dir)}",
            f"  {self.data.describe()}"
            + (" [reused from the previous stage's recipe]" if self.data_reused else ""),
            f"  sleep: N={rec.sleep.passes}, L={rec.sleep.window}, eviction={rec.sleep.eviction}",
            f"  train: {train.steps} steps x batch {train.batch_size}, trainable {', '.join(train.trainable)}"
            + (
                " (the SSM layers, chosen once the model loads)"
                if self.stage == "warmup" and train.trainable == ["*"]
                else ""
            ),
            f"  resume: {'from the latest checkpoint' if self.resume else 'no (fresh run)'}",
        ]
        return "\n".join(lines)


def _config_sleep_settings(model_dir: Path, recipes: Sequence[str], overrides: RunOverrides) -> list[str]:
    """``sleep.window / passes / eviction`` from ``config.json`` as overrides, for a model folder that
    has no stored recipe (the schema's defaults, e.g. a 2048-token window, would silently replace the
    model's own settings); the caller's recipes and overrides still win."""
    from sleepify.sleep import CONFIG_FIELDS  # torch: only where a model folder lacks its recipe

    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return []
    out = []
    for field_name in ("window", "passes", "eviction"):
        key, value = f"sleep.{field_name}", config.get(CONFIG_FIELDS[field_name])
        if value is not None and not (sets_key(recipes, key) or overrides.sets(key)):
            out.append(f"{key}={json.dumps(value)}")
    if out:
        log.warning("%s has no recipe.yaml: using the sleep settings of its config.json (%s)", model_dir,
                    ", ".join(out))  # fmt: skip
    return out


def plan_train(
    stage: str,
    model: str | Path | None = None,
    *,
    recipes: Sequence[str] = (),
    overrides: RunOverrides | Sequence[str] = (),
    out: str | Path | None = None,
    resume: bool | str = False,
    runs_root: str | Path = "runs",
) -> StagePlan:
    """Resolve the recipe, open the data (format and splits) and choose the run folder; write nothing.

    ``model``: a converted model folder, a stage run folder holding ``model/``, or None for
    ``runs/latest``. ``resume``: False, True or "latest" (an error without a checkpoint) or "auto".
    Every problem (recipe, data, an occupied run folder) raises a one-line :class:`SleepifyError`.
    """
    if stage not in STAGES:
        raise SleepifyError(f"unknown stage '{stage}': {', '.join(STAGES)}")
    runs_root = Path(runs_root)
    model_dir = resolve_model_dir(model, runs_root)  # a converted model folder, a stage folder, runs/latest
    stored = stored_recipe(model_dir)
    refs = ([str(stored)] if stored else []) + list(recipes)
    overrides = RunOverrides.of(overrides)
    restore: list[str] = []
    if stored is None:  # a model folder without recipe.yaml: its config.json holds the sleep settings
        restore += _config_sleep_settings(model_dir, recipes, overrides)
    provenance = read_provenance(stored) if stored else {}
    if provenance.get("stage") == "warmup" and stage != "warmup":
        # what warm-up forced (hard eviction, Jet-only training) does not carry over to the next stage,
        # unless the user's own recipes or overrides say so
        for key, value in provenance.get("restore", {}).items():
            if not sets_key(recipes, key) and not overrides.sets(key):
                restore.append(f"{key}={json.dumps(value)}")
    header: dict[str, Any] = {}
    forced: list[str] = []
    if stage == "warmup":
        before = load_recipe(refs, overrides).recipe
        header["restore"] = {
            "sleep.eviction": before.sleep.eviction,
            "train.trainable": before.train.trainable,
        }
        forced.append("sleep.eviction=hard")  # warm-up always evicts hard (paper §6.4)
    resolved = load_recipe(refs, [*restore, *overrides.texts(), *forced])
    rec = resolved.recipe
    chosen = sets_key(recipes, "data.path") or overrides.sets("data.path")
    data_reused = bool(rec.data.path and not chosen)
    opened = open_data(rec.data)  # a bad dataset stops here: before the model loads, nothing written
    run_dir = stage_dir(model_dir, stage, out)
    restart = False
    if resume == "auto":  # continue if a checkpoint exists, else start fresh (a relaunched preempted job)
        from sleepify.training.checkpoint import latest_checkpoint

        restart = latest_checkpoint(run_dir) is None
    resume = bool(resume) and not restart
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 touches the run folder
    check_output_path(run_dir)
    if (
        is_main
        and run_dir.exists()
        and any(run_dir.iterdir())
        and not (resume or restart or rec.run.overwrite)
    ):
        raise SleepifyError(f"{run_dir} exists and is not empty: pass --resume, --overwrite or another --out")
    if resume and not restart:
        from sleepify.training.checkpoint import latest_checkpoint

        if latest_checkpoint(run_dir) is None:  # refused before anything is written
            raise SleepifyError(
                f"nothing to resume: {run_dir} holds no complete checkpoint (start without --resume, "
                "or use --resume auto)"
            )
    if rec.run.overwrite and not resume and run_dir.exists():
        # --overwrite must not replace what the run is about to read
        inputs = {"the model": model_dir, "--data": rec.data.path, "the recipe": resolved.sources}
        refuse_inputs(run_dir, inputs)
    return StagePlan(
        stage=stage,
        model_dir=model_dir,
        run_dir=run_dir,
        resolved=resolved,
        data=opened,
        header=header,
        resume=resume,
        restart=restart,
        data_reused=data_reused,
        runs_root=runs_root,
    )


def _check_vocab(rows: Any, model_dir: Path, what: str) -> None:
    """Token ids beyond the model's vocabulary mean the data was tokenized for another model."""
    import pyarrow.compute as pc

    try:
        vocab = int(json.loads((model_dir / "config.json").read_text()).get("vocab_size") or 0)
    except (OSError, json.JSONDecodeError):
        return
    table = rows.with_format("arrow")[:]
    top = pc.max(pc.list_flatten(table.column("input_ids"))).as_py()
    if vocab and top is not None and top >= vocab:
        raise SleepifyError(
            f"{what} holds token ids up to {top} but the model in {model_dir} has a vocabulary of {vocab}: "
            "the data was tokenized with another tokenizer"
        )


def _slow_on_cpu_notice(model: Any, rows: Any, plan: StagePlan) -> str | None:
    """A notice when the recipe's settings will take long on this CPU (a rough FLOP count)."""
    import torch

    if torch.cuda.is_available():
        return None
    rec = plan.resolved.recipe
    sample = rows.select(range(min(64, rows.num_rows))).with_format(None)["input_ids"]
    tokens = sum(len(r) for r in sample) / max(len(sample), 1)
    params = sum(p.numel() for p in model.parameters())
    flops = 6 * params * tokens * rec.train.batch_size * rec.train.steps * max(1, rec.sleep.passes)
    seconds = flops / (CPU_FLOPS * max(1, torch.get_num_threads()) / 2)
    if seconds < SLOW_SECONDS:
        return None
    return (
        f"note: {plan.stage} runs on CPU and these settings ({params / 1e6:.1f}M parameters, "
        f"{rec.train.steps} steps x batch {rec.train.batch_size} x ~{tokens:.0f} tokens, "
        f"N={rec.sleep.passes}) "
        f"will take roughly {seconds / 60:.0f} min or more; for a CPU run pick a CPU-sized recipe "
        "(-r repro/rule110-cpu, -r scratch/gdn-hybrid-4-tiny) or lower --steps / train.batch_size"
    )


def run_train(plan: StagePlan, *, progress: bool = True) -> Path:
    """Tokenize the data, load the model, train, write ``<run>/model``; returns that folder.

    The run folder is locked while the stage runs (:class:`sleepify.fsutil.RunLock`); with ``--overwrite``
    the new run is built in a temporary sibling and replaces the old folder only once it is complete; the
    final model is published in one step and ``runs/latest`` is pointed at it last."""
    rec = plan.resolved.recipe
    run_dir, model_dir = plan.run_dir, plan.model_dir
    if not progress:
        quiet_library_bars()
    if plan.data_reused:
        log.info("data: %s (from the previous stage's recipe; pass --data to change it)", rec.data.path)
    log.info(plan.data.describe())
    tokenizer = load_tokenizer_for(model_dir, plan.data)
    rows = plan.data.rows("train", tokenizer, progress=progress)
    if rec.data.max_examples:
        rows = rows.select(range(min(rec.data.max_examples, len(rows))))
    if len(rows) == 0:
        raise SleepifyError(
            f"--data {rec.data.path} has no training examples: regenerate it (e.g. `sleepify data ... "
            "--n-train 1000`) or point --data at another dataset"
        )
    _check_vocab(rows, model_dir, f"--data {rec.data.path}")
    rows = rows.with_format(None)

    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 touches the run folder
    lock = RunLock(run_dir).acquire() if is_main else None
    try:
        return _train_and_publish(plan, rows, tokenizer, progress, is_main)
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM turned into one by the CLI
        raise _interrupted(plan, err) from None
    finally:
        if lock is not None:
            lock.release()


def _interrupted(plan: StagePlan, err: KeyboardInterrupt) -> Interrupted:
    """The one line for a stopped run: the last good checkpoint (``Interrupted.checkpoint``, from which the
    CLI builds the command that resumes it)."""
    from sleepify.training.checkpoint import latest_checkpoint

    code = getattr(err, "exit_code", 130)
    what = "terminated" if code == 143 else "interrupted"
    if plan.resolved.recipe.run.overwrite and not plan.resume:
        return Interrupted(f"{plan.stage} {what}: nothing was replaced, {plan.run_dir} is as before", code)
    last = latest_checkpoint(plan.run_dir)
    if last is None:
        return Interrupted(f"{plan.stage} {what} before its first checkpoint: start it again", code)
    headline = f"{plan.stage} {what}; the last good checkpoint is {last}"
    stopped = Interrupted(f"{headline}; resume with resume=True, out={str(plan.run_dir)!r}", code)
    stopped.headline, stopped.run_dir = headline, plan.run_dir  # the CLI words the resume command
    return stopped


def _train_and_publish(plan: StagePlan, rows: Any, tokenizer: Any, progress: bool, is_main: bool) -> Path:
    import torch
    from transformers import AutoTokenizer

    from sleepify.sleep import apply_sleep_settings
    from sleepify.training.loop import close_distributed, init_distributed, train
    from sleepify.training.parallel import check_fsdp_supported, full_model_state
    from sleepify.training.passes import PassesSchedule

    rec = plan.resolved.recipe
    stage, run_dir, model_dir = plan.stage, plan.run_dir, plan.model_dir
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: before anything is touched
        check_fsdp_supported(rec.train.distributed, rec.sleep.checkpoint_windows)
    if is_main:
        clean_stale_temps(run_dir)
        clean_stale_temps(model_dir_of(run_dir))
    if is_main and plan.restart and run_dir.is_dir():
        # what a killed attempt logged before its first checkpoint is discarded with it
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    replacing = rec.run.overwrite and run_dir.exists() and not plan.resume
    # --overwrite: the new run is built in a temporary sibling; the old folder is replaced at the very end
    work = staging(run_dir) if replacing and is_main else contextlib.nullcontext(run_dir)
    distributed = init_distributed()
    model = load_model(model_dir, rec.model.dtype)  # a damaged folder: one line
    if stage == "warmup" and rec.train.trainable == ["*"]:  # the recipe did not choose: SSM layers only
        rec.train.trainable = warmup_trainable(model)
    cfg = model.config
    s = rec.sleep  # N, L and the eviction reach the model through its config, as in eval and generate
    apply_sleep_settings(cfg, window=s.window, passes=s.passes, eviction=s.eviction, conv_state=s.conv_state)
    if torch.cuda.is_available():
        model.cuda()
    if is_main:
        size = tensor_bytes(model)
        # weights + optimizer state (about twice the weights) per kept checkpoint, and the final model
        need = size * (3 * max(1, rec.train.keep_checkpoints) + 1)
        check_free_space(run_dir.parent, need, f"the {stage} run")
    notice = _slow_on_cpu_notice(model, rows, plan) if is_main else None
    if notice:
        log.warning(notice)
    pad = pad_id(cfg)

    def loss_fn(m, batch):  # noqa: ANN001, ANN202
        return m(
            **batch,
            logits="none",  # the loss is computed window by window; no B x T x V logits are kept
            checkpoint_windows=rec.sleep.checkpoint_windows,
            truncate_passes=rec.sleep.truncate_passes,
            truncate_windows=rec.sleep.truncate_windows,
        ).loss

    with work as where:
        where = Path(where)

        def save_recipe() -> None:  # once a resume is known to be possible: a refused one changes nothing
            if is_main:
                plan.resolved.save(where, stage=stage, extra=plan.header)

        train(
            model, rows, rec.train, where, pad_id=pad, loss_fn=loss_fn, resume=plan.resume,
            progress=progress, desc=stage, on_start=save_recipe,
            passes_schedule=PassesSchedule.from_recipe(rec.sleep),  # None: every step uses sleep.passes
        )  # fmt: skip
        # a passes schedule leaves its last N in the config; the published model sleeps with sleep.passes
        apply_sleep_settings(cfg, passes=s.passes)
        weights = full_model_state(model)  # under FSDP every rank takes part in gathering the full weights
        if is_main:
            hint = "free some space, then run the same command with --resume (the last checkpoint is kept)"
            # built in `where` (the run folder, or its --overwrite sibling); a full disk names the final path
            with staging(model_dir_of(where), size, names=model_dir_of(run_dir), hint=hint) as tmp:
                model.save_pretrained(tmp, state_dict=weights)
                # a model folder may have no tokenizer (built-in char models keep theirs with the data)
                with suppress_unless_disk_full(OSError, ValueError, TypeError):
                    (tokenizer or AutoTokenizer.from_pretrained(model_dir)).save_pretrained(tmp)
                plan.resolved.save(tmp, stage=stage, extra=plan.header)
                publish_folder(tmp, model_dir_of(where))
            if replacing:
                publish_folder(where, run_dir)
    final = model_dir_of(run_dir)
    if is_main:
        point_latest(plan.runs_root, final)
    if distributed:
        close_distributed()
    return final


# ------------------------------------------------------------------------------------------------------------
# the dry run's memory plan and step-time probe


def _first_rows(plan: StagePlan, n: int) -> list[dict[str, Any]]:
    """The first ``n`` training rows, tokenized as the run will (the model folder's tokenizer if needed)."""
    data = plan.data
    train = data.splits["train"]
    sample = dataclasses.replace(
        data, splits={**data.splits, "train": train.select(range(min(n, len(train))))}
    )
    tokenizer = load_tokenizer_for(plan.model_dir, sample)
    return list(sample.rows("train", tokenizer, progress=False).with_format(None))


def plan_memory_for(plan: StagePlan, world: int = 1, device: str | None = None) -> Any:
    """The :class:`~sleepify.memory_plan.MemoryPlan` of a planned warmup / train run: its model's
    ``config.json`` (no weights), the resolved recipe and the lengths of the first 64 training rows (a
    sequence of 2 x L is assumed when they cannot be read), for ``world`` processes on ``device`` (default:
    CUDA when present)."""
    import math

    import torch
    from transformers import AutoConfig

    import sleepify  # noqa: F401  (registers the model types)
    from sleepify.memory_plan import plan_memory
    from sleepify.models.hybrid import SleepHybridForCausalLM

    rec = plan.resolved.recipe
    try:
        config = AutoConfig.from_pretrained(plan.model_dir)
    except (OSError, ValueError) as err:
        raise SleepifyError(f"cannot read {plan.model_dir / 'config.json'}: {err}") from None
    if getattr(config, "model_type", None) != "sleep_hybrid":
        raise SleepifyError(f"{plan.model_dir} is not a converted (sleep-capable) model")
    trainable = list(rec.train.trainable)
    if plan.stage == "warmup" and trainable == ["*"]:  # what the stage chooses once the model loads
        with torch.device("meta"):
            trainable = warmup_trainable(SleepHybridForCausalLM(config))
    notes = []
    try:
        rows = _first_rows(plan, 64)
    except (SleepifyError, OSError, ValueError, KeyError):
        rows = []
    if rows:
        seq_len = max(len(r["input_ids"]) for r in rows)
        scored = max(int(sum(r["loss_mask"])) for r in rows)
    else:
        seq_len, scored = 2 * rec.sleep.window, None
        notes.append(f"sequence length assumed 2 x L = {seq_len} (the training rows could not be read)")
    world = max(1, world)
    per_rank = max(1, rec.train.batch_size // world)
    micro = min(rec.train.micro_batch_size or per_rank, per_rank)
    memory = plan_memory(
        config,
        passes=rec.sleep.passes,
        window=rec.sleep.window,
        seq_len=seq_len,
        batch=micro,
        dtype=rec.model.dtype,
        trainable=trainable,
        scored_tokens=scored,
        checkpoint_windows=rec.sleep.checkpoint_windows,
        truncate_passes=rec.sleep.truncate_passes,
        truncate_windows=rec.sleep.truncate_windows,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        distributed=rec.train.distributed,
        world=world,
        micro_batches=math.ceil(per_rank / micro),
    )
    memory.notes[:0] = notes
    memory.settings["trainable_patterns"] = trainable
    return memory


def probe_step(plan: StagePlan) -> float:
    """Seconds of one optimizer step of ``plan``'s run, measured: the model loaded with its weights, one
    micro-batch of the first training rows through the sleep engine, backward, the optimizer step, times
    the micro-batches of a step (``--dry-run --probe``; nothing is written)."""
    import math
    import time

    import torch

    from sleepify.sleep import apply_sleep_settings
    from sleepify.training.data import collate
    from sleepify.training.optim import MuonAdamW, select_trainable

    rec = plan.resolved.recipe
    per_step = max(1, rec.train.batch_size)
    micro = min(rec.train.micro_batch_size or per_step, per_step)
    rows = _first_rows(plan, micro)
    model = load_model(plan.model_dir, rec.model.dtype)
    if torch.cuda.is_available():
        model.cuda()
    trainable = rec.train.trainable
    if plan.stage == "warmup" and trainable == ["*"]:
        trainable = warmup_trainable(model)
    select_trainable(model, trainable)
    cfg = model.config
    s = rec.sleep
    apply_sleep_settings(cfg, window=s.window, passes=s.passes, eviction=s.eviction, conv_state=s.conv_state)
    optim = MuonAdamW(model, rec.train)
    pad = pad_id(cfg)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(rows, pad).items()}
    model.train()
    start = time.perf_counter()
    out = model(**batch, logits="none", checkpoint_windows=s.checkpoint_windows,
                truncate_passes=s.truncate_passes, truncate_windows=s.truncate_windows)  # fmt: skip
    out.loss.backward()
    optim.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * math.ceil(per_step / micro)


plan_stage, run_stage = plan_train, run_train  # the names before the stages moved
