"""Integrations with training frameworks.

Each integration imports its framework lazily, so ``import depthsel`` and
``import depthsel.integrations.<name>`` work without it; using one without
the framework installed raises a :class:`~depthsel.DepthselError` naming the
extra to install (``pip install depthsel[lightning]``).
"""

from __future__ import annotations

__all__ = ["lightning"]
