"""Tests of the ``correction`` (oracle, You Sec. 5.2) and ``ablation`` (You Fig. 2) analyzers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from depthsel import get_analyzer
from depthsel.analysis import AnalysisContext
from depthsel.capture import Capture
from depthsel.data import collate
from depthsel.results import load_result
from depthsel_plugins.analyses.ablation import AblationResult, ablation_steps
from depthsel_plugins.analyses.correction import CorrectionResult, correct_activations, nearest_bins
from depthsel_plugins.analyses.dissection import DissectionAnalyzer
from depthsel.hooks import replace_outputs as output_hooks
from depthsel_plugins.analyses.interventions import OracleWarning

# Reuse the fixtures of the dissection tests (tests have no __init__.py).
_spec = importlib.util.spec_from_file_location("_dissection_tests",
                                               Path(__file__).with_name("test_dissection.py"))
assert _spec is not None and _spec.loader is not None
_dt = importlib.util.module_from_spec(_spec)
sys.modules["_dissection_tests"] = _dt
_spec.loader.exec_module(_dt)
UNIT, toy_dataset, toy_model, nyu_dataset = _dt.UNIT, _dt.toy_dataset, _dt.toy_model, _dt.nyu_dataset


def ctx_for(model: Any, ds: Any, layers: list[str]) -> AnalysisContext:
    return AnalysisContext(model=model, dataset=ds, info=UNIT, layers=layers, batch_size=4, progress=False)


def nearest_responses(act: torch.Tensor, bins: torch.Tensor, nb: int) -> torch.Tensor:
    """Per-unit mean of ``act`` per bin at feature resolution (NaN where a bin is empty)."""
    k = act.shape[1]
    a = act.permute(1, 0, 2, 3).reshape(k, -1).double()
    b = bins.reshape(-1)
    ok = b >= 0
    sums = torch.zeros(k, nb, dtype=torch.float64).index_add_(1, b[ok], a[:, ok])
    counts = torch.bincount(b[ok], minlength=nb).double()
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))


def corrected_layer_output(model: Any, ds: Any, layer: str,
                           fn: Any | None) -> tuple[torch.Tensor, dict[str, Any]]:
    batch = collate([ds[i] for i in range(len(ds))])
    with output_hooks(model, {layer: fn} if fn is not None else {}), Capture(model, [layer]) as cap:
        with torch.no_grad():
            model(batch["image"])
        return cap.outputs[layer], batch


# ------------------------------------------------------------------ correction
def test_correction_makes_layer_exactly_consistent_with_R() -> None:
    model, ds = toy_model(), toy_dataset(6)
    layer = "dec2.0"  # signed conv output at half resolution: alignment matters
    dis = DissectionAnalyzer(permutations=0, binner={"name": "sid", "num_bins": 16}, split="train").run(
        ctx_for(model, ds, [layer]))
    analyzer = get_analyzer("correction", dissection=None)
    r = dis.responses(layer, mode="signed")
    binner = dis.binner(layer)
    state: dict[str, Any] = {}
    fn = analyzer.hooks(dis, [layer], state)[layer]
    before, batch = corrected_layer_output(model, ds, layer, None)
    state.update(depth=batch["depth"], valid=batch["valid"])
    after, _ = corrected_layer_output(model, ds, layer, fn)
    bins = nearest_bins(binner, batch["depth"], batch["valid"], tuple(before.shape[-2:]))
    known = ~torch.isnan(r)
    r_before = nearest_responses(before, bins, binner.num_bins)
    r_after = nearest_responses(after, bins, binner.num_bins)
    cmp = known & ~torch.isnan(r_after)
    assert int(cmp.sum()) > 0
    mse_before = float(((r_before - r)[cmp] ** 2).mean())
    mse_after = float(((r_after - r)[cmp] ** 2).mean())
    assert mse_after <= mse_before and mse_before > 0
    # Re-dissecting the corrected output gives exactly R in every bin.
    torch.testing.assert_close(r_after[cmp], r[cmp], rtol=1e-6, atol=1e-7)
    # Invalid pixels keep their activation.
    invalid = (bins < 0).unsqueeze(1).expand_as(before)
    assert torch.equal(after[invalid], before[invalid])


def test_correct_activations_keeps_unknown_bins_and_invalid_pixels() -> None:
    act = torch.arange(2 * 2 * 2, dtype=torch.float32).view(1, 2, 2, 2)
    bins = torch.tensor([[[0, 1], [-1, 2]]])
    r = torch.tensor([[10.0, 11.0, float("nan")], [20.0, 21.0, float("nan")]])
    out = correct_activations(act, bins, r)
    assert out[0, 0].tolist() == [[10.0, 11.0], [2.0, 3.0]]
    assert out[0, 1].tolist() == [[20.0, 21.0], [6.0, 7.0]]


def test_nearest_bins_match_nearest_resampled_gt() -> None:
    depth = torch.linspace(0.5, 9.5, 64).view(1, 1, 8, 8)
    binner = __import__("depthsel").get_binner("uniform", num_bins=10, min_depth=0.0, max_depth=10.0)
    got = nearest_bins(binner, depth, depth > 0, (4, 4))
    assert torch.equal(got, binner(F.interpolate(depth, size=(4, 4), mode="nearest")))


def test_correction_result_is_labelled_oracle_and_reloads(tmp_path: Path) -> None:
    model, ds = toy_model(), toy_dataset(4)
    with pytest.warns(OracleWarning, match="same images"):
        res = get_analyzer("correction").run(ctx_for(model, ds, ["dec2", "dec3"]))
    assert isinstance(res, CorrectionResult)
    assert res.data["oracle"] is True and "ORACLE" in res.summary()["note"]
    assert set(res.data["corrected"]) == {"all", "dec2", "dec3"}
    # The clean row equals a plain evaluation; correction changes the prediction.
    assert res.data["clean"]["rmse"] != res.data["corrected"]["all"]["rmse"]
    path = tmp_path / "dis"
    DissectionAnalyzer(permutations=0, split="train").run(ctx_for(model, ds, ["dec3"])).save(path)
    stored = get_analyzer("correction", dissection=str(path)).run(ctx_for(model, ds, ["dec3"]))
    assert "stored dissection" in stored.data["dissection_source"]
    back = load_result(stored.save(tmp_path / "c"))
    assert isinstance(back, CorrectionResult) and back.rows() == stored.rows()
    with pytest.raises(__import__("depthsel").DepthselError, match="no layer"):
        get_analyzer("correction", dissection=str(path)).run(ctx_for(model, ds, ["dec2"]))


# -------------------------------------------------------------------- ablation
def test_ablation_steps() -> None:
    assert ablation_steps(10, None, 4) == [0, 4, 8, 10]
    assert ablation_steps(10, 5, 1) == [0, 1, 2, 3, 4, 5]


def test_ablation_curves(tmp_path: Path) -> None:
    model, ds = toy_model(), toy_dataset(4)
    with pytest.warns(OracleWarning):
        res = get_analyzer("ablation", step=3, seeds=2).run(ctx_for(model, ds, ["dec3"]))
    assert isinstance(res, AblationResult)
    clean = res.data["clean"]
    steps = res.tensors["dec3/steps"]
    assert steps.tolist() == [0, 3, 6, 8]
    for order in ("most_selective_first", "least_selective_first", "random"):
        curve = res.tensors[f"dec3/{order}"]
        # Zero units ablated changes nothing.
        assert curve[0].tolist() == [clean["delta1"], clean["rmse"], clean["abs_rel"]]
    # Ablating every unit is the same set whatever the order.
    last = res.tensors["dec3/most_selective_first"][-1]
    assert torch.equal(res.tensors["dec3/least_selective_first"][-1], last)
    assert torch.equal(res.tensors["dec3/random"][-1], last)
    assert float(last[1]) != pytest.approx(clean["rmse"], rel=1e-6)
    ds_units = res.tensors["dec3/ds"]
    order = res.tensors["dec3/order/most_selective_first"]
    assert bool((ds_units[order][:-1] >= ds_units[order][1:]).all())
    assert res.tensors["dec3/random_runs"].shape == (2, 4, 3)
    back = load_result(res.save(tmp_path / "a"))
    assert isinstance(back, AblationResult)
    assert all(p.stat().st_size > 1000 for p in back.save_figures(tmp_path / "plots"))


def test_ablating_all_units_changes_output() -> None:
    model, ds = toy_model(), toy_dataset(2)
    x = collate([ds[0], ds[1]])["image"]
    with torch.no_grad():
        clean = model(x)
        with output_hooks(model, {"dec3": lambda a: a * 0}):
            ablated = model(x)
        with output_hooks(model, {"dec3": lambda a: a * torch.ones(a.shape[1]).view(1, -1, 1, 1)}):
            none = model(x)
    assert torch.equal(none, clean)
    assert not torch.allclose(ablated, clean)


# ------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_correction_and_ablation_on_real_nyu(tmp_path: Path) -> None:
    ds, model = nyu_dataset(), toy_model()
    ctx = ctx_for(model, ds, ["dec3"])
    dis = DissectionAnalyzer(permutations=0, split="train").run(ctx)
    dis.save(tmp_path / "d")
    cor = get_analyzer("correction", dissection=str(tmp_path / "d")).run(ctx)
    assert cor.data["clean"]["count"] > 0
    assert cor.data["corrected"]["all"]["count"] == cor.data["clean"]["count"]
    abl = get_analyzer("ablation", dissection=str(tmp_path / "d"), step=4, seeds=1).run(ctx)
    assert abl.tensors["dec3/most_selective_first"][0, 1] == pytest.approx(abl.data["clean"]["rmse"])
