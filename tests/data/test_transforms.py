"""Joint transforms: alignment, determinism, and never inventing depth values."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from depthsel.data import validate_sample
from depthsel.errors import DatasetError
from depthsel_plugins.datasets.splits import contiguous_block_split, parse_frame_ranges, select_indices
from depthsel.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    HFlip,
    RandomCrop,
    Resize,
    Rotation,
    sample_sparse_depth,
)


def _sample(h: int, w: int, seed: int, hole_fraction: float = 0.3) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Few distinct depth values, so a blended (invented) value would be easy to spot.
    depth = (torch.randint(1, 20, (1, h, w), generator=g).float() * 0.37)
    holes = torch.rand(1, h, w, generator=g) < hole_fraction
    depth[holes] = 0
    return {"image": torch.rand(3, h, w, generator=g), "depth": depth, "valid": depth > 0, "name": "x"}


def _all_transforms(seed: int) -> list:
    return [
        Resize((7, 9)), Resize((40, 50)), CenterCrop((8, 8)), RandomCrop((9, 10), seed=seed),
        HFlip(p=1.0), Rotation(10.0, seed=seed), ColorJitter(seed=seed),
        Compose([Rotation(5.0), Resize((13, 17)), HFlip(), RandomCrop((10, 12))]),
    ]


@settings(max_examples=30, deadline=None)
@given(h=st.integers(12, 40), w=st.integers(12, 40), seed=st.integers(0, 2**31 - 1), which=st.integers(0, 7))
def test_transforms_never_invent_depth(h: int, w: int, seed: int, which: int) -> None:
    s = _sample(h, w, seed)
    t = _all_transforms(seed)[which]
    out = t(dict(s), torch.Generator().manual_seed(seed))
    validate_sample(out)
    valid_out = out["depth"][out["valid"]]
    allowed = torch.unique(s["depth"][s["valid"]])
    assert bool(torch.isin(valid_out, allowed).all())
    assert bool((out["depth"][~out["valid"]] == 0).all())
    assert torch.equal(out["valid"], out["depth"] > 0)


def test_transforms_are_deterministic_for_a_generator_seed() -> None:
    s = _sample(30, 40, 1)
    t = Compose([Rotation(8.0), HFlip(), RandomCrop((20, 30)), ColorJitter()])
    a = t(dict(s), torch.Generator().manual_seed(5))
    b = t(dict(s), torch.Generator().manual_seed(5))
    c = t(dict(s), torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in ("image", "depth", "valid"))
    assert not torch.equal(a["image"], c["image"])


def test_geometry_keeps_image_and_depth_aligned() -> None:
    s = _sample(10, 12, 2)
    s["image"] = s["depth"].expand(3, -1, -1) / 10  # image encodes depth: alignment is checkable
    s["sparse_depth"] = s["depth"].clone()
    for t in (HFlip(p=1.0), CenterCrop((6, 6)), RandomCrop((5, 7), seed=3)):
        out = t(dict(s))
        assert torch.allclose(out["image"][0] * 10, out["depth"][0], atol=1e-6)
        assert torch.equal(out["sparse_depth"], out["depth"])


def test_rotation_marks_out_of_frame_invalid() -> None:
    s = _sample(32, 32, 3, hole_fraction=0.0)
    out = Rotation(30.0, seed=0)(s, torch.Generator().manual_seed(1))
    assert not bool(out["valid"][0, 0, 0]) or not bool(out["valid"][0, -1, -1])
    assert bool(out["valid"][0, 16, 16])


def test_resize_nearest_and_crop_errors() -> None:
    s = _sample(4, 4, 0, hole_fraction=0.0)
    up = Resize((8, 8))(s)
    assert torch.equal(up["depth"][0, ::2, ::2], s["depth"][0])
    with pytest.raises(DatasetError, match="resize first"):
        CenterCrop((5, 5))(s)
    with pytest.raises(DatasetError):
        Rotation(90.0)


def test_sparse_depth_sampling() -> None:
    s = _sample(20, 20, 4)
    sp = sample_sparse_depth(s["depth"], s["valid"], 25, torch.Generator().manual_seed(0))
    assert int((sp > 0).sum()) == 25 and bool((sp[sp > 0] == s["depth"][sp > 0]).all())
    everything = sample_sparse_depth(s["depth"], s["valid"], 10**6, torch.Generator())
    assert torch.equal(everything, s["depth"])


def test_contiguous_block_split() -> None:
    train, test = contiguous_block_split(100, 0.2)
    assert test == list(range(80, 100)) and train == list(range(80))
    train, test = contiguous_block_split(100, 0.2, num_test_blocks=2, gap=3)
    assert test == list(range(40, 50)) + list(range(90, 100))
    assert min(abs(a - b) for a in train for b in test) > 3
    train, test = contiguous_block_split(10, ranges="2:4")
    assert test == [2, 3] and train == [0, 1, 4, 5, 6, 7, 8, 9]
    assert parse_frame_ranges("-3:", 10) == [(7, 10)]
    assert select_indices(10, frames="0:2,5:6") == [0, 1, 5]
    with pytest.raises(DatasetError, match="start:stop"):
        parse_frame_ranges("5", 10)
    with pytest.raises(DatasetError, match="smaller gap"):
        contiguous_block_split(10, 0.5, gap=10)
