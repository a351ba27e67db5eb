"""Optimizers: ``torch.optim.Muon`` on hidden 2-D matrices, AdamW on everything else (paper §6).

Muon orthogonalises the update of a weight *matrix*; embeddings and the output head are 2-D too but
are lookup tables / classifiers, not hidden transforms, so they go to AdamW by name (as Keller Jordan's
and Moonshot's recipes do). Conv filters (3-D), norms, biases, A_log, dt_bias and gates go to AdamW.

One departure from ``torch.optim.Muon`` as shipped: it runs its Newton-Schulz iteration in bfloat16
(hard-coded), and on a CPU without bf16 units (no AVX512-BF16 / AMX) bfloat16 products take a slow path
(``benchmarks/bench_half_linear.py`` measures it: one 2048 x 2048 orthogonalisation took minutes). There,
for matrices of at least :data:`FLOAT32_NS_MIN_NUMEL` entries, the same iteration (same coefficients and
steps) runs in float32 (:class:`Muon`). Smaller matrices, GPUs and CPUs with bf16 units keep torch's own
path, so the CPU-scale experiments (d = 64) are unchanged. ``SLEEPIFY_HALF_PRODUCTS=native`` turns it off.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

from sleepify.config.schema import ScheduleSection, TrainSection
from sleepify.errors import RecipeError
from sleepify.ops.float32_linear import float32_products_here

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


FLOAT32_NS_MIN_NUMEL = 256 * 256  # below this a bf16 and a float32 iteration cost about the same


def newton_schulz_float32(
    grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float
) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, computed in float32 (torch's runs in
    bfloat16): the same coefficients, steps, normalisation and transposition."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """``torch.optim.Muon``, with large CPU matrices orthogonalised in float32 on a CPU without bf16 units
    (the module docstring says why). Its state and checkpoints are torch's."""

    def __init__(self, params: Iterable[torch.Tensor], *args: object, float32_ns: bool | None = None, **kw):
        super().__init__(params, *args, **kw)  # type: ignore[arg-type]
        self.float32_ns = float32_products_here() if float32_ns is None else float32_ns

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def,override]
        from torch.optim import _muon

        original = getattr(_muon, "_zeropower_via_newtonschulz", None)
        if not self.float32_ns or original is None:  # a torch without that function: its own path
            return super().step(closure)

        def orthogonalise(grad: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:  # type: ignore[no-untyped-def]
            if grad.device.type == "cpu" and grad.numel() >= FLOAT32_NS_MIN_NUMEL:
                return newton_schulz_float32(grad, coefficients, steps, eps)
            return original(grad, coefficients, steps, eps)

        _muon._zeropower_via_newtonschulz = orthogonalise
        try:
            return super().step(closure)
        finally:
            _muon._zeropower_via_newtonschulz = original


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
                Muon(
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
