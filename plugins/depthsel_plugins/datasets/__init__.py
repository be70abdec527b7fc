"""First-party dataset plugins: ``folder``, ``nyu``, ``kitti`` and ``synthetic``.

Each factory takes keyword configuration and returns a
``torch.utils.data.Dataset`` whose items follow :mod:`depthsel.data`. The
submodules are imported lazily (inside the factories), so registering the
plugin costs nothing and a missing optional dependency (h5py) only matters
when its layout is used.
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl

__all__ = ["register_datasets"]


def _folder(**config: Any) -> Any:
    from .folder import FolderDataset

    return FolderDataset(**config)


def _nyu(**config: Any) -> Any:
    from .nyu import nyu_dataset

    return nyu_dataset(**config)


def _kitti(**config: Any) -> Any:
    from .kitti import KITTIDataset

    return KITTIDataset(**config)


def _synthetic(**config: Any) -> Any:
    from .synthetic import SyntheticDataset

    return SyntheticDataset(**config)


@hookimpl
def register_datasets(register: Any) -> None:
    """Register the four first-party datasets."""
    register("folder", _folder, description="RGB-D pairs listed in root/index.csv (rgb,depth; 16-bit PNG mm)")
    register("nyu", _nyu, description="NYU Depth V2: DenseDepth zip/csv, BTS lists, FastDepth .h5, labelled .mat")
    register("kitti", _kitti, description="KITTI Eigen split list files; depth PNG / 256 = metres")
    register("synthetic", _synthetic, description="SYNTHETIC ray-cast indoor scenes; runs with no data (not real)")
