"""``SleepHybridForCausalLM``: a supported base model plus inserted MLP-free Jet layers, run by the
sleep engine.

Layout of the parameters (and of the saved checkpoint):

- ``base.*``: the base model exactly as its family names it (``base.model.layers.3.self_attn.q_proj.weight``,
  ``base.lm_head.weight``, ...), built with transformers' Auto classes from ``config.base_config``; tied
  embeddings stay tied (the base model's own ``_tied_weights_keys``).
- ``jet_layers.{j}.*``: inserted Jet layer ``j`` = ``SleepInsertBlock(JetBlock)`` (``norm.weight``,
  ``mixer.q_proj.weight``, ...); its ``o_proj`` starts at zero, so the converted model computes exactly
  what the base model computes until training changes it.

The forward is :func:`sleepify.sleep.sleep_forward` over the blocks in ``config.block_plan`` order; read
``sleepify/sleep.py`` (or ``docs/sleep-semantics.md``) for what it computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from sleepify.layers.insertion import SleepInsertBlock
from sleepify.layers.jet_block import JetBlock, JetBlockConfig
from sleepify.models.compat import accepts_legacy_cache, cache_kwargs, generation_cache, set_generation_cache
from sleepify.models.hybrid.configuration_sleep_hybrid import JET_SIZE_KEYS, SleepHybridConfig
from sleepify.models.hybrid.families import (
    SLEEPIFY_ATTENTION,
    Family,
    InsertedJetBlock,
    LayerInfo,
    family_for,
)
from sleepify.sleep import SleepSettings, settings_from_config, sleep_forward

__all__ = ["HybridStack", "SleepHybridForCausalLM", "SleepHybridOutput", "SleepHybridPreTrainedModel"]


def _keep_count(logits_to_keep: Any) -> int:
    """transformers' ``logits_to_keep``: an int (last ``k`` columns; 0 = all). Index tensors are not
    supported: the engine assembles logits window by window."""
    if isinstance(logits_to_keep, Tensor):
        if logits_to_keep.numel() != 1:
            raise ValueError("SleepHybridForCausalLM: logits_to_keep must be an int (the last k columns)")
        logits_to_keep = int(logits_to_keep)
    return int(logits_to_keep or 0)


@dataclass
class SleepHybridOutput(CausalLMOutputWithPast):
    """transformers' causal-LM output (``loss``: mean CE over scored predictions; ``logits`` ``[B, T, V]``,
    finite, see ``sleep_forward``; the :class:`~sleepify.generation.SleepCache` under transformers' name for
    the cache, see :mod:`sleepify.models.compat`, with ``use_cache=True``) plus ``sleep_state``: the same
    cache (an alias, as older sleepify named it); ``window_kinds`` / ``window_passes``: per window, "wake" |
    "sleep" | "mixed" and the passes of the looped blocks that ran (uncached forward); ``num_loss_tokens``:
    scored predictions; ``loss_sum``: summed CE."""

    sleep_state: Any = None
    window_kinds: list | None = None
    window_passes: list | None = None
    num_loss_tokens: int | None = None
    loss_sum: Tensor | None = None


class HybridStack:
    """The hybrid seen by the sleep engine (implements ``sleepify.sleep.SleepStack``)."""

    def __init__(self, family: Family, blocks: list, loop_start: int, loop_end: int, dtype: torch.dtype):
        self.family = family
        self.blocks = blocks
        self.loop_start = loop_start
        self.loop_end = loop_end
        self.dtype = dtype
        self._coda_empty = loop_end >= len(blocks)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.family.embed(input_ids)

    def rotary(self, probe: Tensor, position_ids: Tensor) -> Any:
        return self.family.rotary(probe, position_ids)

    def pass_hook(self, h: Tensor) -> Tensor:
        return self.family.pass_hook(h)

    def final_norm(self, h: Tensor) -> Tensor:
        return self.family.final_norm(h, self._coda_empty)

    def lm_head(self, h: Tensor) -> Tensor:
        return self.family.lm_head(h)


class SleepHybridPreTrainedModel(PreTrainedModel):
    config: SleepHybridConfig
    config_class = SleepHybridConfig
    base_model_prefix = "sleep_hybrid"  # never a key prefix: no prefix magic when loading
    supports_gradient_checkpointing = True  # as the engine's per-window checkpointing (see below)
    _supports_sdpa = True
    # transformers' flash_attention_2 path cannot take the engine's windows (kept keys, sliding eviction);
    # flash-attn is used through the "sleepify" attention instead (docs/gpu.md)
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # the SleepCache can be cropped as far back as its open window and the windows slept in its last
    # ROLLBACK tokens (assisted decoding), so generate() need not treat the model as stateful
    _is_stateful = False

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """transformers' save; a model loaded from an export (its config has an ``auto_map``) through the
        installed package writes the export's remote code beside it too, so the copy loads without sleepify
        as the export did (a remote-code copy of the class gets its files from transformers itself)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if getattr(self.config, "auto_map", None) and self._write_remote_code is not None:
            self._write_remote_code(save_directory)

    # set by sleepify.register_models() (the package writes the bundle; the remote-code copy has none)
    _write_remote_code: Any = None

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config, "initializer_range", 0.02) or 0.02
        if isinstance(module, JetBlock):
            params = dict(module.named_parameters())
            for name, value in module.initial_values().items():
                init.copy_(params[name], value)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif "RMSNorm" in type(module).__name__ and getattr(module, "weight", None) is not None:
            init.ones_(module.weight)


class SleepHybridForCausalLM(SleepHybridPreTrainedModel, GenerationMixin):
    """A sleep-capable hybrid (module docstring). ``forward`` runs the sleep engine."""

    def __init__(self, config: SleepHybridConfig):
        super().__init__(config)
        base_config = config.build_base_config()
        # "sdpa" (the default) runs the engine's attention through the window attention op (SDPA on CPU,
        # flash-attn / fla where they apply: sleepify/ops/attention.py); "eager" keeps transformers' path
        impl = config._attn_implementation
        base_config._attn_implementation = SLEEPIFY_ATTENTION if impl in (None, "sdpa") else impl
        self.family_class = family_for(base_config.model_type)
        try:
            base_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(base_config)]
        except KeyError:
            raise ValueError(f"no causal-LM class registered for {base_config.model_type!r}") from None
        self.base = base_class(base_config)
        self.layer_infos: list[LayerInfo] = self.family_class.layer_plan(base_config)
        self._check_plan(config, len(self.layer_infos))
        n_jet = config.num_jet_layers
        if n_jet:
            jet_cfg = JetBlockConfig(
                hidden_size=base_config.hidden_size,
                initializer_range=getattr(base_config, "initializer_range", 0.02),
                zero_output=True,
                decay_init=config.jet.get("decay_init", "spread"),
                decay_rate_min=float(config.jet.get("decay_rate_min", 1e-3)),
                **{k: config.jet[k] for k in JET_SIZE_KEYS},
            )
            eps = float(getattr(base_config, "rms_norm_eps", 1e-6))
            self.jet_layers = nn.ModuleList(
                [SleepInsertBlock(JetBlock(jet_cfg), base_config.hidden_size, eps=eps) for _ in range(n_jet)]
            )
        else:
            self.jet_layers = nn.ModuleList()
        self.post_init()

    @staticmethod
    def _check_plan(config: SleepHybridConfig, num_base: int) -> None:
        bases = [e["index"] for e in config.block_plan if e["type"] == "base"]
        if bases != list(range(num_base)):
            raise ValueError(
                f"block_plan must list the {num_base} base layers once each, in order; "
                f"got base indices {bases}"
            )

    # ---------------------------------------------------------------- embeddings (HF API)
    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.base.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.base.set_output_embeddings(value)

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> nn.Embedding:
        """transformers' resize (of the base model's embeddings and head), then the mirrored sizes."""
        embeddings = self.base.resize_token_embeddings(*args, **kwargs)
        self.config.vocab_size = self.base.config.vocab_size
        self.config.base_config["vocab_size"] = self.base.config.vocab_size
        return embeddings

    # ---------------------------------------------------------------- gradient checkpointing (HF API)
    # The sleep engine checkpoints whole windows (every pass of the looped blocks is recomputed in the
    # backward pass); that is what these switch on, e.g. from the HF Trainer. transformers 5.24 renamed
    # gradient_* to activation_* (the old names still route here); both sets are defined, so either works
    # on every supported version without a deprecation warning.
    _checkpoint_windows = False

    def activation_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        self._checkpoint_windows = True

    def activation_checkpointing_disable(self) -> None:
        self._checkpoint_windows = False

    gradient_checkpointing_enable = activation_checkpointing_enable
    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_activation_checkpointing(self) -> bool:
        return self._checkpoint_windows

    is_gradient_checkpointing = is_activation_checkpointing

    # ---------------------------------------------------------------- PEFT
    def attention_lora_targets(self, include_jet: bool = False) -> list[str]:
        """Full names of the softmax-attention projections (``q/k/v/o_proj``), for
        ``peft.LoraConfig(target_modules=...)``: a bare ``["q_proj", "v_proj"]`` also matches the Jet
        layers' projections (the inserted ones and a Jet-Nemotron base's). ``include_jet`` adds those."""
        modules = dict(self.named_modules())
        names = []
        for name, module in modules.items():
            parent, _, leaf = name.rpartition(".")
            if not isinstance(module, nn.Linear) or leaf not in ("q_proj", "k_proj", "v_proj", "o_proj"):
                continue
            if include_jet or not isinstance(modules.get(parent), JetBlock):
                names.append(name)
        return names

    # ---------------------------------------------------------------- the block view
    def block_table(self) -> list[dict[str, Any]]:
        """One row per block in run order: index, kind, has_mlp, inserted, looped."""
        start, end = self.config.loop_range
        rows = []
        for i, entry in enumerate(self.config.block_plan):
            if entry["type"] == "base":
                info = self.layer_infos[entry["index"]]
                kind, mlp, inserted = info.kind, info.has_mlp, False
            else:
                kind, mlp, inserted = "jet", False, True
            rows.append(
                {
                    "index": i,
                    "source": f"{entry['type']}[{entry['index']}]",
                    "kind": kind,
                    "has_mlp": mlp,
                    "inserted": inserted,
                    "looped": start <= i < end,
                }
            )
        return rows

    def sleep_stack(self) -> HybridStack:
        """The blocks in plan order as the engine sees them."""
        family = self.family_class(self.base)
        base_blocks = family.base_blocks()
        blocks = []
        for entry in self.config.block_plan:
            if entry["type"] == "base":
                blocks.append(base_blocks[entry["index"]])
            else:
                blocks.append(InsertedJetBlock(self.jet_layers[entry["index"]]))
        start, end = self.config.loop_range
        dtype = self.get_input_embeddings().weight.dtype
        return HybridStack(family, blocks, start, end, dtype)

    def sleep_settings(self, **overrides: Any) -> SleepSettings:
        """The engine settings from the config (``window``, ``passes``, ``wake_passes``, ``eviction``), with
        overrides (None values are ignored)."""
        return settings_from_config(self.config, **overrides)

    # ---------------------------------------------------------------- forward
    @accepts_legacy_cache
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        loss_mask: Tensor | None = None,
        sleep_state: Any = None,
        logits: str = "stream",
        sleep_passes: int | None = None,
        sleep_window: int | None = None,
        eviction: str | None = None,
        checkpoint_windows: bool | None = None,
        truncate_passes: int | None = None,
        truncate_windows: int | None = None,
        sleep_windows: list[bool] | None = None,
        backend: str | None = None,
        return_dict: bool | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Any,
    ) -> SleepHybridOutput | tuple:
        """Run the sleep engine over ``input_ids [B, T]``.

        Args:
            attention_mask: 2-D ``[B, T]``, 1 = real token, 0 = padding. With ``cache`` it
                may cover the whole stream (its last ``T`` columns are used), as ``generate()`` passes it.
                Without labels every row's windows count its own real tokens, so a row's logits do not
                depend on its padding (left, right, anywhere) nor on its batch-mates; with labels
                (training, ``sleepify eval``) windows are cut over the batch's columns, as in the paper's
                left-padded Depo (``docs/sleep-semantics.md``, rule 7).
            labels: HF-style ``[B, T]`` (``-100`` = not scored; shifted inside: position ``p`` predicts
                ``labels[p + 1]``). Alternatively ``loss_mask`` ``[B, T]`` (sleepify's data format:
                ``loss_mask[i] = 1`` iff token ``i`` is a target) with ``input_ids`` as the targets.
            sleep_state: an alias of ``cache`` (what an earlier output's ``sleep_state`` holds).
            logits: "stream" (default: every position's streaming prediction, finite everywhere), "wake",
                "all" or "none" (see :func:`sleepify.sleep.sleep_forward`).
            sleep_passes / sleep_window / eviction: override N, L, the eviction of the config.
            checkpoint_windows / truncate_passes / truncate_windows: memory options (training).
            sleep_windows: force sleep (True) / wake (False) per window.
            cache: a :class:`sleepify.generation.SleepCache` (what ``generate()`` uses; ``past_key_values``
                is accepted too, as transformers < 5.24 names it): the new tokens are appended to its
                streams with incremental decoding (one wake forward over the new tokens; a row sleeps when
                its window is full), the awake logits are returned (every column's equals the uncached
                forward's over the whole sequence) and so is the cache.
            use_cache: True without a ``cache`` starts one (``SleepCache(model, ...)`` with this call's
                engine overrides) and returns it: the streaming contract.
            logits_to_keep: return the logits of the last ``k`` columns only (0 = all), as in transformers;
                the loss still covers the whole sequence.
            inputs_embeds: ``[B, T, H]`` embeddings instead of ``input_ids`` (not with ``cache``).
            output_hidden_states: the embeddings, then every block's output in plan order (looped blocks:
                their last wake pass), the last after the final norm; each ``[B, T, H]``, as streamed.
            output_attentions: not supported (attention runs per window through the window attention op;
                the weights are never materialised): True raises.
            return_dict: False returns ``to_tuple()`` of the output, as in transformers.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("SleepHybridForCausalLM takes exactly one of input_ids and inputs_embeds")
        if output_attentions if output_attentions is not None else self.config.output_attentions:
            raise ValueError(
                "output_attentions is not supported by the sleep-capable model: attention runs window by "
                "window through the window attention op and its weights are never materialised"
            )
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        if sleep_state is not None:
            from sleepify.generation import SleepCache

            if not isinstance(sleep_state, SleepCache) or cache is not None:
                raise ValueError(
                    "sleep_state= takes the SleepCache an earlier call returned (it is an alias of "
                    "past_key_values=; call with use_cache=True to get one)"
                )
            cache = sleep_state
        overrides = {"passes": sleep_passes, "window": sleep_window, "eviction": eviction, "backend": backend}
        if cache is None and use_cache and labels is None and loss_mask is None:
            from sleepify.generation import SleepCache

            cache = SleepCache(self, **overrides)
        if cache is not None:
            if inputs_embeds is not None:
                raise ValueError("decoding through a SleepCache takes input_ids, not inputs_embeds")
            if labels is not None or loss_mask is not None or output_hidden_states:
                raise ValueError("a call with a cache returns logits only (no labels, no hidden states)")
            out = self._forward_cached(input_ids, attention_mask, cache, logits_to_keep, overrides)
            return out if return_dict else out.to_tuple()
        if labels is None and loss_mask is not None:
            if input_ids is None:
                raise ValueError("loss_mask reads its targets from input_ids; pass labels with inputs_embeds")
            labels = input_ids.masked_fill(loss_mask.to(input_ids.device) == 0, -100)
        if checkpoint_windows is None and self.training and self._checkpoint_windows:
            checkpoint_windows = True  # gradient_checkpointing_enable()
        settings = self.sleep_settings(
            passes=sleep_passes,
            window=sleep_window,
            eviction=eviction,
            checkpoint_windows=checkpoint_windows,
            truncate_passes=truncate_passes,
            truncate_windows=truncate_windows,
            backend=backend,
        )
        out = sleep_forward(
            self.sleep_stack(),
            settings,
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            state=sleep_state,
            logits=logits,
            sleep_windows=sleep_windows,
            logits_to_keep=_keep_count(logits_to_keep),
            inputs_embeds=inputs_embeds,
            output_hidden_states=bool(output_hidden_states),
            row_windows=labels is None,
        )
        result = SleepHybridOutput(
            loss=out.loss,
            logits=out.logits,
            window_kinds=out.window_kinds,
            window_passes=out.window_passes,
            num_loss_tokens=out.num_loss_tokens,
            loss_sum=out.loss_sum,
            hidden_states=out.hidden_states,
        )
        return result if return_dict else result.to_tuple()

    def _forward_cached(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        cache: Any,
        logits_to_keep: Any,
        overrides: dict[str, Any],
    ) -> SleepHybridOutput:
        from sleepify.generation import SleepCache

        if not isinstance(cache, SleepCache):
            raise ValueError(
                f"SleepHybridForCausalLM takes a sleepify.generation.SleepCache as its cache, got "
                f"{type(cache).__name__} (start one with use_cache=True or SleepCache(model))"
            )
        for name, value in overrides.items():
            held = getattr(cache.settings, name)
            if value is not None and value != held:
                raise ValueError(f"this cache runs with {name}={held!r}; a call with it cannot use {value!r}")
        T = input_ids.shape[1]
        mask = None if attention_mask is None else attention_mask[:, -T:]
        keep = _keep_count(logits_to_keep)
        logits = cache.streams.feed(input_ids, mask, logits="last" if keep == 1 else "all")
        if keep > 1:
            logits = logits[:, -keep:]
        return SleepHybridOutput(logits=logits, sleep_state=cache, **cache_kwargs(cache))

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):  # noqa: ANN001
        """``generate()`` decodes incrementally through a :class:`~sleepify.generation.SleepCache`; other
        ``cache_implementation`` values are refused (they would be silently ignored otherwise)."""
        impl = generation_config.cache_implementation
        if impl not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={impl!r} is not supported by the sleep-capable model: it decodes "
                "through its own SleepCache (leave cache_implementation unset)"
            )
        if generation_cache(model_kwargs) is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        from sleepify.generation import SleepCache

        set_generation_cache(model_kwargs, SleepCache(self))

    @accepts_legacy_cache
    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        cache: Any = None,
        attention_mask: Tensor | None = None,
        **kwargs,
    ):
        if cache is None:
            # no cache (use_cache=False): every step re-runs the engine on the whole prefix, which follows
            # the sleep rules exactly, just slowly
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        seen = cache.get_seq_length()
        return {
            "input_ids": input_ids[:, seen:],
            "attention_mask": attention_mask,
            "cache": cache,
            "logits_to_keep": kwargs.get("logits_to_keep", 0) or 0,
        }
