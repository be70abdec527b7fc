"""Matplotlib plumbing shared by the core and the analyses: a headless pyplot and atomic figure files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoints import atomic_write

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
