"""Metric protocols against hand-computed values, streaming invariance, per-bin metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthsel.metrics import (
    DepthMetrics,
    MetricProtocol,
    MetricProtocolError,
    compute_metrics,
    get_protocol,
    metrics_by_bin,
)
from depthsel.protocols import crop_mask
from depthsel_plugins.protocols import EIGEN_NYU


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[:, None, None, :]  # [B,1,1,W]


def test_delta_strict_vs_inclusive_at_exact_ratio() -> None:
    gt, pred = _t([[4.0]]), _t([[5.0]])  # 5/4 == 1.25 exactly in binary floating point
    assert compute_metrics(pred, gt, protocol="default")["delta1"] == 0.0
    assert compute_metrics(pred, gt, protocol="you2021")["delta1"] == 0.0
    assert compute_metrics(pred, gt, protocol="hu2019")["delta1"] == 1.0


def test_per_image_vs_pooled() -> None:
    # Image 0: one valid pixel, error 1 m at gt 2. Image 1: three exact pixels.
    gt = _t([[2.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    pred = _t([[3.0, 9.0, 9.0], [2.0, 2.0, 2.0]])
    pooled = compute_metrics(pred, gt, protocol="default")
    hu = compute_metrics(pred, gt, protocol="hu2019")
    you = compute_metrics(pred, gt, protocol="you2021")
    assert pooled["abs_rel"] == pytest.approx(0.5 / 4)
    assert pooled["rmse"] == pytest.approx(math.sqrt(1 / 4))
    assert hu["abs_rel"] == pytest.approx((0.5 + 0) / 2)
    assert hu["rmse"] == pytest.approx(math.sqrt((1.0 + 0.0) / 2))  # mean MSE, then sqrt
    assert you["rmse"] == pytest.approx((1.0 + 0.0) / 2)  # mean of per-image RMSE
    assert pooled["count"] == hu["count"] == 4 and hu["images"] == 2
    assert {pooled["protocol"], hu["protocol"], you["protocol"]} == {"default", "hu2019", "you2021"}


def test_depth_cap() -> None:
    gt, pred = _t([[2.0, 12.0]]), _t([[2.0, 2.0]])
    you = compute_metrics(pred, gt, protocol="you2021")
    hu = compute_metrics(pred, gt, protocol="hu2019")
    assert you["count"] == 1 and you["rmse"] == 0.0
    assert hu["count"] == 2 and hu["rmse"] == pytest.approx(math.sqrt(100 / 2))
    # BTS keeps gt < 10 strictly and clamps predictions into [1e-3, 10].
    bts_gt = torch.full((1, 1, 480, 640), 10.0)
    bts_gt[..., 240, 320] = 5.0
    bts = compute_metrics(torch.full_like(bts_gt, 50.0), bts_gt, protocol="bts")
    assert bts["count"] == 1 and bts["rmse"] == pytest.approx(5.0)


def test_eigen_crop() -> None:
    gt = torch.full((1, 1, 480, 640), 3.0)
    pred = gt.clone()
    pred[..., :45, :] = 6.0  # only outside the NYU Eigen crop rows 45:471
    assert compute_metrics(pred, gt, protocol="bts")["rmse"] == 0.0
    assert compute_metrics(pred, gt, protocol="you2021")["rmse"] > 0.0
    m = crop_mask(EIGEN_NYU, 480, 640)
    assert int(m.sum()) == (471 - 45) * (601 - 41) and bool(m[45, 41]) and not bool(m[44, 41])
    assert compute_metrics(pred, gt, protocol="bts")["count"] == (471 - 45) * (601 - 41)


def test_fastdepth_units_and_reference_bug() -> None:
    gt, pred = _t([[2.0, 0.0]]), _t([[2.5, 1.0]])
    fixed = compute_metrics(pred, gt, protocol="fastdepth")
    assert fixed["rmse"] == pytest.approx(500.0) and fixed["mae"] == pytest.approx(500.0)
    assert fixed["abs_rel"] == pytest.approx(0.25) and fixed["count"] == 1
    ref = compute_metrics(pred, gt, protocol="fastdepth_reference")
    assert ref["count"] == 2  # the pixel without ground truth counts: (gt>0) OR (pred>0)
    assert math.isinf(ref["abs_rel"])
    assert ref["rmse"] == pytest.approx(math.sqrt((500.0**2 + 1000.0**2) / 2))
    assert "bug" in get_protocol("fastdepth_reference").description


def test_prediction_is_upsampled_to_gt() -> None:
    gt = torch.full((2, 1, 8, 8), 3.0)
    out = compute_metrics(torch.full((2, 1, 4, 4), 3.0), gt)
    assert out["rmse"] == pytest.approx(0.0, abs=1e-9) and out["count"] == 128


def test_protocol_errors() -> None:
    with pytest.raises(MetricProtocolError, match="did you mean 'hu2019'"):
        get_protocol("hu2018")
    with pytest.raises(MetricProtocolError, match="reduction"):
        MetricProtocol(reduction="batch")  # type: ignore[arg-type]
    with pytest.raises(MetricProtocolError, match="merge"):
        DepthMetrics("hu2019").merge(DepthMetrics("bts"))


_PROTOCOLS = ["default", "hu2019", "you2021", "bts", "fastdepth"]


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 6), max_size=4),
    seed=st.integers(0, 10_000),
    proto=st.sampled_from(_PROTOCOLS),
)
def test_accumulator_invariant_to_batch_split(b: int, cuts: list[int], seed: int, proto: str) -> None:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 1, 12, 16, generator=g) * 12
    gt[torch.rand(gt.shape, generator=g) < 0.3] = 0.0
    gt[0, 0, 6, 8] = 2.0  # at least one valid pixel inside every crop and cap
    pred = gt + torch.randn(gt.shape, generator=g) * 0.5
    valid = gt > 0
    whole = DepthMetrics(proto)
    whole.update(pred, gt, valid)
    bounds = sorted({0, b, *[min(c, b) for c in cuts]})
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        m = DepthMetrics(proto)
        m.update(pred[lo:hi], gt[lo:hi], valid[lo:hi])
        parts.append(m)
    merged = DepthMetrics(proto)
    for m in parts:
        merged.merge(json.loads(json.dumps(m.to_json())))  # state survives JSON
    streamed = DepthMetrics(proto)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        streamed.update(pred[lo:hi], gt[lo:hi], valid[lo:hi])
    ref = whole.compute()
    for other in (merged.compute(), streamed.compute()):
        assert other.keys() == ref.keys()
        for k, v in ref.items():
            if isinstance(v, str):
                assert other[k] == v
            else:
                assert other[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), k


def test_reset_and_from_state_dict() -> None:
    m = DepthMetrics("you2021")
    m.update(_t([[2.0]]), _t([[3.0]]))
    again = DepthMetrics.from_json(m.to_json())
    assert again.compute() == m.compute()
    m.reset()
    assert m.compute()["count"] == 0 and math.isnan(m.compute()["rmse"])


def test_metrics_by_bin_sums_back_to_pooled() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 1, 20, 20, generator=g) * 9 + 0.5
    gt[:, :, :2] = 0.0
    pred = gt * (1 + 0.1 * torch.randn(gt.shape, generator=g))
    edges = torch.tensor([0.0, 1.0, 2.5, 5.0, 10.0], dtype=torch.float64)
    rows = metrics_by_bin(pred, gt, edges)
    pooled = compute_metrics(pred, gt)
    assert sum(r["count"] for r in rows) == pooled["count"]
    total_abs = sum(r["mae"] * r["count"] for r in rows if r["count"])
    assert total_abs == pytest.approx(pooled["mae"] * pooled["count"], rel=1e-9)
    total_d1 = sum(r["delta1"] * r["count"] for r in rows if r["count"])
    assert total_d1 == pytest.approx(pooled["delta1"] * pooled["count"], rel=1e-9)
    assert [r["low"] for r in rows] == [0.0, 1.0, 2.5, 5.0] and rows[0]["protocol"] == "default"


def test_metrics_by_bin_is_right_closed() -> None:
    gt, pred = _t([[1.0, 2.0, 2.0001]]), _t([[1.0, 2.0, 2.0001]])
    rows = metrics_by_bin(pred, gt, torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64))
    assert [r["count"] for r in rows] == [1, 1, 1]
    empty = metrics_by_bin(pred, gt, torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert empty[0]["count"] == 0 and math.isnan(empty[0]["rmse"])
