"""Per-bin sums one image at a time, with the numba loops (CPU only).

:func:`depthsel.alignment.binned_sums` multiplies a batch of activations by a
batch of weight maps. On the CPU with the numba loops of :mod:`depthsel.kernels`,
:class:`~depthsel.ResponseAccumulator` uses :func:`per_image_binned_sums`
instead: each image's weight map, over the bins present in it, is built in one
buffer that stays in cache while the product reads it. The numbers are those of
the batch path to float rounding (``tests/test_kernels.py``).
"""

from __future__ import annotations

import torch

from . import kernels
from .alignment import bin_counts
from .errors import ShapeMismatchError
from .taps import _tap_table

__all__ = ["per_image_sums_available", "per_image_binned_sums"]


def per_image_sums_available(act: torch.Tensor, bins: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether :func:`per_image_binned_sums` serves this batch (CPU, numba loops, no autograd).

    ``dtype``: the dtype the sums will be computed in (default ``act``'s).
    """
    return ((dtype or act.dtype) in (torch.float32, torch.float64) and not act.requires_grad
            and act.numel() > 0 and kernels.numba_enabled(act, bins))


def per_image_binned_sums(act: torch.Tensor, bins: torch.Tensor, num_bins: int, align_corners: bool = False,
                          counts: torch.Tensor | None = None,
                          nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, Nb]`` sums of ``A`` and of ``|A|``, one image's weight map at a time.

    The numbers of :func:`depthsel.alignment.binned_sums` (to float rounding: the same weight maps, a
    product per image instead of a batched one) without the batch of weight maps:
    each image's table is built in one reused buffer that stays in cache while the
    product reads it, and it holds only the bins present in the image (a depth map
    usually covers a part of the range: about half of 64 SID bins), so the product
    does that much less work; absent bins sum to 0, as an empty sum does. ``|A|`` is
    multiplied only for images with a negative activation; elsewhere the signed sums
    serve both (after a ReLU, ``|A| = A``). ``counts``: the ``[B, Nb]`` bin counts if
    the caller has them (a pixel whose bin they call empty is an error, never a write).
    ``nonnegative``: the caller knows no activation is negative (a layer that ends in a
    ReLU, :func:`depthsel.capture.ends_nonnegative`), so the images are not read again to
    look for one.
    NaN activations: the bins present in the image with the NaN become NaN (the batch
    product spreads a NaN to every bin of the batch, since 0 x NaN is NaN). CPU with the numba loops only
    (:func:`per_image_sums_available`); inputs are checked by the caller.
    """
    bsz, k, h, w = act.shape
    height, width = bins.shape[-2:]
    taps = _tap_table(int(height), int(width), h, w, bool(align_corners), act.dtype)
    flat = bins.reshape(bsz, height * width).long().contiguous()
    counts = bin_counts(bins, num_bins) if counts is None else counts
    if tuple(counts.shape) != (bsz, num_bins):
        raise ShapeMismatchError(f"counts have shape {tuple(counts.shape)}, expected {(bsz, num_bins)}")
    present = counts > 0
    # Per image, bin -> its place among the image's present bins.
    column = torch.where(present, torch.cumsum(present, 1).sub_(1), -1).contiguous()  # -1: absent
    present_count = present.sum(1)
    present_bins = present_count.tolist()
    most = max(1, max(present_bins))
    buffer = torch.empty(h * w * most, dtype=act.dtype)  # one image's W^T [h*w, m], reused
    table = buffer.numpy()
    # Every image's [K, m] product packed at the start of its row, and one zero slot at the
    # end (index k * most) that the absent bins read as their empty sum.
    prods = torch.zeros(bsz, k * most + 1, dtype=act.dtype)
    scatter = kernels.ImageTapScatter(flat, taps, column, num_bins, w)
    a = act.reshape(bsz, k, h * w)
    abs_prods: dict[int, torch.Tensor] = {}
    for b, m in enumerate(present_bins):
        if not m:
            continue  # no valid pixel: every sum is the empty sum
        scatter(b, table[:h * w * m].reshape(1, -1), m)
        weights_t = buffer[:h * w * m].view(h * w, m)  # contiguous
        torch.mm(a[b], weights_t, out=prods[b, :k * m].view(k, m))
        # After the product, which has just read this image's activations into cache.
        # "not >= 0", not "< 0": a NaN makes amin NaN, and then |A| must be taken unit by unit.
        if not nonnegative and not bool(a[b].amin() >= 0):
            abs_prods[b] = torch.mm(a[b].abs(), weights_t)
    # One gather per batch puts every image's columns in their bins (an index_copy_ per
    # image cost more than a small image's product).
    where = torch.arange(k).view(1, k, 1) * present_count.view(bsz, 1, 1) + column.view(bsz, 1, num_bins)
    where = torch.where(present.view(bsz, 1, num_bins), where, k * most).view(bsz, k * num_bins)
    sums = prods.gather(1, where).view(bsz, k, num_bins)
    if not abs_prods:
        return sums, sums  # after a ReLU |A| = A: the signed sums serve both
    for b, out in abs_prods.items():
        prods[b, :out.numel()] = out.view(-1)
    return sums, prods.gather(1, where).view(bsz, k, num_bins)
