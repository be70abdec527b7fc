"""``depthsel layers MODEL``: which modules a model has, and what they output.

A dry run (see :mod:`depthsel.layertable`): the model is built (a tiny
``--width`` is fine, since only names and shapes matter), a zero image of the
model's default size goes through it once under ``no_grad``, and every
module's output shape is recorded. MODEL is a registered name or your own
``package.module:Factory`` / ``path/to/file.py:Factory``.
"""

from __future__ import annotations

from typing import Annotated

import torch
import typer

from ..layertable import layer_table
from .common import build_model, parse_model_config, parse_size
from .errors import CliError, handle_errors
from .output import FormatOption, OutputFormat, emit, message

__all__ = ["register"]


@handle_errors
def layers(
    model: Annotated[str, typer.Argument(help="Registered model name (`depthsel models`), or "
                     "package.module:Factory or path/to/file.py:Factory.")],
    pattern: Annotated[list[str] | None, typer.Option("--pattern", "-p", metavar="GLOB",
                       help="Only modules whose name matches this glob, e.g. 'decode*'; repeatable "
                       "(a module matching any pattern is listed).")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", metavar="HxW",
                          help="Input size of the dry run; default: the model's own size.")] = None,
    width: Annotated[float | None, typer.Option("--width",
                     help="Width multiplier of the model (a tiny one keeps the dry run fast).")] = None,
    model_config: Annotated[str | None, typer.Option("--model-config",
                            help="Model factory options as a JSON object or JSON file.")] = None,
    all_modules: Annotated[bool, typer.Option("--all",
                           help="Also list modules that did not run or have no spatial output.")] = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Dry-run MODEL and list its modules with output shapes and unit counts."""
    built = build_model(model, config=parse_model_config(model_config, width))
    info = built.info
    size = parse_size(input_size) or tuple(info.input_size)
    mult = max(1, int(info.input_multiple))
    if size[0] % mult or size[1] % mult:
        raise CliError(f"{model!r} needs input sides that are multiples of {mult}; got {size[0]}x{size[1]}")
    image = torch.zeros(1, 3, size[0], size[1])
    extras = {name: torch.zeros(1, 1, size[0], size[1]) for name in info.extra_inputs}
    rows = layer_table(built.model, image, extras, patterns=pattern or (), suggested=info.suggested_layers)
    if not all_modules:
        rows = [r for r in rows if r["units"] is not None or r["suggested"]]
    table_rows = [{**r, "shape": "x".join(str(s) for s in r["shape"]) if r["shape"] else "-",
                   "suggested": "*" if r["suggested"] else ""} for r in rows]
    emit(fmt, table_rows, ["name", "type", "shape", "units", "suggested"],
         title=f"{model} at {size[0]}x{size[1]}", empty="no module matched", json_data=list(rows))
    if fmt is OutputFormat.table:
        message("* = suggested by the model plugin; pass names or globs to --layers", style="dim")


def register(app: typer.Typer) -> None:
    """Add ``layers`` to ``app``."""
    app.command("layers")(layers)
