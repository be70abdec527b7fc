"""The ``folder`` dataset on the real shared data and on malformed generated folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datahelpers import shared_data_dir
from PIL import Image

from depthsel.data import collate, dataset_fingerprint, validate_sample
from depthsel.errors import DatasetError, DepthselError
from depthsel_plugins.datasets.folder import FolderDataset


def _write_folder(root: Path, n: int = 3, hw: tuple[int, int] = (12, 16), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    lines = ["rgb,depth"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(root / f"rgb/{i}.png")
        depth = rng.integers(0, 9000, hw).astype(np.uint16)
        depth[0, 0] = 0
        Image.fromarray(depth).save(root / f"depth/{i}.png")
        lines.append(f"rgb/{i}.png,depth/{i}.png")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.realdata
@pytest.mark.parametrize("folder", ["nyu2_mini_test", "7scenes_redkitchen", "open3d_samples"])
def test_real_folders_load_in_metres(folder: str) -> None:
    root = shared_data_dir(folder)
    ds = FolderDataset(root)
    sample = ds[0]
    validate_sample(sample)
    rgb_rel, depth_rel = (ds.paths(0)[0].relative_to(root.resolve()), ds.paths(0)[1].relative_to(root.resolve()))
    raw = np.asarray(Image.open(root / depth_rel)).astype(np.float32)
    rgb = np.asarray(Image.open(root / rgb_rel).convert("RGB"))
    assert sample["image"].shape == (3, 480, 640) and sample["depth"].shape == (1, 480, 640)
    for y, x in [(240, 320), (100, 500), (470, 10)]:
        assert sample["depth"][0, y, x].item() == pytest.approx(raw[y, x] / 1000.0, abs=1e-6)
        assert sample["image"][:, y, x].mul(255).round().tolist() == rgb[y, x].astype(float).tolist()
    assert torch.equal(sample["valid"][0], torch.from_numpy(raw > 0))
    assert float(sample["depth"].max()) < 10.5


@pytest.mark.realdata
def test_7scenes_uses_registered_depth_by_default_and_raw_on_request() -> None:
    root = shared_data_dir("7scenes_redkitchen")
    ds = FolderDataset(root, frames="0:5")
    assert ds.depth_column == "depth_registered" and len(ds) == 5
    assert ds.paths(0)[1].parent.name == "depth_registered"
    raw = FolderDataset(root, depth_column="depth", indices=[0])
    assert raw.paths(0)[1].parent.name == "depth"
    via_dir = FolderDataset(root, depth_column="depth", depth_dir="depth_registered", indices=[0])
    assert via_dir.paths(0)[1] == ds.paths(0)[1]
    # Block split: test frames are one contiguous block, disjoint from train.
    train = FolderDataset(root, split="train", split_gap=2)
    test = FolderDataset(root, split="test", split_gap=2)
    assert len(test) == 20 and not set(train.names()) & set(test.names())
    assert len(train) == 100 - 20 - 2


@pytest.mark.realdata
def test_real_resize_and_sparse() -> None:
    ds = FolderDataset(shared_data_dir("nyu2_mini_test"), size=(120, 160), sparse_samples=50, max_depth=3.0)
    s = ds[1]
    validate_sample(s)
    assert s["image"].shape == (3, 120, 160)
    assert float(s["depth"].max()) <= 3.0
    assert int((s["sparse_depth"] > 0).sum()) == 50
    assert torch.equal(ds[1]["sparse_depth"], s["sparse_depth"])  # seeded per item


def test_generated_folder_collates_and_fingerprints(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds")
    ds = FolderDataset(root)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["depth"].shape == (3, 1, 12, 16)
    assert not bool(batch["valid"][0, 0, 0, 0])
    assert ds.names() == ["rgb/0.png", "rgb/1.png", "rgb/2.png"]
    fp = ds.fingerprint()
    assert fp == FolderDataset(root).fingerprint()
    assert fp != FolderDataset(root, max_depth=5.0).fingerprint()
    assert fp != FolderDataset(root, indices=[0, 1]).fingerprint()
    assert len(dataset_fingerprint(ds)) == 16


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no index file.*header"):
        FolderDataset(tmp_path)


def test_missing_column(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds")
    (root / "index.csv").write_text("rgb,depth_mm\nrgb/0.png,depth/0.png\n")
    with pytest.raises(DatasetError, match="no 'depth' column.*depth_column="):
        FolderDataset(root)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "rgb/../../outside.png"])
def test_path_escape_refused(tmp_path: Path, bad: str) -> None:
    root = _write_folder(tmp_path / "ds")
    (root / "index.csv").write_text(f"rgb,depth\n{bad},depth/0.png\n")
    with pytest.raises(DatasetError, match="escapes|absolute"):
        FolderDataset(root)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this platform")
def test_symlink_outside_root_refused(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds")
    outside = tmp_path / "secret.png"
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(outside)
    (root / "rgb" / "link.png").symlink_to(outside)
    (root / "index.csv").write_text("rgb,depth\nrgb/link.png,depth/0.png\n")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        FolderDataset(root)


def test_wrong_bit_depth_refused(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=1)
    Image.fromarray(np.full((12, 16), 100, np.uint8)).save(root / "depth/0.png")
    with pytest.raises(DatasetError, match="not 16-bit.*uint16"):
        FolderDataset(root)[0]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "depth/0.png")
    with pytest.raises(DatasetError, match="mode 'RGB'"):
        FolderDataset(root)[0]


def test_truncated_png_refused(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=1, hw=(64, 64))
    data = (root / "rgb/0.png").read_bytes()
    (root / "rgb/0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or\\s+truncated|truncated"):
        FolderDataset(root)[0]
    (root / "rgb/0.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="cannot decode"):
        FolderDataset(root)[0]


def test_size_mismatch_refused(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=1)
    Image.fromarray(np.ones((10, 16), np.uint16)).save(root / "depth/0.png")
    with pytest.raises(DatasetError, match="differ|depth is"):
        FolderDataset(root)[0]


def test_missing_file_and_bad_options(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "ds", n=2)
    (root / "depth/1.png").unlink()
    ds = FolderDataset(root)
    ds[0]
    with pytest.raises(DatasetError, match="not found"):
        ds[1]
    with pytest.raises(DatasetError, match="only one of"):
        FolderDataset(root, indices=[0], frames="0:1")
    with pytest.raises(DatasetError, match="out of range"):
        FolderDataset(root, indices=[5])
    with pytest.raises(DepthselError):
        FolderDataset(root, size=(0, 4))
