"""First-party depthsel plugins.

They register through the ``depthsel`` entry-point group exactly like a
third-party package; the core (``depthsel``) never imports this package.

The one entry point, ``first_party = "depthsel_plugins"``, names this module, a
*bundle* (see :mod:`depthsel.plugin_sources`): :data:`DEPTHSEL_PLUGINS` below
is the explicit, in-tree list of the first-party plugins, as llm's
``DEFAULT_PLUGINS`` and tox's internal plugins are. Adding a plugin module
means adding it here, in code that the tests check against the package's
modules, not in installed metadata that only a reinstall refreshes. Each
module is still loaded and isolated on its own by the core's plugin manager.
"""

from __future__ import annotations

__all__ = ["DEPTHSEL_PLUGINS"]

#: ``{label: module}`` of every first-party plugin, in registration (and listing) order;
#: ``depthsel plugins`` shows each as ``depthsel:<label>``.
DEPTHSEL_PLUGINS: dict[str, str] = {
    "binners": "depthsel_plugins.binners",
    "objectives": "depthsel_plugins.objectives",
    "models": "depthsel_plugins.models",
    "datasets": "depthsel_plugins.datasets",
    "protocols": "depthsel_plugins.protocols",
    "analyzers": "depthsel_plugins.analyses",
    "recipes": "depthsel_plugins.recipes",
    "experiments": "depthsel_plugins.experiments",
}
