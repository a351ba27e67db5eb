"""``sleepify convert``: a pretrained checkpoint -> a sleep-capable hybrid checkpoint (HF format).

Steps (:func:`convert`):

1. resolve the source: an alias (``sleepify/models/registry.py``), a local folder, or a Hub id
   (downloaded with ``huggingface_hub.snapshot_download``, restricted to config, tokenizer and safetensors
   files);
2. read its ``config.json`` (``AutoConfig``) and check the architecture is supported;
3. plan the hybrid (``sleepify/planning.py``): the recipe's ``conversion.*`` and ``sleep.*`` where it sets
   them, the default rules elsewhere (Jet layers every 4th block sized from the base attention within
   ``conversion.max_param_growth``, the middle blocks looped, or the whole stack of a model pretrained
   looped);
   with ``dry_run`` stop here: the plan, the block table (from the model built on the meta device) and the
   resolved recipe are printed and nothing is written or loaded beyond the config;
4. build the hybrid on the meta device (no memory), check the checkpoint's keys and shapes from the shard
   headers alone (any missing or unexpected key is an error listing them) and initialise only the
   inserted layers;
5. write the HF folder (config, safetensors shards, tokenizer files), streaming: each base weight is read
   from its source shard when its turn comes, cast and written, then dropped (peak memory: the process,
   the inserted layers and one tensor, not the checkpoint; ``benchmarks/bench_convert.py``), the resolved
   recipe as run (``recipe.yaml``: the planned values, the keys chosen by default rules listed in its header)
   and ``report.md`` (every choice and where it came from, parameters and memory before / after, the block
   table).

Only safetensors are read: no pickle, no remote code.

``builtin:NAME`` sources (``sleepify/models/scratch/builtin.py``: ``gdn-hybrid-4``, ``jet-hybrid-10``, their
``-tiny`` variants) skip steps 1, 2 and 4: the named config is wrapped in the hybrid as in step 3 and every
weight is initialised from scratch (the model's own init, under ``torch.manual_seed(train.seed)``, so the
same recipe gives the same weights), and the character tokenizer (vocab 100) is written with the model.
Their default recipe is ``scratch/NAME``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sleepify.errors import ModelLoadError, SleepifyError
from sleepify.fsutil import (
    RunLock,
    check_free_space,
    publish_folder,
    refuse_inputs,
    staging,
    tensor_bytes,
)
from sleepify.hub import resolve_source
from sleepify.layers.gates import spread_rate_min
from sleepify.models.scratch.builtin import BUILTIN_PREFIX  # builtin:NAME: initialised from scratch
from sleepify.runs import STAGES, convert_dir, point_latest, torch_dtype
from sleepify.weights_io import (
    TensorRef,
    TensorSpec,
    index_safetensors,
    read_tensor,
    safetensors_files,
    specs_of,
    write_safetensors,
)

__all__ = [
    "ConvertResult",
    "build_hybrid_config",
    "convert",
    "load_base_weights",
    "match_checkpoint",
    "streamed_specs",
    "plan_convert",
    "run_convert",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


# ------------------------------------------------------------------------------------------------------------
# the plan


def build_hybrid_config(base_config: Any, recipe: Any):
    """The :class:`SleepHybridConfig` for ``base_config`` under ``recipe`` (a validated ``Recipe``): the plan
    of :func:`sleepify.planning.plan_conversion`."""
    from sleepify.planning import plan_conversion

    return plan_conversion(base_config, recipe).hybrid_config()


def _holds_weights(folder: Path) -> bool:
    """Any weight file at all (safetensors, pickles; an index alone is not weights)."""
    return any(p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt") for p in folder.iterdir())


def _index_size(folder: Path) -> str:
    """The weights' total size from ``model.safetensors.index.json`` (a dry run reads no weights)."""
    try:
        total = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        return f"; {int(total) / 1e9:.2f} GB of weights per model.safetensors.index.json"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _locate(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def match_checkpoint(model: nn.Module, folder: Path, prefix: str = "base.") -> dict[str, TensorRef]:
    """Every safetensors tensor of ``folder`` by its name in ``model`` (``prefix`` + key), from the shard
    headers alone; raise ModelLoadError listing missing / unexpected / mis-shaped keys."""
    expected = dict(model.named_parameters(remove_duplicate=False))
    expected_buffers = dict(model.named_buffers())
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    unexpected: list[str] = []
    wrong_shape: list[str] = []
    found: dict[str, TensorRef] = {}
    for key, ref in index_safetensors(safetensors_files(folder)).items():
        name = prefix + key
        current = expected.get(name, expected_buffers.get(name))
        if current is None:
            unexpected.append(key)
        elif tuple(current.shape) != ref.shape:
            wrong_shape.append(f"{key} {ref.shape} (model: {tuple(current.shape)})")
        else:
            found[name] = ref
    missing = [
        n[len(prefix) :]
        for n in expected
        if n.startswith(prefix) and n not in found and n not in tied and n not in tied.values()
    ]
    # a tied pair needs one of its two names
    for target, source in tied.items():
        if target.startswith(prefix) and target not in found and source not in found:
            missing.append(source[len(prefix) :])
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(sorted(set(missing)))}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(sorted(unexpected))}")
        if wrong_shape:
            parts.append(f"shape mismatches ({len(wrong_shape)}): {_short(wrong_shape)}")
        raise ModelLoadError(
            f"the weights in {folder} do not match its config.json: "
            + "; ".join(parts)
            + ". Is the folder complete, and does config.json belong to these weights?"
        )
    return found


def _cast(ref: TensorRef, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a checkpoint tensor is converted to: floating tensors to ``dtype``, the rest as they are."""
    return dtype if dtype is not None and ref.dtype.is_floating_point else ref.dtype


def load_base_weights(
    model: nn.Module, folder: Path, prefix: str = "base.", dtype: torch.dtype | None = None
) -> None:
    """Read every safetensors tensor of ``folder`` into ``model`` (built on the meta device) under
    ``prefix``, each into its final buffer; raise ModelLoadError listing missing / unexpected /
    mis-shaped keys (before reading any)."""
    found = match_checkpoint(model, folder, prefix)
    for name, ref in found.items():
        tensor = read_tensor(ref).to(_cast(ref, dtype))
        module, attr = _locate(model, name)
        if attr in module._parameters:
            grad = module._parameters[attr].requires_grad
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=grad)
        else:
            module._buffers[attr] = tensor
    # tied targets that were not in the checkpoint share their source (or the other way round)
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    for target, source in tied.items():
        if target.startswith(prefix) and target not in found:
            t_mod, t_attr = _locate(model, target)
            s_mod, s_attr = _locate(model, source)
            t_mod._parameters[t_attr] = s_mod._parameters[s_attr]
        elif target.startswith(prefix) and source not in found:
            s_mod, s_attr = _locate(model, source)
            t_mod, t_attr = _locate(model, target)
            s_mod._parameters[s_attr] = t_mod._parameters[t_attr]


def streamed_specs(model: nn.Module, found: dict[str, TensorRef], dtype: torch.dtype) -> list[TensorSpec]:
    """What :func:`_write_model` writes for ``model`` (its state dict, tied targets left out) when the base
    weights stay on disk: each checkpoint tensor is read (and cast) only when its turn to be written comes,
    the rest (inserted layers, buffers) from memory. Bit-identical to loading first, then writing."""
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    holder = {source: target for target, source in tied.items()}  # a source the checkpoint held as its target
    specs = []
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        ref = found.get(name) or found.get(holder.get(name, ""))
        if ref is None:
            if t.is_meta:
                raise SleepifyError(f"conversion left {name} uninitialised")
            specs.append(TensorSpec(name, t.dtype, tuple(t.shape), lambda t=t: t))
        else:
            cast = _cast(ref, dtype)
            specs.append(
                TensorSpec(name, cast, ref.shape, lambda ref=ref, cast=cast: read_tensor(ref).to(cast))
            )
    return specs


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with every parameter on the meta device (no memory, no init: the weights are streamed
    in afterwards) but real buffers: non-persistent buffers computed at construction (RoPE tables, Gemma's
    embedding scale) are in no checkpoint. A parameter is moved to meta as it is registered, before any
    init touches it (what accelerate's ``init_empty_weights(include_buffers=False)`` does)."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def _materialise_rest(model: nn.Module, dtype: torch.dtype, on_disk: set[str] = frozenset()) -> None:
    """After loading: initialise the inserted Jet layers, rebuild modules whose (non-persistent) buffers are
    still on the meta device (RoPE tables) from their config. ``on_disk``: base weights left in the
    checkpoint (streamed straight to the output), which may stay on the meta device."""
    from sleepify.layers.jet_block import JetBlock

    if len(model.jet_layers):
        model.jet_layers.to_empty(device="cpu")
        for block in model.jet_layers:
            block.norm.weight.data.fill_(1.0)
            if isinstance(block.mixer, JetBlock):
                block.mixer.reset_parameters()
            for name, p in block.named_parameters():
                if p.is_floating_point() and not name.endswith(("A_log", "dt_bias")):
                    p.data = p.data.to(dtype)
    for name, module in list(model.named_modules()):
        if any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            config = getattr(module, "config", None)
            if config is None:
                raise SleepifyError(f"cannot initialise the buffers of {name} ({type(module).__name__})")
            fresh = type(module)(config=config)
            parent, attr = _locate(model, name)
            setattr(parent, attr, fresh)
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    on_disk = set(on_disk) | {t for t, src in tied.items() if src in on_disk or t in on_disk}
    on_disk |= {src for t, src in tied.items() if t in on_disk}
    still = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_meta and n not in on_disk]
    still += [n for n, b in model.named_buffers() if b.is_meta and n not in on_disk]
    if still:
        raise SleepifyError(f"conversion left tensors uninitialised: {_short(still)}")


# ------------------------------------------------------------------------------------------------------------
# the command


@dataclass
class ConvertResult:
    """What :func:`convert` did (``dry_run``: would do; nothing was written then)."""

    out_dir: Path
    params_before: int
    params_after: int
    report: str
    block_table: list[dict[str, Any]]
    plan: Any = None  # the sleepify.planning.ConversionPlan followed
    recipe: Any = None  # the resolved recipe as run (planned values filled in)
    dry_run: bool = False


def _count(params: Iterator[nn.Parameter]) -> int:
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SleepifyError(f"{out_dir} exists and is not a folder")
    # with overwrite the old folder is replaced only once the new one is complete (fsutil.publish_folder)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise SleepifyError(f"{out_dir} is not empty; choose another --out or pass --overwrite")


def _resolve_recipe(recipe: Any, source: str, overrides: list[str]) -> Any:
    from sleepify.config import ResolvedRecipe, load_recipe

    if isinstance(recipe, ResolvedRecipe):
        return recipe
    refs: list[str] = []
    if recipe is None and source.startswith(BUILTIN_PREFIX):
        from sleepify.models.scratch.builtin import get_builtin

        refs = [get_builtin(source).recipe]
    elif recipe is None:
        from sleepify.models.registry import ALIASES

        alias = ALIASES.get(source.lower()) or next((a for a in ALIASES.values() if a.hub_id == source), None)
        if alias is not None:
            refs = [alias.recipe]
    elif isinstance(recipe, (list, tuple)):
        refs = list(recipe)
    else:
        refs = [recipe]
    return load_recipe(refs, overrides)


def run_convert(
    source: str | None,
    recipe: Any = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    log: Callable[[str], None] | None = print,
    runs_root: str | Path = "runs",
    dry_run: bool = False,
) -> ConvertResult:
    """Convert ``source`` (alias, Hub id or folder) under ``recipe`` (a name/file, list of them, a
    ``ResolvedRecipe``, or None = the alias's default recipe / the schema defaults and default rules) into
    ``out_dir`` (default ``runs/<name>/convert``; ``runs/latest`` then points at it). ``dry_run``: plan only;
    print the plan and the resolved recipe, read nothing but the config, write nothing.

    Examples::

        >>> res = convert("./my-qwen2", dry_run=True)  # what would be built, and why
        >>> res.plan.jet_layers, res.params_after - res.params_before
    """
    from transformers import AutoConfig

    import sleepify  # noqa: F401 - registers the model types

    resolved = _resolve_recipe(recipe, source or "", list(overrides))
    rec = resolved.recipe
    source = source or rec.model.source
    if not source:
        raise SleepifyError(
            "no model given: pass MODEL (alias, Hub id or folder) or set model.source in the recipe"
        )
    if source.startswith(BUILTIN_PREFIX):
        return _convert_builtin(source, resolved, out_dir, overwrite, log, runs_root, dry_run)
    src = resolve_source(source, rec.model.revision, config_only=dry_run)
    default_out = out_dir is None
    if out_dir is None:
        out_dir = convert_dir(src.name, runs_root, rec.run.dir)
    out_dir = Path(out_dir)
    if not dry_run:
        _check_out_dir(out_dir, overwrite or rec.run.overwrite)
        refuse_inputs(out_dir, {"the model": src.folder, "the recipe": resolved.sources})

    # provenance: the stored convert recipe names what was converted (the CLI argument is not in the
    # recipe): the alias or Hub id as given, a local folder as an absolute path (so export can tell it
    # from a Hub id, and the model card can name it from any working directory)
    rec.model.source = str(src.folder.resolve()) if src.hub_id is None else source
    try:
        base_config = AutoConfig.from_pretrained(src.folder.resolve())
    except (ValueError, OSError) as err:  # also "not a valid JSON file" (an OSError without errno)
        if isinstance(err, OSError) and err.errno is not None:
            raise
        raise ModelLoadError(
            f"cannot read {src.folder / 'config.json'}: {str(err).splitlines()[0]}"
        ) from None
    from sleepify.models.hybrid.families import family_for

    family_for(
        base_config.model_type, base_config
    )  # an unsupported architecture: one line, before the weights
    # fail early on pickle-only folders; a dry run needs no weights (a Hub dry run downloads none, a
    # folder may hold config.json alone)
    config_only = dry_run and (src.hub_id is not None or not _holds_weights(src.folder))
    files = [] if config_only else safetensors_files(src.folder)
    weights = f"{len(files)} safetensors file(s)" if files else "weights not read: config.json only"
    if dry_run:
        weights += _index_size(src.folder)

    described = f"{src.hub_id or src.folder} ({base_config.model_type}, {weights})"
    built = _plan_and_build(base_config, resolved, dry_run)
    if dry_run:
        return _dry_run_result(src.name, described, built, out_dir, overwrite or rec.run.overwrite, log)
    model, plan, as_run = built
    params_before = _count(model.base.parameters())
    dtype = torch_dtype(rec.model.dtype)
    # streaming: the base weights stay in the source shards; each is read, cast and written in turn
    found = match_checkpoint(model, src.folder)
    _materialise_rest(model, dtype, on_disk=set(found))
    model.eval()
    params_after = _count(model.parameters())
    specs = streamed_specs(model, found, dtype)

    check_free_space(out_dir.parent, sum(s.nbytes for s in specs), "the converted model")
    with RunLock(out_dir), staging(out_dir) as tmp:  # built next to --out, published in one step at the end
        _write_model(model, model.config, rec, tmp, specs)
        for name in TOKENIZER_FILES:
            if (src.folder / name).is_file():
                shutil.copy2(src.folder / name, tmp / name)
        _save_recipe(as_run, plan, tmp)
        table = model.block_table()
        report = _report(src.name, described, plan, table, out_dir)
        result = ConvertResult(out_dir, params_before, params_after, report, table, plan, as_run)
        return _finish(result, tmp, default_out, rec, runs_root, log)


def _plan_and_build(base_config: Any, resolved: Any, dry_run: bool) -> tuple[nn.Module, Any, Any]:
    """The plan, the hybrid built from it on the meta device, and the recipe as run (the planned values
    filled in). The meta model is what a dry run describes and what the real run loads the weights into."""
    from sleepify.config.loader import ResolvedRecipe, deep_merge, validate
    from sleepify.models.hybrid import SleepHybridForCausalLM
    from sleepify.planning import plan_conversion

    rec = resolved.recipe
    plan = plan_conversion(base_config, rec)
    config = plan.hybrid_config()
    config._attn_implementation = rec.model.attn_implementation
    with params_on_meta():
        model = SleepHybridForCausalLM(config)
    as_run = ResolvedRecipe(
        validate(deep_merge(resolved.to_dict(), plan.recipe_updates()), "planned recipe"),
        resolved.sources,
        resolved.overrides,
    )
    return model, plan, as_run


def _save_recipe(as_run: Any, plan: Any, out_dir: Path) -> None:
    defaults = {k: v for k, v in plan.sources.items() if v != "recipe"}
    as_run.save(out_dir, stage=STAGES[0], extra={"chosen_by_default_rules": defaults})


def _dry_run_result(
    name: str,
    described: str,
    built: tuple[nn.Module, Any, Any],
    out_dir: Path,
    overwrite: bool,
    log: Callable[[str], None] | None,
) -> ConvertResult:
    model, plan, as_run = built
    table = model.block_table()
    busy = out_dir.is_dir() and any(out_dir.iterdir())
    where = f"{out_dir} (dry run: nothing written" + (
        "; it is not empty: the real run needs --overwrite)" if busy and not overwrite else ")"
    )
    report = _report(name, described, plan, table, where)
    report += "\n## Resolved recipe\n\n```yaml\n" + as_run.to_yaml() + "```\n"
    before, after = _count(model.base.parameters()), _count(model.parameters())
    if log is not None:
        log(report)
    return ConvertResult(out_dir, before, after, report, table, plan, as_run, dry_run=True)


def _write_model(
    model: nn.Module, config: Any, rec: Any, out_dir: Path, specs: list[TensorSpec] | None = None
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    config.dtype = rec.model.dtype
    config.save_pretrained(out_dir)
    if specs is None:
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        specs = specs_of((n, p) for n, p in model.state_dict().items() if n not in tied)
    write_safetensors(specs, out_dir)


def _finish(
    result: ConvertResult,
    tmp: Path,
    default_out: bool,
    rec: Any,
    runs_root: str | Path,
    log: Callable[[str], None] | None,
) -> ConvertResult:
    """Write the report into the finished temporary folder, publish it as ``--out`` (replacing an old
    folder only now), then point ``runs/latest`` at it."""
    out_dir = result.out_dir
    (tmp / "report.md").write_text(result.report)
    publish_folder(tmp, out_dir)
    if default_out:
        root = out_dir.parent.parent if not rec.run.dir else Path(runs_root)
        point_latest(root, out_dir)
    if log is not None:
        log(result.report)
    return result


def _convert_builtin(
    source: str,
    resolved: Any,
    out_dir: str | Path | None,
    overwrite: bool,
    log: Callable[[str], None] | None,
    runs_root: str | Path,
    dry_run: bool = False,
) -> ConvertResult:
    """``builtin:NAME``: the named from-scratch config wrapped in the hybrid, initialised (seeded with
    ``train.seed``) instead of loaded, saved with the character tokenizer."""
    from sleepify.data.tokenizer import build_char_tokenizer
    from sleepify.models.hybrid import SleepHybridForCausalLM
    from sleepify.models.scratch.builtin import get_builtin

    rec = resolved.recipe
    builtin = get_builtin(source)
    rec.model.source = source  # provenance (see convert)
    default_out = out_dir is None
    if out_dir is None:
        out_dir = convert_dir(builtin.name, runs_root, rec.run.dir)
    out_dir = Path(out_dir)
    base_config = builtin.build_config()
    described = (
        f"{BUILTIN_PREFIX}{builtin.name} ({base_config.model_type}: {builtin.description}; "
        f"initialised from scratch, seed {rec.train.seed}; "
        f"character tokenizer, vocab {base_config.vocab_size})"
    )
    if rec.conversion.decay_init is not None:
        base_config.ssm["decay_init"] = rec.conversion.decay_init
    base_config.ssm["decay_rate_min"] = spread_rate_min(rec.sleep.window)
    built = _plan_and_build(base_config, resolved, dry_run)
    if dry_run:
        return _dry_run_result(builtin.name, described, built, out_dir, overwrite or rec.run.overwrite, log)
    _check_out_dir(out_dir, overwrite or rec.run.overwrite)
    _, plan, as_run = built
    config = built[0].config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rec.train.seed)
        model = SleepHybridForCausalLM(config)
    dtype = torch_dtype(rec.model.dtype)
    for name, p in model.named_parameters():
        if p.is_floating_point() and not name.endswith(("A_log", "dt_bias")):
            p.data = p.data.to(dtype)
    model.eval()
    params_before = _count(model.base.parameters())
    params_after = _count(model.parameters())
    check_free_space(out_dir.parent, tensor_bytes(model), "the converted model")
    with RunLock(out_dir), staging(out_dir) as tmp:  # built next to --out, published in one step at the end
        _write_model(model, config, rec, tmp)
        build_char_tokenizer().save_pretrained(tmp)
        _save_recipe(as_run, plan, tmp)
        table = model.block_table()
        report = _report(builtin.name, described, plan, table, out_dir)
        result = ConvertResult(out_dir, params_before, params_after, report, table, plan, as_run)
        return _finish(result, tmp, default_out, rec, runs_root, log)


def _report(name: str, described: str, plan: Any, table: list[dict], out: Path | str) -> str:
    """``report.md``: the source, every choice with where it came from ([recipe] or the default rule), the
    parameter and memory growth, the block table."""
    lines = [
        f"# sleepify convert: {name}",
        "",
        f"- source: {described}",
        f"- output: {out}",
        *plan.summary(),
        "",
        "| block | source | kind | MLP | loops during sleep |",
        "|---:|---|---|---|---|",
    ]
    for row in table:
        kind = row["kind"].replace("_", " ") + (" (inserted)" if row["inserted"] else "")
        lines.append(
            f"| {row['index']} | {row['source']} | {kind} | {'yes' if row['has_mlp'] else 'no'} | "
            f"{'yes' if row['looped'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plan_convert(
    source: str | None,
    recipe: Any = None,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    runs_root: str | Path = "runs",
) -> ConvertResult:
    """The dry run of :func:`run_convert`: the plan, the block table (from the model built on the meta
    device), the parameter growth and the report (``.report``); only the config is read, nothing written."""
    return run_convert(source, recipe, out_dir, overwrite, overrides, None, runs_root, dry_run=True)


convert = run_convert  # the name before the stages moved (sleepify.convert.convert)
