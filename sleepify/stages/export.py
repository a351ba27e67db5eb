"""``sleepify export``: a run -> a clean Hugging Face model folder with a model card.

What an export folder holds:

- ``config.json`` (``model_type "sleep_hybrid"``, the sleep settings ``sleep_window``, ``sleep_passes``,
  ``eviction``, ``wake_passes``, the block plan), sharded ``model*.safetensors`` (``max_shard_size``, with an
  index when sharded), the tokenizer files (when the run has a tokenizer), ``generation_config.json``;
- ``README.md``: the model card, front matter as the Hub reads it (``huggingface_hub.ModelCardData``:
  ``library_name: transformers``, ``pipeline_tag: text-generation``, ``tags`` from the content
  (:func:`card_tags`), ``base_model`` only for a real Hub id (:func:`hub_repo_id`; a local folder never),
  Hub ``datasets``, ``license`` from the base) then the sleep settings, how it was made (the source: Hub
  id, local folder path or built-in; the recipe chain convert -> warmup -> train from each stage's
  ``recipe.yaml`` provenance header), the latest evaluation (``eval/eval.json`` of the run, with its plot)
  and a usage snippet that runs as written (``trust_remote_code=True``: torch and transformers suffice);
- the remote code (``sleepify/remote_code.py``) that ``config.json``'s ``auto_map`` points at;
- ``recipe.yaml``: the resolved recipe of the last stage; ``eval/``: the copied evaluation, if any.

Everything is written to a hidden temporary sibling folder and renamed into place at the end, so an
interrupted export leaves no half-written folder (and an existing folder is only replaced with
``overwrite``, after the new one is complete).

``AutoModelForCausalLM.from_pretrained(folder)`` (after ``import sleepify``, or with
``trust_remote_code=True``) gives bit-identical logits to the run's model when exported in its own dtype
(tested).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleepify.errors import SleepifyError
from sleepify.evaluation.report import EVAL_FILE
from sleepify.fsutil import (
    RunLock,
    check_free_space,
    check_output_path,
    publish_folder,
    refuse_inputs,
    staging,
    suppress_unless_disk_full,
)
from sleepify.remote_code import AUTO_MAP, write_remote_code
from sleepify.runs import (
    DTYPE_ALIASES,
    DTYPES,
    EVAL_DIR,
    STAGES,
    eval_report_files,
    load_model,
    read_provenance,
    resolve_run,
    stage_recipe_files,
    torch_dtype,
)

__all__ = [
    "ExportResult",
    "card_metadata",
    "card_tags",
    "export",
    "hub_repo_id",
    "model_card",
    "plan_export",
    "run_export",
]


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


def plan_export(
    source: str | Path | None,
    out: str | Path,
    dtype: str | None = None,
    push_to_hub: str | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """What :func:`export` would do, as text (``sleepify export --dry-run``); nothing written, the Hub is
    not contacted."""
    model_dir, run_dir = resolve_run(source, runs_root)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")
    stages = [s.get("stage", "?") for s in _stage_recipes(model_dir, run_dir)]
    found = _find_eval(model_dir, run_dir)
    lines = [
        f"export: {model_dir} -> {out}" + (" (replacing it)" if out.exists() and overwrite else ""),
        f"  run: {run_dir or '(not a run folder)'}; recipe chain: {' -> '.join(stages) or 'none recorded'}",
        f"  dtype: {dtype or 'export.dtype of the recipe (null: the model dtype)'}; "
        f"eval results for the card: {found or 'none'}",
    ]
    if push_to_hub:
        where = push_to_hub if "/" in push_to_hub else f"{push_to_hub} (in the token owner's namespace)"
        where += (f"@{revision}" if revision else "") + (" (private)" if private else "")
        lines.append(f"  then push to the Hub: {where}" + (" as a pull request" if create_pr else ""))
    return "\n".join(lines)


def _stage_recipes(model_dir: Path, run_dir: Path | None) -> list[dict[str, Any]]:
    """The provenance of every stage of the run, in pipeline order (convert -> warmup -> train)."""
    found: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for cand in stage_recipe_files(model_dir, run_dir):
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
    found = [f for f in eval_report_files(model_dir, run_dir) if f.is_file()]
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


# Hub ids: a base model / dataset goes into the card's metadata only when it can be nothing but a Hub id
LOCAL_PREFIXES = (".", "/", "~", "\\")
DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow")
HUB_CACHE = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def hub_repo_id(value: Any) -> str | None:
    """``value`` when it can only be a Hub repo id ``namespace/name``, else None: not an existing local
    path, not path-like (absolute, ``./``, ``../``, ``~``, backslashes, a drive letter), exactly one ``/``,
    and accepted by ``huggingface_hub.utils.validate_repo_id``.

    Example::

        >>> hub_repo_id("Qwen/Qwen2.5-0.5B"), hub_repo_id("../base"), hub_repo_id("/models/qwen")
        ('Qwen/Qwen2.5-0.5B', None, None)
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    s = str(value or "").strip()
    if not s or s.count("/") != 1 or s.startswith(LOCAL_PREFIXES) or "\\" in s or ":" in s:
        return None
    if Path(s).expanduser().exists():
        return None
    try:
        validate_repo_id(s)
    except HFValidationError:
        return None
    return s


def _front_matter(readme: Path) -> dict[str, Any]:
    """The YAML front matter of a model card (``{}`` when there is none or it does not parse)."""
    import yaml

    if not readme.is_file():
        return {}
    m = re.match(r"---\s*\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
    if not m:
        return {}
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _base_model(stages: list[dict[str, Any]], model_dir: Path, config: Any) -> dict[str, Any]:
    """What the run started from: ``{"name", "hub_id", "revision", "folder", "builtin", "license",
    "license_name", "license_link"}`` (unknowns None).

    The convert recipe's ``model.source`` says it (an alias, a Hub id, an absolute local folder, or
    ``builtin:NAME``); the base config's ``_name_or_path`` (the folder convert read) cross-checks it: a
    Hub download is read from the Hub cache (``models--ORG--NAME/snapshots/...``), so a source shaped like
    ``a/b`` whose base was read from any other folder was a local relative path, not a Hub id. Runs that
    recorded no source fall back to ``_name_or_path`` alone. ``hub_id`` is only ever a real Hub id."""
    from sleepify.models.registry import ALIASES
    from sleepify.models.scratch.builtin import BUILTIN_PREFIX

    source, revision = "", None
    for st in stages:
        if st.get("stage") == "convert":
            model = (st.get("recipe") or {}).get("model") or {}
            source, revision = str(model.get("source") or ""), model.get("revision")
    base_cfg = getattr(config, "base_config", {}) or {}
    name_or_path = str(base_cfg.get("_name_or_path") or "")
    cached = HUB_CACHE.search(name_or_path)
    cached_id = f"{cached.group(1)}/{cached.group(2)}" if cached else None
    info: dict[str, Any] = dict.fromkeys(
        ("name", "hub_id", "revision", "folder", "builtin", "license", "license_name", "license_link")
    )
    alias = ALIASES.get(source.lower()) if source else None
    if alias is not None:
        info["hub_id"] = alias.hub_id
    elif source.startswith(BUILTIN_PREFIX):
        info["builtin"] = source
    elif source and hub_repo_id(source) and (cached_id is not None or not name_or_path):
        info["hub_id"] = source
    elif source:
        info["folder"] = source
    elif cached_id is not None:
        info["hub_id"] = cached_id
    elif name_or_path:
        info["folder"] = name_or_path
    if info["hub_id"] is not None:
        info["revision"] = revision
    info["name"] = (
        info["hub_id"] or info["builtin"] or (Path(info["folder"]).name if info["folder"] else None)
    )
    # license: the base config, else the model card of the base folder (a local source, or the Hub
    # snapshot convert read), else a card next to the exported model
    info["license"] = base_cfg.get("license")
    folders = [info["folder"], name_or_path, model_dir]
    for folder in folders:
        if info["license"] is not None or not folder:
            continue
        meta = _front_matter(Path(folder) / "README.md")
        if meta.get("license") is not None:
            info["license"] = str(meta["license"])
            for key in ("license_name", "license_link"):
                if meta.get(key) is not None:
                    info[key] = str(meta[key])
    if info["license"] is not None:
        info["license"] = str(info["license"])
    return info


def _datasets(stages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``(Hub dataset ids, descriptions of local datasets)`` the training stages used. A ``data.path`` is a
    Hub id only when :func:`hub_repo_id` says so and it is not a data file name."""
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
        elif not path.lower().endswith(DATA_FILE_SUFFIXES) and hub_repo_id(path):
            if path not in hub:
                hub.append(path)
            continue
        else:
            desc = f"{st.get('stage')}: `{path}` (local, not found at export time)"
        if desc not in local:
            local.append(desc)
    return hub, local


def _mixer_kinds(config: Any) -> list[str]:
    """The mixer of every block of ``block_plan`` (``full_attention``, ``sliding_attention``, ``jet``,
    ``gdn``): the plan's ``mixer`` fields, else the base family's layer plan."""
    plan = list(getattr(config, "block_plan", None) or [])
    kinds = [str(e.get("mixer") or ("jet" if e.get("type") == "jet" else "")) for e in plan]
    if plan and not all(kinds):
        with contextlib.suppress(Exception):
            from sleepify.models.hybrid.families import layer_plan

            base = [info.kind for info in layer_plan(config.build_base_config())]
            kinds = [k or base[int(e["index"])] for k, e in zip(kinds, plan, strict=True)]
    return kinds


def card_tags(config: Any) -> list[str]:
    """The card's tags: ``sleepify``, ``custom_code`` (the modeling code ships with the model),
    ``sleep-hybrid``, the base family, and the mixers present (``ssm-attention-hybrid`` and
    ``gated-delta-rule`` for any SSM mixer, ``jet-block`` only when there are Jet layers)."""
    tags = ["sleepify", "custom_code", "sleep-hybrid"]
    base_type = getattr(config, "base_model_type", "") or ""
    if base_type:
        tags.append(base_type)
    kinds = set(_mixer_kinds(config))
    if kinds & {"jet", "gdn"}:
        tags += ["ssm-attention-hybrid", "gated-delta-rule"]
    if "jet" in kinds:
        tags.append("jet-block")
    return tags


def card_metadata(config: Any, stages: list[dict[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    """The card's front matter, as the Hub reads it (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    hub_ds, _ = _datasets(stages)
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base.get("hub_id") or None,
        license=base.get("license") or "unknown",
        license_name=base.get("license_name") if base.get("license") == "other" else None,
        license_link=base.get("license_link") if base.get("license") == "other" else None,
        datasets=hub_ds or None,
        tags=card_tags(config),
    )
    return data.to_dict()


def model_card(
    config: Any,
    stages: list[dict[str, Any]],
    base: dict[str, Any],
    eval_data: Any = None,
    eval_plots: list[str] = (),
    repo_id: str | None = None,
    dtype: str = "float32",
    run_name: str | None = None,
    folder: str | Path | None = None,
) -> str:
    """The README.md of an export: front matter (:func:`card_metadata`) + body. The usage snippet loads
    ``repo_id`` (the Hub repo it is pushed to), else ``folder`` (the export folder), as written."""
    from huggingface_hub import ModelCardData

    _, local_ds = _datasets(stages)
    base_type = getattr(config, "base_model_type", "") or ""
    kinds = _mixer_kinds(config)
    plan = list(getattr(config, "block_plan", None) or [])
    jet_blocks = [i for i, e in enumerate(plan) if e.get("type") == "jet"]
    base_ssm = sum(
        1 for k, e in zip(kinds, plan, strict=False) if e.get("type") == "base" and k in ("jet", "gdn")
    )
    meta = card_metadata(config, stages, base)
    lines = ["---", ModelCardData(**meta).to_yaml().strip(), "---", ""]
    title = repo_id.split("/")[-1] if repo_id else (run_name or base.get("name") or "sleep-capable model")
    start, end = config.loop_range
    if base.get("hub_id"):
        made_from = f"[`{base['hub_id']}`](https://huggingface.co/{base['hub_id']})"
    elif base.get("builtin"):
        made_from = f"the built-in `{base['builtin']}` (initialised from scratch)"
    elif base.get("folder"):
        made_from = f"the local model folder `{base['folder']}`"
    else:
        made_from = "a base model"
    state = (
        "inserted MLP-free Jet layers (gated delta rule + dynamic convolution) carry a fixed-size state"
        if jet_blocks
        else ("its SSM layers carry a fixed-size state" if base_ssm else "the base layers carry the state")
    )
    lines += [
        f"# {title}",
        "",
        f"A sleep-capable SSM-attention hybrid made with sleepify from {made_from} "
        '("Language Models Need Sleep", arXiv 2605.26099). Attention sees a bounded window of '
        f"L = {config.sleep_window} tokens; {state}. When a window is full the model *sleeps*: "
        f"N = {config.sleep_passes} passes of its looped blocks over the window update the state, then the "
        "KV cache is evicted.",
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
        f"| blocks | {config.num_blocks} |",
        f"| inserted Jet layers (block positions) | {len(jet_blocks)}"
        + (f", at {jet_blocks}" if jet_blocks else "")
        + " |",
        f"| base SSM layers (Jet / GatedDeltaNet) | {base_ssm} |",
        f"| looped blocks (`loop_start`, `loop_end`) | [{start}, {end}) |",
        f"| weights dtype | {dtype} |",
        "",
        "## How it was made",
        "",
    ]
    if base.get("hub_id"):
        source = f"the Hub model `{base['hub_id']}`" + (
            f" (revision `{base['revision']}`)" if base.get("revision") else ""
        )
    elif base.get("builtin"):
        source = f"`{base['builtin']}`, a built-in from-scratch config"
    elif base.get("folder"):
        source = f"the local folder `{base['folder']}` (not a Hub model, so no `base_model` in the metadata)"
    else:
        source = "unknown (no convert recipe was found)"
    lines += [f"Converted from: {source}.", ""]
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
    repo = repo_id or (str(folder) if folder is not None else "ORG/NAME")
    lines += [
        "",
        "## Usage",
        "",
        "The modeling code ships with the model (`auto_map` in `config.json`), so loading needs only "
        "`pip install torch transformers safetensors` and `trust_remote_code=True`; fla and flash-attn "
        "kernels are used when they are installed.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model_id = {json.dumps(repo)}",
        "model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True)",
        "tok = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)  # else it asks (config.json)",
        'ids = tok("The capital of France is", return_tensors="pt").input_ids',
        "out = model.generate(ids, max_new_tokens=32)  # incremental decoding; sleeps at every full window",
        "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
        "```",
        "",
        "The tokenizer alone needs no custom code: `AutoTokenizer.from_pretrained(model_id, "
        "trust_remote_code=False)` loads it without running any and without a prompt (transformers reads "
        "`config.json` through `AutoConfig` first, and asks before running a folder's code when "
        "`trust_remote_code` is not given).",
        "",
        "With sleepify installed (from its source repository: `pip install .` in a checkout; it is not on "
        "PyPI), the model also loads without `trust_remote_code` after `import sleepify`, and the command "
        f'line generates too: `sleepify generate {shlex.quote(repo)} --prompt "..."`.',
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


def _weight_specs(model: Any, dtype: Any) -> list[Any]:
    """The model's state dict (tied targets left out, as ``save_pretrained`` writes it), floating tensors
    cast to ``dtype`` one at a time when written."""
    from sleepify.weights_io import TensorSpec

    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    specs = []
    for name, t in model.state_dict().items():
        if name in tied:
            continue
        cast = dtype if t.is_floating_point() else t.dtype
        specs.append(TensorSpec(name, cast, tuple(t.shape), lambda t=t, cast=cast: t.to(cast)))
    return specs


def run_export(
    source: str | Path | None,
    out: str | Path,
    dtype: str | None = None,
    max_shard_size: str | None = None,
    push_to_hub: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    runs_root: str | Path = "runs",
    log: Any = print,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> ExportResult:
    """Export the model of ``source`` (see :func:`sleepify.runs.resolve_run`) into ``out``; then push it to
    the Hub when ``push_to_hub`` (``ORG/NAME`` or a bare ``NAME``: the token owner's namespace) is given,
    with ``private`` / ``token`` / ``revision`` / ``create_pr`` as :func:`~sleepify.stages.push.run_push`
    takes them.
    ``dtype`` / ``max_shard_size`` / ``push_to_hub`` / ``private`` default to the run recipe's ``export``
    section. The card's usage snippet loads the Hub repo when pushing, else the folder ``out``.

    Example::

        result = export("runs/tiny", "exports/tiny-sleep", dtype="bf16", push_to_hub="tiny-sleep")
    """
    from transformers import AutoTokenizer, GenerationConfig

    import sleepify  # noqa: F401  (registers the model types)
    from sleepify.weights_io import write_specs

    model_dir, run_dir = resolve_run(source, runs_root)
    section = _recipe_export_section(model_dir)
    dtype = DTYPE_ALIASES.get(dtype or "", dtype) or section.get("dtype") or None
    max_shard_size = max_shard_size or section.get("max_shard_size") or "5GB"
    push_to_hub = push_to_hub or section.get("push_to_hub")
    private = bool(section.get("private", False)) if private is None else private
    if dtype is not None and dtype not in DTYPES:
        raise SleepifyError(f"export dtype must be bf16, fp16 or fp32, got {dtype!r}")

    out = Path(out)
    refuse_inputs(out, {"the model": model_dir})  # --out must not replace or write into what it exports
    check_output_path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")

    model = load_model(model_dir, "auto")  # in the dtype it was saved in: one copy of the model
    # the model's own dtype unless asked; a cast happens tensor by tensor as the shards are written
    target = torch_dtype(dtype) if dtype is not None else next(model.parameters()).dtype
    dtype_name = str(target).removeprefix("torch.")
    model.config.dtype = dtype_name
    stages = _stage_recipes(model_dir, run_dir)
    base = _base_model(stages, model_dir, model.config)
    eval_file = _find_eval(model_dir, run_dir)
    card_repo = push_to_hub
    if push_to_hub and "/" not in push_to_hub:
        from sleepify.hub import resolve_repo_id

        try:
            card_repo = resolve_repo_id(push_to_hub, token)
        except SleepifyError as err:  # the push after the export fails the same way, with its retry hint
            card_repo = None
            if log is not None:
                log(f"warning: {err}; the card's usage snippet names the folder {out}")

    specs = _weight_specs(model, target)
    need = sum(spec.nbytes for spec in specs)
    check_free_space(out.parent, need, "the export")
    # two exports into one --out: the second refuses in one line
    with RunLock(out), staging(out, need) as tmp:
        if out.exists() and any(out.iterdir()) and not overwrite:  # again, under the lock
            raise SleepifyError(f"{out} exists and is not empty: pass --overwrite or another --out")
        # self-contained remote code: loads with trust_remote_code=True where sleepify is not installed
        model.config.auto_map = dict(AUTO_MAP)
        model.config.save_pretrained(tmp)
        write_specs(specs, tmp, max_shard_size)  # one tensor at a time: no copy of a whole shard
        write_remote_code(tmp)
        with suppress_unless_disk_full(OSError, ValueError, TypeError):
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
                (tmp / EVAL_DIR).mkdir()
                shutil.copy2(eval_file, tmp / EVAL_DIR / EVAL_FILE)
                for png in sorted(eval_file.parent.glob("*.png")):
                    shutil.copy2(png, tmp / EVAL_DIR / png.name)
                    plots.append(f"eval/{png.name}")
        run_name = run_dir.name if run_dir is not None else None
        card = model_card(
            model.config, stages, base, eval_data, plots, card_repo, dtype_name, run_name, folder=out
        )
        (tmp / "README.md").write_text(card)
        publish_folder(tmp, out)
    result = ExportResult(out, model_dir, run_dir, stages, eval_file)
    if log is not None:
        log(f"exported {model_dir} -> {out} ({dtype_name}, shards <= {max_shard_size})")
    if push_to_hub:
        from sleepify.stages.push import run_push

        result.pushed = run_push(
            out,
            card_repo or push_to_hub,
            private=private,
            revision=revision,
            token=token,
            create_pr=create_pr,
            log=log,
        )
    return result


export = run_export  # the name before the stages moved (sleepify.export.export)
