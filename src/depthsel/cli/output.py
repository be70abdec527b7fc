"""Output helpers shared by every command: JSON on stdout, tables, messages.

Data goes to stdout (a table, or JSON with ``--format json``), so it can be
piped; messages, warnings and progress go to stderr. Rich consoles are created
on first use and follow ``sys.stdout``/``sys.stderr`` dynamically, so they also
work under ``typer.testing.CliRunner``, which swaps the streams per call.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "OutputFormat",
    "FormatOption",
    "stdout_console",
    "stderr_console",
    "emit_json",
    "emit_table",
    "emit",
    "message",
    "warn",
    "to_jsonable",
]

_STDOUT: Any = None


class OutputFormat(str, enum.Enum):
    """What a listing or result command prints on stdout."""

    table = "table"
    json = "json"


FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", "-f", help="Output format: a human table, or JSON on stdout.",
                 case_sensitive=False),
]


def stdout_console() -> Any:
    """The Rich console for data on stdout (created on first use)."""
    global _STDOUT
    if _STDOUT is None:
        from rich.console import Console

        _STDOUT = Console(highlight=False, soft_wrap=False)
    return _STDOUT


def stderr_console() -> Any:
    """The Rich console for messages on stderr (shared with progress bars)."""
    from ..progress import get_console

    return get_console()


def to_jsonable(obj: Any) -> Any:
    """Convert tensors, paths, dataclasses with ``to_dict`` and NaN into plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        # JSON has no NaN/inf; null keeps the output parseable by strict readers.
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    return str(obj)


def emit_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout."""
    typer.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=False))


def emit_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    empty: str = "nothing to show",
) -> None:
    """Print ``rows`` as a Rich table on stdout (``columns`` picks and orders keys)."""
    from rich.table import Table

    console = stdout_console()
    if not rows:
        console.print(empty)
        return
    table = Table(title=title, show_lines=False, header_style="bold")
    columns = _fitting_columns(rows, list(columns), console.width)
    cells = [[_cell(row.get(col, "")) for col in columns] for row in rows]
    headers = [col.replace("_", " ") for col in columns]
    widths = _column_widths(headers, cells, [i == 0 or c in ("plugin", "name") for i, c in enumerate(columns)],
                            console.width)
    for i, header in enumerate(headers):
        # Names are what users copy into other commands: never fold them. Other
        # columns wrap between words only: each is at least as wide as its longest
        # word, so neither "descriptio|n" nor "decode_conv|1" can happen.
        keep = i == 0 or columns[i] in ("plugin", "name")
        table.add_column(header, overflow="fold", no_wrap=keep, width=widths[i])
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(table)


def _column_widths(headers: list[str], cells: list[list[str]], keep: list[bool], width: int) -> list[int | None]:
    """Fixed column widths when the natural table is wider than ``width``, else ``None`` (Rich decides).

    Each column gets its longest word (its whole text when it must not wrap), then the
    room left is shared in proportion to how much wider each column would like to be.
    """
    natural, minimal = [], []
    for i, header in enumerate(headers):
        texts = [header] + [r[i] for r in cells]
        full = max(len(line) for t in texts for line in (t.splitlines() or [""]))
        word = full if keep[i] else max([len(w) for t in texts for w in t.split()] or [1])
        natural.append(full)
        minimal.append(min(word, 40) if not keep[i] else full)
    pad = 3 * len(headers) + 1
    if sum(natural) + pad <= width:
        return [None] * len(headers)
    room = max(0, width - pad - sum(minimal))
    want = [n - m for n, m in zip(natural, minimal)]
    total = sum(want) or 1
    out = [m + (room * w) // total for m, w in zip(minimal, want)]
    return list(out)


#: Columns left out of a table that does not fit the terminal (``--format json`` keeps them).
OPTIONAL_COLUMNS = ("plugin", "source")


def _fitting_columns(rows: Sequence[Mapping[str, Any]], columns: list[str], width: int) -> list[str]:
    """Drop optional columns, last first, while the table cannot fit ``width`` without breaking words."""

    def needed(cols: list[str]) -> int:
        total = 1
        for i, col in enumerate(cols):
            texts = [_cell(r.get(col, "")) for r in rows]
            if i == 0 or col in ("plugin", "name"):
                w = max([len(col)] + [len(t) for t in texts])
            else:
                w = max([len(x) for x in col.replace("_", " ").split()] + [len(x) for t in texts for x in t.split()])
            total += w + 3
        return total

    cols = list(columns)
    for col in reversed(OPTIONAL_COLUMNS):
        if needed(cols) <= width:
            break
        if col in cols[1:]:
            cols.remove(col)
    return cols


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def emit(
    fmt: OutputFormat,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    title: str | None = None,
    empty: str = "nothing to show",
    json_data: Any = None,
) -> None:
    """Print ``rows`` as a table or JSON (``json_data`` overrides what JSON shows)."""
    if fmt is OutputFormat.json:
        emit_json(list(rows) if json_data is None else json_data)
    else:
        emit_table(rows, columns, title=title, empty=empty)


def message(text: str, style: str | None = None) -> None:
    """Print a human message on stderr."""
    stderr_console().print(text, style=style, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print a one-line warning on stderr."""
    from rich.text import Text

    line = Text("warning: ", style="bold yellow")
    line.append(text, style="yellow")
    stderr_console().print(line, soft_wrap=True)


def key_value_rows(data: Mapping[str, Any], prefix: str = "") -> Iterable[dict[str, Any]]:
    """Flatten nested mappings into ``{"key": "a.b", "value": v}`` rows."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from key_value_rows(value, prefix=f"{name}.")
        else:
            yield {"key": name, "value": value}
