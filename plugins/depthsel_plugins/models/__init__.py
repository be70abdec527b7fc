"""First-party model plugins: FastDepth, Hu et al. MFF, BTS and CSPN, in pure torch.

Each submodule defines a plain ``register_models(register)`` function; this
package's hook calls them in a fixed order.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from depthsel import hookimpl

_SUBMODULES = ("fastdepth", "hu_mff", "bts", "cspn")


@hookimpl
def register_models(register: Any) -> None:
    """Register every first-party model."""
    for name in _SUBMODULES:
        full = f"{__name__}.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        importlib.import_module(full).register_models(register)
