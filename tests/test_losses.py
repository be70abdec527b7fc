"""Depth losses: zero at the optimum, positive elsewhere, finite gradients, size handling."""

from __future__ import annotations

import math

import pytest
import torch

from depthsel.errors import ShapeMismatchError
from depthsel.losses import hu_depth_loss, l1_loss, silog_loss, sobel_gradients


def _depth(seed: int = 0, shape: tuple[int, ...] = (2, 1, 16, 20)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 8 + 0.5


def test_hu_loss_zero_at_optimum_positive_elsewhere() -> None:
    gt = _depth()
    assert hu_depth_loss(gt.clone(), gt).item() == pytest.approx(0.0, abs=1e-6)
    pred = (gt + 0.3 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))).requires_grad_()
    loss = hu_depth_loss(pred, gt)
    assert loss.item() > 0
    loss.backward()
    assert pred.grad is not None and bool(torch.isfinite(pred.grad).all())
    assert float(pred.grad.abs().sum()) > 0


def test_hu_loss_reference_offset_and_gradient_at_zero_error() -> None:
    gt = _depth(2)
    raw = hu_depth_loss(gt.clone(), gt, reference_offset=True)
    assert raw.item() == pytest.approx(3 * math.log(0.5), abs=1e-5)  # Hu's released value
    pred = gt.clone().requires_grad_()
    hu_depth_loss(pred, gt).backward()
    assert bool(torch.isfinite(pred.grad).all())


def test_hu_loss_valid_mask_and_upsampling() -> None:
    gt = _depth(3)
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[..., :4, :] = False
    pred = gt.clone()
    pred[..., :4, :] = 100.0  # wrong only where invalid
    assert hu_depth_loss(pred, gt, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert hu_depth_loss(pred, gt).item() > 0
    small = torch.full((2, 1, 8, 10), 2.0)
    assert hu_depth_loss(small, torch.full((2, 1, 16, 20), 2.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_sobel_matches_hu_kernel_on_a_ramp() -> None:
    ramp = torch.arange(6.0).repeat(5, 1)[None, None]  # depth grows by 1 per column
    dx, dy = sobel_gradients(ramp)
    assert torch.allclose(dx[..., 1:-1, 1:-1], torch.full((3, 4), -8.0))  # kernel [1,0,-1]
    assert torch.allclose(dy[..., 1:-1, 1:-1], torch.zeros(3, 4))


def test_l1_and_silog() -> None:
    gt = _depth(4)
    gt[..., 0, 0] = 0.0
    pred = gt + 1.0
    assert l1_loss(pred, gt).item() == pytest.approx(1.0)
    assert l1_loss(gt, gt).item() == 0.0
    # silog: a global scale costs only (1 - variance_focus) of its squared log error.
    scaled = torch.where(gt > 0, gt * 2, gt)
    expected = 10 * math.sqrt((1 - 0.85) * math.log(2) ** 2)
    assert silog_loss(scaled, gt).item() == pytest.approx(expected, rel=1e-4)
    assert silog_loss(scaled, gt, variance_focus=1.0).item() == pytest.approx(0.0, abs=1e-4)
    p = (gt + 0.2).clamp_min(0.1).requires_grad_()
    silog_loss(p, gt).backward()
    assert bool(torch.isfinite(p.grad).all())


def test_batch_mismatch() -> None:
    with pytest.raises(ShapeMismatchError, match="batch"):
        l1_loss(torch.ones(2, 1, 4, 4), torch.ones(3, 1, 4, 4))
