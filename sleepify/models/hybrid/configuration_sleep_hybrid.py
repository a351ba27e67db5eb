"""``SleepHybridConfig`` (``model_type="sleep_hybrid"``): a pretrained model made sleep-capable.

The config records everything needed to rebuild the converted model without the recipe:

- ``base_config``: the base model's own config as a dict (with its ``model_type``), e.g. a Qwen2, Llama,
  Ouro or Jet-Nemotron config; the base model is rebuilt from it with transformers' Auto classes.
- ``block_plan``: the blocks in the order they run, each ``{"type": "base", "index": i}`` (layer ``i`` of the
  base model) or ``{"type": "jet", "index": j}`` (inserted MLP-free Jet layer ``j``). Entries also carry
  ``"mixer"`` (``full_attention`` / ``sliding_attention`` / ``jet``) and ``"mlp"`` (bool) for people reading
  the file; the model derives both from the base config and checks they agree.
- ``jet``: the size of every inserted Jet layer (``num_heads, head_dim, expand_v, conv_size,
  generator_reduction, norm_eps``).
- the loop plan ``loop_start`` / ``loop_end``: blocks ``[loop_start, loop_end)`` of ``block_plan`` are looped
  during sleep (prelude before, coda after); ``loop_end=None`` means the last block.
- the sleep settings: ``sleep_window`` (L), ``sleep_passes`` (N), ``eviction`` (``"hard"`` |
  ``"sliding"``) and
  ``wake_passes`` (applications of the looped blocks in one wake forward: 1, or Ouro's ``total_ut_steps``)
  and ``conv_state`` (``"reset"``: the SSM mixers' short-convolution window starts empty in every pass of
  every window, Algorithm 1; ``"carry"``: the method variant where it flows on like S;
  ``"carry-across-windows"`` / ``"carry-between-passes"``: one of carry's two paths only, for ablations).

See ``docs/sleep-semantics.md`` for what these mean at run time.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["JET_SIZE_KEYS", "SleepHybridConfig"]

JET_SIZE_KEYS = ("num_heads", "head_dim", "expand_v", "conv_size", "generator_reduction", "norm_eps")
EVICTIONS = ("hard", "sliding")
CONV_STATES = ("reset", "carry", "carry-across-windows", "carry-between-passes")


@strict
class SleepHybridConfig(PreTrainedConfig):
    """Config of :class:`~sleepify.models.hybrid.SleepHybridForCausalLM` (see the module docstring)."""

    model_type = "sleep_hybrid"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    base_config: dict | None = None
    block_plan: list | None = None
    jet: dict | None = None
    loop_start: int = 0
    loop_end: int | None = None
    sleep_window: int = 2048
    sleep_passes: int = 1
    eviction: str = "hard"
    wake_passes: int = 1
    conv_state: str = "reset"
    # mirrored from the base config (read by generation utilities and by people)
    vocab_size: int | None = None
    hidden_size: int | None = None
    # the context the model states to tools that read it (lm-eval, pipelines, vLLM): the base model's
    max_position_embeddings: int | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.base_config is None:
            self.base_config = {}
        elif isinstance(self.base_config, PreTrainedConfig):
            self.base_config = self.base_config.to_dict()
        # JSON-normal form (e.g. id2label keys become strings), so save -> load round-trips exactly
        self.base_config = json.loads(json.dumps(dict(self.base_config), default=str))
        if self.block_plan is None:
            n = int(self.base_config.get("num_hidden_layers", 0) or 0)
            self.block_plan = [{"type": "base", "index": i} for i in range(n)]
        self.block_plan = [dict(entry) for entry in self.block_plan]
        self.jet = dict(self.jet or {})
        if self.base_config:
            self.vocab_size = self.base_config.get("vocab_size", self.vocab_size)
            self.hidden_size = self.base_config.get("hidden_size", self.hidden_size)
            self.initializer_range = self.base_config.get("initializer_range", self.initializer_range)
            self.tie_word_embeddings = bool(self.base_config.get("tie_word_embeddings", False))
            if self.max_position_embeddings is None:
                self.max_position_embeddings = self.base_config.get("max_position_embeddings")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(self, name, None) is None and self.base_config.get(name) is not None:
                setattr(self, name, self.base_config[name])
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------------ helpers
    @property
    def base_model_type(self) -> str:
        return str(self.base_config.get("model_type", ""))

    @property
    def num_blocks(self) -> int:
        return len(self.block_plan)

    @property
    def loop_range(self) -> tuple[int, int]:
        """``(start, end)`` of the looped blocks, ``end`` resolved (exclusive)."""
        end = self.num_blocks if self.loop_end is None else int(self.loop_end)
        return int(self.loop_start), end

    @property
    def num_jet_layers(self) -> int:
        return sum(1 for e in self.block_plan if e["type"] == "jet")

    def build_base_config(self) -> PreTrainedConfig:
        """The base model's config object (through ``AutoConfig.for_model``)."""
        from transformers import AutoConfig

        cfg = dict(self.base_config)
        model_type = cfg.pop("model_type", None)
        if not model_type:
            raise ValueError("SleepHybridConfig.base_config has no model_type")
        for key in ("transformers_version", "architectures", "auto_map"):
            cfg.pop(key, None)
        return AutoConfig.for_model(model_type, **cfg)

    def validate_architecture(self):
        super().validate_architecture()
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {EVICTIONS}, got {self.eviction!r}")
        if self.conv_state not in CONV_STATES:
            raise ValueError(f"conv_state must be one of {CONV_STATES}, got {self.conv_state!r}")
        for name in ("sleep_window", "sleep_passes", "wake_passes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        start, end = self.loop_range
        if not 0 <= start < end <= self.num_blocks and self.num_blocks:
            raise ValueError(
                f"loop [{start}, {end}) is not a non-empty range of the {self.num_blocks} blocks "
                "of block_plan"
            )
        jets = sorted(e["index"] for e in self.block_plan if e.get("type") == "jet")
        if jets != list(range(len(jets))):
            raise ValueError(f"block_plan jet indices must be 0..{len(jets) - 1} in some order, got {jets}")
        for entry in self.block_plan:
            if entry.get("type") not in ("base", "jet"):
                raise ValueError(f"block_plan entries need type 'base' or 'jet', got {entry}")
        if jets:
            missing = [k for k in JET_SIZE_KEYS if k not in self.jet]
            if missing:
                raise ValueError(f"SleepHybridConfig.jet is missing {missing}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["base_config"] = copy.deepcopy(self.base_config)
        return out
