"""The fast weight-map and count kernels equal plain per-pixel loops.

``bin_weight_maps`` scatters every pixel's four bilinear taps into a bin-last
table, one image at a time, with a separate path for mostly-invalid images;
``bin_counts`` is one offset histogram. Here both are compared with the
definition written as Python loops over images, pixels and taps (float64, to
1e-12), for random sizes, both ``align_corners``, and invalid fractions that
take either path.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest
from depthsel.alignment import bin_counts, bin_weight_maps, binned_sums, interp_weights

# Every test here runs with the torch operations and with the numba loops (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_backend")


def loop_weight_maps(bins: torch.Tensor, nb: int, h: int, w: int, align_corners: bool) -> torch.Tensor:
    """``W[b, d, i, j] = sum over pixels p of bin d of Uh[y_p, i] * Uw[x_p, j]``, pixel by pixel."""
    bsz, height, width = bins.shape
    uh = interp_weights(height, h, align_corners)
    uw = interp_weights(width, w, align_corners)
    out = torch.zeros(bsz, nb, h, w, dtype=torch.float64)
    for b in range(bsz):
        for y in range(height):
            for x in range(width):
                d = int(bins[b, y, x])
                if d < 0:
                    continue
                out[b, d] += torch.outer(uh[y], uw[x])
    return out


def loop_counts(bins: torch.Tensor, nb: int) -> torch.Tensor:
    out = torch.zeros(bins.shape[0], nb, dtype=torch.int64)
    for b in range(bins.shape[0]):
        for d in bins[b].reshape(-1).tolist():
            if d >= 0:
                out[b, d] += 1
    return out


@st.composite
def bin_maps(draw: st.DrawFn) -> dict:
    b = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    nb = draw(st.integers(1, 6))
    # Below and above one half: the mostly-invalid and the mostly-valid paths.
    invalid = draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    bins = torch.randint(0, nb, (b, height, width), generator=g)
    bins[torch.rand(b, height, width, generator=g) < invalid] = draw(st.sampled_from([-1, -3]))
    return {"bins": bins, "nb": nb, "h": h, "w": w}


@settings(max_examples=40, deadline=None)
@given(p=bin_maps(), align_corners=st.booleans())
def test_weight_maps_equal_pixel_loop(p: dict, align_corners: bool) -> None:
    bins, nb, h, w = p["bins"], p["nb"], p["h"], p["w"]
    ref = loop_weight_maps(bins.clamp(min=-1), nb, h, w, align_corners)
    got = bin_weight_maps(bins.clamp(min=-1), nb, (h, w), align_corners, dtype=torch.float64)
    assert got.shape == ref.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # float32 sums in float32: within a few roundings of the float64 maps.
    got32 = bin_weight_maps(bins.clamp(min=-1), nb, (h, w), align_corners, dtype=torch.float32)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-6, atol=1e-6)
    # Any other dtype is the float64 table rounded once.
    got16 = bin_weight_maps(bins.clamp(min=-1), nb, (h, w), align_corners, dtype=torch.bfloat16)
    assert torch.equal(got16, got.to(torch.bfloat16))
    # The bin-last view flattens with reshape into what the product reads.
    flat = got.reshape(bins.shape[0], nb, h * w)
    torch.testing.assert_close(flat, ref.reshape(bins.shape[0], nb, h * w), rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(p=bin_maps())
def test_counts_equal_pixel_loop(p: dict) -> None:
    got = bin_counts(p["bins"], p["nb"])
    assert got.dtype == torch.int64
    assert torch.equal(got, loop_counts(p["bins"], p["nb"]))


@settings(max_examples=30, deadline=None)
@given(p=bin_maps(), align_corners=st.booleans(), use_abs=st.booleans())
def test_binned_sums_with_weight_maps_equal_pixel_loop(p: dict, align_corners: bool, use_abs: bool) -> None:
    """The product with the strided maps equals summing the upsampled map pixel by pixel."""
    bins, nb, h, w = p["bins"].clamp(min=-1), p["nb"], p["h"], p["w"]
    g = torch.Generator().manual_seed(nb * 31 + h)
    act = torch.randn(bins.shape[0], 2, h, w, generator=g, dtype=torch.float64)
    weights = bin_weight_maps(bins, nb, (h, w), align_corners, dtype=torch.float64)
    got = binned_sums(act, bins, nb, use_abs=use_abs, align_corners=align_corners, weights=weights)
    uh = interp_weights(bins.shape[1], h, align_corners)
    uw = interp_weights(bins.shape[2], w, align_corners)
    a = act.abs() if use_abs else act
    up = uh @ a @ uw.T  # [B, K, H, W]
    ref = torch.zeros(bins.shape[0], 2, nb, dtype=torch.float64)
    for b in range(bins.shape[0]):
        for y in range(bins.shape[1]):
            for x in range(bins.shape[2]):
                d = int(bins[b, y, x])
                if d >= 0:
                    ref[b, :, d] += up[b, :, y, x]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
