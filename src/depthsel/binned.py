"""One batch's ground-truth depth, binned once per binner, with its bin weight maps cached.

Every consumer of a batch (the dissection sums, the permutation reservoirs, the
prediction diagnostics, the training regularizer) needs the same two things:
the bin index of each pixel under some :class:`~depthsel.Binner`, and, for the
exact adjoint alignment, the weight maps :func:`~depthsel.alignment.bin_weight_maps`
at each feature-map size. Both are pure functions of (depth, valid, binner, h, w),
so :class:`BinnedDepth` computes each once per batch and hands out the cached
tensor; consumers never bin on their own.
"""

from __future__ import annotations

import torch

from .alignment import bin_counts, bin_weight_maps
from .binning import Binner, prepare_depth

__all__ = ["BinnedDepth"]


class BinnedDepth:
    """Lazily binned ground truth of one batch.

    Parameters
    ----------
    depth
        ``[B, 1, H, W]`` or ``[B, H, W]`` ground-truth depth.
    valid
        Optional validity mask of the same shape.
    align_corners
        Bilinear convention of the weight maps.

    Notes
    -----
    Caches are keyed by the binner's identity: two equal but distinct binner
    objects are binned twice (cheap) rather than risking a stale entry keyed by
    a mutable configuration.

    Examples
    --------
    >>> from depthsel.binning import EdgesBinner
    >>> b = EdgesBinner([0.0, 1.0, 2.0, 4.0])
    >>> binned = BinnedDepth(torch.rand(2, 1, 8, 8) * 4)
    >>> binned.bins(b) is binned.bins(b)
    True
    >>> binned.weights(b, (4, 4)).shape
    torch.Size([2, 3, 4, 4])
    """

    def __init__(self, depth: torch.Tensor, valid: torch.Tensor | None = None, *,
                 align_corners: bool = False) -> None:
        self.depth = depth
        self.valid = valid
        self.align_corners = bool(align_corners)
        self._bins: dict[int, tuple[Binner, torch.Tensor]] = {}
        self._weights: dict[tuple[int, int, int, torch.dtype, str], torch.Tensor] = {}
        self._counts: dict[tuple[int, str], torch.Tensor] = {}
        self._prepared: dict[str, torch.Tensor] = {}

    def bins(self, binner: Binner, device: torch.device | str | None = None) -> torch.Tensor:
        """``int64 [B, H, W]`` bin indices under ``binner`` (``-1`` invalid), computed once."""
        key = id(binner)
        hit = self._bins.get(key)
        if hit is None:
            depth, valid = self.depth, self.valid
            if device is not None:
                depth = depth.to(device)
                valid = None if valid is None else valid.to(device)
            if type(binner).__call__ is Binner.__call__:
                # The base rule reads depth only through prepare_depth (invalid -> 0), so the
                # checked, masked depth is made once and shared by every such binner of the batch.
                binned = binner._bin_prepared(self._masked(depth, valid))
            else:
                binned = binner(depth, valid)
            # The binner is kept alive with its entry so that its id cannot be reused.
            hit = (binner, binned)
            self._bins[key] = hit
        out = hit[1]
        return out if device is None else out.to(device)

    def _masked(self, depth: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        key = str(depth.device)
        hit = self._prepared.get(key)
        if hit is None:
            hit = self._prepared[key] = prepare_depth(depth, valid)
        return hit

    def weights(self, binner: Binner, feat_size: tuple[int, int], dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
        """``[B, Nb, h, w]`` adjoint weight maps of ``binner``'s bins at ``feat_size``, computed once."""
        bins = self.bins(binner, device)
        key = (id(binner), int(feat_size[0]), int(feat_size[1]), dtype, str(bins.device))
        w = self._weights.get(key)
        if w is None:
            w = bin_weight_maps(bins, binner.num_bins, (int(feat_size[0]), int(feat_size[1])),
                                self.align_corners, dtype=dtype)
            self._weights[key] = w
        return w

    def counts(self, binner: Binner, device: torch.device | str | None = None) -> torch.Tensor:
        """``int64 [B, Nb]`` valid-pixel count per image and bin under ``binner``, computed once."""
        bins = self.bins(binner, device)
        key = (id(binner), str(bins.device))
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = bin_counts(bins, binner.num_bins)
        return c
