"""The embedded synthetic dataset: deterministic, seed-dependent, plausible depth."""

from __future__ import annotations

import time

import pytest
import torch

import depthsel
from depthsel.data import collate, validate_sample
from depthsel.errors import DatasetError
from depthsel_plugins.datasets.synthetic import MAX_DEPTH, MIN_DEPTH, SyntheticDataset


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    a, b = SyntheticDataset(4, seed=3)[2], SyntheticDataset(4, seed=3)[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    c = SyntheticDataset(4, seed=4)[2]
    assert not torch.equal(a["depth"], c["depth"])
    # Random access order does not matter.
    ds = SyntheticDataset(4, seed=3)
    assert torch.equal(ds[3]["depth"], SyntheticDataset(4, seed=3)[3]["depth"])


def test_train_and_test_streams_differ() -> None:
    tr, te = SyntheticDataset(3, split="train"), SyntheticDataset(3, split="test")
    for i in range(3):
        assert not torch.equal(tr[i]["depth"], te[i]["depth"])
    with pytest.raises(DatasetError, match="train.*test"):
        SyntheticDataset(3, split="val")


def test_depth_range_contract_and_speed() -> None:
    ds = SyntheticDataset(64, size=(96, 128), seed=0)
    start = time.perf_counter()
    batch = collate([ds[i] for i in range(len(ds))])
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0, f"64 renders took {elapsed:.1f}s"
    validate_sample({k: v[0] for k, v in batch.items() if k != "name"})
    d, v = batch["depth"], batch["valid"]
    assert batch["image"].shape == (64, 3, 96, 128)
    assert float(d[v].min()) >= MIN_DEPTH and float(d[v].max()) <= MAX_DEPTH
    assert float(v.float().mean()) > 0.99
    assert float(d[v].max()) > 4.0  # the views span near and far surfaces
    assert 0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    # RGB carries a depth cue: far pixels are darker on average (light falloff and haze).
    lum = batch["image"].mean(1, keepdim=True)
    near, far = d < torch.quantile(d[v], 0.3), d > torch.quantile(d[v], 0.7)
    assert float(lum[near & v].mean()) > float(lum[far & v].mean())


def test_registered_and_described_as_synthetic() -> None:
    ds = depthsel.get_dataset("synthetic", num_samples=2, size=(24, 32), sparse_samples=10)
    s = ds[0]
    assert s["image"].shape == (3, 24, 32) and int((s["sparse_depth"] > 0).sum()) == 10
    assert "SYNTHETIC" in ds.describe() and "not real" in ds.describe()
    assert "synthetic" in (SyntheticDataset.__doc__ or "").lower()
    assert ds.fingerprint() == SyntheticDataset(2, size=(24, 32), sparse_samples=10).fingerprint()
    assert ds.fingerprint() != SyntheticDataset(2, size=(24, 32), seed=1, sparse_samples=10).fingerprint()
    fx, fy, cx, cy = ds.intrinsics(0)
    assert fx == fy and (cx, cy) == (16.0, 12.0)
