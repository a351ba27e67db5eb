"""Optimizers: ``torch.optim.Muon`` on hidden 2-D matrices, AdamW on everything else (paper §6).

Muon orthogonalises the update of a weight *matrix*; embeddings and the output head are 2-D too but
are lookup tables / classifiers, not hidden transforms, so they go to AdamW by name (as Keller Jordan's
and Moonshot's recipes do). Conv filters (3-D), norms, biases, A_log, dt_bias and gates go to AdamW.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

from sleepify.config.schema import ScheduleSection, TrainSection
from sleepify.errors import RecipeError

# Parameter names that are 2-D but must not use Muon.
NOT_MUON_PATTERNS = ("*embed*", "*lm_head*", "*wte*")


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_trainable(model: nn.Module, patterns: list[str]) -> list[str]:
    """Set ``requires_grad`` from fnmatch patterns; return the trainable names. No match is an error."""
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(matches(name, patterns))
        if param.requires_grad:
            names.append(name)
    if not names:
        raise RecipeError(f"train.trainable {patterns} matches no parameter of the model")
    return names


def is_muon_param(name: str, param: torch.Tensor) -> bool:
    return param.ndim == 2 and not matches(name, NOT_MUON_PATTERNS)


class MuonAdamW:
    """One optimizer interface over the Muon and AdamW groups (step, zero_grad). Checkpoints save
    ``self.optimizers`` by parameter name (``sleepify/training/parallel.py``)."""

    def __init__(self, model: nn.Module, train: TrainSection):
        opt = train.optimizer
        # Sorted by name so the order (and therefore the state dict) is the same on every rank and run.
        params = sorted((n, p) for n, p in model.named_parameters() if p.requires_grad)
        muon = [p for n, p in params if is_muon_param(n, p)]
        decay = [
            p for n, p in params if not is_muon_param(n, p) and not getattr(p, "_no_weight_decay", False)
        ]
        no_decay = [p for n, p in params if not is_muon_param(n, p) and getattr(p, "_no_weight_decay", False)]
        self.muon_names = [n for n, p in params if is_muon_param(n, p)]
        self.optimizers: list[torch.optim.Optimizer] = []
        if muon:
            self.optimizers.append(
                torch.optim.Muon(
                    muon,
                    lr=opt.muon_lr,
                    weight_decay=opt.weight_decay,
                    momentum=opt.muon_momentum,
                    nesterov=True,
                    adjust_lr_fn=opt.muon_adjust_lr,
                )
            )
        groups = [g for g in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        if groups:
            self.optimizers.append(
                torch.optim.AdamW(
                    groups, lr=opt.adamw_lr, betas=tuple(opt.adamw_betas), weight_decay=opt.weight_decay
                )
            )

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)


def lr_multiplier(step: int, total: int, schedule: ScheduleSection) -> float:
    """Linear warm-up, then constant / linear / cosine decay to ``min_lr_ratio``."""
    if schedule.warmup_steps and step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    span = max(1, total - schedule.warmup_steps)
    progress = min(1.0, (step - schedule.warmup_steps) / span)
    floor = schedule.min_lr_ratio
    if schedule.kind == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedulers(optim: MuonAdamW, train: TrainSection) -> list[torch.optim.lr_scheduler.LambdaLR]:
    return [
        torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_multiplier(s, train.steps, train.schedule))
        for o in optim.optimizers
    ]
