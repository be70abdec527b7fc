"""``depthsel layers MODEL``: which modules a model has, and what they output.

A dry run: the model is built (a tiny ``--width`` is fine, since only names
and shapes matter), a zero image of the model's default size goes through it
once under ``no_grad``, and a forward hook on every module records its output
shape. Unit counts are the channel dimension of ``[B, K, h, w]`` outputs (or
the last one of ``[B, N, C]`` tokens), i.e. what ``--layers`` would dissect.
"""

from __future__ import annotations

import fnmatch
from typing import Annotated, Any

import torch
import typer
from torch import nn

from ..errors import DepthselError
from ..layers import unwrap_model
from .common import build_model, parse_model_config, parse_size
from .errors import CliError, handle_errors
from .output import FormatOption, OutputFormat, emit, message

__all__ = ["register", "layer_table"]


def _shape_of(output: Any) -> list[int] | None:
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        # Blocks returning (features, extras) expose their feature map first (as Capture does).
        return list(output[0].shape)
    return None


def _units(shape: list[int] | None) -> int | None:
    if shape is None:
        return None
    if len(shape) == 4:
        return shape[1]
    if len(shape) == 3:
        return shape[2]
    return None


def layer_table(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    image: torch.Tensor,
    pattern: str | None = None,
    suggested: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Run one forward pass and return ``{name, type, shape, units, calls, suggested}`` rows.

    Modules that did not run in the pass are listed with an empty shape, since
    hooking them would capture nothing.
    """
    root = unwrap_model(model)
    named = [(n, m) for n, m in root.named_modules() if n]
    if pattern:
        named = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
        if not named:
            raise CliError(f"--pattern {pattern!r} matched no module; try a broader glob like '*{pattern}*'")
    shapes: dict[str, list[int] | None] = {}
    calls: dict[str, int] = {}
    handles = []

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            shapes[name] = _shape_of(out)

        return hook

    was_training = root.training
    try:
        for n, m in named:
            handles.append(m.register_forward_hook(make_hook(n)))
        root.eval()
        with torch.no_grad():
            root(image, **inputs)
    except DepthselError:
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CliError(
            f"the dry-run forward pass on a zero input of size {tuple(image.shape[-2:])} failed "
            f"({type(exc).__name__}: {first}); try another --input-size"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        root.train(was_training)
    rows = []
    for n, m in named:
        shape = shapes.get(n)
        rows.append({
            "name": n,
            "type": type(m).__name__,
            "shape": shape,
            "units": _units(shape),
            "calls": calls.get(n, 0),
            "suggested": n in suggested,
        })
    return rows


@handle_errors
def layers(
    model: Annotated[str, typer.Argument(help="Registered model name (see `depthsel models`).")],
    pattern: Annotated[str | None, typer.Option("--pattern", "-p",
                       help="Only modules whose name matches this glob, e.g. 'decode*'.")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size",
                          help="Input HxW of the dry run; default: the model's own size.")] = None,
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
    rows = layer_table(built.model, extras, image, pattern=pattern, suggested=info.suggested_layers)
    if not all_modules:
        rows = [r for r in rows if r["units"] is not None or r["suggested"]]
    table_rows = [{**r, "shape": "x".join(str(s) for s in r["shape"]) if r["shape"] else "-",
                   "suggested": "*" if r["suggested"] else ""} for r in rows]
    emit(fmt, table_rows, ["name", "type", "shape", "units", "suggested"],
         title=f"{model} at {size[0]}x{size[1]}", empty="no module matched", json_data=rows)
    if fmt is OutputFormat.table:
        message("* = suggested by the model plugin; pass names or globs to --layers", style="dim")


def register(app: typer.Typer) -> None:
    """Add ``layers`` to ``app``."""
    app.command("layers")(layers)
