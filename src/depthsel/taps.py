"""The bilinear taps behind the adjoint alignment, built once per size pair.

Bilinear upsampling from a feature size to a depth size reads, for every depth
row (and column), two feature rows with two weights, exactly as
``F.interpolate`` computes them. Everything here depends only on the sizes and
the convention, so each table is cached; :mod:`depthsel.alignment` and
:mod:`depthsel.per_image` build their weight maps from them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

__all__ = ["interp_weights", "TapTable"]


@lru_cache(maxsize=256)
def _interp_taps(out_size: int, in_size: int, align_corners: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the two source indices and weights per output index, as PyTorch computes them."""
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        # F.interpolate(size=...) uses scale = in/out and clamps negative sources at 0.
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = (src - i0.to(torch.float64)).clamp(0.0, 1.0)
    w0 = 1.0 - w1
    return i0, i1, w0, w1


def interp_weights(out_size: int, in_size: int, align_corners: bool = False) -> torch.Tensor:
    """Dense 1-D bilinear interpolation matrix ``U [out_size, in_size]`` (float64).

    ``F.interpolate(x, size=(H, W), mode="bilinear", align_corners=ac)`` equals
    ``interp_weights(H, h, ac) @ x @ interp_weights(W, w, ac).T`` per channel.
    """
    i0, i1, w0, w1 = _interp_taps(out_size, in_size, align_corners)
    u = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    u.index_put_((rows, i0), w0, accumulate=True)
    u.index_put_((rows, i1), w1, accumulate=True)
    return u


@lru_cache(maxsize=16)
def _tap_slots(
    height: int, width: int, h: int, w: int, num_bins: int, align_corners: bool, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per depth pixel, the slot and weight of each of its 4 bilinear taps.

    ``slot int64 [4, H*W]`` is ``q * (Nb + 1) + 1`` for the tap's feature index
    ``q``: adding the pixel's bin ``d`` (``-1`` invalid) gives its place in a
    bin-last ``[h*w, Nb + 1]`` table whose column 0 collects invalid pixels.
    ``wt float64 [4, H*W]``. Both depend only on the sizes, so they are built
    once and shared by every batch.
    """
    y0, y1, wy0, wy1 = _interp_taps(height, h, align_corners)
    x0, x1, wx0, wx1 = _interp_taps(width, w, align_corners)
    idx, wt = [], []
    for ys, wys in ((y0, wy0), (y1, wy1)):
        for xs, wxs in ((x0, wx0), (x1, wx1)):
            idx.append((ys[:, None] * w + xs[None, :]).reshape(-1))
            wt.append((wys[:, None] * wxs[None, :]).reshape(-1))
    slots = torch.stack(idx) * (num_bins + 1) + 1
    return slots.to(device), torch.stack(wt).to(device)


@lru_cache(maxsize=16)
def _tap_weights32(
    height: int, width: int, h: int, w: int, num_bins: int, align_corners: bool, device: str
) -> torch.Tensor:
    """float32 copy of :func:`_tap_slots`' tap weights, made once per size (same cache key)."""
    return _tap_slots(height, width, h, w, num_bins, align_corners, device)[1].to(torch.float32)


class TapTable(NamedTuple):
    """The bilinear taps of one (depth size, feature size) pair, laid out for the numba loop.

    ``ya``/``yb`` (``int64 [H]``) and ``xa``/``xb`` (``int64 [W]``) are the feature rows
    and columns each depth row and column taps; ``weights[row_kind[Y], t, X]`` the weight
    of tap ``t`` (``ya``/``xa``, ``ya``/``xb``, ``yb``/``xa``, ``yb``/``xb``): the float64
    product rounded once to the table's dtype, the same numbers as :func:`_tap_slots`'
    (and :func:`_tap_weights32`'s). Rows with equal weights share a kind, so the table is
    small at integer scale factors (one kind per phase).
    """

    ya: torch.Tensor
    yb: torch.Tensor
    row_kind: torch.Tensor
    xa: torch.Tensor
    xb: torch.Tensor
    weights: torch.Tensor


@lru_cache(maxsize=16)
def _tap_table(height: int, width: int, h: int, w: int, align_corners: bool, dtype: torch.dtype) -> TapTable:
    """:class:`TapTable` of a size pair in ``dtype``, built once."""
    y0, y1, wy0, wy1 = _interp_taps(height, h, align_corners)
    x0, x1, wx0, wx1 = _interp_taps(width, w, align_corners)
    kinds, row_kind = torch.unique(torch.stack([wy0, wy1], 1), dim=0, return_inverse=True)
    weights = torch.stack([kinds[:, 0, None] * wx0, kinds[:, 0, None] * wx1,
                           kinds[:, 1, None] * wx0, kinds[:, 1, None] * wx1], 1).to(dtype)
    return TapTable(y0, y1, row_kind.contiguous(), x0, x1, weights.contiguous())


