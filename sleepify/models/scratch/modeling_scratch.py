"""``SleepScratchForCausalLM``: the small attention/SSM hybrid the paper trains from scratch (§4, §6.1, §6.2).

Parameter layout (and saved keys)::

    model.embed_tokens.weight
    model.layers.{i}.input_layernorm.weight            (every layer: pre-norm mixer, pre-norm MLP)
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   (attention layers: transformers' LlamaDecoderLayer)
    model.layers.{i}.mixer.*                           (SSM layers: GatedDeltaNet / JetBlock, fla / Jet names)
    model.layers.{i}.post_attention_layernorm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight    (SwiGLU)
    model.norm.weight, lm_head.weight

``forward`` here is the plain full-sequence model (all SSM states start at zero, causal attention over the
whole sequence, left padding masked): the reference that the sleep engine with ``L >= T`` and ``N = 1``
reproduces. Sleep itself is the hybrid's job: ``sleepify convert builtin:NAME`` wraps this model in a
``SleepHybridForCausalLM`` and the family adapter ``ScratchFamily`` (``sleepify/models/hybrid/families.py``)
exposes its layers to the engine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)

from sleepify.layers.gated_deltanet import GatedDeltaNet
from sleepify.layers.gates import init_decay_parameters
from sleepify.layers.jet_block import JetBlock
from sleepify.layers.state import MixerState
from sleepify.models.scratch.configuration_scratch import SleepScratchConfig

__all__ = [
    "SleepScratchForCausalLM",
    "SleepScratchModel",
    "SleepScratchPreTrainedModel",
    "SleepScratchSSMLayer",
    "causal_mask",
]


class SleepScratchSSMLayer(nn.Module):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` with an SSM mixer (GatedDeltaNet or JetBlock) whose
    state is explicit (:class:`~sleepify.layers.state.MixerState`)."""

    def __init__(self, config: SleepScratchConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_type = config.mixer_types[layer_idx]
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if self.mixer_type == "gdn":
            self.mixer = GatedDeltaNet(config.gdn_config())
        else:
            self.mixer = JetBlock(config.jet_config())
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        hidden_states: Tensor,
        state: MixerState | None = None,
        attention_mask: Tensor | None = None,
        output_state: bool = True,
        backend: str = "auto",
    ) -> tuple[Tensor, MixerState | None]:
        """``hidden_states [B, T, D]`` from ``state`` (None = zero); ``attention_mask`` 2-D ``[B, T]``
        (1 = token, 0 = left padding: never written into the state)."""
        h, new_state = self.mixer(
            self.input_layernorm(hidden_states),
            state=state,
            attention_mask=attention_mask,
            output_state=output_state,
            backend=backend,
        )
        hidden_states = hidden_states + h
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, new_state


def causal_mask(real: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive ``[B, 1, T, T]`` mask: query ``q`` sees real keys ``k <= q``; a pad query sees only itself
    (so no softmax row is empty; its output is never used)."""
    T = real.shape[1]
    idx = torch.arange(T, device=real.device)
    allowed = (idx[None, :] <= idx[:, None])[None] & real[:, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=real.device)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=real.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class SleepScratchPreTrainedModel(PreTrainedModel):
    config: SleepScratchConfig
    config_class = SleepScratchConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LlamaDecoderLayer", "SleepScratchSSMLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False  # attention receives explicit 4-D masks
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Linear / Conv1d ~ normal(0, initializer_range) (as fla does), embeddings normal with a zero pad row,
        # every RMSNorm (GatedRMSNorm included) ones, RoPE tables from the config.
        super()._init_weights(module)
        # Children are visited first, so these overwrite the generic init of the mixers' parts.
        if isinstance(module, GatedDeltaNet) and module.A_log.device.type != "meta":
            A_log, dt_bias = torch.empty_like(module.A_log), torch.empty_like(module.dt_bias)
            init_decay_parameters(
                A_log, dt_bias, module.config.decay_init, rate_min=module.config.decay_rate_min
            )
            init.copy_(module.A_log, A_log)
            init.copy_(module.dt_bias, dt_bias)
        elif isinstance(module, JetBlock):
            params = dict(module.named_parameters())
            for name, value in module.initial_values().items():
                init.copy_(params[name], value)


class SleepScratchModel(SleepScratchPreTrainedModel):
    def __init__(self, config: SleepScratchConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.layers = nn.ModuleList(
            [
                LlamaDecoderLayer(config, i) if kind == "attention" else SleepScratchSSMLayer(config, i)
                for i, kind in enumerate(config.mixer_types)
            ]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Tensor | None = None,
        backend: str = "auto",
        **kwargs: Any,
    ) -> BaseModelOutput:
        """The whole sequence at once from zero SSM states (the ``L >= T``, ``N = 1`` reference)."""
        B, T = input_ids.shape
        h = self.embed_tokens(input_ids)
        if attention_mask is None:
            real = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        else:
            real = attention_mask.to(input_ids.device).bool()
        position_ids = (real.long().cumsum(1) - 1).clamp_min(0)
        position_embeddings = self.rotary_emb(h, position_ids)
        mask = causal_mask(real, h.dtype)
        token_mask = None if bool(real.all()) else real
        for layer in self.layers:
            if isinstance(layer, SleepScratchSSMLayer):
                h, _ = layer(h, attention_mask=token_mask, output_state=False, backend=backend)
            else:
                h = layer(
                    h,
                    attention_mask=mask,
                    position_ids=position_ids,
                    position_embeddings=position_embeddings,
                )
        return BaseModelOutput(last_hidden_state=self.norm(h))


class SleepScratchForCausalLM(SleepScratchPreTrainedModel, GenerationMixin):
    """The from-scratch hybrid with an LM head (module docstring)."""

    def __init__(self, config: SleepScratchConfig):
        super().__init__(config)
        self.model = SleepScratchModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        loss_mask: Tensor | None = None,
        backend: str = "auto",
        **kwargs: Any,
    ) -> CausalLMOutput:
        """Plain forward. ``labels`` HF-style (``-100`` = not scored, shifted inside) or ``loss_mask``
        (``loss_mask[i] = 1`` iff token ``i`` is a target) with ``input_ids`` as targets."""
        if labels is None and loss_mask is not None:
            labels = input_ids.masked_fill(loss_mask.to(input_ids.device) == 0, -100)
        h = self.model(input_ids, attention_mask=attention_mask, backend=backend).last_hidden_state
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            targets = labels[:, 1:].to(logits.device)
            if attention_mask is not None:
                targets = targets.masked_fill(attention_mask[:, 1:].to(logits.device) == 0, -100)
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # no cache: every step re-runs the whole prefix (these models are tiny)
        return {"input_ids": input_ids, "attention_mask": attention_mask}
