"""Hook implementations: what this plugin adds to depthsel's registries.

Each hook receives one ``register(name, factory, description=, info=)``
callback. The factories are imported inside the hooks so that listing plugins
stays cheap and an error in one module only disables that hook.
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl


@hookimpl
def register_binners(register: Any) -> None:
    """Add the ``inverse`` binner."""
    from .binner import InverseDepthBinner

    register("inverse", InverseDepthBinner, description="bins uniform in inverse depth (example plugin)")


@hookimpl
def register_analyzers(register: Any) -> None:
    """Add the ``unit-stats`` analyzer."""
    from .analyzer import UnitStatsAnalyzer

    register("unit-stats", UnitStatsAnalyzer,
             description="per-unit mean and std of activations over the data (example plugin)")


@hookimpl
def register_models(register: Any) -> None:
    """Add the ``example-tiny`` model with its ModelInfo."""
    from .model import INFO, example_tiny

    register("example-tiny", example_tiny, description="tiny 2-stage encoder-decoder (example plugin)",
             info=INFO)
