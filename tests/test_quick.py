"""The one-call API on any nn.Module: layers, dissect, correct, ablate."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import depthsel
from depthsel.errors import BinCountError, LayerNotFoundError
from depthsel.testing import assert_no_hooks, toy_batch

ROOT = Path(__file__).resolve().parents[1]


def _unet() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("depthsel_tests_my_unet", ROOT / "examples" / "my_unet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    return module.UNet(base=4)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return toy_batch(batch=4, size=(32, 32), seed=3)


def test_layers_table_has_shapes_and_units() -> None:
    model = _unet()
    table = depthsel.layers(model, (32, 48))
    rows = {r["name"]: r for r in table}
    assert rows["up1"]["shape"] == [1, 4, 32, 48] and rows["up1"]["units"] == 4
    assert rows["bottom"]["shape"] == [1, 16, 8, 12]
    assert "up1" in str(table) and "units" in str(table).splitlines()[0]
    assert depthsel.layers(model, 32, pattern=["up1", "head"]).names() == ["up1", "head"]
    with pytest.raises(LayerNotFoundError, match="matched no module"):
        depthsel.layers(model, 32, pattern="nothing*")
    assert_no_hooks(model)


def test_dissect_correct_ablate_in_one_call_each(data, tmp_path: Path) -> None:
    model = _unet()
    binner = {"name": "uniform", "num_bins": 4, "min_depth": 0.0, "max_depth": 10.0}
    res = depthsel.dissect(model, data, layers="up1", binner=binner, normalization="unit")
    layer = res.summary()["splits"]["test"]["up1"]
    assert set(layer) >= {"argmax_ds", "target_ds", "peak_on_target", "dead_units"}
    # Same numbers as the analyzer run by hand through an AnalysisContext.
    from depthsel.analysis import AnalysisContext
    from depthsel.quick import TensorPairs

    ctx = AnalysisContext(model=model, dataset=TensorPairs(*data), layers=["up1"], progress=False,
                          info=depthsel.ModelInfo(input_size=(32, 32), normalization="unit"))
    ref = depthsel.get_analyzer("dissection", binner=binner, permutations=0).run(ctx)
    torch.testing.assert_close(res.get("up1", "R"), ref.get("up1", "R"), equal_nan=True)
    figs = res.save_figures(tmp_path / "figs")
    assert figs and all(p.is_file() and p.stat().st_size > 0 for p in figs)
    rows = list(csv.DictReader(res.to_csv(tmp_path / "units.csv").open()))
    assert len(rows) == 4 and rows[0]["layer"] == "up1"
    with pytest.warns(UserWarning):  # the oracle warning: no held-out dissection given
        cor = depthsel.correct(model, data, layers="up1", binner=binner, normalization="unit")
    assert {r["condition"] for r in cor.summary()["rows"]} == {"clean", "all"}
    abl = depthsel.ablate(model, data, layers="up1", dissection=res, normalization="unit", step=2, seeds=1)
    steps = abl.tensors["up1/steps"].tolist()
    assert steps[0] == 0 and steps[-1] == 4
    assert_no_hooks(model)


def test_fewer_units_than_bins_needs_a_stated_choice(data) -> None:
    model = _unet()
    binner = {"name": "uniform", "num_bins": 8, "min_depth": 0.0, "max_depth": 10.0}
    with pytest.raises(BinCountError, match="fit_bins_to_units=true"):
        depthsel.dissect(model, data, layers="up1", binner=binner, normalization="unit",
                         fit_bins_to_units=False)
    fitted = depthsel.dissect(model, data, layers="up1", binner=binner, normalization="unit")
    assert fitted.data["binners"]["up1"]["num_bins"] == 4
    assert fitted.get("up1", "assigned").tolist() == [0, 1, 2, 3]


def test_bad_data_is_a_clear_error() -> None:
    with pytest.raises(depthsel.DepthselError, match=r"\[N, H, W\]"):
        depthsel.dissect(_unet(), (torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8)), layers="up1")


def test_layer_not_found_hint_works_for_unregistered_models() -> None:
    with pytest.raises(LayerNotFoundError) as info:
        depthsel.dissect(_unet(), toy_batch(batch=1, size=(16, 16)), layers="upp1", normalization="unit")
    msg = str(info.value)
    assert "up1" in msg  # the closest real name
    assert "depthsel.layers(model, input_size)" in msg and "path/to/file.py:Factory" in msg


def test_a_stored_mismatched_dissection_is_refused(data) -> None:
    # A result as older versions wrote it: bins not fitted, no explicit assignment, K < Nb.
    model = _unet()
    binner = {"name": "uniform", "num_bins": 8, "min_depth": 0.0, "max_depth": 10.0}
    res = depthsel.dissect(model, data, layers="up1", binner=binner, normalization="unit",
                           fit_bins_to_units=False, assignment={"up1": [0, 1, 2, 3]})
    res.config["assignment"] = None  # what the old default recorded
    with pytest.raises(BinCountError, match="bins 0..3 of 8"):
        depthsel.ablate(model, data, layers="up1", dissection=res, normalization="unit", step=4, seeds=1)
    res.config["assignment"] = "inline"  # stated explicitly: the user's choice, accepted
    depthsel.ablate(model, data, layers="up1", dissection=res, normalization="unit", step=4, seeds=1)


def test_dissect_is_the_one_call_function_and_layers_a_callable_module() -> None:
    import importlib
    import types

    import depthsel.layers as layers_module
    from depthsel import layertable, quick

    # depthsel.dissect is only the one-call function: no module shares its name any more
    # (the streaming statistics live in depthsel.responses).
    assert depthsel.dissect is quick.dissect
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("depthsel.dissect")
    # The layers submodule keeps its contents, and calling it runs the one-call function.
    assert isinstance(depthsel.layers, types.ModuleType) and depthsel.layers is layers_module
    assert hasattr(layers_module, "LayerSelector")
    assert depthsel.layers._call_target is layertable.layers
