"""Unit tests of the example plugin, with depthsel.testing and no installation needed."""

from __future__ import annotations

import torch

import depthsel_plugin_example.hooks as hooks
from depthsel.analysis import AnalysisContext
from depthsel.testing import isolated_plugins, toy_batch


def test_registers_everything() -> None:
    pm = isolated_plugins(hooks)
    assert all(s.ok for s in pm.statuses())
    assert set(pm.entries("binners")) == {"inverse"}
    assert set(pm.entries("analyzers")) == {"unit-stats"}
    assert pm.entry("models", "example-tiny").info.input_size == (32, 32)


def test_inverse_bins_are_uniform_in_inverse_depth() -> None:
    binner = isolated_plugins(hooks).create("binners", "inverse", num_bins=8)
    steps = torch.diff(1.0 / binner.edges)
    assert torch.allclose(steps, steps[0].expand_as(steps))
    assert binner.with_num_bins(4).num_bins == 4


def test_unit_stats_runs() -> None:
    pm = isolated_plugins(hooks)
    model = pm.create("models", "example-tiny")
    image, depth = toy_batch(4, (32, 32))
    data = [{"image": i, "depth": d, "valid": d > 0, "name": str(n)}
            for n, (i, d) in enumerate(zip(image, depth))]
    ctx = AnalysisContext(model=model, dataset=data, info=pm.entry("models", "example-tiny").info)
    result = pm.create("analyzers", "unit-stats").run(ctx)
    assert result.tensors["features/mean"].shape == (16,)
    assert result.data["layers"]["decoder"]["units"] == 8
