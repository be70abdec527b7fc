"""Tests of the adversarial error-tracing analysis (You et al. 2021, Sec. 5.3)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from datahelpers import shared_data_dir
from torch.utils.data import Dataset

from depthsel import ModelInfo, assign_bins
from depthsel.analysis import AnalysisContext
from depthsel.errors import DepthselError
from depthsel.results import load_result
from depthsel.testing import ToyDepthDataset, ToyDepthNet, assert_no_hooks, toy_batch
from depthsel_plugins.analyses.adversarial import (
    AdversarialAnalyzer,
    AdversarialResult,
    attack_images,
    error_pixels,
    mask_iou,
    threshold_maps,
)

INFO = ModelInfo(input_size=(32, 32), suggested_layers=("dec2", "dec3"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny convolutions on a shared 2-core machine run far faster without thread contention.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained() -> ToyDepthNet:
    """A toy network trained for 40 steps, so there is accuracy for the attack to destroy."""
    torch.manual_seed(0)
    model = ToyDepthNet(width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    image, depth = toy_batch(16, (32, 32), seed=0)
    for _ in range(40):
        loss = (INFO.forward(model, {"image": image}) - depth).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _run(model: ToyDepthNet, **config: Any) -> AdversarialResult:
    ctx = AnalysisContext(model=model, dataset=ToyDepthDataset(6, seed=1), info=INFO, batch_size=3, progress=False)
    return AdversarialAnalyzer(num_bins=16, **config).run(ctx)


@pytest.fixture(scope="module")
def attacked(trained: ToyDepthNet) -> AdversarialResult:
    return _run(trained, epsilon=0.05)


# ------------------------------------------------------------------ helpers
def test_error_pixels_match_hand_computation() -> None:
    gt = torch.tensor([[[[1.0, 2.0, 4.0], [0.0, 2.0, 1.0]]]])
    pred = torch.tensor([[[[1.2, 3.0, 4.0], [1.0, 1.0, 1.25]]]])
    # ratios: 1.2, 1.5, 1.0 / invalid, 2.0, exactly 1.25 (not an error: the rule is strict)
    expected = torch.tensor([[[[False, True, False], [False, True, False]]]])
    assert torch.equal(error_pixels(pred, gt, gt > 0, 1.25), expected)
    # A half-resolution prediction is upsampled to the ground truth first.
    assert error_pixels(torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 2, 4), 2.0),
                        torch.ones(1, 1, 2, 4, dtype=torch.bool)).sum() == 0


def test_mask_iou_on_hand_made_masks() -> None:
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[0, :] = True            # 4 pixels
    b[0, 2:] = True           # 2 of them ...
    b[1, :2] = True           # ... plus 2 others: IoU = 2 / 6
    assert mask_iou(a, b).item() == pytest.approx(2 / 6)
    assert mask_iou(a, a).item() == 1.0
    assert mask_iou(a, ~a).item() == 0.0
    assert math.isnan(mask_iou(torch.zeros_like(a), torch.zeros_like(a)).item())
    stacked = mask_iou(torch.stack([a, b]), a)  # broadcasting over units
    assert stacked.tolist() == pytest.approx([1.0, 2 / 6])


def test_threshold_maps_keep_the_top_quantile_of_valid_pixels() -> None:
    act = torch.stack([torch.arange(16.0).view(4, 4), torch.zeros(4, 4)])
    valid = torch.ones(4, 4, dtype=torch.bool)
    out = threshold_maps(act, (4, 4), valid, 0.75)
    assert torch.equal(out[0], act[0] >= 12)      # top 25% = values 12..15
    assert not out[1].any()                        # a constant (dead) map marks nothing
    valid[2:] = False                              # only values 0..7 count now
    out = threshold_maps(act, (4, 4), valid, 0.75)
    assert torch.equal(out[0], (act[0] >= 6) & valid)


# ------------------------------------------------------------------ attack
def test_epsilon_zero_gives_exactly_the_clean_metrics(trained: ToyDepthNet) -> None:
    res = _run(trained, epsilon=0.0, figure_index=None)
    for key in ("rmse", "delta1", "abs_rel", "mae"):
        assert res.data["adversarial"][key] == res.data["clean"][key]
    for name in ("dec2", "dec3"):
        assert torch.equal(res.tensors[f"{name}/iou"], res.tensors[f"{name}/iou_clean"])
    assert_no_hooks(trained)


def test_fgsm_increases_the_error(attacked: AdversarialResult) -> None:
    clean, adv = attacked.data["clean"], attacked.data["adversarial"]
    assert clean["delta1"] > 0.6, "the toy model should have learned something"
    assert adv["rmse"] > 1.5 * clean["rmse"]
    assert adv["delta1"] < clean["delta1"] - 0.1
    assert attacked.data["drop"]["delta1"] == pytest.approx(clean["delta1"] - adv["delta1"])


def test_pgd_stays_in_the_epsilon_ball_and_is_deterministic(trained: ToyDepthNet) -> None:
    image, depth = toy_batch(2, (32, 32), seed=3)
    batch = {"image": image, "depth": depth, "valid": depth > 0}
    kw = dict(attack="pgd", epsilon=0.03, steps=4, random_start=True)
    x1 = attack_images(trained, INFO, batch, generator=torch.Generator().manual_seed(5), **kw)
    x2 = attack_images(trained, INFO, batch, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(x1, x2)
    assert (x1 - image).abs().max() <= 0.03 + 1e-6
    assert x1.min() >= 0 and x1.max() <= 1
    err = lambda x: (INFO.forward(trained, {"image": x}) - depth).abs().mean()  # noqa: E731
    with torch.no_grad():
        assert err(x1) > err(image)


def test_table_lists_units_assigned_to_dominant_bins(attacked: AdversarialResult) -> None:
    rows = attacked.rows()
    assert rows and {r["layer"] for r in rows} == {"dec2", "dec3"}
    for name, units in (("dec2", 16), ("dec3", 8)):
        hist = attacked.tensors[f"{name}/error_hist"]
        assert hist.numel() == units  # N_b = K when a layer has fewer units than bins
        mine = [r for r in rows if r["layer"] == name]
        assert [r["bin"] for r in mine] == torch.argsort(hist, descending=True, stable=True)[:3].tolist()
        assigned = assign_bins(units, units)
        for r in mine:
            assert r["units"] == " ".join(str(u) for u in (assigned == r["bin"]).nonzero().flatten().tolist())
            assert 0.0 <= r["mean_iou"] <= 1.0
    assert attacked.data["figure"]["layer"] == "dec2"


def test_result_saves_and_reloads(attacked: AdversarialResult, tmp_path: Path) -> None:
    attacked.save(tmp_path)
    assert (tmp_path / "figure.png").stat().st_size > 1000
    assert (tmp_path / "result.csv").read_text().startswith(("layer", "best_iou"))
    back = load_result(tmp_path)
    assert isinstance(back, AdversarialResult)
    assert back.rows() == attacked.rows()
    assert back.data["clean"] == attacked.data["clean"]
    for k, v in attacked.tensors.items():
        assert torch.equal(back.tensors[k], v.cpu()), k


@pytest.mark.parametrize("bad", [{"attack": "bim"}, {"epsilon": -0.1}, {"quantile": 1.0},
                                 {"error_threshold": 1.0}])
def test_bad_config_names_the_fix(bad: dict[str, Any]) -> None:
    with pytest.raises(DepthselError, match="must|use"):
        AdversarialAnalyzer(**bad)


# ---------------------------------------------------------------- real data
def _nyu(size: tuple[int, int]) -> Dataset[Any]:
    """Two real NYU pairs at a tiny size (skips when the data is absent, fails on CI)."""
    root = shared_data_dir("nyu2_mini_test")
    return __import__("depthsel").get_dataset("folder", root=str(root), size=size, indices=[0, 1])


@pytest.mark.realdata
def test_runs_on_real_nyu_images(trained: ToyDepthNet) -> None:
    ctx = AnalysisContext(model=trained, dataset=_nyu((48, 64)), info=INFO, batch_size=2, progress=False)
    res = AdversarialAnalyzer(epsilon=0.05, top_bins=2).run(ctx)
    assert res.data["images"] == 2
    assert math.isfinite(res.data["clean"]["rmse"]) and math.isfinite(res.data["adversarial"]["rmse"])
    assert res.tensors["figure/error"].shape == (1, 48, 64)


def test_max_images_and_figure_index_are_respected(trained: ToyDepthNet) -> None:
    res = _run(trained, max_images=4, figure_index=3)
    assert res.data["images"] == 4
    assert res.data["figure"]["index"] == 3
    assert torch.equal(res.tensors["figure/image"], ToyDepthDataset(6, seed=1)[3]["image"])
    with pytest.raises(DepthselError, match="figure_index"):
        _run(trained, figure_index=99)


def test_binner_from_a_saved_config() -> None:
    """A dissection's fitted bins (a config dict with edges) drive the error histogram."""
    from depthsel_plugins.analyses.adversarial import AdversarialAnalyzer

    fitted = {"name": "quantile", "num_bins": 4, "edges": [0.0, 1.0, 2.0, 3.0, 4.0]}
    analyzer = AdversarialAnalyzer(binner=fitted)
    assert analyzer.binner.edges.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert analyzer.binner.num_bins == 4
