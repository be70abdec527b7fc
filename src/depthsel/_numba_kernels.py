"""The compiled loops behind :mod:`depthsel.kernels` (imported only when numba is installed).

Each loop does in one pass over the pixels what the torch path does in several
memory-bound passes (index building, gathers, a scatter). Binning and counting
are exact, so both paths return identical tensors. The weight maps are sums of
tap weights added pixel by pixel instead of tap by tap: at power-of-two scale factors
every weight and partial sum is a short dyadic fraction and the maps are
bit-identical; elsewhere they agree to the rounding of the sum (tested). They read and write NumPy views of
contiguous CPU tensors; bounds are checked by the loops themselves (numba's own
bounds checks are off for speed), and a bad index is reported, never written.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

__all__ = ["scatter_taps", "lookup_bins", "count_bins"]


@njit(cache=True, nogil=True, boundscheck=False)
def scatter_taps(bins: np.ndarray, width: int, ya: np.ndarray, yb: np.ndarray, row_kind: np.ndarray,
                 xa: np.ndarray, xb: np.ndarray, weights: np.ndarray, out: np.ndarray, column: np.ndarray,
                 w: int, row: int, offset: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """Zero ``out [B, L]`` and add the 4 bilinear taps of every valid pixel of every image.

    ``bins int64 [B, H*W]`` (``-1`` invalid). Depth row ``Y`` taps feature rows ``ya[Y]``
    and ``yb[Y]``, depth column ``X`` feature columns ``xa[X]`` and ``xb[X]``. The rows come
    in few kinds (one per distinct pair of row weights: the phases of an integer scale
    factor), and ``weights[row_kind[Y], t, X]`` holds the weight of tap ``t`` (``ya``/``xa``,
    ``ya``/``xb``, ``yb``/``xa``, ``yb``/``xb``) in ``out``'s dtype, so a pixel costs four
    loads and four adds. Feature location ``q`` and bin ``d`` land at
    ``q * row + offset + column[d]`` (``column``: the identity, or the image's present bins
    numbered in order; a column outside ``[0, row - offset)`` is never written); ``num_bins``
    is ``len(column)``.
    Zero weights (a layer at the depth's own resolution) are skipped: adding 0 changes
    nothing. Returns the numbers of pixels with a bin ``>= num_bins`` and of pixels whose
    bin has no column (nothing is written for either).
    """
    nimg, npix = bins.shape
    num_bins = column.shape[0]
    columns = row - offset
    height = npix // width if width else 0
    length = out.shape[1]
    stride = uint64(row)
    bad = 0
    mismatched = 0
    for b in range(nimg):
        o = out[b]
        for i in range(length):
            o[i] = 0
        img = bins[b]
        for yy in range(height):
            # Unsigned indices: numba then drops its negative-index wraparound checks.
            r0 = uint64(ya[yy] * w)
            r1 = uint64(yb[yy] * w)
            kind = weights[row_kind[yy]]
            t00 = kind[0]
            t01 = kind[1]
            t10 = kind[2]
            t11 = kind[3]
            start = yy * width
            for xx in range(width):
                d = img[start + xx]
                if d < 0:
                    continue
                if d >= num_bins:
                    bad += 1
                    continue
                col = column[d]
                if col < 0 or col >= columns:
                    mismatched += 1  # a bin its column table has no place for: never written
                    continue
                col = uint64(col + offset)
                c0 = uint64(xa[xx])
                c1 = uint64(xb[xx])
                v = t00[xx]
                if v != 0:
                    o[(r0 + c0) * stride + col] += v
                v = t01[xx]
                if v != 0:
                    o[(r0 + c1) * stride + col] += v
                v = t10[xx]
                if v != 0:
                    o[(r1 + c0) * stride + col] += v
                v = t11[xx]
                if v != 0:
                    o[(r1 + c1) * stride + col] += v
    return bad, mismatched


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
        cell = uint64(c - low)  # unsigned: no wraparound checks
        out[i] = lut[uint64(base[cell] + (1 if depth[i] > split[cell] else 0))]


@njit(cache=True, nogil=True, boundscheck=False)
def count_bins(bins: np.ndarray, num_bins: int, out: np.ndarray) -> int:  # pragma: no cover - compiled
    """Add 1 to ``out[b, d]`` for every valid pixel; returns the number of bins ``>= num_bins``."""
    bad = 0
    # Four interleaved histograms: neighbouring pixels mostly share a bin, and one histogram
    # would chain every increment on the previous one through memory.
    lanes = np.zeros((4, num_bins), np.int64)
    for b in range(bins.shape[0]):
        img = bins[b]
        lanes[:] = 0
        for p in range(img.shape[0]):
            d = img[p]
            if d >= 0:
                if d < num_bins:
                    lanes[p & 3, uint64(d)] += 1
                else:
                    bad += 1
        counts = out[b]
        for d in range(num_bins):
            counts[d] += lanes[0, d] + lanes[1, d] + lanes[2, d] + lanes[3, d]
    return bad
