"""Depth regression losses (model-agnostic, differentiable).

All losses take ``pred`` ``[B,1,h,w]`` and ``gt`` ``[B,1,H,W]`` (``[B,H,W]``
is accepted too). A prediction of another size is upsampled bilinearly
(``align_corners=False``) to the ground-truth size, so a network predicting
at half resolution is compared with full-resolution depth. ``valid`` (bool,
shaped like ``gt``) selects the pixels that count; ``None`` means ``gt > 0``
for :func:`l1_loss`/:func:`silog_loss` and *every* pixel for
:func:`hu_depth_loss` (whose target is often a dense prediction of a frozen
network, as in the relevant-pixel-mask analysis).

Formulas (``e = pred - gt`` over valid pixels, ``mean`` over those pixels):

* ``l1_loss = mean |e|``
* ``silog_loss = scale * sqrt(mean(d^2) - variance_focus * mean(d)^2)`` with
  ``d = ln pred - ln gt`` (BTS; ``scale = 10``, ``variance_focus = 0.85``)
* ``hu_depth_loss = l_depth + l_dx + l_dy + l_normal`` (Hu et al., 2019):

  - ``l_depth = mean ln(|e| + 0.5)``
  - ``l_dx``, ``l_dy``: the same on the Sobel gradients of pred and gt
  - ``l_normal = mean (1 - cos(n_pred, n_gt))`` with ``n = (-dx, -dy, 1)``

  Hu's released code uses ``ln(|e| + 0.5)``, which is ``ln 0.5 < 0`` at zero
  error. By default each log term is shifted by ``-ln 0.5`` (i.e.
  ``ln(1 + 2|e|)``), so the loss is 0 exactly when ``pred == gt``; the
  gradients are identical. ``reference_offset=True`` returns Hu's raw value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InvalidDepthError, ShapeMismatchError

__all__ = ["l1_loss", "silog_loss", "hu_depth_loss", "sobel_gradients"]

_LN_HALF = math.log(0.5)


def _prepare(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    def b1hw(t: torch.Tensor, what: str) -> torch.Tensor:
        if t.ndim == 3:
            return t[:, None]
        if t.ndim == 4 and t.shape[1] == 1:
            return t
        raise InvalidDepthError(f"{what} must be [B,1,H,W] or [B,H,W], got {tuple(t.shape)}")

    pred, gt = b1hw(pred, "pred"), b1hw(gt, "gt")
    if pred.shape[0] != gt.shape[0]:
        raise ShapeMismatchError(f"pred batch {pred.shape[0]} != gt batch {gt.shape[0]}; pass matching batches")
    if pred.shape[-2:] != gt.shape[-2:]:
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    gt = gt.to(pred.dtype)
    if valid is not None:
        valid = b1hw(valid, "valid").bool()
        if valid.shape != gt.shape:
            raise ShapeMismatchError(f"valid {tuple(valid.shape)} must be shaped like gt {tuple(gt.shape)}")
    return pred, gt, valid


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    # Sum over an empty mask is 0; dividing by max(n, 1) keeps the graph finite.
    return (x * mask).sum() / mask.sum().clamp_min(1)


def l1_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over valid pixels (``valid=None``: ``gt > 0``)."""
    pred, gt, valid = _prepare(pred, gt, valid)
    mask = (gt > 0) if valid is None else valid
    return _masked_mean((pred - gt).abs(), mask)


def silog_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor | None = None,
    variance_focus: float = 0.85,
    scale: float = 10.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Scale-invariant log loss of BTS: ``scale * sqrt(mean d^2 - vf * (mean d)^2)``.

    ``pred`` is clamped to ``eps`` before the log (a prediction of 0 would
    give an infinite gradient); ``valid=None`` means ``gt > 0``.
    """
    if not 0.0 <= variance_focus <= 1.0:
        raise InvalidDepthError(f"variance_focus must be in [0, 1], got {variance_focus}")
    pred, gt, valid = _prepare(pred, gt, valid)
    mask = (gt > 0) if valid is None else valid & (gt > 0)
    d = torch.log(pred.clamp_min(eps)) - torch.log(gt.clamp_min(eps))
    d = torch.where(mask, d, torch.zeros_like(d))
    n = mask.sum().clamp_min(1)
    mean_d2 = (d**2).sum() / n
    mean_d = d.sum() / n
    # clamp: rounding can make the variance a hair negative when d is constant.
    return scale * torch.sqrt((mean_d2 - variance_focus * mean_d**2).clamp_min(1e-12))


def sobel_gradients(depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel ``(dx, dy)`` of ``[B,1,H,W]`` depth with zero padding (Hu's ``Sobel`` module)."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    ky = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    weight = torch.stack([kx, ky])[:, None].to(depth)
    grad = F.conv2d(depth, weight, padding=1)
    return grad[:, :1], grad[:, 1:]


def hu_depth_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    reference_offset: bool = False,
) -> torch.Tensor:
    """Hu et al.'s depth + gradient + normal loss (see the module docstring).

    Parameters
    ----------
    pred, gt
        ``[B,1,h,w]`` and ``[B,1,H,W]`` depth; ``pred`` is upsampled if smaller.
    valid
        Pixels that count; ``None`` = all (Hu's training used dense depth).
        Gradient and normal terms use only pixels whose whole 3x3 Sobel
        neighbourhood is valid, so a hole's border does not count as an edge.
    reference_offset
        Return Hu's raw value (each log term not shifted by ``-ln 0.5``).

    Returns
    -------
    torch.Tensor
        Scalar; 0 when ``pred == gt`` (default), with finite gradients.
    """
    pred, gt, valid = _prepare(pred, gt, valid)
    if valid is not None:
        pred = torch.where(valid, pred, gt)  # keeps invalid pixels out of the Sobel stencils
        # Erosion: max-pool pads with -inf, so out-of-frame pixels do not erode the border.
        grad_mask = ~(F.max_pool2d((~valid).float(), 3, stride=1, padding=1) > 0)
    else:
        grad_mask = None
    offset = 0.0 if reference_offset else _LN_HALF

    def log_term(e: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return _masked_mean(torch.log(e.abs() + 0.5) - offset, mask)

    pdx, pdy = sobel_gradients(pred)
    gdx, gdy = sobel_gradients(gt)
    ones = torch.ones_like(pdx)
    n_pred = torch.cat([-pdx, -pdy, ones], dim=1)
    n_gt = torch.cat([-gdx, -gdy, ones], dim=1)
    # |n| >= 1 because of the constant 1 component, so the cosine never divides by 0.
    cos = (n_pred * n_gt).sum(1, keepdim=True) / (n_pred.norm(dim=1, keepdim=True) * n_gt.norm(dim=1, keepdim=True))
    return (
        log_term(pred - gt, valid)
        + log_term(pdx - gdx, grad_mask)
        + log_term(pdy - gdy, grad_mask)
        + _masked_mean((1.0 - cos).abs(), grad_mask)
    )
