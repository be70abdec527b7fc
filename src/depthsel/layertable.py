"""Which modules a model has, and what they output: ``depthsel.layers(model, input_size)``.

A dry run: one zero image goes through the model under ``no_grad`` while a
forward hook on every module records its output shape. Unit counts are the
channel dimension of ``[B, K, h, w]`` outputs (or ``C`` of ``[B, N, C]``
tokens), i.e. what ``layers=`` would dissect. The CLI's ``depthsel layers``
prints the same table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import DepthselError, LayerNotFoundError
from .hooks import HookHandles
from .layers import unwrap_model

__all__ = ["LayerTable", "layer_table", "layers"]


class LayerTable(list):  # type: ignore[type-arg]
    """Rows ``{name, type, shape, units, calls, suggested}``; prints as a text table.

    ``table.names()`` lists the layer names, ``table.spatial()`` only the
    modules with a ``[B, K, h, w]`` output.
    """

    def names(self) -> list[str]:
        """Module names, in order."""
        return [r["name"] for r in self]

    def spatial(self) -> "LayerTable":
        """Rows of modules with a ``[B, K, h, w]`` output (what can be dissected as is)."""
        return LayerTable(r for r in self if r["shape"] is not None and len(r["shape"]) == 4)

    def __str__(self) -> str:
        cols = ("name", "type", "shape", "units")
        cells = [[r["name"], r["type"], "x".join(map(str, r["shape"])) if r["shape"] else "-",
                  "" if r["units"] is None else str(r["units"])] for r in self]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython/Jupyter
        p.text(str(self))


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


def _select(named: list[tuple[str, nn.Module]], patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    if not patterns:
        return named
    out = [(n, m) for n, m in named if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not out:
        shown = ", ".join(repr(p) for p in patterns)
        raise LayerNotFoundError(f"pattern {shown} matched no module; try a broader glob like '*{patterns[0]}*'")
    return out


def layer_table(
    model: nn.Module,
    image: torch.Tensor,
    inputs: Mapping[str, torch.Tensor] | None = None,
    patterns: Sequence[str] = (),
    suggested: Sequence[str] = (),
) -> LayerTable:
    """Run ``model(image, **inputs)`` once and return a row per (matching) module.

    Modules that did not run in the pass are listed with shape ``None``, since
    hooking them would capture nothing.
    """
    root = unwrap_model(model)
    named = _select([(n, m) for n, m in root.named_modules() if n], list(patterns))
    shapes: dict[str, list[int] | None] = {}
    calls: dict[str, int] = {}
    handles = HookHandles()

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
            root(image, **dict(inputs or {}))
    except DepthselError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own forward failed on this input: user input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DepthselError(
            f"the dry-run forward pass on a zero input of size {tuple(image.shape[-2:])} failed "
            f"({type(exc).__name__}: {first}); try another input size"
        ) from exc
    finally:
        handles.remove()
        root.train(was_training)
    return LayerTable({"name": n, "type": type(m).__name__, "shape": shapes.get(n),
                       "units": _units(shapes.get(n)), "calls": calls.get(n, 0),
                       "suggested": n in suggested} for n, m in named)


def layers(
    model: nn.Module,
    input_size: int | tuple[int, int] = (224, 224),
    *,
    pattern: str | Sequence[str] = (),
    extra_inputs: Sequence[str] = (),
    all_modules: bool = False,
) -> LayerTable:
    """List a model's layers with output shapes and unit counts.

    Parameters
    ----------
    model
        Any ``nn.Module`` taking a ``[B, 3, H, W]`` image.
    input_size
        ``(H, W)`` of the zero image of the dry run (or one side for a square).
    pattern
        Glob(s) on module names, e.g. ``"decode*"``.
    extra_inputs
        Names of extra forward inputs (zero ``[B, 1, H, W]`` maps), e.g. sparse depth.
    all_modules
        Also list modules that did not run or have no spatial output.

    Examples
    --------
    >>> print(depthsel.layers(model, (64, 64), pattern="up*"))    # doctest: +SKIP
    name     type      shape         units
    up1      Up        1x32x16x16    32
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    image = torch.zeros(1, 3, int(h), int(w))
    try:
        first = next(model.parameters())
        image = image.to(first.device)
    except StopIteration:
        pass
    extras = {name: torch.zeros(1, 1, int(h), int(w), device=image.device) for name in extra_inputs}
    rows = layer_table(model, image, extras, patterns)
    return rows if all_modules else LayerTable(r for r in rows if r["units"] is not None)
