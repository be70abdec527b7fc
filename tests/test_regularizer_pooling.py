"""``pooling="image"``: the objective scores each image, the layer's score is their mean.

The reference is a plain loop: one batch-pooled regularizer per single image (batch
pooling of a batch of one is per-image pooling by definition), on a model in eval
mode so that every image's activations are the same alone and in the batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import depthsel
from depthsel import SelectivityRegularizer
from depthsel.errors import ConfigError, DepthselError
from depthsel.testing import ToyDepthNet, toy_batch


def binner(nb: int = 4) -> depthsel.Binner:
    return depthsel.get_binner("uniform", num_bins=nb, min_depth=0.5, max_depth=10.0)


def loss_and_grads(model: torch.nn.Module, reg: SelectivityRegularizer, x: torch.Tensor,
                   d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    with reg.attach():
        model(x)
        loss = reg.loss(d)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads


def single_image_reference(model: torch.nn.Module, layers: list[str], x: torch.Tensor, d: torch.Tensor,
                           keep: list[int], **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the images in ``keep`` of the batch-pooled loss of each image alone, and its gradient."""
    losses, grads = [], []
    for i in keep:
        reg = SelectivityRegularizer(model, layers, binner(), weight=1.0, stats_dtype=torch.float64, **kw)
        loss, g = loss_and_grads(model, reg, x[i:i + 1], d[i:i + 1])
        losses.append(loss)
        grads.append(g)
    return torch.stack(losses).mean(), torch.stack(grads).mean(0)


@pytest.mark.parametrize("method", ["adjoint", "upsample"])
@pytest.mark.parametrize("objective, liveness", [("assign", 0.0), ("assign", 1.0), ("regularize", 0.0)])
def test_image_pooling_is_the_mean_of_each_image_alone(method: str, objective: str, liveness: float) -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double().eval()  # float64: batched and single convs agree
    x, d = toy_batch(4, (24, 20), seed=5)
    x = x.double()
    kw = dict(method=method, objective=objective, objective_options={"liveness": liveness} if liveness else None)
    reg = SelectivityRegularizer(model, ["dec2", "dec3"], binner(), weight=1.0, stats_dtype=torch.float64,
                                 pooling="image", **kw)
    loss, grads = loss_and_grads(model, reg, x, d)
    ref_loss, ref_grads = single_image_reference(model, ["dec2", "dec3"], x, d, [0, 1, 2, 3], **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-6, atol=1e-10)
    # ...and it is not the batch-pooled loss, so the option takes effect.
    batch = SelectivityRegularizer(model, ["dec2", "dec3"], binner(), weight=1.0, stats_dtype=torch.float64, **kw)
    assert abs(float(loss_and_grads(model, batch, x, d)[0]) - float(loss)) > 1e-4
    assert reg.config()["pooling"] == "image" and batch.config()["pooling"] == "batch"


def test_images_that_define_no_unit_leave_the_mean() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double().eval()  # float64: batched and single convs agree
    x, d = toy_batch(4, (16, 16), seed=2)
    x = x.double()
    d = d.clone()
    d[1] = 2.0  # every pixel in one bin: no "other bins", no unit's DS is defined
    d[2] = 0.0  # no valid pixel at all
    reg = SelectivityRegularizer(model, ["dec3"], binner(), weight=1.0, stats_dtype=torch.float64, pooling="image")
    loss, grads = loss_and_grads(model, reg, x, d)
    ref_loss, ref_grads = single_image_reference(model, ["dec3"], x, d, [0, 3])
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-6, atol=1e-10)
    # A batch in which no image defines any unit: a zero that still backpropagates.
    flat = torch.full_like(d, 2.0)
    zero, g0 = loss_and_grads(model, reg, x, flat)
    assert float(zero) == 0.0 and torch.all(g0 == 0)


def test_image_pooling_trains_selectivity() -> None:
    from test_regularizer import train_toy

    torch.manual_seed(0)
    model = ToyDepthNet(width=8)
    reg = SelectivityRegularizer(model, ["dec3"], binner(8), weight=1.0, pooling="image")
    seen: list[float] = []
    train_toy(model, reg, 120, lambda step: seen.append(reg.last_stats()["dec3"]["target_ds"]))
    assert seen[-1] > seen[0] + 0.3, (seen[0], seen[-1])


def test_a_bad_pooling_is_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pooling must be one of"):
        SelectivityRegularizer(ToyDepthNet(width=4), ["dec3"], binner(), pooling="pixel")
    from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

    with pytest.raises(DepthselError, match="pooling must be one of"):
        run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="bad", pooling="pixel"), progress=False)
    assert not (tmp_path / "bad").exists()


def test_cli_demo_pooling_reaches_the_trainer(tmp_path: Path) -> None:
    from test_experiment import tiny_demo

    bad = tiny_demo(tmp_path, "--pooling", "pixel")
    assert bad.exit_code != 0 and "--pooling 'pixel'" in bad.output and "batch, image" in bad.output
    assert not (tmp_path / "demo").exists()
    ok = tiny_demo(tmp_path, "--pooling", "image", "--name", "img")
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "img" / "summary.json").read_text())["config"]["pooling"] == "image"
    run = json.loads((tmp_path / "img" / "seed0" / "interpretable" / "config.json").read_text())
    assert run["selectivity"]["pooling"] == "image"


def test_a_rank_without_valid_pixels_gets_a_zero_in_the_graph() -> None:
    # Under sync_stats the global counts can be non-zero while this rank's images have no
    # valid pixel; the all-reduce is replaced by "another rank saw pixels".
    model = ToyDepthNet(width=4)
    reg = SelectivityRegularizer(model, ["dec3"], binner(), weight=1.0, pooling="image", sync_stats=True)
    reg._maybe_sync = lambda sums, counts: (sums, counts + 1)  # type: ignore[method-assign]
    x, _ = toy_batch(2, (16, 16))
    loss, grads = loss_and_grads(model, reg, x, torch.zeros(2, 1, 16, 16))
    assert float(loss) == 0.0 and torch.all(grads == 0) and grads.numel() > 0


def test_a_one_bin_image_keeps_its_liveness_hinge() -> None:
    # No unit's DS is defined on a one-bin image, but the liveness hinge (at the assigned bin)
    # can be: then the image stays in the mean, as in the single-image reference.
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double().eval()
    x, d = toy_batch(3, (16, 16), seed=2)
    x, d = x.double(), d.clone()
    d[1] = 2.0
    kw = dict(objective_options={"liveness": 1.0})
    one = SelectivityRegularizer(model, ["dec2"], binner(), weight=1.0, stats_dtype=torch.float64, **kw)
    assert float(loss_and_grads(model, one, x[1:2], d[1:2])[0]) != 0.0  # the hinge is active there
    reg = SelectivityRegularizer(model, ["dec2"], binner(), weight=1.0, stats_dtype=torch.float64,
                                 pooling="image", **kw)
    loss, grads = loss_and_grads(model, reg, x, d)
    ref_loss, ref_grads = single_image_reference(model, ["dec2"], x, d, [0, 1, 2], **kw)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grads, ref_grads, rtol=1e-6, atol=1e-10)
    flat, g = loss_and_grads(model, reg, x, torch.full_like(d, 2.0))
    assert float(flat) != 0.0 and float(g.abs().sum()) > 0
