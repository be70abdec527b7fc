"""Command-line inputs shared by every command that needs a model or data.

``analyze``, ``dissect``, ``layers`` and the lead's ``train``/``demo`` commands
all turn the same strings into objects: a DATASPEC (``name`` or
``name:PATH``) into a dataset, ``--model``/``--model-config``/``--width``/
``--weights`` into a network with its :class:`~depthsel.ModelInfo`, ``--set
key=value`` into keyword configuration, and ``HxW`` into a size. Keeping that
here means every command reports bad input with the same one-line errors.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from ..errors import DepthselError
from ..modelinfo import ModelInfo
from .errors import CliError
from .output import message

__all__ = [
    "DataSpec",
    "BuiltModel",
    "parse_dataspec",
    "build_dataset",
    "build_model",
    "parse_settings",
    "parse_model_config",
    "parse_size",
    "parse_tokens",
    "split_layers",
    "LimitedDataset",
]


@dataclass(frozen=True)
class DataSpec:
    """A parsed DATASPEC: a dataset plugin name and an optional root folder."""

    name: str
    root: str | None = None

    def __str__(self) -> str:
        return self.name if self.root is None else f"{self.name}:{self.root}"


def parse_dataspec(spec: str) -> DataSpec:
    """Parse ``name`` or ``name:PATH`` (a registered dataset name and its root folder).

    Only the first colon separates, so Windows drive letters and colons in
    paths survive (``folder:C:/data``).
    """
    text = spec.strip()
    if not text:
        raise CliError("the data spec is empty; pass NAME or NAME:PATH (`depthsel datasets` lists the names)")
    name, sep, root = text.partition(":")
    name = name.strip()
    if not name:
        raise CliError(f"data spec {spec!r} has no dataset name before ':'; e.g. folder:{root}")
    if sep and not root.strip():
        raise CliError(f"data spec {spec!r} has an empty path after ':'; pass {name}:PATH or just {name}")
    return DataSpec(name=name, root=os.path.expanduser(root.strip()) if sep else None)


class LimitedDataset(Dataset[Any]):
    """The first ``limit`` items of a dataset, keeping its names and fingerprint meaningful."""

    def __init__(self, dataset: Dataset[Any], limit: int) -> None:
        self.dataset = dataset
        self.limit = min(int(limit), len(dataset))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, index: int) -> Any:
        if not -self.limit <= index < self.limit:
            raise IndexError(f"index {index} out of range for {self.limit} samples")
        return self.dataset[index % self.limit]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped dataset (it seeds random transforms)."""
        inner = getattr(self.dataset, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def names(self) -> list[str]:
        """Names of the kept samples (when the wrapped dataset has names)."""
        names = getattr(self.dataset, "names", None)
        return list(names())[: self.limit] if callable(names) else [str(i) for i in range(self.limit)]

    def fingerprint(self) -> str:
        """The wrapped dataset's fingerprint plus the limit."""
        from ..data import dataset_fingerprint

        return f"{dataset_fingerprint(self.dataset)}:first{self.limit}"

    def describe(self) -> str:
        """Delegate to the wrapped dataset and say what was cut."""
        inner = getattr(self.dataset, "describe", None)
        text = inner() if callable(inner) else type(self.dataset).__name__
        return f"{text} (first {self.limit} samples)"


def build_dataset(spec: str | DataSpec, *, limit: int | None = None, **config: Any) -> Dataset[Any]:
    """Build the dataset a DATASPEC names, optionally cut to ``limit`` items."""
    from ..api import get_dataset

    ds = parse_dataspec(spec) if isinstance(spec, str) else spec
    if ds.root is not None:
        if not Path(ds.root).exists():
            raise CliError(f"dataset path {ds.root!r} does not exist; check the path after '{ds.name}:'")
        config = {"root": ds.root, **config}
    try:
        dataset = get_dataset(ds.name, **config)
    except TypeError as exc:
        # The factory's signature did not accept what the spec implied (e.g. root=).
        raise CliError(f"dataset {ds.name!r} rejected its options: {exc}") from exc
    if limit is not None:
        if limit < 1:
            raise CliError(f"--limit must be >= 1, got {limit}")
        dataset = LimitedDataset(dataset, limit)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise CliError(f"dataset {str(ds)!r} has no samples")
    return dataset


_BARE_WORD = re.compile(r"^[A-Za-z0-9_.~/\\+-][A-Za-z0-9_.~/\\+=:-]*$")


def parse_value(text: str, key: str = "value", option: str = "--set") -> Any:
    """Parse a ``--set`` value as JSON; a bare word (``sid``, ``runs/d``) is a string.

    Anything else that is not valid JSON is an error: ``{name:sid}`` used to be
    read silently as the string ``"{name:sid}"``.
    """
    _check_depth(text, option)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if _BARE_WORD.match(text) and not text[:1].isdigit():
            return text
        raise CliError(
            f"{option} {key}={text} is not valid JSON ({exc.msg} at column {exc.colno}); quote strings "
            f"and keys as JSON, e.g. --set 'binner={{\"name\": \"sid\", \"num_bins\": 32}}' "
            "or --data-set 'size=[96, 128]'"
        ) from None


def _check_depth(text: str, label: str) -> None:
    # json.loads recurses once per level: a deep enough value is a RecursionError.
    from ..safeio import MAX_JSON_DEPTH, json_depth

    if len(text) > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise CliError(f"{label} value nests JSON deeper than {MAX_JSON_DEPTH} levels")


def parse_settings(items: Sequence[str] | None, option: str = "--set") -> dict[str, Any]:
    """Turn ``["num_bins=32", "above_range=first_bin"]`` into keyword configuration.

    Values are JSON (``32``, ``true``, ``[1, 2]``); a bare word is a string and
    anything else is an error (see :func:`parse_value`). Dotted keys nest:
    ``binner.num_bins=32`` gives ``{"binner": {"num_bins": 32}}``.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CliError(f"{option} {item!r} is not key=value; e.g. {option} num_bins=32")
        target = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = target.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise CliError(f"{option} {item!r} conflicts with an earlier {option} {part}=...")
            target = nxt
        target[parts[-1]] = parse_value(value.strip(), key, option)
    return out


def parse_model_config(model_config: str | None, width: float | None) -> dict[str, Any]:
    """Read ``--model-config`` (a JSON object, or a path to a JSON file) and ``--width``."""
    config: dict[str, Any] = {}
    if model_config:
        text = model_config
        path = Path(model_config).expanduser()
        if not model_config.lstrip().startswith("{") and path.is_file():
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise CliError(f"--model-config file {model_config!r} is not UTF-8 JSON text; "
                               "pass a JSON object such as '{\"width\": 0.25}'") from None
        _check_depth(text, "--model-config")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(
                f"--model-config is not a JSON object or a JSON file ({exc.msg}); "
                "e.g. --model-config '{\"width\": 0.25}'"
            ) from exc
        if not isinstance(parsed, dict):
            raise CliError("--model-config must be a JSON object, e.g. '{\"width\": 0.25}'")
        config.update(parsed)
    if width is not None:
        if not (width > 0 and math.isfinite(width)):
            raise CliError(f"--width must be a finite number > 0, got {width}")
        config["width"] = width
    return config


@dataclass
class BuiltModel:
    """A model built from the command line, with what built it."""

    model: nn.Module
    info: ModelInfo
    name: str
    config: dict[str, Any]
    weights: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable provenance for run configs and reports."""
        return {"name": self.name, "config": self.config, "weights": self.weights,
                "normalization": self.info.normalization}


def build_model(
    name: str,
    *,
    config: dict[str, Any] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    strict: bool = True,
    device: str = "cpu",
    normalization: str | None = None,
) -> BuiltModel:
    """Build a model, load weights into it, and fetch its :class:`ModelInfo`.

    Parameters
    ----------
    name
        Registry name (``depthsel models`` lists them), or an import path:
        ``package.module:Factory`` or ``path/to/file.py:Factory``.
    config
        Keyword configuration of the factory, e.g. ``{"width": 0.25}``.
    weights
        Optional checkpoint (``.safetensors`` or a ``torch.save`` file).
    trust_pickle
        Allow unpickling; see :func:`depthsel.load_state_dict`.
    strict
        Require the checkpoint's keys to match the model's.
    device
        Where to put the model.
    normalization
        ``"imagenet"`` or ``"unit"``; overrides the model's info. When not given,
        the normalisation recorded with ``weights`` by ``depthsel train`` is used.
    """
    from dataclasses import replace

    from ..checkpoints import load_weights
    from ..modelspec import build_import_model, is_import_spec
    from ..trained import saved_normalization
    from ..modelinfo import NORMALIZATIONS

    if normalization is not None and normalization not in NORMALIZATIONS:
        raise CliError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    cfg = dict(config or {})
    if is_import_spec(name):
        model, info = build_import_model(name, cfg)
    else:
        model, info = _build_registered(name, cfg)
    if normalization is None and weights is not None:
        saved = saved_normalization(weights)
        if saved is not None and saved != info.normalization:
            message(f"normalization: {saved} (recorded with {weights})", style="dim")
            normalization = saved
    if normalization is not None:
        info = replace(info, normalization=normalization)
    if weights is not None:
        load_weights(model, weights, strict=strict, trust_pickle=trust_pickle)
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise CliError(f"cannot move the model to device {device!r}: {exc}") from exc
    return BuiltModel(model=model, info=info, name=name, config=cfg,
                      weights=None if weights is None else str(weights))


def _build_registered(name: str, cfg: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    from ..api import get_model, get_model_info

    info = get_model_info(name)
    try:
        model = get_model(name, **cfg)
    except TypeError as exc:
        raise CliError(
            f"model {name!r} rejected its configuration {cfg}: {exc}; "
            "check --model-config/--width against the model's factory"
        ) from exc
    if not isinstance(model, nn.Module):
        raise DepthselError(f"model plugin {name!r} returned {type(model).__name__}, not an nn.Module")
    return model, info


def parse_tokens(values: Sequence[str] | None) -> dict[str, Any]:
    """``--tokens LAYER[:grid=HxW][:skip=N]`` into ``{layer: TokenGridAdapter}``.

    ``blocks.11:grid=14x14:skip=1`` reshapes the ``[B, 1 + 196, C]`` tokens of
    ``blocks.11`` (a class token, then a 14x14 patch grid) into ``[B, C, 14, 14]``.
    """
    from ..capture import TokenGridAdapter

    out: dict[str, Any] = {}
    for value in values or ():
        layer, *opts = value.split(":")
        layer = layer.strip()
        if not layer:
            raise CliError(f"--tokens {value!r} names no layer; e.g. --tokens blocks.11:grid=14x14:skip=1")
        grid: tuple[int, int] | None = None
        skip = 0
        for opt in opts:
            key, sep, val = opt.partition("=")
            if key == "grid" and sep:
                grid = parse_size(val)
            elif key == "skip" and sep and val.isdigit():
                skip = int(val)
            else:
                raise CliError(f"--tokens {value!r}: {opt!r} is not grid=HxW or skip=N")
        out[layer] = TokenGridAdapter(grid, skip_tokens=skip)
    return out


def parse_size(text: str | None) -> tuple[int, int] | None:
    """Parse ``HxW`` (``224x224``) or a single side (``224``)."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"size {text!r} is not HxW, e.g. 224x304") from None
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) < 1:
        raise CliError(f"size {text!r} is not HxW with positive sides, e.g. 224x304")
    return nums[0], nums[1]


def split_layers(values: Sequence[str] | None) -> list[str]:
    """Flatten repeated and comma-separated ``--layers`` values, keeping order."""
    out: list[str] = []
    for value in values or ():
        if not value.strip(" ,"):
            raise CliError("--layers got an empty value; name a layer or glob (`depthsel layers MODEL`)")
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out
