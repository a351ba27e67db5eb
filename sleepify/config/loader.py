"""Loading recipes: names or files, ``base:`` chains, stacking, dotted overrides, provenance.

Resolution order (later wins): each recipe's ``base`` chain (deepest first), then the recipe itself,
then further stacked recipes in the order given, then ``key.sub=value`` overrides from the command
line. Values of overrides are parsed as YAML, so ``sleep.passes=4`` is an int and ``run.dir=null`` is None.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sleepify.errors import RecipeError, clip, did_you_mean, shown

if TYPE_CHECKING:  # pydantic and the schema load on first validation, not when the CLI starts (~0.7 s)
    from pydantic import BaseModel, ValidationError

    from sleepify.config.schema import Recipe

RECIPE_SUFFIXES = (".yaml", ".yml")
RESOLVED_RECIPE_FILE = "recipe.yaml"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; anything larger is not one
MAX_RECIPE_VALUES = 100_000  # values after YAML aliases are expanded (an alias bomb reaches billions)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``; users write both)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str = "<string>") -> Any:
    """YAML -> Python, refusing (in one line) invalid YAML, documents over :data:`MAX_RECIPE_BYTES` and
    documents whose aliases expand to more than :data:`MAX_RECIPE_VALUES` values or refer to themselves:
    both are counted on the parsed (shared) objects, before anything copies, validates or formats them."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{where}: {len(text)} characters, more than a recipe holds ({MAX_RECIPE_BYTES})")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: not valid YAML ({clip(str(err).splitlines()[0], 200)})") from None
    except RecursionError:
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None
    size = expanded_size(data)
    if size is None:
        raise RecipeError(f"{where}: a YAML alias (*name) refers to a value that contains it (a cycle)")
    if size > MAX_RECIPE_VALUES:
        raise RecipeError(
            f"{where}: its YAML aliases (*name) expand to more than {MAX_RECIPE_VALUES} values, more than a "
            "recipe holds: write the values out, or use fewer aliases"
        )
    return data


def expanded_size(data: Any) -> int | None:
    """How many values ``data`` holds with every shared (aliased) object counted each time it is reached
    (None: it contains itself). Linear in the number of distinct objects, whatever the expansion."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(obj: Any, depth: int = 0) -> int | None:
        if not isinstance(obj, (dict, list)):
            return 1
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if key in active or depth > 500:
            return None
        active.add(key)
        total = 1
        for child in (*obj.keys(), *obj.values()) if isinstance(obj, dict) else obj:
            n = size(child, depth + 1)
            if n is None:
                return None
            total = min(total + n, 1 << 62)  # saturate: only "over the limit" matters
        active.discard(key)
        sizes[key] = total
        return total

    return size(data)


def read_text(path: Path, what: str = "recipe") -> str:
    """A text file as UTF-8, with a binary, non-UTF-8, oversized or unreadable file as one line."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise RecipeError(f"cannot read the {what} {path}: {err.strerror or type(err).__name__}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes: not a {what}")
    if b"\0" in raw:
        raise RecipeError(f"{path} is a binary file, not a YAML {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path} is not UTF-8 text (byte {err.start}): save the {what} as UTF-8") from None


def recipes_dir() -> Path:
    """The shipped recipes: ``$SLEEPIFY_RECIPES_DIR`` or ``recipes/`` of the source checkout."""
    env = os.environ.get("SLEEPIFY_RECIPES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "recipes"


def available_recipes() -> dict[str, Path]:
    """Shipped recipe name (path under recipes/ without suffix, e.g. ``paper/rule110``) -> file."""
    root = recipes_dir()
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in RECIPE_SUFFIXES and path.is_file():
            found[path.relative_to(root).with_suffix("").as_posix()] = path
    return found


def find_recipe(ref: str, relative_to: Path | None = None) -> Path:
    """A recipe file from a path (absolute, relative to ``relative_to`` or the cwd) or a shipped name."""
    candidates = []
    as_path = Path(ref)
    if relative_to is not None and not as_path.is_absolute():
        candidates.append(relative_to / as_path)
    candidates.append(as_path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = available_recipes()
    name = ref
    for suffix in RECIPE_SUFFIXES:
        name = name.removesuffix(suffix)
    if name in shipped:
        return shipped[name]
    hint = did_you_mean(name, shipped)
    raise RecipeError(
        f"recipe '{clip(ref)}' not found: no such file and no shipped recipe of that name{hint}"
    )


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, recursing into mappings; lists and scalars are replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_chain(path: Path, seen: tuple[Path, ...], sources: list[str]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(f"recipe base chain loops: {cycle}")
    data = parse_yaml(read_text(path), where=str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    bases = data.pop("base", None)
    merged: dict[str, Any] = {}
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise RecipeError(f"{path}: 'base' must be a recipe name/path or a list of them")
        for base in bases:
            merged = deep_merge(merged, _read_chain(find_recipe(base, path.parent), (*seen, path), sources))
    sources.append(str(path))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], parsed value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override '{clip(text)}' must look like key.sub=value (e.g. sleep.passes=4)")
    return key.split("."), parse_yaml(value, where=f"override '{clip(text)}'")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for part in keys[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise RecipeError(f"override '{clip(text)}': '{clip(part)}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def _field_names(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Valid keys of the section that ``loc`` points into (for "did you mean")."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            break
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of ``model``, sections and their keys (``train``, ``train.optimizer.muon_lr``)."""
    keys = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        sub = info.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            keys.extend(all_keys(sub, dotted + "."))
    return keys


MAX_PROBLEMS = 5  # problems listed in one message; the rest are counted


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem: unknown keys with the closest valid key, wrong types with key/expected/given.
    ``model`` defaults to the recipe schema. Values are quoted with :func:`sleepify.errors.shown` (bounded,
    whatever the value holds)."""
    if model is None:
        from sleepify.config.schema import Recipe as model
    lines = []
    items = err.errors(include_url=False, include_context=False)
    for item in items[:MAX_PROBLEMS]:
        loc = [clip(str(p), 60) for p in item["loc"]]
        dotted = ".".join(loc) or "<recipe>"
        kind = item["type"]
        given = item.get("input")
        if kind == "extra_forbidden":
            parent = loc[:-1]
            valid = [".".join([*parent, f]) for f in _field_names(model, parent)]
            lines.append(f"unknown key '{dotted}'{did_you_mean(dotted, [*valid, *all_keys(model)])}")
        elif kind == "missing":
            lines.append(f"missing key '{dotted}'")
        elif kind == "value_error":
            lines.append(clip(str(item["msg"]).removeprefix("Value error, "), 300))
        else:
            expected = item["msg"].removeprefix("Input should be ").removeprefix("a valid ")
            lines.append(
                f"'{dotted}' expects {clip(expected, 200)}, got {shown(given)} ({type(given).__name__})"
            )
    if len(items) > MAX_PROBLEMS:
        lines.append(f"and {len(items) - MAX_PROBLEMS} more")
    return "; ".join(lines)


def validate(data: Mapping[str, Any], where: str = "recipe") -> Recipe:
    from pydantic import ValidationError

    from sleepify.config.schema import Recipe

    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as err:
        raise RecipeError(f"{where}: {format_validation_error(err)}") from None


class ResolvedRecipe:
    """A validated recipe plus where it came from (stored with every output: provenance)."""

    def __init__(self, recipe: Recipe, sources: list[str], overrides: list[str]):
        self.recipe = recipe
        self.sources = sources
        self.overrides = overrides

    @property
    def name(self) -> str:
        return Path(self.sources[-1]).stem if self.sources else "recipe"

    def to_dict(self) -> dict[str, Any]:
        return self.recipe.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, folder: str | Path, stage: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write the resolved recipe (and how it was made) as ``recipe.yaml`` into ``folder``;
        ``extra`` adds fields to the provenance header."""
        from sleepify import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        header = {
            "sleepify_version": __version__,
            "stage": stage or self.recipe.stage,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sources": self.sources,
            "overrides": self.overrides,
            **(extra or {}),
        }
        text = "# provenance\n" + "".join(
            f"# {line}\n" for line in yaml.safe_dump(header, sort_keys=False).splitlines()
        )
        target = folder / RESOLVED_RECIPE_FILE
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(text + self.to_yaml())
        tmp.replace(target)
        return target


def load_recipe(
    refs: str | Path | Sequence[str | Path] | None = None,
    overrides: Iterable[str] = (),
) -> ResolvedRecipe:
    """Resolve and validate: recipes stacked left to right, then dotted overrides (``"key=value"`` strings
    or a :class:`~sleepify.config.overrides.RunOverrides`, whose flags come after its pairs)."""
    if refs is None:
        refs = []
    elif isinstance(refs, (str, Path)):
        refs = [refs]
    sources: list[str] = []
    merged: dict[str, Any] = {}
    for ref in refs:
        merged = deep_merge(merged, _read_chain(find_recipe(str(ref)), (), sources))
    overrides = list(overrides)
    recipes_only = merged
    merged = apply_overrides(merged, overrides)
    where = Path(sources[-1]).name if sources else "recipe"
    try:
        return ResolvedRecipe(validate(merged, where=where), sources, overrides)
    except RecipeError:
        if not overrides:
            raise
        try:
            validate(recipes_only, where=where)
        except RecipeError:
            raise  # the recipes themselves are wrong
        # the recipes validate alone: the error comes from a flag or a key=value override
        validate(merged, where="a flag or key=value override")
        raise


def provenance_header(recipe_file: str | Path) -> dict[str, Any]:
    """The ``# provenance`` comment header of a stored ``recipe.yaml`` ({} if there is none); with the recipe
    itself: :func:`sleepify.runs.read_provenance`."""
    lines = []
    for line in Path(recipe_file).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    if not lines or lines[0].strip() != "provenance":
        return {}
    try:
        return yaml.safe_load("\n".join(lines[1:])) or {}
    except yaml.YAMLError:
        return {}


def sets_key(refs: Sequence[str | Path], dotted: str) -> bool:
    """Whether the recipes ``refs`` (with their base chains) state ``dotted`` explicitly."""
    merged: dict[str, Any] = {}
    for ref in refs:
        merged = deep_merge(merged, _read_chain(find_recipe(str(ref)), (), []))
    node: Any = merged
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def recipe_from_run(folder: str | Path) -> dict[str, Any]:
    """The resolved recipe stored in an output folder (comments hold the provenance)."""
    path = Path(folder) / RESOLVED_RECIPE_FILE
    if not path.is_file():
        raise RecipeError(f"{folder} holds no {RESOLVED_RECIPE_FILE}: is it a sleepify output folder?")
    return parse_yaml(read_text(path), where=str(path)) or {}
