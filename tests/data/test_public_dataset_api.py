"""A third-party dataset built only on the public core API (depthsel.datasets), as docs/plugins.md shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import depthsel
from depthsel.data import CachedDataset, validate_sample
from depthsel.datasets import to_tensors
from depthsel.errors import DatasetError
from depthsel.transforms import HFlip


class Pairs(depthsel.PairedDepthDataset):
    """The docs example: rows of (rgb, depth) paths relative to a root."""

    def __init__(self, root: Path, rows: list[tuple[str, str]], **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.root, self.rows = root, rows

    def __len__(self) -> int:
        return len(self.rows)

    def names(self) -> list[str]:
        return [rgb for rgb, _ in self.rows]

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, depth = self.rows[index]
        image = depthsel.decode_rgb(depthsel.safe_join(self.root, rgb), rgb)
        metres = depthsel.decode_depth_png(depthsel.safe_join(self.root, depth), depth, scale=1000.0)
        return to_tensors(image, metres)


def _write_pair(root: Path, stem: str, depth_mm: np.ndarray) -> tuple[str, str]:
    h, w = depth_mm.shape
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / f"{stem}.png")
    Image.fromarray(depth_mm.astype(np.uint16)).save(root / f"{stem}_d.png")
    return f"{stem}.png", f"{stem}_d.png"


def test_a_third_party_dataset_follows_the_contract(tmp_path: Path) -> None:
    depth_mm = np.array([[0, 1500, 3000, 12000], [250, 500, 750, 1000]])
    rows = [_write_pair(tmp_path, "a", depth_mm)]
    data = Pairs(tmp_path, rows, max_depth=10.0, transforms=HFlip(p=1.0))
    item = data[0]
    validate_sample(item, "item 0")
    # Millimetres to metres, 0 and the 12 m pixel (over max_depth) invalid, flipped left-right.
    expected = torch.tensor(depth_mm[:, ::-1].copy(), dtype=torch.float32) / 1000.0
    expected[expected > 10.0] = 0.0
    assert torch.equal(item["depth"][0], expected)
    assert torch.equal(item["valid"][0], expected > 0)
    assert item["name"] == "a.png"
    cached = CachedDataset(data)  # cacheable_item/finish_item: the flip still runs on every read
    assert torch.equal(cached[0]["depth"], item["depth"])


def test_paths_that_leave_the_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    rows = [_write_pair(tmp_path, "outside", np.ones((2, 2)))]
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "outside.png")
    for rel in ("../outside.png", "/etc/passwd", "link.png"):
        with pytest.raises(DatasetError):
            Pairs(tmp_path / "root", [(rel, rows[0][1])])[0]


def test_a_corrupt_file_is_one_dataset_error(tmp_path: Path) -> None:
    rgb, depth = _write_pair(tmp_path, "a", np.ones((2, 2)))
    (tmp_path / depth).write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="cannot decode"):
        Pairs(tmp_path, [(rgb, depth)])[0]
