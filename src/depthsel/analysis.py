"""The abstract :class:`Analyzer`: model + dataset + config in, a :class:`Result` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .results import Result
from .zoo import ModelInfo

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

    def stream(self, consumers: Mapping[str, Any], *, layers: Any = "context", **options: Any) -> Any:
        """One pass over :attr:`dataset` feeding ``consumers`` (:func:`depthsel.stream.stream`).

        The context's model, info, batch size, device, adapters, workers and
        progress setting are passed on; ``layers`` defaults to :attr:`layers`
        (``None`` captures nothing); ``options`` override or add stream options.
        """
        from .stream import stream

        kwargs: dict[str, Any] = dict(layers=self.layers if layers == "context" else layers, info=self.info,
                                      batch_size=self.batch_size, device=self.device,
                                      adapters=self.adapters or None, num_workers=self.num_workers,
                                      progress=self.progress)
        kwargs.update(options)
        return stream(self.model, options.pop("dataset", self.dataset), consumers,
                      **{k: v for k, v in kwargs.items() if k != "dataset"})

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a batch's tensors to :attr:`device`."""
        from .stream import move_batch

        return move_batch(batch, self.device)


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
