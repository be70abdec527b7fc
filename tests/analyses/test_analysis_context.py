"""The analysis context carries typed inputs: ``train_dataset`` and ``assignment`` (the old ``extras`` bag maps)."""

from __future__ import annotations

import pytest
import torch

from depthsel import ModelInfo, get_analyzer
from depthsel.analysis import AnalysisContext
from depthsel.errors import ConfigError, DepthselError
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel_plugins.analyses.probe import ProbeAnalyzer

UNIT = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec3",))


def _ctx(**kw: object) -> AnalysisContext:
    torch.manual_seed(0)
    return AnalysisContext(model=ToyDepthNet(width=4), dataset=ToyDepthDataset(4, seed=1), info=UNIT,
                           batch_size=2, progress=False, **kw)  # type: ignore[arg-type]


def test_typed_fields_default_to_unset() -> None:
    ctx = _ctx()
    assert ctx.train_dataset is None and ctx.assignment is None and ctx.adapters == {}
    assert "extras" not in vars(ctx)  # a constructor argument only: nothing keeps a bag


def test_old_extras_map_to_the_typed_fields_with_a_deprecation_warning() -> None:
    train = ToyDepthDataset(6, seed=2)
    assigned = {"dec3": torch.zeros(8, dtype=torch.long)}
    with pytest.warns(DeprecationWarning, match="train_dataset=, assignment="):
        ctx = _ctx(extras={"train_dataset": train, "assigned": assigned})
    assert ctx.train_dataset is train and ctx.assignment is assigned
    with pytest.warns(DeprecationWarning, match="adapters="):
        ctx = _ctx(extras={"adapters": {"dec3": None}})
    assert ctx.adapters == {"dec3": None}


def test_extras_that_had_no_reader_or_clash_with_a_field_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\['dissection'\] never had a reader"):
        _ctx(extras={"dissection": "runs/x"})
    train = ToyDepthDataset(2, seed=3)
    with pytest.raises(DepthselError, match="both as a field and in extras"):
        _ctx(train_dataset=train, extras={"train_dataset": train})


def test_the_probe_fits_on_the_context_train_dataset() -> None:
    train = ToyDepthDataset(6, seed=2)
    ctx = _ctx(train_dataset=train)
    fit, held_out = ProbeAnalyzer().splits(ctx)
    assert fit is train and held_out is ctx.dataset
    # Without one, the leading share of the data is the training split.
    fit, held_out = ProbeAnalyzer(train_fraction=0.5).splits(_ctx())
    assert len(fit) == 2 and len(held_out) == 2  # type: ignore[arg-type]


def test_adversarial_tracing_uses_the_context_assignment() -> None:
    config = {"num_bins": 4, "steps": 1, "figure_index": None}
    eq6 = get_analyzer("adversarial", **config).run(_ctx())
    k = int(eq6.tensors["dec3/assigned"].numel())
    mine = torch.arange(k).flip(0) % 4  # not Eq. 6
    assert not torch.equal(mine, eq6.tensors["dec3/assigned"])
    res = get_analyzer("adversarial", **config).run(_ctx(assignment={"dec3": mine}))
    assert torch.equal(res.tensors["dec3/assigned"], mine)
    with pytest.raises(DepthselError, match=r"ctx.assignment\['dec3'\]"):
        get_analyzer("adversarial", **config).run(_ctx(assignment={"dec3": torch.full((k,), 9)}))
