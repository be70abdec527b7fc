"""First-party model plugins: FastDepth, Hu et al. MFF, BTS, CSPN and a DPT-style ViT, in pure torch.

Each submodule defines a plain ``register_models(register)`` function; this
package's hook calls them in a fixed order.
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl

from .._submodules import register_from

_SUBMODULES = ("fastdepth", "hu_mff", "bts", "cspn", "dpt_vit")


@hookimpl
def register_models(register: Any) -> None:
    """Register every first-party model."""
    register_from(__name__, _SUBMODULES, "register_models", register)
