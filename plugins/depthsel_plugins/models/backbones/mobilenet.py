"""MobileNet-v1 with ReLU6, laid out the way FastDepth's encoder expects it.

FastDepth (Wofk et al., ICRA 2019) trains its own ImageNet MobileNet-v1 whose
module tree is a single ``model`` ``Sequential`` of fourteen convolution blocks
(plus a parameter-free average pool) followed by a ``fc`` classifier. The depth
network then re-attaches those fourteen blocks as ``conv0`` ... ``conv13``. To
keep released checkpoints loadable with ``strict=True`` we reproduce the exact
index layout inside every block:

* the stem block ``conv_bn``: ``0`` conv3x3/s, ``1`` BN, ``2`` ReLU6;
* a depthwise-separable block ``conv_dw``: ``0`` depthwise conv3x3/s,
  ``1`` BN, ``2`` ReLU6, ``3`` pointwise conv1x1, ``4`` BN, ``5`` ReLU6.

No convolution has a bias because every one is followed by BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .init import he_init

__all__ = ["MobileNetV1", "conv_bn", "conv_dw", "mobilenet_v1", "scaled", "MOBILENET_V1_CFG"]

# (output channels, stride) of blocks 1..13; block 0 is the 3->32 stem.
MOBILENET_V1_CFG: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


def scaled(channels: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, rounding and keeping at least one channel."""
    return max(1, int(round(channels * width_mult)))


def _activation(relu6: bool) -> nn.Module:
    # ReLU6 is what the released ImageNet weights were trained with; plain ReLU
    # is kept as an option because the FastDepth code base exposes it too.
    return nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True)


def conv_bn(in_channels: int, out_channels: int, stride: int, relu6: bool = True) -> nn.Sequential:
    """Full 3x3 convolution, BatchNorm, activation (the stem block).

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    stride
        Convolution stride.
    relu6
        Use ``ReLU6`` (default) rather than ``ReLU``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        _activation(relu6),
    )


def conv_dw(in_channels: int, out_channels: int, stride: int, relu6: bool = True) -> nn.Sequential:
    """Depthwise-separable block: depthwise 3x3 + BN + act, pointwise 1x1 + BN + act.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts; the depthwise half keeps ``in_channels``.
    stride
        Stride of the depthwise convolution (the pointwise one never strides).
    relu6
        Use ``ReLU6`` (default) rather than ``ReLU``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        _activation(relu6),
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        _activation(relu6),
    )


class MobileNetV1(nn.Module):
    """MobileNet-v1 classifier (Howard et al. 2017) with FastDepth's module names.

    Parameters
    ----------
    width_mult
        Multiplies every channel count (the paper's ``alpha``). Layer names and
        depth never change, so narrow copies expose the same module paths.
    num_classes
        Outputs of ``fc``.
    relu6
        Use ``ReLU6`` activations (FastDepth's choice) instead of ``ReLU``.

    Attributes
    ----------
    model : nn.Sequential
        Blocks ``0`` ... ``13`` followed by a global average pool at index ``14``.
    fc : nn.Linear
        Classifier.
    channels : tuple[int, ...]
        Output channels of blocks ``0`` ... ``13``.
    strides : tuple[int, ...]
        Cumulative stride (input size / feature size) after each block.
    """

    def __init__(
        self, width_mult: float = 1.0, num_classes: int = 1000, relu6: bool = True
    ) -> None:
        super().__init__()
        stem = scaled(STEM_CHANNELS, width_mult)
        blocks: list[nn.Module] = [conv_bn(3, stem, 2, relu6)]
        channels = [stem]
        strides = [2]
        for out, stride in MOBILENET_V1_CFG:
            out_ch = scaled(out, width_mult)
            blocks.append(conv_dw(channels[-1], out_ch, stride, relu6))
            channels.append(out_ch)
            strides.append(strides[-1] * stride)
        # The original uses AvgPool2d(7), which only works for 224x224 input.
        # An adaptive pool is numerically identical there, has no parameters
        # (so state-dict keys are unaffected) and accepts any size.
        blocks.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels[-1], num_classes)
        self.channels: tuple[int, ...] = tuple(channels)
        self.strides: tuple[int, ...] = tuple(strides)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``[B, 3, H, W]`` images into ``[B, num_classes]`` logits."""
        return self.fc(self.model(x).flatten(1))


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions (fan-out), unit/zero BatchNorm, zero biases.

    This mirrors the initialisation the FastDepth code applies when it does not
    load ImageNet weights, so training from scratch starts from the same place.
    """
    he_init(module)
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def mobilenet_v1(
    width_mult: float = 1.0, num_classes: int = 1000, relu6: bool = True
) -> MobileNetV1:
    """Build a randomly initialised MobileNet-v1.

    Parameters
    ----------
    width_mult
        Channel multiplier; ``1.0`` is the standard network (4,231,976
        parameters with the 1000-way classifier).
    num_classes
        Classifier outputs.
    relu6
        Use ``ReLU6`` activations.

    Returns
    -------
    MobileNetV1
        The network; its ``model[0..13]`` blocks are what FastDepth reuses.
    """
    return MobileNetV1(width_mult=width_mult, num_classes=num_classes, relu6=relu6)
