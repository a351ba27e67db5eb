"""``JetNemotronConfig`` (``model_type="jet_nemotron"``), reading NVIDIA's Jet-Nemotron ``config.json`` as is.

The checkpoints name their layer types ``jet`` / ``attn`` / ``swa``, which transformers 5 rejects in
``layer_types``. The config accepts them (and the standard names), stores the standard
names (``linear_attention`` / ``full_attention`` / ``sliding_attention``) in ``layer_types``, and writes the
original names back when serialised, so ``save_pretrained`` produces a file the upstream code can read and
save → load round-trips. ``config.mixer_types`` gives the upstream names.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["JetNemotronConfig", "LAYER_TYPE_TO_STANDARD", "STANDARD_TO_LAYER_TYPE"]

LAYER_TYPE_TO_STANDARD = {"jet": "linear_attention", "attn": "full_attention", "swa": "sliding_attention"}
STANDARD_TO_LAYER_TYPE = {v: k for k, v in LAYER_TYPE_TO_STANDARD.items()}


def _normalise_layer_types(layer_types) -> list[str]:
    if isinstance(layer_types, str):  # upstream accepts a string holding a Python list
        import ast

        layer_types = ast.literal_eval(layer_types)
    out = []
    for t in layer_types:
        std = LAYER_TYPE_TO_STANDARD.get(t, t)
        if std not in STANDARD_TO_LAYER_TYPE:
            raise ValueError(
                f"JetNemotronConfig: unknown layer type {t!r}; use one of {sorted(LAYER_TYPE_TO_STANDARD)} "
                f"(or {sorted(STANDARD_TO_LAYER_TYPE)})"
            )
        out.append(std)
    return out


@strict
class JetNemotronConfig(PreTrainedConfig):
    """Jet-Nemotron: a Qwen2 decoder whose layers mix tokens with a JetBlock (``jet``), full attention
    (``attn``) or sliding-window attention (``swa``).

    ``efficient_attention_config`` is the checkpoint's dict: ``{"jet": {num_heads, head_dim, expand_v,
    conv_size, dconv_generator_reduction, norm_eps, ...}, "swa": {"window_size": N}}``.
    """

    model_type = "jet_nemotron"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int | None = 2
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = True
    rope_parameters: dict | None = None
    attention_dropout: float | int = 0.0
    layer_types: list[str] | None = None
    efficient_attention_config: dict | None = None
    max_window_layers: int = 28
    use_mrope: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = 151643

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.layer_types is None:
            self.layer_types = ["full_attention"] * self.num_hidden_layers
        self.layer_types = _normalise_layer_types(self.layer_types)
        if self.efficient_attention_config is None:
            self.efficient_attention_config = {}
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------- helpers
    @property
    def mixer_types(self) -> list[str]:
        """The per-layer types with Jet-Nemotron's names: ``jet`` / ``attn`` / ``swa``."""
        return [STANDARD_TO_LAYER_TYPE[t] for t in self.layer_types]

    @property
    def swa_window_size(self) -> int | None:
        """The SWA window (the query plus ``window - 1`` previous tokens), or None without SWA layers."""
        swa = (self.efficient_attention_config or {}).get("swa")
        if not swa:
            return None
        return int(swa["window_size"])

    def jet_block_config(self, **overrides):
        """The :class:`~sleepify.layers.jet_block.JetBlockConfig` of this model's jet layers."""
        from sleepify.layers.jet_block import JetBlockConfig

        jet = (self.efficient_attention_config or {}).get("jet", {})
        return JetBlockConfig.from_jet_nemotron(
            jet, hidden_size=self.hidden_size, initializer_range=self.initializer_range, **overrides
        )

    def validate_architecture(self):
        super().validate_architecture()
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        if "sliding_attention" in (self.layer_types or []) and self.swa_window_size is None:
            raise ValueError('swa layers need efficient_attention_config["swa"]["window_size"]')

    def to_dict(self):
        out = super().to_dict()
        if out.get("layer_types") is not None:
            out["layer_types"] = [STANDARD_TO_LAYER_TYPE.get(t, t) for t in out["layer_types"]]
        return out
