"""The recipe reference (docs/recipes.md), generated from the schema so it cannot go stale."""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sleepify.config.schema import Recipe

HEADER = """# Recipe reference

Generated from `sleepify/config/schema.py` by `sleepify recipes reference` (a test keeps it in sync).
Every key is optional; the default applies when a recipe does not set it. Unknown keys are errors.

"""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    args = get_args(annotation)
    if str(origin).endswith("Literal"):
        return " \\| ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return " \\| ".join("null" if a is type(None) else _type_name(a) for a in args)


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _optional_section(annotation: Any) -> type[BaseModel] | None:
    """``Section | None`` -> Section."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0]
    return None


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows, sections = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((f"{prefix}{name}", annotation, ""))
            continue
        section = _optional_section(annotation)
        if section is not None:  # a section a recipe may leave null: its meaning, then its keys
            sections.append((f"{prefix}{name}", section, field.description or ""))
            continue
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {doc} |")
    out = []
    if rows:
        out += ["| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for dotted, section, null in sections:
        intro = (section.__doc__ or "").strip() + (f" Default `null`: {null}." if null else "")
        out += [f"## `{dotted}`", "", intro, "", *_rows(section, f"{dotted}.")]
    return out


def schema_reference() -> str:
    return HEADER + "\n".join(["## top level", "", *_rows(Recipe, "")]).rstrip() + "\n"
