"""Calling the plain ``register_*`` functions of a first-party package's submodules."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import Any


def register_from(package: str, submodules: Iterable[str], hook: str, register: Any) -> None:
    """Call ``<package>.<name>.<hook>(register)`` for each submodule that exists, in order.

    A missing submodule is skipped (optional parts); one that exists but fails
    to import raises, so the plugin manager reports the package as failed.
    """
    for name in submodules:
        full = f"{package}.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        getattr(importlib.import_module(full), hook)(register)
