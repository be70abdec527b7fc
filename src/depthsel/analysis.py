"""The abstract :class:`Analyzer`: model + dataset + config in, a :class:`Result` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import collate
from .results import Result
from .modelinfo import ModelInfo

__all__ = ["Analyzer", "AnalysisContext"]


@dataclass
class AnalysisContext:
    """Everything an analyzer needs besides its own config.

    Attributes
    ----------
    model
        The network, in eval mode unless the analyzer says otherwise.
    dataset
        A depthsel dataset (see :mod:`depthsel.data`).
    info
        The model's :class:`~depthsel.ModelInfo` (input normalisation, layers...).
    layers
        Layers to analyse; defaults to ``info.suggested_layers``.
    device
        ``"cpu"``, ``"cuda"``...
    batch_size, num_workers
        Data loading.
    seed
        Seed for anything random in the analysis.
    progress
        Draw progress bars (``None``: when stderr is a terminal).
    adapters
        ``{layer: callable}`` reshaping non-spatial layer outputs to ``[B, K, h, w]``,
        e.g. ``{"blocks.11": depthsel.TokenGridAdapter(grid=(14, 14), skip_tokens=1)}``
        for ViT tokens. Every analyzer hooks layers through these.
    extras
        Analyzer-specific inputs (e.g. a stored dissection for correction).
    """

    model: nn.Module
    dataset: Dataset[Any]
    info: ModelInfo
    layers: list[str] = field(default_factory=list)
    device: str | torch.device = "cpu"
    batch_size: int = 4
    num_workers: int = 0
    seed: int = 0
    progress: bool | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    adapters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = list(self.info.suggested_layers)
        # Older callers passed adapters through extras; there is one place for them now.
        if "adapters" in self.extras and not self.adapters:
            self.adapters = dict(self.extras.pop("adapters") or {})

    def loader(self, shuffle: bool = False, batch_size: int | None = None) -> DataLoader[Any]:
        """A deterministic DataLoader over the dataset."""
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.dataset, batch_size=batch_size or self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, collate_fn=collate, generator=g)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a batch's tensors to :attr:`device`."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Analyzer(ABC):
    """Base class of analysis plugins.

    Subclasses set :attr:`name`, accept their configuration as keyword
    arguments in ``__init__`` (recorded by :meth:`config`), and implement
    :meth:`run`, which must stream over the data with constant memory.
    """

    name: str = "analyzer"
    description: str = ""

    def __init__(self, **config: Any) -> None:
        self._config = dict(config)

    def config(self) -> dict[str, Any]:
        """The JSON-serialisable configuration this analyzer was built with."""
        return dict(self._config)

    @abstractmethod
    def run(self, ctx: AnalysisContext) -> Result:
        """Run the analysis and return its result."""
