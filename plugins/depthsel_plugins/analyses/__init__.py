"""First-party analyzers: dissection, correction, ablation, adversarial tracing, masks,
linear depth probes.

Each submodule defines a plain ``register_analyzers(register)`` function; this
package's hook calls them in a fixed order.
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl

from .._submodules import register_from

_SUBMODULES = ("dissection", "correction", "ablation", "adversarial", "masks", "probe")


@hookimpl
def register_analyzers(register: Any) -> None:
    """Register every first-party analyzer."""
    register_from(__name__, _SUBMODULES, "register_analyzers", register)
