"""``sleepify export``: a run -> a clean Hugging Face model folder with a model card.

What an export folder holds:

- ``config.json`` (``model_type "sleep_hybrid"``, the sleep settings ``sleep_window``, ``sleep_passes``,
  ``eviction``, ``wake_passes``, the block plan), sharded ``model*.safetensors`` (``max_shard_size``, with an
  index when sharded), the tokenizer files (when the run has a tokenizer), ``generation_config.json``;
- ``README.md``: the model card, front matter (``library_name: sleepify``, ``base_model``, ``tags``,
  ``datasets``, ``license``) then how it was made (the recipe chain convert -> warmup -> train from each
  stage's ``recipe.yaml`` provenance header), the sleep settings, the latest evaluation (``eval/eval.json``
  of the run, with its plot) and how to load and generate;
- ``recipe.yaml``: the resolved recipe of the last stage; ``eval/``: the copied evaluation, if any.

Everything is written to a hidden temporary sibling folder and renamed into place at the end, so an
interrupted export leaves no half-written folder (and an existing folder is only replaced with
``overwrite``, after the new one is complete).

``AutoModelForCausalLM.from_pretrained(folder)`` (after ``import sleepify``) gives bit-identical logits to
the run's model when exported in its own dtype (tested).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.errors import SleepifyError
from sleepify.fsutil import check_free_space, clean_stale_temps, publish_folder, temp_sibling
from sleepify.remote_code import AUTO_MAP, write_remote_code

__all__ = ["ExportResult", "export", "model_card", "read_provenance", "resolve_run"]

STAGES = ("convert", "warmup", "train")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
EVAL_DIRS = ("eval",)


@dataclass
class ExportResult:
    out_dir: Path
    model_dir: Path
    run_dir: Path | None
    stages: list[dict[str, Any]] = field(default_factory=list)
    eval_file: Path | None = None
    pushed: str | None = None


# ------------------------------------------------------------------------------------------------------------
# finding the run and what it recorded


def resolve_run(source: str | Path | None, runs_root: str | Path = "runs") -> tuple[Path, Path | None]:
    """``(model folder, run folder)`` of ``source``: a model folder (``config.json``), a stage folder
    holding ``model/``, a run folder ``runs/<name>`` (its latest stage: train, then warmup, then convert),
    or None (the model ``runs/latest`` points at). The run folder is None when it cannot be told."""
    from sleepify.convert import latest_run

    if source is None:
        latest = latest_run(runs_root)
        if latest is None:
            raise SleepifyError(
                "no run given and runs/latest does not exist: pass RUN (a run or model folder)"
            )
        source = latest
    path = Path(source)
    if not path.exists():
        raise SleepifyError(f"no such run or model folder: {path}")
    if (path / "config.json").is_file():
        model = path
    elif (path / "model" / "config.json").is_file():
        model = path / "model"
    else:
        for stage in reversed(STAGES):
            for cand in (path / stage / "model", path / stage):
                if (cand / "config.json").is_file():
                    model = cand
                    break
            else:
                continue
            break
        else:
            raise SleepifyError(f"{path} holds no model (no config.json, model/ or stage folder)")
    model = model.resolve()
    # runs/<name>/convert (a model folder) or runs/<name>/<stage>/model
    stage_dir = model.parent if model.name == "model" else model
    run = stage_dir.parent if stage_dir.name in STAGES else None
    return model, run


def plan_export(
    source: str | Path | None,
    out: str | Path,
    dtype: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
) -> str:
    """What :func:`export` would do, as text (``sleepify export --dry-run``); nothing written."""
    model_dir, run_dir = resolve_run(source, runs_root)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")
    stages = [s.get("stage", "?") for s in _stage_recipes(model_dir, run_dir)]
    found = _find_eval(model_dir, run_dir)
    lines = [
        f"export: {model_dir} -> {out}" + (" (replacing it)" if out.exists() and overwrite else ""),
        f"  run: {run_dir or '(not a run folder)'}; recipe chain: {' -> '.join(stages) or 'none recorded'}",
        f"  dtype: {dtype or 'the recipe export.dtype'}; eval results for the card: {found or 'none'}",
    ]
    if push_to_hub:
        lines.append(f"  then push to the Hub: {push_to_hub}")
    return "\n".join(lines)


def read_provenance(recipe_file: Path) -> dict[str, Any]:
    """The ``# provenance`` comment header of a ``recipe.yaml`` (sleepify version, stage, created,
    sources, overrides) plus the recipe itself under ``"recipe"``."""
    import yaml

    from sleepify.config.loader import read_provenance as read_header

    text = recipe_file.read_text()
    header = read_header(recipe_file)
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        recipe = {}
    return {**header, "recipe": recipe, "file": str(recipe_file)}


def _stage_recipes(model_dir: Path, run_dir: Path | None) -> list[dict[str, Any]]:
    """The provenance of every stage of the run, in pipeline order (convert -> warmup -> train)."""
    found: list[dict[str, Any]] = []
    seen: set[Path] = set()
    candidates: list[Path] = []
    if run_dir is not None:
        for stage in STAGES:
            candidates += [run_dir / stage / "recipe.yaml", run_dir / stage / "model" / "recipe.yaml"]
    candidates.append(model_dir / "recipe.yaml")
    for cand in candidates:
        if not cand.is_file():
            continue
        info = read_provenance(cand)
        stage = info.get("stage")
        # a stage folder and its model/ carry the same recipe: keep one per stage
        if any(f.get("stage") == stage and f.get("created") == info.get("created") for f in found):
            continue
        if cand.resolve() in seen:
            continue
        seen.add(cand.resolve())
        if any(f.get("stage") == stage for f in found):
            found = [f for f in found if f.get("stage") != stage]
        found.append(info)
    order = {s: i for i, s in enumerate(STAGES)}
    found.sort(key=lambda f: order.get(str(f.get("stage")), len(STAGES)))
    return found


def _find_eval(model_dir: Path, run_dir: Path | None) -> Path | None:
    """The newest ``eval.json`` of the run (``<run>/eval/eval.json``, ``<stage>/eval/eval.json``, ...)."""
    roots = [model_dir, model_dir.parent] + ([run_dir] if run_dir is not None else [])
    found = []
    for root in roots:
        for name in EVAL_DIRS:
            cand = root / name / "eval.json"
            if cand.is_file():
                found.append(cand)
        if (root / "eval.json").is_file():
            found.append(root / "eval.json")
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime)


def _eval_table(data: Any) -> str:
    """Markdown for ``eval.json``, tolerant of its exact schema: every list of flat records becomes a table
    (the accuracy per difficulty bucket), remaining top-level scalars a key/value list."""

    def flat(record: dict) -> bool:
        return all(not isinstance(v, (dict, list)) for v in record.values())

    def table(rows: list[dict]) -> list[str]:
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            out.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
        return out

    lines: list[str] = []
    scalars: list[tuple[str, Any]] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(obj, list) and obj and all(isinstance(r, dict) and flat(r) for r in obj):
            if path:
                lines.append(f"**{path}**")
                lines.append("")
            lines.extend(table(obj))
            lines.append("")
        elif isinstance(obj, dict):
            values = list(obj.values())
            if values and all(isinstance(v, dict) and flat(v) for v in values):
                rows = [{"": k, **v} for k, v in obj.items()]
                walk(rows, path)
                return
            for k, v in obj.items():
                key = f"{path}.{k}" if path else str(k)
                if isinstance(v, (dict, list)):
                    walk(v, key)
                else:
                    scalars.append((key, v))

    walk(data, "")
    if scalars:
        lines = [f"- {k}: {_fmt(v)}" for k, v in scalars] + [""] + lines
    return "\n".join(lines).strip() + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------------------------------------------------
# the model card


def _front_matter_value(readme: Path, key: str) -> str | None:
    import yaml

    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    m = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not m:
        return None
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return None
    value = meta.get(key) if isinstance(meta, dict) else None
    return None if value is None else str(value)


def _base_model(stages: list[dict[str, Any]], model_dir: Path, config: Any) -> dict[str, Any]:
    """What the run started from: ``{"name", "hub_id", "license", "folder"}`` (unknowns None)."""
    from sleepify.models.registry import ALIASES

    source = ""
    for st in stages:
        if st.get("stage") == "convert":
            source = str(((st.get("recipe") or {}).get("model") or {}).get("source") or "")
    info: dict[str, Any] = {"name": source or None, "hub_id": None, "license": None, "folder": None}
    alias = ALIASES.get(source.lower()) if source else None
    if alias is not None:
        info["hub_id"] = alias.hub_id
    elif (
        source and source.count("/") == 1 and not Path(source).exists() and not source.startswith((".", "/"))
    ):
        info["hub_id"] = source
    elif source and Path(source).is_dir():
        info["folder"] = source
    base_cfg = getattr(config, "base_config", {}) or {}
    name_or_path = str(base_cfg.get("_name_or_path") or "")
    if info["hub_id"] is None and name_or_path:
        cached = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", name_or_path)  # a Hub cache snapshot
        if cached:
            info["hub_id"] = f"{cached.group(1)}/{cached.group(2)}"
        elif name_or_path.count("/") == 1 and not Path(name_or_path).exists():
            info["hub_id"] = name_or_path
        elif Path(name_or_path).is_dir() and info["folder"] is None:
            info["folder"] = name_or_path
    if info["name"] is None:
        info["name"] = info["hub_id"] or (Path(info["folder"]).name if info["folder"] else None)
    # license: the base config or a model card next to the source / the run, else unknown
    lic = base_cfg.get("license")
    for folder in (info["folder"], model_dir):
        if lic is None and folder:
            lic = _front_matter_value(Path(folder) / "README.md", "license")
    info["license"] = lic
    return info


def _datasets(stages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``(hub dataset ids, descriptions of local datasets)`` the training stages used."""
    hub, local = [], []
    for st in stages:
        path = str(((st.get("recipe") or {}).get("data") or {}).get("path") or "")
        if not path or st.get("stage") == "convert":
            continue
        p = Path(path)
        if p.exists():
            task = None
            meta = p / "meta.json"
            if meta.is_file():
                with contextlib.suppress(ValueError, OSError):
                    m = json.loads(meta.read_text())
                    task = m.get("task") or m.get("name")
            desc = f"{st.get('stage')}: `{p.name}`" + (f" (sleepify data {task})" if task else " (local)")
            if desc not in local:
                local.append(desc)
        elif path.count("/") == 1 and path not in hub:
            hub.append(path)
    return hub, local


def model_card(
    config: Any,
    stages: list[dict[str, Any]],
    base: dict[str, Any],
    eval_data: Any = None,
    eval_plots: list[str] = (),
    repo_id: str | None = None,
    dtype: str = "float32",
    run_name: str | None = None,
) -> str:
    """The README.md of an export (front matter + body)."""
    import yaml

    hub_ds, local_ds = _datasets(stages)
    base_type = getattr(config, "base_model_type", "") or ""
    front: dict[str, Any] = {"library_name": "sleepify"}
    if base.get("hub_id"):
        front["base_model"] = base["hub_id"]
    front["license"] = base.get("license") or "unknown"
    front["pipeline_tag"] = "text-generation"
    tags = ["sleepify", "sleep-capable", "ssm-attention-hybrid", "gated-delta-rule", "jet-block"]
    if base_type:
        tags.append(base_type)
    front["tags"] = tags
    if hub_ds:
        front["datasets"] = hub_ds
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", ""]
    title = repo_id.split("/")[-1] if repo_id else (run_name or base.get("name") or "sleep-capable model")
    start, end = config.loop_range
    lines += [
        f"# {title}",
        "",
        "A sleep-capable SSM-attention hybrid made with sleepify from "
        + (f"`{base['hub_id']}`" if base.get("hub_id") else f"`{base.get('name') or 'a base model'}`")
        + ' ("Language Models Need Sleep", arXiv 2605.26099). Attention sees a bounded window of '
        f"L = {config.sleep_window} tokens; MLP-free Jet layers (gated delta rule + dynamic convolution) "
        f"carry a fixed-size state. When a window is full the model *sleeps*: N = {config.sleep_passes} "
        "passes of its looped blocks over the window update the state, then the KV cache is evicted.",
        "",
        "## Sleep settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model type | {base_type or 'unknown'} |",
        f"| window L (`sleep_window`) | {config.sleep_window} |",
        f"| sleep passes N (`sleep_passes`) | {config.sleep_passes} |",
        f"| wake passes (`wake_passes`) | {config.wake_passes} |",
        f"| eviction | {config.eviction} |",
        f"| blocks / inserted Jet layers | {config.num_blocks} / {config.num_jet_layers} |",
        f"| looped blocks | [{start}, {end}) |",
        f"| weights dtype | {dtype} |",
        "",
        "## How it was made",
        "",
    ]
    if stages:
        lines += [
            "| # | stage | recipe sources | overrides | sleepify | created |",
            "|---:|---|---|---|---|---|",
        ]
        for i, st in enumerate(stages, 1):
            sources = ", ".join(f"`{Path(s).name}`" for s in st.get("sources") or []) or "defaults"
            overrides = ", ".join(f"`{o}`" for o in st.get("overrides") or []) or "-"
            lines.append(
                f"| {i} | {st.get('stage', '?')} | {sources} | {_fmt(overrides)} | "
                f"{st.get('sleepify_version', '?')} | {st.get('created', '?')} |"
            )
        lines += ["", "Recipe chain: " + " -> ".join(str(st.get("stage", "?")) for st in stages) + "."]
        for st in stages:
            rec = st.get("recipe") or {}
            if st.get("stage") in ("warmup", "train") and rec.get("train"):
                t = rec["train"]
                lines.append(
                    f"- {st['stage']}: {t.get('steps', '?')} steps, batch size {t.get('batch_size', '?')}, "
                    f"N = {(rec.get('sleep') or {}).get('passes', '?')}, "
                    f"eviction {(rec.get('sleep') or {}).get('eviction', '?')}"
                )
        lines.append("")
        lines.append("The resolved recipe of the last stage is in `recipe.yaml`.")
    else:
        lines.append("No stage recipes were found in the run (provenance unknown).")
    if local_ds:
        lines += ["", "Training data: " + "; ".join(local_ds) + "."]
    lines += ["", "## Evaluation", ""]
    if eval_data is None:
        lines.append("No evaluation was recorded for this run (`sleepify eval` writes `eval/eval.json`).")
    else:
        lines.append(_eval_table(eval_data).rstrip())
        for plot in eval_plots:
            lines += ["", f"![evaluation]({plot})"]
    repo = repo_id or "ORG/NAME"
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import sleepify  # registers the sleep_hybrid model type with transformers",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        f'tok = AutoTokenizer.from_pretrained("{repo}")',
        'ids = tok("...", return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=64)  # incremental decoding; sleeps at every full window",
        "```",
        "",
        "or from the command line: `sleepify generate " + repo + ' --prompt "..."`.',
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# export


def _recipe_export_section(model_dir: Path) -> dict[str, Any]:
    from sleepify.config.loader import recipe_from_run

    try:
        return dict(recipe_from_run(model_dir).get("export") or {})
    except SleepifyError:
        return {}


def export(
    source: str | Path | None,
    out: str | Path,
    dtype: str | None = None,
    max_shard_size: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    log: Any = print,
) -> ExportResult:
    """Export the model of ``source`` (see :func:`resolve_run`) into ``out``; then push it to the Hub when
    ``push_to_hub`` (ORG/NAME) is given. ``dtype`` / ``max_shard_size`` / ``push_to_hub`` / ``private``
    default to the run recipe's ``export`` section."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    import sleepify  # noqa: F401  (registers the model types)

    model_dir, run_dir = resolve_run(source, runs_root)
    section = _recipe_export_section(model_dir)
    dtype = DTYPES.get(dtype or "", dtype) or section.get("dtype") or None
    max_shard_size = max_shard_size or section.get("max_shard_size") or "5GB"
    push_to_hub = push_to_hub or section.get("push_to_hub")
    private = bool(section.get("private", False)) if private is None else private
    if dtype is not None and dtype not in ("float32", "bfloat16", "float16"):
        raise SleepifyError(f"export dtype must be bf16, fp16 or fp32, got {dtype!r}")

    out = Path(out)
    if out.resolve() == model_dir or model_dir.is_relative_to(out.resolve()):
        raise SleepifyError(f"--out {out} would overwrite the model being exported: choose another folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")

    from sleepify.model_io import load_model

    model = load_model(model_dir, "auto")
    if getattr(model.config, "model_type", None) != "sleep_hybrid":
        raise SleepifyError(
            f"{model_dir} is not a sleep-capable model (model_type {model.config.model_type!r})"
        )
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    model.config.dtype = dtype_name
    stages = _stage_recipes(model_dir, run_dir)
    base = _base_model(stages, model_dir, model.config)
    eval_file = _find_eval(model_dir, run_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)  # what a killed export left behind
    check_free_space(out.parent, sum(p.numel() * p.element_size() for p in model.parameters()), "the export")
    tmp = temp_sibling(out)
    try:
        # self-contained remote code: loads with trust_remote_code=True where sleepify is not installed
        model.config.auto_map = dict(AUTO_MAP)
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        write_remote_code(tmp)
        with contextlib.suppress(OSError, ValueError, TypeError):
            AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
        try:
            gen = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            gen = GenerationConfig.from_model_config(model.config)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(gen, name, None) is None and getattr(model.config, name, None) is not None:
                setattr(gen, name, getattr(model.config, name))
        gen.save_pretrained(tmp)
        if (model_dir / "recipe.yaml").is_file():
            shutil.copy2(model_dir / "recipe.yaml", tmp / "recipe.yaml")
        eval_data, plots = None, []
        if eval_file is not None:
            try:
                eval_data = json.loads(eval_file.read_text())
            except ValueError as err:
                if log is not None:
                    log(f"warning: {eval_file} is not valid JSON ({err}); the card has no evaluation")
            if eval_data is not None:
                (tmp / "eval").mkdir()
                shutil.copy2(eval_file, tmp / "eval" / "eval.json")
                for png in sorted(eval_file.parent.glob("*.png")):
                    shutil.copy2(png, tmp / "eval" / png.name)
                    plots.append(f"eval/{png.name}")
        run_name = run_dir.name if run_dir is not None else None
        card = model_card(model.config, stages, base, eval_data, plots, push_to_hub, dtype_name, run_name)
        (tmp / "README.md").write_text(card)
        publish_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    result = ExportResult(out, model_dir, run_dir, stages, eval_file)
    if log is not None:
        log(f"exported {model_dir} -> {out} ({dtype_name}, shards <= {max_shard_size})")
    if push_to_hub:
        from sleepify.hub import push

        result.pushed = push(out, push_to_hub, private=private, log=log)
    return result
