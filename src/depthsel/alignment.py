"""Per-bin sums of activations without upsampling them.

The paper aligns a ``[B, K, h, w]`` feature map with an ``[B, H, W]`` bin map
by bilinear upsampling, then sums each unit's upsampled response per bin.
Bilinear interpolation is linear and separable, ``up(A) = Uh A Uw^T``, so

    sum_p up(A)_p [bin_p = d]  =  sum_q A_q (Uh^T M_d Uw)_q

where ``M_d`` is the one-hot mask of bin ``d``. ``W = Uh^T M Uw`` (one
``[h, w]`` weight map per bin and image) is built with one float64 scatter-add
of the four bilinear taps of every depth pixel per image, into a bin-last table,
and the per-bin sums become one batched matrix product
``A [B,K,hw] @ W^T [B,hw,Nb]``. The ``[B, K, H, W]`` upsampled tensor is never
materialised, and nothing of activation size is kept for backward beyond the
activation itself (autograd already holds it).

``method="upsample"`` keeps the plain path (interpolate, then scatter by bin)
for checking.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from . import kernels
from .errors import ActivationShapeError, ConfigError, ShapeMismatchError

__all__ = ["check_inputs", "interp_weights", "bin_weight_maps", "binned_sums", "bin_counts", "METHODS",
           "per_image_sums_available", "per_image_binned_sums"]

METHODS = ("adjoint", "upsample")


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


def bin_counts(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Valid-pixel count per image and bin: ``int64 [B, Nb]`` from ``bins [B, H, W]``."""
    b = bins.shape[0]
    if kernels.numba_enabled(bins):
        return kernels.count_bins(bins, num_bins)
    # One integer histogram over (image, bin + 1): every negative bin is invalid and
    # lands in its image's column 0, which is dropped.
    offsets = (torch.arange(b, device=bins.device) * (num_bins + 1) + 1).unsqueeze(1)
    idx = (bins.reshape(b, -1).long().clamp(min=-1) + offsets).reshape(-1)
    if bins.device.type != "cpu":  # bincount keeps torch's deterministic-algorithms guarantees there
        return torch.bincount(idx, minlength=b * (num_bins + 1)).view(b, num_bins + 1)[:, 1:]
    # On the CPU scatter_add_ of ones, not bincount, which first scans its input for min and max.
    counts = torch.zeros(b * (num_bins + 1), dtype=torch.int64, device=bins.device)
    counts.scatter_add_(0, idx, torch.ones((), dtype=torch.int64, device=bins.device).expand(idx.numel()))
    return counts.view(b, num_bins + 1)[:, 1:]


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


def bin_weight_maps(
    bins: torch.Tensor, num_bins: int, feat_size: tuple[int, int], align_corners: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``W [B, Nb, h, w]``: the adjoint of bilinear upsampling applied to bin masks.

    ``W[b, d, q]`` is the total interpolation weight that feature location ``q``
    contributes to the pixels of bin ``d`` in image ``b``. Summed over ``q`` it
    equals the pixel count of bin ``d``.

    For ``dtype=torch.float64`` the weights are summed in float64 (the exact
    path); any other ``dtype`` except float32 is summed in float64 and rounded
    once. float32 is summed in float32 on the CPU, straight into the output
    (30% faster at FastDepth's sizes; each map entry then carries a few float32
    roundings, the same order as the float32 product that reads it). The
    result is a strided view
    whose bin index is fastest in memory (``W^T [B, h*w, Nb]`` is what the
    product reads); use ``reshape``, not ``view``, to flatten it.
    """
    bsz, height, width = bins.shape
    h, w = feat_size
    if min(height, width, h, w) < 1:
        raise ShapeMismatchError(
            f"cannot align a {h}x{w} feature map with a {height}x{width} depth map: both need at "
            "least one pixel"
        )
    hw, row = h * w, num_bins + 1
    dev = bins.device
    key = (height, width, h, w, num_bins, bool(align_corners), str(dev))
    slots, wt = _tap_slots(*key)
    flat = bins.reshape(bsz, height * width).long()
    out = torch.empty(bsz, hw, row, dtype=dtype, device=dev)
    if kernels.numba_enabled(bins):
        _numba_weight_maps(out.view(bsz, -1), flat.contiguous(), key, dtype)
    elif dev.type == "cpu":
        # One image at a time: its [h*w, Nb+1] float64 table (a few MB) stays in
        # cache while the taps land, and the tap weights need no batch-sized copy.
        # Which images are mostly valid is decided in one pass over the batch.
        dense = ((flat >= 0).sum(1) * 2 >= height * width).tolist()
        if dtype == torch.float32:
            # float32 out: scatter straight into it (half the table, no copy).
            wt32 = _tap_weights32(*key)
            for b in range(bsz):
                _scatter_image(out[b].view(-1), flat[b], slots, wt32, dense[b])
        else:
            table = torch.empty(hw * row, dtype=torch.float64)
            for b in range(bsz):
                _scatter_image(table, flat[b], slots, wt, dense[b])
                out[b].view(-1).copy_(table)
    else:  # index_add_ keeps torch's deterministic-algorithms guarantees off the CPU
        idx = (flat.unsqueeze(1) + slots.unsqueeze(0)
               + (torch.arange(bsz, device=dev) * (hw * row)).view(bsz, 1, 1)).reshape(-1)
        acc = torch.zeros(bsz * hw * row, dtype=torch.float64, device=dev)
        acc.index_add_(0, idx, wt.unsqueeze(0).expand(bsz, -1, -1).reshape(-1))
        out.view(-1).copy_(acc)
    return out[..., 1:].view(bsz, h, w, num_bins).permute(0, 3, 1, 2)


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


def _numba_weight_maps(out: torch.Tensor, flat: torch.Tensor, key: tuple[Any, ...], dtype: torch.dtype) -> None:
    """The compiled scatter (:mod:`depthsel.kernels`) into the same bin-last layout as below."""
    height, width, h, w, num_bins, align_corners, _ = key
    if dtype in (torch.float32, torch.float64):
        taps = _tap_table(height, width, h, w, align_corners, dtype)
        kernels.scatter_taps(flat, taps, out, num_bins, w, num_bins + 1, 1)
        return
    taps = _tap_table(height, width, h, w, align_corners, torch.float64)
    table = torch.empty(1, out.shape[1], dtype=torch.float64)  # summed in float64, rounded once
    for b in range(flat.shape[0]):
        kernels.scatter_taps(flat[b:b + 1], taps, table, num_bins, w, num_bins + 1, 1)
        out[b].copy_(table[0])


@lru_cache(maxsize=16)
def _tap_weights32(
    height: int, width: int, h: int, w: int, num_bins: int, align_corners: bool, device: str
) -> torch.Tensor:
    """float32 copy of :func:`_tap_slots`' tap weights, made once per size (same cache key)."""
    return _tap_slots(height, width, h, w, num_bins, align_corners, device)[1].to(torch.float32)


def _scatter_image(table: torch.Tensor, bins: torch.Tensor, slots: torch.Tensor, wt: torch.Tensor,
                   dense: bool) -> None:
    """Fill one image's ``[h*w * (Nb+1)]`` table: all 4 taps of every pixel in one scatter."""
    table.zero_()
    if dense:
        # Mostly valid (dense ground truth): invalid pixels (bin -1) land in column 0.
        table.scatter_add_(0, (slots + bins).reshape(-1), wt.reshape(-1))
    else:
        # Mostly invalid (sparse ground truth): scatter only the valid pixels.
        p = (bins >= 0).nonzero().squeeze(1)
        table.scatter_add_(0, (slots[:, p] + bins[p]).reshape(-1), wt[:, p].reshape(-1))


def per_image_sums_available(act: torch.Tensor, bins: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether :func:`per_image_binned_sums` serves this batch (CPU, numba loops, no autograd).

    ``dtype``: the dtype the sums will be computed in (default ``act``'s).
    """
    return ((dtype or act.dtype) in (torch.float32, torch.float64) and not act.requires_grad
            and act.numel() > 0 and kernels.numba_enabled(act, bins))


def per_image_binned_sums(act: torch.Tensor, bins: torch.Tensor, num_bins: int, align_corners: bool = False,
                          counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, Nb]`` sums of ``A`` and of ``|A|``, one image's weight map at a time.

    The numbers of :func:`binned_sums` (to float rounding: the same weight maps, a
    product per image instead of a batched one) without the batch of weight maps:
    each image's table is built in one reused buffer that stays in cache while the
    product reads it, and it holds only the bins present in the image (a depth map
    usually covers a part of the range: about half of 64 SID bins), so the product
    does that much less work; absent bins sum to 0, as an empty sum does. ``|A|`` is
    multiplied only for images with a negative activation; elsewhere the signed sums
    serve both (after a ReLU, ``|A| = A``). ``counts``: the ``[B, Nb]`` bin counts if
    the caller has them. CPU with the numba loops only
    (:func:`per_image_sums_available`); inputs are checked by the caller.
    """
    bsz, k, h, w = act.shape
    height, width = bins.shape[-2:]
    taps = _tap_table(int(height), int(width), h, w, bool(align_corners), act.dtype)
    flat = bins.reshape(bsz, height * width).long().contiguous()
    present = (bin_counts(bins, num_bins) if counts is None else counts) > 0
    # Per image, bin -> its place among the image's present bins (absent bins get no pixel).
    column = torch.cumsum(present, 1).sub_(1)
    present_bins = present.sum(1).tolist()
    buffer = torch.empty(h * w * max(1, max(present_bins)), dtype=act.dtype)
    prod = torch.empty(k, max(1, max(present_bins)), dtype=act.dtype)
    a = act.reshape(bsz, k, h * w)
    sums = torch.zeros(bsz, k, num_bins, dtype=act.dtype)
    abs_sums = torch.zeros_like(sums)
    for b, m in enumerate(present_bins):
        if not m:
            continue  # no valid pixel: every sum is the empty sum
        cols = present[b].nonzero().squeeze(1)
        table = buffer[:h * w * m].view(1, -1)
        kernels.scatter_taps(flat[b:b + 1], taps, table, num_bins, w, m, 0, column[b])
        weights_t = table.view(h * w, m)  # W^T [h*w, present bins], contiguous
        out = prod[:, :m] if m == prod.shape[1] else prod.view(-1)[:k * m].view(k, m)
        torch.mm(a[b], weights_t, out=out)
        sums[b].index_copy_(1, cols, out)
        # After the product, which has just read this image's activations into cache.
        if bool(a[b].amin() < 0):
            torch.mm(a[b].abs(), weights_t, out=out)
        abs_sums[b].index_copy_(1, cols, out)
    return sums, abs_sums


class _BinnedSum(torch.autograd.Function):
    """``S = f(A) @ W^T`` with ``f`` identity or ``abs``, saving only ``A`` and ``W``.

    A plain ``torch.bmm(A.abs(), W)`` would keep ``|A|`` (activation-sized) for
    backward; here the gradient ``sign(A) * (dS @ W)`` is rebuilt from ``A``,
    which autograd holds anyway for the layers around it.
    """

    @staticmethod
    def forward(ctx, act: torch.Tensor, weights: torch.Tensor, use_abs: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.use_abs = use_abs
        ctx.save_for_backward(act, weights)
        a = act.abs() if use_abs else act
        return torch.bmm(a, weights.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        act, weights = ctx.saved_tensors
        grad_act = None
        if ctx.needs_input_grad[0]:
            grad_act = torch.bmm(grad, weights)
            if ctx.use_abs:
                grad_act.mul_(act.sign())  # in place: one activation-sized buffer fewer
        return grad_act, None, None


def check_inputs(act: torch.Tensor, bins: torch.Tensor, num_bins: int, check_range: bool = True) -> None:
    """Raise a :class:`~depthsel.DepthselError` unless activations and bins fit together.

    ``check_range=False`` skips the pass that finds the largest bin, for a caller whose
    every reader of the bins checks the range itself (the numba loops do).
    """
    if not isinstance(act, torch.Tensor):
        raise ActivationShapeError(f"activations must be a torch.Tensor [B, K, h, w], got {type(act).__name__}")
    if not isinstance(bins, torch.Tensor):
        raise ShapeMismatchError(f"bins must be an integer torch.Tensor [B, H, W], got {type(bins).__name__}")
    if act.ndim != 4:
        raise ActivationShapeError(
            f"activations must be [B, K, h, w], got shape {tuple(act.shape)}; register an "
            "adapter (e.g. depthsel.TokenGridAdapter) for layers that output tokens"
        )
    if bins.ndim != 3:
        raise ShapeMismatchError(f"bins must be [B, H, W], got shape {tuple(bins.shape)}")
    if act.shape[0] != bins.shape[0]:
        raise ShapeMismatchError(
            f"activation batch size {act.shape[0]} differs from depth batch size {bins.shape[0]}; "
            "pass the depth of the same batch the model just ran on"
        )
    if bins.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ShapeMismatchError(f"bins must be an integer tensor, got {bins.dtype}")
    if num_bins < 1:
        raise ShapeMismatchError("num_bins must be >= 1")
    if act.shape[-2] < 1 or act.shape[-1] < 1:
        raise ActivationShapeError(
            f"activations have an empty spatial size {tuple(act.shape[-2:])}; hook a layer whose "
            "output has at least one pixel"
        )
    if bins.shape[-2] < 1 or bins.shape[-1] < 1:
        raise ShapeMismatchError(
            f"the depth/bin map has an empty spatial size {tuple(bins.shape[-2:])}; pass depth with "
            "at least one pixel"
        )
    if check_range and bins.numel() and int(bins.max()) >= num_bins:
        # Out-of-range indices would otherwise crash inside index_add_ (a device assert on CUDA).
        raise ShapeMismatchError(
            f"bin index {int(bins.max())} is out of range for {num_bins} bins; "
            "bin the depth with a binner of the same num_bins"
        )


def binned_sums(
    act: torch.Tensor,
    bins: torch.Tensor,
    num_bins: int,
    *,
    use_abs: bool = False,
    align_corners: bool = False,
    method: str = "adjoint",
    weights: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Per-image, per-unit, per-bin sums of the bilinearly aligned activations.

    Parameters
    ----------
    act
        ``[B, K, h, w]`` activations (any float dtype; differentiable).
    bins
        ``int [B, H, W]`` bin indices, ``-1`` invalid.
    num_bins
        Number of bins ``Nb``.
    use_abs
        Sum ``|A|`` (taken at feature resolution, before alignment, as the
        reference code does) instead of ``A``.
    align_corners
        Bilinear convention of the alignment.
    method
        ``"adjoint"`` (default, exact, no upsampled tensor) or ``"upsample"``.
    weights
        Precomputed :func:`bin_weight_maps` for this batch and feature size
        (shared between layers of equal resolution).
    check
        Validate the inputs (default); ``False`` for a caller that has just
        checked them itself (the accumulator checks once for both of its sums).

    Returns
    -------
    torch.Tensor
        ``[B, K, Nb]`` sums in ``act``'s dtype.
    """
    if check:
        check_inputs(act, bins, num_bins)
    bins = bins.long()
    bsz, k, h, w = act.shape
    if method == "adjoint":
        if weights is None:
            weights = bin_weight_maps(bins, num_bins, (h, w), align_corners, dtype=act.dtype)
        elif tuple(weights.shape) != (bsz, num_bins, h, w):
            raise ShapeMismatchError(
                f"weights have shape {tuple(weights.shape)}, expected {(bsz, num_bins, h, w)}; "
                "build them with bin_weight_maps for this batch and feature size"
            )
        wmat = weights.reshape(bsz, num_bins, h * w).to(act.dtype)
        return _BinnedSum.apply(act.reshape(bsz, k, h * w), wmat, use_abs)
    if method == "upsample":
        a = act.abs() if use_abs else act
        height, width = bins.shape[-2:]
        if (h, w) != (height, width):
            a = F.interpolate(a, size=(height, width), mode="bilinear", align_corners=align_corners)
        flat_bins = bins.reshape(bsz, 1, -1)
        valid = flat_bins >= 0
        idx = torch.where(valid, flat_bins, torch.full_like(flat_bins, num_bins))
        a = a.reshape(bsz, k, -1)
        out = torch.zeros(bsz, k, num_bins + 1, dtype=a.dtype, device=a.device)
        out = out.scatter_add(2, idx.expand(bsz, k, -1), a)
        return out[..., :num_bins]
    raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
