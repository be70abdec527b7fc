"""Where plugins come from: the ``depthsel`` entry points, and the bundles they may name.

Every plugin, first-party or not, is found through the ``depthsel``
entry-point group; the core never imports or names a plugin package by itself.

An entry point may name a *bundle* instead of a single plugin: a module whose
:data:`BUNDLE_ATTR` attribute maps plugin labels to module names, e.g.::

    DEPTHSEL_PLUGINS = {"binners": "my_plugins.binners", "models": "my_plugins.models"}

Why bundles: installed entry-point metadata only changes when a package is
reinstalled, so a plugin module added to a checkout is silently missing from
an older install, and the package's list of plugins would live in
``pyproject.toml`` rather than next to the code (compare llm's
``DEFAULT_PLUGINS`` and tox's internal plugins, both explicit lists in the
tree). With a bundle, the metadata holds one stable entry point and the list
of default plugins is code in the plugin package itself, checked by its tests.
Each module of a bundle is still imported, registered and, when broken,
reported and skipped on its own, under the label ``dist:label``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as md
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import PluginError

__all__ = ["ENTRY_POINT_GROUP", "BUNDLE_ATTR", "SLOW_ENV", "NAME_RE", "PluginSource", "entry_point_sources",
           "bundle_sources", "warn_if_slow"]

ENTRY_POINT_GROUP = "depthsel"
BUNDLE_ATTR = "DEPTHSEL_PLUGINS"
SLOW_ENV = "DEPTHSEL_PLUGIN_SLOW_S"
#: Plugin labels and registry names: lower case, digits, "_" or "-".
NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


@dataclass(frozen=True)
class PluginSource:
    """One plugin to load: its label in ``depthsel plugins``, version, origin and loader.

    ``bundle_prefix`` is set for entry points (which may be bundles) and ``None``
    for a bundle's members, which may not nest further bundles.
    """

    label: str
    version: str
    source: str
    load: Callable[[], Any]
    bundle_prefix: str | None = None


def entry_point_sources() -> list[PluginSource]:
    """The ``depthsel`` entry points of every installed distribution, not yet imported."""
    out = []
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = getattr(dist, "name", "") or ""
        prefix = f"{dist_name}:" if dist_name else ""
        out.append(PluginSource(prefix + ep.name, getattr(dist, "version", "") or "", ep.value, ep.load,
                                bundle_prefix=prefix))
    return out


def bundle_sources(plugin: Any, parent: PluginSource) -> list[PluginSource] | None:
    """The member plugins of ``plugin`` when it is a bundle, else ``None``.

    Raises
    ------
    PluginError
        If the bundle's declaration is not a ``{label: module name}`` dict.
    """
    members = getattr(plugin, BUNDLE_ATTR, None) if parent.bundle_prefix is not None else None
    if members is None:
        return None
    if not isinstance(members, dict) or not all(
            isinstance(k, str) and NAME_RE.match(k) and isinstance(v, str) for k, v in members.items()):
        raise PluginError(f"plugin {parent.label!r}: {BUNDLE_ATTR} must map plugin labels "
                          "(lower case, digits, '_' or '-') to module names")
    return [PluginSource(f"{parent.bundle_prefix}{label}", parent.version, module,
                         functools.partial(importlib.import_module, module))
            for label, module in members.items()]


def _slow_import_s() -> float:
    value = os.environ.get(SLOW_ENV, "").strip()
    return float(value) if re.fullmatch(r"\d+(\.\d*)?", value) else 10.0


def warn_if_slow(source: PluginSource, elapsed: float) -> None:
    """Warn when importing one plugin took longer than ``DEPTHSEL_PLUGIN_SLOW_S`` (10 s)."""
    if elapsed > _slow_import_s():
        warnings.warn(f"depthsel plugin {source.label!r} took {elapsed:.1f} s to import (over "
                      f"{_slow_import_s():g} s; {SLOW_ENV} sets the threshold)", RuntimeWarning, stacklevel=4)
