"""The typed recipe schema. Every stage validates its recipe against it before any work starts.

A recipe is one YAML document with a section per concern. Every section has defaults, so a recipe
only states what differs; ``sleepify recipes show NAME`` prints the fully resolved result.
Unknown keys are errors (with the closest valid key suggested): a typo must never be ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticKnownError

from sleepify.config.dtypes import DtypeName

MAX_INT = 2**31 - 1  # counts, sizes and indices above this are typos (and overflow torch's int32 paths)


class Section(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; ints are still accepted where a float is expected.
    # allow_inf_nan=False: every float is finite (.inf and .nan are refused with the key that holds them).
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, value: Any) -> Any:
        """Every int (alone or in a list) within +-MAX_INT: range checks per key say what is valid; this
        keeps a 40-digit number from reaching torch as an overflow deep inside a stage."""
        for v in value if isinstance(value, list) else (value,):
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_INT:
                raise PydanticKnownError("less_than_equal", {"le": MAX_INT})
        return value


class ModelSection(Section):
    """Where the base model comes from."""

    source: str = Field("", description="alias (e.g. ouro-1.4b), Hub id, local folder, or builtin:NAME")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    dtype: DtypeName = Field("float32", description="weights dtype on load")
    attn_implementation: str = Field(
        "sdpa",
        description="attention of the converted model: sdpa (sleepify's window attention op: SDPA, or "
        "flash-attn / fla on GPU) or eager (transformers' masked path)",
    )


class JetSection(Section):
    """Size of each inserted Jet layer (JetBlock of Jet-Nemotron)."""

    num_heads: int | None = Field(
        None,
        gt=0,
        description="key/query heads; null = half the base attention heads, fewer if over max_param_growth",
    )
    head_dim: int | None = Field(
        None, gt=0, description="key head dimension; null = the base attention head dim (at most 256)"
    )
    expand_v: float = Field(2.0, gt=0, description="value head dim = head_dim * expand_v")
    conv_size: int = Field(4, gt=0, description="width W of the dynamic convolution on values")
    generator_reduction: int = Field(8, gt=0, description="kernel-generator hidden = value_dim / reduction")
    norm_eps: float = Field(1e-5, gt=0, description="epsilon of the gated RMSNorm")
    decay_init: Literal["spread", "fla"] = Field(
        "spread",
        description="forget-gate (A_log, dt_bias) init: spread (per-head decay rates log-spaced in "
        "[1e-3, 0.1], the same for every seed; docs/sleep-semantics.md) or fla (fla/Mamba2's random draw)",
    )


class LoopSection(Section):
    """Which blocks loop during sleep: prelude [0, start), looped [start, end), coda [end, D)."""

    start: int = Field(0, ge=0, description="first looped block (index in the converted model)")
    end: int | None = Field(None, description="one past the last looped block; null = the last block")


class ConversionSection(Section):
    """How a pretrained model becomes a sleep-capable hybrid."""

    jet_layers: list[int] | None = Field(
        None,
        description="insert an MLP-free Jet layer after each of these base blocks (0-based indices); null = "
        "one after every 4th block (fewer if over max_param_growth), none if the base has SSM layers",
    )
    jet: JetSection = Field(default_factory=JetSection)
    loop: LoopSection | None = Field(
        None,
        description="the whole stack for a model pretrained looped (Ouro), else the middle half of the base "
        "blocks with the Jet layers after them",
    )
    max_param_growth: float = Field(
        0.10,
        gt=0,
        description="budget of the default rules: inserted parameters / base parameters at most this",
    )
    decay_init: Literal["spread", "fla"] | None = Field(
        None,
        description="forget-gate init of the SSM mixers of a builtin:NAME model (null = the model's own "
        "default, spread); inserted Jet layers use conversion.jet.decay_init",
    )


class PassesStep(Section):
    """One entry of ``sleep.passes_schedule``: from optimizer step ``step`` on (0-based), ``passes`` = N."""

    step: int = Field(ge=0, description="first optimizer step (0-based) that uses these passes")
    passes: int = Field(ge=1, description="N from this step on")


class SleepSection(Section):
    """Sleep semantics (SPEC §3): windows of L tokens, N passes of the looped blocks before eviction."""

    window: int = Field(2048, gt=0, description="L: attention window; the model sleeps when it is full")
    passes: int = Field(
        1, ge=1, description="N: sleep passes over the looped blocks per window (1 = baseline)"
    )
    eviction: Literal["hard", "sliding"] = Field("hard", description="what attention keeps after a sleep")
    wake_passes: int = Field(1, ge=1, description="passes for windows holding loss tokens (paper: 1)")
    checkpoint_windows: bool = Field(True, description="activation checkpointing per window in training")
    truncate_passes: int | None = Field(None, ge=1, description="backprop through only the last k passes")
    truncate_windows: int | None = Field(None, ge=1, description="backprop through only the last k windows")
    conv_state: Literal["reset", "carry", "carry-across-windows", "carry-between-passes"] = Field(
        "reset",
        description="short-convolution state of the SSM mixers: reset (Algorithm 1: only S carries; the "
        "conv window starts empty in every pass of every window) or carry (method variant: it flows on "
        "like S, across passes and windows); carry-across-windows / carry-between-passes keep only one of "
        "carry's two paths (ablation)",
    )
    passes_schedule: list[PassesStep] | None = Field(
        None,
        description="N over training: [{step: 0, passes: 2}, {step: 250, passes: 4}] = N = 2 for steps "
        "0-249, then 4 (steps count from 0; the first entry is step 0; sleep.passes must equal the last "
        "entry: it is the N the trained model keeps)",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> SleepSection:
        schedule = self.passes_schedule
        if schedule is None:
            return self
        if not schedule:
            raise ValueError("sleep.passes_schedule is empty: give at least [{step: 0, passes: N}] or null")
        if schedule[0].step != 0:
            raise ValueError(f"sleep.passes_schedule must start at step 0, got step {schedule[0].step}")
        steps = [e.step for e in schedule]
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"sleep.passes_schedule steps must increase strictly, got {steps}")
        if self.passes != schedule[-1].passes:
            raise ValueError(
                f"sleep.passes ({self.passes}) must equal the last sleep.passes_schedule entry "
                f"({schedule[-1].passes}): the trained model keeps the N it was trained with last "
                "(to train without the schedule, set sleep.passes_schedule=null)"
            )
        return self


class DataSection(Section):
    """Training / evaluation data: what ``--data`` takes and how its rows become tokens (docs/data.md)."""

    path: str = Field(
        "",
        description="a `sleepify data` folder, a saved dataset folder (Dataset or DatasetDict), a "
        ".jsonl/.json/.parquet/.csv file, or a Hub dataset id",
    )
    format: Literal["auto", "tokens", "text", "prompt-answer", "chat"] = Field(
        "auto",
        description="auto (from the columns), tokens (input_ids + loss_mask, as written by `sleepify "
        "data`), text (loss on every token), prompt-answer (loss on the answer), chat (messages through "
        "the tokenizer's chat template, loss on assistant turns)",
    )
    text_field: str | None = Field(None, description="text format: the column (null = text)")
    prompt_field: str | None = Field(None, description="prompt-answer: the prompt column (null = detected)")
    answer_field: str | None = Field(None, description="prompt-answer: the answer column (null = detected)")
    messages_field: str | None = Field(None, description="chat format: the column (null = messages)")
    separator: str | None = Field(
        None,
        description="prompt-answer: text between prompt and answer (null = a space, or nothing when "
        "either side already has whitespace there)",
    )
    config: str | None = Field(None, description="Hub dataset config name")
    test_size: float = Field(
        0.05, gt=0, description="held out when the data has no eval split: a fraction (< 1) or a row count"
    )
    max_tokens: int | None = Field(None, ge=2, description="text format: truncate longer rows to this many")
    train_split: str = Field("train")
    eval_split: str = Field("test")
    max_examples: int | None = Field(None, ge=1, description="use at most this many training examples")


class OptimizerSection(Section):
    """Muon on hidden 2-D matrices, AdamW on everything else (paper §6)."""

    muon_lr: float = Field(1e-3, gt=0, le=10, description="paper: 1e-3 from pretrained, 2e-3 from scratch")
    adamw_lr: float = Field(5e-5, gt=0, le=10, description="paper: 5e-5")
    weight_decay: float = Field(0.0, ge=0)
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    adamw_betas: list[float] = Field(
        default_factory=lambda: [0.9, 0.95], min_length=2, max_length=2, description="each in [0, 1)"
    )
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = Field("original")

    @field_validator("adamw_betas")
    @classmethod
    def _betas_in_range(cls, value: list[float]) -> list[float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"train.optimizer.adamw_betas must each be in [0, 1), got {value}")
        return value


class ScheduleSection(Section):
    kind: Literal["constant", "linear", "cosine"] = Field("cosine")
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainSection(Section):
    """The training loop (warmup and train stages)."""

    seed: int = Field(0, description="same seed => same data order for every N")
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="global batch size (examples per optimizer step)")
    micro_batch_size: int | None = Field(None, ge=1, description="per-forward batch; null = batch_size")
    trainable: list[str] = Field(
        default_factory=lambda: ["*"], description="fnmatch patterns of parameter names to train"
    )
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast (CUDA only)")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="under torchrun: ddp (a model copy per rank) or fsdp (FSDP2: weights, gradients and "
        "optimizer state sharded across ranks, for models that do not fit one GPU)",
    )
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    tensorboard: bool = Field(True)
    wandb_project: str | None = Field(None, description="log to Weights & Biases when set")


class EvalSection(Section):
    batch_size: int = Field(16, ge=1)
    max_examples: int | None = Field(None, ge=1)


class ExportSection(Section):
    max_shard_size: str = Field("5GB")
    dtype: DtypeName | None = Field(None, description="weights dtype of the export; null = the model's own")
    push_to_hub: str | None = Field(None, description="ORG/NAME to upload to after export")
    private: bool = Field(False)


class RunSection(Section):
    dir: str | None = Field(None, description="run folder; null = runs/<recipe name>")
    overwrite: bool = Field(False, description="allow writing into a non-empty folder")


Stage = Literal["convert", "warmup", "train", "eval", "export", "generate", "quickstart", "any"]


class Recipe(Section):
    """A fully resolved recipe."""

    description: str = Field("", description="one line shown by `sleepify recipes list`")
    stage: Stage = Field("any", description="the stage this recipe is meant for")
    model: ModelSection = Field(default_factory=ModelSection)
    conversion: ConversionSection = Field(default_factory=ConversionSection)
    sleep: SleepSection = Field(default_factory=SleepSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    run: RunSection = Field(default_factory=RunSection)

    @model_validator(mode="after")
    def _check_consistency(self) -> Recipe:
        loop = self.conversion.loop
        if loop is not None and loop.end is not None and loop.end <= loop.start:
            raise ValueError(f"conversion.loop.end ({loop.end}) must be greater than start ({loop.start})")
        jets = self.conversion.jet_layers
        if jets is not None and len(set(jets)) != len(jets):
            raise ValueError(f"conversion.jet_layers has repeated indices: {self.conversion.jet_layers}")
        return self
