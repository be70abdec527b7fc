"""Random augmentation changes every epoch: the Trainer calls ``set_epoch``, and caching keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from depthsel import ModelInfo
from depthsel.data import CachedDataset
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel.training import TrainConfig, Trainer
from depthsel_plugins.datasets.synthetic import SyntheticDataset
from depthsel.transforms import ColorJitter, Compose, HFlip

INFO = ModelInfo(input_size=(32, 48), normalization="unit")
SIZE = (32, 48)
N = 4


class CountingSynthetic(SyntheticDataset):
    """Counts renders (``_load`` calls), to see what the cache saves."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.loads = 0

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loads += 1
        return super()._load(index)


def flipped(p: float = 0.5, jitter: bool = False) -> Compose:
    return Compose([HFlip(p)] + ([ColorJitter(0.3, 0.3, 0.3)] if jitter else []))


def synthetic(transforms: Any = None) -> CountingSynthetic:
    return CountingSynthetic(num_samples=N, size=SIZE, seed=11, transforms=transforms)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("transforms", [None, flipped(), flipped(0.5, jitter=True)])
@pytest.mark.parametrize("sparse", [None, 20])
def test_cached_items_equal_uncached_items_every_epoch(transforms: Any, sparse: int | None) -> None:
    # The reference: the plain dataset, read without any cache, at the same epoch.
    plain = CountingSynthetic(num_samples=N, size=SIZE, seed=11, transforms=transforms, sparse_samples=sparse)
    inner = CountingSynthetic(num_samples=N, size=SIZE, seed=11, transforms=transforms, sparse_samples=sparse)
    cached = CachedDataset(inner)
    for epoch in (0, 1, 2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(N):
            assert same(cached[i], plain[i]), (epoch, i)
        assert same(cached[-1], plain[N - 1])
    assert inner.loads == N  # rendered once, however many epochs
    assert plain.loads == 3 * (N + 1)
    with pytest.raises(IndexError):
        cached[N]


def test_cache_is_not_modified_by_reads() -> None:
    inner = synthetic(flipped(p=1.0))
    cached = CachedDataset(inner)
    first = cached[0]
    again = cached[0]
    # A flip of p=1 applied to a cached, already-flipped sample would flip it back.
    assert torch.equal(first["image"], again["image"])
    assert "sparse_depth" not in cached._items[0]


def run_two_epochs(tmp: Path, dataset: Dataset[Any]) -> list[list[torch.Tensor]]:
    """Train two one-step epochs and return the images the model saw, per epoch."""
    torch.manual_seed(0)
    model = ToyDepthNet(width=4)
    seen: list[list[torch.Tensor]] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(list(args[0].detach().clone())))
    try:
        cfg = TrainConfig(name="aug", out_dir=str(tmp), epochs=2, batch_size=N, lr=1e-3, seed=0,
                          checkpoint_every=100)
        Trainer(model, INFO, dataset, cfg).fit(resume=False)
    finally:
        handle.remove()
    assert len(seen) == 2
    return seen


def multiset_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    left = list(b)
    for x in a:
        match = next((j for j, y in enumerate(left) if torch.equal(x, y)), None)
        if match is None:
            return False
        left.pop(match)
    return not left


def test_trainer_sees_new_flips_each_epoch_through_the_cache(tmp_path: Path) -> None:
    inner = synthetic(flipped())
    epoch0, epoch1 = run_two_epochs(tmp_path, CachedDataset(inner))
    # Every image of epoch 1 is a scene of epoch 0, flipped or not ...
    for img in epoch1:
        assert any(torch.equal(img, x) or torch.equal(img, x.flip(-1)) for x in epoch0)
    # ... but not the same set of pixels: the flips were redrawn for epoch 1.
    assert not multiset_equal(epoch0, epoch1)
    assert inner.loads == N  # and the renders were still cached


def test_without_random_transforms_both_epochs_see_the_same_cached_pixels(tmp_path: Path) -> None:
    inner = synthetic(None)
    epoch0, epoch1 = run_two_epochs(tmp_path, CachedDataset(inner))
    assert multiset_equal(epoch0, epoch1)
    assert inner.loads == N


class EpochSpy(ToyDepthDataset):
    def __init__(self) -> None:
        super().__init__(8, size=(32, 32), seed=1)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_trainer_calls_set_epoch_in_order_and_after_resume(tmp_path: Path) -> None:
    spy = EpochSpy()
    cfg = TrainConfig(name="spy", out_dir=str(tmp_path), epochs=3, batch_size=4, lr=1e-3, checkpoint_every=1)
    Trainer(ToyDepthNet(width=4), ModelInfo(input_size=(32, 32), normalization="unit"), spy, cfg).fit(
        resume=False)
    assert spy.epochs == [0, 1, 2]
    # A run stopped after step 3 (inside epoch 1) resumes in epoch 1, not 0.
    cut = TrainConfig(name="cut", out_dir=str(tmp_path), epochs=3, batch_size=4, lr=1e-3, checkpoint_every=1,
                      max_steps=3)
    Trainer(ToyDepthNet(width=4), ModelInfo(input_size=(32, 32), normalization="unit"), EpochSpy(), cut).fit()
    resumed = EpochSpy()
    full = TrainConfig(**{**cut.to_dict(), "max_steps": None})
    Trainer(ToyDepthNet(width=4), ModelInfo(input_size=(32, 32), normalization="unit"), resumed, full).fit()
    assert resumed.epochs == [1, 2]


def test_a_dataset_without_set_epoch_still_trains(tmp_path: Path) -> None:
    cfg = TrainConfig(name="plain", out_dir=str(tmp_path), epochs=1, batch_size=4, lr=1e-3)
    history = Trainer(ToyDepthNet(width=4), ModelInfo(input_size=(32, 32), normalization="unit"),
                      ToyDepthDataset(8, seed=2), cfg).fit(resume=False)
    assert len(history["steps"]) == 2
