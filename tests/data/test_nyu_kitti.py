"""NYU layouts (DenseDepth csv/zip, BTS lists, .h5, labelled .mat) and KITTI lists, on generated files."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import depthsel
from depthsel.data import validate_sample
from depthsel.errors import DatasetError
from depthsel_plugins.datasets.kitti import KITTIDataset, eigen_crop, garg_crop
from depthsel_plugins.datasets.nyu import nyu_dataset

HW = (12, 16)
HAS_H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(not HAS_H5PY, reason="h5py not installed (pip install depthsel[h5])")


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*HW, 3), dtype=np.uint8)


def _densedepth_folder(root: Path) -> Path:
    (root / "data" / "nyu2_test").mkdir(parents=True)
    (root / "data" / "nyu2_train" / "scene").mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(root / "data/nyu2_test/00000_colors.png")
    Image.fromarray(np.full(HW, 2500, np.uint16)).save(root / "data/nyu2_test/00000_depth.png")
    Image.fromarray(_rgb(1)).save(root / "data/nyu2_train/scene/1.jpg")
    Image.fromarray(np.full(HW, 51, np.uint8)).save(root / "data/nyu2_train/scene/1.png")
    (root / "data/nyu2_test.csv").write_text("data/nyu2_test/00000_colors.png,data/nyu2_test/00000_depth.png\n")
    (root / "data/nyu2_train.csv").write_text("data/nyu2_train/scene/1.jpg,data/nyu2_train/scene/1.png\n")
    return root


def test_densedepth_folder_and_zip(tmp_path: Path) -> None:
    root = _densedepth_folder(tmp_path / "nyu_data")
    test = nyu_dataset(root, split="test")
    s = test[0]
    validate_sample(s)
    assert torch.allclose(s["depth"], torch.full((1, *HW), 2.5))
    assert s["image"][:, 3, 4].mul(255).round().tolist() == _rgb(0)[3, 4].astype(float).tolist()
    train = nyu_dataset(root, layout="densedepth", split="train")
    assert train[0]["depth"][0, 0, 0].item() == pytest.approx(51 / 255 * 10)
    zpath = tmp_path / "nyu_data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(root).as_posix())
    z = depthsel.get_dataset("nyu", root=zpath, split="test")
    assert torch.equal(z[0]["depth"], s["depth"]) and torch.equal(z[0]["image"], s["image"])
    assert z.names() == ["data/nyu2_test/00000_colors.png"]


def test_densedepth_zip_refuses_escaping_member(tmp_path: Path) -> None:
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("data/nyu2_test.csv", "../../etc/passwd,data/d.png\n")
    with pytest.raises(DatasetError, match="escapes"):
        nyu_dataset(zpath, split="test")


def test_bts_list_layout(tmp_path: Path) -> None:
    root = tmp_path / "official_splits" / "test"
    (root / "bathroom").mkdir(parents=True)
    Image.fromarray(_rgb(2)).save(root / "bathroom/rgb_00045.jpg", quality=95)
    depth = np.arange(HW[0] * HW[1], dtype=np.uint16).reshape(HW) * 10
    Image.fromarray(depth).save(root / "bathroom/sync_depth_00045.png")
    lst = tmp_path / "nyudepthv2_test_files_with_gt.txt"
    lst.write_text("/bathroom/rgb_00045.jpg /bathroom/sync_depth_00045.png 518.8579\n")
    ds = nyu_dataset(root, layout="bts", list_file=lst)
    s = ds[0]
    assert s["depth"][0, 1, 2].item() == pytest.approx(depth[1, 2] / 1000.0)
    assert not bool(s["valid"][0, 0, 0])  # depth 0 -> invalid
    assert ds.focal(0) == pytest.approx(518.8579)
    lst.write_text("../x.jpg bathroom/sync_depth_00045.png 518.8\n")
    with pytest.raises(DatasetError, match="escapes"):
        nyu_dataset(root, list_file=lst)


@needs_h5py
def test_fastdepth_h5_layout(tmp_path: Path) -> None:
    import h5py

    folder = tmp_path / "nyudepthv2" / "val" / "official"
    folder.mkdir(parents=True)
    depth = np.linspace(0.5, 9.5, HW[0] * HW[1], dtype=np.float32).reshape(HW)
    with h5py.File(folder / "00001.h5", "w") as f:
        f["rgb"] = _rgb(3).transpose(2, 0, 1)
        f["depth"] = depth
    ds = nyu_dataset(tmp_path / "nyudepthv2", split="test")
    s = ds[0]
    assert torch.allclose(s["depth"][0], torch.from_numpy(depth))
    assert s["image"][:, 5, 6].mul(255).round().tolist() == _rgb(3)[5, 6].astype(float).tolist()
    assert ds.names() == ["val/official/00001.h5"]


@needs_h5py
def test_labeled_mat_layout(tmp_path: Path) -> None:
    import h5py
    from scipy.io import savemat

    n = 3
    rgb = np.stack([_rgb(10 + i) for i in range(n)])  # [N, H, W, 3]
    depth = np.random.default_rng(0).uniform(0.7, 9.0, (n, *HW)).astype(np.float32)
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)  # MATLAB column-major: [N, 3, W, H]
        f["depths"] = depth.transpose(0, 2, 1)  # [N, W, H]
    everything = nyu_dataset(path, split=None)
    assert len(everything) == n
    s = everything[1]
    assert torch.allclose(s["depth"][0], torch.from_numpy(depth[1]))
    assert s["image"][:, 2, 7].mul(255).round().tolist() == rgb[1, 2, 7].astype(float).tolist()
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3]])})
    test = nyu_dataset(path, split="test", split_file=tmp_path / "splits.mat")
    assert test.names() == ["labeled/0002"]
    with pytest.raises(DatasetError, match="splits.mat"):
        nyu_dataset(path, split="test")


def test_h5_missing_h5py_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from depthsel_plugins.datasets import nyu as nyu_mod

    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "h5py":
            raise ImportError("no h5py")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DatasetError, match=r"pip install depthsel\[h5\]"):
        nyu_mod._h5py()


def test_nyu_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot tell the NYU layout"):
        nyu_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown NYU layout"):
        nyu_dataset(tmp_path, layout="nope")


def test_kitti_eigen_list(tmp_path: Path) -> None:
    raw, gt = tmp_path / "raw", tmp_path / "gt"
    img_rel = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    depth_rel = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    (raw / img_rel).parent.mkdir(parents=True)
    (gt / depth_rel).parent.mkdir(parents=True)
    Image.fromarray(_rgb(4)).save(raw / img_rel)
    depth = np.zeros(HW, np.uint16)
    depth[5, 5], depth[6, 7] = 256 * 20, 256 * 85 + 128
    Image.fromarray(depth).save(gt / depth_rel)
    lst = tmp_path / "eigen_test_files_with_gt.txt"
    lst.write_text(f"{img_rel} {depth_rel} 721.5377\n{img_rel} None 721.5377\n")
    ds = KITTIDataset(raw, lst, gt_root=gt)
    assert len(ds) == 1 and ds.skipped == 1
    s = ds[0]
    assert s["depth"][0, 5, 5].item() == pytest.approx(20.0)
    assert s["depth"][0, 6, 7].item() == pytest.approx(85.5)
    assert int(s["valid"].sum()) == 2
    capped = depthsel.get_dataset("kitti", root=raw, list_file=lst, gt_root=gt, max_depth=80.0)
    assert int(capped[0]["valid"].sum()) == 1
    with pytest.raises(DatasetError, match="skip_missing"):
        KITTIDataset(raw, lst, gt_root=gt, skip_missing=False)


def test_kitti_crops() -> None:
    h, w = 375, 1242
    g, e = garg_crop(h, w), eigen_crop(h, w)
    assert g.shape == (h, w) and g.dtype == torch.bool
    rows = g.any(1).nonzero().squeeze(1)
    assert (int(rows[0]), int(rows[-1]) + 1) == (int(0.40810811 * h), int(0.99189189 * h))
    cols = e.any(0).nonzero().squeeze(1)
    assert (int(cols[0]), int(cols[-1]) + 1) == (int(0.0359477 * w), int(0.96405229 * w))
    # Same window height, but Eigen's starts higher in the image than Garg's.
    assert int(e.any(1).nonzero()[0]) < int(rows[0]) and not torch.equal(e, g)
