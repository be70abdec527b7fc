"""Fixtures for plugin authors and for depthsel's own tests.

``ToyDepthNet`` is a small encoder-decoder depth network with named layers
(``enc1``..``enc3``, ``dec1``..``dec3``) that trains in seconds on a CPU.
``toy_batch`` makes a seeded batch whose image carries a depth cue, so a
network can actually learn something from it. The pytest fixtures are
exposed through ``pytest_plugins = ["depthsel.testing"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .capture import count_hooks
from .registry import PluginManager

__all__ = ["ToyDepthNet", "ToyDepthDataset", "toy_batch", "assert_no_hooks", "isolated_plugins"]


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


class ToyDepthNet(nn.Module):
    """A tiny encoder-decoder depth network for tests and examples.

    Parameters
    ----------
    width
        Channels of the first stage; stages use ``width``, ``2w``, ``4w``.
    max_depth
        Output is ``max_depth * sigmoid(.)`` metres.

    Notes
    -----
    Layers worth hooking: ``dec2`` (``2w`` units, 1/2 resolution) and
    ``dec3`` (``w`` units, full resolution).
    """

    def __init__(self, width: int = 16, max_depth: float = 10.0) -> None:
        super().__init__()
        w = width
        self.max_depth = max_depth
        self.enc1 = _block(3, w, 2)
        self.enc2 = _block(w, 2 * w, 2)
        self.enc3 = _block(2 * w, 4 * w, 2)
        self.dec1 = _block(4 * w, 2 * w)
        self.dec2 = _block(2 * w, 2 * w)
        self.dec3 = _block(2 * w, w)
        self.head = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d1 = self.dec1(F.interpolate(e3, size=e2.shape[-2:], mode="nearest"))
        d2 = self.dec2(F.interpolate(d1, size=e1.shape[-2:], mode="nearest") + e1.repeat(1, 2, 1, 1)[:, : d1.shape[1]])
        d3 = self.dec3(F.interpolate(d2, size=size, mode="nearest"))
        return self.max_depth * torch.sigmoid(self.head(d3))


def toy_batch(batch: int = 4, size: tuple[int, int] = (32, 32), seed: int = 0,
              min_depth: float = 0.5, max_depth: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(image [B,3,H,W] in [0,1], depth [B,1,H,W] metres)`` with a learnable cue.

    Depth is a random ramp plus a box; the image encodes depth in brightness
    and a texture whose frequency grows with distance, plus noise.
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size
    yy = torch.linspace(0, 1, h).view(1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, w)
    a = torch.rand(batch, 1, 1, generator=g)
    b = torch.rand(batch, 1, 1, generator=g)
    ramp = (a * yy + b * xx + torch.rand(batch, 1, 1, generator=g)) / 3.0
    depth = min_depth + (max_depth - min_depth) * ramp.clamp(0, 1)
    y0 = torch.randint(0, h // 2, (batch,), generator=g)
    x0 = torch.randint(0, w // 2, (batch,), generator=g)
    for i in range(batch):
        depth[i, y0[i]: y0[i] + h // 3, x0[i]: x0[i] + w // 3] = min_depth + 0.1 * (max_depth - min_depth)
    t = (depth - min_depth) / (max_depth - min_depth)
    texture = torch.sin(xx * (4 + 20 * t) * 3.1416) * 0.1
    base = 1.0 - 0.8 * t
    noise = 0.03 * torch.randn(batch, 3, h, w, generator=g)
    image = (torch.stack([base, base * 0.9 + texture, base * 0.8 - texture], 1) + noise).clamp(0, 1)
    return image, depth.unsqueeze(1)


class ToyDepthDataset(Dataset[dict[str, Any]]):
    """:func:`toy_batch` samples as depthsel dataset items (``image``, ``depth``, ``valid``, ``name``).

    Parameters
    ----------
    num_samples, size, seed
        Passed to :func:`toy_batch`.
    dtype
        Floating dtype of image and depth (float64 for exact-equality tests).
    """

    def __init__(self, num_samples: int = 8, size: tuple[int, int] = (32, 32), seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        image, depth = toy_batch(num_samples, tuple(size), seed=seed)
        self.image, self.depth = image.to(dtype), depth.to(dtype)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.depth[i]
        return {"image": self.image[i], "depth": d, "valid": d > 0, "name": f"toy/{i}"}

    def names(self) -> list[str]:
        """Stable sample names (used by dataset fingerprints)."""
        return [f"toy/{i}" for i in range(len(self))]


def assert_no_hooks(model: nn.Module) -> None:
    """Fail if any forward/backward hook is still registered on ``model``."""
    n = count_hooks(model)
    if n:
        raise AssertionError(f"{n} hooks are still registered on the model")


def isolated_plugins(*plugins: Any, load_entry_points: bool = False) -> PluginManager:
    """A fresh :class:`PluginManager` holding only ``plugins`` (for plugin unit tests)."""
    pm = PluginManager(load_entry_points=load_entry_points)
    for p in plugins:
        pm.register(p)
    return pm


try:  # pytest fixtures, only when pytest is present
    import pytest

    @pytest.fixture
    def toy_model() -> ToyDepthNet:
        """A seeded :class:`ToyDepthNet` of width 8."""
        torch.manual_seed(0)
        return ToyDepthNet(width=8)

    @pytest.fixture
    def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
        """A seeded ``(image, depth)`` batch of 4 at 32x32."""
        return toy_batch()

    @pytest.fixture
    def plugin_manager() -> Iterator[PluginManager]:
        """An empty plugin manager that does not read entry points."""
        yield PluginManager(load_entry_points=False)

except ImportError:  # pragma: no cover
    pass
