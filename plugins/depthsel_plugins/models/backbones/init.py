"""The weight initialisation shared by the from-scratch backbones and heads."""

from __future__ import annotations

from torch import nn

__all__ = ["he_init"]


def he_init(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions with zero bias, unit/zero BatchNorm.

    What the torchvision-style code of FastDepth, Hu et al. and the Cadene
    SENet applies when no ImageNet weights are loaded, so a network trained
    from scratch here starts from the distribution the originals used.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
