"""``example-tiny``: a tiny encoder-decoder depth network and its ModelInfo."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthsel import ModelInfo

INFO = ModelInfo(
    input_size=(32, 32),
    output_stride=1,
    normalization="unit",
    suggested_layers=("features", "decoder"),
    layer_units={"features": 16, "decoder": 8},
    input_multiple=4,
    reference="depthsel-plugin-example",
)


class ExampleTinyNet(nn.Module):
    """Two strided convolutions down, one up; depth in ``(0, max_depth)`` metres.

    Parameters
    ----------
    width
        Width multiplier; ``features`` has ``16 * width`` units and ``decoder`` ``8 * width``.
    max_depth
        Largest depth the sigmoid output can reach.
    """

    def __init__(self, width: float = 1.0, max_depth: float = 10.0) -> None:
        super().__init__()
        c1, c2 = max(1, round(8 * width)), max(1, round(16 * width))
        self.max_depth = max_depth
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, 2, 1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(c1, c2, 3, 2, 1), nn.ReLU())
        self.decoder = nn.Sequential(nn.Conv2d(c2, c1, 3, 1, 1), nn.ReLU())
        self.head = nn.Conv2d(c1, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.decoder(self.features(self.stem(x)))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.max_depth * torch.sigmoid(self.head(y))


def example_tiny(width: float = 1.0, max_depth: float = 10.0) -> ExampleTinyNet:
    """Build :class:`ExampleTinyNet` (randomly initialised)."""
    return ExampleTinyNet(width=width, max_depth=max_depth)
