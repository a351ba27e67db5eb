"""Configuration of ByteDance's Ouro looped language model (``model_type: "ouro"``).

The fields are those of the upstream ``configuration_ouro.py`` (a Qwen2-derived config with two extra
fields, ``total_ut_steps`` and ``early_exit_threshold``), so real ByteDance ``config.json`` files load as
they are: legacy ``rope_theta`` / ``rope_scaling`` keys are converted by transformers into
``rope_parameters``, ``torch_dtype`` into ``dtype``, and ``auto_map`` is kept as a plain attribute (it is
ignored for loading because ``"ouro"`` is registered locally, see ``sleepify.models.ouro``).

Reference values of the released checkpoints (architectures.md section 1.2):

=========================  ==========================  ==========================
field                      Ouro-1.4B (-Thinking)       Ouro-2.6B (-Thinking)
=========================  ==========================  ==========================
hidden_size                2048                        2048
num_hidden_layers          24                          48
num_attention_heads        16                          16
num_key_value_heads        16 (MHA, no GQA)            16
head_dim                   128                         128
intermediate_size          5632 (SwiGLU)               5632
vocab_size                 49152 (SmolLM2 tokenizer)   49152
max_position_embeddings    65536                       65536
rope_theta                 1_000_000.0, no scaling     1_000_000.0
rms_norm_eps               1e-6                        1e-6
tie_word_embeddings        False                       False
total_ut_steps             4                           4
early_exit_threshold       1.0                         1.0
bos / eos / pad            0 / 0 / 0                   0 / 0 / 0
=========================  ==========================  ==========================

With ``total_ut_steps=4`` the KV cache holds ``4 * num_hidden_layers`` slots (96 for 1.4B, 192 for 2.6B).
The class defaults below are upstream's (Qwen2's); the real values come from ``config.json``.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

__all__ = ["OuroConfig"]


@strict
class OuroConfig(PreTrainedConfig):
    """Config of an Ouro looped LM: a Qwen2-style decoder stack that is run ``total_ut_steps`` times.

    Extra fields compared with Qwen2:

    - ``total_ut_steps``: how many times the whole layer stack is applied ("universal transformer" steps).
    - ``early_exit_threshold``: cumulative exit probability at which a token stops looping when no
      labels are given (``1.0`` means: always use the last step, unless the gate saturates).
    - ``early_exit_step``: optional fixed exit step (0-based) used when ``exit_at_step`` is not passed.
    """

    model_type = "ouro"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None
    attention_dropout: float | int = 0.0
    total_ut_steps: int = 4
    early_exit_threshold: float | None = 1.0
    early_exit_step: int | None = None
    auto_map: dict[str, Any] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.sliding_window = self.sliding_window if self.use_sliding_window else None
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = [
                "sliding_attention"
                if self.sliding_window is not None and i >= self.max_window_layers
                else "full_attention"
                for i in range(self.num_hidden_layers)
            ]
        if self.total_ut_steps < 1:
            raise ValueError(f"total_ut_steps must be >= 1, got {self.total_ut_steps}")
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        # a natively built config has no auto_map; writing ``null`` would break AutoConfig on reload
        out = super().to_dict()
        if out.get("auto_map") is None:
            out.pop("auto_map", None)
        return out
