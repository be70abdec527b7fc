"""Matplotlib plumbing shared by the core and the analyses: a headless pyplot and atomic figure files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoints import atomic_write
from .errors import DepthselError

__all__ = ["panels", "pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def panels(ax: Any, nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float],
           pick: str = "") -> tuple[Any, Any]:
    """The figure and ``[nrows, ncols]`` array of Axes that a result's ``plot(ax=None)`` draws into.

    With ``ax=None`` a new figure; otherwise ``ax`` itself, which holds one
    panel only. ``pick`` says how to choose one panel of a larger figure
    (e.g. ``"pick one with metric="``), for the error.
    """
    if ax is None:
        return pyplot().subplots(nrows, ncols, figsize=figsize, squeeze=False)
    if nrows * ncols != 1:
        raise DepthselError(f"this figure has {nrows * ncols} panels and cannot be drawn into one Axes; "
                            "pass ax=None" + (f", or {pick}" if pick else ""))
    import numpy as np

    grid = np.empty((1, 1), dtype=object)
    grid[0, 0] = ax
    return ax.figure, grid


def save_figure(fig: Any, path: str | Path, *, dpi: int = 100, close: bool = True,
                bbox_inches: str | None = None) -> Path:
    """Write ``fig`` atomically (like every result file) and, by default, close it.

    The format comes from the file suffix (PNG when it has none), since the
    temporary file the figure is first written to ends in ``.tmp``.
    """
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches=bbox_inches))
    finally:
        if close:
            pyplot().close(fig)
    return out
