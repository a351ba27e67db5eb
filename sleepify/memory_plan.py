"""The memory planner: the predicted peak memory of one ``warmup`` / ``train`` process, before it starts.

Arithmetic over the converted model's ``config.json`` (parameter counts from the model built on the meta
device: no weights) and the recipe's settings. Per process, in bytes:

- **weights**: every parameter in ``model.dtype`` (FSDP2: a ``1 / world`` shard, plus the root module's
  embedding / head and two blocks gathered at a time);
- **gradients**: the trainable parameters in ``model.dtype`` (DDP: twice, its buckets hold a copy; FSDP2:
  a shard, unless several micro-batches accumulate unsharded gradients);
- **optimizer**: ``torch.optim.Muon``'s momentum on the hidden matrices, AdamW's ``m`` and ``v`` on the rest
  (embeddings, head, norms, biases, conv filters, gates): torch keeps every state in its parameter's dtype,
  so they are fp32 only when ``model.dtype`` is float32;
- **activations**: what autograd keeps for the backward pass. A window runs every block once, except the
  looped blocks: ``wake_passes`` passes in the window that is scored (awake) and ``N x wake_passes`` in a
  window that sleeps. Each block application keeps ``c x B x L_w`` bytes (``c`` per token, below). Without
  ``sleep.checkpoint_windows`` every window's share is kept until the backward pass; with it only the
  window's inputs and outputs are kept and one window at a time is recomputed in the backward pass
  (the largest one counts). ``sleep.truncate_passes = k`` keeps the last ``k`` passes of a sleeping
  window; ``sleep.truncate_windows = k`` runs the windows before the last ``k`` without gradients
  when they score nothing. The loss keeps the fp32 log-probabilities (``V x 4`` bytes) of every scored
  token and the head's input.
- **fast-weight state**: the carried ``H x K x V`` fp32 state of every SSM layer per sequence (tiny);
- **workspace**: the largest transient: the backward pass of one block application, or the scored
  window's logits (``model.dtype`` and their fp32 copy), or the optimizer step's temporaries (a few copies
  of the largest Muon matrix for Newton-Schulz; AdamW's ``foreach`` copy of its parameters on CUDA);
- **runtime**: the process before the model (Python, torch, transformers, datasets: ~0.55 GiB of CPU RSS; the
  CUDA context is outside the allocator and not counted on GPU).

Assumptions a user should know: every row of a batch is padded to the longest (``seq_len``), the scored
tokens sit in the last window (the answer after the context, as in every ``sleepify data`` task), so the
windows before it sleep. The per-token costs ``c`` were measured on the reference (CPU) kernels with
``torch.autograd.graph.saved_tensors_hooks`` at the real widths of Ouro-1.4B and smaller models; CUDA
kernels (fla, flash-attn) keep less, so the plan is an upper bound there.

:func:`sleepify.stages.train.plan_memory_for` makes the plan of a planned ``warmup`` / ``train`` run (what
``--dry-run`` prints).

Examples::

    >>> plan = plan_memory(hybrid_config, passes=4, window=2000, seq_len=4000, batch=1, dtype="bfloat16")
    >>> plan.peak_bytes, plan.parts["activations"]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sleepify.config.dtypes import DTYPES as DTYPE_BYTES
from sleepify.errors import SleepifyError
from sleepify.fsutil import human_size

__all__ = ["MemoryPlan", "largest_fitting", "parse_memory", "peak_rss", "plan_memory"]

CPU_RUNTIME_BYTES = 560 * 2**20  # RSS of a stage process before the model (torch, transformers, datasets)
SEQ_PARTS = ("weights", "gradients", "optimizer", "activations", "fast_weight_state", "workspace", "runtime")

# Bytes kept for backward per token per block application, measured with saved_tensors_hooks on the
# reference kernels (CPU) at H = 256 ... 2048 (Ouro-1.4B's widths included; within 3 % there):
# - attention + MLP block: (ATTN_H * H + ATTN_I * I) elements in model.dtype, plus NORM_FP32_H * H bytes
#   of fp32 norm statistics in a bf16 / fp16 model;
# - SSM block (Jet / GatedDeltaNet, MLP-free): (SSM_H * H + SSM_STATE * H_s * K_h * V_h) fp32 elements in
#   any model.dtype (the chunked delta rule runs in fp32 and keeps per-chunk states of 64 tokens).
ATTN_H = 16.0
ATTN_I = 4.0
NORM_FP32_H = 10.5
SSM_H = 3.0
SSM_STATE = 14.2 / 64
# a checkpointed window is recomputed in the backward pass while that pass's gradient buffers of the same
# window are live: measured peak ~1.35x the window's kept activations (tests/training/test_memory_plan.py)
CKPT_RECOMPUTE = 1.35


@dataclass
class ModelShape:
    """What the plan needs of a converted model (:func:`model_shape`)."""

    params: int
    trainable: int
    muon: int  # trainable hidden matrices (Muon)
    adamw: int  # the other trainable parameters
    largest_matrix: int  # elements of the largest Muon matrix
    largest_block: int  # parameters of the largest block (an FSDP unit)
    root: int  # parameters outside the blocks (embedding, head, final norm)
    hidden: int
    intermediate: int
    vocab: int
    blocks: list[dict[str, Any]]  # per block: kind ("attn" / "ssm"), key_dim, value_dim, state elements
    loop_start: int
    loop_end: int
    wake_passes: int


def _jet_dims(sizes: dict[str, Any], hidden: int) -> tuple[int, int, int]:
    heads, head_dim = int(sizes.get("num_heads", 1)), int(sizes.get("head_dim", hidden))
    v = int(head_dim * float(sizes.get("expand_v", 1.0)))
    return heads * head_dim, heads * v, heads * head_dim * v


def model_shape(config: Any, trainable: Sequence[str] = ("*",)) -> ModelShape:
    """The counts of a :class:`~sleepify.models.hybrid.SleepHybridConfig`, from the model built on the meta
    device (no memory, no weights). ``trainable``: ``train.trainable`` fnmatch patterns."""
    from sleepify.models.hybrid import SleepHybridForCausalLM
    from sleepify.training.optim import is_muon_param, matches

    with torch.device("meta"):
        model = SleepHybridForCausalLM(config)
    seen: set[int] = set()
    params = trainable_n = muon = adamw = largest = 0
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        if not matches(name, trainable):
            continue
        trainable_n += p.numel()
        if is_muon_param(name, p):
            muon += p.numel()
            largest = max(largest, p.numel())
        else:
            adamw += p.numel()
    if trainable_n == 0:
        raise SleepifyError(f"train.trainable {list(trainable)} matches no parameter of the model")
    blocks_params = _block_params(model)
    base = config.base_config if isinstance(config.base_config, dict) else config.base_config.to_dict()
    hidden = int(base["hidden_size"])
    inter = int(base.get("intermediate_size") or 4 * hidden)
    table = model.block_table()
    blocks = []
    for row in table:
        if row["kind"] in ("jet", "gdn"):
            sizes = config.jet if row["inserted"] else _base_ssm_sizes(base)
            k, v, s = _jet_dims(sizes, hidden)
            blocks.append({"kind": "ssm", "key_dim": k, "value_dim": v, "state": s, "mlp": row["has_mlp"]})
        else:
            blocks.append({"kind": "attn", "mlp": row["has_mlp"]})
    start = int(config.loop_start)
    end = len(table) if config.loop_end is None else int(config.loop_end)
    return ModelShape(
        params=params,
        trainable=trainable_n,
        muon=muon,
        adamw=adamw,
        largest_matrix=largest,
        largest_block=max(blocks_params) if blocks_params else 0,
        root=params - sum(blocks_params),
        hidden=hidden,
        intermediate=inter,
        vocab=int(base["vocab_size"]),
        blocks=blocks,
        loop_start=start,
        loop_end=end,
        wake_passes=int(config.wake_passes or 1),
    )


def _block_params(model: Any) -> list[int]:
    from sleepify.training.parallel import shard_units

    return [sum(p.numel() for p in unit.parameters()) for unit in shard_units(model)]


def _base_ssm_sizes(base: dict[str, Any]) -> dict[str, Any]:
    """The SSM sizes of a base model's own SSM layers (Jet-Nemotron's ``efficient_attention_config``, the
    built-ins' ``ssm``), as Jet sizes."""
    ssm = base.get("ssm") or {}
    eff = base.get("efficient_attention_config") or {}
    jet = next(iter(eff.values()), {}) if isinstance(eff, dict) and eff else {}
    sizes = {**jet, **ssm}
    hidden = int(base["hidden_size"])
    heads = int(sizes.get("num_heads") or base.get("num_attention_heads") or 1)
    head_dim = int(sizes.get("head_dim") or hidden // heads)
    return {"num_heads": heads, "head_dim": head_dim, "expand_v": float(sizes.get("expand_v", 1.0))}


def block_cost(block: dict[str, Any], hidden: int, inter: int, dtype: str) -> float:
    """Bytes kept for backward per token by one application of ``block`` (module docstring)."""
    nbytes = DTYPE_BYTES[dtype]
    extra = NORM_FP32_H * hidden if nbytes < 4 else 0.0
    if block["kind"] == "ssm":
        cost = 4 * (SSM_H * hidden + SSM_STATE * block["state"])
        return cost + (nbytes * ATTN_I * inter + extra if block.get("mlp") else 0.0)
    return nbytes * (ATTN_H * hidden + (ATTN_I * inter if block.get("mlp", True) else 0)) + extra


@dataclass
class MemoryPlan:
    """Predicted peak memory of one process, its parts (bytes) and the settings it was computed for."""

    parts: dict[str, int]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"peak_bytes": self.peak_bytes, "parts": dict(self.parts), "settings": dict(self.settings),
                "notes": list(self.notes)}  # fmt: skip

    def lines(self) -> list[str]:
        s = self.settings
        dist = s["distributed"] if s["world"] > 1 else "one process"
        lines = [
            f"memory plan (per process, {s['device']}, {dist}"
            + (f" x {s['world']}" if s["world"] > 1 else "")
            + f"): peak ~{human_size(self.peak_bytes)}",
            f"  for N={s['passes']}, L={s['window']}, sequence {s['seq_len']} tokens "
            f"({s['windows']} windows, {s['sleep_windows']} sleeping), "
            f"micro-batch {s['micro_batch']}, {s['dtype']}, "
            f"checkpoint_windows={'on' if s['checkpoint_windows'] else 'off'}",
        ]
        labels = {
            "weights": f"weights ({s['params']:,} parameters, {s['dtype']})",
            "gradients": f"gradients ({s['trainable']:,} trainable)",
            "optimizer": f"optimizer (Muon momentum on {s['muon']:,}, AdamW m+v on {s['adamw']:,}; "
            f"{s['state_dtype']})",
            "activations": "activations kept for backward",
            "fast_weight_state": "fast-weight state (fp32)",
            "workspace": "workspace (largest transient)",
            "runtime": "runtime (Python, torch)",
        }
        for key in SEQ_PARTS:
            if key in self.parts:
                lines.append(f"  {labels[key]:<72} {human_size(self.parts[key]):>10}")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def plan_memory(
    config: Any,
    *,
    passes: int,
    window: int,
    seq_len: int,
    batch: int = 1,
    dtype: str = "float32",
    trainable: Sequence[str] = ("*",),
    scored_tokens: int | None = None,
    checkpoint_windows: bool = True,
    truncate_passes: int | None = None,
    truncate_windows: int | None = None,
    device: str = "cpu",
    distributed: str = "ddp",
    world: int = 1,
    micro_batches: int = 1,
    shape: ModelShape | None = None,
) -> MemoryPlan:
    """Predicted peak of one process training ``config`` (a ``SleepHybridConfig``) with micro-batches of
    ``batch`` sequences of ``seq_len`` tokens (``scored_tokens`` of them scored, in the last window; None =
    the whole last window). ``micro_batches`` > 1: gradient accumulation. ``shape`` reuses a
    :func:`model_shape` (searches call this many times)."""
    if dtype not in DTYPE_BYTES:
        raise SleepifyError(f"model.dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    shape = shape or model_shape(config, trainable)
    nbytes = DTYPE_BYTES[dtype]
    world = max(1, world)
    fsdp = world > 1 and distributed == "fsdp"
    ddp = world > 1 and not fsdp
    H, V = shape.hidden, shape.vocab

    # -- weights, gradients, optimizer
    weights = shape.params * nbytes
    grads = shape.trainable * nbytes
    optim = (shape.muon + 2 * shape.adamw) * nbytes
    if fsdp:
        weights = weights // world + (shape.root + 2 * shape.largest_block) * nbytes
        optim //= world
        grads = grads if micro_batches > 1 else grads // world + shape.largest_block * nbytes
    elif ddp:
        grads *= 2  # DDP's buckets hold a second copy of every gradient

    # -- activations
    L = max(1, min(window, seq_len))
    windows = max(1, math.ceil(seq_len / L))
    last = seq_len - (windows - 1) * L
    scored = last if scored_tokens is None else max(0, min(scored_tokens, seq_len))
    start, end, wp = shape.loop_start, shape.loop_end, shape.wake_passes
    costs = [block_cost(b, H, shape.intermediate, dtype) for b in shape.blocks]
    once = sum(costs[:start]) + sum(costs[end:])
    looped = sum(costs[start:end])
    sleep_passes = passes * wp
    kept_passes = min(truncate_passes, sleep_passes) if truncate_passes else sleep_passes
    per_token_sleep = once + looped * kept_passes
    per_token_wake = once + looped * wp
    if truncate_passes and truncate_passes < sleep_passes:  # the passes before the cut are freed as it goes
        per_token_sleep = max(per_token_sleep, sum(costs[:start]) + looped * (sleep_passes - kept_passes))
    sleeping = windows - 1
    with_grad = sleeping if not truncate_windows else max(0, min(sleeping, truncate_windows - 1))
    sleep_window = batch * L * per_token_sleep
    wake_window = batch * last * per_token_wake
    # the loss: fp32 log-probabilities of every scored token and the head's input
    head = batch * scored * (4 * V + nbytes * H)
    carried = batch * (windows * H * nbytes)  # window outputs and inputs kept around checkpointed windows
    if checkpoint_windows:
        activations = head + carried + CKPT_RECOMPUTE * max(sleep_window if with_grad else 0, wake_window)
    else:
        activations = head + with_grad * sleep_window + wake_window
    state_elems = sum(b.get("state", 0) for b in shape.blocks if b["kind"] == "ssm")
    fast_state = batch * state_elems * 4 * (2 if checkpoint_windows else 1)

    # -- the largest transient
    block_bwd = batch * L * max(costs, default=0.0) * 2
    logits = batch * scored * V * (nbytes + 4)
    step = 4 * shape.largest_matrix * 4 + (shape.adamw * nbytes if device == "cuda" else 0)
    workspace = int(max(block_bwd, logits, step))
    parts = {
        "weights": int(weights),
        "gradients": int(grads),
        "optimizer": int(optim),
        "activations": int(activations),
        "fast_weight_state": int(fast_state),
        "workspace": workspace,
    }
    if device == "cpu":
        parts["runtime"] = CPU_RUNTIME_BYTES
    notes = []
    if not checkpoint_windows and with_grad:
        with_ckpt = head + carried + CKPT_RECOMPUTE * max(sleep_window, wake_window)
        notes.append(
            f"sleep.checkpoint_windows=true would keep ~{human_size(with_ckpt)} of activations instead "
            f"of {human_size(activations)} (one window recomputed at a time, ~1.35x its share while it is)"
        )
    if device == "cuda":
        notes.append("CUDA kernels (fla, flash-attn) keep less than the reference kernels: an upper bound")
    settings = {
        "params": shape.params, "trainable": shape.trainable, "muon": shape.muon, "adamw": shape.adamw,
        "passes": passes, "window": window, "seq_len": seq_len, "windows": windows,
        "sleep_windows": sleeping, "scored_tokens": scored, "micro_batch": batch,
        "micro_batches": micro_batches, "dtype": dtype, "state_dtype": "fp32" if nbytes == 4 else dtype,
        "checkpoint_windows": checkpoint_windows, "truncate_passes": truncate_passes,
        "truncate_windows": truncate_windows, "device": device, "distributed": distributed, "world": world,
    }  # fmt: skip
    return MemoryPlan(parts, settings, notes)


def largest_fitting(memory: int, what: str, max_value: int = 4096, **kwargs: Any) -> int:
    """The largest ``passes`` (``what="passes"``) or micro-batch (``what="batch"``) whose planned peak fits
    ``memory`` bytes with the other settings of :func:`plan_memory` as given; 0 if even 1 does not fit."""
    if what not in ("passes", "batch"):
        raise ValueError(f"what must be 'passes' or 'batch', got {what!r}")
    shape = kwargs.pop("shape", None) or model_shape(kwargs["config"], kwargs.get("trainable", ("*",)))

    def fits(value: int) -> bool:
        return plan_memory(**{**kwargs, what: value, "shape": shape}).peak_bytes <= memory

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= max_value and fits(hi):  # the peak grows with N and batch: double, then bisect
        lo, hi = hi, hi * 2
    hi = min(hi, max_value + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_memory(text: str) -> int:
    """``"80GiB"``, ``"24 GB"``, ``"512MiB"``, a plain number of bytes -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise SleepifyError(f"--memory {text!r}: give a size such as 80GiB, 24GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[unit])


def peak_rss() -> int:
    """This process's peak resident memory in bytes: ``VmHWM`` of ``/proc/self/status`` where there is one.
    Not ``ru_maxrss``: Linux carries the forked parent's peak over ``exec`` into it, so a child started from
    a big process (a benchmark that has just written a checkpoint, pytest) reports the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def device_memory() -> tuple[str, int]:
    """(device, bytes) of the current device: the first GPU's total memory, else this machine's RAM."""
    if torch.cuda.is_available():
        return "cuda", int(torch.cuda.get_device_properties(0).total_memory)
    import os

    return "cpu", int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fits(plan: MemoryPlan, config: Any, memory: int) -> dict[str, Any]:
    """The largest N (at this micro-batch) and micro-batch (at this N) whose plan fits ``memory`` bytes."""
    s = plan.settings
    kw = dict(
        config=config, window=s["window"], seq_len=s["seq_len"], dtype=s["dtype"],
        trainable=s.get("trainable_patterns", ("*",)), scored_tokens=s["scored_tokens"],
        checkpoint_windows=s["checkpoint_windows"], truncate_passes=s["truncate_passes"],
        truncate_windows=s["truncate_windows"], device=s["device"], distributed=s["distributed"],
        world=s["world"], micro_batches=s["micro_batches"],
    )  # fmt: skip
    shape = model_shape(config, kw["trainable"])
    return {
        "memory_bytes": memory,
        "fits": plan.peak_bytes <= memory,
        "largest_passes": largest_fitting(memory, "passes", batch=s["micro_batch"], shape=shape, **kw),
        "largest_micro_batch": largest_fitting(memory, "batch", passes=s["passes"], shape=shape, **kw),
    }
