"""Models named by import path: ``package.module:Factory`` or ``path/to/file.py:Factory``.

Registered names (``depthsel models``) go through the plugin registry; anything with
a ``:`` whose left side is a dotted module path or a ``.py`` file is imported
directly, the way uvicorn and fastapi-cli read ``app.main:app``. The factory is
any callable returning an ``nn.Module`` (a class or a function). Its
:class:`~depthsel.ModelInfo` comes from, in order: a ``depthsel_info``
attribute of the factory, a module-level ``DEPTHSEL_INFO``, or a default
``ModelInfo`` whose normalisation is left unstated (see
:meth:`ModelInfo.normalize`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .errors import DepthselError
from .modelinfo import ModelInfo

__all__ = ["ModelSpecError", "is_import_spec", "load_factory", "info_for_factory", "build_import_model"]

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_ATTR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModelSpecError(DepthselError):
    """A ``module:Factory`` model spec cannot be imported or does not build a model."""


def is_import_spec(text: str) -> bool:
    """Whether ``text`` names a model by import path rather than by registry name."""
    left, sep, right = text.rpartition(":")
    if not sep or not right:
        return False
    return left.endswith(".py") or bool(_MODULE.match(left))


def _import_file(path: Path) -> Any:
    # A stable, unique module name per file, so two files called model.py do not clash
    # and importing the same file twice returns the same module.
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_depthsel_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {str(path)!r}; pass a Python source file")
    module = importlib.util.module_from_spec(spec)
    # The file may import its neighbours (from blocks import Down), as it would when run.
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelSpecError(f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        try:
            sys.path.remove(str(path.parent))
        except ValueError:
            pass
    return module


def load_factory(spec: str) -> tuple[Callable[..., Any], Any]:
    """Import ``module:attr`` or ``file.py:attr`` and return ``(factory, module)``.

    Raises
    ------
    ModelSpecError
        When the module or file cannot be imported or has no such attribute.
    """
    left, _, attr = spec.rpartition(":")
    if not _ATTR.match(attr):
        raise ModelSpecError(f"{spec!r}: {attr!r} is not an attribute name; write module:Factory")
    if left.endswith(".py"):
        path = Path(left).expanduser().resolve()
        if not path.is_file():
            raise ModelSpecError(f"model file {left!r} does not exist; check the path before ':{attr}'")
        module = _import_file(path)
    else:
        # Like `python -m`, the current directory is importable (mynet:UNet next to mynet.py).
        added = "" not in sys.path and "." not in sys.path
        if added:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(left)
        except ImportError as exc:
            raise ModelSpecError(
                f"cannot import module {left!r} ({exc}); install it, run from its folder, or "
                f"pass a file: path/to/{left.replace('.', '/')}.py:{attr}"
            ) from exc
        except Exception as exc:
            raise ModelSpecError(f"importing {left!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if added:
                sys.path.remove("")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ModelSpecError(f"{left!r} has no attribute {attr!r}; callables there: {names[:12]}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"{spec!r} is a {type(obj).__name__}, not a class or function that builds a model")
    return obj, module


def info_for_factory(factory: Any, module: Any = None) -> ModelInfo:
    """The factory's ``depthsel_info``, else the module's ``DEPTHSEL_INFO``, else a default.

    The default has ``input_size=(224, 224)`` and no stated normalisation.
    """
    for candidate in (getattr(factory, "depthsel_info", None), getattr(module, "DEPTHSEL_INFO", None)):
        if isinstance(candidate, ModelInfo):
            return candidate
    return ModelInfo(input_size=(224, 224), normalization=None)


def build_import_model(spec: str, config: dict[str, Any] | None = None,
                       normalization: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Build the model ``spec`` names with ``config`` keyword options.

    Parameters
    ----------
    spec
        ``package.module:Factory`` or ``path/to/file.py:Factory``.
    config
        Keyword arguments of the factory.
    normalization
        Overrides the info's normalisation (``"imagenet"`` or ``"unit"``).
    """
    factory, module = load_factory(spec)
    cfg = dict(config or {})
    try:
        model = factory(**cfg)
    except TypeError as exc:
        raise ModelSpecError(
            f"{spec} rejected its configuration {cfg}: {exc}; check --model-config against its signature"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    info = info_for_factory(factory, module)
    if normalization is not None:
        info = replace(info, normalization=normalization)
    return model, info
