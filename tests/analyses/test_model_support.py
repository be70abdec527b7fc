"""Every analyzer takes dict and tuple model outputs (one rule) and token layers (adapters)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from depthsel import ModelInfo, TokenGridAdapter, get_analyzer
from depthsel.analysis import AnalysisContext
from depthsel.errors import ActivationShapeError
from depthsel.testing import ToyDepthDataset, ToyDepthNet, assert_no_hooks
from depthsel.modelinfo import select_prediction

UNIT = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec3",))
FAST = {
    "dissection": {"permutations": 0, "binner": {"name": "uniform", "num_bins": 4, "max_depth": 10.0}},
    "correction": {"binner": {"name": "uniform", "num_bins": 4, "max_depth": 10.0}},
    "ablation": {"binner": {"name": "uniform", "num_bins": 4, "max_depth": 10.0}, "step": 4, "seeds": 1},
    "adversarial": {"num_bins": 4, "steps": 1},
    "masks": {"lambdas": [1], "steps": 2, "width": 2, "num_overlays": 1},
    "probe": {"pixels_per_image": 50},
}


class Wrapped(nn.Module):
    """ToyDepthNet whose forward returns a dict or a tuple, as many real models do."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = ToyDepthNet(width=4)
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Any:
        depth = self.net(x)
        if self.kind == "dict":
            return {"aux": depth.detach() * 0, "depth": depth}
        return (depth, depth.detach() * 0)


def test_select_prediction_rule() -> None:
    t = torch.ones(1, 2, 2)
    assert select_prediction(t) is t
    assert select_prediction((t, None)) is t
    assert select_prediction({"aux": t * 0, "depth": t}) is t
    assert select_prediction({"pred": t}, key="pred") is t
    with pytest.raises(Exception, match="output_key"):
        select_prediction({"pred": t})


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("name", sorted(FAST))
def test_every_analyzer_accepts_dict_and_tuple_outputs(name: str, kind: str) -> None:
    model = Wrapped(kind)
    ctx = AnalysisContext(model=model, dataset=ToyDepthDataset(4, seed=1), info=UNIT,
                          layers=["net.dec3"], batch_size=2, progress=False)
    result = get_analyzer(name, **FAST[name]).run(ctx)
    assert result.summary() is not None
    assert_no_hooks(model)


def _load_vit() -> Any:
    path = Path(__file__).resolve().parents[2] / "examples" / "vit_adapter.py"
    spec = importlib.util.spec_from_file_location("depthsel_example_vit_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vit() -> Any:
    return _load_vit()


@pytest.mark.parametrize("name", ["dissection", "correction", "ablation", "adversarial", "probe"])
def test_token_layers_through_adapters(vit: Any, name: str) -> None:
    torch.manual_seed(0)
    model = vit.TinyDPT()
    h, w = model.grid
    info = ModelInfo(input_size=(32, 32), normalization="unit")
    ctx = AnalysisContext(model=model, dataset=ToyDepthDataset(4, size=(32, 32), seed=1), info=info,
                          layers=["blocks.1"], batch_size=2, progress=False,
                          adapters={"blocks.1": TokenGridAdapter((h, w), skip_tokens=1)})
    result = get_analyzer(name, **FAST[name]).run(ctx)
    assert result.summary() is not None
    assert_no_hooks(model)


@pytest.mark.parametrize("name", ["dissection", "ablation"])
def test_token_layers_without_adapter_name_the_fix(vit: Any, name: str) -> None:
    torch.manual_seed(0)
    model = vit.TinyDPT()
    ctx = AnalysisContext(model=model, dataset=ToyDepthDataset(2, size=(32, 32), seed=1),
                          info=ModelInfo(input_size=(32, 32), normalization="unit"),
                          layers=["blocks.1"], batch_size=2, progress=False)
    with pytest.raises(ActivationShapeError, match="TokenGridAdapter"):
        get_analyzer(name, **FAST[name]).run(ctx)


def test_token_adapter_inverse_round_trips() -> None:
    tokens = torch.randn(2, 1 + 3 * 5, 6)
    ad = TokenGridAdapter((3, 5), skip_tokens=1)
    assert torch.equal(ad.inverse(ad(tokens), tokens), tokens)


def test_transposed_grid_is_refused() -> None:
    # A 16x32 image in 4-pixel patches is a 4x8 grid; 8x4 has the right count but the wrong shape.
    TokenGridAdapter((4, 8)).check_grid((16, 32))
    with pytest.raises(ActivationShapeError, match=r"grid=\(4, 8\)"):
        TokenGridAdapter((8, 4)).check_grid((16, 32))


def test_transposed_grid_is_refused_during_capture(vit: Any) -> None:
    torch.manual_seed(0)
    model = vit.TinyDPT(image_size=(32, 64))  # an 8x16 patch grid
    h, w = model.grid
    from depthsel import Capture

    with Capture(model, ["blocks.1"], adapters={"blocks.1": TokenGridAdapter((h, w), skip_tokens=1)}) as cap:
        model(torch.rand(1, 3, 32, 64))
    assert cap.outputs["blocks.1"].shape[-2:] == (h, w)
    with pytest.raises(ActivationShapeError, match=rf"grid=\({h}, {w}\)"):
        with Capture(model, ["blocks.1"], adapters={"blocks.1": TokenGridAdapter((w, h), skip_tokens=1)}):
            model(torch.rand(1, 3, 32, 64))
    assert_no_hooks(model)
