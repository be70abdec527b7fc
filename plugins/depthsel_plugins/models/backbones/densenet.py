"""DenseNet-161 with torchvision parameter names, written in plain PyTorch.

depthsel may not depend on torchvision, yet the depth networks built on
DenseNet-161 (BTS, Hu et al. MFF) ship checkpoints whose keys were produced by
``torchvision.models.densenet161``. This module rebuilds the same module tree
so those state dicts load with ``strict=True``:

``features.conv0``, ``features.norm0``, ``features.relu0``, ``features.pool0``,
``features.denseblock{1..4}.denselayer{j}.{norm1,relu1,conv1,norm2,relu2,conv2}``,
``features.transition{1..3}.{norm,relu,conv,pool}``, ``features.norm5`` and
``classifier``.

Per-stage output channels are available as :attr:`DenseNet.channels` (a dict
keyed by the name of the child of ``features`` that produces them) and as
:attr:`DenseNet.stage_channels` (the five encoder taps used by BTS, in order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseNet", "DenseLayer", "DenseBlock", "Transition", "densenet161", "scaled"]

# Stages whose outputs depth decoders tap, with their stride w.r.t. the input.
# ``relu0`` is stride 2, ``pool0`` stride 4, ``transitionN`` includes its average
# pool (strides 8, 16, 32) and ``norm5`` closes the last block at stride 32.
STAGE_NAMES: tuple[str, ...] = ("relu0", "pool0", "transition1", "transition2", "norm5")


def scaled(channels: int, width_mult: float) -> int:
    """Scale a channel count by ``width_mult``, never going below one channel."""
    return max(1, int(round(channels * width_mult)))


class DenseLayer(nn.Module):
    """Bottleneck layer ``BN-ReLU-Conv1x1-BN-ReLU-Conv3x3`` that adds ``growth_rate`` maps.

    Parameters
    ----------
    in_channels
        Channels of the concatenated input.
    growth_rate
        Channels this layer contributes.
    bn_size
        Bottleneck width as a multiple of ``growth_rate``.
    """

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        inner = bn_size * growth_rate
        # Registration order matters only for readability; names must match
        # torchvision so released checkpoints map one-to-one.
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, inner, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inner, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return only the new ``growth_rate`` maps; the block concatenates."""
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    """A stack of :class:`DenseLayer` s where every layer sees all earlier maps.

    A ``ModuleDict`` (rather than ``Sequential``) because the forward is not a
    chain: each layer's input is the concatenation of everything before it.
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}",
                DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size),
            )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the input with every layer's new maps along channels."""
        maps = [x]
        for layer in self.values():
            maps.append(layer(torch.cat(maps, dim=1)))
        return torch.cat(maps, dim=1)


class Transition(nn.Sequential):
    """``BN-ReLU-Conv1x1-AvgPool2`` that compresses channels and halves resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(in_channels))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """DenseNet-BC classifier with torchvision's module names.

    Parameters
    ----------
    growth_rate
        Channels added per dense layer (48 for DenseNet-161).
    block_config
        Number of layers in each of the four dense blocks.
    num_init_features
        Channels of the stem convolution.
    bn_size
        Bottleneck multiplier inside each dense layer.
    num_classes
        Size of the classifier output.

    Attributes
    ----------
    channels : dict[str, int]
        Output channels of every child of ``features`` (``conv0`` ... ``norm5``).
    stage_channels : tuple[int, ...]
        Channels at the five taps in :data:`STAGE_NAMES`, strides 2, 4, 8, 16, 32.
    """

    def __init__(
        self,
        growth_rate: int = 48,
        block_config: tuple[int, int, int, int] = (6, 12, 36, 24),
        num_init_features: int = 96,
        bn_size: int = 4,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.channels: dict[str, int] = {}
        self.features = nn.Sequential()
        self._add(
            "conv0",
            nn.Conv2d(3, num_init_features, 7, stride=2, padding=3, bias=False),
            num_init_features,
        )
        self._add("norm0", nn.BatchNorm2d(num_init_features), num_init_features)
        self._add("relu0", nn.ReLU(inplace=True), num_init_features)
        self._add("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1), num_init_features)

        ch = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, ch, growth_rate, bn_size)
            ch = block.out_channels
            self._add(f"denseblock{i + 1}", block, ch)
            if i != len(block_config) - 1:
                # DenseNet-BC compression factor 0.5 (floor, as torchvision does).
                self._add(f"transition{i + 1}", Transition(ch, ch // 2), ch // 2)
                ch //= 2
        self._add("norm5", nn.BatchNorm2d(ch), ch)
        self.classifier = nn.Linear(ch, num_classes)
        self.num_features = ch
        self.stage_channels: tuple[int, ...] = tuple(self.channels[n] for n in STAGE_NAMES)
        self._init_weights()

    def _add(self, name: str, module: nn.Module, out_channels: int) -> None:
        self.features.add_module(name, module)
        self.channels[name] = out_channels

    def _init_weights(self) -> None:
        # Same scheme as torchvision so training from scratch behaves alike.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps at :data:`STAGE_NAMES` (strides 2 to 32).

        The in-place ReLUs only ever act on fresh BatchNorm outputs, so the
        tapped tensors are never overwritten by later stages.
        """
        taps: list[torch.Tensor] = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in STAGE_NAMES:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify ``[B, 3, H, W]`` images into ``[B, num_classes]`` logits."""
        x = F.relu(self.features(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def densenet161(width_mult: float = 1.0, num_classes: int = 1000) -> DenseNet:
    """Build DenseNet-161 (growth 48, blocks 6-12-36-24, stem 96).

    Parameters
    ----------
    width_mult
        Multiplies the growth rate and stem width; layer names and depth stay
        the same, so narrow copies expose the same module paths.
    num_classes
        Classifier outputs.

    Returns
    -------
    DenseNet
        Randomly initialised network; full width has 28,681,000 parameters,
        matching torchvision's published count.
    """
    return DenseNet(
        growth_rate=scaled(48, width_mult),
        block_config=(6, 12, 36, 24),
        num_init_features=scaled(96, width_mult),
        bn_size=4,
        num_classes=num_classes,
    )
