"""Native transformers-v5 implementation of ByteDance's Ouro looped language model.

Ouro (arXiv 2510.25741) is a Qwen2-style decoder whose whole layer stack is applied ``total_ut_steps``
times with shared weights. This module reproduces the math of the upstream HF remote code
(``ByteDance/Ouro-1.4B``; the bug-fixed copy ``LoopedLMs/ouro_rl`` @ 3bad4c1 was the reference) and keeps its
parameter names, so the released checkpoints load as they are:

- every decoder layer is a 4-norm "sandwich":
  ``h = h + input_layernorm_2(attn(input_layernorm(h)))``, then
  ``h = h + post_attention_layernorm_2(mlp(post_attention_layernorm(h)))``;
- after **every** loop step the final ``model.norm`` is applied and the *normed* state feeds the next step
  (no input re-injection; the same RoPE positions in every step);
- ``model.early_exit_gate`` (``Linear(hidden, 1)`` with bias) maps each step's normed state to an exit logit;
- the KV cache holds ``total_ut_steps * num_hidden_layers`` slots, slot ``step * num_hidden_layers + layer``.

Output semantics of :class:`OuroForCausalLM` (identical to upstream):

- with ``labels``: logits are the exit-PDF-weighted mixture of the per-step logits
  ``sum_k p_k * lm_head(h_k)`` and the loss is the usual shifted causal-LM cross entropy on them;
- without labels: ``exit_at_step`` (else ``config.early_exit_step``) picks one step; otherwise
  ``exit_threshold`` (else ``config.early_exit_threshold``, 1.0 in the released configs) picks, per token,
  the first step whose cumulative exit probability is ``>= threshold`` (the last step if none is);
  otherwise ``use_weighted_exit=True`` returns the mixture; otherwise the last step.
  The exit PDF is ``lambda_k = sigmoid(gate_k)``, ``p_k = lambda_k * prod_{j<k} (1 - lambda_j)`` for
  ``k < T-1`` and ``p_{T-1}`` = the remaining mass.

Deliberate differences from the upstream remote code (none changes the numbers):

- :meth:`OuroModel.forward` returns an :class:`OuroModelOutputWithPast` (a ``ModelOutput`` with the extra
  fields ``hidden_states_per_step`` / ``gate_logits_per_step``) instead of the tuple
  ``(BaseModelOutputWithPast, hidden_states_list, gate_list)``;
- the cache is a standard transformers ``Cache`` (``DynamicCache`` by default); a cache built with one slot
  per ``layer_types`` entry (what ``generate()`` creates) is extended in place to the looped layout while it
  is still empty, see :func:`ensure_looped_cache`;
- an out-of-range ``exit_at_step`` raises instead of silently falling through to the threshold rule;
- the causal-LM output additionally carries ``exit_pdf`` ``[B, S, T]``.

Hook for the sleep engine: :meth:`OuroModel.prepare_loop_inputs` builds the embeddings, RoPE tables,
masks and cache once, and :meth:`OuroModel.run_stack` runs ONE loop step of the stack
(``model.model.layers``) on given hidden states, writing the cache slots of that step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from ..compat import (
    accepts_legacy_cache,
    cache_kwargs,
    generation_cache,
    output_cache,
)
from .configuration_ouro import OuroConfig

__all__ = [
    "OuroAttention",
    "OuroCausalLMOutputWithPast",
    "OuroDecoderLayer",
    "OuroForCausalLM",
    "OuroLoopInputs",
    "OuroModel",
    "OuroModelOutputWithPast",
    "OuroPreTrainedModel",
    "OuroRMSNorm",
    "compute_exit_pdf",
    "ensure_looped_cache",
]

MaskLike = torch.Tensor | Mapping[str, Any] | None


# ------------------------------------------------------------------------------------------------------------
# outputs


@dataclass
class OuroModelOutputWithPast(BaseModelOutputWithPast):
    """``BaseModelOutputWithPast`` plus the per-loop-step states.

    Args:
        hidden_states_per_step: one ``[B, S, H]`` tensor per loop step, each the output of ``model.norm``
            after that step (entry ``k`` is also the input of step ``k + 1``).
        gate_logits_per_step: one ``[B, S, 1]`` tensor per loop step,
            ``early_exit_gate(hidden_states_per_step[k])``.
    """

    hidden_states_per_step: tuple[torch.Tensor, ...] | None = None
    gate_logits_per_step: tuple[torch.Tensor, ...] | None = None


@dataclass
class OuroCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus the per-token exit distribution ``exit_pdf`` ``[B, S, T]``
    (restricted to the positions kept by ``logits_to_keep``)."""

    exit_pdf: torch.Tensor | None = None


@dataclass
class OuroLoopInputs:
    """Everything one loop step needs, built once per forward by :meth:`OuroModel.prepare_loop_inputs`."""

    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_mask: dict[str, Any]
    position_ids: torch.Tensor
    cache: Cache | None


# ------------------------------------------------------------------------------------------------------------
# cache helpers


def ensure_looped_cache(cache: Cache, num_slots: int) -> Cache:
    """Make ``cache`` able to hold ``num_slots`` (= ``total_ut_steps * num_hidden_layers``) layer slots.

    A cache that grows lazily (``DynamicCache()`` without config) is returned unchanged. A cache with a fixed
    list of layers (e.g. ``DynamicCache(config=...)`` or ``StaticCache``, one layer per ``layer_types`` entry,
    which is what ``generate()`` builds) is extended *in place* while it is still empty: slot ``s`` gets a
    fresh copy of layer ``s % num_layers_present``, so slot ``step * L + i`` has the type of layer ``i``.
    A too-small cache that already holds tokens cannot be fixed and raises ``ValueError``.
    """
    if cache.layer_class_to_replicate is not None or len(cache.layers) >= num_slots:
        return cache
    present = len(cache.layers)
    if present == 0 or cache.get_seq_length() > 0:
        raise ValueError(
            f"The cache has {present} layer slots, but Ouro needs "
            f"total_ut_steps * num_hidden_layers = {num_slots}; "
            "pass an empty cache (it is extended automatically) or DynamicCache() without a config."
        )
    templates = list(cache.layers)
    for slot in range(present, num_slots):
        cache.layers.append(copy.deepcopy(templates[slot % present]))
    return cache


def compute_exit_pdf(gate_logits: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Exit distribution over loop steps from the per-step gate logits (each ``[B, S, 1]``) -> ``[B, S, T]``.

    ``lambda_k = sigmoid(gate_k)``; ``p_k = lambda_k * prod_{j<k}(1 - lambda_j)`` for ``k < T-1``; the last
    step takes the remaining probability mass. The operation order follows upstream so that threshold
    comparisons are bit-identical.
    """
    num_steps = len(gate_logits)
    remaining = torch.ones_like(gate_logits[0].squeeze(-1))
    pdf = []
    for k, gate in enumerate(gate_logits):
        lam = torch.sigmoid(gate.squeeze(-1))
        if k < num_steps - 1:
            pdf.append(lam * remaining)
            remaining = remaining * (1.0 - lam)
        else:
            pdf.append(remaining)
    return torch.stack(pdf, dim=2)


# ------------------------------------------------------------------------------------------------------------
# building blocks


class OuroRMSNorm(nn.Module):
    """RMSNorm with the variance in fp32 and ``weight * x.to(input_dtype)`` (as Qwen2/upstream Ouro)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class OuroMLP(nn.Module):
    """SwiGLU MLP without biases: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: OuroConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class OuroRotaryEmbedding(nn.Module):
    """RoPE tables through transformers' v5 rope utilities (``config.rope_parameters``)."""

    inv_freq: torch.Tensor

    def __init__(self, config: OuroConfig) -> None:
        super().__init__()
        self.config = config
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(
        config: OuroConfig, device: torch.device | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, float]:
        """Plain rotate-half RoPE: ``inv_freq = theta ** (-arange(0, d, 2) / d)``, no attention scaling."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        positions = position_ids[:, None, :].float()
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv_freq @ positions).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate ``q``/``k`` ``[B, heads, S, D]`` with ``cos``/``sin`` ``[B, S, D]``."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention (``[B, heads, S, D]`` in, ``[B, S, heads, D]`` out), softmax in fp32."""
    key = _repeat_kv(key, module.num_key_value_groups)
    value = _repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class OuroAttention(nn.Module):
    """Multi-head attention (GQA-capable, no biases, RoPE) through transformers' attention interface."""

    def __init__(self, config: OuroConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)
        layer_type = config.layer_types[layer_idx]
        self.sliding_window = config.sliding_window if layer_type == "sliding_attention" else None

    @accepts_legacy_cache
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        cache_idx: int | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``cache_idx`` is the cache slot to append to (defaults to ``layer_idx``, i.e. loop step 0)."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)

        if cache is not None:
            slot = self.layer_idx if cache_idx is None else cache_idx
            key, value = cache.update(key, value, slot)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights


class OuroDecoderLayer(GradientCheckpointingLayer):
    """One Ouro block: sandwich-normed attention then sandwich-normed SwiGLU MLP."""

    def __init__(self, config: OuroConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx
        self.attention_type = config.layer_types[layer_idx]
        self.self_attn = OuroAttention(config=config, layer_idx=layer_idx)
        self.mlp = OuroMLP(config)
        self.input_layernorm = OuroRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_2 = OuroRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = OuroRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_2 = OuroRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @accepts_legacy_cache
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        cache_idx: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            cache_idx=cache_idx,
            **kwargs,
        )
        hidden_states = residual + self.input_layernorm_2(hidden_states)

        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + self.post_attention_layernorm_2(hidden_states)


# ------------------------------------------------------------------------------------------------------------
# models


class OuroPreTrainedModel(PreTrainedModel):
    config: OuroConfig
    config_class = OuroConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OuroDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = False  # the looped cache layout is dynamic
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": OuroDecoderLayer,
        "attentions": OuroAttention,
    }


class OuroModel(OuroPreTrainedModel):
    """The looped decoder: embeddings, ``layers`` (one stack, applied ``total_ut_steps`` times), ``norm``
    (applied after every step) and ``early_exit_gate``."""

    def __init__(self, config: OuroConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([OuroDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = OuroRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = OuroRotaryEmbedding(config=config)
        self.early_exit_gate = nn.Linear(config.hidden_size, 1)
        self.gradient_checkpointing = False
        self.post_init()

    @property
    def total_ut_steps(self) -> int:
        """Number of loop steps; read from the config at call time, so ``config.total_ut_steps = 3`` works."""
        return int(self.config.total_ut_steps)

    def num_cache_slots(self, total_ut_steps: int | None = None) -> int:
        steps = self.total_ut_steps if total_ut_steps is None else total_ut_steps
        return steps * len(self.layers)

    def cache_index(self, step: int, layer_idx: int) -> int:
        """Cache slot of ``layers[layer_idx]`` in loop step ``step`` (upstream layout)."""
        return step * len(self.layers) + layer_idx

    @accepts_legacy_cache
    def prepare_loop_inputs(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: MaskLike = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool = False,
    ) -> OuroLoopInputs:
        """Embed the tokens and build what every loop step shares: RoPE tables, the per-layer-type masks
        (from a 2-D padding ``attention_mask`` or an already prepared mapping) and the looped cache."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        if use_cache:
            if cache is None:
                cache = DynamicCache()
            ensure_looped_cache(cache, self.num_cache_slots())

        if position_ids is None:
            past_seen = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)

        if isinstance(attention_mask, Mapping):
            mask_mapping = dict(attention_mask)
        else:
            mask_kwargs = {
                "config": self.config,
                "inputs_embeds": inputs_embeds,
                "attention_mask": attention_mask,
                "position_ids": position_ids,
                **cache_kwargs(cache),
            }
            mask_mapping = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in self.config.layer_types:
                mask_mapping["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)

        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        return OuroLoopInputs(
            hidden_states=inputs_embeds,
            position_embeddings=position_embeddings,
            attention_mask=mask_mapping,
            position_ids=position_ids,
            cache=cache,
        )

    @accepts_legacy_cache
    def run_stack(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: MaskLike = None,
        cache: Cache | None = None,
        step: int = 0,
        apply_norm: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Run ONE loop step: every block of ``self.layers`` in order, then (if ``apply_norm``) ``self.norm``.

        Args:
            hidden_states: ``[B, S, H]`` input of the step (the embeddings for step 0, the previous
                step's normed output afterwards).
            position_embeddings: ``(cos, sin)`` from ``self.rotary_emb`` (identical for every step).
            attention_mask: a mapping ``{layer_type: mask}`` (as built by :meth:`prepare_loop_inputs`) or
                one prepared mask (or ``None``) used for every layer.
            cache: the looped cache, or ``None``; layer ``i`` appends to slot
                ``step * len(self.layers) + i``.
            step: the loop step index (only selects the cache slots).
            apply_norm: apply the final norm, as Ouro does after every step.
        """
        for i, layer in enumerate(self.layers):
            if isinstance(attention_mask, Mapping):
                mask = attention_mask[getattr(layer, "attention_type", "full_attention")]
            else:
                mask = attention_mask
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                cache=cache,
                cache_idx=self.cache_index(step, i),
                **kwargs,
            )
        if apply_norm:
            hidden_states = self.norm(hidden_states)
        return hidden_states

    @accepts_legacy_cache
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: MaskLike = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> OuroModelOutputWithPast:
        loop = self.prepare_loop_inputs(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=bool(use_cache),
        )
        hidden_states = loop.hidden_states
        per_step: list[torch.Tensor] = []
        gates: list[torch.Tensor] = []
        for step in range(self.total_ut_steps):
            hidden_states = self.run_stack(
                hidden_states,
                loop.position_embeddings,
                loop.attention_mask,
                cache=loop.cache,
                step=step,
                position_ids=loop.position_ids,
                **kwargs,
            )
            per_step.append(hidden_states)
            gates.append(self.early_exit_gate(hidden_states))

        return OuroModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_kwargs(loop.cache if use_cache else None),
            hidden_states_per_step=tuple(per_step),
            gate_logits_per_step=tuple(gates),
        )


def _select_positions(tensor: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    if isinstance(logits_to_keep, int):
        return tensor[:, -logits_to_keep:] if logits_to_keep > 0 else tensor
    return tensor.index_select(1, logits_to_keep.to(tensor.device))


class OuroForCausalLM(OuroPreTrainedModel, GenerationMixin):
    """Ouro with its LM head and upstream's early-exit / expected-logits semantics (module docstring)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: OuroConfig) -> None:
        super().__init__(config)
        self.model = OuroModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):  # noqa: ANN001
        # v5 builds DynamicCache(config=...) with one layer per `layer_types` entry: grow it to the looped
        # layout (total_ut_steps * num_hidden_layers slots) while it is still empty.
        result = super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = generation_cache(model_kwargs)
        if isinstance(cache, Cache):
            ensure_looped_cache(cache, self.model.num_cache_slots())
        return result

    def _expected_logits(self, per_step: list[torch.Tensor], exit_pdf: torch.Tensor) -> torch.Tensor:
        logits = None
        for k, hidden in enumerate(per_step):
            step_logits = self.lm_head(hidden)
            weighted = step_logits * exit_pdf[..., k].unsqueeze(-1).to(step_logits.dtype)
            logits = weighted if logits is None else logits + weighted
        return logits

    @accepts_legacy_cache
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: MaskLike = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        use_weighted_exit: bool = False,
        exit_at_step: int | None = None,
        exit_threshold: float | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> OuroCausalLMOutputWithPast:
        r"""
        use_weighted_exit: return the exit-PDF mixture of the per-step logits (only reached when neither
            ``exit_at_step`` nor a threshold is set, as upstream).
        exit_at_step: 0-based loop step whose logits are returned (defaults to ``config.early_exit_step``).
        exit_threshold: per-token cumulative-exit-probability threshold (defaults to
            ``config.early_exit_threshold``).
        """
        if exit_at_step is None:
            exit_at_step = self.config.early_exit_step
        if exit_threshold is None:
            exit_threshold = self.config.early_exit_threshold

        outputs: OuroModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        num_steps = len(outputs.hidden_states_per_step)
        per_step = [_select_positions(h, logits_to_keep) for h in outputs.hidden_states_per_step]
        gates = [_select_positions(g, logits_to_keep) for g in outputs.gate_logits_per_step]
        exit_pdf = compute_exit_pdf(gates)

        loss = None
        if labels is not None:
            logits = self._expected_logits(per_step, exit_pdf)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        elif exit_at_step is not None:
            if not 0 <= exit_at_step < num_steps:
                raise ValueError(f"exit_at_step must be in [0, {num_steps}), got {exit_at_step}")
            logits = self.lm_head(per_step[exit_at_step])
        elif exit_threshold is not None:
            reached = torch.cumsum(exit_pdf, dim=2) >= exit_threshold
            exit_steps = torch.argmax(reached.float(), dim=2)
            exit_steps[~reached.any(dim=2)] = num_steps - 1
            stacked = torch.stack(per_step, dim=2)  # [B, S, T, H]
            index = exit_steps[..., None, None].expand(-1, -1, 1, stacked.shape[-1])
            logits = self.lm_head(torch.gather(stacked, 2, index).squeeze(2))
        elif use_weighted_exit:
            logits = self._expected_logits(per_step, exit_pdf)
        else:
            logits = self.lm_head(per_step[-1])

        return OuroCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            exit_pdf=exit_pdf,
        )
