"""A small DPT-style ViT depth network (Ranftl et al., ICCV 2021) in pure torch: ``dpt_vit_tiny``.

Architecture (DPT with a ViT-Tiny-sized encoder, trained from scratch; no
pretrained weights are bundled):

* **Encoder.** A ``patch x patch`` conv patch embedding, learned position
  embeddings (bilinearly resized for other input sizes) and ``4 x depth``
  pre-norm transformer blocks grouped in four stages ``stages.0`` ... ``stages.3``.
* **Token adapter built in.** Every block takes and returns a ``[B, C, h, w]``
  grid: it flattens the grid into ``h*w`` tokens, runs attention and the MLP on
  them, and folds the tokens back. So every block and stage output is a token
  layer that depthsel can hook as it is — ``depthsel dissect`` and ``train``
  need no ``TokenGridAdapter``. There is no class token (DPT's ``readout="ignore"``).
* **Reassemble.** Each stage's ``1/p`` grid is projected (1x1 conv) and
  resampled to ``1/4, 1/8, 1/16, 1/32`` of the input (transposed convs, identity,
  a stride-2 conv), then mapped to ``features`` channels (3x3 conv).
* **Fusion.** RefineNet-style fusion blocks, deepest first: residual conv
  units, add the next shallower map, upsample x2.
* **Head.** conv, x2 upsampling to the input size, conv, ReLU, 1x1 conv;
  output ``max_depth * sigmoid(.)`` metres at the input resolution.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DPTViT", "GridBlock", "dpt_vit_tiny", "register_models", "STAGES"]

STAGES = ("stages.0", "stages.1", "stages.2", "stages.3")
_FULL = {"dim": 192, "heads": 3, "depth": 3, "mlp_ratio": 4, "reassemble": (24, 48, 96, 192), "features": 64}
_TINY = {"dim": 16, "heads": 2, "depth": 1, "mlp_ratio": 2, "reassemble": (8, 8, 16, 16), "features": 8}


class GridBlock(nn.Module):
    """Pre-norm transformer block on a ``[B, C, h, w]`` grid of ``h*w`` tokens.

    ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` on the tokens; the output is
    folded back into the grid, so a forward hook sees ``[B, C, h, w]``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, c, h, w = grid.shape
        x = grid.flatten(2).transpose(1, 2)  # [B, N, C]
        q, k, v = self.qkv(self.norm1(x)).view(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        x = x + self.proj(att)
        x = x + self.mlp(self.norm2(x))
        return x.transpose(1, 2).reshape(b, c, h, w)


class _RCU(nn.Module):
    # DPT's residual conv unit: x + conv(relu(conv(relu(x)))).
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """``out = up2(RCU2(deeper + RCU1(skip)))``; the deepest block has no skip."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.rcu1, self.rcu2 = _RCU(ch), _RCU(ch)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) + self.rcu1(skip)
        x = self.rcu2(x)
        return self.out(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


def _resample(cin: int, cout: int, factor: float) -> nn.Module:
    """1x1 projection then resampling from ``1/16`` to ``1/(16/factor)`` (DPT's reassemble)."""
    proj = nn.Conv2d(cin, cout, 1)
    if factor > 1:
        k = int(factor)
        return nn.Sequential(proj, nn.ConvTranspose2d(cout, cout, k, stride=k))
    if factor < 1:
        return nn.Sequential(proj, nn.Conv2d(cout, cout, 3, stride=2, padding=1))
    return proj


class DPTViT(nn.Module):
    """DPT-style ViT depth network; see the module docstring.

    Parameters
    ----------
    dim, heads, depth, mlp_ratio
        Token width (= units of every token layer), attention heads, blocks per
        stage (4 stages), MLP expansion.
    reassemble
        Channels of the four reassembled maps (at ``1/4 ... 1/32``).
    features
        Channels of the fusion decoder.
    patch
        Patch side; input sides must be multiples of it.
    image_size
        Input size the position embeddings are laid out for.
    max_depth
        Output range in metres.
    """

    def __init__(self, *, dim: int = 192, heads: int = 3, depth: int = 3, mlp_ratio: int = 4,
                 reassemble: tuple[int, ...] = (24, 48, 96, 192), features: int = 64, patch: int = 16,
                 image_size: tuple[int, int] = (240, 320), max_depth: float = 10.0) -> None:
        super().__init__()
        if len(reassemble) != 4 or depth < 1 or patch < 4:
            raise ValueError("need 4 reassemble widths, depth >= 1 and patch >= 4")
        self.patch, self.max_depth = patch, max_depth
        self.base_grid = (image_size[0] // patch, image_size[1] // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, dim, *self.base_grid))
        self.stages = nn.ModuleList(
            [nn.Sequential(*[GridBlock(dim, heads, mlp_ratio) for _ in range(depth)]) for _ in range(4)])
        # Stage i is resampled from 1/patch to 1/4, 1/8, 1/16, 1/32 of the input (for patch = 16).
        factors = [patch / 4, patch / 8, patch / 16, patch / 32]
        self.reassemble = nn.ModuleList([_resample(dim, c, f) for c, f in zip(reassemble, factors)])
        self.project = nn.ModuleList([nn.Conv2d(c, features, 3, padding=1, bias=False) for c in reassemble])
        self.fusion = nn.ModuleList([_Fusion(features) for _ in range(4)])
        self.head_in = nn.Conv2d(features, features // 2, 3, padding=1)
        self.head = nn.Sequential(nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1))

    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.base_grid:
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=grid, mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised image -> ``[B, 1, H, W]`` depth in metres."""
        h, w = image.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"input sides {(h, w)} must be multiples of the patch size {self.patch}")
        x = self.patch_embed(image)
        x = x + self._pos(tuple(x.shape[-2:]))  # type: ignore[arg-type]
        maps = []
        for stage, resample, project in zip(self.stages, self.reassemble, self.project):
            x = stage(x)
            maps.append(project(resample(x)))
        y = self.fusion[3](maps[3])
        for i in (2, 1, 0):
            y = self.fusion[i](y, maps[i])
        # The fused map is at 1/2 (for patch 16); the head brings it to the input size.
        y = F.interpolate(self.head_in(y), size=(h, w), mode="bilinear", align_corners=False)
        y = self.head(y)
        return self.max_depth * torch.sigmoid(y)


def dpt_vit_tiny(*, tiny: bool = False, width: float | None = None, **overrides: Any) -> DPTViT:
    """Build the DPT-style ViT (ViT-Tiny-sized encoder: 192-d tokens, 12 blocks, 3 heads).

    Parameters
    ----------
    tiny
        A CPU-test variant: 16-d tokens, one block per stage.
    width
        Token-width multiplier (``0.5`` gives 96-d tokens); heads are kept.
    overrides
        Any :class:`DPTViT` argument (``dim``, ``depth``, ``image_size``...).
    """
    cfg: dict[str, Any] = dict(_TINY if tiny else _FULL)
    if width is not None and not tiny:
        cfg["dim"] = max(cfg["heads"], int(round(cfg["dim"] * float(width) / cfg["heads"])) * cfg["heads"])
    cfg.update(overrides)
    if "reassemble" in cfg:
        cfg["reassemble"] = tuple(int(c) for c in cfg["reassemble"])
    if "image_size" in cfg:
        cfg["image_size"] = tuple(int(s) for s in cfg["image_size"])
    return DPTViT(**cfg)


def register_models(register: Any) -> None:
    """Register ``dpt_vit_tiny`` with its :class:`depthsel.ModelInfo`."""
    from depthsel import ModelInfo

    register(
        "dpt_vit_tiny",
        dpt_vit_tiny,
        description="DPT-style ViT (ViT-Tiny encoder, reassemble + fusion decoder), token layers hookable",
        info=ModelInfo(
            input_size=(240, 320),
            output_stride=1,
            normalization="imagenet",
            suggested_layers=STAGES,
            layer_units={s: _FULL["dim"] for s in STAGES},
            input_multiple=16,
            reference="Ranftl et al., ICCV 2021 (DPT), ViT-Tiny-sized encoder, readout='ignore'; from scratch",
        ),
    )
