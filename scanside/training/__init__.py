"""Making and measuring models, offline (needs the ``[export]`` extra: torch, diffusers; the
``[train]`` extra for the simulated scans): recipes built from configs (recipes), the simulated
CT data (anatomy, ctsim, realct), the built-in model's training (train) and its evaluation
(evaluate). Named scanside.models until 0.1.0; it holds no models (the built-in one is
scanside/default_model)."""

from .recipes import RECIPES, RecipeName, build, recipe

__all__ = ["RECIPES", "RecipeName", "build", "recipe"]
