"""``unit-stats``: the mean and standard deviation of every unit's activation.

A minimal but complete analyzer: one :class:`depthsel.Consumer` per layer
declares its running float64 sums once (so the pass shards, syncs under
``torch.distributed`` and checkpoints with no extra code), ``ctx.stream`` runs
the one streaming loop over the data with the layers hooked, and a
:class:`depthsel.results.Result` subclass saves as safetensors + JSON + CSV.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from depthsel import Consumer
from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.results import Result


class UnitMoments(Consumer):
    """Running sums of ``A`` and ``A**2`` per unit of one layer, and the pixel count."""

    def __init__(self, layer: str, absolute: bool) -> None:
        super().__init__()
        self.layer, self.absolute = layer, absolute
        # Leading size 0: the unit count is known at the first batch (grow_state below).
        self.add_state("sums", torch.zeros(0, dtype=torch.float64))
        self.add_state("squares", torch.zeros(0, dtype=torch.float64))
        self.add_state("pixels", torch.zeros((), dtype=torch.float64))

    def update(self, view: Any) -> None:
        """Add one batch of the stream."""
        act = view.activations[self.layer].to(torch.float64)
        a = act.abs() if self.absolute else act
        if self.sums.numel() == 0:
            for name in ("sums", "squares"):
                self.grow_state(name, torch.zeros(a.shape[1], dtype=torch.float64, device=a.device))
        self.sums = self.sums + a.sum(dim=(0, 2, 3))
        self.squares = self.squares + (a * a).sum(dim=(0, 2, 3))
        self.pixels = self.pixels + a.shape[0] * a.shape[2] * a.shape[3]


class UnitStatsResult(Result):
    """Per-unit ``{layer}/mean`` and ``{layer}/std`` tensors, plus per-layer summaries in ``data``."""

    kind: ClassVar[str] = "example.unit-stats"

    def rows(self) -> list[dict[str, Any]]:
        """One CSV row per unit."""
        out: list[dict[str, Any]] = []
        for layer in self.data.get("layers", {}):
            mean, std = self.tensors[f"{layer}/mean"], self.tensors[f"{layer}/std"]
            for k in range(mean.numel()):
                out.append({"layer": layer, "unit": k, "mean": float(mean[k]), "std": float(std[k])})
        return out


class UnitStatsAnalyzer(Analyzer):
    """Mean activation of each unit over all pixels of all images.

    Parameters
    ----------
    absolute
        Average ``|A|`` instead of ``A``.
    """

    name = "unit-stats"
    description = "per-unit mean and std of activations"

    def __init__(self, absolute: bool = False) -> None:
        super().__init__(absolute=absolute)
        self.absolute = bool(absolute)

    def run(self, ctx: AnalysisContext) -> UnitStatsResult:
        """Stream over ``ctx.dataset`` once and return per-unit statistics."""
        moments = {name: UnitMoments(name, self.absolute) for name in ctx.layers}
        ctx.stream(moments, description="unit-stats")
        tensors: dict[str, torch.Tensor] = {}
        layers: dict[str, Any] = {}
        for name, m in moments.items():
            mean = (m.sums / m.pixels).cpu()
            std = (m.squares.cpu() / float(m.pixels) - mean * mean).clamp_min(0).sqrt()
            tensors[f"{name}/mean"], tensors[f"{name}/std"] = mean.float(), std.float()
            layers[name] = {"units": int(mean.numel()), "mean_of_means": float(mean.mean()),
                            "dead_units": int((std == 0).sum())}
        return UnitStatsResult(tensors=tensors, data={"layers": layers, "images": len(ctx.dataset)},
                               config=self.config())
