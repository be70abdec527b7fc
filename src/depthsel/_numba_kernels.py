"""The compiled loops behind :mod:`depthsel.kernels` (imported only when numba is installed).

Each loop does in one pass over the pixels what the torch path does in several
memory-bound passes (index building, gathers, a scatter). Binning and counting
are exact, so both paths return identical tensors. The weight maps are sums of
tap weights added pixel by pixel instead of tap by tap: at integer scale factors
every weight and partial sum is a short dyadic fraction and the maps are
bit-identical; elsewhere they agree to the rounding of the sum (tested). They read and write NumPy views of
contiguous CPU tensors; bounds are checked by the loops themselves (numba's own
bounds checks are off for speed), and a bad index is reported, never written.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["scatter_taps", "lookup_bins", "count_bins"]


@njit(cache=True, nogil=True, boundscheck=False)
def scatter_taps(bins: np.ndarray, width: int, ya: np.ndarray, yb: np.ndarray, wya: np.ndarray,
                 wyb: np.ndarray, xa: np.ndarray, xb: np.ndarray, wxa: np.ndarray, wxb: np.ndarray,
                 out: np.ndarray, num_bins: int, w: int, row: int, offset: int,
                 tap: np.ndarray) -> int:  # pragma: no cover - compiled
    """Zero ``out [B, L]`` and add the 4 bilinear taps of every valid pixel of every image.

    ``bins int64 [B, H*W]`` (``-1`` invalid). Row ``Y`` of the depth map taps feature rows
    ``ya[Y]``, ``yb[Y]`` with weights ``wya[Y]``, ``wyb[Y]`` (float64), and likewise for
    columns. A tap's weight is the float64 product rounded once to ``out``'s dtype (the
    torch path's tap weights): it is stored in ``tap`` (4 scratch entries of that dtype),
    so the sums are added in ``out``'s own precision. Feature location ``q`` and bin ``d``
    land at ``q * row + offset + d``. Zero weights (a layer at the depth's own resolution)
    are skipped: adding 0 changes nothing. Reads only the bins and four short tables.
    Returns the number of pixels with a bin ``>= num_bins`` (nothing is written for them).
    """
    nimg, npix = bins.shape
    height = npix // width if width else 0
    length = out.shape[1]
    bad = 0
    for b in range(nimg):
        o = out[b]
        for i in range(length):
            o[i] = 0
        img = bins[b]
        for yy in range(height):
            r0 = ya[yy] * w
            r1 = yb[yy] * w
            a0 = wya[yy]
            a1 = wyb[yy]
            start = yy * width
            for xx in range(width):
                d = img[start + xx]
                if d < 0:
                    continue
                if d >= num_bins:
                    bad += 1
                    continue
                c0 = xa[xx]
                c1 = xb[xx]
                b0 = wxa[xx]
                b1 = wxb[xx]
                tap[0] = a0 * b0
                tap[1] = a0 * b1
                tap[2] = a1 * b0
                tap[3] = a1 * b1
                d += offset
                if tap[0] != 0:
                    o[(r0 + c0) * row + d] += tap[0]
                if tap[1] != 0:
                    o[(r0 + c1) * row + d] += tap[1]
                if tap[2] != 0:
                    o[(r1 + c0) * row + d] += tap[2]
                if tap[3] != 0:
                    o[(r1 + c1) * row + d] += tap[3]
    return bad


@njit(cache=True, nogil=True, boundscheck=False)
def lookup_bins(depth: np.ndarray, bits: np.ndarray, shift: int, low: int, high: int, base: np.ndarray,
                split: np.ndarray, lut: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """``out[i] = lut[base[c] + (depth[i] > split[c])]`` with ``c`` the clamped cell of ``bits[i]``.

    The one-pass form of :func:`depthsel.bitbins.lookup_index` followed by the binner's
    index-to-bin table.
    """
    for i in range(depth.shape[0]):
        c = bits[i] >> shift
        if c < low:
            c = low
        elif c > high:
            c = high
        c -= low
        out[i] = lut[base[c] + (1 if depth[i] > split[c] else 0)]


@njit(cache=True, nogil=True, boundscheck=False)
def count_bins(bins: np.ndarray, num_bins: int, out: np.ndarray) -> int:  # pragma: no cover - compiled
    """Add 1 to ``out[b, d]`` for every valid pixel; returns the number of bins ``>= num_bins``."""
    bad = 0
    for b in range(bins.shape[0]):
        for p in range(bins.shape[1]):
            d = bins[b, p]
            if d >= 0:
                if d < num_bins:
                    out[b, d] += 1
                else:
                    bad += 1
    return bad
