"""The metric protocol registry: core "default", plugin presets, crop boxes, saved states."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import depthsel
from depthsel import hookimpl
from depthsel.metrics import DepthMetrics, compute_metrics
from depthsel.protocols import (
    DEFAULT_PROTOCOL,
    CropBox,
    MetricProtocol,
    MetricProtocolError,
    get_protocol,
    protocol_names,
)
from depthsel_plugins.protocols import EIGEN_KITTI, EIGEN_NYU, GARG_KITTI

#: The preset names before protocols became a registry: they must keep resolving.
EARLIER_PRESETS = ("default", "hu2019", "you2021", "bts", "bts_kitti", "fastdepth", "fastdepth_reference")


def test_earlier_preset_names_still_resolve_with_the_plugins_loaded() -> None:
    assert set(EARLIER_PRESETS) <= set(protocol_names())
    for name in EARLIER_PRESETS:
        assert get_protocol(name).name == name
    assert get_protocol("default") is DEFAULT_PROTOCOL


def _box(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 1500), w=st.integers(1, 1500))
def test_crop_boxes_equal_the_published_formulas(h: int, w: int) -> None:
    # The formulas as the reference code writes them (and as metrics.py did before crops were boxes).
    nyu = _box(h, w, (round(45 * h / 480), round(471 * h / 480)), (round(41 * w / 640), round(601 * w / 640)))
    kitti = _box(h, w, (int(0.3324324 * h), int(0.91351351 * h)), (int(0.0359477 * w), int(0.96405229 * w)))
    garg = _box(h, w, (int(0.40810811 * h), int(0.99189189 * h)), (int(0.03594771 * w), int(0.96405229 * w)))
    assert torch.equal(EIGEN_NYU.mask(h, w), nyu)
    assert torch.equal(EIGEN_KITTI.mask(h, w), kitti)
    assert torch.equal(GARG_KITTI.mask(h, w), garg)


def test_a_bad_crop_box_is_refused() -> None:
    with pytest.raises(MetricProtocolError, match="top < bottom"):
        CropBox("upside-down", 0.8, 0.2, 0.0, 1.0)
    with pytest.raises(MetricProtocolError, match="rounding"):
        CropBox("odd", 0.0, 1.0, 0.0, 1.0, rounding="ceil")  # type: ignore[arg-type]
    with pytest.raises(MetricProtocolError, match="CropBox"):
        MetricProtocol("named-crop", crop="eigen")  # type: ignore[arg-type]


class _Presets:
    @hookimpl
    def register_protocols(self, register):
        register("tests_top_half", lambda: MetricProtocol("tests_top_half", crop=CropBox("top", 0, 0.5, 0, 1)))
        register("tests_misnamed", lambda: MetricProtocol("something_else"))
        register("default", lambda: MetricProtocol("default", units="mm"))


def test_a_plugin_registers_a_preset_but_cannot_replace_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    label = depthsel.register_plugin(_Presets(), name="tests-presets")
    try:
        gt = torch.full((1, 1, 4, 2), 2.0)
        pred = gt.clone()
        pred[..., 2:, :] = 4.0  # wrong only in the bottom half, which the plugin's crop leaves out
        assert compute_metrics(pred, gt, protocol="tests_top_half")["rmse"] == 0.0
        assert compute_metrics(pred, gt, protocol="default")["rmse"] > 0.0
        assert get_protocol("default") is DEFAULT_PROTOCOL  # the core's, not the plugin's (mm)
        with pytest.raises(MetricProtocolError, match="not a MetricProtocol named"):
            get_protocol("tests_misnamed")
        assert "tests_top_half" in protocol_names()
    finally:
        depthsel.unregister_plugin(label)
    with pytest.raises(MetricProtocolError, match="unknown metric protocol 'tests_top_half'"):
        get_protocol("tests_top_half")


def test_a_saved_state_rebuilds_its_protocol_without_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    gt = torch.rand(2, 1, 48, 64) * 9 + 0.5
    before = DepthMetrics("bts")
    before.update(gt * 1.1, gt)
    state = json.loads(json.dumps(before.to_json()))

    def no_registry() -> None:
        raise AssertionError("a saved metric state must not need the plugin registry")

    monkeypatch.setattr("depthsel.registry.get_plugin_manager", no_registry)
    after = DepthMetrics.from_json(state)
    assert after.protocol == before.protocol and after.protocol.crop == EIGEN_NYU
    assert after.compute() == before.compute()


def test_older_states_load_or_say_why_not() -> None:
    state = DepthMetrics("default").to_json()
    state["protocol"]["crop_dataset"] = "whatever"  # older states carried it, unused without a crop
    assert DepthMetrics.from_json(state).protocol == DEFAULT_PROTOCOL
    state["protocol"]["crop"] = "eigen"
    with pytest.raises(MetricProtocolError, match="older depthsel"):
        DepthMetrics.from_json(state)
