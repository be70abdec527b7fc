"""Exceptions raised by depthsel.

Every error a user can cause by passing bad input is a :class:`DepthselError`
subclass whose message names the problem *and* the fix. The CLI prints such
errors as one red line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DepthselError",
    "InvalidDepthError",
    "ShapeMismatchError",
    "ActivationShapeError",
    "InputSizeError",
    "LayerNotFoundError",
    "BinCountError",
    "PluginError",
    "UnknownPluginError",
    "PluginConflictError",
    "UntrustedFileError",
    "CheckpointError",
    "DatasetError",
    "ResultFormatError",
    "RunDirError",
    "CaptureError",
    "ConfigError",
    "suggest",
]


class DepthselError(Exception):
    """Base class of every error depthsel raises for bad input or configuration."""


class InvalidDepthError(DepthselError):
    """Depth input that cannot be binned (wrong shape, dtype, or no valid pixel)."""


class ShapeMismatchError(DepthselError):
    """Two tensors that must agree in batch size or spatial size do not."""


class InputSizeError(ShapeMismatchError, ValueError):
    """The input's spatial size does not fit the model (also a ``ValueError``)."""


class ActivationShapeError(DepthselError):
    """A captured activation is not ``[B, K, h, w]`` and no adapter reshapes it."""


class LayerNotFoundError(DepthselError):
    """A layer specification matched no module of the model."""


class BinCountError(DepthselError):
    """The number of bins does not fit the layer under the chosen assignment rule."""


class PluginError(DepthselError):
    """A plugin failed to load or registered something invalid."""


class UnknownPluginError(PluginError):
    """A name was asked for that no plugin registered."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name for the same kind."""


class UntrustedFileError(DepthselError):
    """A file would need arbitrary code execution (pickle) to load."""


class CheckpointError(DepthselError):
    """A checkpoint is unreadable or does not fit the model."""


class DatasetError(DepthselError):
    """A dataset file or index is missing, malformed, or unsafe."""


class ResultFormatError(DepthselError):
    """A saved result or run directory is malformed or from an unknown version."""


class RunDirError(DepthselError):
    """A run or result directory is in use by another process, or would be overwritten."""


class CaptureError(DepthselError):
    """Hooks were used outside their context, or captured nothing."""


class ConfigError(DepthselError, ValueError):
    """An option has a value outside its allowed set (also a ``ValueError``)."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return a ``"did you mean ...?"`` phrase, or a list of what exists.

    Parameters
    ----------
    name
        What the user typed.
    candidates
        The names that exist.
    n
        How many close matches to offer.
    """
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if close:
        return "did you mean " + ", ".join(repr(c) for c in close) + "?"
    if not pool:
        return "nothing is registered"
    shown = ", ".join(pool[:12]) + (", ..." if len(pool) > 12 else "")
    return f"available: {shown}"
