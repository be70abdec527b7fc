"""ResNet-50 with torchvision parameter names, written in plain PyTorch.

depthsel may not depend on torchvision, but the depth networks built on
ResNet-50 (Hu et al. MFF, CSPN, FastDepth's ResNet variants) ship checkpoints
whose keys come from ``torchvision.models.resnet50``. This module rebuilds the
same tree so they load with ``strict=True``:

``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,relu}``,
``layer{1..4}.0.downsample.{0,1}`` and, optionally, ``avgpool``/``fc``.

The stride of a down-sampling block sits on the 3x3 convolution (``conv2``),
as in torchvision and in the copy bundled with Hu et al.'s code, not on the
first 1x1 (the original Caffe layout).
"""

from __future__ import annotations

import torch
from torch import nn

from .init import he_init

__all__ = ["Bottleneck", "ResNet", "resnet50", "scaled"]


def scaled(channels: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, rounding and keeping at least one channel."""
    return max(1, int(round(channels * width_mult)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with an identity or projected shortcut.

    Parameters
    ----------
    in_channels
        Channels entering the block.
    planes
        Width of the two inner convolutions; the block outputs ``4 * planes``.
    stride
        Stride of the 3x3 convolution and of the projection shortcut.
    downsample
        Projection shortcut (1x1 conv + BN) when shape changes, else ``None``.
    """

    expansion: int = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(F(x) + shortcut(x))``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        # Out-of-place add: ``x`` may be a tensor a caller's hook still holds.
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet classifier/encoder with torchvision's module names.

    Parameters
    ----------
    layers
        Number of bottleneck blocks in ``layer1`` ... ``layer4``.
    width_mult
        Multiplies every channel count; layer names and depth do not change.
    num_classes
        Outputs of ``fc``; ``None`` builds an encoder without ``avgpool``/``fc``.

    Attributes
    ----------
    channels : tuple[int, int, int, int]
        Output channels of ``layer1`` ... ``layer4`` (256, 512, 1024, 2048 at
        full width), at strides 4, 8, 16 and 32.
    stem_channels : int
        Output channels of ``conv1`` (64 at full width), at stride 2.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        width_mult: float = 1.0,
        num_classes: int | None = 1000,
    ) -> None:
        super().__init__()
        self.stem_channels = scaled(64, width_mult)
        self.conv1 = nn.Conv2d(
            3, self.stem_channels, kernel_size=7, stride=2, padding=3, bias=False
        )
        self.bn1 = nn.BatchNorm2d(self.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        in_channels = self.stem_channels
        stages: list[nn.Sequential] = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            stage, in_channels = self._make_layer(
                in_channels, scaled(planes, width_mult), blocks, stride=1 if i == 0 else 2
            )
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            s[-1].conv3.out_channels for s in stages
        )
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_channels, num_classes)
        he_init(self)

    @staticmethod
    def _make_layer(
        in_channels: int, planes: int, blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        modules: list[nn.Module] = [Bottleneck(in_channels, planes, stride, downsample)]
        modules += [Bottleneck(out_channels, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules), out_channels

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the outputs of ``layer1`` ... ``layer4`` (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``, or the ``layer4`` map when built without ``fc``."""
        c4 = self.forward_features(x)[-1]
        if not hasattr(self, "fc"):
            return c4
        return self.fc(self.avgpool(c4).flatten(1))


def resnet50(width_mult: float = 1.0, num_classes: int | None = 1000) -> ResNet:
    """Build a randomly initialised ResNet-50 (bottleneck blocks 3-4-6-3).

    Parameters
    ----------
    width_mult
        Channel multiplier; ``1.0`` gives torchvision's network (25,557,032
        parameters with the 1000-way ``fc``, 23,508,032 without).
    num_classes
        Outputs of ``fc``; ``None`` omits ``avgpool`` and ``fc``.

    Returns
    -------
    ResNet
        With attributes ``conv1``, ``bn1``, ``relu``, ``maxpool``,
        ``layer1`` ... ``layer4`` and ``channels``.
    """
    return ResNet((3, 4, 6, 3), width_mult=width_mult, num_classes=num_classes)
