"""Datasets described by BTS-style list files: ``rgb_path depth_path focal`` per line.

BTS (and the many repositories derived from it) describe the NYU and KITTI
Eigen splits with whitespace-separated lines such as::

    /kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579
    2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png \
        2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377

RGB paths are relative to ``data_path`` and depth paths to ``gt_path``; a
leading ``/`` is BTS's way of writing "relative", so it is stripped. Depth
``None`` marks a frame without ground truth (KITTI); such lines are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from depthsel.datasets import PairedDepthDataset, Transform, decode_depth_png, decode_rgb, safe_join, to_tensors
from depthsel.errors import DatasetError

from .splits import Range, select_indices

__all__ = ["read_pair_list", "PairListDataset"]


def read_pair_list(path: Path) -> list[tuple[str, str | None, float | None]]:
    """Parse a list file into ``(rgb, depth or None, focal or None)`` tuples."""
    if not path.is_file():
        raise DatasetError(f"list file {path} not found; pass list_file= the split file (e.g. nyudepthv2_test_files_with_gt.txt)")
    rows: list[tuple[str, str | None, float | None]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 2:
            raise DatasetError(f"{path.name} line {n}: expected 'rgb_path depth_path [focal]', got {line!r}")
        focal: float | None = None
        if len(parts) >= 3:
            try:
                focal = float(parts[2])
            except ValueError:
                raise DatasetError(f"{path.name} line {n}: focal {parts[2]!r} is not a number") from None
        depth = None if parts[1] == "None" else parts[1]
        rows.append((parts[0], depth, focal))
    if not rows:
        raise DatasetError(f"list file {path} has no entries; one 'rgb depth focal' line per frame")
    return rows


class PairListDataset(PairedDepthDataset):
    """RGB and 16-bit depth PNGs listed in a BTS-style list file.

    Parameters
    ----------
    root
        ``data_path``: RGB paths are relative to it.
    list_file
        The list file; a relative path is looked up in the working directory, then in ``root``.
    gt_root
        ``gt_path``: depth paths are relative to it (default ``root``).
    depth_scale
        Units per metre of the depth PNGs (1000 for NYU millimetres, 256 for KITTI).
    skip_missing
        Skip lines whose depth is ``None``; if ``False`` they raise.
    indices, frames
        Row selection (after skipping).
    size, transforms, sparse_samples, max_depth, seed
        See :class:`~depthsel.datasets.PairedDepthDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str | Path,
        *,
        gt_root: str | Path | None = None,
        depth_scale: float = 1000.0,
        skip_missing: bool = True,
        indices: Sequence[int] | None = None,
        frames: str | Sequence[Range] | None = None,
        size: tuple[int, int] | None = None,
        transforms: Transform | None = None,
        sparse_samples: int | None = None,
        max_depth: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(size=size, transforms=transforms, sparse_samples=sparse_samples,
                         max_depth=max_depth, seed=seed)
        self.root = Path(root).expanduser()
        self.gt_root = Path(gt_root).expanduser() if gt_root is not None else self.root
        for r, label in ((self.root, "root"), (self.gt_root, "gt_root")):
            if not r.is_dir():
                raise DatasetError(f"{label} {r} is not a folder; pass the folder the list paths are relative to")
        lf = Path(list_file).expanduser()
        if not lf.is_absolute() and not lf.is_file() and (self.root / lf).is_file():
            lf = self.root / lf
        self.list_file = lf
        self.depth_scale = float(depth_scale)
        rows = read_pair_list(lf)
        missing = [r for r in rows if r[1] is None]
        if missing and not skip_missing:
            raise DatasetError(
                f"{lf.name}: {len(missing)} line(s) have depth 'None' (e.g. {missing[0][0]}); "
                "pass skip_missing=True to leave them out"
            )
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            raise DatasetError(f"{lf.name}: no line has ground-truth depth; check the list file")
        self.skipped = len(missing)
        keep = select_indices(len(rows), indices=indices, frames=frames)
        self._rows = [rows[i] for i in keep]
        self._paths = [
            (
                safe_join(self.root, r, f"{lf.name} rgb path", strip_leading_slash=True),
                safe_join(self.gt_root, str(d), f"{lf.name} depth path", strip_leading_slash=True),
            )
            for r, d, _ in self._rows
        ]

    def __len__(self) -> int:
        return len(self._rows)

    def names(self) -> list[str]:
        """RGB paths as listed (leading ``/`` removed)."""
        return [r.lstrip("/") for r, _, _ in self._rows]

    def focal(self, index: int) -> float | None:
        """Focal length in pixels from the list file (``None`` if not given)."""
        return self._rows[index][2]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_p, depth_p = self._paths[index]
        name = self.names()[index]
        rgb = decode_rgb(rgb_p, name)
        depth = decode_depth_png(depth_p, str(self._rows[index][1]), scale=self.depth_scale)
        return to_tensors(rgb, depth)

    def config(self) -> dict[str, Any]:
        """Options that change the items."""
        cfg = super().config()
        cfg.update(depth_scale=self.depth_scale, list_file=self.list_file.name)
        return cfg

    def fingerprint(self) -> str:
        """Hash of relative paths, file sizes and configuration."""
        return self.fingerprint_files([p for pair in self._paths for p in pair], self.root)
