"""Renamed: ``scanside.models`` is now ``scanside.training``.

The package held the recipes, the simulated CT data, the training loop and the evaluation of
models, not models themselves (the built-in model is ``scanside/default_model``), so it was
named for what it does. The command ``scanside models ...`` keeps its name.
"""

raise ImportError("scanside.models was renamed scanside.training (it holds model recipes, "
                  "training and evaluation, not models): import scanside.training instead, e.g. "
                  "`from scanside.training import build`", name="scanside.models")
