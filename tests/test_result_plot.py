"""``Result.plot(ax=None, **options)`` returns a Figure for every result kind; ``save_figures`` writes them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import depthsel
from depthsel.errors import DepthselError
from depthsel.figures import pyplot
from depthsel.results import _REGISTRY, Result, load_result
from depthsel.testing import ToyDepthNet, toy_batch
from depthsel_plugins.analyses.ablation import METRICS, ORDERS, AblationResult
from depthsel_plugins.analyses.correction import CorrectionResult
from depthsel_plugins.analyses.probe_result import ProbeResult


class _Plain(Result):
    kind = "plain-test-result"


def _dissection() -> Result:
    torch.manual_seed(0)
    return depthsel.dissect(ToyDepthNet(width=4).eval(), toy_batch(4, (32, 32), seed=1), layers="dec3",
                            normalization="unit",
                            binner={"name": "uniform", "num_bins": 4, "min_depth": 0.0, "max_depth": 10.0})


def _ablation() -> AblationResult:
    steps = torch.tensor([0.0, 2.0, 4.0])
    tensors = {"l/steps": steps, **{f"l/{o}": torch.rand(3, len(METRICS), dtype=torch.float64) for o in ORDERS}}
    tensors["l/random_runs"] = torch.rand(2, 3, len(METRICS), dtype=torch.float64)
    return AblationResult(tensors=tensors, data={"layers": ["l"]})


def _correction() -> CorrectionResult:
    metrics = {"delta1": 0.8, "rmse": 0.5, "abs_rel": 0.1}
    return CorrectionResult(data={"clean": metrics, "corrected": {"all": {**metrics, "delta1": 0.9}}})


def _probe() -> ProbeResult:
    m = {"r2": 0.5, "rmse": 0.4, "delta1": 0.7, "abs_rel": 0.1}
    return ProbeResult(data={"label": "toy", "layers": ["a", "b"], "metrics": {"a": m, "b": {**m, "r2": 0.8}},
                             "constant": {**m, "r2": 0.0}})


def test_every_result_kind_has_the_one_plot_signature() -> None:
    import importlib

    from depthsel_plugins.analyses import _SUBMODULES

    for name in _SUBMODULES:  # a result class registers its kind when its module is imported
        importlib.import_module(f"depthsel_plugins.analyses.{name}")
    kinds = {cls.kind: cls for cls in _REGISTRY.values() if cls is not _Plain}
    assert {"dissection", "ablation", "correction", "probe", "adversarial", "masks"} <= set(kinds)
    for cls in kinds.values():
        params = list(inspect.signature(cls.plot).parameters.values())
        assert [p.name for p in params[:2]] == ["self", "ax"], cls
        assert params[1].default is None, cls
        # Everything after ax is a keyword option: no second positional meaning (a path) can return.
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[2:]), cls


def test_base_result_has_nothing_to_plot_and_says_where_files_come_from(tmp_path: Path) -> None:
    plain = _Plain(data={"x": 1})
    with pytest.raises(DepthselError, match="nothing to plot"):
        plain.plot()
    with pytest.raises(DepthselError, match="save_figures"):
        plain.plot(tmp_path / "figs")  # the old plot(out_dir) call
    assert plain.figures() == {} and plain.save_figures(tmp_path / "figs") == []
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("make, one_panel", [
    (_dissection, {}), (_dissection, {"unit": 1}), (_ablation, {"metric": "rmse"}),
    (_correction, {"metric": "delta1"}), (_probe, {"metric": "r2"}),
])
def test_plot_returns_a_figure_and_draws_into_a_given_axes(make, one_panel: dict) -> None:
    plt = pyplot()
    result = make()
    fig = result.plot(**one_panel)
    assert fig.axes and fig.axes[0].has_data()
    plt.close(fig)
    own, ax = plt.subplots()
    assert result.plot(ax, **one_panel) is own
    assert ax.has_data()
    plt.close(own)


@pytest.mark.parametrize("make", [_ablation, _correction, _probe])
def test_a_figure_of_several_panels_refuses_one_axes(make) -> None:
    plt = pyplot()
    result = make()
    fig = result.plot()
    assert len([a for a in fig.axes if a.has_data()]) == 3
    plt.close(fig)
    own, ax = plt.subplots()
    with pytest.raises(DepthselError, match="metric="):
        result.plot(ax)
    plt.close(own)


def test_save_figures_writes_what_figures_lists_and_survives_a_reload(tmp_path: Path) -> None:
    for result in (_ablation(), _correction(), _probe()):
        back = load_result(result.save(tmp_path / result.kind))
        paths = back.save_figures(tmp_path / result.kind / "figures")
        assert sorted(p.name for p in paths) == sorted(back.figures())
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
