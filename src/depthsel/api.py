"""Name-based constructors that resolve through the plugin registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from .registry import PluginEntry, get_plugin_manager
from .zoo import ModelInfo

__all__ = [
    "get_binner",
    "get_objective",
    "get_model",
    "get_model_info",
    "get_analyzer",
    "get_dataset",
    "list_plugins",
]


def get_binner(name: str, /, **config: Any) -> Any:
    """Build a registered :class:`~depthsel.Binner`, e.g. ``get_binner("sid", num_bins=64)``."""
    return get_plugin_manager().create("binners", name, **config)


def get_objective(name: str, /, **config: Any) -> Any:
    """Build a registered :class:`~depthsel.SelectivityObjective` (``"assign"``, ``"regularize"``)."""
    return get_plugin_manager().create("objectives", name, **config)


def get_model(name: str, /, **config: Any) -> nn.Module:
    """Build a registered depth network, e.g. ``get_model("fastdepth", width=0.25)``."""
    return get_plugin_manager().create("models", name, **config)


def get_model_info(name: str) -> ModelInfo:
    """Return the :class:`~depthsel.ModelInfo` a model plugin declared."""
    entry = get_plugin_manager().entry("models", name)
    if not isinstance(entry.info, ModelInfo):
        return ModelInfo(input_size=(224, 224))
    return entry.info


def get_analyzer(name: str, /, **config: Any) -> Any:
    """Build a registered :class:`~depthsel.Analyzer`."""
    return get_plugin_manager().create("analyzers", name, **config)


def get_dataset(name: str, /, **config: Any) -> Any:
    """Build a registered dataset, e.g. ``get_dataset("folder", root=...)``."""
    return get_plugin_manager().create("datasets", name, **config)


def list_plugins(kind: str) -> dict[str, PluginEntry]:
    """Return ``{name: entry}`` for one kind (``"binners"``, ``"models"``, ...)."""
    return get_plugin_manager().entries(kind)
