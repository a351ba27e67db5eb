"""Native Jet-Nemotron (NVIDIA, arXiv 2508.15884) for transformers 5, loading ``jet-ai/Jet-Nemotron-*``
checkpoints as they are, without ``trust_remote_code``.

A Qwen2 decoder (pre-norm, ``x + mixer(ln1 x)``, ``x + mlp(ln2 x)``, SwiGLU MLP) whose token mixer per layer
(``model.layers.{i}.self_attn``) is a :class:`~sleepify.layers.jet_block.JetBlock` (``jet``), full attention
(``attn``) or sliding-window attention (``swa``; a query sees itself and the ``window - 1`` previous tokens).
Attention is Qwen2's: q/k/v with bias, o without, RoPE, GQA, through transformers' attention interface
(``sdpa`` by default, ``eager`` too).

Every decoder layer takes and returns its state explicitly (``JetNemotronDecoderLayer.forward(hidden_states,
state, attention_mask, position_ids, output_state)``), so a caller can drive the layers itself; the
:class:`JetNemotronCache` used for generation is just one state per layer.

Differences from the upstream code, on purpose (both are upstream bugs):

- a 2-D ``attention_mask`` is honoured per row: padding is never attended to nor written into any state,
  and padded rows give the same results as unpadded ones;
- batch rows are never packed into one sequence, so no convolution state leaks from one row into the next.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from sleepify.layers.jet_block import JetBlock
from sleepify.layers.norm import RMSNorm
from sleepify.layers.state import MixerState
from sleepify.models.compat import (
    accepts_legacy_cache,
    cache_kwargs,
    generation_cache,
    output_cache,
    set_generation_cache,
)
from sleepify.models.jet_nemotron.configuration_jet_nemotron import JetNemotronConfig

__all__ = [
    "JetNemotronAttention",
    "JetNemotronCache",
    "JetNemotronDecoderLayer",
    "JetNemotronForCausalLM",
    "JetNemotronModel",
    "JetNemotronPreTrainedModel",
    "KVState",
    "LayerState",
]


class KVState(NamedTuple):
    """The explicit state of an attention layer.

    key, value: ``[B, H_kv, S, head_dim]`` (keys after RoPE). A sliding-window layer keeps only the last
        ``window`` tokens.
    key_mask: ``[B, S]`` bool (True = real token) or None when every cached token is real.
    length: how many tokens (real or padding) the layer has seen; the absolute index of the next token.
    next_position: ``[B]`` long, the RoPE position of each row's next real token (used when the caller
        gives no ``position_ids``).
    """

    key: Tensor
    value: Tensor
    key_mask: Tensor | None
    length: int
    next_position: Tensor


LayerState = MixerState | KVState


# ---------------------------------------------------------------------------------------------- modules
# fp32 norm, the weight multiplies the fp32 normed input, then cast back (JetNemotronRMSNorm's semantics)
JetNemotronRMSNorm = RMSNorm


class JetNemotronMLP(nn.Module):
    def __init__(self, config: JetNemotronConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class JetNemotronRotaryEmbedding(nn.Module):
    """RoPE cos/sin for given position ids (``rope_parameters["rope_type"]``, ``default`` = plain RoPE)."""

    def __init__(self, config: JetNemotronConfig):
        super().__init__()
        self.config = config
        self.rope_type = (config.rope_parameters or {}).get("rope_type", "default")
        fn = (
            self.compute_default_rope_parameters
            if self.rope_type == "default"
            else ROPE_INIT_FUNCTIONS[self.rope_type]
        )
        inv_freq, self.attention_scaling = fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config: JetNemotronConfig, **kwargs) -> tuple[Tensor, float]:
        base = (config.rope_parameters or {}).get("rope_theta", 10000.0)
        dim = config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @torch.no_grad()
    def forward(self, x: Tensor, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B, 1, T, D] against [B, H, T, D]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    groups = module.num_key_value_groups
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


class JetNemotronAttention(nn.Module):
    """Qwen2 attention (full, or sliding-window when ``sliding_window`` is set) with an explicit KV state."""

    def __init__(self, config: JetNemotronConfig, layer_idx: int, sliding_window: int | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.sliding_window = sliding_window
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.rotary_emb = JetNemotronRotaryEmbedding(config)

    def forward(
        self,
        hidden_states: Tensor,
        state: KVState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_state: bool = True,
    ) -> tuple[Tensor, KVState | None]:
        """``hidden_states [B, T, D]``; ``attention_mask`` 2-D ``[B, T]`` for this window (1 = real);
        ``position_ids [B or 1, T]`` (default: continue each row's positions over its real tokens)."""
        B, T, _ = hidden_states.shape
        dev = hidden_states.device
        mask = None if attention_mask is None else attention_mask.to(device=dev, dtype=torch.bool)
        past_len = state.length if state is not None else 0
        next_pos = state.next_position if state is not None else torch.zeros(B, dtype=torch.long, device=dev)
        if position_ids is None:
            if mask is None:
                position_ids = next_pos[:, None] + torch.arange(T, device=dev)
            else:
                position_ids = next_pos[:, None] + (mask.long().cumsum(-1) - 1).clamp_min(0)

        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(v, position_ids.to(dev))
        q, k = _apply_rope(q, k, cos, sin)

        if state is not None:
            k_all = torch.cat([state.key, k], dim=2)
            v_all = torch.cat([state.value, v], dim=2)
        else:
            k_all, v_all = k, v
        S = k_all.shape[2]
        key_mask = None
        if mask is not None or (state is not None and state.key_mask is not None):
            past_mask = (
                state.key_mask
                if state is not None and state.key_mask is not None
                else torch.ones(B, S - T, dtype=torch.bool, device=dev)
            )
            cur_mask = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=dev)
            key_mask = torch.cat([past_mask, cur_mask], dim=1)

        # absolute token indices of the queries and keys
        q_idx = past_len + torch.arange(T, device=dev)
        k_idx = past_len + T - S + torch.arange(S, device=dev)
        if self.config._attn_implementation == "sleepify":
            # sleepify's window attention op (SDPA on CPU, flash-attn / fla where they apply): the keys are
            # consecutive and end at the last query; it differs from the mask path only at padded queries
            # (they see themselves instead of nothing), whose outputs are never used
            from sleepify.ops.attention import window_attention

            out = window_attention(
                q,
                k_all,
                v_all,
                q_idx,
                k_idx,
                key_mask,
                self.sliding_window,
                scale=self.scaling,
                dropout_p=self.attention_dropout if self.training else 0.0,
                aligned=True,
            ).transpose(1, 2)
        else:
            out = self._masked_attention(q, k_all, v_all, q_idx, k_idx, key_mask)
        out = self.o_proj(out.reshape(B, T, -1).contiguous())
        if not output_state:
            return out, None

        if self.sliding_window is not None and self.sliding_window < S:
            k_all = k_all[:, :, -self.sliding_window :]
            v_all = v_all[:, :, -self.sliding_window :]
            key_mask = key_mask[:, -self.sliding_window :] if key_mask is not None else None
        if mask is None:
            new_next = position_ids[:, -1].expand(B) + 1
        else:
            last = torch.where(mask, position_ids.expand(B, T), -1).amax(dim=1) + 1
            new_next = torch.maximum(next_pos, last)
        return out, KVState(k_all, v_all, key_mask, past_len + T, new_next)

    def _masked_attention(
        self, q: Tensor, k_all: Tensor, v_all: Tensor, q_idx: Tensor, k_idx: Tensor, key_mask: Tensor | None
    ) -> Tensor:
        """transformers' attention interface (sdpa / eager / ...) with an additive 4-D mask."""
        dev = q.device
        diff = q_idx[:, None] - k_idx[None, :]
        allowed = diff >= 0
        if self.sliding_window is not None:
            allowed = allowed & (diff < self.sliding_window)
        allowed = allowed[None, None]  # [1, 1, T, S]
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :]
        attn_mask = torch.zeros(allowed.shape, dtype=q.dtype, device=dev).masked_fill(
            ~allowed, torch.finfo(q.dtype).min
        )

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, _eager_attention
        )
        out, _ = attention_interface(
            self,
            q,
            k_all,
            v_all,
            attn_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
        )
        return out


class JetNemotronDecoderLayer(nn.Module):
    """Pre-norm decoder layer: ``x + self_attn(input_layernorm x)``, then
    ``x + mlp(post_attention_layernorm x)``.

    ``self_attn`` is a JetBlock (``jet``) or attention (``attn`` / ``swa``); ``layer_type`` holds the name.
    """

    def __init__(self, config: JetNemotronConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.layer_type = config.mixer_types[layer_idx]
        if self.layer_type == "jet":
            self.self_attn = JetBlock(config.jet_block_config())
        elif self.layer_type == "attn":
            self.self_attn = JetNemotronAttention(config, layer_idx)
        else:
            self.self_attn = JetNemotronAttention(config, layer_idx, sliding_window=config.swa_window_size)
        self.mlp = JetNemotronMLP(config)
        self.input_layernorm = JetNemotronRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = JetNemotronRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def is_jet(self) -> bool:
        return self.layer_type == "jet"

    def forward(
        self,
        hidden_states: Tensor,
        state: LayerState | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_state: bool = True,
        backend: str | dict[str, str] = "auto",
    ) -> tuple[Tensor, LayerState | None]:
        """Run the layer on ``hidden_states [B, T, D]`` from an explicit ``state`` (None = empty).

        Args:
            state: a :class:`MixerState` for jet layers, a :class:`KVState` for attention layers.
            attention_mask: 2-D ``[B, T]`` mask of *this window* (1 = real token, 0 = padding), or None.
            position_ids: RoPE positions ``[B or 1, T]`` (attention layers only; default: continue from
                the state's positions over the real tokens).
            output_state: return the new state (else None).
            backend: the ops backend of jet layers (see :meth:`JetBlock.forward`).

        Returns:
            ``(hidden_states [B, T, D], new state or None)``.
        """
        residual = hidden_states
        h = self.input_layernorm(hidden_states)
        if self.is_jet:
            h, new_state = self.self_attn(
                h, state=state, attention_mask=attention_mask, output_state=output_state, backend=backend
            )
        else:
            h, new_state = self.self_attn(
                h,
                state=state,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_state=output_state,
            )
        hidden_states = residual + h
        residual = hidden_states
        hidden_states = residual + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, new_state


# ------------------------------------------------------------------------------------------------ cache
class JetNemotronCache(Cache):
    """Generation cache: one explicit state per layer (``MixerState`` for jet layers, ``KVState`` for
    attention; sliding-window layers keep only the last ``window`` tokens).

    ``get_seq_length()`` is the number of tokens (padding included) the model has processed.
    """

    is_compileable = False

    def __init__(self, config: JetNemotronConfig | None = None, num_layers: int | None = None):
        if num_layers is None:
            num_layers = config.num_hidden_layers if config is not None else 0
        self.layers = []  # transformers' per-layer objects are not used; see `states`
        self.layer_class_to_replicate = None
        self.offloading = False
        self.states: list[LayerState | None] = [None] * num_layers
        self._seen_tokens = 0

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(layers={len(self.states)}, seen_tokens={self._seen_tokens})"

    def __len__(self) -> int:
        return len(self.states)

    # --- explicit states
    def get_layer_state(self, layer_idx: int) -> LayerState | None:
        return self.states[layer_idx] if layer_idx < len(self.states) else None

    def set_layer_state(self, layer_idx: int, state: LayerState | None) -> None:
        if layer_idx >= len(self.states):
            self.states.extend([None] * (layer_idx + 1 - len(self.states)))
        self.states[layer_idx] = state

    def recurrent_state(self, layer_idx: int) -> Tensor | None:
        s = self.get_layer_state(layer_idx)
        return s.recurrent if isinstance(s, MixerState) else None

    def conv_state(self, layer_idx: int) -> Tensor | None:
        s = self.get_layer_state(layer_idx)
        return s.conv[0] if isinstance(s, MixerState) and s.conv else None

    def key_value(self, layer_idx: int) -> tuple[Tensor, Tensor] | None:
        s = self.get_layer_state(layer_idx)
        return (s.key, s.value) if isinstance(s, KVState) else None

    # --- transformers' Cache interface (the parts generate() uses)
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen_tokens

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._seen_tokens + query_length, 0

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        if layer_idx is None:
            return self._seen_tokens > 0
        return self.get_layer_state(layer_idx) is not None

    @property
    def is_initialized(self) -> bool:
        return any(s is not None for s in self.states)

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.states)

    @property
    def batch_size(self) -> int:
        for s in self.states:
            if isinstance(s, KVState):
                return s.key.shape[0]
            if isinstance(s, MixerState) and s.recurrent is not None:
                return s.recurrent.shape[0]
        raise ValueError("JetNemotronCache is empty")

    def update(self, *args, **kwargs):
        raise NotImplementedError("JetNemotronCache holds explicit per-layer states; use set_layer_state")

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self._seen_tokens + max_length
        if max_length != self._seen_tokens:
            raise NotImplementedError("a recurrent (JetBlock) state cannot be cropped")

    def activate_past_recording(self) -> None:
        pass

    def reset(self) -> None:
        self.states = [None] * len(self.states)
        self._seen_tokens = 0

    def _map_batch(self, fn: Callable[[Tensor], Tensor]) -> None:
        for i, s in enumerate(self.states):
            if isinstance(s, MixerState):
                self.states[i] = MixerState(
                    None if s.recurrent is None else fn(s.recurrent), tuple(fn(c) for c in s.conv)
                )
            elif isinstance(s, KVState):
                self.states[i] = KVState(
                    fn(s.key),
                    fn(s.value),
                    None if s.key_mask is None else fn(s.key_mask),
                    s.length,
                    fn(s.next_position),
                )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._map_batch(lambda t: t[indices])


# ------------------------------------------------------------------------------------------------ models
class JetNemotronPreTrainedModel(PreTrainedModel):
    config: JetNemotronConfig
    config_class = JetNemotronConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["JetNemotronDecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_sdpa = True
    _supports_attention_backend = False
    _can_compile_fullgraph = False
    _keep_in_fp32_modules = ["A_log", "dt_bias"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, JetBlock):
            # runs after the generic init of its children (children are visited first)
            params = dict(module.named_parameters())
            for name, value in module.initial_values().items():
                init.copy_(params[name], value)


def _window_mask(attention_mask: Tensor | None, past: int, T: int) -> Tensor | None:
    """This window's ``[B, T]`` part of a 2-D mask of length ``past + T`` (or ``T``); None if all ones."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(
            "Jet-Nemotron takes a 2-D attention_mask [B, past + T] (1 = real token), "
            f"got {attention_mask.dim()}-D"
        )
    if attention_mask.shape[1] not in (T, past + T):
        raise ValueError(
            f"attention_mask has length {attention_mask.shape[1]}, "
            f"expected {past + T} (past + new tokens) or {T}"
        )
    m = attention_mask[:, -T:].bool()
    return None if bool(m.all()) else m


class JetNemotronModel(JetNemotronPreTrainedModel):
    def __init__(self, config: JetNemotronConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [JetNemotronDecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = JetNemotronRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @accepts_legacy_cache
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: JetNemotronCache | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        backend: str | dict[str, str] = "auto",
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``attention_mask``: 2-D, length ``past + T`` (transformers' convention) or ``T``; 1 = real token.

        ``hidden_states`` (with ``output_hidden_states``) has ``num_hidden_layers + 1`` entries: the
        embeddings, the residual stream after each layer but the last, and the final normed output.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if use_cache is None:
            use_cache = self.config.use_cache
        if cache is not None and not isinstance(cache, JetNemotronCache):
            raise TypeError(
                "Jet-Nemotron needs a JetNemotronCache (it holds JetBlock states), "
                f"got {type(cache).__name__}"
            )
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = JetNemotronCache(self.config)

        B, T, _ = inputs_embeds.shape
        past = cache.get_seq_length() if cache is not None else 0
        mask = _window_mask(attention_mask, past, T)
        if position_ids is None and attention_mask is not None and attention_mask.shape[1] == past + T:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
        # position_ids left None: every attention layer continues its own rows' positions (KVState)

        hidden_states = inputs_embeds
        all_hidden = [] if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            state = cache.get_layer_state(i) if cache is not None else None
            hidden_states, new_state = layer(
                hidden_states,
                state=state,
                attention_mask=mask,
                position_ids=position_ids,
                output_state=use_cache,
                backend=backend,
            )
            if use_cache:
                cache.set_layer_state(i, new_state)
        if use_cache:
            cache._seen_tokens = past + T
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_kwargs(cache if use_cache else None),
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


class JetNemotronForCausalLM(JetNemotronPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: JetNemotronConfig):
        super().__init__(config)
        self.model = JetNemotronModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @accepts_legacy_cache
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: JetNemotronCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        backend: str | dict[str, str] = "auto",
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            backend=backend,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_kwargs(output_cache(outputs)),
            hidden_states=outputs.hidden_states,
        )
        if return_dict is False:
            return out.to_tuple()
        return out

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        """generate() gets a :class:`JetNemotronCache` (transformers' default DynamicCache cannot hold
        JetBlock states); a cache passed by the caller is used as is."""
        cache = generation_cache(model_kwargs)
        if cache is not None:
            if not isinstance(cache, JetNemotronCache):
                raise TypeError(f"Jet-Nemotron needs a JetNemotronCache, got {type(cache).__name__}")
            cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        set_generation_cache(model_kwargs, JetNemotronCache(self.config))
