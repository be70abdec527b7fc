"""A small UNet for monocular depth, the "your own model" of the tutorial and README.

Nothing here knows about depthsel: it is a plain ``nn.Module``. depthsel finds
it by import path (``depthsel layers examples/my_unet.py:UNet``) and reads the
optional ``DEPTHSEL_INFO`` below for its input size, normalisation and the
layers worth hooking; without it depthsel would ask you to state the
normalisation (or warn once).

Note the activations: ``nn.ReLU()`` without ``inplace=True``. An in-place ReLU
right after a hooked BatchNorm would overwrite the captured activation, which
depthsel refuses with a ``DepthselError`` naming the module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from depthsel import ModelInfo

__all__ = ["UNet", "DEPTHSEL_INFO"]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


class Up(nn.Module):
    """Upsample x2, concatenate the skip connection, double conv."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = _double_conv(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """Three-level UNet: ``[B, 3, H, W]`` image in, ``[B, H, W]`` depth in metres out.

    Parameters
    ----------
    base
        Channels of the first level (doubled per level).
    max_depth
        The output is ``max_depth * sigmoid(.)``.
    """

    def __init__(self, base: int = 8, max_depth: float = 10.0) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.enc1 = _double_conv(3, base)
        self.enc2 = _double_conv(base, base * 2)
        self.bottom = _double_conv(base * 2, base * 4)
        self.up2 = Up(base * 4, base * 2, base * 2)
        self.up1 = Up(base * 2, base, base)
        self.head = nn.Conv2d(base, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict depth for a batch of normalised images."""
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.up2(b, e2)
        d1 = self.up1(d2, e1)
        return self.max_depth * torch.sigmoid(self.head(d1)).squeeze(1)


#: What depthsel reads when this file is named as ``examples/my_unet.py:UNet``.
DEPTHSEL_INFO = ModelInfo(input_size=(64, 64), normalization="imagenet", suggested_layers=("up1",),
                          input_multiple=4)
