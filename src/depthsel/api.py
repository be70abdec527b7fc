"""Name-based constructors that resolve through the plugin registry."""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ConfigError
from .registry import PluginEntry, get_plugin_manager
from .modelinfo import ModelInfo

__all__ = [
    "binner_from_config",
    "get_binner",
    "get_objective",
    "get_model",
    "get_model_info",
    "get_analyzer",
    "get_dataset",
    "list_plugins",
    "result_types",
]


def get_binner(name: str, /, **config: Any) -> Any:
    """Build a registered :class:`~depthsel.Binner`: ``get_binner(name, num_bins=64)``."""
    return get_plugin_manager().create("binners", name, **config)


def binner_from_config(config: Any) -> Any:
    """Rebuild a binner from a name, an instance, or a config dict (``Binner.config()``).

    A dict with options besides ``name``/``edges`` is rebuilt through the
    registry, passing ``edges`` along when the factory accepts it (fitted
    binners); a dict with only edges becomes an
    :class:`~depthsel.EdgesBinner`.
    """
    import inspect
    from collections.abc import Mapping

    from .binning import Binner, EdgesBinner
    from .errors import BinCountError

    if isinstance(config, Binner):
        return config
    if isinstance(config, str):
        return get_binner(config)
    if not isinstance(config, Mapping) or ("name" not in config and "edges" not in config):
        raise BinCountError(
            f"a binner must be a registered name (`depthsel binners` lists them), a Binner, or a dict "
            f"like {{'name': NAME, 'num_bins': 64}}; got {config!r}"
        )
    d = dict(config)
    name, edges = str(d.pop("name", "edges")), d.pop("edges", None)
    registry = get_plugin_manager().entries("binners")
    if name not in registry:
        if edges is None:
            return get_binner(name)  # raises UnknownPluginError with suggestions
        return EdgesBinner(edges, name=name)
    try:
        params = inspect.signature(registry[name].factory).parameters
    except (TypeError, ValueError):
        params = {}
    if edges is not None and "edges" in params:
        return get_binner(name, edges=edges, **{k: v for k, v in d.items() if k in params and k != "num_bins"})
    if not d and edges is not None:
        return EdgesBinner(edges, name=name)
    return get_binner(name, **d)


def get_objective(name: str, /, **config: Any) -> Any:
    """Build a registered :class:`~depthsel.SelectivityObjective` (``"assign"``, ``"regularize"``)."""
    return get_plugin_manager().create("objectives", name, **config)


def get_model(name: str, /, **config: Any) -> nn.Module:
    """Build a registered depth network: ``get_model(name, **options)`` (``depthsel models``)."""
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


def get_dataset(name: str | None = None, /, **config: Any) -> Any:
    """Build a registered dataset, e.g. ``get_dataset("folder", root=...)``.

    The name may also come as ``name=`` in ``config``, so a stored spec such as
    ``{"name": "folder", "root": ...}`` builds with ``get_dataset(**spec)``.
    """
    if name is None:
        name = config.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a dataset spec needs a 'name' string, got {config!r}; "
                              "e.g. {'name': NAME, 'root': PATH}")
    return get_plugin_manager().create("datasets", name, **config)


def list_plugins(kind: str) -> dict[str, PluginEntry]:
    """Return ``{name: entry}`` for one kind (``"binners"``, ``"models"``, ...)."""
    return get_plugin_manager().entries(kind)


def result_types() -> dict[str, Any]:
    """``{kind: Result subclass}`` registered by plugins (``register_results``), for
    ``load_result(path, types=result_types())``.

    Raises
    ------
    PluginError
        If a plugin registered something that is not a Result subclass of that kind.
    """
    from .errors import PluginError
    from .results import Result

    out: dict[str, Any] = {}
    for kind, entry in get_plugin_manager().entries("results").items():
        cls = entry.factory
        if not (isinstance(cls, type) and issubclass(cls, Result) and cls.kind == kind):
            raise PluginError(f"plugin {entry.source!r} registered result type {kind!r} as {cls!r}, not a "
                              f"Result subclass with kind {kind!r}")
        out[kind] = cls
    return out
