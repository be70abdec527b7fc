"""The regularizer bins each batch once per binner and builds each weight-map set once,
through the shared :class:`depthsel.binned.BinnedDepth`, and its loss equals a plain
per-layer computation."""

from __future__ import annotations

import torch

import depthsel.binned
from depthsel.alignment import bin_counts, binned_sums
from depthsel.binning import EdgesBinner
from depthsel.objectives import BatchStats
from depthsel.regularizer import SelectivityRegularizer
from depthsel.selectivity import assign_bins
from depthsel.testing import ToyDepthNet, toy_batch


class CountingBinner(EdgesBinner):
    calls = 0

    def __call__(self, depth, valid=None):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().__call__(depth, valid)


def test_one_binning_and_one_weight_map_set_per_batch(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    built: list[tuple[int, int]] = []
    real = depthsel.binned.bin_weight_maps

    def counting(bins, num_bins, feat_size, *args, **kw):  # type: ignore[no-untyped-def]
        built.append(tuple(feat_size))
        return real(bins, num_bins, feat_size, *args, **kw)

    monkeypatch.setattr(depthsel.binned, "bin_weight_maps", counting)
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double()
    binner = CountingBinner([0.5, 1.0, 2.0, 4.0, 8.0])
    # enc1 and dec2 have the same resolution (16x16 for 32x32 input): one weight-map set serves both.
    reg = SelectivityRegularizer(model, ["enc1", "dec2", "dec3"], binner, weight=0.1,
                                 stats_dtype=torch.float64)
    CountingBinner.calls = 0
    for seed in (1, 2):
        x, depth = toy_batch(2, (32, 32), seed=seed)
        with reg.attach():
            model(x.double())
            reg.loss(depth.double())
    assert CountingBinner.calls == 2
    assert sorted(built) == [(16, 16), (16, 16), (32, 32), (32, 32)]


def test_loss_equals_plain_per_layer_computation() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double()
    binner = EdgesBinner([0.5, 1.0, 2.0, 4.0, 8.0])
    layers = ["dec2", "dec3"]
    reg = SelectivityRegularizer(model, layers, binner, weight=0.1, stats_dtype=torch.float64)
    x, depth = toy_batch(2, (32, 32), seed=3)
    acts: dict[str, torch.Tensor] = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
             for n in layers]
    with reg.attach():
        model(x.double())
        loss = reg.loss(depth.double())
    for h in hooks:
        h.remove()
    bins = binner(depth.double())
    scores = []
    for n in layers:
        a = acts[n]
        sums = binned_sums(a, bins, binner.num_bins, use_abs=reg.objective.uses_abs, method="upsample").sum(0)
        stats = BatchStats(sums, bin_counts(bins, binner.num_bins).sum(0), assign_bins(a.shape[1], binner.num_bins))
        scores.append(reg.objective.layer_score(stats).score)
    expected = -0.1 * torch.stack(scores).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
