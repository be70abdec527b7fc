"""The papers' recipes and the ``depthsel reproduce`` command.

Registered through the ``register_commands`` hook of the ``depthsel`` entry
points, exactly as a third-party package would; the command module (and
typer) is imported only when the hook runs.
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl

from .configs import FASTDEPTH2021, HU2019, RECIPES, YOU2021, OptimizerSpec, Recipe, get_recipe

__all__ = ["register_commands", "Recipe", "OptimizerSpec", "RECIPES", "get_recipe", "YOU2021", "HU2019",
           "FASTDEPTH2021"]


@hookimpl
def register_commands(register: Any) -> None:
    """Register ``depthsel reproduce``."""
    from .command import reproduce

    register("reproduce", reproduce,
             description="Train a paper's recipe (you2021, hu2019, fastdepth2021), evaluate and dissect it.")
