"""The attack and the error region of adversarial tracing (You et al., ICCV 2021, Sec. 5.3).

FGSM/PGD images that maximise the L1 depth error (:func:`attack_images`), the
pixels the attack turns into errors (:func:`error_pixels`), the thresholded,
upsampled unit maps compared with them (:func:`threshold_maps`) and their IoU
(:func:`mask_iou`). :mod:`.adversarial` runs them over a dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.modelinfo import ModelInfo

__all__ = ["attack_images", "error_pixels", "mask_iou", "predict_depth", "threshold_maps", "to_depth_size"]

_CHUNK = 64  # units upsampled at once: bounds memory for layers with thousands of units


def _b1hw(t: torch.Tensor) -> torch.Tensor:
    """A depth map as ``[B, 1, H, W]`` (a ``[B, H, W]`` one gains the channel axis)."""
    return t[:, None] if t.ndim == 3 else t


def to_depth_size(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``pred`` as ``[B, 1, H, W]`` at the spatial size of ``gt`` (bilinear when it differs)."""
    pred = _b1hw(pred)
    if pred.shape[-2:] != gt.shape[-2:]:
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    return pred


def predict_depth(model: nn.Module, info: ModelInfo, batch: Mapping[str, Any],
                  image: torch.Tensor) -> torch.Tensor:
    """The model's ``[B, 1, h, w]`` depth for ``image`` in place of the batch's (``[0, 1]`` space)."""
    return _b1hw(info.predict(model, {**batch, "image": image}))


def attack_images(
    model: nn.Module, info: ModelInfo, batch: Mapping[str, Any], *, attack: str = "fgsm",
    epsilon: float = 0.05, steps: int = 10, step_size: float | None = None,
    random_start: bool = False, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return adversarial ``[0, 1]`` images that maximise the L1 depth error.

    Parameters
    ----------
    model, info
        The network (in eval mode) and its metadata (normalisation, extra inputs).
    batch
        A collated batch with ``image`` in ``[0, 1]``, ``depth`` and ``valid``.
    attack
        ``"fgsm"``: one signed-gradient step of size ``epsilon``. ``"pgd"``:
        ``steps`` steps of ``step_size`` (default ``2.5 * epsilon / steps``),
        each projected back onto the L-inf ball of radius ``epsilon``.
    random_start
        PGD only: start from a uniform point of the ball (seeded by ``generator``).
    """
    x0 = batch["image"].detach()
    gt, valid = batch["depth"], batch["valid"]
    alpha = epsilon if attack == "fgsm" else (step_size or 2.5 * epsilon / steps)
    n_steps = 1 if attack == "fgsm" else steps
    x = x0.clone()
    if attack == "pgd" and random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x = (x0 + (2 * noise - 1) * epsilon).clamp(0, 1)
    for _ in range(n_steps):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = to_depth_size(predict_depth(model, info, batch, x), gt)
            mask = valid.to(pred.dtype)
            loss = ((pred - gt).abs() * mask).sum() / mask.sum().clamp_min(1)
            (grad,) = torch.autograd.grad(loss, x)
        # Ascend the error, then project onto the epsilon ball and the valid image range.
        # nan_to_num: a NaN gradient must not turn the image into NaN (epsilon=0 stays exact).
        x = x.detach() + alpha * torch.nan_to_num(grad).sign()
        x = torch.min(torch.max(x, x0 - epsilon), x0 + epsilon).clamp(0, 1)
    return x.detach()


def error_pixels(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                 threshold: float = 1.25) -> torch.Tensor:
    """``bool [B,1,H,W]``: valid pixels with ``max(pred/gt, gt/pred) > threshold``.

    ``pred`` is upsampled to the ground-truth size; predictions <= 0 count as errors.
    """
    pred = to_depth_size(pred, gt)
    valid = _b1hw(valid).bool() & (gt > 0)
    p = pred.clamp_min(1e-12)
    g = torch.where(valid, gt, torch.ones_like(gt))
    ratio = torch.maximum(p / g, g / p)
    return valid & ((ratio > threshold) | (pred <= 0))


def threshold_maps(act: torch.Tensor, size: tuple[int, int], valid: torch.Tensor,
                   quantile: float) -> torch.Tensor:
    """Upsample ``[K,h,w]`` maps of one image to ``size`` and keep the top ``1 - quantile``.

    The threshold of unit k is its ``quantile`` over the valid pixels (the
    ``ceil(q n)``-th smallest value); pixels strictly above it are kept, so a
    constant map keeps none. Returns ``bool [K,H,W]`` restricted to ``valid`` ``[H,W]``.
    """
    valid = valid.reshape(-1).bool()
    out = torch.zeros((act.shape[0], size[0] * size[1]), dtype=torch.bool, device=act.device)
    n = int(valid.sum())
    if n == 0:
        return out.view(-1, *size)
    k = min(n, max(1, math.ceil(quantile * n)))
    for s in range(0, act.shape[0], _CHUNK):
        up = F.interpolate(act[None, s:s + _CHUNK].float(), size=size, mode="bilinear",
                           align_corners=False)[0].flatten(1)
        thr = up[:, valid].kthvalue(k, dim=1).values
        out[s:s + _CHUNK] = (up > thr[:, None]) & valid
    return out.view(-1, *size)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks over their last two dims (broadcasting); NaN when both are empty."""
    inter = (a & b).flatten(-2).sum(-1).double()
    union = (a | b).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))
