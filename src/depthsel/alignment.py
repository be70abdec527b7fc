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

from typing import Any

import torch
import torch.nn.functional as F

from . import kernels
from .errors import ActivationShapeError, ConfigError, ShapeMismatchError
from .taps import _interp_taps, _tap_slots, _tap_table, _tap_weights32, interp_weights

__all__ = ["check_inputs", "interp_weights", "bin_weight_maps", "binned_sums", "bin_counts", "METHODS"]

METHODS = ("adjoint", "upsample")


def bin_counts(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Valid-pixel count per image and bin: ``int64 [B, Nb]`` from ``bins [B, H, W]``."""
    b = bins.shape[0]
    if b == 0:
        return torch.zeros(0, num_bins, dtype=torch.int64, device=bins.device)
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
    dev = bins.device
    if bsz == 0:
        return torch.zeros(0, num_bins, h, w, dtype=dtype, device=dev)
    key = (height, width, h, w, num_bins, bool(align_corners), str(dev))
    flat = bins.reshape(bsz, height * width).long()
    out = torch.empty(bsz, h * w, num_bins + 1, dtype=dtype, device=dev)
    fill = _numba_weight_maps if kernels.numba_enabled(bins) else _torch_weight_maps
    fill(out, flat, key, dtype)
    return out[..., 1:].view(bsz, h, w, num_bins).permute(0, 3, 1, 2)


def _numba_weight_maps(out: torch.Tensor, flat: torch.Tensor, key: tuple[Any, ...], dtype: torch.dtype) -> None:
    """Fill ``out [B, h*w, Nb+1]`` with the compiled loop (:mod:`depthsel.kernels`)."""
    height, width, h, w, num_bins, align_corners, _ = key
    out, flat = out.view(out.shape[0], -1), flat.contiguous()
    if dtype in (torch.float32, torch.float64):
        taps = _tap_table(height, width, h, w, align_corners, dtype)
        kernels.scatter_taps(flat, taps, out, num_bins, w, num_bins + 1, 1)
        return
    taps = _tap_table(height, width, h, w, align_corners, torch.float64)
    table = torch.empty(1, out.shape[1], dtype=torch.float64)  # summed in float64, rounded once
    for b in range(flat.shape[0]):
        kernels.scatter_taps(flat[b:b + 1], taps, table, num_bins, w, num_bins + 1, 1)
        out[b].copy_(table[0])


def _torch_weight_maps(out: torch.Tensor, flat: torch.Tensor, key: tuple[Any, ...], dtype: torch.dtype) -> None:
    """Fill ``out [B, h*w, Nb+1]`` with torch scatters (column 0 collects invalid pixels)."""
    bsz, height_width = flat.shape
    hw, row = out.shape[1], out.shape[2]
    dev = out.device
    slots, wt = _tap_slots(*key)
    # Every negative bin is invalid (as bin_counts and the numba loops read it): -1 for all.
    flat = flat.clamp(min=-1)
    if dev.type == "cpu":
        # One image at a time: its [h*w, Nb+1] float64 table (a few MB) stays in
        # cache while the taps land, and the tap weights need no batch-sized copy.
        # Which images are mostly valid is decided in one pass over the batch.
        dense = ((flat >= 0).sum(1) * 2 >= height_width).tolist()
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
