"""``folder``: RGB-D pairs listed in an ``index.csv`` (the layout of ``shared/data``).

Layout::

    root/
      index.csv          # header with at least the columns rgb,depth
      rgb/0000.png       # 8-bit RGB (PNG or JPEG)
      depth/0000.png     # 16-bit single-channel PNG, millimetres, 0 = invalid

Paths in the index are relative to ``root``; any path that leaves the root
(``..``, absolute, or a symlink resolving outside) is refused.

7-Scenes note: its ``depth/`` frames are the *raw* depth camera, not aligned
with RGB. Its index also has a ``depth_registered`` column (depth reprojected
into the RGB frame); that is the one to use for anything per-pixel, so when
``depth_column`` is left at ``None`` and the index has ``depth_registered``,
it is chosen. Pass ``depth_column="depth"`` to get the raw frames on purpose.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from depthsel.datasets import PairedDepthDataset, Transform, decode_depth_png, decode_rgb, safe_join, to_tensors
from depthsel.errors import DatasetError

from .splits import Range, select_indices

__all__ = ["FolderDataset", "read_index"]


def read_index(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV index with a header; return ``(columns, rows)``."""
    if not path.is_file():
        raise DatasetError(
            f"no index file at {path}; create it with a header line 'rgb,depth' and one "
            "row per pair (paths relative to the dataset root), or pass the right root"
        )
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = []
            for lineno, row in enumerate(reader, start=2):
                # DictReader puts surplus fields in a list under the key None.
                if None in row:
                    raise DatasetError(
                        f"{path} line {lineno} has more fields than the header "
                        f"({len(columns)}); quote paths that contain commas or fix the row"
                    )
                rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable UTF-8 CSV ({exc}); re-save it as plain CSV") from None
    return columns, rows


class FolderDataset(PairedDepthDataset):
    """RGB-D pairs listed in ``root/index.csv``.

    Parameters
    ----------
    root
        Dataset folder holding the index.
    index
        Index file name relative to ``root``.
    rgb_column
        Index column with RGB paths.
    depth_column
        Index column with depth paths. ``None``: ``depth_registered`` if the
        index has it (7-Scenes), else ``depth``.
    depth_dir
        Replace the folder of every depth path by this one (keeping the file
        name), e.g. ``"depth_registered"`` for an index that only lists ``depth/``.
    depth_scale
        Depth PNG units per metre (1000 for millimetres).
    indices, frames, split, test_fraction, split_gap
        Row selection; at most one of ``indices``, ``frames`` (``"0:80"``) and
        ``split`` (``"train"``/``"test"`` by contiguous frame blocks, see
        :func:`~depthsel_plugins.datasets.splits.contiguous_block_split`).
    size, transforms, sparse_samples, max_depth, seed
        See :class:`~depthsel.datasets.PairedDepthDataset`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        index: str = "index.csv",
        rgb_column: str = "rgb",
        depth_column: str | None = None,
        depth_dir: str | None = None,
        depth_scale: float = 1000.0,
        indices: Sequence[int] | None = None,
        frames: str | Sequence[Range] | None = None,
        split: str | None = None,
        test_fraction: float = 0.2,
        split_gap: int = 0,
        size: tuple[int, int] | None = None,
        transforms: Transform | None = None,
        sparse_samples: int | None = None,
        max_depth: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            size=size, transforms=transforms, sparse_samples=sparse_samples,
            max_depth=max_depth, seed=seed,
        )
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} is not a folder; pass root= the folder holding {index}")
        if not float(depth_scale) > 0:
            raise DatasetError(f"depth_scale must be > 0 units per metre, got {depth_scale}")
        self.depth_scale = float(depth_scale)
        index_path = safe_join(self.root, index, "index")
        columns, rows = read_index(index_path)
        if depth_column is None:
            depth_column = "depth_registered" if "depth_registered" in columns else "depth"
        for col, label in ((rgb_column, "rgb_column"), (depth_column, "depth_column")):
            if col not in columns:
                raise DatasetError(
                    f"{index_path} has no {col!r} column (columns: {', '.join(columns) or 'none'}); "
                    f"add it to the header or pass {label}= one of the existing columns"
                )
        if not rows:
            raise DatasetError(f"{index_path} lists no pairs; add one row per rgb,depth pair")
        self.rgb_column, self.depth_column, self.depth_dir = rgb_column, depth_column, depth_dir
        selected = select_indices(
            len(rows), indices=indices, frames=frames, split=split,
            test_fraction=test_fraction, gap=split_gap,
        )
        self._rel: list[tuple[str, str]] = []
        self._paths: list[tuple[Path, Path]] = []
        for i in selected:
            row = rows[i]
            rgb_rel, depth_rel = row[rgb_column], row[depth_column]
            if depth_dir is not None:
                depth_rel = f"{depth_dir.rstrip('/')}/{Path(depth_rel.replace(chr(92), '/')).name}"
            where = f"{index_path.name} row {i + 2}"
            # Checked eagerly: an unsafe index must fail at construction, before any read.
            rgb_p = safe_join(self.root, rgb_rel, f"{where} rgb path")
            depth_p = safe_join(self.root, depth_rel, f"{where} depth path")
            self._rel.append((rgb_rel, depth_rel))
            self._paths.append((rgb_p, depth_p))
        self._names = [r for r, _ in self._rel]

    def __len__(self) -> int:
        return len(self._paths)

    def names(self) -> list[str]:
        """Return the rgb path of every selected row (relative to root)."""
        return list(self._names)

    def paths(self, index: int) -> tuple[Path, Path]:
        """Return the resolved ``(rgb, depth)`` paths of one sample."""
        return self._paths[index]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_p, depth_p = self._paths[index]
        rgb_rel, depth_rel = self._rel[index]
        rgb = decode_rgb(rgb_p, f"{self.root.name}/{rgb_rel}")
        depth = decode_depth_png(depth_p, f"{self.root.name}/{depth_rel}", scale=self.depth_scale)
        return to_tensors(rgb, depth)

    def config(self) -> dict[str, Any]:
        """Options that change the items (for :meth:`fingerprint`)."""
        cfg = super().config()
        cfg.update(
            rgb_column=self.rgb_column, depth_column=self.depth_column,
            depth_dir=self.depth_dir, depth_scale=self.depth_scale,
        )
        return cfg

    def fingerprint(self) -> str:
        """Hash of relative paths, file sizes and configuration."""
        flat = [p for pair in self._paths for p in pair]
        return self.fingerprint_files(flat, self.root)

    def describe(self) -> str:
        """One line saying what this dataset is."""
        return (
            f"folder dataset {self.root} ({len(self)} pairs, rgb={self.rgb_column!r}, "
            f"depth={self.depth_column!r}, {self.depth_scale:g} units/m)"
        )
