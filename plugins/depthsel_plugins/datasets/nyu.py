"""``nyu``: NYU Depth V2 in the layouts people actually have on disk.

``layout=``

``"densedepth"``
    DenseDepth / Hu et al. ``nyu_data.zip`` (or its extracted folder): CSV files
    ``data/nyu2_train.csv`` / ``data/nyu2_test.csv`` without header, each line
    ``rgb_path,depth_path`` relative to the zip root. 8-bit depth PNGs (the
    training set) mean ``value / 255 * 10`` metres; 16-bit ones (the test set)
    are millimetres. The zip is read in place with :mod:`zipfile`.
``"bts"``
    BTS ``official_splits`` folder with a list file (``rgb depth focal`` lines,
    depth PNG in millimetres); see :mod:`.lists`.
``"h5"``
    FastDepth / sparse-to-dense ``nyudepthv2/{train,val}/**/*.h5`` files with
    ``rgb`` ``uint8 [3,H,W]`` and ``depth`` ``float [H,W]`` metres (needs h5py).
``"mat"``
    The official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5; needs h5py):
    ``images [N,3,W,H]`` and ``depths [N,W,H]`` as h5py sees them (MATLAB
    stores column-major). ``split_file=`` the official ``splits.mat`` selects
    ``trainNdxs``/``testNdxs`` (1-based).
``"auto"``
    Chosen from ``root``: ``.zip`` or a folder with ``nyu2_*.csv`` ->
    densedepth, ``.mat`` -> mat, ``list_file`` given -> bts, ``*.h5`` -> h5.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthsel.datasets import PairedDepthDataset, decode_depth_png, decode_rgb, safe_join, safe_relative, to_tensors
from depthsel.errors import DatasetError

from .lists import PairListDataset
from .splits import select_indices

__all__ = ["nyu_dataset", "DenseDepthNYU", "H5NYU", "LabeledMatNYU"]

_LAYOUTS = ("auto", "densedepth", "bts", "h5", "mat")


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise DatasetError(
            "reading NYU .h5/.mat files needs h5py, which is not installed; "
            "run `pip install depthsel[h5]` (or `pip install h5py`)"
        ) from None
    return h5py


class DenseDepthNYU(PairedDepthDataset):
    """DenseDepth ``nyu_data.zip`` layout (zip file or extracted folder)."""

    def __init__(self, root: str | Path, split: str = "test", *, indices: Sequence[int] | None = None,
                 frames: Any = None, **common: Any) -> None:
        super().__init__(**common)
        self.root = Path(root).expanduser()
        if split not in ("train", "test"):
            raise DatasetError(f"NYU densedepth split must be 'train' or 'test', got {split!r}")
        self.split = split
        csv_name = f"nyu2_{split}.csv"
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        self.is_zip = self.root.is_file() and zipfile.is_zipfile(self.root)
        if self.is_zip:
            members = set(self._archive().namelist())
            found = next((c for c in (f"data/{csv_name}", csv_name) if c in members), None)
            if found is None:
                raise DatasetError(f"{self.root} holds no data/{csv_name}; pass the DenseDepth nyu_data.zip")
            text = self._archive().read(found).decode("utf-8-sig")
        elif self.root.is_dir():
            found_p = next((p for p in (self.root / "data" / csv_name, self.root / csv_name) if p.is_file()), None)
            if found_p is None:
                raise DatasetError(f"no data/{csv_name} under {self.root}; pass the extracted nyu_data folder")
            text = found_p.read_text(encoding="utf-8-sig")
        else:
            raise DatasetError(f"NYU root {self.root} is neither a zip nor a folder; pass nyu_data.zip or its folder")
        pairs = [row for row in csv.reader(io.StringIO(text)) if row and row[0].strip()]
        if not pairs or any(len(r) < 2 for r in pairs):
            raise DatasetError(f"{csv_name} must have 'rgb_path,depth_path' on every line (no header)")
        keep = select_indices(len(pairs), indices=indices, frames=frames)
        # Zip member names are checked like file paths: no '..', no absolute names.
        self._pairs = [(safe_relative(pairs[i][0], f"{csv_name} rgb"),
                        safe_relative(pairs[i][1], f"{csv_name} depth")) for i in keep]
        if self.is_zip:
            missing = [p for pair in self._pairs for p in pair if p not in members]
            if missing:
                raise DatasetError(f"{self.root.name} lacks {missing[0]} listed in {csv_name}; the zip is incomplete")
        else:
            self._files = [(safe_join(self.root, r, "rgb"), safe_join(self.root, d, "depth")) for r, d in self._pairs]

    def _archive(self) -> zipfile.ZipFile:
        # One handle per process: DataLoader workers must not share a file position.
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.root)
            self._zip_pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self._pairs)

    def names(self) -> list[str]:
        """RGB paths as listed in the CSV."""
        return [r for r, _ in self._pairs]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_rel, depth_rel = self._pairs[index]
        if self.is_zip:
            zf = self._archive()
            rgb_src: Path | bytes = zf.read(rgb_rel)
            depth_src: Path | bytes = zf.read(depth_rel)
        else:
            rgb_src, depth_src = self._files[index]
        rgb = decode_rgb(rgb_src, rgb_rel)
        depth = decode_depth_png(depth_src, depth_rel, scale=1000.0, allow_8bit_scale=10.0)
        return to_tensors(rgb, depth)

    def fingerprint(self) -> str:
        """Hash of names, the archive/file sizes and configuration."""
        files = [self.root] if self.is_zip else [p for pair in self._files for p in pair]
        return self.fingerprint_files(files, self.root.parent if self.is_zip else self.root)


class H5NYU(PairedDepthDataset):
    """FastDepth / sparse-to-dense ``.h5`` files (``rgb [3,H,W] uint8``, ``depth [H,W]`` metres)."""

    def __init__(self, root: str | Path, split: str = "test", *, indices: Sequence[int] | None = None,
                 frames: Any = None, **common: Any) -> None:
        super().__init__(**common)
        self.root = Path(root).expanduser()
        folder = self.root / split
        if split == "test" and not folder.is_dir():
            folder = self.root / "val"  # sparse-to-dense calls its test split "val"
        if not folder.is_dir():
            folder = self.root
        files = sorted(folder.rglob("*.h5"))
        if not files:
            raise DatasetError(f"no .h5 files under {folder}; pass root= the nyudepthv2 folder with train/ and val/")
        keep = select_indices(len(files), indices=indices, frames=frames)
        self._files = [files[i] for i in keep]
        _h5py()  # fail at construction, not in a DataLoader worker

    def __len__(self) -> int:
        return len(self._files)

    def names(self) -> list[str]:
        """File paths relative to root."""
        return [p.relative_to(self.root).as_posix() for p in self._files]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        h5py = _h5py()
        path = self._files[index]
        try:
            with h5py.File(path, "r") as f:
                rgb, depth = np.asarray(f["rgb"]), np.asarray(f["depth"], dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise DatasetError(f"{path}: unreadable or lacks 'rgb'/'depth' ({exc}); re-download the file") from None
        if rgb.ndim != 3 or rgb.shape[0] != 3 or depth.ndim != 2:
            raise DatasetError(f"{path}: expected rgb [3,H,W] and depth [H,W], got {rgb.shape} and {depth.shape}")
        return to_tensors(rgb.transpose(1, 2, 0).astype(np.uint8), depth)

    def fingerprint(self) -> str:
        """Hash of relative paths, file sizes and configuration."""
        return self.fingerprint_files(self._files, self.root)


class LabeledMatNYU(PairedDepthDataset):
    """The official ``nyu_depth_v2_labeled.mat`` (1449 frames), optionally with ``splits.mat``."""

    def __init__(self, root: str | Path, split: str | None = None, *, split_file: str | Path | None = None,
                 indices: Sequence[int] | None = None, frames: Any = None, **common: Any) -> None:
        super().__init__(**common)
        self.root = Path(root).expanduser()
        h5py = _h5py()
        try:
            with h5py.File(self.root, "r") as f:
                n = int(f["images"].shape[0])
                if f["depths"].shape[0] != n:
                    raise DatasetError(f"{self.root}: images and depths hold different frame counts")
        except (OSError, KeyError) as exc:
            raise DatasetError(
                f"{self.root}: not an HDF5 (v7.3) .mat with 'images' and 'depths' ({exc}); "
                "pass nyu_depth_v2_labeled.mat"
            ) from None
        rows = list(range(n))
        if split not in (None, "all"):
            if split_file is None:
                raise DatasetError("split='train'/'test' on the labelled .mat needs split_file= the official splits.mat")
            from scipy.io import loadmat  # scipy is a core dependency; imported lazily as it is slow

            key = {"train": "trainNdxs", "test": "testNdxs"}.get(split)
            if key is None:
                raise DatasetError(f"split must be 'train', 'test' or None, got {split!r}")
            try:
                rows = [int(i) - 1 for i in np.asarray(loadmat(str(split_file))[key]).reshape(-1)]
            except (OSError, KeyError, ValueError) as exc:
                raise DatasetError(f"{split_file}: cannot read {key} ({exc}); pass the official splits.mat") from None
        keep = select_indices(len(rows), indices=indices, frames=frames)
        self._rows = [rows[i] for i in keep]
        self._h5: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self._rows)

    def names(self) -> list[str]:
        """``labeled/<frame>`` (0-based frame number in the .mat)."""
        return [f"labeled/{i:04d}" for i in self._rows]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = _h5py().File(self.root, "r"), os.getpid()
        i = self._rows[index]
        # MATLAB is column-major: h5py sees [3, W, H] and [W, H]; transpose to [H, W, 3] / [H, W].
        rgb = np.asarray(self._h5["images"][i]).transpose(2, 1, 0)
        depth = np.asarray(self._h5["depths"][i], dtype=np.float32).T
        return to_tensors(rgb.astype(np.uint8), depth)

    def fingerprint(self) -> str:
        """Hash of the file size, frame numbers and configuration."""
        return self.fingerprint_files([self.root], self.root.parent)


def nyu_dataset(
    root: str | Path,
    layout: str = "auto",
    split: str | None = "test",
    *,
    list_file: str | Path | None = None,
    split_file: str | Path | None = None,
    **kwargs: Any,
) -> PairedDepthDataset:
    """Build an NYU Depth V2 dataset (see the module docstring for the layouts).

    Parameters
    ----------
    root
        Zip file, folder, or ``.mat`` file.
    layout
        One of ``auto``, ``densedepth``, ``bts``, ``h5``, ``mat``.
    split
        ``"train"`` or ``"test"`` (``None``/``"all"`` for every frame of a ``.mat``).
    list_file
        BTS list file (``layout="bts"``).
    split_file
        Official ``splits.mat`` (``layout="mat"``).
    **kwargs
        ``indices``, ``frames``, ``size``, ``transforms``, ``sparse_samples``,
        ``max_depth``, ``seed`` (and ``gt_root`` for bts).
    """
    if layout not in _LAYOUTS:
        raise DatasetError(f"unknown NYU layout {layout!r}; use one of {', '.join(_LAYOUTS)}")
    root_p = Path(root).expanduser()
    if layout == "auto":
        if root_p.suffix.lower() == ".mat":
            layout = "mat"
        elif list_file is not None:
            layout = "bts"
        elif root_p.suffix.lower() == ".zip" or any(
            (root_p / d / f"nyu2_{s}.csv").is_file() for d in (".", "data") for s in ("train", "test")
        ):
            layout = "densedepth"
        elif root_p.is_dir() and next(root_p.rglob("*.h5"), None) is not None:
            layout = "h5"
        else:
            raise DatasetError(
                f"cannot tell the NYU layout of {root_p}; pass layout= one of densedepth, bts "
                "(with list_file=), h5, mat"
            )
    if layout == "bts":
        if list_file is None:
            raise DatasetError("layout='bts' needs list_file= (e.g. nyudepthv2_test_files_with_gt.txt)")
        return PairListDataset(root_p, list_file, depth_scale=1000.0, **kwargs)
    if layout == "densedepth":
        return DenseDepthNYU(root_p, split or "test", **kwargs)
    if layout == "h5":
        return H5NYU(root_p, split or "test", **kwargs)
    return LabeledMatNYU(root_p, split, split_file=split_file, **kwargs)
