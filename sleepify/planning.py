"""The conversion plan: where the Jet layers go, how big they are, which blocks loop, how the model sleeps,
and where each of these choices came from.

:func:`plan_conversion` reads only the base model's config (the parameter counts come from modules built
on the meta device: no weights), so ``sleepify convert --dry-run`` prints exactly the plan the real run then
follows. Every value a recipe (or an override) sets is kept as it is: the shipped alias recipes keep their
explicit settings. Every value it leaves unset (``null`` in the schema) comes from a default rule:

- **Jet layers** (``conversion.jet_layers``): none when the base already has SSM layers (Jet-Nemotron, the
  built-in hybrids); otherwise one MLP-free Jet layer after every 4th base block (after blocks 3, 7, 11,
  ...: the spacing of the shipped alias recipes, and the paper's 6 Jet layers in Ouro-1.4B's 24 blocks), at
  least one (after the middle block).
- **Jet size** (``conversion.jet.num_heads`` / ``head_dim``): the base attention's head dim (at most 256,
  what fla's kernels take) and half its heads (Ouro-1.4B: 16 heads x 128 -> 8 x 128, the paper's < 10 %);
  ``expand_v``, ``conv_size``, ``generator_reduction`` and ``norm_eps`` are the schema defaults
  (Jet-Nemotron's).
- **Budget** (``conversion.max_param_growth``, default 10 %): while the inserted layers would add more than
  that fraction of the base parameters, the rule-chosen parts shrink: first fewer heads (down to 1), then a
  Jet layer after every 8th, 16th, ... block. If even the smallest choice is over budget (or the recipe's
  own choices are), the plan says so; it is never an error.
- **Loop** (``conversion.loop``): the whole stack for a model pretrained looped (Ouro, the built-ins);
  otherwise the middle half of the base blocks (``[n // 4, n - n // 4)``: the paper loops the middle 14 of
  Jet-Nemotron-2B's 28 blocks) with the Jet layers inserted after them.
- **Sleep** (``sleep.window`` / ``passes`` / ``eviction``): the recipe's values, i.e. the schema defaults
  when it sets none (L = 2048, N = 1, hard eviction); an unset window never exceeds the base model's
  context (``max_position_embeddings``), and a window set larger than it gets a warning (attention would
  span positions the base never saw); ``sleep.wake_passes``: the family's (Ouro: its
  ``total_ut_steps``; 1 otherwise).

Examples::

    >>> from transformers import Qwen2Config
    >>> from sleepify.config import load_recipe
    >>> plan = plan_conversion(Qwen2Config(num_hidden_layers=8), load_recipe().recipe)
    >>> plan.jet_layers, plan.loop_range  # loop: base blocks [2, 6) with the Jet layer after block 3
    ([3, 7], (2, 7))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from sleepify.config.dtypes import DTYPES
from sleepify.errors import SleepifyError
from sleepify.fsutil import human_size

__all__ = ["ConversionPlan", "plan_conversion"]

JET_EVERY = 4  # one Jet layer after every 4th base block (the shipped alias recipes' spacing)
MAX_JET_HEAD_DIM = 256  # fla's gated delta rule kernels take key heads up to 256
SSM_KINDS = ("jet", "gdn")
RECIPE = "recipe"


@dataclass
class ConversionPlan:
    """What conversion will build (module docstring). ``sources`` maps each recipe key to ``"recipe"`` or the
    default rule that chose its value."""

    base_config: Any
    model_type: str
    layers: list[Any]  # per base layer, its LayerInfo (kind, MLP, sliding window)
    jet_layers: list[int]
    jet: dict[str, Any]  # the sizes of every inserted Jet layer ({} without any)
    loop_start: int
    loop_end: int | None  # None = the last block
    window: int
    passes: int
    eviction: str
    wake_passes: int
    conv_state: str
    max_param_growth: float
    base_params: int
    jet_layer_params: int  # of one inserted Jet layer (norm + JetBlock)
    dtype: str
    sources: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived
    @property
    def block_plan(self) -> list[dict[str, Any]]:
        """``SleepHybridConfig.block_plan``: base layers in order, each inserted Jet layer after its block."""
        plan: list[dict[str, Any]] = []
        inserted = set(self.jet_layers)
        jets = 0
        for i, info in enumerate(self.layers):
            plan.append({"type": "base", "index": i, "mixer": info.kind, "mlp": info.has_mlp})
            if i in inserted:
                plan.append({"type": "jet", "index": jets, "mixer": "jet", "mlp": False})
                jets += 1
        return plan

    @property
    def num_blocks(self) -> int:
        return len(self.layers) + len(self.jet_layers)

    @property
    def loop_range(self) -> tuple[int, int]:
        return self.loop_start, self.num_blocks if self.loop_end is None else self.loop_end

    @property
    def added_params(self) -> int:
        return self.jet_layer_params * len(self.jet_layers)

    @property
    def growth(self) -> float:
        return self.added_params / max(self.base_params, 1)

    @property
    def state_floats(self) -> int:
        """Fast-weight state per sequence of the inserted layers: ``H x K x V`` fp32 floats per layer (plus
        each layer's ``value_dim x W`` conv window)."""
        if not self.jet_layers:
            return 0
        j = self.jet
        v = int(j["head_dim"] * j["expand_v"])
        per = j["num_heads"] * j["head_dim"] * v + j["num_heads"] * v * j["conv_size"]
        return per * len(self.jet_layers)

    def hybrid_config(self) -> Any:
        """The :class:`~sleepify.models.hybrid.SleepHybridConfig` of this plan."""
        from sleepify.layers.gates import spread_rate_min
        from sleepify.models.hybrid import SleepHybridConfig
        from sleepify.sleep import sleep_config_fields

        # the slowest forget-gate rate of the "spread" init follows the window (layers/gates.py)
        jet = {**self.jet, "decay_rate_min": spread_rate_min(self.window)} if self.jet else {}
        return SleepHybridConfig(
            base_config=self.base_config.to_dict(),
            block_plan=self.block_plan,
            jet=jet,
            loop_start=self.loop_start,
            loop_end=self.loop_end,
            **sleep_config_fields(
                window=self.window,
                passes=self.passes,
                eviction=self.eviction,
                wake_passes=self.wake_passes,
                conv_state=self.conv_state,
            ),
            architectures=["SleepHybridForCausalLM"],
        )

    def recipe_updates(self) -> dict[str, Any]:
        """The planned values as recipe keys (what the stored ``recipe.yaml`` records: the recipe as run)."""
        jet = {k: v for k, v in self.jet.items()}
        return {
            "conversion": {
                "jet_layers": list(self.jet_layers),
                **({"jet": jet} if jet else {}),
                "loop": {"start": self.loop_start, "end": self.loop_end},
            },
            "sleep": {"wake_passes": self.wake_passes, "window": self.window},
        }

    def summary(self) -> list[str]:
        """Report lines (markdown bullets): every choice with its source, parameter and memory growth."""
        start, end = self.loop_range
        n = self.num_blocks
        src = self.sources
        added = self.added_params
        nbytes = DTYPES.get(self.dtype, 4)
        over = self.growth > self.max_param_growth
        budget = f"budget conversion.max_param_growth = {100 * self.max_param_growth:g}%"
        lines = [
            f"- parameters: {self.base_params:,} before, {self.base_params + added:,} after "
            f"(+{added:,}, +{100 * self.growth:.2f}%; {budget}" + (", EXCEEDED" if over else "") + ")",
            f"- memory: weights +{human_size(added * nbytes)} ({self.dtype}); fast-weight state per sequence "
            f"{human_size(4 * self.state_floats)} (fp32), the same at any context length",
            f"- Jet layers: {len(self.jet_layers)}"
            + (f", after base blocks {self.jet_layers}" if self.jet_layers else "")
            + f" [{src['conversion.jet_layers']}]",
        ]
        if self.jet_layers:
            j = self.jet
            lines.append(
                f"- Jet size: {j['num_heads']} head{'s' if j['num_heads'] > 1 else ''} x {j['head_dim']} "
                f"(values x {j['expand_v']:g}), conv "
                f"{j['conv_size']}, generator reduction {j['generator_reduction']}; "
                f"{self.jet_layer_params:,} parameters each"
            )
            for key in ("num_heads", "head_dim", "expand_v", "conv_size", "generator_reduction", "norm_eps"):
                lines.append(f"  - conversion.jet.{key} = {j[key]} [{src['conversion.jet.' + key]}]")
        lines += [
            f"- loop: blocks [{start}, {end}) of {n} (prelude {start}, looped {end - start}, coda {n - end}) "
            f"[{src['conversion.loop']}]",
            f"- sleep: window L = {self.window} [{src['sleep.window']}], passes N = {self.passes} "
            f"[{src['sleep.passes']}], eviction {self.eviction} [{src['sleep.eviction']}], wake passes "
            f"{self.wake_passes} [{src['sleep.wake_passes']}]",
        ]
        return lines


def count_params(module: torch.nn.Module) -> int:
    """Parameters of ``module``, a tied (shared) tensor counted once."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def base_param_count(base_config: Any) -> int:
    """The base model's parameter count, from a copy built on the meta device (no memory, no weights)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    with torch.device("meta"):
        base = MODEL_FOR_CAUSAL_LM_MAPPING[type(base_config)](base_config)
    return count_params(base)


def jet_layer_param_count(hidden_size: int, sizes: dict[str, Any]) -> int:
    """Parameters of one inserted Jet layer (``SleepInsertBlock(JetBlock)``), built on the meta device."""
    from sleepify.layers.insertion import SleepInsertBlock
    from sleepify.layers.jet_block import JetBlock, JetBlockConfig

    with torch.device("meta"):
        block = SleepInsertBlock(JetBlock(JetBlockConfig(hidden_size=hidden_size, **sizes)), hidden_size)
    return count_params(block)


def _attention_shape(config: Any) -> tuple[int, int]:
    """(heads, head dim) of the base attention."""
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    head_dim = getattr(config, "head_dim", None)
    if not head_dim:
        head_dim = config.hidden_size // max(heads, 1)
    return max(heads, 1), int(head_dim)


def _every(n: int, stride: int, loop: tuple[int, int]) -> list[int]:
    """After every ``stride``-th of ``n`` base blocks; one mid-loop instead when none of those would be
    among the looped base blocks ``loop`` (a loop without a Jet layer would have no state to refine)."""
    lo, hi = loop
    positions = list(range(stride - 1, n, stride))
    return positions if any(lo <= p < hi for p in positions) else [(lo + hi - 1) // 2]


def plan_conversion(base_config: Any, recipe: Any) -> ConversionPlan:
    """The plan for ``base_config`` (a transformers config of a supported family) under ``recipe`` (a
    validated :class:`~sleepify.config.schema.Recipe`): the recipe's values where it sets them, the default
    rules of the module docstring elsewhere. Raises SleepifyError on indices outside the model.

    Examples::

        >>> plan = plan_conversion(base_config, load_recipe(["models/ouro-1.4b"]).recipe)
        >>> plan.sources["conversion.jet_layers"]
        'recipe'
    """
    from sleepify.models.hybrid.families import family_for

    family = family_for(base_config.model_type, base_config)
    infos = family.layer_plan(base_config)
    n = len(infos)
    conv = recipe.conversion
    sources: dict[str, str] = {}
    # the looped base blocks of the default loop rule (None: the recipe sets the loop)
    looped = family.pretrained_looped(base_config)
    rule_loop = None if conv.loop is not None else ((0, n) if looped else (n // 4, n - n // 4))

    # -- Jet layer candidates (positions), most preferred first
    if conv.jet_layers is not None:
        bad = [i for i in conv.jet_layers if not 0 <= i < n]
        if bad:
            raise SleepifyError(
                f"conversion.jet_layers {bad} are not base layer indices "
                f"(the model has {n} layers: 0..{n - 1})"
            )
        layer_options = [sorted(conv.jet_layers)]
        sources["conversion.jet_layers"] = RECIPE
    elif any(info.kind in SSM_KINDS for info in infos):
        layer_options = [[]]
        sources["conversion.jet_layers"] = "default: none, the base already has SSM layers"
    else:
        layer_options, stride = [], JET_EVERY
        while True:
            option = _every(n, stride, rule_loop or (0, n))
            if option not in layer_options:
                layer_options.append(option)
            if stride >= n:
                break
            stride *= 2

    # -- Jet size candidates
    heads, head_dim = _attention_shape(base_config)
    jet = conv.jet
    fixed = {
        k: getattr(jet, k) for k in ("expand_v", "conv_size", "generator_reduction", "norm_eps", "decay_init")
    }
    set_keys = jet.model_fields_set
    for k in fixed:
        sources[f"conversion.jet.{k}"] = RECIPE if k in set_keys else "default (schema)"
    if jet.head_dim is not None:
        dim = jet.head_dim
        sources["conversion.jet.head_dim"] = RECIPE
    else:
        dim = min(head_dim, MAX_JET_HEAD_DIM)
        sources["conversion.jet.head_dim"] = f"default: the base attention head dim ({head_dim}"
        sources["conversion.jet.head_dim"] += f", capped at {MAX_JET_HEAD_DIM})" if dim < head_dim else ")"
    head_options = [jet.num_heads] if jet.num_heads is not None else list(range(max(heads // 2, 1), 0, -1))

    # -- the first (most preferred) choice within budget: fewer heads before fewer layers
    base_params = base_param_count(base_config)
    budget = conv.max_param_growth
    cost: dict[int, int] = {}

    def per_layer(h: int) -> int:
        if h not in cost:
            cost[h] = jet_layer_param_count(base_config.hidden_size, dict(fixed, num_heads=h, head_dim=dim))
        return cost[h]

    chosen = None
    for layers in layer_options:
        for h in head_options:
            if not layers or per_layer(h) * len(layers) <= budget * base_params:
                chosen = (layers, h)
                break
        if chosen:
            break
    within = chosen is not None
    if chosen is None:  # even the smallest choice is over budget: take it, the report says so
        chosen = (layer_options[-1], head_options[-1])
    jet_layers, num_heads = chosen

    if "conversion.jet_layers" not in sources:
        stride = JET_EVERY
        while _every(n, stride, rule_loop or (0, n)) != jet_layers:
            stride *= 2
        every = list(range(stride - 1, n, stride))
        rule = (
            f"default: one after every {stride}th base block"
            if every == jet_layers
            else "default: one, mid-loop"
        )
        if stride > JET_EVERY:
            rule += " (every 4th would exceed the budget)" if within else " (the fewest; still over budget)"
        sources["conversion.jet_layers"] = rule
    if jet.num_heads is not None:
        sources["conversion.jet.num_heads"] = RECIPE
    else:
        half = max(heads // 2, 1)
        rule = f"default: half the base attention heads ({heads} / 2)"
        if num_heads < half:
            rule = f"default: the most heads within budget (half the base heads, {half}, would exceed it)"
        sources["conversion.jet.num_heads"] = rule
    sizes = dict(fixed, num_heads=num_heads, head_dim=dim) if jet_layers else {}

    # -- loop
    blocks = n + len(jet_layers)
    if conv.loop is not None:
        loop_start, loop_end = conv.loop.start, conv.loop.end
        sources["conversion.loop"] = RECIPE
        end = blocks if loop_end is None else loop_end
        if not 0 <= loop_start < end <= blocks:
            raise SleepifyError(
                f"conversion.loop [{loop_start}, {end}) is outside the converted model's {blocks} blocks "
                f"({n} base + {len(jet_layers)} Jet); loop indices count the converted blocks"
            )
    elif looped:
        loop_start, loop_end = 0, None
        sources["conversion.loop"] = (
            f"default: the whole stack ({base_config.model_type} was pretrained looped)"
        )
    else:
        first, stop = rule_loop
        # converted index of base block i = i + the Jet layers inserted after blocks before it
        loop_start = first + sum(1 for j in jet_layers if j < first)
        loop_end = None if stop >= n else stop + sum(1 for j in jet_layers if j < stop)
        sources["conversion.loop"] = (
            f"default: the middle half of the base blocks, base [{first}, {stop}) of {n}, with the Jet "
            "layers after them"
        )

    # -- sleep
    sleep = recipe.sleep
    sleep_set = sleep.model_fields_set
    for k in ("window", "passes", "eviction"):
        sources[f"sleep.{k}"] = RECIPE if k in sleep_set else "default (schema)"
    window = sleep.window
    context = getattr(base_config, "max_position_embeddings", None)
    if context and window > context:
        if "window" in sleep_set:
            warnings.warn(
                f"sleep.window = {window} is larger than the base model's context ({context} positions, "
                "max_position_embeddings): one window's attention spans positions the base was never "
                "trained on, so it may not work; set sleep.window <= the base context",
                stacklevel=2,
            )
            sources["sleep.window"] = f"{RECIPE}; larger than the base context {context}"
        else:
            window = int(context)
            sources["sleep.window"] = (
                f"default: the base model's context (the schema's {sleep.window} exceeds it)"
            )
    if "wake_passes" in sleep_set:
        wake = sleep.wake_passes
        sources["sleep.wake_passes"] = RECIPE
    else:
        wake = family.default_wake_passes(base_config)
        sources["sleep.wake_passes"] = (
            f"default: {base_config.model_type}'s passes per forward" if wake > 1 else "default: one pass"
        )

    return ConversionPlan(
        base_config=base_config,
        model_type=base_config.model_type,
        layers=infos,
        jet_layers=list(jet_layers),
        jet=sizes,
        loop_start=loop_start,
        loop_end=loop_end,
        window=window,
        passes=sleep.passes,
        eviction=sleep.eviction,
        wake_passes=wake,
        conv_state=sleep.conv_state,
        max_param_growth=budget,
        base_params=base_params,
        jet_layer_params=per_layer(num_heads) if jet_layers else 0,
        dtype=recipe.model.dtype,
        sources=sources,
    )
