"""SelectivityRegularizer: it trains selectivity, matches the plain path, fails clearly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import depthsel
from depthsel import SelectivityRegularizer
from depthsel.errors import BinCountError, CaptureError, LayerNotFoundError, ShapeMismatchError
from depthsel.testing import ToyDepthNet, assert_no_hooks, toy_batch


def binner(nb: int = 8) -> depthsel.Binner:
    return depthsel.get_binner("uniform", num_bins=nb, min_depth=0.5, max_depth=10.0)


def target_ds(model: torch.nn.Module, layer: str, nb: int, seeds: range) -> float:
    acc = depthsel.ResponseAccumulator(nb)
    b = binner(nb)
    model.eval()
    with torch.no_grad(), depthsel.Capture(model, [layer]) as cap:
        for s in seeds:
            x, d = toy_batch(8, (32, 32), seed=s)
            model(x)
            acc.update(cap.outputs[layer], b(d))
    model.train()
    r = acc.responses("abs")
    return float(torch.nanmean(depthsel.depth_selectivity(r, depthsel.assign_bins(r.shape[0], nb))))


def train_toy(model: torch.nn.Module, reg: SelectivityRegularizer, steps: int,
              on_step: Callable[[int], None] = lambda step: None) -> None:
    """L1 + the selectivity term on toy batches (seed = step), AdamW 3e-3; ``on_step`` after each."""
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for step in range(steps):
        x, d = toy_batch(8, (32, 32), seed=step)
        with reg.attach():
            pred = model(x)
            loss = (pred - d).abs().mean() + reg.loss(d)
        opt.zero_grad()
        loss.backward()
        opt.step()
        on_step(step)


def test_training_raises_target_ds() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=8)
    before = target_ds(model, "dec3", 8, range(1000, 1004))
    reg = SelectivityRegularizer(model, ["dec3"], binner(), objective="assign", weight=1.0)
    train_toy(model, reg, 250)
    after = target_ds(model, "dec3", 8, range(1000, 1004))
    assert before < 0.2
    assert after > before + 0.4, (before, after)
    assert_no_hooks(model)


@pytest.mark.parametrize("use_abs_objective", ["assign", "regularize"])
def test_adjoint_equals_upsample_path(use_abs_objective: str) -> None:
    torch.manual_seed(1)
    x, d = toy_batch(4, (24, 20), seed=3)
    grads = []
    losses = []
    for method in ("adjoint", "upsample"):
        torch.manual_seed(1)  # identical weights for both paths
        model = ToyDepthNet(width=4)
        reg = SelectivityRegularizer(model, ["dec2", "dec3"], binner(4), objective=use_abs_objective,
                                     method=method, stats_dtype=torch.float64)
        with reg.attach():
            model(x)
            loss = reg.loss(d)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-9)


def test_reference_preset_and_layer_sum() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=8)
    x, d = toy_batch(2, (32, 32), seed=0)
    d = d.clamp(max=4.0)  # only the near bins are present: absent bins matter
    ref = SelectivityRegularizer(model, ["dec2", "dec3"], binner(), preset="reference", weight=1.0)
    new = SelectivityRegularizer(model, ["dec2", "dec3"], binner(), weight=1.0)
    with ref.attach():
        model(x)
        l_ref = ref.loss(d)
    with new.attach():
        model(x)
        l_new = new.loss(d)
    s_ref, s_new = ref.last_stats(), new.last_stats()
    assert l_ref.item() == pytest.approx(-(s_ref["dec2"]["score"] + s_ref["dec3"]["score"]), rel=1e-6)
    assert l_new.item() == pytest.approx(-(s_new["dec2"]["score"] + s_new["dec3"]["score"]) / 2, rel=1e-6)
    assert s_ref["dec3"]["units_counted"] == 8  # the reference keeps units of absent bins
    assert s_new["dec3"]["units_counted"] < 8


def test_amp_autocast_stats_stay_float32() -> None:
    model = ToyDepthNet(width=4)
    x, d = toy_batch(2, (16, 16))
    reg = SelectivityRegularizer(model, ["dec3"], binner(4))
    with reg.attach(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        loss = reg.loss(d)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_clear_errors() -> None:
    model = ToyDepthNet(width=4)
    x, d = toy_batch(2, (16, 16))
    reg = SelectivityRegularizer(model, ["dec3"], binner(4))
    with pytest.raises(CaptureError, match="attach"):
        reg.loss(d)
    with reg.attach():
        model(x)
        with pytest.raises(ShapeMismatchError, match="batch"):
            reg.loss(d[:1])
    with pytest.raises(LayerNotFoundError):
        SelectivityRegularizer(model, ["dec4"], binner(4))
    reg8 = SelectivityRegularizer(model, ["dec3"], binner(8))  # dec3 has 4 units
    with reg8.attach():
        model(x)
        with pytest.raises(BinCountError, match="num_bins=4"):
            reg8.loss(d)
    fit = SelectivityRegularizer(model, ["dec3"], binner(8), fit_bins_to_units=True)
    with fit.attach():
        model(x)
        assert torch.isfinite(fit.loss(d))
    assert fit.binner_for("dec3").num_bins == 4
    assert_no_hooks(model)


def test_all_invalid_depth_is_skipped_not_nan() -> None:
    model = ToyDepthNet(width=4)
    x, _ = toy_batch(2, (16, 16))
    reg = SelectivityRegularizer(model, ["dec3"], binner(4))
    with reg.attach():
        model(x)
        loss = reg.loss(torch.zeros(2, 1, 16, 16))
    assert loss.item() == 0.0 and reg.skipped_batches == 1


def test_explicit_assignment_and_config() -> None:
    model = ToyDepthNet(width=4)
    x, d = toy_batch(2, (16, 16))
    reg = SelectivityRegularizer(model, ["dec3"], binner(4), assignment={"dec3": torch.tensor([3, 2, 1, 0])})
    with reg.attach():
        model(x)
        reg.loss(d)
    cfg = reg.config()
    assert cfg["assignment"]["dec3"] == [3, 2, 1, 0] and cfg["objective"]["name"] == "assign"


def test_liveness_hinge_pushes_weak_units_up_at_their_bin() -> None:
    from depthsel.objectives import BatchStats

    assign = depthsel.get_objective("assign")
    live = depthsel.get_objective("assign", liveness=1.0)
    # Unit 1 is nearly silent with negative target DS: Eq. 5 alone rewards silencing it further.
    sums = torch.tensor([[4.0, 1.0], [0.01, 0.03]], dtype=torch.float64, requires_grad=True)
    stats = BatchStats(sums, torch.tensor([1, 1]), torch.tensor([0, 0]))
    plain = assign.layer_score(stats)
    hinge = live.layer_score(stats)
    assert hinge.score < plain.score  # the weak unit is penalised
    torch.testing.assert_close(hinge.ds, plain.ds)  # DS itself is unchanged
    (g_live,) = torch.autograd.grad(hinge.score, sums)
    (g_plain,) = torch.autograd.grad(assign.layer_score(BatchStats(sums, torch.tensor([1, 1]),
                                                                     torch.tensor([0, 0]))).score, sums)
    assert g_live[1, 0] > g_plain[1, 0]  # more push towards responding at its own bin
    strong = BatchStats(torch.tensor([[4.0, 1.0], [3.0, 1.0]], dtype=torch.float64), torch.tensor([1, 1]),
                        torch.tensor([0, 0]))
    assert live.layer_score(strong).score == assign.layer_score(strong).score  # inactive for healthy units
    assert live.config()["liveness"] == 1.0


def test_objective_options_reach_the_objective() -> None:
    model = ToyDepthNet(width=4)
    reg = SelectivityRegularizer(model, ["dec3"], binner(4), objective_options={"liveness": 0.5})
    assert reg.config()["objective"]["liveness"] == 0.5
    from depthsel.errors import PluginError

    with pytest.raises(PluginError, match="liveness"):
        SelectivityRegularizer(model, ["dec3"], binner(4), objective_options={"livenes": 0.5})
