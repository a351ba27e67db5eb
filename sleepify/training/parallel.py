"""Data parallelism under ``torchrun``: DDP (a full model copy per rank) or FSDP2 (``fully_shard``).

FSDP2 shards every parameter along dim 0 across the ranks (a ``DTensor`` with ``Shard(0)``): each rank
holds ``1 / world`` of the weights, gradients and optimizer state, and a block's weights are gathered just
before it runs and freed after. The shard units are the model's blocks (every element of an
``nn.ModuleList`` that holds parameters: decoder layers, inserted Jet layers), then the root for what is
left (embeddings, final norm, head). The sleep engine calls the looped blocks ``N`` times per window;
FSDP2 gathers them again for every call (the price of not holding the whole model) and sums their
gradients before the reduce-scatter, so the result equals one process.

``torch.optim.Muon`` runs on the sharded ``DTensor`` parameters as is: its Newton–Schulz iteration is
matmuls and a norm, which DTensor computes on the full matrix (it redistributes), so the update equals the
single-process one (tests/training/test_distributed.py checks the loss curve and the weights).

Checkpoints hold *full* (unsharded) state keyed by parameter name, whatever the strategy, through
``torch.distributed.checkpoint.state_dict``: a run saved under FSDP resumes on one process and back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = [
    "FSDP_RECOMPUTE_MIN_TORCH",
    "apply_fsdp",
    "check_fsdp_supported",
    "fsdp_recompute_supported",
    "full_model_state",
    "full_optimizer_state",
    "is_fsdp",
    "load_full_model_state",
    "load_full_optimizer_state",
    "saved_weight_shapes",
    "shard_units",
    "tied_duplicates",
]


# FSDP2 with activation checkpointing per window: on torch 2.9 and 2.10 a window recomputed in the backward
# pass calls blocks whose FSDP state is already "pre-backward", so they are not gathered again and the
# forward fails ("got mixed torch.Tensor and DTensor"). torch 2.11, 2.12, 2.13, 2.14 and 2.15 pass
# tests/training/test_distributed.py.
FSDP_RECOMPUTE_MIN_TORCH = (2, 11)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def fsdp_recompute_supported() -> bool:
    """Whether the installed torch runs FSDP2 with per-window activation checkpointing."""
    return _torch_version() >= FSDP_RECOMPUTE_MIN_TORCH


def check_fsdp_supported(distributed: str, checkpoint_windows: bool) -> None:
    """One line before any work when ``train.distributed=fsdp`` with ``sleep.checkpoint_windows`` needs a
    newer torch than the one installed."""
    if distributed != "fsdp" or not checkpoint_windows or fsdp_recompute_supported():
        return
    from sleepify.errors import TrainingError

    need = ".".join(map(str, FSDP_RECOMPUTE_MIN_TORCH))
    raise TrainingError(
        f"train.distributed=fsdp with sleep.checkpoint_windows=true needs torch >= {need} (installed: "
        f"{torch.__version__}): upgrade torch, or set train.distributed=ddp or sleep.checkpoint_windows=false"
    )


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The outermost elements of ``nn.ModuleList``s that hold parameters (the model's blocks)."""
    units: list[nn.Module] = []
    taken: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for i, child in enumerate(module):
            path = f"{name}.{i}" if name else str(i)
            if any(path.startswith(t + ".") for t in taken):
                continue  # inside a unit already chosen
            if any(True for _ in child.parameters()):
                units.append(child)
                taken.add(path)
    return units


def apply_fsdp(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (one unit per block, then the root). Needs a process group."""
    from torch.distributed.fsdp import fully_shard

    # fully_shard replaces every parameter by a new DTensor parameter: carry our optimizer hints over
    no_decay = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    for unit in shard_units(model):
        fully_shard(unit)
    fully_shard(model)
    for name, param in model.named_parameters():
        if name in no_decay:
            param._no_weight_decay = True  # type: ignore[attr-defined]
    return model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _save_options(model: nn.Module) -> StateDictOptions:
    # cpu_offload gathers onto rank 0 only (the other ranks get an empty dict): the writer is rank 0
    return StateDictOptions(full_state_dict=True, cpu_offload=is_fsdp(model))


def _load_options(model: nn.Module) -> StateDictOptions:
    # under FSDP only rank 0 holds the loaded state and broadcasts it; strict=False: tied duplicates
    # are not saved (the tied partner loads them)
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=is_fsdp(model), strict=False)


def tied_duplicates(model: nn.Module) -> set[str]:
    """Names of parameters that are the same tensor as an earlier name (tied embeddings): not saved."""
    seen: dict[int, str] = {}
    dups = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            dups.add(name)
        else:
            seen[id(param)] = name
    return dups


def saved_weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of what :func:`full_model_state` saves (call before sharding: full shapes)."""
    dups = tied_duplicates(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in dups}


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights keyed by name, tied duplicates dropped. Under FSDP every rank must call it
    (it gathers); only rank 0 gets the tensors."""
    state = get_model_state_dict(model, options=_save_options(model))
    dups = tied_duplicates(model)
    return {k: v for k, v in state.items() if k not in dups}


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full weights (as :func:`full_model_state` gives) into a plain or FSDP-sharded model. Under
    FSDP rank 0 passes the weights and the others ``{}``: rank 0 broadcasts them."""
    set_model_state_dict(model, state, options=_load_options(model))


def full_optimizer_state(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, Any]:
    """The optimizers' state keyed by parameter name (portable across DDP, FSDP and one process)."""
    return get_optimizer_state_dict(model, optimizers, options=_save_options(model))


def load_full_optimizer_state(
    model: nn.Module, optimizers: list[torch.optim.Optimizer], state: dict[str, Any]
) -> None:
    set_optimizer_state_dict(model, optimizers, state, options=_load_options(model))


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
