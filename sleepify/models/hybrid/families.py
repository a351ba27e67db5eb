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

Families: every dense decoder-only family of transformers listed in :data:`DECODER_SPECS` runs through one
generic adapter (:class:`DecoderFamily`): its own decoder layers are called through the standard layer
interface (``layer(h, attention_mask=, position_embeddings=, position_ids=, cache=)``), so what a layer does
inside (fused projections, norms after the sublayers, q/k norms, residual multipliers, layers without RoPE)
needs nothing here. A family's :class:`DecoderSpec` holds only what its ``*Model`` / ``*ForCausalLM`` do
*around* the layers (an embedding multiplier, logit scaling or soft-capping, sliding window on every layer).
``ouro``, ``jet_nemotron`` and ``sleep_scratch`` (sleepify's native implementations; ``sleep_scratch`` is
the built-in from-scratch hybrids of ``sleepify/models/scratch``, whose SSM layers are GatedDeltaNet (kind
``gdn``) or JetBlock (kind ``jet``)) have adapters of their own: they truly differ (a norm after every pass,
mixers with an explicit state).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface

from sleepify.layers.state import MixerState
from sleepify.models.compat import TRANSFORMERS_VERSION, cache_kwargs, transformers_at_least
from sleepify.sleep import AttentionWindow, KVBuffer, WindowContext

__all__ = [
    "DECODER_SPECS",
    "SLEEPIFY_ATTENTION",
    "SUPPORTED_FAMILIES",
    "DecoderSpec",
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
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers attention function ``"sleepify"``: the window attention op (``sleepify.ops.attention``:
    SDPA on CPU, flash-attn / fla where they apply) on the window the engine describes in
    ``sleepify_window``. Called without one (the base model run on its own), it is transformers' SDPA.
    Attention logit soft-capping (Gemma 2's ``softcap``) takes the op's torch reference, the one path that
    has it (transformers' SDPA has none either: Gemma 2 runs eager there)."""
    if sleepify_window is None:
        if softcap is not None:
            # transformers' eager attention with soft-capping (Gemma 2's, the family that has it)
            from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

            return eager_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap
            )
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if softcap is not None:
        from sleepify.ops.attention import window_attention_torch

        w = sleepify_window
        out = window_attention_torch(
            query,
            key,
            value,
            w.q_index,
            w.k_index,
            w.k_valid,
            w.span,
            scale=scaling,
            dropout_p=dropout,
            softcap=softcap,
        )
        return out.transpose(1, 2), None
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
    sdpa) the window's 4-D additive mask. ``rope_key``: which entry of the window's RoPE tables it reads
    when the family has one table per layer type (Gemma 3: local and global RoPE)."""

    stateful = False

    def __init__(
        self, layer: nn.Module, info: LayerInfo, pass_position_ids: bool = True, rope_key: str | None = None
    ):
        self.module = layer
        self.kind = info.kind
        self.has_mlp = info.has_mlp
        self.sliding_window = info.sliding_window
        self.inserted = False
        self._pass_position_ids = pass_position_ids
        self._attn_config = layer.self_attn.config
        self._rope_key = rope_key

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
        rope = ctx.position_embeddings
        if self._rope_key is not None:
            rope = rope[self._rope_key]
        out = self.module(
            h, attention_mask=mask, position_embeddings=rope, **cache_kwargs(recorder), **kwargs
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

    @classmethod
    def pretrained_looped(cls, config: Any) -> bool:
        """Whether the model was pretrained applying its whole stack repeatedly (then the whole stack loops
        during sleep by default, as it was trained)."""
        return False

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


@dataclass(frozen=True)
class DecoderSpec:
    """What a transformers decoder family computes *around* its decoder layers, beyond the standard
    ``embed_tokens -> layers -> norm -> lm_head`` (each field names the config attribute read, None = no such
    step). Everything inside a layer runs as the family wrote it."""

    embedding_multiplier: str | None = None  # embeddings *= config.X in *Model.forward (Granite)
    logits_divisor: str | None = None  # logits /= config.X in *ForCausalLM.forward (Granite)
    logits_multiplier: str | None = None  # logits *= config.X (Cohere)
    logits_softcap: str | None = None  # logits = c·tanh(logits / c), c = config.X when set (Gemma 2 / 3)
    # without layer_types, a set config.sliding_window applies to every layer (Mistral, Phi-3, Starcoder2)
    sliding_all_layers: bool = False
    # the oldest transformers on which the converted model was checked to reproduce the base model
    # (None = every supported version); older ones are refused rather than converted wrongly
    min_transformers: str | None = None


# model_type -> what differs. Embedding scaling inside the embedding module (Gemma's scaled embeddings),
# fused projections (Phi-3), norms after the sublayers (OLMo-2), residual/attention multipliers (Granite),
# layers without RoPE (SmolLM3), q/k norms (Qwen3, OLMo-2, Gemma 3) are all inside the modules the adapter
# calls, so they need no entry here.
DECODER_SPECS: dict[str, DecoderSpec] = {
    "llama": DecoderSpec(),
    "qwen2": DecoderSpec(),
    "qwen3": DecoderSpec(),
    "mistral": DecoderSpec(sliding_all_layers=True),
    "phi3": DecoderSpec(sliding_all_layers=True),
    # on transformers 5.6.2 the converted Gemma 2 differs from the base by ~1e-3 and Nemotron's attention does
    # not take the registered "sleepify" attention: checked on 5.24.0 only
    "gemma2": DecoderSpec(logits_softcap="final_logit_softcapping", min_transformers="5.24.0"),
    "gemma3_text": DecoderSpec(logits_softcap="final_logit_softcapping"),
    "olmo2": DecoderSpec(),
    "granite": DecoderSpec(embedding_multiplier="embedding_multiplier", logits_divisor="logits_scaling"),
    "smollm3": DecoderSpec(),
    # more of transformers' dense decoders that follow the same interface (each tested like the above)
    "gemma": DecoderSpec(),
    "olmo": DecoderSpec(),
    "olmo3": DecoderSpec(),
    "starcoder2": DecoderSpec(sliding_all_layers=True),
    "cohere": DecoderSpec(logits_multiplier="logit_scale"),
    "cohere2": DecoderSpec(logits_multiplier="logit_scale"),
    "glm": DecoderSpec(),
    "glm4": DecoderSpec(),
    "helium": DecoderSpec(),
    "exaone4": DecoderSpec(),
    "ministral": DecoderSpec(),
    "seed_oss": DecoderSpec(),
    "apertus": DecoderSpec(),
    "arcee": DecoderSpec(),
    "nemotron": DecoderSpec(min_transformers="5.24.0"),
    "stablelm": DecoderSpec(),
}


class DecoderFamily(Family):
    """Every family of :data:`DECODER_SPECS` through transformers' own classes (the one generic adapter)."""

    model_types = tuple(DECODER_SPECS)

    @classmethod
    def spec(cls, config: Any) -> DecoderSpec:
        return DECODER_SPECS[config.model_type]

    @classmethod
    def layer_plan(cls, config: Any) -> list[LayerInfo]:
        window = getattr(config, "sliding_window", None)
        if (
            not getattr(config, "layer_types", None)
            and window is not None
            and cls.spec(config).sliding_all_layers
        ):
            return [LayerInfo("sliding_attention", True, window) for _ in range(config.num_hidden_layers)]
        return super().layer_plan(config)

    def __init__(self, base: nn.Module):
        super().__init__(base)
        config = base.config
        self._spec = self.spec(config)
        # one RoPE table per layer type when the family's rotary takes the type (Gemma 3: local / global)
        rotary_params = inspect.signature(type(self.decoder.rotary_emb).forward).parameters
        self._rope_by_type = "layer_type" in rotary_params
        self._layer_types = [info.kind for info in self.layer_plan(config)]

    def _attr(self, name: str | None) -> Any:
        return None if name is None else getattr(self.base.config, name, None)

    def base_blocks(self) -> list:
        plan = self.layer_plan(self.base.config)
        return [
            HFAttentionBlock(layer, info, self.pass_position_ids, info.kind if self._rope_by_type else None)
            for layer, info in zip(self.decoder.layers, plan, strict=True)
        ]

    def embed(self, input_ids: Tensor) -> Tensor:
        h = self.decoder.embed_tokens(input_ids)
        multiplier = self._attr(self._spec.embedding_multiplier)
        return h if multiplier is None else h * multiplier

    def rotary(self, probe: Tensor, position_ids: Tensor) -> Any:
        if self._rope_by_type:
            return {
                t: self.decoder.rotary_emb(probe, position_ids, t) for t in dict.fromkeys(self._layer_types)
            }
        return self.decoder.rotary_emb(probe, position_ids)

    def lm_head(self, h: Tensor) -> Tensor:
        logits = self.base.lm_head(h)
        divisor = self._attr(self._spec.logits_divisor)
        if divisor is not None:
            logits = logits / divisor
        multiplier = self._attr(self._spec.logits_multiplier)
        if multiplier is not None:
            logits = logits * multiplier
        cap = self._attr(self._spec.logits_softcap)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


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

    @classmethod
    def pretrained_looped(cls, config: Any) -> bool:
        return True

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
    def pretrained_looped(cls, config: Any) -> bool:
        return True  # the paper's from-scratch models loop every block

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


def family_for(model_type: str, config: Any = None) -> type[Family]:
    """The adapter of ``model_type``; a ModelLoadError in one line naming what is supported otherwise
    (``config``, when given, says why a known kind of model is not: MoE, encoder-decoder, multimodal)."""
    from sleepify.errors import ModelLoadError

    spec = DECODER_SPECS.get(model_type)
    if spec is not None and spec.min_transformers and not transformers_at_least(spec.min_transformers):
        raise ModelLoadError(
            f"architecture {model_type!r} needs transformers >= {spec.min_transformers} here (checked on "
            f"that version; this is {TRANSFORMERS_VERSION}): pip install -U transformers"
        )
    try:
        return SUPPORTED_FAMILIES[model_type]
    except KeyError:
        why = _unsupported_reason(config) if config is not None else ""
        raise ModelLoadError(
            f"architecture {model_type!r}{why} is not supported: sleepify converts dense decoder-only "
            f"language models of the model types {', '.join(sorted(SUPPORTED_FAMILIES))}"
        ) from None


def _unsupported_reason(config: Any) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return " (an encoder-decoder model)"
    if any(hasattr(config, k) for k in ("vision_config", "audio_config", "text_config")):
        return " (a multimodal model)"
    if any(
        getattr(config, k, None)
        for k in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    ):
        return " (a mixture-of-experts model)"
    return ""


def layer_plan(config: Any) -> list[LayerInfo]:
    return family_for(config.model_type).layer_plan(config)
