"""Submodules that are also functions: ``depthsel.layers(...)`` beside ``import depthsel.layers``.

The package attribute and the submodule share a name, so the module object
itself is made callable. The package ``__init__`` installs the call, after it
has imported both the module and the function; the module therefore never
imports the function's home (which imports it back: an import cycle).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module whose call runs the function stored by :func:`make_callable`."""

    _call_target: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_target(*args, **kwargs)


def make_callable(module: types.ModuleType, fn: Callable[..., Any]) -> None:
    """Make ``module(...)`` call ``fn(...)``; ``module`` keeps every attribute it had."""
    module.__class__ = _CallableModule
    module._call_target = fn  # type: ignore[attr-defined]
