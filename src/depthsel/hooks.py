"""One owner for forward hooks, and the hooks that replace a layer's output.

:class:`HookHandles` is the single place where depthsel keeps hook handles: a
context manager (or explicit :meth:`~HookHandles.remove`) that removes every
handle it holds, in reverse order, even when one removal or the block itself
fails. :class:`~depthsel.Capture`, :func:`replace_outputs`, the layer table and
the CLI's probes all register through it, so no hook outlives its block.

:func:`replace_outputs` installs forward hooks whose return value replaces the
layer's output (PyTorch feeds a hook's return value to the rest of the network):
the interventions of the correction and ablation analyses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import ActivationShapeError, ShapeMismatchError
from .layers import LayerSelector

__all__ = ["HookHandles", "replace_outputs", "TensorFn"]

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class HookHandles:
    """A list of hook handles removed together (zennit's ``RemovableHandleList`` idea).

    Examples
    --------
    >>> net = nn.Linear(2, 2)
    >>> with HookHandles() as handles:
    ...     handles.append(net.register_forward_hook(lambda m, i, o: None))
    ...     len(net._forward_hooks)
    1
    >>> len(net._forward_hooks)
    0
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def append(self, handle: RemovableHandle) -> RemovableHandle:
        """Own ``handle``; returns it."""
        self._handles.append(handle)
        return handle

    def __len__(self) -> int:
        return len(self._handles)

    def remove(self) -> None:
        """Remove every handle, newest first; each is attempted even if another fails."""
        handles, self._handles = self._handles, []
        error: BaseException | None = None
        for h in reversed(handles):
            try:
                h.remove()
            except BaseException as exc:  # noqa: BLE001 - remove the rest, then re-raise
                error = error or exc
        if error is not None:
            raise error

    def __enter__(self) -> "HookHandles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _checked(name: str, act: Any) -> torch.Tensor:
    if not isinstance(act, torch.Tensor) or act.ndim != 4:
        raise ActivationShapeError(
            f"layer {name!r} outputs {getattr(act, 'shape', type(act).__name__)}, not [B, K, h, w]; "
            f"pass adapters={{{name!r}: depthsel.TokenGridAdapter(grid=(h, w), skip_tokens=...)}} "
            "(CLI: --tokens LAYER:grid=HxW:skip=N) or hook a layer with a spatial output"
        )
    return act


def replaced_output(output: Any, fn: TensorFn, name: str = "layer", adapter: Any = None) -> Any:
    """``output`` with its feature map replaced by ``fn(feature map)``.

    A tensor, or the first element of a tuple/list, is replaced; with an
    adapter (e.g. ViT tokens) the output is adapted to ``[B, K, h, w]``,
    passed to ``fn`` and written back with the adapter's ``inverse``.
    """
    if adapter is not None:
        inverse = getattr(adapter, "inverse", None)
        if not callable(inverse):
            raise ActivationShapeError(
                f"the adapter of layer {name!r} has no inverse(grid, original), so the layer's "
                "output cannot be replaced; use depthsel.TokenGridAdapter"
            )
        return inverse(fn(_checked(name, adapter(output))), output)
    if isinstance(output, torch.Tensor):
        return fn(_checked(name, output))
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(_checked(name, output[0])), *output[1:])
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        return [fn(_checked(name, output[0])), *output[1:]]
    raise ShapeMismatchError(
        f"cannot intervene on a layer output of type {type(output).__name__}; hook a layer that "
        "returns a [B, K, h, w] tensor"
    )


@contextmanager
def replace_outputs(model: nn.Module, fns: Mapping[str, TensorFn],
                    adapters: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Replace the output of each named layer by ``fn(output)`` inside the block."""
    modules = LayerSelector(list(fns)).resolve(model) if fns else {}
    adapters = dict(adapters or {})
    with HookHandles() as handles:
        for name, module in modules.items():
            fn, adapter = fns[name], adapters.get(name)
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, fn=fn, name=name, adapter=adapter: replaced_output(out, fn, name, adapter)))
        yield
