"""First-party analyzers: dissection, correction, ablation, adversarial tracing, masks,
linear depth probes.

Each submodule defines a plain ``register_analyzers(register)`` function; this
package's hook calls them in a fixed order.
"""

from __future__ import annotations

import importlib
from typing import Any

from depthsel import hookimpl

from .._submodules import register_from

_SUBMODULES = ("dissection", "correction", "ablation", "adversarial", "masks", "probe")


@hookimpl
def register_analyzers(register: Any) -> None:
    """Register every first-party analyzer."""
    register_from(__name__, _SUBMODULES, "register_analyzers", register)


#: ``kind: (submodule, class)`` of every first-party result type.
_RESULTS = {
    "dissection": ("dissection_result", "DissectionResult"),
    "correction": ("correction", "CorrectionResult"),
    "ablation": ("ablation", "AblationResult"),
    "adversarial": ("adversarial", "AdversarialResult"),
    "masks": ("masks", "MaskResult"),
    "probe": ("probe_result", "ProbeResult"),
}


@hookimpl
def register_results(register: Any) -> None:
    """Register the result class of every first-party analyzer, by its kind."""
    for kind, (module, name) in _RESULTS.items():
        register(kind, getattr(importlib.import_module(f"{__name__}.{module}"), name))
