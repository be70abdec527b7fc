"""FastDepth: MobileNet-NNConv5, depthwise-separable decoder, additive skips.

Wofk, Ma, Yang, Karaman & Sze, "FastDepth: Fast Monocular Depth Estimation on
Embedded Systems", ICRA 2019 (reference code: ``MobileNetSkipAdd`` in
github.com/dwofk/fast-depth). This is an independent pure-PyTorch rewrite whose
module tree reproduces the reference state-dict keys:

* encoder ``conv0`` ... ``conv13``: the fourteen MobileNet-v1 blocks (ReLU6);
* decoder ``decode_conv1`` ... ``decode_conv5``: each a ``Sequential`` of a
  depthwise 5x5 block (``.0.{0,1}`` conv+BN, then ReLU) and a pointwise 1x1
  block (``.1.{0,1}`` conv+BN, then ReLU), followed in ``forward`` by x2
  nearest-neighbour upsampling;
* ``decode_conv6``: pointwise 32 -> 1 with BN and ReLU, giving depth in metres.

Skips are *added* after upsampling: the encoder maps at 1/8 (``conv5``),
1/4 (``conv3``) and 1/2 (``conv1``) join the outputs of ``decode_conv2``,
``decode_conv3`` and ``decode_conv4``. A 224x224 input gives 224x224 depth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.errors import ConfigError, InputSizeError

from .backbones.mobilenet import MobileNetV1, init_weights

__all__ = ["FastDepth", "fastdepth", "register_models", "DECODER_LAYERS", "TINY_WIDTH"]

DECODER_LAYERS: tuple[str, ...] = tuple(f"decode_conv{i}" for i in range(1, 6))
# Full-width channel counts of the exposed decoder layers.
DECODER_UNITS: tuple[int, ...] = (512, 256, 128, 64, 32)
# Width used by ``tiny=True``: 1/16 keeps every layer (the narrowest has 2
# channels) while a forward pass costs a few milliseconds on a CPU.
TINY_WIDTH: float = 1.0 / 16.0
DECODER_KERNEL = 5
# Encoder block whose output is added after decode_conv{2,3,4} (+ upsampling).
_SKIPS: dict[int, int] = {2: 5, 3: 3, 4: 1}


def _depthwise(channels: int, kernel_size: int) -> nn.Sequential:
    # Padding (k-1)/2 keeps the spatial size; no bias because BN follows.
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size, 1, (kernel_size - 1) // 2,
                  groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _pointwise(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class FastDepth(nn.Module):
    """MobileNet-v1 encoder + NNConv5 depthwise decoder with additive skips.

    Parameters
    ----------
    width
        Channel multiplier for encoder and decoder. Decoder widths are taken
        from the encoder blocks they are added to, so skips always match.

    Attributes
    ----------
    layer_units : dict[str, int]
        Output channels of ``decode_conv1`` ... ``decode_conv5``.
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"width must be positive, got {width}")
        encoder = MobileNetV1(width_mult=width, num_classes=1)
        for i in range(14):
            setattr(self, f"conv{i}", encoder.model[i])
        ch = encoder.channels
        # Full width: 1024 -> 512 -> 256 -> 128 -> 64 -> 32, i.e. the output
        # widths of encoder blocks 11, 5, 3, 1 and 0.
        dec_out = (ch[11], ch[5], ch[3], ch[1], ch[0])
        dec_in = (ch[13],) + dec_out[:-1]
        for i, (cin, cout) in enumerate(zip(dec_in, dec_out, strict=True), start=1):
            block = nn.Sequential(_depthwise(cin, DECODER_KERNEL), _pointwise(cin, cout))
            setattr(self, f"decode_conv{i}", block)
        self.decode_conv6 = _pointwise(dec_out[-1], 1)
        for i in range(1, 7):
            init_weights(getattr(self, f"decode_conv{i}"))
        self.layer_units: dict[str, int] = dict(zip(DECODER_LAYERS, dec_out, strict=True))
        del encoder  # only its blocks are kept; the classifier is not part of FastDepth

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Predict depth.

        Parameters
        ----------
        image
            ``[B, 3, H, W]`` in ``[0, 1]`` (no mean/std normalisation); ``H``
            and ``W`` must be multiples of 32 so the skips line up.

        Returns
        -------
        torch.Tensor
            ``[B, 1, H, W]`` non-negative depth in metres.
        """
        if image.shape[-2] % 32 or image.shape[-1] % 32:
            size = tuple(image.shape[-2:])
            fit = tuple(max(32, 32 * round(v / 32)) for v in size)
            raise InputSizeError(f"FastDepth needs H and W divisible by 32, got {size}; resize the "
                                 f"input, e.g. size=[{fit[0]},{fit[1]}]")
        x = image
        skips: dict[int, torch.Tensor] = {}
        for i in range(14):
            x = getattr(self, f"conv{i}")(x)
            if i in _SKIPS.values():
                skips[i] = x
        for i in range(1, 6):
            x = getattr(self, f"decode_conv{i}")(x)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if i in _SKIPS:
                # Out-of-place add so a hook's captured decode_conv output is untouched.
                x = x + skips[_SKIPS[i]]
        return self.decode_conv6(x)


def fastdepth(*, width: float = 1.0, tiny: bool = False, **_: Any) -> FastDepth:
    """Build FastDepth (MobileNet-NNConv5, depthwise, additive skips).

    Parameters
    ----------
    width
        Channel multiplier; ``1.0`` is the published network.
    tiny
        Shorthand for ``width=1/16`` (CPU tests); overrides ``width``.

    Returns
    -------
    FastDepth
        Randomly initialised; load released weights with ``load_state_dict``.
    """
    return FastDepth(width=TINY_WIDTH if tiny else width)


def register_models(register: Any) -> None:
    """Register ``fastdepth`` with its :class:`depthsel.ModelInfo`."""
    from depthsel import ModelInfo

    register(
        "fastdepth",
        fastdepth,
        description="FastDepth MobileNet-NNConv5 depthwise skip-add (Wofk et al. 2019), 224x224",
        info=ModelInfo(
            input_size=(224, 224),
            output_stride=1,
            normalization="unit",
            suggested_layers=DECODER_LAYERS,
            layer_units=dict(zip(DECODER_LAYERS, DECODER_UNITS, strict=True)),
            input_multiple=32,
            reference="Wofk et al., ICRA 2019, github.com/dwofk/fast-depth (MobileNetSkipAdd)",
        ),
    )
