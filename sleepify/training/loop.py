"""The training loop shared by ``sleepify warmup`` and ``sleepify train``: plain PyTorch, no framework.

One optimizer step = ``batch_size`` examples (split into micro-batches for gradient accumulation and,
under ``torchrun``, across ranks), one masked cross-entropy per example computed by the sleep engine
through ``loss_fn(model, batch)``. Checkpoints are atomic; ``resume`` continues a killed run to the same
result as an uninterrupted one (same weights, optimizer, schedule, RNG and data position).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from sleepify.config.schema import TrainSection
from sleepify.errors import TrainingError, interrupts_deferred
from sleepify.sleep import apply_sleep_settings, lockstep
from sleepify.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sleepify.training.data import DataPosition, DeterministicOrder, collate, micro_batches
from sleepify.training.optim import MuonAdamW, build_schedulers, select_trainable
from sleepify.training.parallel import (
    apply_fsdp,
    barrier,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    load_full_optimizer_state,
    saved_weight_shapes,
)
from sleepify.training.passes import PassesSchedule

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def default_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    run_dir: Path | None = None


def cut_metrics(path: Path, step: int) -> None:
    """Keep only the lines of ``metrics.jsonl`` up to ``step`` (a resume from that step's checkpoint logs
    the later steps again: no duplicates, no gaps); a torn last line of a killed run is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


class MetricsLog:
    """JSON lines (always), TensorBoard (when installed and enabled) and W&B (when configured)."""

    def __init__(self, run_dir: Path, train: TrainSection, enabled: bool, resumed_at: int | None = None):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        if resumed_at is not None:
            cut_metrics(self.path, resumed_at)
        if train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides what the killed attempt logged after the checkpoint
                purge = None if resumed_at is None else resumed_at + 1
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
            except ImportError:
                self.tb = None
        if train.wandb_project:
            import wandb  # optional extra: pip install "sleepify[logging]"

            self.wandb = wandb.init(project=train.wandb_project, dir=str(run_dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _check_optimizer_params(state: dict[str, Any], model: nn.Module, ckpt: Path) -> None:
    """The checkpoint's optimizer must hold exactly the parameters trained now (same train.trainable)."""
    saved = {name for group in state["param_groups"] for name in group["params"]}
    now = {name for name, p in model.named_parameters() if p.requires_grad}
    if saved != now:
        only_saved, only_now = sorted(saved - now), sorted(now - saved)
        raise TrainingError(
            f"checkpoint {ckpt} trained other parameters than train.trainable selects now: only in the "
            f"checkpoint {only_saved[:5]}{' ...' if len(only_saved) > 5 else ''}, only now {only_now[:5]}"
            f"{' ...' if len(only_now) > 5 else ''}; resume with the run's own train.trainable"
        )


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _max_over_ranks(value: int, device: torch.device) -> int:
    return int(_all_reduce_max(torch.tensor([value], device=device)).item())


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    model: nn.Module,
    dataset: Sequence[dict[str, Any]],
    train_cfg: TrainSection,
    run_dir: str | Path,
    *,
    pad_id: int = 0,
    loss_fn: LossFn = default_loss,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
    on_start: Callable[[], None] | None = None,
    passes_schedule: PassesSchedule | None = None,
) -> TrainResult:
    """Train ``model`` in place. ``stop_after`` ends early after that many steps (tests simulate a kill);
    ``desc`` names the progress bar (the stage: warmup or train); ``on_start`` runs once the checkpoint to
    resume from has loaded (a refused resume writes nothing), before the first step.

    ``passes_schedule`` (``sleep.passes_schedule``): before every step the loop hands that step's N to the
    model the one way every command does (``sleep.apply_sleep_settings``: into ``model.config``), logs N as
    ``sleep_passes`` and keeps the schedule in the checkpoints; resuming under another schedule stops."""
    run_dir = Path(run_dir)
    rank, world = _world()
    is_main = rank == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    select_trainable(model, train_cfg.trainable)
    fsdp = world > 1 and train_cfg.distributed == "fsdp"
    expected = saved_weight_shapes(model)  # what a checkpoint of this model holds
    if fsdp:
        apply_fsdp(model)  # before the optimizer: it must hold the sharded parameters
    optim = MuonAdamW(model, train_cfg)
    schedulers = build_schedulers(optim, train_cfg)
    order = DeterministicOrder(len(dataset), train_cfg.seed)
    step = 0
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TrainingError(f"nothing to resume: {run_dir} holds no complete checkpoint")
        # under FSDP rank 0 reads the weights and optimizer state and broadcasts them (the other ranks
        # pass empty dicts); every rank reads the small rest
        full = not (fsdp and rank != 0)
        loaded = load_checkpoint(ckpt, expected, full=full)
        load_full_model_state(model, loaded.weights or {})
        # one read copy at a time (at 1.4B in bfloat16 ~3 GiB each): the weights are freed before the
        # optimizer state is read, and that is freed once loaded
        loaded.weights = None
        optim_state = read_optimizer_state(ckpt) if full else None
        if optim_state is not None:
            _check_optimizer_params(optim_state, model, ckpt)
        load_full_optimizer_state(model, optim.optimizers, optim_state or {})
        del optim_state
        state = loaded.trainer_state
        for sched, s in zip(schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(s)
        order.position = DataPosition(**state["data_position"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        saved = state.get("passes_schedule")
        now = passes_schedule.to_list() if passes_schedule is not None else None
        if saved != now:
            raise TrainingError(
                f"checkpoint {ckpt} was trained with sleep.passes_schedule {saved}, the recipe now gives "
                f"{now}: resume with the run's own schedule"
            )

    ddp_model = model
    if world > 1 and not fsdp:
        ddp_model = nn.parallel.DistributedDataParallel(model)

    if train_cfg.batch_size % world:
        raise TrainingError(f"train.batch_size ({train_cfg.batch_size}) must be divisible by {world} ranks")
    per_rank = train_cfg.batch_size // world
    micro = min(train_cfg.micro_batch_size or per_rank, per_rank)
    device = next(model.parameters()).device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if train_cfg.precision == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    if on_start is not None:
        on_start()
    log = MetricsLog(run_dir, train_cfg, enabled=is_main, resumed_at=step if resume else None)
    bar = tqdm(
        total=train_cfg.steps, initial=step, disable=not (progress and is_main), desc=desc, unit="step"
    )
    losses: list[float] = []
    grad_norms: list[float] = []  # of this process's steps: a collapsed run warns at the end
    last_step = train_cfg.steps if stop_after is None else min(train_cfg.steps, step + stop_after)
    tokens_seen, t0 = 0, time.perf_counter()

    def checkpoint(at: int) -> None:
        # under FSDP gathering the full state is collective: every rank takes part, rank 0 writes
        if not (is_main or fsdp):
            return
        weights = full_model_state(model)
        optimizer = full_optimizer_state(model, optim.optimizers)
        if is_main:
            state = {
                "step": at,
                "schedulers": [s.state_dict() for s in schedulers],
                "data_position": order.position.to_dict(),
                "rng": rng_state(),
                "passes_schedule": passes_schedule.to_list() if passes_schedule is not None else None,
            }
            save_checkpoint(
                run_dir,
                at,
                weights,
                optimizer,
                state,
                {
                    "loss": losses[-1] if losses else None,
                    "distributed": train_cfg.distributed if world > 1 else None,
                },
                keep=train_cfg.keep_checkpoints,
            )
            _write_curves(log)
        if fsdp:
            barrier()

    model.train()
    try:
        while step < last_step:
            indices = order.take(train_cfg.batch_size)[rank * per_rank : (rank + 1) * per_rank]
            optim.zero_grad()
            step_loss = 0.0
            n_loss_tokens = 0
            chunks = list(micro_batches(indices, micro))
            passes = passes_schedule.at(step) if passes_schedule is not None else None
            if passes is not None:
                apply_sleep_settings(model.config, passes=passes)
            for i, chunk in enumerate(chunks):
                rows = [dataset[j] for j in chunk]
                length = _max_over_ranks(max(len(r["input_ids"]) for r in rows), device) if fsdp else None
                batch: dict[str, Any] = {k: v.to(device) for k, v in collate(rows, pad_id, length).items()}
                sync = i == len(chunks) - 1 or world == 1
                ctx = (
                    ddp_model.no_sync() if (world > 1 and not sync and not fsdp) else contextlib.nullcontext()
                )
                if fsdp:  # accumulate unsharded gradients; reduce-scatter after the last micro-batch
                    model.set_requires_gradient_sync(sync)
                with ctx, autocast, lockstep(_all_reduce_max) if fsdp else contextlib.nullcontext():
                    loss = loss_fn(ddp_model, batch)
                (loss * len(chunk) / per_rank).backward()
                step_loss += loss.item() * len(chunk) / per_rank
                tokens_seen += int(batch["attention_mask"].sum())
                n_loss_tokens += int(batch["loss_mask"].sum())
            if world > 1:
                t = torch.tensor([step_loss], device=device)
                dist.all_reduce(t)
                step_loss = t.item() / world
            if not math.isfinite(step_loss):
                last = latest_checkpoint(run_dir)
                kept = f"; the last good checkpoint is {last}" if last else ""
                raise TrainingError(f"loss became {step_loss} at step {step + 1}: stopping{kept}")
            grad_norm = None
            if train_cfg.clip_grad_norm:
                params = [p for p in model.parameters() if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, train_cfg.clip_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                grad_norms.append(grad_norm)
            optim.step()
            for s in schedulers:
                s.step()
            step += 1
            losses.append(step_loss)
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_seen / max(elapsed, 1e-9):.0f}")
            # a schedule's N is logged at every logged step and at the first step of each entry
            switched = passes_schedule is not None and passes_schedule.starts_at(step - 1)
            if step % train_cfg.log_every == 0 or step == last_step or switched:
                values = {"loss": step_loss, "tokens_per_s": tokens_seen / max(elapsed, 1e-9)}
                values["lr_muon"] = schedulers[0].get_last_lr()[0]
                if passes is not None:
                    values["sleep_passes"] = passes
                if grad_norm is not None:
                    values["grad_norm"] = grad_norm
                log.log(step, values)
            if (
                train_cfg.checkpoint_every
                and step % train_cfg.checkpoint_every == 0
                and step < train_cfg.steps
            ):
                checkpoint(step)
        if step == train_cfg.steps:
            checkpoint(step)
    finally:
        bar.close()
        log.close()
    if rank == 0 and losses:
        from sleepify.sanity import collapse_warning

        warning = collapse_warning(
            losses, grad_norms, getattr(getattr(model, "config", None), "vocab_size", None)
        )
        if warning:
            logging.getLogger(__name__).warning(warning)
    return TrainResult(step=step, losses=losses, run_dir=run_dir)


def _write_curves(log: MetricsLog) -> None:
    """``curves.png`` next to ``metrics.jsonl`` (at every checkpoint); a picture that cannot be drawn is a
    warning, never the end of a run."""
    if not (log.enabled and log.path.is_file()):
        return
    from sleepify.training.curves import CURVES_FILE, plot_curves

    try:
        with interrupts_deferred():  # matplotlib's first import must not be cut in half (errors.py)
            plot_curves([log.path.parent], log.path.parent / CURVES_FILE)
    except Exception as err:  # noqa: BLE001  (matplotlib, a full disk, ...: training goes on)
        logging.getLogger(__name__).warning("could not draw %s: %s", CURVES_FILE, err)


def init_distributed() -> bool:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def close_distributed() -> None:
    """Every rank waits for the others, then closes the process group, so no rank tears gloo down while
    another still works in it (a rank once aborted there in CI: "terminate called without an active
    exception"; the cause is not proven)."""
    dist.barrier()
    dist.destroy_process_group()
