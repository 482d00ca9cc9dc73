"""Model recipes built offline from configs (needs the ``[export]`` extra: torch, diffusers)."""

from .recipes import RECIPES, RecipeName, build, recipe

__all__ = ["RECIPES", "RecipeName", "build", "recipe"]
