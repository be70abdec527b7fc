"""The dataset contract shared by every dataset plugin, analyzer and the trainer.

A depthsel dataset is a ``torch.utils.data.Dataset`` whose items are dicts:

``image``
    ``float32 [3, H, W]`` in ``[0, 1]`` (not normalised: models normalise).
``depth``
    ``float32 [1, H, W]`` in metres, ``0`` where invalid.
``valid``
    ``bool [1, H, W]``; ``depth > 0`` and finite, after every transform.
``name``
    ``str``, a stable identifier of the sample (a relative file path).

Optional keys: ``sparse_depth`` (``float32 [1, H, W]``, 0 where not sampled) for
depth completion models. Default collation stacks them into batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import torch
from torch.utils.data import Dataset

from .errors import DatasetError

__all__ = ["DepthSample", "validate_sample", "dataset_fingerprint", "collate", "CachedDataset"]


class DepthSample(TypedDict, total=False):
    """One item of a depthsel dataset (see the module docstring)."""

    image: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    name: str
    sparse_depth: torch.Tensor


def validate_sample(sample: Mapping[str, Any], where: str = "sample") -> None:
    """Raise :class:`DatasetError` unless ``sample`` follows the contract."""
    for key in ("image", "depth", "valid"):
        if key not in sample:
            raise DatasetError(f"{where} has no {key!r} entry; a dataset item must have image, depth, valid")
    image, depth, valid = sample["image"], sample["depth"], sample["valid"]
    if image.ndim != 3 or image.shape[0] != 3:
        raise DatasetError(f"{where}: image must be [3, H, W], got {tuple(image.shape)}")
    if depth.ndim != 3 or depth.shape[0] != 1:
        raise DatasetError(f"{where}: depth must be [1, H, W], got {tuple(depth.shape)}")
    if image.shape[-2:] != depth.shape[-2:]:
        raise DatasetError(
            f"{where}: image {tuple(image.shape[-2:])} and depth {tuple(depth.shape[-2:])} "
            "differ in size; resize them jointly"
        )
    if valid.shape != depth.shape or valid.dtype != torch.bool:
        raise DatasetError(f"{where}: valid must be a bool tensor shaped like depth")


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples into a batch (tensors stacked, strings listed)."""
    if not samples:
        raise DatasetError("cannot collate an empty list of samples")
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = list(values)
    return out


def dataset_fingerprint(dataset: Dataset[Any], config: Mapping[str, Any] | None = None) -> str:
    """Return a short stable hash that identifies a dataset and its configuration.

    Uses ``dataset.fingerprint()`` when the dataset defines it, else its length,
    class and the names of up to 64 samples spread over it.
    """
    custom = getattr(dataset, "fingerprint", None)
    h = hashlib.sha256()
    if callable(custom):
        h.update(str(custom()).encode())
    else:
        n = len(dataset)  # type: ignore[arg-type]
        h.update(f"{type(dataset).__qualname__}:{n}".encode())
        names = getattr(dataset, "names", None)
        if callable(names):
            for name in names():
                h.update(str(name).encode())
    if config:
        h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class CachedDataset(Dataset[Any]):
    """Keeps the expensive, deterministic part of every item in memory after its first read.

    For small datasets whose items are expensive to produce (rendered scenes,
    decoded and resized PNGs) and are read every epoch.

    Random augmentation is not frozen: a wrapped dataset may split item
    production in two (duck-typed, so the core never needs to know its class):

    ``cacheable_item(index)``
        the deterministic part (decode, contract checks, resize), cached here;
    ``finish_item(sample, index)``
        the rest (random transforms seeded by the epoch, sparse sampling),
        re-applied on every read to a shallow copy of the cached sample.

    A dataset without both methods is cached whole, so its first version of
    each item is kept: only wrap such a dataset when its items do not change
    between epochs. :meth:`set_epoch` is forwarded to the wrapped dataset.
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset
        self._items: dict[int, Any] = {}
        cacheable = getattr(dataset, "cacheable_item", None)
        finish = getattr(dataset, "finish_item", None)
        # Both or neither: half a protocol would cache a sample no one finishes.
        self._split = callable(cacheable) and callable(finish)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        if not self._split:
            if index not in self._items:
                self._items[index] = self.dataset[index]
            return self._items[index]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        if index not in self._items:
            self._items[index] = self.dataset.cacheable_item(index)  # type: ignore[attr-defined]
        # A shallow copy: transforms return new tensors, and keys they add stay off the cache.
        return self.dataset.finish_item(dict(self._items[index]), index)  # type: ignore[attr-defined]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped dataset (it seeds random transforms)."""
        inner = getattr(self.dataset, "set_epoch", None)
        if callable(inner):
            inner(epoch)

    def fingerprint(self) -> str:
        """The wrapped dataset's fingerprint."""
        return dataset_fingerprint(self.dataset)

    def names(self) -> list[str]:
        """The wrapped dataset's sample names, when it has them."""
        names = getattr(self.dataset, "names", None)
        return list(names()) if callable(names) else [str(i) for i in range(len(self))]

