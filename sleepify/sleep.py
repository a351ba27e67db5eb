"""The sleep engine: Algorithm 1 of "Language Models Need Sleep", one window at a time.

This is the one place that decides what a sleep-capable model computes. The model's ``forward``, the
trainers and generation all call :func:`sleep_forward` / :func:`run_window` (generation through
:func:`extend_window` / :func:`close_window`, which reuse the same window code), so they cannot disagree.
Read ``docs/sleep-semantics.md`` for the same rules in prose, with the reasons.

Vocabulary
----------
- A *stack* (:class:`SleepStack`) is the model seen as: ``embed`` → blocks ``[0, D)`` → ``final_norm`` →
  ``lm_head``. Blocks ``[loop_start, loop_end)`` are the *looped* blocks; those before are the *prelude*,
  those after the *coda*. Every block is callable as ``block(h, ctx, state) -> (h, state)``; a block with
  ``stateful=True`` is an SSM mixer whose state is a :class:`~sleepify.layers.state.MixerState` (the fast
  weights S and the conv window), an attention block's "state" is the K/V it may keep across an eviction.
- A *pass* is one application of the looped blocks followed by ``stack.pass_hook`` (Ouro: its final norm,
  applied after every pass of its stack and fed to the next pass, as Ouro was pretrained).
- The *wake forward* is ``wake_passes`` passes (1 for every family except Ouro, whose forward is its
  ``total_ut_steps`` passes). A *consolidation* (sleep) is ``N`` wake forwards in a row, i.e.
  ``N * wake_passes`` passes, so ``N = 1`` is exactly the plain hybrid.

The rules (SPEC §3, paper Algorithm 1)
--------------------------------------
1. The sequence is cut into windows of ``L`` tokens (the last may be shorter). All mixer states start at zero.
2. Targets are next tokens: the prediction made at position ``p`` is scored iff ``labels[p + 1] != -100``.
   A window is a *wake* window for a batch row iff it makes at least one scored prediction for that row;
   otherwise the row *sleeps* in that window. Without labels (plain inference) every window but the last
   sleeps and the last is awake (the model predicts the next token while awake; it sleeps once a window
   is full).
3. In every window the prelude runs once. Then the looped blocks run ``wake_passes`` passes (wake) or
   ``N * wake_passes`` passes (sleep); pass ``n`` reads the hidden states of pass ``n - 1`` and every mixer
   continues from the state S that pass ``n - 1`` left (Algorithm 1, line 8: ``h, S <- Blocks(h, S)``).
   Only S carries: with ``conv_state="reset"`` (the default) every mixer's short-convolution window starts
   empty in every pass of every window; ``"carry"`` (a method variant) lets it flow on like S;
   ``"carry-across-windows"`` / ``"carry-between-passes"`` keep only one of carry's two paths (ablation).
   Then the coda runs once, then the final norm and the LM head.
   Rows of one batch that disagree (some wake, some sleep) are handled exactly: the first ``wake_passes``
   passes of a consolidation *are* the wake forward, so the wake rows read their hidden states and states
   there, the coda runs once on each branch and every state is selected per row.
4. Attention sees only the current window (``eviction="hard"``); after the window only the mixer states
   carry over. With ``eviction="sliding"`` (paper §6.4) attention also sees the K/V that every attention
   block kept from the previous window: the last ``L - 1`` tokens, masked so that a query at absolute index
   ``q`` sees keys ``q - L < k <= q`` (a sliding window of ``L``: memory stays capped at ``L`` tokens).
   What is kept is, per attention block and per wake-pass slot ``p`` (``p = n mod wake_passes``), the K/V
   that block computed in the *last* wake forward of the window (the last of the ``N`` repetitions when the
   window slept, the only one when it was awake); the next window's pass ``n`` attends to slot
   ``n mod wake_passes``. With ``N = 1`` this is exactly a sliding-window-attention hybrid with window ``L``.
5. Padding (``attention_mask`` 0, left padding) is never attended to and never written into S (the mixers
   skip masked tokens); position ids count real tokens only (``cumsum(attention_mask) - 1``, continued
   across windows and calls), and absolute indices (for the sliding masks) count every column.
6. The loss is the mean cross entropy over all scored predictions of all windows.

Memory options (training): ``checkpoint_windows`` recomputes each window in the backward pass
(``torch.utils.checkpoint``, non-reentrant); ``truncate_passes=k`` backpropagates through only the last ``k``
passes of a consolidation (h, the looped mixer states and the looped blocks' kept K/V are detached before
pass ``N * wake_passes - k``); ``truncate_windows=k`` backpropagates through the carried state of only the
last
``k`` windows (the state entering window ``W - k`` is detached; earlier windows without loss run under
``no_grad``; earlier windows with loss still give gradients to their own computation).

Sharded training (FSDP2) gathers a block's weights at every call and again in the backward pass, so every
rank must call every block the same number of times. Inside :func:`lockstep` the ranks agree on the number
of windows and on each window's kind before running them: a window where some rank has sleeping rows and
some rank awake rows runs as "mixed" everywhere (exact per row, some wasted compute), and the loss gets a
zero-weighted term over every window's output so the backward pass visits the same blocks on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sleepify.errors import SleepifyError
from sleepify.layers.state import MixerState
from sleepify.ops.attention import BACKENDS as ATTENTION_BACKENDS
from sleepify.ops.attention import allowed_keys, window_attention

__all__ = [
    "AttentionWindow",
    "Block",
    "KVBuffer",
    "OpenWindow",
    "SleepOutput",
    "CONFIG_FIELDS",
    "SleepSettings",
    "apply_sleep_settings",
    "SleepStack",
    "SleepState",
    "WindowContext",
    "close_window",
    "extend_window",
    "incremental_ok",
    "lockstep",
    "next_token_targets",
    "open_window",
    "pack_rows",
    "run_window",
    "settings_from_config",
    "sleep_config_fields",
    "sleep_forward",
]

IGNORE = -100
EVICTIONS = ("hard", "sliding")
LOGITS_MODES = ("stream", "wake", "all", "none")  # see sleep_forward
CONV_STATES = ("reset", "carry", "carry-across-windows", "carry-between-passes")
# the two paths of "carry", each alone (ablation): a new window's first pass starts from the conv window the
# previous window's last pass left / pass n of a window starts from the one pass n - 1 left
_RESET_BETWEEN_PASSES = ("reset", "carry-across-windows")
_RESET_AT_WINDOWS = ("reset", "carry-between-passes")
KV = tuple[Tensor, Tensor]  # (key, value), each [B, H_kv, K, D]


# ------------------------------------------------------------------------------------------------------------
# settings, context, state


@dataclass
class SleepSettings:
    """How to run the engine (the model's config supplies the first four; training sets the rest)."""

    window: int  # L
    passes: int = 1  # N
    wake_passes: int = 1
    eviction: str = "hard"
    checkpoint_windows: bool = False
    truncate_passes: int | None = None
    truncate_windows: int | None = None
    backend: str = "auto"  # passed to the mixers' ops
    conv_state: str = "reset"  # "reset" (Algorithm 1: only S carries) | "carry" and its halves (variants)

    def __post_init__(self) -> None:
        if self.eviction not in EVICTIONS:
            raise SleepifyError(f"eviction must be one of {EVICTIONS}, got {self.eviction!r}")
        if self.conv_state not in CONV_STATES:
            raise SleepifyError(f"conv_state must be one of {CONV_STATES}, got {self.conv_state!r}")
        for name in ("window", "passes", "wake_passes"):
            if int(getattr(self, name)) < 1:
                raise SleepifyError(f"sleep {name} must be >= 1, got {getattr(self, name)}")
        for name in ("truncate_passes", "truncate_windows"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise SleepifyError(f"{name} must be >= 1 or None, got {value}")

    @property
    def sleep_passes_total(self) -> int:
        """Passes of the looped blocks in a consolidation: ``N * wake_passes``."""
        return self.passes * self.wake_passes


# The one mapping between the sleep settings (the recipe's ``sleep.*`` keys, the fields of SleepSettings) and
# the model config's attributes. Every command hands N, L and the eviction to the model through it: the
# stage writes them into ``model.config`` (:func:`apply_sleep_settings`), the engine reads them back
# (:func:`settings_from_config`).
CONFIG_FIELDS = {
    "window": "sleep_window",
    "passes": "sleep_passes",
    "wake_passes": "wake_passes",
    "eviction": "eviction",
    "conv_state": "conv_state",
}
_CONFIG_DEFAULTS = {"wake_passes": 1, "eviction": "hard", "conv_state": "reset"}


def sleep_config_fields(**values: Any) -> dict[str, Any]:
    """``window=, passes=, ...`` -> ``{"sleep_window": ..., "sleep_passes": ...}`` (None values dropped)."""
    unknown = set(values) - set(CONFIG_FIELDS)
    if unknown:
        raise SleepifyError(f"unknown sleep setting(s) {sorted(unknown)}: {', '.join(CONFIG_FIELDS)}")
    return {CONFIG_FIELDS[k]: v for k, v in values.items() if v is not None}


def settings_from_config(config: Any, **overrides: Any) -> SleepSettings:
    """The engine settings a model config holds, with ``overrides`` (None values are ignored)."""
    values = {k: getattr(config, attr, _CONFIG_DEFAULTS.get(k)) for k, attr in CONFIG_FIELDS.items()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SleepSettings(**values)


def apply_sleep_settings(config: Any, **values: Any) -> SleepSettings:
    """Hand sleep settings (``passes=N``, ``window=L``, ``eviction=...``; None = unchanged) to a model by
    writing them into its config, validated; returns the settings the model now runs with."""
    settings = settings_from_config(config, **values)  # validates before anything changes
    for attr, value in sleep_config_fields(**values).items():
        setattr(config, attr, value)
    return settings


@dataclass(frozen=True)
class AttentionWindow:
    """What one attention block of a window may attend to, as indices (``sleepify.ops.attention``): the
    window's queries ``q_index``, the keys ``k_index`` (kept keys, then the window's columns: always
    consecutive and ending at the last query, so ``aligned``), ``k_valid`` (None = every key is real) and
    ``span`` (the block's own sliding window and sliding eviction, the smaller; None = neither)."""

    q_index: Tensor
    k_index: Tensor
    k_valid: Tensor | None
    span: int | None
    backend: str = "auto"

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float | None, dropout_p: float = 0.0) -> Tensor:
        """``q [B, Hq, Tq, D]`` over ``k``/``v`` ``[B, Hkv, K, D]`` -> ``[B, Hq, Tq, D]``."""
        return window_attention(
            q,
            k,
            v,
            self.q_index,
            self.k_index,
            self.k_valid,
            self.span,
            scale=scale,
            dropout_p=dropout_p,
            aligned=True,
            backend=self.backend,
        )


def attention_backend(backend: str | dict) -> str:
    """The attention op's backend in an engine ``backend`` setting: a dict's ``"attn"`` key, or the one name
    when attention knows it (``torch``, ``sdpa``, ``flash``, ``fla``), else ``"auto"``."""
    if isinstance(backend, dict):
        return backend.get("attn", "auto")
    return backend if backend in ATTENTION_BACKENDS else "auto"


@dataclass
class KVBuffer:
    """The K/V of one attention block in an open window during decoding, preallocated for the whole window
    (the kept keys plus ``L`` columns): keys ``[0, length)`` are filled, new ones are written in place
    (what ``flash_attn_with_kvcache`` reads; no re-concatenation per token). ``append`` returns the
    successor sharing the storage, so an open window must be extended at most once (a stream is linear;
    ``SleepDecoder.select_rows`` copies)."""

    key: Tensor  # [B, H_kv, capacity, D]
    value: Tensor
    length: int

    @classmethod
    def allocate(cls, prefix: KV | None, like: Tensor, like_v: Tensor, capacity: int) -> KVBuffer:
        B, H, _, D = like.shape
        key = like.new_empty(B, H, capacity, D)
        value = like_v.new_empty(B, H, capacity, like_v.shape[-1])
        n = 0
        if prefix is not None:
            n = prefix[0].shape[2]
            key[:, :, :n] = prefix[0]
            value[:, :, :n] = prefix[1]
        return cls(key, value, n)

    def append(self, key: Tensor, value: Tensor) -> KVBuffer:
        n, T = self.length, key.shape[2]
        if n + T > self.key.shape[2]:
            raise SleepifyError(f"KV buffer overflow: {n} + {T} keys > capacity {self.key.shape[2]}")
        self.key[:, :, n : n + T] = key
        self.value[:, :, n : n + T] = value
        return KVBuffer(self.key, self.value, n + T)

    def view(self) -> KV:
        return self.key[:, :, : self.length], self.value[:, :, : self.length]


@dataclass
class WindowContext:
    """What every block of one window shares: RoPE tables, position ids, the padding mask and what attention
    may see: as indices (:meth:`attention_window`, for the attention op) or as additive float masks
    ``[B, 1, T_w, K]`` (:meth:`attention_mask`, for transformers' eager / sdpa), one per span, built lazily.
    ``kv_capacity`` (decoding without gradients): attention blocks keep their K/V in a :class:`KVBuffer` of
    that many keys."""

    position_embeddings: Any
    position_ids: Tensor  # [B, T_w]
    token_mask: Tensor | None  # [B, T_w] bool, None = no padding in this window
    q_index: Tensor  # [T_w] absolute index of each column
    k_index: Tensor  # [K] absolute index of each key (kept keys, then this window)
    k_valid: Tensor  # [B, K] bool: key is a real token
    eviction_span: int | None  # sliding eviction: a query sees keys q - span < k <= q
    dtype: torch.dtype
    record_kv: bool = False
    backend: str | dict = "auto"
    kv_capacity: int | None = None
    _masks: dict = field(default_factory=dict)
    _windows: dict = field(default_factory=dict)

    def _span(self, sliding_window: int | None) -> int | None:
        spans = [s for s in (sliding_window, self.eviction_span) if s is not None]
        return min(spans) if spans else None

    @property
    def mixer_backend(self) -> str | dict:
        """The backend setting without the attention entry (for the SSM mixers' ops)."""
        if isinstance(self.backend, dict):
            return {k: v for k, v in self.backend.items() if k != "attn"}
        return self.backend

    def attention_window(self, sliding_window: int | None = None) -> AttentionWindow:
        """What an attention block with its own ``sliding_window`` (None = full attention) may see."""
        span = self._span(sliding_window)
        if span not in self._windows:
            if "all_real" not in self._windows:  # one host sync per window, shared by its blocks
                self._windows["all_real"] = self.token_mask is None and bool(self.k_valid.all())
            valid = None if self._windows["all_real"] else self.k_valid
            self._windows[span] = AttentionWindow(
                self.q_index, self.k_index, valid, span, attention_backend(self.backend)
            )
        return self._windows[span]

    def attention_mask(self, sliding_window: int | None = None) -> Tensor:
        """Additive mask for an attention block with its own ``sliding_window`` (None = full attention)."""
        span = self._span(sliding_window)
        if span not in self._masks:
            # the op's rule: causal, real keys, the span; a padded query sees at least itself
            allowed = allowed_keys(self.q_index, self.k_index, self.k_valid, span)
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
            mask = mask.masked_fill(~allowed, torch.finfo(self.dtype).min)
            self._masks[span] = mask[:, None]
        return self._masks[span]


@dataclass
class SleepState:
    """Everything that survives from one window (or call) to the next.

    mixers: block index -> MixerState of every stateful block.
    kv: (block index, wake-pass slot) -> kept (key, value) of attention blocks (sliding eviction only).
    kv_index / kv_valid: absolute index ``[K]`` and realness ``[B, K]`` of the kept keys.
    offset: absolute index of the next column; seen: ``[B]`` real tokens seen so far (next position id).
    """

    mixers: dict[int, MixerState] = field(default_factory=dict)
    kv: dict[tuple[int, int], KV] = field(default_factory=dict)
    kv_index: Tensor | None = None
    kv_valid: Tensor | None = None
    offset: int = 0
    seen: Tensor | None = None

    def detach(self) -> SleepState:
        return replace(
            self,
            mixers={i: s.detach() for i, s in self.mixers.items()},
            kv={i: (k.detach(), v.detach()) for i, (k, v) in self.kv.items()},
        )


class Block(Protocol):
    """One block of a stack (see ``sleepify/models/hybrid/families.py`` for the implementations)."""

    kind: str  # "full_attention" | "sliding_attention" | "jet"
    stateful: bool  # carries a MixerState across windows
    sliding_window: int | None

    def __call__(self, h: Tensor, ctx: WindowContext, state: Any) -> tuple[Tensor, Any]: ...


class SleepStack(Protocol):
    blocks: Sequence[Block]
    dtype: torch.dtype  # compute dtype of the hidden states (for the attention masks)
    loop_start: int
    loop_end: int

    def embed(self, input_ids: Tensor) -> Tensor: ...
    def rotary(self, h: Tensor, position_ids: Tensor) -> Any: ...
    def pass_hook(self, h: Tensor) -> Tensor: ...
    def final_norm(self, h: Tensor) -> Tensor: ...
    def lm_head(self, h: Tensor) -> Tensor: ...


@dataclass
class SleepOutput:
    loss: Tensor | None  # mean CE over scored predictions (None without labels or scored tokens)
    logits: Tensor | None  # [B, T, V]; positions of windows whose logits were not requested hold NaN
    state: SleepState  # the state after the last window (continue a stream from it)
    window_kinds: list[str] = field(default_factory=list)  # per window: "wake" | "sleep" | "mixed"
    window_passes: list[int] = field(default_factory=list)  # passes of the looped blocks run per window
    num_loss_tokens: int = 0
    loss_sum: Tensor | None = None  # summed CE (for gradient accumulation across micro-batches)
    # with output_hidden_states: the embeddings, then every block's output (plan order; looped blocks in
    # their last wake pass), the last after the final norm; each [B, T, H] (the wake forward, as streamed)
    hidden_states: tuple[Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------------------------
# helpers


def next_token_targets(labels: Tensor) -> Tensor:
    """``targets[:, p] = labels[:, p + 1]`` (the last position predicts a token this call does not hold)."""
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:]
    return targets


def _select(rows: Tensor, if_true: Any, if_false: Any) -> Any:
    """Per-row choice between two states (tensors with batch first, MixerStates, KV tuples or None)."""
    if if_true is None or if_false is None:
        return if_true if if_false is None else if_false
    if isinstance(if_true, MixerState):
        rec = _select(rows, if_true.recurrent, if_false.recurrent)
        conv = tuple(_select(rows, a, b) for a, b in zip(if_true.conv, if_false.conv, strict=True))
        return MixerState(rec, conv)
    if isinstance(if_true, tuple):
        return tuple(_select(rows, a, b) for a, b in zip(if_true, if_false, strict=True))
    r = rows.view(-1, *([1] * (if_true.dim() - 1)))
    return torch.where(r, if_true, if_false)


def _empty_conv(mixers: dict[int, MixerState], blocks: Sequence[int] | None = None) -> dict[int, MixerState]:
    """``mixers`` with the short-convolution window of every (listed) mixer emptied (zeros: the history a
    fresh state holds) and S kept: what a mixer starts a pass from under ``conv_state="reset"``."""
    out = dict(mixers)
    for i, m in mixers.items():
        if m is not None and m.conv and (blocks is None or i in blocks):
            out[i] = MixerState(m.recurrent, tuple(torch.zeros_like(c) for c in m.conv))
    return out


def _detach(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, MixerState):
        return x.detach()
    if isinstance(x, tuple):
        return tuple(_detach(t) for t in x)
    return x.detach()


# ------------------------------------------------------------------------------------------------------------
# one window


def _window_core(
    stack: SleepStack,
    settings: SleepSettings,
    mode: str,
    sleep_rows: Tensor | None,
    input_ids: Tensor,
    ctx: WindowContext,
    mixers_in: dict[int, MixerState],
    kv_in: dict[tuple[int, int], KV],
    want_sleep_h: bool,
    pass_counter: list[int],
    embeds: Tensor | None = None,
    trace: dict[Any, Tensor] | None = None,
) -> tuple[Tensor | None, Tensor | None, dict[int, MixerState], dict[tuple[int, int], KV]]:
    """Run one window (``embeds``: input embeddings instead of ``stack.embed(input_ids)``). With ``trace``
    (a dict to fill), the wake forward's hidden states: ``trace["embed"]`` and ``trace[i]``, the output of
    block ``i`` (looped blocks: in the last wake pass). Returns ``(h_wake, h_sleep, mixer states, recorded
    K/V)``: the final hidden states
    (before the final norm) of the wake branch (None for mode "sleep") and of the sleep branch (only when
    ``want_sleep_h`` or mode "sleep" with it requested), the mixer states after the window and, when
    ``ctx.record_kv``, the full K/V (kept keys + this window) of every attention block and slot."""
    blocks = stack.blocks
    start, end = stack.loop_start, stack.loop_end
    wp = settings.wake_passes
    total = wp if mode == "wake" else settings.sleep_passes_total
    mixers = dict(mixers_in)
    kv_out: dict[tuple[int, int], KV] = {}

    def run(
        i: int, h: Tensor, slot: int, mixer_states: dict[int, MixerState], kv_store: dict, rec: bool = False
    ) -> Tensor:
        block = blocks[i]
        if block.stateful:
            h, mixer_states[i] = block(h, ctx, mixer_states.get(i))
        else:
            h, full = block(h, ctx, kv_in.get((i, slot)))
            if ctx.record_kv:
                kv_store[(i, slot)] = full
        if rec and trace is not None:
            trace[i] = h
        return h

    h = stack.embed(input_ids) if embeds is None else embeds
    if trace is not None:
        trace["embed"] = h
    for i in range(start):  # prelude: once
        h = run(i, h, 0, mixers, kv_out, rec=True)

    wake_h = None
    wake_mixers: dict[int, MixerState] = {}
    wake_kv: dict[tuple[int, int], KV] = {}
    cut = total - settings.truncate_passes if settings.truncate_passes and mode != "wake" else 0
    for n in range(total):
        if n == cut and n > 0:  # truncated backprop: nothing before this pass gets gradients through here
            h = h.detach()
            for i in range(start, end):
                if i in mixers:
                    mixers[i] = mixers[i].detach()
            kv_out = {key: _detach(val) if start <= key[0] < end else val for key, val in kv_out.items()}
        slot = n % wp
        if n > 0 and settings.conv_state in _RESET_BETWEEN_PASSES:  # Algorithm 1: each pass carries S only
            mixers = _empty_conv(mixers, range(start, end))
        for i in range(start, end):
            h = run(i, h, slot, mixers, kv_out, rec=n == wp - 1)
        h = stack.pass_hook(h)
        pass_counter[0] += 1
        if mode == "mixed" and n == wp - 1:
            # The wake forward is the first wake_passes passes: snapshot it for the awake rows (the coda's
            # entries still hold the incoming states, since the coda has not run yet).
            wake_h, wake_mixers, wake_kv = h, dict(mixers), dict(kv_out)

    if mode != "mixed":
        for i in range(end, len(blocks)):  # coda: once
            h = run(i, h, 0, mixers, kv_out, rec=mode == "wake")
        if mode == "wake":
            return h, None, mixers, kv_out
        return None, (h if want_sleep_h else None), mixers, kv_out

    # mixed: the coda runs on each branch, then every state is chosen per row
    assert sleep_rows is not None and wake_h is not None
    for i in range(end, len(blocks)):
        wake_h = run(i, wake_h, 0, wake_mixers, wake_kv, rec=True)
        h = run(i, h, 0, mixers, kv_out)
    out_mixers = {
        i: _select(sleep_rows, mixers.get(i), wake_mixers.get(i)) for i in mixers.keys() | wake_mixers
    }
    out_kv = {k: _select(sleep_rows, kv_out.get(k), wake_kv.get(k)) for k in kv_out.keys() | wake_kv}
    return wake_h, (h if want_sleep_h else None), out_mixers, out_kv


def _entry_mixers(settings: SleepSettings, mixers: dict[int, MixerState]) -> dict[int, MixerState]:
    """The mixer states a new window starts from: as they are (``conv_state="carry"`` or
    ``"carry-across-windows"``) or with every conv window emptied (``"reset"``: only S crosses the window
    boundary, Algorithm 1; ``"carry-between-passes"``)."""
    return _empty_conv(mixers) if settings.conv_state in _RESET_AT_WINDOWS else mixers


def _window_context(
    stack: SleepStack,
    settings: SleepSettings,
    T: int,
    mask: Tensor | None,
    device: torch.device,
    offset: int,
    seen: Tensor | None,
    kv_index: Tensor | None,
    kv_valid: Tensor | None,
    record_kv: bool,
    batch_size: int | None = None,
) -> tuple[WindowContext, Tensor, Tensor]:
    """The context of ``T`` new columns starting at absolute column ``offset``, after keys
    ``kv_index``/``kv_valid`` (kept or already-computed keys, None = none). Returns ``(ctx, seen, real)``:
    ``seen`` ``[B]`` real tokens before these columns, ``real`` ``[B, T]`` bool."""
    B = batch_size if batch_size is not None else (mask.shape[0] if mask is not None else seen.shape[0])
    seen = seen if seen is not None else torch.zeros(B, dtype=torch.long, device=device)
    real = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
    position_ids = (seen[:, None] + real.long().cumsum(1) - 1).clamp_min(0)
    q_index = torch.arange(offset, offset + T, device=device)
    if kv_index is not None:
        k_index = torch.cat([kv_index, q_index])
        k_valid = torch.cat([kv_valid, real], dim=1)
    else:
        k_index, k_valid = q_index, real
    dtype = stack.dtype
    probe = torch.empty(0, dtype=dtype, device=device)
    ctx = WindowContext(
        position_embeddings=stack.rotary(probe, position_ids),
        position_ids=position_ids,
        token_mask=None if mask is None or bool(mask.all()) else mask,
        q_index=q_index,
        k_index=k_index,
        k_valid=k_valid,
        eviction_span=settings.window if settings.eviction == "sliding" else None,
        dtype=dtype,
        record_kv=record_kv,
        backend=settings.backend,
    )
    return ctx, seen, real


def run_window(
    stack: SleepStack,
    settings: SleepSettings,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    state: SleepState,
    sleep_rows: Tensor | None,
    want_sleep_h: bool = False,
    mode: str | None = None,
    embeds: Tensor | None = None,
    hidden: list[Tensor] | None = None,
) -> tuple[Tensor | None, Tensor | None, SleepState, int]:
    """Run ONE window of at most L tokens from ``state``.

    ``embeds`` ``[B, T, H]``: input embeddings to use instead of embedding ``input_ids`` (which then only
    give the shape). ``hidden`` (a list to fill, needs a wake branch): the wake forward's hidden states,
    the embeddings then every block's output in run order, the last one after the final norm.

    ``sleep_rows`` ``[B]`` bool says which rows consolidate (None = every row is awake). ``mode`` forces
    "mixed" for any rows (see :func:`lockstep`); None = from ``sleep_rows``.
    Returns ``(h_wake, h_sleep, new_state, passes)``: hidden states after the final norm for the wake rows'
    branch (None if every row slept) and for the sleep branch (only with ``want_sleep_h``), the state for the
    next window, and the number of passes of the looped blocks that ran.
    """
    B, T = input_ids.shape
    device = input_ids.device
    if settings.window < T:
        raise SleepifyError(f"a window holds at most L = {settings.window} tokens, got {T}")
    mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
    if mode == "mixed":
        if sleep_rows is None:
            sleep_rows = torch.zeros(B, dtype=torch.bool, device=device)
    elif sleep_rows is None or not bool(sleep_rows.any()):
        mode = "wake"
    elif bool(sleep_rows.all()):
        mode = "sleep"
    else:
        mode = "mixed"

    sliding = settings.eviction == "sliding"
    ctx, seen, real = _window_context(
        stack,
        settings,
        T,
        mask,
        device,
        state.offset,
        state.seen,
        state.kv_index if sliding else None,
        state.kv_valid if sliding else None,
        record_kv=sliding,
        batch_size=B,
    )
    k_index, k_valid = ctx.k_index, ctx.k_valid
    counter = [0]
    kv_in = state.kv if sliding else {}
    entry_mixers = _entry_mixers(settings, state.mixers)

    if hidden is not None and mode == "sleep":
        raise ValueError("run_window: hidden states need a wake branch (mode 'wake' or 'mixed')")

    def core(mixers_in: dict, kv_prev: dict) -> tuple:
        trace: dict[Any, Tensor] | None = {} if hidden is not None else None
        out = _window_core(
            stack, settings, mode, sleep_rows, input_ids, ctx, mixers_in, kv_prev, want_sleep_h, counter,
            embeds=embeds, trace=trace,
        )  # fmt: skip
        # returned (not kept aside) so that a checkpointed window's trace is part of its autograd graph
        traced = () if trace is None else (trace["embed"], *(trace[i] for i in range(len(stack.blocks))))
        return (*out, traced)

    if settings.checkpoint_windows and torch.is_grad_enabled():
        h_wake, h_sleep, mixers, kv_full, traced = checkpoint(
            core, entry_mixers, kv_in, use_reentrant=False, preserve_rng_state=True
        )
    else:
        h_wake, h_sleep, mixers, kv_full, traced = core(entry_mixers, kv_in)
    passes = counter[0]  # read now: a checkpointed window's recomputation (in backward) counts again

    new_state = SleepState(mixers=mixers, offset=state.offset + T, seen=seen + real.long().sum(1))
    if sliding:
        keep = settings.window - 1
        new_state.kv = (
            {key: (k[:, :, -keep:], v[:, :, -keep:]) for key, (k, v) in kv_full.items()} if keep else {}
        )
        new_state.kv_index = k_index[-keep:] if keep else None
        new_state.kv_valid = k_valid[:, -keep:] if keep else None
    h_wake = None if h_wake is None else stack.final_norm(h_wake)
    h_sleep = None if h_sleep is None else stack.final_norm(h_sleep)
    if hidden is not None:
        hidden.extend([*traced[:-1], h_wake])  # as in transformers: the last entry after the final norm
    return h_wake, h_sleep, new_state, passes


# ------------------------------------------------------------------------------------------------------------
# incremental decoding: one awake window, filled a few tokens at a time


@dataclass
class OpenWindow:
    """The awake window being filled during incremental decoding (the engine's view of a KV cache).

    entry: the state that entered the window; the consolidation restarts from it (``close_window``).
    input_ids / attention_mask: the window's columns so far ``[B, t]`` (mask None = no padding so far).
    mixers: the mixer states after the wake forward over those columns.
    kv: (block index, wake-pass slot) -> K/V the attention block attended to after its last call: the keys
        kept from the previous window (sliding eviction), then this window's columns so far.
    k_index / k_valid: absolute index ``[K]`` and realness ``[B, K]`` of those keys.
    offset / seen: absolute index of the next column; real tokens seen so far ``[B]``.
    kv_buffers: the same K/V as preallocated :class:`KVBuffer` s (decoding without gradients), which the next
        extension writes into in place; ``kv`` then holds views of them.
    """

    entry: SleepState
    input_ids: Tensor
    attention_mask: Tensor | None
    mixers: dict[int, MixerState]
    kv: dict[tuple[int, int], KV]
    k_index: Tensor | None
    k_valid: Tensor | None
    offset: int
    seen: Tensor
    kv_buffers: dict[tuple[int, int], KVBuffer] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def incremental_ok(stack: SleepStack, settings: SleepSettings) -> bool:
    """Whether a wake forward over new columns can continue from the window's saved states.

    True unless the wake forward has several passes (Ouro) and a looped block is an SSM mixer: pass
    ``n`` of such a mixer starts from the state pass ``n - 1`` left after the *whole* window (rule 3), so a
    new column changes what every later pass starts from and the window must be recomputed."""
    if settings.wake_passes == 1:
        return True
    return not any(stack.blocks[i].stateful for i in range(stack.loop_start, stack.loop_end))


def open_window(state: SleepState, batch_size: int, device: torch.device) -> OpenWindow:
    """An empty awake window entered with ``state`` (a fresh stream: ``SleepState()``)."""
    seen = state.seen if state.seen is not None else torch.zeros(batch_size, dtype=torch.long, device=device)
    return OpenWindow(
        entry=state,
        input_ids=torch.zeros(batch_size, 0, dtype=torch.long, device=device),
        attention_mask=None,
        mixers=dict(state.mixers),
        kv=dict(state.kv),
        k_index=state.kv_index,
        k_valid=state.kv_valid,
        offset=state.offset,
        seen=seen,
    )


def extend_window(
    stack: SleepStack,
    settings: SleepSettings,
    window: OpenWindow,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, OpenWindow]:
    """Append ``input_ids [B, T]`` to the awake ``window`` and run the wake forward over them only.

    Returns ``(h [B, T, D] after the final norm, the extended window)``. The hidden states are what
    :func:`run_window` computes for these columns when the window (everything appended so far) is awake:
    attention reads the cached K/V of the earlier columns, every mixer continues from its saved state
    (the JetBlock takes its one-token step path when ``T == 1``), so a decode step costs one wake
    forward over one token, whatever ``N`` and however long the stream. When :func:`incremental_ok` is
    False the wake forward is recomputed over the whole window from ``window.entry`` instead (exact; the
    cost grows with the window, never with the stream).
    """
    B, T = input_ids.shape
    device = input_ids.device
    if window.length + T > settings.window:
        raise SleepifyError(
            f"a window holds at most L = {settings.window} tokens: {window.length} + {T} do not fit"
        )
    mask = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
    if mask is not None and bool(mask.all()):
        mask = None
    if window.attention_mask is None and mask is None:
        all_mask = None
    else:
        old = window.attention_mask
        if old is None:
            old = torch.ones(B, window.length, dtype=torch.bool, device=device)
        new = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
        all_mask = torch.cat([old, new], dim=1)
    all_ids = torch.cat([window.input_ids, input_ids], dim=1)
    sliding = settings.eviction == "sliding"

    if not incremental_ok(stack, settings):
        entry = window.entry
        ctx, _, _ = _window_context(
            stack,
            settings,
            all_ids.shape[1],
            all_mask,
            device,
            entry.offset,
            entry.seen,
            entry.kv_index if sliding else None,
            entry.kv_valid if sliding else None,
            record_kv=False,
            batch_size=B,
        )
        h, _, mixers, _ = _window_core(
            stack,
            settings,
            "wake",
            None,
            all_ids,
            ctx,
            _entry_mixers(settings, entry.mixers),
            entry.kv if sliding else {},
            False,
            [0],
        )
        h = h[:, -T:]
        kv, k_index, k_valid = window.kv, window.k_index, window.k_valid
        buffers = window.kv_buffers
        seen = window.seen + (mask.long().sum(1) if mask is not None else T)
    else:
        capacity = None
        if not torch.is_grad_enabled():  # in-place writes would break autograd's saved tensors
            kept = (0 if window.k_index is None else int(window.k_index.shape[0])) - window.length
            capacity = kept + settings.window
        ctx, seen0, real = _window_context(
            stack,
            settings,
            T,
            mask,
            device,
            window.offset,
            window.seen,
            window.k_index,
            window.k_valid,
            record_kv=True,
            batch_size=B,
        )
        ctx.kv_capacity = capacity
        # a block's buffer when it has one (views of it otherwise: with gradients nothing is written in place)
        kv_in = {**window.kv, **window.kv_buffers} if capacity is not None else window.kv
        # the window's first columns start from the entry state as run_window does; later ones continue
        mixers_in = window.mixers if window.length else _entry_mixers(settings, window.mixers)
        h, _, mixers, kv_full = _window_core(
            stack, settings, "wake", None, input_ids, ctx, mixers_in, kv_in, False, [0]
        )
        buffers = {key: x for key, x in kv_full.items() if isinstance(x, KVBuffer)}
        kv = {key: x.view() if isinstance(x, KVBuffer) else x for key, x in kv_full.items()}
        k_index, k_valid = ctx.k_index, ctx.k_valid
        seen = seen0 + real.long().sum(1)
    out = OpenWindow(
        entry=window.entry,
        input_ids=all_ids,
        attention_mask=all_mask,
        mixers=mixers,
        kv=kv,
        k_index=k_index,
        k_valid=k_valid,
        offset=window.offset + T,
        seen=seen,
        kv_buffers=buffers,
    )
    return stack.final_norm(h), out


def close_window(stack: SleepStack, settings: SleepSettings, window: OpenWindow) -> SleepState:
    """Sleep on the window and evict: the consolidation (``N`` wake forwards) over the window's columns
    from the state that entered it, exactly :func:`run_window` with every row asleep. Returns the state
    the next window starts from."""
    if window.length == 0:
        return window.entry
    rows = torch.ones(window.input_ids.shape[0], dtype=torch.bool, device=window.input_ids.device)
    _, _, state, _ = run_window(
        stack, settings, window.input_ids, window.attention_mask, window.entry, sleep_rows=rows
    )
    return state


# ------------------------------------------------------------------------------------------------------------
# a whole sequence


def sleep_forward(
    stack: SleepStack,
    settings: SleepSettings,
    input_ids: Tensor | None,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    state: SleepState | None = None,
    logits: str = "stream",
    sleep_windows: Sequence[bool] | None = None,
    on_window: Callable[[int, str, int], None] | None = None,
    logits_to_keep: int = 0,
    inputs_embeds: Tensor | None = None,
    output_hidden_states: bool = False,
    row_windows: bool = False,
) -> SleepOutput:
    """Run ``input_ids [B, T]`` window by window (module docstring, rules 1-6).

    Args:
        labels: HF-style labels ``[B, T]`` (``-100`` = not scored; position ``p`` predicts ``labels[p + 1]``).
            Their scored positions decide which windows are awake (rule 2).
        state: continue from a previous call's ``SleepOutput.state`` (None = zero state).
        logits: ``"stream"`` (every position: the prediction it gets when the model streams, i.e. the wake
            forward of its window from the state the earlier windows left; a window that sleeps still
            consolidates, and its wake forward is the first ``wake_passes`` passes of the consolidation, so
            this costs an extra coda and LM head on slept windows only), ``"wake"`` (logits of awake rows
            only; NaN elsewhere), ``"all"`` (every window; a slept window's logits read its state after the
            consolidation and the coda) or ``"none"``.
        sleep_windows: force the per-window decision (True = sleep, for every row); overrides rule 2.
        on_window: called as ``on_window(window_index, kind, passes)`` after every window.
        logits_to_keep: return the logits of the last ``k`` columns only (``[B, k, V]``; 0 = all). The
            loss still covers every window; memory for logits is then ``B * k * V`` instead of ``B * T * V``.
        inputs_embeds: ``[B, T, H]`` input embeddings used instead of embedding ``input_ids`` (which may
            then be None; labels still give the targets).
        output_hidden_states: also return the wake forward's hidden states (``SleepOutput.hidden_states``).
        row_windows: cut every row's windows at its own real tokens (every ``L`` tokens where
            ``attention_mask`` is 1), not at the batch's columns: a row then computes what it computes alone,
            whatever its padding (left, right or inside) and its batch-mates. Runs as one batch with every
            row's real tokens moved to its first columns (:func:`pack_rows`); logits and hidden states are
            put back in the input's columns (those of padding are finite and meaningless). The returned
            state is that of the packed batch: continue ragged rows through a ``SleepCache`` instead.
    """
    if row_windows and attention_mask is not None:
        packing = pack_rows(
            attention_mask.to(device=(input_ids if input_ids is not None else inputs_embeds).device)
        )
        if packing is not None:
            if state is not None:
                raise ValueError("row_windows: a padded batch cannot continue a state; use a SleepCache")
            return _packed_forward(
                packing, stack, settings, input_ids, labels, logits, sleep_windows, on_window,
                logits_to_keep, inputs_embeds, output_hidden_states,
            )  # fmt: skip
    if input_ids is None:
        if inputs_embeds is None:
            raise ValueError("sleep_forward needs input_ids or inputs_embeds")
        input_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    if logits not in LOGITS_MODES:
        raise ValueError(f"logits must be one of {LOGITS_MODES}, got {logits!r}")
    if logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be >= 0, got {logits_to_keep}")
    B, T = input_ids.shape
    first_kept = max(0, T - logits_to_keep) if logits_to_keep else 0
    L = settings.window
    state = state if state is not None else SleepState()
    mask = None if attention_mask is None else attention_mask.to(input_ids.device).bool()
    targets = None
    if labels is not None:
        targets = next_token_targets(labels.to(input_ids.device))
        if mask is not None:  # a padded column is never a target
            targets = targets.masked_fill(~next_token_targets(mask.long()).bool(), IGNORE)
            targets = targets.masked_fill(~mask, IGNORE)

    starts = list(range(0, T, L))
    num_windows = len(starts)
    if sleep_windows is not None and len(sleep_windows) != num_windows:
        raise ValueError(f"sleep_windows has {len(sleep_windows)} entries for {num_windows} windows")
    cut = num_windows - settings.truncate_windows if settings.truncate_windows else 0

    all_sleep_rows: list[Tensor] = []
    has_loss_w: list[bool] = []  # this call scores predictions in the window
    for w, s in enumerate(starts):
        tgt_w = None if targets is None else targets[:, s : s + L]
        if sleep_windows is not None:
            sleep_rows = torch.full((B,), bool(sleep_windows[w]), device=input_ids.device)
        elif tgt_w is not None:
            sleep_rows = ~(tgt_w != IGNORE).any(dim=1)
        else:
            sleep_rows = torch.full((B,), w < num_windows - 1, device=input_ids.device)
        all_sleep_rows.append(sleep_rows)
        has_loss_w.append(tgt_w is not None and bool((tgt_w != IGNORE).any()))
    agree = _LOCKSTEP.get()
    forced = [None] * num_windows
    any_loss_w = has_loss_w  # some rank scores in the window: decides no_grad / detach (truncate_windows)
    structural: Tensor | None = None  # zero-weighted sum over every window's output (lockstep only)
    if agree is not None:
        forced, any_loss_w = _agree_on_windows(agree, all_sleep_rows, has_loss_w)

    loss_sum: Tensor | None = None
    count = 0
    kinds: list[str] = []
    passes_run: list[int] = []
    logit_chunks: list[Tensor | None] = []
    hidden_chunks: list[list[Tensor]] = []
    for w, s in enumerate(starts):
        ids_w = input_ids[:, s : s + L]
        mask_w = None if mask is None else mask[:, s : s + L]
        tgt_w = None if targets is None else targets[:, s : s + L]
        sleep_rows = all_sleep_rows[w]

        if w == cut and w > 0:
            state = state.detach()
        has_loss = has_loss_w[w]
        need_logits = logits != "none" and s + ids_w.shape[1] > first_kept
        mode = forced[w]
        wants_wake = (logits == "stream" and need_logits) or output_hidden_states
        if wants_wake and mode is None and bool(sleep_rows.any()):
            mode = "mixed"  # the wake branch gives every row its streaming prediction; sleep rows still sleep
        grad_ctx = torch.no_grad() if (w < cut and not any_loss_w[w]) else nullcontext()
        hidden_w: list[Tensor] | None = [] if output_hidden_states else None
        with grad_ctx:
            want_sleep_h = logits == "all" or agree is not None
            h_wake, h_sleep, state, n_passes = run_window(
                stack, settings, ids_w, mask_w, state, sleep_rows, want_sleep_h=want_sleep_h, mode=mode,
                embeds=None if inputs_embeds is None else inputs_embeds[:, s : s + L], hidden=hidden_w,
            )  # fmt: skip
        if hidden_w is not None:
            hidden_chunks.append(hidden_w)
        if agree is not None and torch.is_grad_enabled():
            for h in (h_wake, h_sleep):
                if h is not None and h.requires_grad:
                    term = h.float().sum() * 0.0
                    structural = term if structural is None else structural + term
        if logits != "all":
            h_sleep = None
        if w < cut and any_loss_w[w]:
            state = state.detach()
        kind = forced[w] or (
            "wake" if not bool(sleep_rows.any()) else ("sleep" if bool(sleep_rows.all()) else "mixed")
        )
        kinds.append(kind)
        passes_run.append(n_passes)
        if on_window is not None:
            on_window(w, kind, n_passes)

        win_logits = None
        if h_wake is not None and (has_loss or need_logits):
            win_logits = stack.lm_head(h_wake) if need_logits else None
            if has_loss:
                scored = (tgt_w != IGNORE) & ~sleep_rows[:, None]  # sleeping rows score nothing
                # without logits to return, the head runs on the scored positions only (no B x L x V)
                picked = win_logits[scored] if win_logits is not None else stack.lm_head(h_wake[scored])
                ce = F.cross_entropy(picked.float(), tgt_w[scored], reduction="sum")
                loss_sum = ce if loss_sum is None else loss_sum + ce
                count += int(scored.sum())
        if logits == "all" and h_sleep is not None and need_logits:
            sleep_logits = stack.lm_head(h_sleep)
            win_logits = sleep_logits if win_logits is None else _select(sleep_rows, sleep_logits, win_logits)
        if not need_logits:
            win_logits = None
        elif win_logits is not None and s < first_kept:
            win_logits = win_logits[:, first_kept - s :]
        logit_chunks.append(win_logits)

    out_logits = None
    if logits != "none" and any(c is not None for c in logit_chunks):
        ref = next(c for c in logit_chunks if c is not None)
        parts = []
        for s, c in zip(starts, logit_chunks, strict=True):
            n = min(L, T - s) - max(0, first_kept - s)  # this window's columns among the kept ones
            if n <= 0:
                continue
            if c is None:
                c = ref.new_full((B, n, ref.shape[-1]), float("nan"))
            parts.append(c)
        out_logits = torch.cat(parts, dim=1)
    if structural is not None:
        loss_sum = structural if loss_sum is None else loss_sum + structural
    loss = None if loss_sum is None or (count == 0 and structural is None) else loss_sum / max(count, 1)
    hidden_states = None
    if output_hidden_states:
        hidden_states = tuple(torch.cat(parts, dim=1) for parts in zip(*hidden_chunks, strict=True))
    return SleepOutput(
        loss=loss,
        logits=out_logits,
        state=state,
        window_kinds=kinds,
        window_passes=passes_run,
        num_loss_tokens=count,
        loss_sum=loss_sum,
        hidden_states=hidden_states,
    )


def pack_rows(attention_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """The column layout in which every row's real tokens come first, in order: ``(order, packed_mask)``
    where packed column ``j`` of row ``b`` is input column ``order[b, j]``, and ``packed_mask[b, j]`` says it
    is real. Its window boundaries fall every ``L`` real tokens of each row. None when the mask already is
    so (no padding, or right padding only)."""
    mask = attention_mask.bool()
    T = mask.shape[1]
    packed = torch.arange(T, device=mask.device) < mask.sum(1, keepdim=True)
    if torch.equal(mask, packed):
        return None
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return order, packed


def _gather_cols(x: Tensor, order: Tensor) -> Tensor:
    """``x [B, T, ...]`` with its columns taken in ``order [B, T']``."""
    index = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, index)


def _packed_forward(
    packing: tuple[Tensor, Tensor],
    stack: SleepStack,
    settings: SleepSettings,
    input_ids: Tensor | None,
    labels: Tensor | None,
    logits: str,
    sleep_windows: Sequence[bool] | None,
    on_window: Callable[[int, str, int], None] | None,
    logits_to_keep: int,
    inputs_embeds: Tensor | None,
    output_hidden_states: bool,
) -> SleepOutput:
    """:func:`sleep_forward` with ``row_windows`` over a batch that needs packing."""
    order, packed = packing
    T = order.shape[1]
    width = int(packed.sum(1).max())  # packed columns after it are padding in every row
    cols = order[:, :width]
    out = sleep_forward(
        stack,
        settings,
        None if input_ids is None else input_ids.gather(1, cols),
        attention_mask=packed[:, :width],
        labels=None if labels is None else labels.to(order.device).gather(1, cols),
        logits=logits,
        sleep_windows=sleep_windows,
        on_window=on_window,
        inputs_embeds=None if inputs_embeds is None else _gather_cols(inputs_embeds, cols),
        output_hidden_states=output_hidden_states,
    )
    back = torch.argsort(order, dim=1)  # input column c is packed column back[b, c]

    def unpack(x: Tensor | None, keep: int = 0) -> Tensor | None:
        if x is None:
            return None
        full = torch.cat([x, x.new_zeros(x.shape[0], T - width, *x.shape[2:])], 1) if width < T else x
        full = _gather_cols(full, back)
        return full[:, T - keep :] if keep else full

    out.logits = unpack(out.logits, logits_to_keep)
    if out.hidden_states is not None:
        out.hidden_states = tuple(unpack(h) for h in out.hidden_states)
    return out


# ------------------------------------------------------------------------------------------------------------
# sharded training: every rank takes the same control flow


_LOCKSTEP: ContextVar[Callable[[Tensor], Tensor] | None] = ContextVar("sleepify_lockstep", default=None)


@contextmanager
def lockstep(reduce_max: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Make :func:`sleep_forward` take the same control flow on every rank (module docstring: FSDP).

    ``reduce_max(t)`` returns the elementwise maximum of ``t`` over the ranks (an all-reduce)."""
    token = _LOCKSTEP.set(reduce_max)
    try:
        yield
    finally:
        _LOCKSTEP.reset(token)


def _agree_on_windows(
    reduce_max: Callable[[Tensor], Tensor], sleep_rows: list[Tensor], has_loss: list[bool]
) -> tuple[list[str | None], list[bool]]:
    """Per window: the kind every rank runs ("mixed" where the ranks' rows disagree, None = as local) and
    whether any rank has loss there (decides ``no_grad`` under ``truncate_windows`` the same everywhere)."""
    n = len(sleep_rows)
    device = sleep_rows[0].device
    flags = torch.zeros(n + 1, 3, dtype=torch.long, device=device)
    flags[0, 0] = n
    for w, rows in enumerate(sleep_rows):
        flags[w + 1] = torch.stack([rows.any(), (~rows).any(), torch.tensor(has_loss[w], device=device)])
    agreed = reduce_max(flags).tolist()
    if agreed[0][0] != n:
        raise SleepifyError(
            f"lockstep: this rank has {n} windows, another has {agreed[0][0]}: pad every rank's batch to "
            "the same length"
        )
    kinds: list[str | None] = [
        "mixed" if any_sleep and any_wake else None for any_sleep, any_wake, _ in agreed[1:]
    ]
    return kinds, [bool(x[2]) for x in agreed[1:]]
