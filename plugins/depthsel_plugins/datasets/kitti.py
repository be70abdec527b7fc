"""``kitti``: the KITTI Eigen split as listed in BTS-style files, plus evaluation crops.

Depth ground truth is the KITTI depth benchmark's projected LiDAR:
``uint16`` PNG where ``metres = value / 256`` and 0 marks "no measurement"
(most pixels: KITTI ground truth is sparse). List lines look like::

    2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png \
        2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377

with RGB relative to ``root`` (the raw data) and depth relative to
``gt_root`` (the depth benchmark folder). Lines with depth ``None`` are skipped.

The Eigen and Garg crops used in KITTI evaluation are defined once, in
:mod:`depthsel.metrics` (the core uses them for metric protocols), and
re-exported here as :func:`eigen_crop` / :func:`garg_crop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from depthsel.datasets import Transform

from ..protocols import EIGEN_KITTI, GARG_KITTI
from .lists import PairListDataset
from .splits import Range

__all__ = ["KITTIDataset", "eigen_crop", "garg_crop", "KITTI_DEPTH_SCALE"]

#: KITTI depth PNG units per metre.
KITTI_DEPTH_SCALE = 256.0


def eigen_crop(height: int, width: int) -> torch.Tensor:
    """Boolean ``[H, W]`` mask of the Eigen et al. KITTI evaluation crop."""
    return EIGEN_KITTI.mask(height, width)


def garg_crop(height: int, width: int) -> torch.Tensor:
    """Boolean ``[H, W]`` mask of the Garg et al. KITTI evaluation crop."""
    return GARG_KITTI.mask(height, width)


class KITTIDataset(PairListDataset):
    """KITTI frames and projected-LiDAR depth listed in an Eigen split file.

    Parameters
    ----------
    root
        KITTI raw data folder (``data_path``).
    list_file
        E.g. ``eigen_test_files_with_gt.txt``.
    gt_root
        KITTI depth benchmark folder (``gt_path``); default ``root``.
    max_depth
        Depth above it becomes invalid; KITTI evaluations usually use 80 m.
    skip_missing, indices, frames, size, transforms, sparse_samples, seed
        See :class:`~depthsel_plugins.datasets.lists.PairListDataset`. Note that
        ``size`` resizes depth with nearest neighbours, which *drops* LiDAR
        points when shrinking; evaluate at full resolution where possible.
    """

    def __init__(
        self,
        root: str | Path,
        list_file: str | Path,
        *,
        gt_root: str | Path | None = None,
        max_depth: float | None = None,
        skip_missing: bool = True,
        indices: Sequence[int] | None = None,
        frames: str | Sequence[Range] | None = None,
        size: tuple[int, int] | None = None,
        transforms: Transform | None = None,
        sparse_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root, list_file, gt_root=gt_root, depth_scale=KITTI_DEPTH_SCALE, skip_missing=skip_missing,
            indices=indices, frames=frames, size=size, transforms=transforms,
            sparse_samples=sparse_samples, max_depth=max_depth, seed=seed,
        )

    def describe(self) -> str:
        """One line saying what this dataset is."""
        return (
            f"KITTI {self.list_file.name}: {len(self)} frames with ground truth "
            f"({self.skipped} without skipped), depth = png / 256 m"
        )
