"""Rich progress bars and a lazily created console.

The console is created on first use, so importing depthsel never touches the
terminal. Progress is disabled automatically when stderr is not a terminal
unless forced, and always with ``DEPTHSEL_NO_PROGRESS=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["get_console", "track", "progress_enabled"]

T = TypeVar("T")
_CONSOLE: Any = None


def get_console() -> Any:
    """The shared ``rich.console.Console`` writing to stderr, created on first use."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True)
    return _CONSOLE


def progress_enabled(requested: bool | None = None) -> bool:
    """Whether to draw progress bars."""
    if os.environ.get("DEPTHSEL_NO_PROGRESS", "").strip() in {"1", "true", "yes"}:
        return False
    if requested is not None:
        return requested
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool | None = None, **fields: Any) -> Iterator[T]:
    """Iterate with a rich progress bar (a plain iteration when disabled)."""
    if not progress_enabled(enabled):
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=get_console(), transient=False) as prog:
        task = prog.add_task(description, total=total, **fields)
        for item in items:
            yield item
            prog.advance(task)
