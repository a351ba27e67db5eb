"""``SleepScratchConfig`` (``model_type="sleep_scratch"``): small attention/SSM hybrids trained from scratch.

Every layer is ``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (pre-norm, RMSNorm, SwiGLU MLP). The mixer
of layer ``i`` is given by ``layer_types[i]``:

- ``"full_attention"``: causal softmax attention with RoPE (transformers' Llama attention),
- ``"linear_attention"``: the SSM mixer named by ``linear_attention_type`` — ``"gdn"``
  (:class:`~sleepify.layers.gated_deltanet.GatedDeltaNet`, the paper's §4 / §6.1 model) or ``"jet"``
  (:class:`~sleepify.layers.jet_block.JetBlock`, Jet-Nemotron's mixer, the paper's §6.2 model),
  sized by ``ssm`` (``num_heads, head_dim, expand_v, conv_size, generator_reduction, norm_eps``).

``layer_types`` uses transformers' standard names (it validates them); ``mixer_types`` gives the per-layer
mixer as ``attention`` / ``gdn`` / ``jet``. The named built-in configs are in
:mod:`sleepify.models.scratch.builtin`.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

__all__ = ["LINEAR_ATTENTION_TYPES", "SSM_DEFAULTS", "SleepScratchConfig"]

LINEAR_ATTENTION_TYPES = ("gdn", "jet")
LAYER_TYPES = ("full_attention", "linear_attention")
SSM_DEFAULTS: dict[str, Any] = {
    "num_heads": 4,
    "head_dim": 64,
    "expand_v": 2.0,
    "conv_size": 4,
    "generator_reduction": 8,
    "norm_eps": 1e-5,
    "decay_init": "spread",  # forget-gate init of the SSM mixers (sleepify.layers.gates.decay_init_values)
    "decay_rate_min": 1e-3,  # its slowest rate (sleepify convert sets spread_rate_min(sleep.window))
}


@strict
class SleepScratchConfig(PreTrainedConfig):
    """Config of :class:`~sleepify.models.scratch.SleepScratchForCausalLM` (see the module docstring)."""

    model_type = "sleep_scratch"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 100  # the character tokenizer (sleepify.data.tokenizer)
    hidden_size: int = 256
    intermediate_size: int = 1024
    num_hidden_layers: int = 4
    layer_types: list[str] | None = None
    linear_attention_type: str = "gdn"
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    ssm: dict | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: int | float = 0.0
    mlp_bias: bool = False
    use_cache: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.layer_types is None:  # the paper's alternation: attention, SSM, attention, SSM, ...
            self.layer_types = [LAYER_TYPES[i % 2] for i in range(self.num_hidden_layers)]
        self.layer_types = list(self.layer_types)
        self.ssm = {**SSM_DEFAULTS, **dict(self.ssm or {})}
        self.ssm["expand_v"] = float(self.ssm["expand_v"])
        self.ssm["norm_eps"] = float(self.ssm["norm_eps"])
        super().__post_init__(**kwargs)

    @property
    def mixer_types(self) -> list[str]:
        """Per layer: ``attention``, ``gdn`` or ``jet``."""
        return [
            "attention" if t == "full_attention" else self.linear_attention_type for t in self.layer_types
        ]

    def gdn_config(self):
        from sleepify.layers.gated_deltanet import GatedDeltaNetConfig

        s = self.ssm
        return GatedDeltaNetConfig(
            hidden_size=self.hidden_size,
            num_heads=int(s["num_heads"]),
            head_dim=int(s["head_dim"]),
            expand_v=float(s["expand_v"]),
            conv_size=int(s["conv_size"]),
            norm_eps=float(s["norm_eps"]),
            decay_init=str(s["decay_init"]),
            decay_rate_min=float(s["decay_rate_min"]),
        )

    def jet_config(self):
        from sleepify.layers.jet_block import JetBlockConfig

        s = self.ssm
        return JetBlockConfig(
            hidden_size=self.hidden_size,
            num_heads=int(s["num_heads"]),
            head_dim=int(s["head_dim"]),
            expand_v=float(s["expand_v"]),
            conv_size=int(s["conv_size"]),
            generator_reduction=int(s["generator_reduction"]),
            norm_eps=float(s["norm_eps"]),
            initializer_range=self.initializer_range,
            decay_init=str(s["decay_init"]),
            decay_rate_min=float(s["decay_rate_min"]),
        )

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers"
            )
        bad = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
        if bad:
            raise ValueError(f"layer_types entries must be one of {LAYER_TYPES}, got {bad}")
        if self.linear_attention_type not in LINEAR_ATTENTION_TYPES:
            raise ValueError(
                f"linear_attention_type must be one of {LINEAR_ATTENTION_TYPES}, "
                f"got {self.linear_attention_type!r}"
            )
        missing = [k for k in SSM_DEFAULTS if k not in self.ssm]
        if missing:
            raise ValueError(f"ssm is missing {missing}")
