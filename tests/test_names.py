"""One name per quantity: the regularizer's batch stats and a dissection's summary agree."""

from __future__ import annotations

import math

import pytest
import torch

import depthsel
from depthsel import ResponseAccumulator, SelectivityRegularizer, get_binner, summarize_layer
from depthsel.testing import ToyDepthNet, toy_batch


@pytest.mark.parametrize("objective", ["assign", "regularize"])
def test_last_stats_match_a_one_batch_dissection(objective: str) -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=4)
    image, depth = toy_batch(batch=4, size=(32, 32), seed=2)
    binner = get_binner("uniform", num_bins=4, min_depth=float(depth.min()) - 1e-3,
                        max_depth=float(depth.max()) + 1e-3)
    reg = SelectivityRegularizer(model, ["dec3"], binner, objective=objective, fit_bins_to_units=True)
    with reg.attach():
        model(image)
        reg.loss(depth)
    stats = reg.last_stats()["dec3"]
    assert {"score", "target_ds", "argmax_ds", "peak_on_target", "units_counted"} <= set(stats)
    assert "mean_ds" not in stats
    # The same batch, dissected: identical numbers under identical names.
    with torch.no_grad(), depthsel.Capture(model, ["dec3"]) as cap:
        model(image)
    acc = ResponseAccumulator(binner.num_bins)
    acc.update(cap.outputs["dec3"], binner(depth))
    k = cap.outputs["dec3"].shape[1]
    summary = summarize_layer("dec3", acc.responses("abs"), reg.assignment("dec3", k))
    assert stats["target_ds"] == pytest.approx(summary.target_ds, rel=1e-4, abs=1e-6)
    assert stats["argmax_ds"] == pytest.approx(summary.argmax_ds, rel=1e-4, abs=1e-6)
    assert stats["peak_on_target"] == pytest.approx(summary.peak_on_target)
    assert math.isfinite(stats["score"])
