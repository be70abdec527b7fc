"""CSPN depth completion: ResNet-50 UNet + convolutional spatial propagation (Cheng et al. 2018).

An independent re-implementation of ``XinJCheng/CSPN``
(``models/torch_resnet_cspn_nyu.py`` with ``models/cspn.py``) whose state dict
has the same keys and shapes as the upstream ``resnet50`` model, so the
released NYU checkpoints load with ``strict=True`` after stripping
``module.``. Top-level keys (no ``encoder.`` prefix, as upstream)::

    conv1_1 (4-channel RGB-D stem), bn1, layer1..layer4, conv2, bn2,
    up_proj_layer1..4, conv3           # built but unused upstream; kept for loading
    gud_up_proj_layer1..6              # the UNet decoder actually used

Data flow: ResNet-50 encoder on ``[RGB, sparse depth]``; ``gud_up_proj_layer1``
to ``layer4`` are up-projection blocks (zero-insertion unpooling, 5x5 conv
branch + shortcut) that concatenate the ``layer2``, ``layer1`` and stem skips;
``gud_up_proj_layer5`` predicts the blurry depth and ``gud_up_proj_layer6`` the
8 neighbour affinities; 24 propagation steps refine the depth while keeping
sparse pixels fixed.

Exposed layers: ``gud_up_proj_layer3`` (256 ch, H/4 x W/4) and
``gud_up_proj_layer4`` (64 ch, H/2 x W/2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel import ModelInfo

from .backbones.resnet import resnet50, scaled

__all__ = ["CSPN", "AffinityPropagate", "UpProjection", "build_cspn", "register_models"]

#: Width used by ``tiny=True`` (stem 4 channels, layer4 128 channels).
TINY_WIDTH = 1.0 / 16.0
# Upstream pads each of the 8 gate / depth maps by (left, right, top, bottom)
# and crops the centre, which pairs every pixel with one of its 8 neighbours.
# Order: left-top, centre-top, right-top, left-centre, right-centre,
# left-bottom, centre-bottom, right-bottom (upstream's gate1 ... gate8).
_NEIGHBOUR_PADS: tuple[tuple[int, int, int, int], ...] = (
    (0, 2, 0, 2),
    (1, 1, 0, 2),
    (2, 0, 0, 2),
    (0, 2, 1, 1),
    (2, 0, 1, 1),
    (0, 2, 2, 0),
    (1, 1, 2, 0),
    (2, 0, 2, 0),
)


def unpool(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """2x zero-insertion unpooling (value at the top-left of each 2x2 cell), cropped to ``size``.

    Equals upstream's transposed conv with kernel ``[[1, 0], [0, 0]]`` and its
    nearest-upsample-times-mask variant, without allocating a kernel.
    """
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, 2 * h, 2 * w)
    out[:, :, ::2, ::2] = x
    return out if size is None else out[:, :, : size[0], : size[1]]


def _neighbours(x: torch.Tensor) -> torch.Tensor:
    """Stack the 8 neighbour-shifted copies of a ``[B,1,H,W]`` map into ``[B,8,H,W]``."""
    return torch.cat([F.pad(x, pad)[..., 1:-1, 1:-1] for pad in _NEIGHBOUR_PADS], dim=1)


class UpProjection(nn.Module):
    """Up-projection block: unpool, ``5x5-BN-ReLU(-cat-3x3-BN-ReLU)-3x3-BN`` + ``5x5-BN`` shortcut.

    Parameters
    ----------
    in_ch, out_ch
        Input and output channels.
    side
        Whether a skip connection of ``out_ch`` channels is concatenated after
        the first conv (upstream ``Gudi_UpProj_Block_Cat``, adds ``conv1_1``/``bn1_1``).
    """

    def __init__(self, in_ch: int, out_ch: int, side: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 5, 1, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        if side:
            self.conv1_1 = nn.Conv2d(out_ch * 2, out_ch, 3, 1, 1, bias=False)
            self.bn1_1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.sc_conv1 = nn.Conv2d(in_ch, out_ch, 5, 1, 2, bias=False)
        self.sc_bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.side = side

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Upsample ``x`` to ``size`` (default: the skip's size, else 2x)."""
        if size is None and skip is not None:
            size = (skip.shape[-2], skip.shape[-1])
        x = unpool(x, size)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.side:
            if skip is None:
                raise ValueError("this up-projection block needs a skip input")
            out = self.relu(self.bn1_1(self.conv1_1(torch.cat([out, skip], 1))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.sc_bn1(self.sc_conv1(x)))


class LastUpConv(nn.Module):
    """Unpool then a single 3x3 conv (no BN): upstream's last-layer head."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upsample to ``size`` and project."""
        return self.conv1(unpool(x, size))


#: Upstream ``Affinity_Propagate`` builds this all-ones [1, 8, 1, 1, 1] summing kernel
#: as a submodule inside ``forward``, so checkpoints saved after training hold it.
UPSTREAM_SUM_CONV_KEY = "sum_conv.weight"


def _drop_upstream_sum_conv(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any
) -> None:
    # Upstream rebuilds the kernel as ones on every forward, so its stored value
    # never reaches an output: dropping it loses nothing and lets the released
    # checkpoints load strictly (as the DenseNet key renaming in hu_mff does).
    state_dict.pop(prefix + UPSTREAM_SUM_CONV_KEY, None)


class AffinityPropagate(nn.Module):
    """Parameter-free 8-neighbour convolutional spatial propagation.

    Each step replaces every pixel by the affinity-weighted sum of its 8
    neighbours plus ``(1 - sum of affinities)`` times the *initial* blurry
    depth; pixels with a sparse measurement are reset each step.

    Parameters
    ----------
    prop_time
        Number of propagation steps (24 upstream).
    norm_type
        ``"8sum"`` (signed affinities, upstream default and the released
        "non-pos" model) or ``"8sum_abs"`` (affinities forced positive).
    reset_to_sparse
        Upstream resets measured pixels to the *blurry* prediction there, not
        to the measurement (the paper's Eq. uses the measurement). ``False``
        reproduces the code; ``True`` follows the paper.

    Notes
    -----
    Loading a state dict drops upstream's ``post_process_layer.sum_conv.weight``
    (see :data:`UPSTREAM_SUM_CONV_KEY`); this module has no parameters.
    """

    def __init__(
        self, prop_time: int = 24, norm_type: str = "8sum", reset_to_sparse: bool = False
    ) -> None:
        super().__init__()
        if norm_type not in ("8sum", "8sum_abs"):
            raise ValueError(f"unknown norm_type {norm_type!r}")
        self.prop_time = prop_time
        self.norm_type = norm_type
        self.reset_to_sparse = reset_to_sparse
        self.register_load_state_dict_pre_hook(_drop_upstream_sum_conv)

    def forward(
        self,
        guidance: torch.Tensor,
        blur_depth: torch.Tensor,
        sparse_depth: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Refine ``[B,1,H,W]`` ``blur_depth`` with ``[B,8,H,W]`` ``guidance``."""
        if self.norm_type.endswith("abs"):
            guidance = guidance.abs()
        # Gate k at pixel p is the guidance of the neighbour p reads from.
        gates = torch.cat(
            [
                F.pad(guidance[:, k : k + 1], pad)[..., 1:-1, 1:-1]
                for k, pad in enumerate(_NEIGHBOUR_PADS)
            ],
            1,
        )
        # clamp only guards an exact all-zero neighbourhood (upstream would give NaN).
        gates = gates / gates.abs().sum(1, keepdim=True).clamp_min(torch.finfo(gates.dtype).tiny)
        keep = 1.0 - gates.sum(1, keepdim=True)
        mask = None if sparse_depth is None else sparse_depth.sign()
        reset = sparse_depth if (self.reset_to_sparse and sparse_depth is not None) else blur_depth
        depth = blur_depth
        for _ in range(self.prop_time):
            depth = (gates * _neighbours(depth)).sum(1, keepdim=True) + keep * blur_depth
            if mask is not None:
                depth = (1 - mask) * depth + mask * reset
        return depth


class CSPN(nn.Module):
    """ResNet-50 UNet + CSPN for RGB + sparse depth completion.

    Parameters
    ----------
    width
        Channel multiplier for encoder and decoder (module names unchanged).
    prop_time, norm_type, reset_to_sparse
        Passed to :class:`AffinityPropagate`.
    """

    def __init__(
        self,
        width: float = 1.0,
        prop_time: int = 24,
        norm_type: str = "8sum",
        reset_to_sparse: bool = False,
    ) -> None:
        super().__init__()
        backbone = resnet50(width_mult=width, num_classes=None)
        stem = backbone.stem_channels
        c1, c2, c3, c4 = backbone.channels
        # The RGB-D stem replaces torchvision's ``conv1``; upstream calls it ``conv1_1``.
        self.conv1_1 = nn.Conv2d(4, stem, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = backbone.bn1, backbone.relu, backbone.maxpool
        self.layer1, self.layer2 = backbone.layer1, backbone.layer2
        self.layer3, self.layer4 = backbone.layer3, backbone.layer4
        self.conv2 = nn.Conv2d(c4, c4, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c4)
        # Unused by upstream's forward but present in its checkpoints.
        mid = c3
        self.up_proj_layer1 = UpProjection(mid, mid // 2)
        self.up_proj_layer2 = UpProjection(mid // 2, mid // 4)
        self.up_proj_layer3 = UpProjection(mid // 4, mid // 8)
        self.up_proj_layer4 = UpProjection(mid // 8, mid // 16)
        self.conv3 = nn.Conv2d(mid // 8, 1, 3, 1, 1, bias=False)
        self.post_process_layer = AffinityPropagate(prop_time, norm_type, reset_to_sparse)
        self.gud_up_proj_layer1 = UpProjection(c4, c3)
        self.gud_up_proj_layer2 = UpProjection(c3, c2, side=True)
        self.gud_up_proj_layer3 = UpProjection(c2, c1, side=True)
        self.gud_up_proj_layer4 = UpProjection(c1, stem, side=True)
        self.gud_up_proj_layer5 = LastUpConv(stem, 1)
        self.gud_up_proj_layer6 = LastUpConv(stem, 8)

    def forward(self, image: torch.Tensor, sparse_depth: torch.Tensor) -> torch.Tensor:
        """Complete depth from a normalised image and sparse metres.

        ``image`` is ``[B,3,H,W]``, ``sparse_depth`` ``[B,1,H,W]`` (0 = no sample);
        returns ``[B,1,H,W]`` metres.
        """
        x = torch.cat([image, sparse_depth.to(image.dtype)], 1)
        size = (x.shape[-2], x.shape[-1])
        skip4 = self.conv1_1(x)  # stem skip is taken before BN, as upstream
        skip3 = self.layer1(self.maxpool(self.relu(self.bn1(skip4))))
        skip2 = self.layer2(skip3)
        x3 = self.layer3(skip2)
        x = self.bn2(self.conv2(self.layer4(x3)))
        # Upstream hard-codes the crop sizes for 228x304; the skip sizes give
        # the same crops there and keep any other input size consistent.
        x = self.gud_up_proj_layer1(x, size=(x3.shape[-2], x3.shape[-1]))
        x = self.gud_up_proj_layer2(x, skip2)
        x = self.gud_up_proj_layer3(x, skip3)
        x = self.gud_up_proj_layer4(x, skip4)
        guidance = self.gud_up_proj_layer6(x, size)
        blur = self.gud_up_proj_layer5(x, size)
        return self.post_process_layer(guidance, blur, sparse_depth.to(image.dtype))


def build_cspn(
    *,
    width: float = 1.0,
    tiny: bool = False,
    prop_time: int = 24,
    norm_type: str = "8sum",
    reset_to_sparse: bool = False,
) -> CSPN:
    """Build CSPN for the registry.

    Parameters
    ----------
    width
        Channel multiplier (module names unchanged).
    tiny
        Use :data:`TINY_WIDTH` instead of ``width``, for CPU tests.
    prop_time, norm_type, reset_to_sparse
        See :class:`AffinityPropagate`.

    Returns
    -------
    CSPN
        Randomly initialised network.
    """
    return CSPN(TINY_WIDTH if tiny else width, prop_time, norm_type, reset_to_sparse)


def layer_units(width: float = 1.0) -> dict[str, int]:
    """Channels of the exposed decoder blocks at ``width`` (256 and 64 at full width)."""
    stem = scaled(64, width)  # layer1 is 4 x 64 wide, the stem 64, both scaled alike
    return {"gud_up_proj_layer3": 4 * stem, "gud_up_proj_layer4": stem}


INFO = ModelInfo(
    input_size=(228, 304),
    output_stride=1,
    normalization="imagenet",
    suggested_layers=("gud_up_proj_layer3", "gud_up_proj_layer4"),
    layer_units={"gud_up_proj_layer3": 256, "gud_up_proj_layer4": 64},
    extra_inputs=("sparse_depth",),
    input_multiple=1,
    reference="Cheng et al. 2018, CSPN (ECCV); github.com/XinJCheng/CSPN",
)


def register_models(register: Callable[..., Any]) -> None:
    """Register ``cspn_resnet50`` with the depthsel model registry."""
    register(
        "cspn_resnet50",
        build_cspn,
        description=(
            "CSPN (Cheng et al. 2018): ResNet-50 UNet + 24-step 8-neighbour propagation, "
            "RGB + sparse depth"
        ),
        info=INFO,
    )
