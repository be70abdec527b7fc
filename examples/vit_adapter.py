"""Depth selectivity on a transformer: a tiny DPT-style ViT and ``TokenGridAdapter``.

A transformer block outputs tokens ``[B, N, C]`` (here with a class token in
front), not a feature map ``[B, C, h, w]``. depthsel's hooks need the map, so
the regularizer is given an adapter for that layer::

    reg = depthsel.SelectivityRegularizer(
        model, layers=["blocks.1"], binner=binner, objective="assign", weight=1.0,
        adapters={"blocks.1": depthsel.TokenGridAdapter(model.grid, skip_tokens=1)},
    )

The adapter drops the class token and reshapes the ``N = h * w`` patch tokens
into a ``[B, C, h, w]`` grid whose ``C`` channels are the units. Without it,
depthsel raises :class:`depthsel.errors.ActivationShapeError` naming the fix.

Run ``python examples/vit_adapter.py`` to train the model below for a few
dozen steps on synthetic data (CPU, a few seconds) and print the mean depth
selectivity of ``blocks.1`` before and after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyDPT", "Block", "make_regularizer", "train", "main"]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + MHSA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int = 2, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, N, C]`` tokens to ``[B, N, C]`` tokens."""
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _ResidualConvUnit(nn.Module):
    # DPT's fusion unit: x + conv(relu(conv(relu(x)))).
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class TinyDPT(nn.Module):
    """A DPT-style depth ViT small enough to train on a CPU in seconds.

    Patch embedding (``patch x patch`` conv) plus a class token and learned
    position embeddings; two transformer blocks ``blocks.0`` and ``blocks.1``,
    each emitting ``[B, 1 + h*w, dim]`` tokens; a *reassemble* stage that drops
    the class token, folds each block's tokens back into a ``[B, dim, h, w]``
    grid and projects it; a *fusion* stage (residual conv units, deepest first)
    and a head that upsamples to the input size and predicts
    ``max_depth * sigmoid(.)`` metres.

    Parameters
    ----------
    image_size
        ``(H, W)`` of the input; must be multiples of ``patch``.
    patch
        Patch side in pixels.
    dim
        Token width (= the number of units of a block).
    features
        Channels of the reassembled and fused maps.
    max_depth
        Output range in metres.
    """

    def __init__(self, image_size: tuple[int, int] = (32, 32), patch: int = 4, dim: int = 16,
                 features: int = 16, max_depth: float = 10.0) -> None:
        super().__init__()
        h, w = image_size
        if h % patch or w % patch:
            raise ValueError(f"image sides {image_size} must be multiples of patch={patch}")
        self.grid: tuple[int, int] = (h // patch, w // patch)
        self.max_depth = max_depth
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.reassemble = nn.ModuleList([nn.Conv2d(dim, features, 1) for _ in self.blocks])
        self.fusion = nn.ModuleList([_ResidualConvUnit(features) for _ in self.blocks])
        self.head = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1), nn.ReLU(), nn.Conv2d(features, 1, 1)
        )

    def tokens_to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop the class token and fold ``[B, 1+h*w, C]`` into ``[B, C, h, w]``."""
        b, _, c = tokens.shape
        return tokens[:, 1:].transpose(1, 2).reshape(b, c, *self.grid)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Predict ``[B, 1, H, W]`` depth in metres from ``[B, 3, H, W]`` images."""
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # [B, h*w, C]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        maps = []
        for block, project in zip(self.blocks, self.reassemble, strict=True):
            x = block(x)
            maps.append(project(self.tokens_to_grid(x)))
        fused = torch.zeros_like(maps[-1])
        for fmap, unit in zip(reversed(maps), self.fusion, strict=True):
            fused = unit(fused + fmap)
        fused = F.interpolate(fused, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.max_depth * torch.sigmoid(self.head(fused))


def make_regularizer(model: TinyDPT, weight: float = 1.0, num_bins: int = 16):  # noqa: ANN201
    """The regularizer on ``blocks.1`` tokens, reshaped by ``TokenGridAdapter``."""
    import depthsel

    binner = depthsel.get_binner("sid", num_bins=num_bins, min_depth=0.5, max_depth=10.0)
    return depthsel.SelectivityRegularizer(
        model,
        layers=["blocks.1"],
        binner=binner,
        objective="assign",
        weight=weight,
        fit_bins_to_units=True,
        adapters={"blocks.1": depthsel.TokenGridAdapter(model.grid, skip_tokens=1)},
    )


def _measure(model: TinyDPT, reg, image: torch.Tensor, depth: torch.Tensor) -> float:  # noqa: ANN001
    model.eval()
    with torch.no_grad(), reg.attach():
        model(image)
        reg.loss(depth)
    model.train()
    return reg.last_stats()["blocks.1"]["target_ds"]


def train(steps: int = 40, seed: int = 0, weight: float = 1.0,
          lr: float = 3e-3) -> dict[str, float]:
    """Train :class:`TinyDPT` with L1 + the selectivity term; return DS before/after.

    Uses :func:`depthsel.testing.toy_batch` (32x32 synthetic scenes). The
    returned dict has ``ds_start``, ``ds_end`` (mean target DS of ``blocks.1`` on a
    held-out batch) and ``last_loss``.
    """
    from depthsel.testing import toy_batch

    torch.manual_seed(seed)
    model = TinyDPT()
    reg = make_regularizer(model, weight=weight)
    held_image, held_depth = toy_batch(batch=8, seed=10_000 + seed)
    ds_start = _measure(model, reg, held_image, held_depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.zeros(())
    for step in range(steps):
        image, depth = toy_batch(batch=8, seed=seed * 1000 + step)
        with reg.attach():
            pred = model(image)
            loss = F.l1_loss(pred, depth) + reg.loss(depth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ds_end = _measure(model, reg, held_image, held_depth)
    return {"ds_start": ds_start, "ds_end": ds_end, "last_loss": float(loss.detach())}


def main() -> None:
    """Train briefly and print the depth selectivity of ``blocks.1``."""
    torch.set_num_threads(1)
    out = train()
    print(f"blocks.1 target DS: {out['ds_start']:.4f} -> {out['ds_end']:.4f} "
          f"(last loss {out['last_loss']:.4f})")


if __name__ == "__main__":
    main()
