"""``sleepify models``: the model aliases, the built-in models, and the families a local folder may hold."""

from __future__ import annotations

import click


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]


@click.command("models")
def models() -> None:
    """List what `sleepify convert` accepts: the model aliases (Hub id and default recipe), the built-in
    models (`builtin:NAME`, trained from scratch), and the architectures (config.json model_type) a
    local folder or Hub id may have; those get a default plan when no recipe gives one."""
    from sleepify.models.hybrid.families import DECODER_SPECS, SUPPORTED_FAMILIES
    from sleepify.models.registry import ALIASES
    from sleepify.models.scratch.builtin import BUILTIN_MODELS, BUILTIN_PREFIX

    rows = [("alias", "hub id", "default recipe", "family")]
    rows += [
        (a.name, a.hub_id, a.recipe, a.family + (f" ({a.note})" if a.note else "")) for a in ALIASES.values()
    ]
    click.echo("\n".join(_table(rows)))
    click.echo("")
    rows = [("built-in model", "default recipe", "what")]
    rows += [(BUILTIN_PREFIX + b.name, b.recipe, b.description) for b in BUILTIN_MODELS.values()]
    click.echo("\n".join(_table(rows)))
    generic = sorted(DECODER_SPECS)
    native = sorted(t for t in SUPPORTED_FAMILIES if t not in DECODER_SPECS and t != "sleep_scratch")
    click.echo(
        "\narchitectures a local folder or Hub id may have (config.json model_type):\n"
        f"  transformers' decoder layers (one generic adapter): {', '.join(generic)}\n"
        f"  sleepify's native models: {', '.join(native)}\n"
        "  (without a recipe: a default plan, see `sleepify convert MODEL --dry-run`)"
    )
