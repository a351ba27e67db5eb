"""Family adapters: one uniform view of every supported base model for the sleep engine.

A family adapter wraps the base model (a ``*ForCausalLM`` built by transformers' Auto classes from the
hybrid's
``base_config``) and gives the engine (``sleepify/sleep.py``) what it needs:

- ``embed(input_ids)``, ``rotary(probe, position_ids)`` (RoPE tables shared by the window's attention blocks),
- ``base_blocks()``: one :class:`~sleepify.sleep.Block` per base layer, callable as
  ``block(h, ctx, state) -> (h, state)``,
- ``pass_hook(h)`` applied after every pass of the looped blocks (Ouro: its final norm, which Ouro applies
  after
  every pass of its stack and feeds to the next pass), ``final_norm(h, coda_empty)`` and ``lm_head(h)``.

``layer_plan(base_config)`` describes the base layers (mixer kind, MLP, sliding window) from the config alone,
so conversion can check support and print the block table before building anything.

Families: ``qwen2``, ``qwen3``, ``llama`` (transformers' own decoder layers), ``ouro``, ``jet_nemotron``
and ``sleep_scratch`` (sleepify's native implementations; ``sleep_scratch`` is the built-in from-scratch
hybrids of ``sleepify/models/scratch``, whose SSM layers are GatedDeltaNet (kind ``gdn``) or JetBlock
(kind ``jet``)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface

from sleepify.layers.state import MixerState
from sleepify.models.compat import cache_kwargs
from sleepify.sleep import AttentionWindow, KVBuffer, WindowContext

__all__ = [
    "SLEEPIFY_ATTENTION",
    "SUPPORTED_FAMILIES",
    "Family",
    "LayerInfo",
    "family_for",
    "layer_plan",
    "sleepify_attention_forward",
]


@dataclass(frozen=True)
class LayerInfo:
    kind: str  # "full_attention" | "sliding_attention" | "jet" | "gdn"
    has_mlp: bool
    sliding_window: int | None = None


# ------------------------------------------------------------------------------------------------------------
# blocks


SLEEPIFY_ATTENTION = "sleepify"


def sleepify_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sleepify_window: AttentionWindow | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention function ``"sleepify"``: the window attention op (``sleepify.ops.attention``:
    SDPA on CPU, flash-attn / fla where they apply) on the window the engine describes in
    ``sleepify_window``. Called without one (the base model run on its own), it is transformers' SDPA."""
    if sleepify_window is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    out = sleepify_window.attend(query, key, value, scale=scaling, dropout_p=dropout)
    return out.transpose(1, 2), None  # [B, Tq, H, D], as transformers' attention functions return


AttentionInterface.register(SLEEPIFY_ATTENTION, sleepify_attention_forward)


class _KVRecorder:
    """Stands in for a transformers ``Cache`` during one attention call: prepends the kept K/V (if any) and
    records the full K/V the layer attended to (the engine keeps the last ``L - 1`` after the window).
    With ``capacity`` (decoding) the K/V live in a preallocated :class:`KVBuffer`: new keys are written in
    place and the layer attends to a view, instead of concatenating prefix and new keys every step."""

    def __init__(self, prefix: tuple[Tensor, Tensor] | KVBuffer | None, capacity: int | None = None):
        self.prefix = prefix
        self.capacity = capacity
        self.full: tuple[Tensor, Tensor] | KVBuffer | None = None

    def update(self, key: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.capacity is not None or isinstance(self.prefix, KVBuffer):
            buf = self.prefix
            if not isinstance(buf, KVBuffer):
                prefix = None if buf is None else (buf[0].to(key.dtype), buf[1].to(value.dtype))
                buf = KVBuffer.allocate(prefix, key, value, self.capacity)
            self.full = buf.append(key, value)
            return self.full.view()
        if self.prefix is not None:
            key = torch.cat([self.prefix[0].to(key.dtype), key], dim=2)
            value = torch.cat([self.prefix[1].to(value.dtype), value], dim=2)
        self.full = (key, value)
        return key, value


class HFAttentionBlock:
    """A transformers decoder layer (attention + MLP). With the ``"sleepify"`` attention implementation it
    gets the window as indices (``sleepify_window``, for the window attention op); with any other (eager,
    sdpa) the window's 4-D additive mask."""

    stateful = False

    def __init__(self, layer: nn.Module, info: LayerInfo, pass_position_ids: bool = True):
        self.module = layer
        self.kind = info.kind
        self.has_mlp = info.has_mlp
        self.sliding_window = info.sliding_window
        self.inserted = False
        self._pass_position_ids = pass_position_ids
        self._attn_config = layer.self_attn.config

    def __call__(self, h: Tensor, ctx: WindowContext, state: Any) -> tuple[Tensor, Any]:
        recorder = None
        if ctx.record_kv or state is not None:
            recorder = _KVRecorder(state, ctx.kv_capacity if ctx.record_kv else None)
        kwargs: dict[str, Any] = {}
        if self._pass_position_ids:
            kwargs["position_ids"] = ctx.position_ids
        if self._attn_config._attn_implementation == SLEEPIFY_ATTENTION:
            mask = None
            kwargs["sleepify_window"] = ctx.attention_window(self.sliding_window)
        else:
            mask = ctx.attention_mask(self.sliding_window)
        out = self.module(
            h,
            attention_mask=mask,
            position_embeddings=ctx.position_embeddings,
            **cache_kwargs(recorder),
            **kwargs,
        )
        if isinstance(out, tuple):
            out = out[0]
        return out, (recorder.full if recorder is not None else None)


class InsertedJetBlock:
    """An inserted MLP-free ``SleepInsertBlock(JetBlock)``: ``x + jet(norm(x))`` with an explicit state."""

    stateful = True
    kind = "jet"
    has_mlp = False
    sliding_window = None
    inserted = True

    def __init__(self, block: nn.Module):
        self.module = block

    def __call__(self, h: Tensor, ctx: WindowContext, state: MixerState | None) -> tuple[Tensor, MixerState]:
        return self.module(
            h, state, attention_mask=ctx.token_mask, output_state=True, backend=ctx.mixer_backend
        )


class JetNemotronBlock:
    """A Jet-Nemotron decoder layer (jet / attn / swa mixer + MLP) driven through its explicit-state API."""

    inserted = False
    has_mlp = True
    compilable = False  # __call__ sets the attention's sliding window per call: compiled, it would recompile

    def __init__(self, layer: nn.Module, info: LayerInfo):
        self.module = layer
        self.kind = info.kind
        self.sliding_window = info.sliding_window
        self.stateful = info.kind == "jet"

    def __call__(self, h: Tensor, ctx: WindowContext, state: Any) -> tuple[Tensor, Any]:
        layer = self.module
        if self.stateful:
            return layer(
                h, state=state, attention_mask=ctx.token_mask, output_state=True, backend=ctx.mixer_backend
            )
        from sleepify.models.jet_nemotron import KVState

        kv_state = None
        if state is not None:
            k, v = state
            valid = ctx.k_valid[:, : k.shape[2]]
            kv_state = KVState(k, v, valid, int(ctx.q_index[0]), ctx.position_ids[:, 0])
        attn = layer.self_attn
        own = attn.sliding_window
        if ctx.eviction_span is not None:  # sliding eviction: a query sees keys q - L < k <= q
            attn.sliding_window = ctx.eviction_span if own is None else min(own, ctx.eviction_span)
        try:
            h, new = layer(
                h,
                state=kv_state,
                attention_mask=ctx.token_mask,
                position_ids=ctx.position_ids,
                output_state=ctx.record_kv,
            )
        finally:
            attn.sliding_window = own
        return h, (None if new is None else (new.key, new.value))


class ScratchSSMBlock:
    """A built-in from-scratch SSM layer (GatedDeltaNet or JetBlock mixer + MLP, pre-norm), explicit state."""

    stateful = True
    inserted = False
    has_mlp = True
    sliding_window = None

    def __init__(self, layer: nn.Module, info: LayerInfo):
        self.module = layer
        self.kind = info.kind

    def __call__(self, h: Tensor, ctx: WindowContext, state: MixerState | None) -> tuple[Tensor, MixerState]:
        return self.module(
            h, state=state, attention_mask=ctx.token_mask, output_state=True, backend=ctx.mixer_backend
        )


# ------------------------------------------------------------------------------------------------------------
# families


class Family:
    """Base adapter: a Qwen2-style ``*ForCausalLM`` (``.model.embed_tokens / layers / norm / rotary_emb``,
    ``.lm_head``)."""

    model_types: tuple[str, ...] = ()
    pass_position_ids = True

    def __init__(self, base: nn.Module):
        self.base = base

    # -- from the config alone
    @classmethod
    def layer_plan(cls, config: Any) -> list[LayerInfo]:
        types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
        window = getattr(config, "sliding_window", None)
        return [
            LayerInfo(t, True, window if t == "sliding_attention" else None)
            for t in types[: config.num_hidden_layers]
        ]

    @classmethod
    def default_wake_passes(cls, config: Any) -> int:
        return 1

    # -- on the model
    @property
    def decoder(self) -> nn.Module:
        return self.base.model

    def base_blocks(self) -> list:
        plan = self.layer_plan(self.base.config)
        return [
            HFAttentionBlock(layer, info, self.pass_position_ids)
            for layer, info in zip(self.decoder.layers, plan, strict=True)
        ]

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.decoder.embed_tokens(input_ids)

    def rotary(self, probe: Tensor, position_ids: Tensor) -> Any:
        return self.decoder.rotary_emb(probe, position_ids)

    def pass_hook(self, h: Tensor) -> Tensor:
        return h

    def final_norm(self, h: Tensor, coda_empty: bool) -> Tensor:
        return self.decoder.norm(h)

    def lm_head(self, h: Tensor) -> Tensor:
        return self.base.lm_head(h)


class DecoderFamily(Family):
    """Qwen2 / Qwen2.5, Qwen3, Llama (2/3) through transformers' own classes."""

    model_types = ("qwen2", "qwen3", "llama")


class OuroFamily(Family):
    """Ouro: sandwich-norm layers; the final norm runs after every pass of the looped blocks and the normed
    state feeds the next pass. Its wake forward is ``total_ut_steps`` passes (it was pretrained that way).
    With the loop ending at the last block the last pass's norm is the final norm (not applied twice);
    with a coda, the final norm runs after the coda too. The early-exit gate is kept (its weights load
    and save) but unused: the wake forward reads the last pass, as upstream does with threshold 1.0."""

    model_types = ("ouro",)
    pass_position_ids = False

    @classmethod
    def default_wake_passes(cls, config: Any) -> int:
        return int(getattr(config, "total_ut_steps", 1))

    def pass_hook(self, h: Tensor) -> Tensor:
        return self.decoder.norm(h)

    def final_norm(self, h: Tensor, coda_empty: bool) -> Tensor:
        return h if coda_empty else self.decoder.norm(h)


class JetNemotronFamily(Family):
    """Jet-Nemotron: every layer has an MLP; mixers are JetBlocks (``jet``), full attention or SWA."""

    model_types = ("jet_nemotron",)

    @classmethod
    def layer_plan(cls, config: Any) -> list[LayerInfo]:
        window = config.swa_window_size
        out = []
        for t in config.layer_types:
            kind = "jet" if t == "linear_attention" else t
            out.append(LayerInfo(kind, True, window if kind == "sliding_attention" else None))
        return out

    def base_blocks(self) -> list:
        plan = self.layer_plan(self.base.config)
        return [JetNemotronBlock(layer, info) for layer, info in zip(self.decoder.layers, plan, strict=True)]

    def rotary(self, probe: Tensor, position_ids: Tensor) -> Any:
        return None  # every attention layer applies its own RoPE from ctx.position_ids


class ScratchFamily(Family):
    """The built-in from-scratch hybrids (``sleep_scratch``, ``sleepify/models/scratch``): attention layers
    are transformers' ``LlamaDecoderLayer`` (driven like the decoder families), SSM layers (``gdn`` /
    ``jet``) carry their mixer state explicitly."""

    model_types = ("sleep_scratch",)

    @classmethod
    def layer_plan(cls, config: Any) -> list[LayerInfo]:
        return [LayerInfo("full_attention" if m == "attention" else m, True) for m in config.mixer_types]

    def base_blocks(self) -> list:
        plan = self.layer_plan(self.base.config)
        return [
            HFAttentionBlock(layer, info) if info.kind == "full_attention" else ScratchSSMBlock(layer, info)
            for layer, info in zip(self.decoder.layers, plan, strict=True)
        ]


SUPPORTED_FAMILIES: dict[str, type[Family]] = {
    t: fam for fam in (DecoderFamily, OuroFamily, JetNemotronFamily, ScratchFamily) for t in fam.model_types
}


def family_for(model_type: str) -> type[Family]:
    from sleepify.errors import ModelLoadError

    try:
        return SUPPORTED_FAMILIES[model_type]
    except KeyError:
        raise ModelLoadError(
            f"architecture {model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(SUPPORTED_FAMILIES))}"
        ) from None


def layer_plan(config: Any) -> list[LayerInfo]:
    return family_for(config.model_type).layer_plan(config)
