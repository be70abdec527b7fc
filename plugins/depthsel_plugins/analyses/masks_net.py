"""The mask generator G of Hu et al. (ICCV 2019) for the ``masks`` analysis.

A DRN-D-22-style dilated residual encoder (output stride 8) with three
up-projection blocks and a 3x3 conv + sigmoid head; ``width`` scales every
channel count (16 is DRN-D-22, 4 runs on a CPU). It maps a normalised image to a
mask in ``(0, 1)`` of the same size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.errors import DepthselError

__all__ = ["MaskConfigError", "MaskNet"]


class MaskConfigError(DepthselError):
    """The mask analysis was configured with invalid values."""


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
             relu: bool = True) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    """DRN basic residual block (two 3x3 convs, dilated, projection shortcut when needed)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride, dilation),
                                  _conv_bn(cout, cout, 3, 1, dilation, relu=False))
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else _conv_bn(cin, cout, 1, stride, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class _UpProjection(nn.Module):
    """Laina et al.'s up-projection as in Hu's code: x2 bilinear, 5x5-3x3 branch + 5x5 branch."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(_conv_bn(cin, cout, 5), _conv_bn(cout, cout, 3, relu=False))
        self.branch2 = _conv_bn(cin, cout, 5, relu=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.relu(self.branch1(x) + self.branch2(x))


class MaskNet(nn.Module):
    """Hu et al.'s mask network G: DRN-D-22-style encoder, 3 up-projections, 3x3 conv + sigmoid.

    Parameters
    ----------
    width
        Channels of the first stage; stages use ``width * (1, 2, 4, 8, 16, 32, 32, 32)``
        (16 gives DRN-D-22's 16..512; 4 is a narrow CPU variant).

    Notes
    -----
    The encoder has DRN-D-22's layout: 7x7 stem, stride-2 conv, two residual
    stages at strides 4 and 8, two dilated stages (dilation 2 and 4) and two
    de-gridding convs (dilation 2, 1), so its output stride is 8; the three
    up-projections bring it back to the input size. It is trained from scratch
    (Hu initialised the encoder from ImageNet weights, which are not bundled).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if width < 1:
            raise MaskConfigError(f"width={width} must be >= 1 (16 = DRN-D-22, 4 = narrow CPU variant)")
        c = [width * m for m in (1, 2, 4, 8, 16, 32, 32, 32)]
        self.encoder = nn.Sequential(
            _conv_bn(3, c[0], 7), _conv_bn(c[0], c[0]), _conv_bn(c[0], c[1], stride=2),
            _BasicBlock(c[1], c[2], 2), _BasicBlock(c[2], c[2]),
            _BasicBlock(c[2], c[3], 2), _BasicBlock(c[3], c[3]),
            _BasicBlock(c[3], c[4], dilation=2), _BasicBlock(c[4], c[4], dilation=2),
            _BasicBlock(c[4], c[5], dilation=4), _BasicBlock(c[5], c[5], dilation=4),
            _conv_bn(c[5], c[6], dilation=2), _conv_bn(c[6], c[7], dilation=1),
        )
        self.up = nn.ModuleList([_UpProjection(c[7], c[7] // 2), _UpProjection(c[7] // 2, c[7] // 4),
                                 _UpProjection(c[7] // 4, c[7] // 8)])
        self.head = nn.Conv2d(c[7] // 8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` normalised image -> ``[B,1,H,W]`` mask in ``(0, 1)``."""
        h, w = x.shape[-2:]
        y = self.encoder(x)
        for i, up in enumerate(self.up):
            s = 2 ** (2 - i)  # strides 4, 2, 1 after each up-projection
            y = up(y, (math.ceil(h / s), math.ceil(w / s)))
        return torch.sigmoid(self.head(y))


