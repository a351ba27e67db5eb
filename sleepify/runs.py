"""The run layout: the one place that knows folder names, ``runs/latest``, stored recipes and provenance.

::

    runs/<name>/convert/            a model folder (config.json, weights, recipe.yaml)
    runs/<name>/<stage>/model/      warmup / train: the trained model folder
    runs/<name>/<stage>/recipe.yaml the resolved recipe with its provenance header
    runs/<name>/<stage>/eval/       eval.json / eval.md / eval.png
    runs/latest                     one line: the newest model folder

Every stage asks this module where things are: "the previous stage's model" (:func:`resolve_model_dir`),
"the run a model belongs to" (:func:`resolve_run`, :func:`run_dir_of`), "where this stage writes"
(:func:`stage_dir`), and loads a model folder with its dtype (:func:`load_model`, one dtype table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sleepify.config.dtypes import DTYPE_ALIASES, DTYPES
from sleepify.config.loader import RESOLVED_RECIPE_FILE
from sleepify.errors import ModelLoadError, SleepifyError, clip, shown

__all__ = [
    "training_stage_dirs",
    "DTYPES",
    "EVAL_DIR",
    "LATEST_POINTER",
    "MODEL_DIR",
    "RECIPE_FILE",
    "STAGES",
    "dtype_bytes",
    "dtype_name",
    "latest_run",
    "load_model",
    "model_folder",
    "point_latest",
    "read_provenance",
    "resolve_model_dir",
    "resolve_run",
    "run_dir_of",
    "run_name",
    "stage_dir",
    "stored_recipe",
    "torch_dtype",
]

STAGES = ("convert", "warmup", "train")  # the stages that write a model, in pipeline order
TRAIN_STAGES = STAGES[1:]
LATEST_POINTER = "latest"  # runs/latest: one line, the path of the newest model folder
MODEL_DIR = "model"  # <run>/<stage>/model (convert writes its model folder as the stage folder itself)
EVAL_DIR = "eval"
RECIPE_FILE = RESOLVED_RECIPE_FILE


def dtype_name(name: str) -> str:
    """``bf16`` -> ``bfloat16``; a recipe name stays; anything else is a one-line error."""
    full = DTYPE_ALIASES.get(name, name)
    if full not in DTYPES:
        raise SleepifyError(f"unknown dtype {name!r}: one of {', '.join([*DTYPES, *DTYPE_ALIASES])}")
    return full


def dtype_bytes(name: str) -> int:
    return DTYPES[dtype_name(name)]


def torch_dtype(name: str) -> Any:
    """The torch dtype of a recipe dtype name (``float32``, ``bf16``, ...)."""
    import torch

    return getattr(torch, dtype_name(name))


# ------------------------------------------------------------------------------------------------------------
# runs/latest


def latest_run(runs_root: str | Path = "runs") -> Path | None:
    """The folder ``runs/latest`` points at (the newest model a stage wrote), or None."""
    pointer = Path(runs_root) / LATEST_POINTER
    if not pointer.is_file():
        return None
    return Path(pointer.read_text().strip())


def point_latest(runs_root: str | Path, model_dir: Path) -> None:
    """Point ``runs/latest`` at ``model_dir`` (atomically; the last step of a stage)."""
    from sleepify.fsutil import write_pointer

    write_pointer(Path(runs_root) / LATEST_POINTER, model_dir)


# ------------------------------------------------------------------------------------------------------------
# from a model folder to its run and back


def resolve_model_dir(source: str | Path | None, runs_root: str | Path = "runs") -> Path:
    """A sleep-capable model folder from a model folder, a stage run folder holding ``model/``, or None
    (``runs/latest``): "the previous stage's model"."""
    if source is None:
        latest = latest_run(runs_root)
        if latest is None:
            raise SleepifyError(
                f"no model given and {Path(runs_root) / LATEST_POINTER} does not exist: pass a model folder"
            )
        path = latest
    else:
        path = Path(source)
        if not path.exists():
            raise SleepifyError(f"{source} does not exist: pass a model folder or a stage run folder")
    if (path / MODEL_DIR / "config.json").is_file():
        path = path / MODEL_DIR
    config = path / "config.json"
    if not config.is_file():
        raise SleepifyError(
            f"{path} is not a model folder (no config.json): pass a folder written by `sleepify convert`, "
            "`warmup` or `train`, or a stage run folder holding model/"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise SleepifyError(f"{config} is not valid JSON ({err})") from None
    if model_type != "sleep_hybrid":
        raise SleepifyError(
            f"{path} holds a '{model_type}' model, not a sleep-capable one: "
            f"run `sleepify convert {path}` first"
        )
    return path


def model_folder(source: str | Path | None, runs_root: str | Path = "runs") -> Path | str:
    """A local model folder (a stage folder with ``model/``; None = ``runs/latest``) or a Hub id ORG/NAME."""
    text = None if source is None else str(source)
    if text and not Path(text).exists() and text.count("/") == 1 and not text.startswith((".", "/")):
        return text  # a Hub repo id: transformers downloads it
    return resolve_model_dir(text, Path(runs_root))


def run_dir_of(model_dir: Path) -> Path:
    """``runs/x/train/model`` -> ``runs/x/train``; a convert folder (itself a model) -> itself."""
    return model_dir.parent if model_dir.name == MODEL_DIR else model_dir


def run_name(model_dir: Path) -> str:
    """``<name>/<stage>`` of a model folder (a report's label)."""
    run = run_dir_of(model_dir.resolve())
    return f"{run.parent.name}/{run.name}" if run.parent.name else run.name


def stage_dir(model_dir: Path, stage: str, out: str | Path | None = None) -> Path:
    """Where ``stage`` writes when it reads ``model_dir``: ``out``, else ``runs/<name>/<stage>`` next to
    the previous stage (``runs/<name>/convert`` or ``runs/<name>/<stage>/model``)."""
    if out:
        return Path(out)
    name_dir = model_dir.parent.parent if model_dir.name == MODEL_DIR else model_dir.parent
    return name_dir / stage


def training_stage_dirs(run_dir: Path) -> list[Path]:
    """A run folder's training stage folders, the latest stage first (train, then warmup): where their
    ``metrics.jsonl`` and ``curves.png`` are."""
    return [Path(run_dir) / stage for stage in reversed(TRAIN_STAGES)]


def eval_dir(model_dir: Path) -> Path:
    """The default report folder of a model: ``<run>/<stage>/eval``."""
    return run_dir_of(model_dir) / EVAL_DIR


def convert_dir(name: str, runs_root: str | Path = "runs", run_dir: str | Path | None = None) -> Path:
    """Where ``convert`` writes a model called ``name`` by default: ``runs/<name>/convert`` (``<run.dir>/
    convert`` when the recipe names the run folder)."""
    return (Path(run_dir) if run_dir else Path(runs_root) / name) / STAGES[0]


def model_dir_of(stage_folder: Path) -> Path:
    """The model folder a training stage writes: ``<run>/<stage>/model``."""
    return stage_folder / MODEL_DIR


def resolve_run(source: str | Path | None, runs_root: str | Path = "runs") -> tuple[Path, Path | None]:
    """``(model folder, run folder)`` of ``source``: a model folder (``config.json``), a stage folder
    holding ``model/``, a run folder ``runs/<name>`` (its latest stage: train, then warmup, then convert),
    or None (the model ``runs/latest`` points at). The run folder is None when it cannot be told."""
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
    elif (path / MODEL_DIR / "config.json").is_file():
        model = path / MODEL_DIR
    else:
        found = [
            cand
            for stage in reversed(STAGES)
            for cand in (path / stage / MODEL_DIR, path / stage)
            if (cand / "config.json").is_file()
        ]
        if not found:
            raise SleepifyError(f"{path} holds no model (no config.json, model/ or stage folder)")
        model = found[0]
    model = model.resolve()
    stage_folder = run_dir_of(model)
    run = stage_folder.parent if stage_folder.name in STAGES else None
    return model, run


def stage_recipe_files(model_dir: Path, run_dir: Path | None) -> list[Path]:
    """Every stored recipe of a run in pipeline order (each stage folder and its ``model/``), then the
    model's own."""
    found = [
        folder / RECIPE_FILE
        for stage in (STAGES if run_dir is not None else ())
        for folder in (run_dir / stage, run_dir / stage / MODEL_DIR)  # type: ignore[operator]
    ]
    return [*found, model_dir / RECIPE_FILE]


def eval_report_files(model_dir: Path, run_dir: Path | None) -> list[Path]:
    """Where an ``eval.json`` of a model may be: ``<folder>/eval/eval.json`` or ``<folder>/eval.json`` of
    the model folder, its stage folder and the run folder."""
    roots = [model_dir, model_dir.parent] + ([run_dir] if run_dir is not None else [])
    return [f for root in roots for f in (root / EVAL_DIR / "eval.json", root / "eval.json")]


# ------------------------------------------------------------------------------------------------------------
# stored recipes and provenance


def stored_recipe(model_dir: Path) -> Path | None:
    """The resolved recipe stored with a model: in its folder, or its stage folder."""
    for folder in (model_dir, model_dir.parent):
        if (folder / RECIPE_FILE).is_file():
            return folder / RECIPE_FILE
    return None


def read_provenance(recipe_file: str | Path) -> dict[str, Any]:
    """The ``# provenance`` header of a stored ``recipe.yaml`` (sleepify version, stage, created, sources,
    overrides, restore) plus the recipe itself under ``"recipe"`` and the file under ``"file"``."""
    import yaml

    from sleepify.config.loader import provenance_header

    recipe_file = Path(recipe_file)
    header = provenance_header(recipe_file)
    try:
        recipe = yaml.safe_load(recipe_file.read_text()) or {}
    except yaml.YAMLError:
        recipe = {}
    return {**header, "recipe": recipe, "file": str(recipe_file)}


# ------------------------------------------------------------------------------------------------------------
# loading a model folder


def load_model(model_dir: Path | str, dtype: Any = "auto", model_type: str = "sleep_hybrid") -> Any:
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype`` (a recipe name such as ``bfloat16`` / ``bf16``,
    a torch dtype, or ``"auto"``) with every way a model folder can be broken as one line: ``config.json``
    unreadable or of another architecture (said as such, before any weight is read), weights only in
    pickle files (sleepify reads safetensors only, as ``convert`` does), truncated or random safetensors,
    weights that do not match config.json, and weights that are not finite
    (:func:`sleepify.sanity.check_weights`: train, eval, export and generate all load through here).
    Half-precision weights on a CPU without bf16 units compute their products in float32
    (:mod:`sleepify.ops.float32_linear`)."""
    from transformers import AutoModelForCausalLM

    import sleepify  # noqa: F401  (registers the model types)
    from sleepify.ops.float32_linear import use_float32_products
    from sleepify.sanity import check_weights
    from sleepify.weights_io import safetensors_files

    model_dir = Path(model_dir)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = torch_dtype(dtype)
    check_config(model_dir, model_type)
    safetensors_files(model_dir)  # one rule, as convert's: safetensors only, never a pickle to torch.load
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True)
    except Exception as err:  # noqa: BLE001  (safetensors, config mismatches: many kinds)
        if isinstance(err, OSError) and err.errno is not None:
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"cannot load the model in {model_dir} ({type(err).__name__}: {first[:300]}): the weights are "
            "damaged or do not match its config.json; rerun the stage that wrote it"
        ) from None
    check_weights(model, model_dir)
    # bfloat16 / float16 weights on a CPU without bf16 units: products in float32 (200x faster backward)
    use_float32_products(model)
    return model


def check_config(model_dir: Path, model_type: str | None = "sleep_hybrid") -> dict[str, Any]:
    """``config.json`` of ``model_dir`` as a dict; one line when it is missing, not JSON, or (with
    ``model_type``) of another architecture."""
    import json

    file = Path(model_dir) / "config.json"
    if not file.is_file():
        raise ModelLoadError(f"{model_dir} is not a model folder (no config.json)")
    try:
        cfg = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise ModelLoadError(
            f"{file} is not valid JSON ({clip(str(err), 120)}): rerun the stage that wrote it"
        ) from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{file} is not a JSON object: rerun the stage that wrote it")
    found = cfg.get("model_type")
    if model_type is not None and found != model_type:
        raise ModelLoadError(
            f"{model_dir} is not a sleep-capable model (model_type {shown(found)}): pass a folder written by "
            "sleepify convert, warmup or train (or an export of one)"
        )
    return cfg
