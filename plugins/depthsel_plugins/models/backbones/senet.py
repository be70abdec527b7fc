"""SENet-154 with the parameter names of Cadene's ``pretrainedmodels`` package.

Hu et al. (WACV 2019) built their strongest depth network on the ImageNet
SENet-154 released through ``pretrainedmodels`` and bundled a copy of that
definition with their code. Their checkpoints therefore use its names, which
this module reproduces so those weights load with ``strict=True``:

``layer0.{conv1,bn1,conv2,bn2,conv3,bn3}`` (three 3x3 stem convolutions, then a
``pool`` max-pool with ``ceil_mode=True``),
``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}``,
``layer{1..4}.{i}.se_module.{fc1,fc2}`` (1x1 convolutions *with* bias),
``layer{1..4}.0.downsample.{0,1}`` and ``last_linear``.

Two SENet-154 specifics matter for shape compatibility: the grouped 3x3
convolution has 64 groups and the projection shortcuts of ``layer2`` ...
``layer4`` are 3x3 (padding 1) rather than 1x1 convolutions.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .init import he_init

__all__ = ["SEModule", "SEBottleneck", "SENet", "senet154", "scaled"]


def scaled(channels: int, width_mult: float, multiple: int = 1) -> int:
    """Scale ``channels`` by ``width_mult`` and round to a positive multiple of ``multiple``."""
    value = channels * width_mult / multiple
    return max(1, int(round(value))) * multiple


class SEModule(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate.

    Parameters
    ----------
    channels
        Channels being re-weighted.
    reduction
        Bottleneck ratio of the gating MLP (16 in SENet-154).
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        # 1x1 convolutions rather than Linear layers: the released weights are
        # 4-D, and the names ``fc1``/``fc2`` are kept for key compatibility.
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by a gate in ``(0, 1)``."""
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class SEBottleneck(nn.Module):
    """SENet-154 bottleneck: 1x1 to ``2p``, grouped 3x3 to ``4p``, 1x1 to ``4p``, SE gate.

    Parameters
    ----------
    in_channels
        Channels entering the block.
    planes
        Base width ``p``; the block outputs ``4 * planes`` channels.
    groups
        Groups of the 3x3 convolution.
    reduction
        SE reduction ratio.
    stride
        Stride of the 3x3 convolution.
    downsample
        Projection shortcut when the shape changes, else ``None``.
    """

    expansion: int = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        groups: int,
        reduction: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes * 2, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes * 2)
        self.conv2 = nn.Conv2d(
            planes * 2, planes * 4, kernel_size=3, stride=stride, padding=1, groups=groups,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes * 4)
        self.conv3 = nn.Conv2d(planes * 4, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.se_module = SEModule(planes * 4, reduction=reduction)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(SE(F(x)) + shortcut(x))``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(self.se_module(out) + shortcut)


class SENet(nn.Module):
    """SENet-154 classifier/encoder with ``pretrainedmodels`` module names.

    Parameters
    ----------
    layers
        Blocks per stage (3, 8, 36, 3 for SENet-154).
    width_mult
        Multiplies channel counts *and* the number of groups, so narrow copies
        keep the same per-group structure and the same module paths.
    groups
        Groups of the 3x3 convolutions at full width.
    reduction
        SE reduction ratio.
    dropout_p
        Dropout before ``last_linear``; ``None`` disables it.
    num_classes
        Outputs of ``last_linear``; ``None`` builds an encoder without the head.

    Attributes
    ----------
    channels : tuple[int, int, int, int]
        Output channels of ``layer1`` ... ``layer4`` (256, 512, 1024, 2048 at
        full width), at strides 4, 8, 16 and 32.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 8, 36, 3),
        width_mult: float = 1.0,
        groups: int = 64,
        reduction: int = 16,
        dropout_p: float | None = 0.2,
        num_classes: int | None = 1000,
    ) -> None:
        super().__init__()
        g = max(1, int(round(groups * width_mult)))
        stem = scaled(64, width_mult)
        inplanes = scaled(128, width_mult)
        self.layer0 = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False)),
                    ("bn1", nn.BatchNorm2d(stem)),
                    ("relu1", nn.ReLU(inplace=True)),
                    ("conv2", nn.Conv2d(stem, stem, 3, stride=1, padding=1, bias=False)),
                    ("bn2", nn.BatchNorm2d(stem)),
                    ("relu2", nn.ReLU(inplace=True)),
                    ("conv3", nn.Conv2d(stem, inplanes, 3, stride=1, padding=1, bias=False)),
                    ("bn3", nn.BatchNorm2d(inplanes)),
                    ("relu3", nn.ReLU(inplace=True)),
                    # ceil_mode instead of padding: kept from the Caffe port so
                    # feature-map sizes (and thus the weights) line up.
                    ("pool", nn.MaxPool2d(3, stride=2, ceil_mode=True)),
                ]
            )
        )
        stages: list[nn.Sequential] = []
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            # Planes a multiple of the group count keeps 2p and 4p divisible by it.
            p = scaled(planes, width_mult, multiple=g)
            stage, inplanes = self._make_layer(
                inplanes,
                p,
                blocks,
                groups=g,
                reduction=reduction,
                stride=1 if i == 0 else 2,
                # Only layer1's shortcut is 1x1; the strided ones are 3x3.
                kernel=1 if i == 0 else 3,
            )
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: tuple[int, int, int, int] = tuple(  # type: ignore[assignment]
            s[-1].conv3.out_channels for s in stages
        )
        if num_classes is not None:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout_p) if dropout_p is not None else None
            self.last_linear = nn.Linear(inplanes, num_classes)
        # The released model only ships pretrained; from scratch, use the shared He init.
        he_init(self)

    @staticmethod
    def _make_layer(
        inplanes: int,
        planes: int,
        blocks: int,
        groups: int,
        reduction: int,
        stride: int,
        kernel: int,
    ) -> tuple[nn.Sequential, int]:
        out_channels = planes * SEBottleneck.expansion
        downsample = None
        if stride != 1 or inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(
                    inplanes, out_channels, kernel_size=kernel, stride=stride,
                    padding=kernel // 2, bias=False,
                ),
                nn.BatchNorm2d(out_channels),
            )
        modules: list[nn.Module] = [
            SEBottleneck(inplanes, planes, groups, reduction, stride, downsample)
        ]
        modules += [SEBottleneck(out_channels, planes, groups, reduction) for _ in range(1, blocks)]
        return nn.Sequential(*modules), out_channels

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the outputs of ``layer1`` ... ``layer4`` (strides 4, 8, 16, 32)."""
        x = self.layer0(x)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``, or the ``layer4`` map when built without a head."""
        c4 = self.forward_features(x)[-1]
        if not hasattr(self, "last_linear"):
            return c4
        x = self.avg_pool(c4).flatten(1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.last_linear(x)


def senet154(width_mult: float = 1.0, num_classes: int | None = 1000) -> SENet:
    """Build a randomly initialised SENet-154 (Hu, Shen & Sun 2018).

    Parameters
    ----------
    width_mult
        Channel (and group-count) multiplier; ``1.0`` is the released network
        (115,088,984 parameters with the 1000-way head).
    num_classes
        Outputs of ``last_linear``; ``None`` omits the classification head.

    Returns
    -------
    SENet
        With ``layer0`` ... ``layer4`` and a ``channels`` tuple.
    """
    return SENet((3, 8, 36, 3), width_mult=width_mult, groups=64, reduction=16,
                 dropout_p=0.2, num_classes=num_classes)
