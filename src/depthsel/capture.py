"""Capturing layer outputs with hooks that can never leak.

:class:`Capture` is a context manager that owns every hook handle it creates
and removes all of them in ``finally``, whatever happens inside the block.
Outputs are kept with their graph (for training) or detached (for dissection),
adapted to ``[B, K, h, w]`` where a layer emits tokens, and checked for a
module that fires twice in one forward pass (a reused module, whose captured
output would then be ambiguous).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import ActivationShapeError, CaptureError
from .hooks import HookHandles
from .layers import LayerSelector, LayerSpec, unwrap_model

__all__ = ["Capture", "RepeatedHookWarning", "TokenGridAdapter", "Adapter", "count_hooks",
           "InplaceModificationError", "ends_nonnegative"]

Adapter = Callable[[Any], torch.Tensor]


class RepeatedHookWarning(UserWarning):
    """A hooked module ran more than once in one forward pass."""


class InplaceModificationError(CaptureError):
    """A captured activation was changed in place after its module returned it."""


def _version(t: torch.Tensor) -> int | None:
    # Inference-mode tensors have no version counter; they cannot be checked.
    try:
        return int(t._version)
    except (RuntimeError, AttributeError):
        return None


class TokenGridAdapter:
    """Reshape ``[B, N, C]`` tokens into a ``[B, C, h, w]`` grid (ViT/DPT layers).

    Parameters
    ----------
    grid
        ``(h, w)`` of the patch grid, or ``None`` for a square grid inferred from ``N``.
    skip_tokens
        Leading tokens that are not patches (1 for a class token).
    """

    def __init__(self, grid: tuple[int, int] | None = None, skip_tokens: int = 0) -> None:
        self.grid = grid
        self.skip_tokens = skip_tokens

    def check_grid(self, image_size: tuple[int, int]) -> None:
        """Raise if the grid's aspect ratio contradicts the input image's (e.g. a transposed grid)."""
        if self.grid is None:
            return
        h, w = self.grid
        ih, iw = image_size
        if h <= 0 or w <= 0 or ih <= 0 or iw <= 0:
            return
        # Square patches: h / w must follow H / W; a transposed grid flips it.
        ratio = (h / w) / (ih / iw)
        if not 0.8 <= ratio <= 1.25:
            raise ActivationShapeError(
                f"TokenGridAdapter grid {h}x{w} (rows x columns) does not match the {ih}x{iw} input "
                f"image; for square patches use grid=({w}, {h})" if h != w else
                f"TokenGridAdapter grid {h}x{w} does not match the {ih}x{iw} input image; "
                "pass grid=(rows, columns) of the patch grid"
            )

    def inverse(self, grid: torch.Tensor, original: Any) -> Any:
        """Write a ``[B, C, h, w]`` grid back into the token layout of ``original``.

        Used by interventions (correction, ablation) that replace a layer's output.
        """
        tokens = original[0] if isinstance(original, (tuple, list)) else original
        b, c = grid.shape[:2]
        patches = grid.reshape(b, c, -1).transpose(1, 2)
        out = torch.cat([tokens[:, : self.skip_tokens], patches.to(tokens.dtype)], dim=1)
        if isinstance(original, tuple):
            return (out, *original[1:])
        if isinstance(original, list):
            return [out, *original[1:]]
        return out

    def __call__(self, output: Any) -> torch.Tensor:
        tokens = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
            raise ActivationShapeError(
                f"TokenGridAdapter expects [B, N, C] tokens, got {getattr(tokens, 'shape', type(tokens))}"
            )
        tokens = tokens[:, self.skip_tokens:]
        b, n, c = tokens.shape
        h, w = self.grid if self.grid is not None else (math.isqrt(n), math.isqrt(n))
        if h * w != n:
            raise ActivationShapeError(
                f"{n} patch tokens do not form a {h}x{w} grid; pass grid=(h, w) and skip_tokens"
            )
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def __repr__(self) -> str:
        return f"TokenGridAdapter(grid={self.grid}, skip_tokens={self.skip_tokens})"


def _default_adapter(output: Any) -> Any:
    # Many blocks return (features, extras); the feature map comes first.
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return output


# Modules whose output is never negative (NaN stays NaN), with the forward each had when
# depthsel was imported: a class-level patch of either (or of F.relu/F.hardtanh, which they
# call) voids the proof. Exact types only: a subclass may override forward.
_NONNEGATIVE_FORWARD = {nn.ReLU: nn.ReLU.forward, nn.ReLU6: nn.ReLU6.forward}
_SEQUENTIAL_FORWARD = nn.Sequential.forward
_FUNCTIONAL = (torch.nn.functional.relu, torch.nn.functional.hardtanh)


def _unhooked(module: nn.Module, own: int = 0) -> bool:
    """No forward hook but ``own`` of ours, and nothing set on the instance, can change the output."""
    return (len(module._forward_hooks) <= own and "forward" not in module.__dict__
            and "_call_impl" not in module.__dict__ and getattr(module, "_compiled_call_impl", None) is None)


def _no_override_in_effect() -> bool:
    """No global hook, no torch function/dispatch mode, no patched functional: each may change any output."""
    mod = torch.nn.modules.module
    # Where torch keeps these elsewhere (private names), the proof is given up rather than assumed.
    if getattr(mod, "_global_forward_hooks", True):
        return False
    for stack in ("_len_torch_function_stack", "_len_torch_dispatch_stack"):
        length = getattr(torch._C, stack, None)
        if length is None or length():
            return False
    return (torch.nn.functional.relu, torch.nn.functional.hardtanh) == _FUNCTIONAL


def ends_nonnegative(module: nn.Module, own_hooks: int = 0) -> bool:
    """Whether ``module``'s output is provably never negative (it may hold NaN).

    True for an exact ``nn.ReLU``, or ``nn.ReLU6`` whose lower bound is not negative, or
    an exact ``nn.Sequential`` whose last module is one (recursively), when nothing can
    replace the output on the way: no forward hook anywhere on that chain (``own_hooks``
    of the outer module's hooks are the caller's own, which return nothing), no
    instance-level ``forward``/``_call_impl``, no compiled module, no patched class
    ``forward`` or ``F.relu``, no global hook and no torch function or dispatch mode.
    The dissection then knows ``|A| = A`` without reading the activations a second
    time to look for a negative value.
    """
    if not _no_override_in_effect():
        return False
    own = own_hooks
    while type(module) is nn.Sequential and type(module).forward is _SEQUENTIAL_FORWARD and len(module) \
            and _unhooked(module, own):
        module, own = module[-1], 0
    kind = type(module)
    return (kind in _NONNEGATIVE_FORWARD and kind.forward is _NONNEGATIVE_FORWARD[kind]
            and float(getattr(module, "min_val", 0.0)) >= 0.0 and _unhooked(module, own))


def count_hooks(model: nn.Module) -> int:
    """Total forward/backward hooks registered on ``model`` and its submodules."""
    total = 0
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks", "_forward_hooks_with_kwargs"):
            hooks = getattr(m, attr, None)
            if isinstance(hooks, Mapping) and attr != "_forward_hooks_with_kwargs":
                total += len(hooks)
    return total


class Capture:
    """Context manager that records the outputs of selected layers.

    Parameters
    ----------
    model
        Any ``nn.Module`` (DDP / ``torch.compile`` wrappers are looked through).
    layers
        A layer specification (see :class:`~depthsel.LayerSelector`).
    detach
        Keep detached copies (dissection) or the live graph (training).
    adapters
        ``{layer: callable}`` mapping a raw module output to ``[B, K, h, w]``.
    on_output
        Optional ``callback(name, tensor)`` called as each output is captured,
        for streaming consumers that do not want outputs kept.
    keep
        Keep outputs in :attr:`outputs` (set ``False`` with ``on_output``).

    Examples
    --------
    >>> with Capture(model, ["decode_conv5"]) as cap:     # doctest: +SKIP
    ...     model(x)
    ...     fmap = cap.outputs["decode_conv5"]
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Mapping[str, nn.Module],
        *,
        detach: bool = True,
        adapters: Mapping[str, Adapter] | None = None,
        on_output: Callable[[str, torch.Tensor], None] | None = None,
        keep: bool = True,
    ) -> None:
        self.model = model
        self.modules = dict(layers) if isinstance(layers, Mapping) else LayerSelector(layers).resolve(model)
        self.detach = detach
        self.adapters = dict(adapters or {})
        unknown = set(self.adapters) - set(self.modules)
        if unknown:
            raise CaptureError(f"adapters given for layers that are not hooked: {sorted(unknown)}")
        self.on_output = on_output
        self.keep = keep
        self.outputs: dict[str, torch.Tensor] = {}
        #: Layers of the last forward pass whose output is provably never negative
        #: (:func:`ends_nonnegative`): their ``|A|`` sums are the signed ones.
        self.nonnegative: set[str] = set()
        self._own_hooks: dict[str, int] = {}
        self._handles = HookHandles()
        self._fired: dict[str, int] = {}
        self._input_hw: tuple[int, int] | None = None
        self._versions: dict[str, tuple[torch.Tensor, int]] = {}
        self._warned: set[str] = set()
        self._active = False

    @property
    def active(self) -> bool:
        """Whether hooks are currently registered."""
        return self._active

    def _make_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        adapter = self.adapters.get(name, _default_adapter)

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            count = self._fired.get(name, 0) + 1
            self._fired[name] = count
            if count > 1 and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"layer {name!r} ran {count} times in one forward pass; only its last "
                    "output is kept. Hook a module that runs once, or a wrapper around the reuse",
                    RepeatedHookWarning,
                    stacklevel=2,
                )
            out = adapter(output)
            check = getattr(adapter, "check_grid", None)
            if callable(check) and self._input_hw is not None:
                check(self._input_hw)
            if not isinstance(out, torch.Tensor) or out.ndim != 4:
                raise ActivationShapeError(
                    f"layer {name!r} produced {getattr(out, 'shape', type(out).__name__)}, not "
                    "[B, K, h, w]; pass adapters={name: depthsel.TokenGridAdapter(...)} (CLI: --tokens "
                    "LAYER:grid=HxW:skip=N) or hook a "
                    "layer with a spatial output"
                )
            module_output = out is output and name not in self.adapters
            if self.detach:
                out = out.detach()
            version = _version(out)
            # The proof needs the in-place check below: a tensor without a version counter
            # (inference mode) could be changed after this hook, unseen. An adapter, even one
            # that returns the same object, may have changed it.
            if module_output and version is not None and ends_nonnegative(_module, self._own_hooks[name]):
                self.nonnegative.add(name)
            if version is not None:
                # detach() shares the version counter, so a later in-place op shows here too.
                self._versions[name] = (out, version)
            if self.keep:
                self.outputs[name] = out
            if self.on_output is not None:
                self.on_output(name, out)

        return hook

    def _reset_forward(self, _module: Any = None, args: Any = (), *_rest: Any) -> None:
        # A new forward of the root model starts: reset per-forward fire counts, and note
        # the image size so token grids can be checked against it.
        self._fired.clear()
        self._versions.clear()
        self.nonnegative = set()
        first = args[0] if isinstance(args, tuple) and args else None
        if isinstance(first, torch.Tensor) and first.ndim == 4:
            self._input_hw = (int(first.shape[-2]), int(first.shape[-1]))

    def _check_inplace(self, *_args: Any) -> None:
        # The root forward returned: a captured tensor whose version moved was
        # overwritten by a later in-place op (e.g. ReLU(inplace=True) after a hooked
        # BatchNorm), so what was kept is no longer what the module produced.
        versions, self._versions = self._versions, {}
        for name, (tensor, version) in versions.items():
            now = _version(tensor)
            if now is not None and now != version:
                module = self.modules.get(name)
                kind = type(module).__name__ if module is not None else "module"
                self.outputs = {}
                raise InplaceModificationError(
                    f"the output of layer {name!r} ({kind}) was modified in place after it was "
                    "captured (e.g. by a following ReLU(inplace=True) or `x += ...`), so the "
                    "captured values are not the layer's output; make that op out-of-place "
                    "(inplace=False), or hook the module that does the in-place op instead"
                )

    def clear(self) -> None:
        """Drop captured outputs (frees their memory and graph)."""
        self.outputs = {}
        self.nonnegative = set()
        self._fired.clear()
        self._versions.clear()

    def __enter__(self) -> "Capture":
        if self._active:
            raise CaptureError("this Capture is already active; do not nest the same instance")
        try:
            root = unwrap_model(self.model)
            self._handles.append(root.register_forward_pre_hook(self._reset_forward))
            if root is not self.model:
                self._handles.append(self.model.register_forward_pre_hook(self._reset_forward))
            for name, module in self.modules.items():
                # Hooks registered before ours run first and may replace the output: only
                # with none before ours is the module's own output what we see.
                self._own_hooks[name] = 1 if not module._forward_hooks else 0
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
            self._handles.append(root.register_forward_hook(self._check_inplace))
            if root is not self.model:
                self._handles.append(self.model.register_forward_hook(self._check_inplace))
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def _remove(self) -> None:
        try:
            self._handles.remove()
        finally:
            self._active = False

    def __exit__(self, *exc: Any) -> None:
        try:
            self._remove()
        finally:
            self._fired.clear()
            if exc[0] is not None:
                # On error, drop outputs so their graph cannot keep memory alive.
                self.outputs = {}

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.outputs.items())
