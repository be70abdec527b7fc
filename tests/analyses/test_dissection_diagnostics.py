"""Prediction DS, per-bin depth error, near-target and bootstrap intervals of a dissection."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from depthsel import ModelInfo
from depthsel.analysis import AnalysisContext
from depthsel_plugins.analyses.dissection import DissectionAnalyzer
from depthsel_plugins.analyses.dissection_diagnostics import near_target_fraction

from test_permutation_calibration import Images, smooth_depths

UNIT = ModelInfo(input_size=(32, 32), normalization="unit")
EDGES = {"edges": [0.5, 2.0, 2.6, 3.2, 8.0]}


class DepthReader(nn.Module):
    """Units tuned to the depth written in image channel 0; output = that depth times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[:, :1] * 10.0
        tuned = torch.cat([torch.exp(-((d - c) ** 2) / 0.1) for c in (1.5, 2.3, 2.9, 3.6)], 1)
        self.feat(tuned)
        return d * self.scale


def run(model: nn.Module, n: int = 12, **cfg: Any) -> tuple[Any, dict[str, Any]]:
    depth = smooth_depths(n, (32, 32), 3)
    image = torch.cat([depth / 10.0, torch.zeros(n, 2, 32, 32)], 1)
    ctx = AnalysisContext(model=model, dataset=Images(image, depth), info=UNIT, layers=["feat"],
                          batch_size=5, progress=False)
    res = DissectionAnalyzer(binner=EDGES, **cfg).run(ctx)
    return res, res.data["splits"]["test"]["feat"]


def test_perfect_prediction_gives_prediction_ds_equal_to_ground_truth_ds() -> None:
    res, s = run(DepthReader(1.0), permutations=0)
    torch.testing.assert_close(res.get("feat", "pred_target_ds"), res.get("feat", "target_ds"))
    for row in s["per_bin_error"]:
        if row["pixels"]:
            assert row["mae"] == pytest.approx(0.0, abs=1e-6) and row["in_bin"] == pytest.approx(1.0)


def test_biased_prediction_lowers_in_bin_fraction_and_reports_error_against_width() -> None:
    _, s = run(DepthReader(1.3), permutations=0)
    rows = [r for r in s["per_bin_error"] if r["pixels"]]
    assert any(r["in_bin"] < 0.5 for r in rows)
    for r in rows:
        assert r["mae_over_width"] == pytest.approx(r["mae"] / r["width"])
        assert r["mae"] > 0.1
    # Units still follow the depth written in the image, i.e. the prediction / 1.3: their code is
    # exact with respect to the truth, and prediction-binned target DS falls below it.
    assert s["pred_target_ds"] < _first(s, "target_ds", "mean_target_ds")


def _first(d: dict[str, Any], *keys: str) -> Any:
    return next(d[k] for k in keys if k in d)


def test_bootstrap_interval_brackets_the_layer_value() -> None:
    _, s = run(DepthReader(1.0), n=20, permutations=99)
    lo, hi = s["target_ds_ci"]
    assert lo <= _first(s, "target_ds", "mean_target_ds") + 1e-9 and hi >= _first(s, "target_ds", "mean_target_ds") - 1e-9
    assert s["bootstrap_images"] == 20 and lo < hi


def test_near_target_counts_neighbours_and_never_dead_units() -> None:
    r = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0.0, 0, 0, 0]])
    dead = torch.tensor([False, False, False, True])
    assert near_target_fraction(r, torch.tensor([1, 1, 1, 3]), dead) == pytest.approx(0.5)
    assert near_target_fraction(r, torch.tensor([0, 1, 3, 3]), dead) == pytest.approx(0.75)


def test_unit_gallery_draws_every_unit_and_refuses_bad_units(tmp_path: Any) -> None:
    from depthsel.errors import DepthselError
    from depthsel_plugins.analyses.dissection_gallery import plot_unit_gallery

    res, _ = run(DepthReader(1.0), permutations=0)
    model = DepthReader(1.0)
    depth = smooth_depths(12, (32, 32), 3)
    data = Images(torch.cat([depth / 10.0, torch.zeros(12, 2, 32, 32)], 1), depth)
    view = res.layer_view("feat")
    path = plot_unit_gallery(model, UNIT, data, view, tmp_path / "g.png", indices=(0, 5))
    from PIL import Image

    one = plot_unit_gallery(model, UNIT, data, view, tmp_path / "one.png", units=[2], indices=(0, 5))
    # Every unit gets a row: four units make a figure about four times as tall as one.
    assert Image.open(path).size[1] > 3 * Image.open(one).size[1]
    with pytest.raises(DepthselError):
        plot_unit_gallery(model, UNIT, data, view, tmp_path / "bad.png", units=[7])
    paths = res.plot_feature_maps(model, UNIT, data, tmp_path / "fm")
    assert any(p.name.endswith("unit_gallery.png") for p in paths)
