"""First-party analyzers: dissection, correction, ablation, adversarial tracing, masks.

Each submodule defines a plain ``register_analyzers(register)`` function; this
package's hook calls them in a fixed order.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from depthsel import hookimpl

_SUBMODULES = ("dissection", "correction", "ablation", "adversarial", "masks")


@hookimpl
def register_analyzers(register: Any) -> None:
    """Register every first-party analyzer."""
    for name in _SUBMODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        importlib.import_module(full).register_analyzers(register)
