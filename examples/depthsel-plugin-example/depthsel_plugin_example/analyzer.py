"""``unit-stats``: the mean and standard deviation of every unit's activation.

A minimal but complete analyzer: it streams over the data once with constant
memory (running float64 sums), hooks layers with :class:`depthsel.Capture`,
and returns a :class:`depthsel.results.Result` subclass that saves as
safetensors + JSON + CSV.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from depthsel import Capture
from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.progress import track
from depthsel.results import Result


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
        model = ctx.model.to(ctx.device)
        was_training = model.training
        model.eval()
        sums: dict[str, torch.Tensor] = {}
        squares: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        try:
            with torch.no_grad(), Capture(model, ctx.layers) as cap:
                for batch in track(ctx.loader(), "unit-stats", enabled=ctx.progress):
                    ctx.info.forward(model, ctx.to_device(batch))
                    for name, act in cap:
                        a = act.abs() if self.absolute else act
                        a = a.to(torch.float64)
                        sums[name] = sums.get(name, 0) + a.sum(dim=(0, 2, 3)).cpu()
                        squares[name] = squares.get(name, 0) + (a * a).sum(dim=(0, 2, 3)).cpu()
                        counts[name] = counts.get(name, 0) + a.shape[0] * a.shape[2] * a.shape[3]
                    cap.clear()
        finally:
            model.train(was_training)
        tensors: dict[str, torch.Tensor] = {}
        layers: dict[str, Any] = {}
        for name, total in sums.items():
            mean = total / counts[name]
            std = (squares[name] / counts[name] - mean * mean).clamp_min(0).sqrt()
            tensors[f"{name}/mean"], tensors[f"{name}/std"] = mean.float(), std.float()
            layers[name] = {"units": int(mean.numel()), "mean_of_means": float(mean.mean()),
                            "dead_units": int((std == 0).sum())}
        return UnitStatsResult(tensors=tensors, data={"layers": layers, "images": len(ctx.dataset)},
                               config=self.config())
