"""Resolving which modules of a model to hook.

A layer specification is an exact module name (``"decode_conv5"``), an
fnmatch glob (``"decoder.*conv"``), a module type (``nn.Conv2d``), a predicate
``(name, module) -> bool``, or a sequence of these. Resolution happens on the
model with its ``DistributedDataParallel``/``DataParallel`` (``.module``) and
``torch.compile`` (``._orig_mod``) wrappers removed, so names are the ones the
user sees in ``print(model)``.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Union

from torch import nn

from .errors import LayerNotFoundError

__all__ = ["LayerSpec", "LayerSelector", "unwrap_model"]

LayerSpec = Union[str, type, Callable[[str, nn.Module], bool], Sequence["LayerSpec"]]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        break
    return model


def _flatten(spec: LayerSpec) -> list[str | type | Callable[[str, nn.Module], bool]]:
    if isinstance(spec, (str, type)) or (callable(spec) and not isinstance(spec, (list, tuple))):
        return [spec]  # type: ignore[list-item]
    if isinstance(spec, Iterable):
        out: list[str | type | Callable[[str, nn.Module], bool]] = []
        for item in spec:
            out.extend(_flatten(item))
        return out
    raise LayerNotFoundError(f"cannot interpret layer spec {spec!r}; pass names, globs, types or predicates")


def _is_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


class LayerSelector:
    """Resolve a layer specification to an ordered ``{name: module}``.

    Parameters
    ----------
    spec
        See the module docstring. Exact names keep the order given; globs,
        types and predicates add matches in the model's module order.

    Examples
    --------
    >>> LayerSelector(["decode_conv4", "decode_conv5"]).resolve(model)   # doctest: +SKIP
    {'decode_conv4': Sequential(...), 'decode_conv5': Sequential(...)}
    """

    def __init__(self, spec: LayerSpec) -> None:
        self.items = _flatten(spec)
        if not self.items:
            raise LayerNotFoundError("no layers given; name at least one layer to hook")

    def resolve(self, model: nn.Module) -> dict[str, nn.Module]:
        """Return the matching modules, in order, without duplicates.

        Raises
        ------
        LayerNotFoundError
            When any item matches nothing; the message lists the closest names.
        """
        root = unwrap_model(model)
        named = [(n, m) for n, m in root.named_modules() if n]
        lookup = dict(named)
        out: dict[str, nn.Module] = {}
        for item in self.items:
            if isinstance(item, str) and not _is_glob(item):
                if item not in lookup:
                    raise LayerNotFoundError(self._missing_message(item, [n for n, _ in named]))
                out.setdefault(item, lookup[item])
                continue
            matched = [
                (n, m) for n, m in named
                if (isinstance(item, str) and fnmatch.fnmatchcase(n, item))
                or (isinstance(item, type) and isinstance(m, item))
                or (not isinstance(item, (str, type)) and bool(item(n, m)))
            ]
            if not matched:
                raise LayerNotFoundError(self._missing_message(item, [n for n, _ in named]))
            for n, m in matched:
                out.setdefault(n, m)
        return out

    @staticmethod
    def _missing_message(item: object, names: list[str]) -> str:
        label = item if isinstance(item, str) else getattr(item, "__name__", repr(item))
        if isinstance(item, str):
            close = difflib.get_close_matches(item, names, n=5, cutoff=0.4)
            if not close:
                # Fall back to names that share the last component, then to a few names.
                tail = item.rsplit(".", 1)[-1]
                close = [n for n in names if tail and tail in n][:5] or names[:5]
        else:
            close = names[:5]
        hint = ", ".join(close) if close else "(the model has no submodules)"
        return (
            f"layer spec {label!r} matched no module; closest names: {hint}. "
            "List every layer with depthsel.layers(model, input_size) in Python, or "
            "`depthsel layers MODEL` where MODEL is a registered name, package.module:Factory "
            "or path/to/file.py:Factory"
        )

    def __repr__(self) -> str:
        return f"LayerSelector({self.items!r})"

