"""Tests of the relevant-pixel mask analysis (Hu et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from datahelpers import shared_data_dir
from torch.utils.data import Dataset

from depthsel import ModelInfo
from depthsel.analysis import AnalysisContext
from depthsel.errors import DepthselError
from depthsel.results import load_result
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel_plugins.analyses.masks import (
    MaskAnalyzer,
    MaskNet,
    MaskResult,
    binarize,
    edge_mask,
    load_mask_net,
    sparseness,
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
def frozen() -> ToyDepthNet:
    torch.manual_seed(0)
    return ToyDepthNet(width=8).eval()


@pytest.fixture(scope="module")
def swept(frozen: ToyDepthNet) -> MaskResult:
    ctx = AnalysisContext(model=frozen, dataset=ToyDepthDataset(6, seed=1), info=INFO, batch_size=3, progress=False)
    return MaskAnalyzer(lambdas=[1, 5], steps=30, lr=2e-3, width=2, num_overlays=2).run(ctx)


# ------------------------------------------------------------------ helpers
def test_binarize_and_sparseness_by_hand() -> None:
    m = torch.tensor([[[[0.0, 0.02, 0.025], [0.03, 0.5, 0.0249]]]])
    b = binarize(m, 0.025)
    assert b.tolist() == [[[[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]]]  # M >= 0.025 is kept
    assert sparseness(b) == pytest.approx(3 / 6)
    assert sparseness(binarize(m, 0.6)) == 0.0


def test_edge_baseline_has_the_requested_sparsity() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 20, 24, generator=g)
    counts = torch.tensor([0, 7, 311])
    e = edge_mask(image, counts)
    assert e.shape == (3, 1, 20, 24)
    assert e.flatten(1).sum(1).tolist() == counts.tolist()  # exactly k pixels, within 0 of the request
    assert set(e.unique().tolist()) <= {0.0, 1.0}


def test_edge_baseline_selects_the_edge() -> None:
    image = torch.zeros(1, 3, 10, 10)
    image[..., 5:] = 1.0  # a vertical step between columns 4 and 5
    e = edge_mask(image, [20])[0, 0]
    assert e[:, 4:6].sum() == 20  # the two columns on either side of the step
    assert e[:, :4].sum() == 0 and e[:, 6:].sum() == 0  # the frame border is not an edge


def test_mask_net_shape_and_range() -> None:
    torch.manual_seed(0)
    net = MaskNet(width=2).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 30, 45))  # sizes not divisible by the output stride 8
    assert out.shape == (2, 1, 30, 45)
    assert float(out.min()) > 0 and float(out.max()) < 1
    with pytest.raises(DepthselError, match="width"):
        MaskNet(width=0)


# ---------------------------------------------------------------- analysis
def test_training_loss_decreases(swept: MaskResult) -> None:
    for lam in (1, 5):
        curve = swept.tensors[f"loss/lambda={lam}"]
        assert curve.numel() == 30
        assert curve[-5:].mean() < 0.7 * curve[:5].mean()


def test_table_sparseness_matches_the_stored_masks(swept: MaskResult, frozen: ToyDepthNet) -> None:
    rows = {r["lambda"]: r for r in swept.rows()}
    assert set(rows) == {1.0, 5.0}
    data = ToyDepthDataset(6, seed=1)
    x = INFO.normalize(data.image)
    for lam, row in rows.items():
        with torch.no_grad():
            mask = load_mask_net(swept, lam)(x)
        assert row["sparseness"] == pytest.approx(sparseness(binarize(mask, 0.025)), abs=1e-9)
        assert torch.allclose(swept.tensors[f"overlay/lambda={lam:g}"], mask[:2])
        for key in ("rmse_mask", "rmse_binary", "rmse_edge", "rmse_full"):
            assert math.isfinite(row[key]) and row[key] > 0
    # A larger sparsity weight keeps fewer pixels.
    assert rows[5.0]["sparseness"] < rows[1.0]["sparseness"]
    # The full-image RMSE does not depend on lambda.
    assert rows[1.0]["rmse_full"] == rows[5.0]["rmse_full"]


def test_frozen_network_is_untouched(frozen: ToyDepthNet, swept: MaskResult) -> None:
    torch.manual_seed(0)
    fresh = ToyDepthNet(width=8)
    for (name, p), q in zip(frozen.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
        assert p.requires_grad  # flags are restored after the run
    assert not frozen.training


def test_result_saves_and_reloads(swept: MaskResult, tmp_path: Path) -> None:
    swept.save(tmp_path)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["lambda=1.png", "lambda=5.png"]
    back = load_result(tmp_path)
    assert isinstance(back, MaskResult)
    assert back.rows() == swept.rows()
    for k, v in swept.tensors.items():
        assert torch.equal(back.tensors[k], v), k
    net = load_mask_net(back, 5)
    assert isinstance(net, MaskNet)
    with pytest.raises(DepthselError, match="lambda"):
        load_mask_net(back, 3)


@pytest.mark.parametrize("bad", [{"lambdas": []}, {"lambdas": [1, 1]}, {"threshold": 0.0}, {"steps": 0}])
def test_bad_config_names_the_fix(bad: dict[str, Any]) -> None:
    with pytest.raises(DepthselError, match="must"):
        MaskAnalyzer(**bad)


# ---------------------------------------------------------------- real data
def _nyu(size: tuple[int, int]) -> Dataset[Any]:
    """Two real NYU pairs at a tiny size (skips when the data is absent, fails on CI)."""
    root = shared_data_dir("nyu2_mini_test")
    return __import__("depthsel").get_dataset("folder", root=str(root), size=size, indices=[0, 1])


@pytest.mark.realdata
def test_runs_on_real_nyu_images(frozen: ToyDepthNet) -> None:
    ctx = AnalysisContext(model=frozen, dataset=_nyu((48, 64)), info=INFO, batch_size=2, progress=False)
    res = MaskAnalyzer(lambdas=[5], steps=3, lr=1e-3, width=2, num_overlays=1).run(ctx)
    row = res.rows()[0]
    assert 0.0 <= row["sparseness"] <= 1.0
    assert math.isfinite(row["rmse_binary"]) and res.data["full"]["images"] == 2
    assert res.tensors["overlay/lambda=5"].shape == (1, 1, 48, 64)


def test_same_seed_same_result(frozen: ToyDepthNet) -> None:
    def once() -> MaskResult:
        ctx = AnalysisContext(model=frozen, dataset=ToyDepthDataset(4, seed=1), info=INFO, batch_size=2,
                              progress=False, seed=7)
        return MaskAnalyzer(lambdas=[2], steps=3, lr=1e-3, width=2, num_overlays=0).run(ctx)

    a, b = once(), once()
    assert a.rows() == b.rows()
    assert torch.equal(a.tensors["loss/lambda=2"], b.tensors["loss/lambda=2"])
    assert "overlay/image" not in a.tensors
