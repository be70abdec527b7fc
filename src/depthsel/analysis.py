"""The abstract :class:`Analyzer`: model + dataset + config in, a :class:`Result` out."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .errors import ConfigError
from .results import Result
from .modelinfo import ModelInfo

__all__ = ["Analyzer", "AnalysisContext"]

#: The keys of the old ``extras`` bag that had readers, and the fields that replace them.
_LEGACY_EXTRAS = {"train_dataset": "train_dataset", "assigned": "assignment", "adapters": "adapters"}


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
    train_dataset
        A training split, for analyzers that fit something before they measure
        on :attr:`dataset` (the probe's regression, the mask network G).
        ``None``: each analyzer's own default (its ``train`` option, or a share
        of :attr:`dataset`).
    assignment
        ``{layer: LongTensor[K]}``: the bin each unit is assigned to, for
        analyzers that need one (adversarial tracing), e.g. a dissection's
        ``assigned`` or a matched assignment. ``None`` or a missing layer: Eq. 6.
    extras
        Deprecated (one release): the old untyped bag. Its keys
        ``train_dataset``, ``assigned`` and ``adapters`` are moved to the fields
        above with a ``DeprecationWarning``; any other key is a
        :class:`~depthsel.errors.ConfigError` (an analyzer's own inputs are its
        options).
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
    adapters: dict[str, Any] = field(default_factory=dict)
    train_dataset: Dataset[Any] | None = None
    assignment: Mapping[str, torch.Tensor] | None = None
    extras: InitVar[Mapping[str, Any] | None] = None

    def __post_init__(self, extras: Mapping[str, Any] | None) -> None:
        if not self.layers:
            self.layers = list(self.info.suggested_layers)
        if extras:
            self._take_legacy_extras(extras)

    def _take_legacy_extras(self, extras: Mapping[str, Any]) -> None:
        """Move the keys of the old ``extras`` bag to their typed fields (deprecated for one release)."""
        unknown = sorted(set(extras) - set(_LEGACY_EXTRAS))
        if unknown:
            raise ConfigError(f"AnalysisContext(extras=...) is deprecated, and its keys {unknown} never "
                              "had a reader; pass an analyzer's own inputs as its options "
                              "(get_analyzer(name, key=value))")
        moved = {_LEGACY_EXTRAS[key]: value for key, value in extras.items()}
        for name, value in moved.items():
            current = getattr(self, name)
            # adapters are unset when empty ({}), the other fields when None.
            if (bool(current) if name == "adapters" else current is not None):
                raise ConfigError(f"{name} is given both as a field and in extras; pass only {name}=")
            setattr(self, name, dict(value or {}) if name == "adapters" else value)
        warnings.warn("AnalysisContext(extras=...) is deprecated and goes in the next release; pass "
                      + ", ".join(f"{n}=" for n in moved) + " instead", DeprecationWarning, stacklevel=4)

    def stream(self, consumers: Mapping[str, Any], *, layers: Any = "context", **options: Any) -> Any:
        """One pass over :attr:`dataset` feeding ``consumers`` (:func:`depthsel.stream.stream`).

        The context's model, info, batch size, device, adapters, workers and
        progress setting are passed on; ``layers`` defaults to :attr:`layers`
        (``None`` captures nothing); ``options`` override or add stream options,
        ``dataset=`` streams another dataset than :attr:`dataset`.
        """
        from .stream import stream

        dataset = options.pop("dataset", self.dataset)
        kwargs: dict[str, Any] = dict(layers=self.layers if layers == "context" else layers, info=self.info,
                                      batch_size=self.batch_size, device=self.device,
                                      adapters=self.adapters or None, num_workers=self.num_workers,
                                      progress=self.progress)
        kwargs.update(options)
        return stream(self.model, dataset, consumers, **kwargs)

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
