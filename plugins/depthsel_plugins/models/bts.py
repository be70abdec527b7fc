"""BTS: multi-scale local planar guidance on a DenseNet-161 encoder (Lee et al., 2019).

An independent re-implementation of the network in ``cleinc/bts``
(``pytorch/bts.py``) whose state dict has the same keys and shapes, so the
released ``bts_nyu_v2_pytorch_densenet161`` / ``bts_eigen_v2_pytorch_densenet161``
checkpoints load with ``strict=True`` once a DataParallel ``module.`` prefix is
stripped. Key layout::

    encoder.base_model.<torchvision densenet161.features keys>
    decoder.upconv5.conv, decoder.bn5, decoder.conv5.0, ..., decoder.daspp_6.atrous_conv.first_bn,
    decoder.reduc8x8.reduc.inter_128_128.0, ..., decoder.conv1.0, decoder.get_depth.0

Exposed layers
--------------
You et al. (2021, Table 7) dissect five decoder feature maps. The official
module tree has no modules called ``iconv1``/``iconv2`` and its ``upconvN``
modules output the map *before* batch norm, whereas You et al. read
``upconv2``/``upconv3`` after ``bn2``/``bn3``. Rather than adding alias modules
(which could not share the official names without clashing), the hookable
paths are the official modules whose outputs equal the maps in the paper, see
:data:`PAPER_LAYERS`::

    iconv1  -> decoder.conv1    (32 ch, H   x W)
    upconv1 -> decoder.upconv1  (32 ch, H   x W)
    iconv2  -> decoder.conv2    (64 ch, H/2 x W/2)
    upconv2 -> decoder.bn2      (64 ch, H/2 x W/2)
    upconv3 -> decoder.bn3      (128 ch, H/4 x W/4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel import ModelInfo
from depthsel.errors import InputSizeError

from .backbones.densenet import STAGE_NAMES, densenet161

__all__ = ["BtsModel", "BtsEncoder", "BtsDecoder", "PAPER_LAYERS", "build_bts", "register_models"]

#: You et al. layer name -> module path in this (and the official) model.
PAPER_LAYERS: dict[str, str] = {
    "iconv1": "decoder.conv1",
    "upconv1": "decoder.upconv1",
    "iconv2": "decoder.conv2",
    "upconv2": "decoder.bn2",
    "upconv3": "decoder.bn3",
}
#: Width used by ``tiny=True``: growth rate 3, decoder 32 features.
TINY_WIDTH = 1.0 / 16.0
#: KITTI focal length the official model normalises predictions to.
KITTI_REFERENCE_FOCAL = 715.0873


def _bn(channels: int, eps: float = 1.1e-5) -> nn.BatchNorm2d:
    # The official decoder mirrors TensorFlow defaults: momentum 0.01 and eps 1.1e-5.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=eps)


def _conv_elu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 conv + ELU; a Sequential so the weight key is ``<name>.0.weight``."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.ELU())


class UpConv(nn.Module):
    """Nearest x2 upsampling, 3x3 conv (no bias), ELU."""

    def __init__(self, in_ch: int, out_ch: int, ratio: int = 2) -> None:
        super().__init__()
        self.elu = nn.ELU()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample then convolve."""
        return self.elu(self.conv(F.interpolate(x, scale_factor=self.ratio, mode="nearest")))


class AtrousConv(nn.Module):
    """One dense-ASPP branch: ``[BN] ReLU 1x1(2c) BN ReLU 3x3-dilated(c)``.

    The ReLUs are deliberately not in-place: the branch input is also part of
    later concatenations and must not be modified.
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int, bn_first: bool = True) -> None:
        super().__init__()
        self.atrous_conv = nn.Sequential()
        if bn_first:
            self.atrous_conv.add_module("first_bn", _bn(in_ch))
        self.atrous_conv.add_module(
            "aconv_sequence",
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(in_ch, out_ch * 2, 1, bias=False),
                nn.BatchNorm2d(out_ch * 2, momentum=0.01),  # default eps here, as upstream
                nn.ReLU(),
                nn.Conv2d(out_ch * 2, out_ch, 3, padding=dilation, dilation=dilation, bias=False),
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the branch."""
        return self.atrous_conv(x)


class Reduction(nn.Module):
    """Halving stack of 1x1 convs ending in plane parameters (or a final depth).

    Module names follow upstream (``inter_{in}_{out}``, ``plane_params``,
    ``final``) so they depend on the channel counts. Upstream stops once the
    target width falls below 4; for narrow copies whose target is already
    below 8 this goes straight to the last conv instead of building nothing.
    """

    def __init__(self, in_ch: int, out_ch: int, max_depth: float, is_final: bool = False) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.is_final = is_final
        self.reduc = nn.Sequential()
        while out_ch >= 8:
            self.reduc.add_module(
                f"inter_{in_ch}_{out_ch}",
                nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.ELU()),
            )
            in_ch, out_ch = out_ch, out_ch // 2
        if is_final:
            self.reduc.add_module(
                "final", nn.Sequential(nn.Conv2d(in_ch, 1, 1, bias=False), nn.Sigmoid())
            )
        else:
            self.reduc.add_module("plane_params", nn.Conv2d(in_ch, 3, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``[B,1,h,w]`` (final) or a plane ``(n1, n2, n3, distance)`` per pixel."""
        net = self.reduc(x)
        if self.is_final:
            return net
        # Spherical parametrisation keeps the normal in the camera-facing hemisphere.
        theta = torch.sigmoid(net[:, 0]) * (math.pi / 3)
        phi = torch.sigmoid(net[:, 1]) * (math.pi * 2)
        dist = torch.sigmoid(net[:, 2]) * self.max_depth
        return torch.stack(
            [
                torch.sin(theta) * torch.cos(phi),
                torch.sin(theta) * torch.sin(phi),
                torch.cos(theta),
                dist,
            ],
            dim=1,
        )


def local_planar_guidance(plane_eq: torch.Tensor, ratio: int) -> torch.Tensor:
    """Expand ``[B,4,h,w]`` plane equations into ``[B, h*ratio, w*ratio]`` depths.

    Each coarse cell owns a ``ratio x ratio`` patch; inside it, depth follows
    the ray-plane intersection ``d / (n1 u + n2 v + n3)`` with patch-local
    normalised coordinates ``u, v`` centred on the cell (parameter-free).
    """
    b, _, h, w = plane_eq.shape
    eq = plane_eq.repeat_interleave(ratio, dim=2).repeat_interleave(ratio, dim=3)
    offs = (torch.arange(ratio, device=eq.device, dtype=eq.dtype) - (ratio - 1) * 0.5) / ratio
    u = offs.repeat(w).view(1, 1, w * ratio)
    v = offs.repeat(h).view(1, h * ratio, 1)
    return eq[:, 3] / (eq[:, 0] * u + eq[:, 1] * v + eq[:, 2])


def _plane(reduc: torch.Tensor) -> torch.Tensor:
    # Re-normalise the normal (already unit length up to rounding) as upstream does.
    return torch.cat([F.normalize(reduc[:, :3], p=2, dim=1), reduc[:, 3:4]], dim=1)


class BtsEncoder(nn.Module):
    """DenseNet-161 ``features`` as ``base_model``, tapped at five strides."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        dense = densenet161(width_mult=width)
        # Only ``features`` is kept, as upstream, so no classifier keys appear.
        self.base_model = dense.features
        self.feat_names = STAGE_NAMES
        self.feat_out_channels: list[int] = list(dense.stage_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the maps at strides 2, 4, 8, 16, 32."""
        feats: list[torch.Tensor] = []
        for name, module in self.base_model.named_children():
            x = module(x)
            if name in self.feat_names:
                feats.append(x)
        return feats


class BtsDecoder(nn.Module):
    """Upstream ``bts`` decoder: dense ASPP at 1/8, LPG at 1/8, 1/4, 1/2."""

    def __init__(
        self,
        feat_ch: list[int],
        num_features: int = 512,
        max_depth: float = 10.0,
        dataset: str = "nyu",
    ) -> None:
        super().__init__()
        nf, c = num_features, feat_ch
        self.max_depth = max_depth
        self.dataset = dataset
        self.upconv5, self.bn5 = UpConv(c[4], nf), _bn(nf)
        self.conv5 = _conv_elu(nf + c[3], nf)
        self.upconv4, self.bn4 = UpConv(nf, nf // 2), _bn(nf // 2)
        self.conv4 = _conv_elu(nf // 2 + c[2], nf // 2)
        self.bn4_2 = _bn(nf // 2)
        # Dense ASPP: each branch sees the concatenation of all earlier ones.
        q, cat4 = nf // 4, nf // 2 + c[2]
        self.daspp_3 = AtrousConv(nf // 2, q, 3, bn_first=False)
        self.daspp_6 = AtrousConv(cat4 + q, q, 6)
        self.daspp_12 = AtrousConv(cat4 + 2 * q, q, 12)
        self.daspp_18 = AtrousConv(cat4 + 3 * q, q, 18)
        self.daspp_24 = AtrousConv(cat4 + 4 * q, q, 24)
        self.daspp_conv = _conv_elu(nf // 2 + 5 * q, q)
        self.reduc8x8 = Reduction(q, q, max_depth)
        self.upconv3, self.bn3 = UpConv(q, q), _bn(q)
        self.conv3 = _conv_elu(q + c[1] + 1, q)
        self.reduc4x4 = Reduction(q, nf // 8, max_depth)
        self.upconv2, self.bn2 = UpConv(q, nf // 8), _bn(nf // 8)
        self.conv2 = _conv_elu(nf // 8 + c[0] + 1, nf // 8)
        self.reduc2x2 = Reduction(nf // 8, nf // 16, max_depth)
        self.upconv1 = UpConv(nf // 8, nf // 16)
        self.reduc1x1 = Reduction(nf // 16, nf // 32, max_depth, is_final=True)
        self.conv1 = _conv_elu(nf // 16 + 4, nf // 16)
        self.get_depth = nn.Sequential(nn.Conv2d(nf // 16, 1, 3, 1, 1, bias=False), nn.Sigmoid())

    def forward(
        self, feats: list[torch.Tensor], focal: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Decode encoder taps into the final depth and the LPG side outputs."""
        skip0, skip1, skip2, skip3, dense = feats
        x = self.bn5(self.upconv5(F.relu(dense)))
        iconv5 = self.conv5(torch.cat([x, skip3], 1))
        concat4 = torch.cat([self.bn4(self.upconv4(iconv5)), skip2], 1)
        iconv4 = self.bn4_2(self.conv4(concat4))

        branches = [self.daspp_3(iconv4)]
        dense_in = torch.cat([concat4, branches[0]], 1)
        for branch in (self.daspp_6, self.daspp_12, self.daspp_18, self.daspp_24):
            branches.append(branch(dense_in))
            dense_in = torch.cat([dense_in, branches[-1]], 1)
        daspp_feat = self.daspp_conv(torch.cat([iconv4, *branches], 1))

        # LPG outputs are full resolution, scaled to [0, 1] by max_depth before reuse.
        d8 = (
            local_planar_guidance(_plane(self.reduc8x8(daspp_feat)), 8).unsqueeze(1)
            / self.max_depth
        )
        up3 = self.bn3(self.upconv3(daspp_feat))
        iconv3 = self.conv3(
            torch.cat([up3, skip1, F.interpolate(d8, scale_factor=0.25, mode="nearest")], 1)
        )
        d4 = local_planar_guidance(_plane(self.reduc4x4(iconv3)), 4).unsqueeze(1) / self.max_depth
        up2 = self.bn2(self.upconv2(iconv3))
        iconv2 = self.conv2(
            torch.cat([up2, skip0, F.interpolate(d4, scale_factor=0.5, mode="nearest")], 1)
        )
        d2 = local_planar_guidance(_plane(self.reduc2x2(iconv2)), 2).unsqueeze(1) / self.max_depth
        up1 = self.upconv1(iconv2)
        reduc1x1 = self.reduc1x1(up1)
        iconv1 = self.conv1(torch.cat([up1, reduc1x1, d2, d4, d8], 1))
        depth = self.max_depth * self.get_depth(iconv1)
        if self.dataset == "kitti" and focal is not None:
            # Upstream rescales KITTI predictions to the training focal length.
            f = torch.as_tensor(focal, dtype=depth.dtype, device=depth.device).reshape(-1, 1, 1, 1)
            depth = depth * f / KITTI_REFERENCE_FOCAL
        return {
            "depth_8x8": d8,
            "depth_4x4": d4,
            "depth_2x2": d2,
            "reduc1x1": reduc1x1,
            "depth": depth,
        }


class BtsModel(nn.Module):
    """BTS with a DenseNet-161 encoder.

    Parameters
    ----------
    width
        Channel multiplier for encoder (growth rate, stem) and decoder.
    max_depth
        Output range in metres (10 for NYU, 80 for KITTI).
    dataset
        ``"kitti"`` enables the focal-length rescaling of upstream.
    """

    def __init__(self, width: float = 1.0, max_depth: float = 10.0, dataset: str = "nyu") -> None:
        super().__init__()
        self.encoder = BtsEncoder(width)
        # Keep the decoder width a multiple of 32 so that nf // 32 >= 1.
        num_features = 32 * max(1, int(round(16 * width)))
        self.decoder = BtsDecoder(self.encoder.feat_out_channels, num_features, max_depth, dataset)
        self.max_depth = max_depth
        for m in self.decoder.modules():  # upstream initialises the decoder with Xavier
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

    def forward(
        self, image: torch.Tensor, focal: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Predict ``[B,1,H,W]`` depth in metres from an ImageNet-normalised image.

        ``focal`` only matters for ``dataset="kitti"``; LPG itself ignores it.
        """
        h, w = image.shape[-2:]
        if h % 32 or w % 32:
            fit_h, fit_w = (max(32, 32 * round(v / 32)) for v in (h, w))
            raise InputSizeError(f"BTS needs input sides that are multiples of 32, got {h}x{w}; resize "
                                 f"the input, e.g. size=[{fit_h},{fit_w}]")
        return self.decoder(self.encoder(image), focal)["depth"]


def build_bts(
    *,
    width: float = 1.0,
    tiny: bool = False,
    max_depth: float = 10.0,
    dataset: str = "nyu",
) -> BtsModel:
    """Build BTS for the registry.

    Parameters
    ----------
    width
        Channel multiplier (module names unchanged).
    tiny
        Use :data:`TINY_WIDTH` instead of ``width``, for CPU tests.
    max_depth
        Output range in metres: 10 for NYU, 80 for KITTI.
    dataset
        ``"kitti"`` rescales by ``focal / 715.0873`` when a focal is passed.

    Returns
    -------
    BtsModel
        Randomly initialised network.
    """
    return BtsModel(width=TINY_WIDTH if tiny else width, max_depth=max_depth, dataset=dataset)


def layer_units(width: float = 1.0) -> dict[str, int]:
    """Channels of each exposed layer (keyed by module path) at ``width``."""
    nf = 32 * max(1, int(round(16 * width)))
    return {
        "decoder.conv1": nf // 16,
        "decoder.upconv1": nf // 16,
        "decoder.conv2": nf // 8,
        "decoder.bn2": nf // 8,
        "decoder.bn3": nf // 4,
    }


INFO = ModelInfo(
    input_size=(416, 544),
    output_stride=1,
    normalization="imagenet",
    suggested_layers=tuple(PAPER_LAYERS.values()),
    layer_units=layer_units(1.0),
    input_multiple=32,
    reference="Lee et al. 2019, From Big to Small (arXiv:1907.10326); github.com/cleinc/bts",
)


def register_models(register: Callable[..., Any]) -> None:
    """Register ``bts_densenet161`` with the depthsel model registry."""
    register(
        "bts_densenet161",
        build_bts,
        description="BTS (Lee et al. 2019): DenseNet-161, dense ASPP, local planar guidance",
        info=INFO,
    )
