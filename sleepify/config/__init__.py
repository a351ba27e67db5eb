"""Recipes: the typed schema and the loader (base chains, stacking, dotted overrides)."""

from sleepify.config.loader import (
    ResolvedRecipe,
    available_recipes,
    load_recipe,
    recipe_from_run,
    recipes_dir,
)

__all__ = ["Recipe", "ResolvedRecipe", "available_recipes", "load_recipe", "recipe_from_run", "recipes_dir"]


def __getattr__(name: str) -> object:
    # the schema imports pydantic (~0.7 s): loaded on first use, not by `import sleepify.config`
    if name == "Recipe":
        from sleepify.config.schema import Recipe

        return Recipe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
