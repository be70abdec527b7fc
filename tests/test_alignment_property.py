"""Property tests: the exact adjoint alignment equals upsample-then-mask.

For random feature sizes and depth sizes (upsampling and downsampling, integer
and non-integer factors, including size 1), both ``align_corners``
conventions, bin maps with invalid pixels, and ``use_abs`` on and off:

* ``binned_sums(method="adjoint")`` equals ``binned_sums(method="upsample")``;
* their vector-Jacobian products for a random cotangent agree;
* ``bin_weight_maps`` sums to the per-bin pixel counts;
* ``interp_weights`` reproduces ``F.interpolate`` (float64, to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest
from depthsel.alignment import bin_counts, bin_weight_maps, binned_sums, interp_weights

# Every test here runs with the torch operations and with the numba loops (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_backend")

SIDE = st.integers(1, 29)


@st.composite
def problems(draw: st.DrawFn) -> dict:
    b = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    h, w = draw(SIDE), draw(SIDE)
    # Depth sides from smaller to larger than the features: down- and upsampling.
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    nb = draw(st.integers(1, 7))
    invalid = draw(st.sampled_from([0.0, 0.1, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    act = torch.randn(b, k, h, w, generator=g, dtype=torch.float64)
    bins = torch.randint(0, nb, (b, height, width), generator=g)
    bins[torch.rand(b, height, width, generator=g) < invalid] = -1
    cot = torch.randn(b, k, nb, generator=g, dtype=torch.float64)
    return {"act": act, "bins": bins, "nb": nb, "cot": cot}


@settings(max_examples=120, deadline=None)
@given(p=problems(), align_corners=st.booleans(), use_abs=st.booleans())
def test_adjoint_equals_upsample_values_and_gradients(p: dict, align_corners: bool, use_abs: bool) -> None:
    act_a = p["act"].clone().requires_grad_()
    act_u = p["act"].clone().requires_grad_()
    kw = {"use_abs": use_abs, "align_corners": align_corners}
    s_a = binned_sums(act_a, p["bins"], p["nb"], method="adjoint", **kw)
    s_u = binned_sums(act_u, p["bins"], p["nb"], method="upsample", **kw)
    assert s_a.shape == s_u.shape == (act_a.shape[0], act_a.shape[1], p["nb"])
    torch.testing.assert_close(s_a, s_u, rtol=1e-10, atol=1e-10)
    (g_a,) = torch.autograd.grad(s_a, act_a, p["cot"])
    (g_u,) = torch.autograd.grad(s_u, act_u, p["cot"])
    torch.testing.assert_close(g_a, g_u, rtol=1e-10, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(p=problems(), align_corners=st.booleans())
def test_float32_adjoint_matches_float64_upsample(p: dict, align_corners: bool) -> None:
    s32 = binned_sums(p["act"].float(), p["bins"], p["nb"], align_corners=align_corners)
    s64 = binned_sums(p["act"], p["bins"], p["nb"], align_corners=align_corners, method="upsample")
    assert s32.dtype == torch.float32
    # float32 rounding grows with the magnitude of the sums (many pixels can share one
    # feature location), not with the activations alone.
    scale = 1.0 + float(p["act"].abs().sum()) + float(s64.abs().max())
    assert float((s32.double() - s64).abs().max()) <= 1e-5 * scale


@settings(max_examples=60, deadline=None)
@given(p=problems(), align_corners=st.booleans())
def test_weight_maps_sum_to_pixel_counts(p: dict, align_corners: bool) -> None:
    bins = p["bins"]
    h, w = p["act"].shape[-2:]
    wm = bin_weight_maps(bins, p["nb"], (h, w), align_corners, dtype=torch.float64)
    assert wm.shape == (bins.shape[0], p["nb"], h, w)
    assert bool((wm >= 0).all())
    torch.testing.assert_close(wm.sum((2, 3)), bin_counts(bins, p["nb"]).double(), rtol=0, atol=1e-9)


@settings(max_examples=120, deadline=None)
@given(h=SIDE, w=SIDE, height=st.integers(1, 64), width=st.integers(1, 64),
       align_corners=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_interp_weights_reproduce_f_interpolate(h: int, w: int, height: int, width: int,
                                               align_corners: bool, seed: int) -> None:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=align_corners)
    uh = interp_weights(height, h, align_corners)
    uw = interp_weights(width, w, align_corners)
    assert uh.shape == (height, h) and uw.shape == (width, w) and uh.dtype == torch.float64
    torch.testing.assert_close(uh @ x @ uw.T, ref, rtol=1e-12, atol=1e-12)
    # rows are convex combinations
    torch.testing.assert_close(uh.sum(1), torch.ones(height, dtype=torch.float64))
