"""Dissection figures: files in unit order, dead units marked, depth in metres on the heatmap."""

from __future__ import annotations

from pathlib import Path

import torch

import depthsel
from depthsel.testing import ToyDepthNet, toy_batch
from depthsel_plugins.analyses.dissection_plots import _mark_dead_units
from depthsel_plugins.analyses.figures import pyplot


def test_figures_sort_in_unit_order_and_dead_units_are_marked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=8).eval()  # dec2: 16 units
    with torch.no_grad():  # silence two units of dec2 (conv -> BN -> ReLU): they never fire
        model.dec2[1].weight[:2] = 0
        model.dec2[1].bias[:2] = -1
    res = depthsel.dissect(model, toy_batch(4, (32, 32), seed=1), layers="dec2", normalization="unit",
                           binner={"name": "uniform", "num_bins": 4, "min_depth": 0.0, "max_depth": 10.0})
    dead = res.get("dec2", "dead")
    assert dead[:2].all() and res.summary()["splits"]["test"]["dec2"]["dead_units"] == int(dead.sum())
    paths = res.save_figures(tmp_path, units=[2, 10, 5])
    names = sorted(p.name for p in paths if "unit" in p.name)
    assert names == ["test_dec2_unit002.png", "test_dec2_unit005.png", "test_dec2_unit010.png"]
    # A dead unit's curve says it is dead instead of showing a flat line as if measured.
    plt = pyplot()
    titles = []
    for unit in (0, 5):
        fig = res.plot(layer="dec2", unit=unit)
        titles.append(fig.axes[0].get_title())
        plt.close(fig)
    assert "DEAD" in titles[0] and "DEAD" not in titles[1] and "DS=" in titles[1]
    fig, ax = plt.subplots()
    ax.imshow(torch.zeros(16, 4).numpy())
    order = list(range(16))
    assert _mark_dead_units(ax, order, dead) == int(dead.sum())
    red = [t.get_text() for t in ax.get_yticklabels() if t.get_color() == "tab:red"]
    assert red[:2] == ["0 (dead)", "1 (dead)"]
    plt.close(fig)
