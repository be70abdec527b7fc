"""Hu et al. multi-scale feature fusion (MFF) depth networks.

Hu, Ozay, Zhang & Okatani, "Revisiting Single Image Depth Estimation: Toward
Higher Resolution Maps with Accurate Object Boundaries", WACV 2019 (reference
code: github.com/JunjH/Revisiting_Single_Depth_Estimation). Independent
pure-PyTorch rewrite whose state-dict keys match the reference checkpoints:

* ``E``: the encoder. ResNet-50 keeps torchvision names (``E.conv1``,
  ``E.layer1`` ...), SENet-154 sits in ``E.base.{0..4}`` (``layer0`` ...
  ``layer4``), DenseNet-161 in ``E.features``.
* ``D``: 1x1 conv halving the deepest map, then four up-projections
  (``D.up1`` ... ``D.up4``) each halving channels, ending at 1/2 input size.
* ``MFF``: one 16-channel up-projection per encoder stage (``MFF.up1`` ...
  ``MFF.up4``) resized to the decoder's size, concatenated and fused by a 5x5
  conv + BN + ReLU into 64 channels.
* ``R``: refinement on ``cat(D, MFF)``: ``conv0``/``bn0``, ``conv1``/``bn1``
  (5x5, no bias) and ``conv2`` (5x5 to one channel, with bias).

A 228x304 image gives a 114x152 depth map in metres.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.errors import ConfigError

from .backbones.init import he_init
from .backbones.resnet import resnet50
from .backbones.senet import senet154

__all__ = [
    "UpProjection",
    "Decoder",
    "MultiScaleFusion",
    "Refinement",
    "HuMFF",
    "hu_mff_resnet50",
    "hu_mff_senet154",
    "hu_mff_densenet161",
    "register_models",
    "TINY_WIDTH",
]

TINY_WIDTH: float = 1.0 / 16.0
MFF_BRANCH = 16  # channels of each MFF up-projection at full width


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class UpProjection(nn.Module):
    """Laina et al. up-projection: resize, then ``relu(B1(x) + B2(x))``.

    ``B1`` is conv5x5-BN-ReLU-conv3x3-BN and ``B2`` conv5x5-BN; no conv has a
    bias. Unlike Laina's unpooling, Hu et al. resize with bilinear
    interpolation to an explicit target size.

    Parameters
    ----------
    in_channels, out_channels
        Channel counts.
    align_corners
        Bilinear mode; ``True`` matches PyTorch 0.3.1, which the released
        weights were trained with.
    """

    def __init__(self, in_channels: int, out_channels: int, align_corners: bool = True) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv1_2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn1_2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 5, stride=1, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Resize ``x`` to ``size`` (H, W) and apply both branches."""
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=self.align_corners)
        branch1 = self.bn1_2(self.conv1_2(self.relu(self.bn1(self.conv1(x)))))
        branch2 = self.bn2(self.conv2(x))
        return self.relu(branch1 + branch2)


class Decoder(nn.Module):
    """``D``: 1x1 conv + BN + ReLU halving channels, then four halving up-projections.

    The targets are the sizes of encoder stages 3, 2, 1 and twice stage 1, so
    the output is at half the input resolution with ``in_channels // 32``
    channels (64 for ResNet/SENet, 69 for DenseNet-161).
    """

    def __init__(self, in_channels: int, align_corners: bool = True) -> None:
        super().__init__()
        ch = in_channels // 2
        self.conv = nn.Conv2d(in_channels, ch, kernel_size=1, stride=1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        ups: list[UpProjection] = []
        for _ in range(4):
            ups.append(UpProjection(ch, ch // 2, align_corners))
            ch //= 2
        self.up1, self.up2, self.up3, self.up4 = ups
        self.out_channels = ch

    def forward(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode the four encoder maps (only stage 4 is used as input)."""
        b1, b2, b3, b4 = blocks
        x = F.relu(self.bn(self.conv(b4)))
        x = self.up1(x, b3.shape[-2:])
        x = self.up2(x, b2.shape[-2:])
        x = self.up3(x, b1.shape[-2:])
        return self.up4(x, (b1.shape[-2] * 2, b1.shape[-1] * 2))


class MultiScaleFusion(nn.Module):
    """``MFF``: up-project each encoder stage to the output size, concat, fuse.

    Parameters
    ----------
    block_channels
        Channels of the four encoder stages.
    branch
        Channels per up-projection (16 at full width); the fused map has
        ``4 * branch`` channels.
    align_corners
        Bilinear mode of the up-projections.
    """

    def __init__(self, block_channels: Sequence[int], branch: int = MFF_BRANCH,
                 align_corners: bool = True) -> None:
        super().__init__()
        for i, ch in enumerate(block_channels, start=1):
            setattr(self, f"up{i}", UpProjection(ch, branch, align_corners))
        fused = 4 * branch
        self.conv = nn.Conv2d(fused, fused, kernel_size=5, stride=1, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(fused)
        self.out_channels = fused

    def forward(self, blocks: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Return the fused ``[B, 4*branch, *size]`` map."""
        ups = [getattr(self, f"up{i}")(b, size) for i, b in enumerate(blocks, start=1)]
        return F.relu(self.bn(self.conv(torch.cat(ups, dim=1))))


class Refinement(nn.Module):
    """``R``: two conv5x5-BN-ReLU layers and a conv5x5 (with bias) to depth."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 5, stride=1, padding=2, bias=False)
        self.bn0 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 5, stride=1, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 1, 5, stride=1, padding=2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``cat(D, MFF)`` to ``[B, 1, h, w]`` depth."""
        x = F.relu(self.bn0(self.conv0(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        return self.conv2(x)


class _ResNetEncoder(nn.Module):
    # Re-hosts the backbone's modules under the reference names (no ``fc``).
    def __init__(self, width: float) -> None:
        super().__init__()
        net = resnet50(width_mult=width, num_classes=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(net, name))
        self.block_channels: tuple[int, ...] = net.channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        b1 = self.layer1(x)
        b2 = self.layer2(b1)
        b3 = self.layer3(b2)
        return b1, b2, b3, self.layer4(b3)


class _SENetEncoder(nn.Module):
    # The reference keeps SENet's first five children in ``base`` (0..4).
    def __init__(self, width: float) -> None:
        super().__init__()
        net = senet154(width_mult=width, num_classes=None)
        self.base = nn.Sequential(net.layer0, net.layer1, net.layer2, net.layer3, net.layer4)
        self.block_channels: tuple[int, ...] = net.channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b1 = self.base[1](self.base[0](x))
        b2 = self.base[2](b1)
        b3 = self.base[3](b2)
        return b1, b2, b3, self.base[4](b3)


def _rename_legacy_densenet_keys(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any
) -> None:
    # torchvision <= 0.2 named dense-layer children "norm.1", "conv.2", ...; Hu
    # et al.'s checkpoint uses those names. Rewrite them in place so the
    # reference weights load strictly into the modern names ("norm1", ...).
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = key
        for old_name in ("norm.1", "relu.1", "conv.1", "norm.2", "relu.2", "conv.2"):
            new = new.replace(f".{old_name}.", f".{old_name.replace('.', '')}.")
        if new != key:
            state_dict[new] = state_dict.pop(key)


class _DenseNetEncoder(nn.Module):
    # Stage taps follow the reference: the transition convolutions (before
    # their average pool) for stages 1-3, relu(norm5) for stage 4.
    def __init__(self, width: float) -> None:
        super().__init__()
        from .backbones.densenet import densenet161

        net = densenet161(width_mult=width)
        self.features = net.features
        self.block_channels: tuple[int, ...] = tuple(
            net.channels[n] for n in ("transition1", "transition2", "transition3", "norm5")
        )
        self.register_load_state_dict_pre_hook(_rename_legacy_densenet_keys)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.features
        for name in ("conv0", "norm0", "relu0", "pool0"):
            x = f.get_submodule(name)(x)
        taps: list[torch.Tensor] = []
        for i in (1, 2, 3):
            x = getattr(f, f"denseblock{i}")(x)
            trans = getattr(f, f"transition{i}")
            x = trans.conv(trans.relu(trans.norm(x)))
            taps.append(x)
            x = trans.pool(x)
        x = F.relu(f.get_submodule("norm5")(f.get_submodule("denseblock4")(x)))
        return (*taps, x)


class HuMFF(nn.Module):
    """Encoder ``E``, decoder ``D``, fusion ``MFF`` and refinement ``R``.

    Parameters
    ----------
    encoder
        Module returning four stage maps and exposing ``block_channels``.
    width
        Channel multiplier of the MFF branches (the encoder is already built).
    align_corners
        Bilinear interpolation mode in every up-projection. ``True`` (default)
        matches PyTorch 0.3.1, under which the released weights were trained.
    """

    def __init__(self, encoder: nn.Module, width: float = 1.0, align_corners: bool = True) -> None:
        super().__init__()
        block_channels: tuple[int, ...] = encoder.block_channels  # type: ignore[assignment]
        self.E = encoder
        self.D = Decoder(block_channels[3], align_corners)
        self.MFF = MultiScaleFusion(block_channels, _scaled(MFF_BRANCH, width), align_corners)
        # Equals the reference's 64 + block_channel[3] // 32 at full width.
        self.R = Refinement(self.D.out_channels + self.MFF.out_channels)
        self.align_corners = align_corners
        self.layer_units: dict[str, int] = {
            "D": self.D.out_channels,
            "MFF": self.MFF.out_channels,
            "R.conv0": self.R.conv0.out_channels,
            "R.conv1": self.R.conv1.out_channels,
        }
        # The reference leaves PyTorch defaults for the new layers; we use the
        # He-normal / unit-BN initialisation its encoders use.
        for part in (self.D, self.MFF, self.R):
            he_init(part)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Predict depth.

        Parameters
        ----------
        image
            ``[B, 3, H, W]`` ImageNet-normalised; sides that are multiples of 4
            give exactly ``[B, 1, H/2, W/2]``.

        Returns
        -------
        torch.Tensor
            ``[B, 1, h, w]`` depth in metres at half the input resolution.
        """
        blocks = self.E(image)
        x_d = self.D(blocks)
        x_mff = self.MFF(blocks, x_d.shape[-2:])
        return self.R(torch.cat((x_d, x_mff), dim=1))


def _build(encoder_cls: Callable[[float], nn.Module], width: float, tiny: bool,
           align_corners: bool) -> HuMFF:
    w = TINY_WIDTH if tiny else width
    if w <= 0:
        raise ConfigError(f"width must be positive, got {w}")
    return HuMFF(encoder_cls(w), width=w, align_corners=align_corners)


def hu_mff_resnet50(*, width: float = 1.0, tiny: bool = False, align_corners: bool = True,
                    **_: Any) -> HuMFF:
    """Hu et al. MFF network on ResNet-50 (``tiny`` means ``width=1/16``)."""
    return _build(_ResNetEncoder, width, tiny, align_corners)


def hu_mff_senet154(*, width: float = 1.0, tiny: bool = False, align_corners: bool = True,
                    **_: Any) -> HuMFF:
    """Hu et al. MFF network on SENet-154 (``tiny`` means ``width=1/16``)."""
    return _build(_SENetEncoder, width, tiny, align_corners)


def hu_mff_densenet161(*, width: float = 1.0, tiny: bool = False, align_corners: bool = True,
                       **_: Any) -> HuMFF:
    """Hu et al. MFF network on DenseNet-161 (``tiny`` means ``width=1/16``).

    Legacy ``norm.1``-style keys of the reference checkpoint are renamed on load.
    """
    return _build(_DenseNetEncoder, width, tiny, align_corners)


SUGGESTED_LAYERS: tuple[str, ...] = ("D", "MFF", "R.conv0", "R.conv1")
_UNITS: dict[str, dict[str, int]] = {
    # Full-width channels; DenseNet-161's top stage has 2208 maps, so D gives
    # 2208 // 32 = 69 and R works on 69 + 64 = 133 channels.
    "hu_mff_resnet50": {"D": 64, "MFF": 64, "R.conv0": 128, "R.conv1": 128},
    "hu_mff_senet154": {"D": 64, "MFF": 64, "R.conv0": 128, "R.conv1": 128},
    "hu_mff_densenet161": {"D": 69, "MFF": 64, "R.conv0": 133, "R.conv1": 133},
}
FACTORIES: dict[str, Callable[..., HuMFF]] = {
    "hu_mff_resnet50": hu_mff_resnet50,
    "hu_mff_senet154": hu_mff_senet154,
    "hu_mff_densenet161": hu_mff_densenet161,
}


def register_models(register: Any) -> None:
    """Register the three Hu et al. MFF networks with their :class:`depthsel.ModelInfo`."""
    from depthsel import ModelInfo

    for name, factory in FACTORIES.items():
        backbone = name.rsplit("_", 1)[-1]
        register(
            name,
            factory,
            description=f"Hu et al. 2019 multi-scale feature fusion, {backbone} encoder, 228x304",
            info=ModelInfo(
                input_size=(228, 304),
                output_stride=2,
                normalization="imagenet",
                suggested_layers=SUGGESTED_LAYERS,
                layer_units=dict(_UNITS[name]),
                input_multiple=4,
                reference=(
                    "Hu et al., WACV 2019, "
                    "github.com/JunjH/Revisiting_Single_Depth_Estimation"
                ),
            ),
        )
