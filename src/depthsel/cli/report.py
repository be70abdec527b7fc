"""``depthsel report RUN_DIR``: one self-contained HTML page of a run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import handle_errors
from .output import FormatOption, OutputFormat, emit_json, message, warn

__all__ = ["register"]


@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run or result directory to summarise.")],
    out: Annotated[Path | None, typer.Option("--out", "-o",
                   help="Where to write the HTML; default RUN_DIR/report.html.")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title; default: the directory name.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite --out even if it is not an earlier report.")] = False,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Leave out results that fail verification (listed on stderr).")] = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Write a self-contained report.html (metrics tables, embedded figures, run config)."""
    from ..checkpoints import atomic_write_bytes
    from ..report import collect_report
    from ..report_html import check_report_target, render_report

    target = out if out is not None else run_dir / "report.html"
    # Checked before reading anything: `--out RUN/result.json` must never replace the result.
    check_report_target(target, force=force)
    data = collect_report(run_dir, title=title, exclude=[target], skip_invalid=skip_invalid)
    path = atomic_write_bytes(target, render_report(data).encode("utf-8"))
    for item in data.skipped:
        if "fails verification" in item:
            warn(f"skipped {item}")
    if fmt is OutputFormat.json:
        emit_json({"out": str(path), "tables": len(data.tables), "images": len(data.images),
                   "configs": len(data.configs), "skipped": data.skipped})
    else:
        typer.echo(str(path))
        message(f"{len(data.tables)} tables, {len(data.images)} images, {len(data.configs)} configs",
                style="dim")


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report)
