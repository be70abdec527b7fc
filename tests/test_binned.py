"""BinnedDepth bins once per binner and matches the direct computation."""

import torch
from hypothesis import given, settings, strategies as st

from depthsel.alignment import bin_weight_maps
from depthsel.binned import BinnedDepth
from depthsel.binning import EdgesBinner


def _binner(n: int) -> EdgesBinner:
    return EdgesBinner(torch.linspace(0.0, 4.0, n + 1).tolist())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.integers(1, 5), st.integers(1, 5), st.booleans())
def test_matches_direct(bsz: int, nb: int, h: int, w: int, corners: bool) -> None:
    g = torch.Generator().manual_seed(bsz * 100 + nb * 10 + h)
    depth = torch.rand(bsz, 1, 9, 7, generator=g) * 4.5
    valid = torch.rand(bsz, 1, 9, 7, generator=g) > 0.2
    b = _binner(nb)
    binned = BinnedDepth(depth, valid, align_corners=corners)
    assert torch.equal(binned.bins(b), b(depth, valid))
    ref = bin_weight_maps(b(depth, valid), nb, (h, w), corners, dtype=torch.float64)
    assert torch.equal(binned.weights(b, (h, w), torch.float64), ref)


def test_bins_and_weights_computed_once() -> None:
    calls = []

    class Counting(EdgesBinner):
        def __call__(self, depth, valid=None):  # type: ignore[no-untyped-def]
            calls.append(1)
            return super().__call__(depth, valid)

    b = Counting([0.0, 1.0, 2.0])
    binned = BinnedDepth(torch.rand(2, 1, 6, 6) * 2)
    w1 = binned.weights(b, (3, 3))
    w2 = binned.weights(b, (3, 3))
    binned.bins(b)
    assert len(calls) == 1 and w1 is w2
    assert binned.weights(b, (2, 2)) is not w1
    other = Counting([0.0, 1.0, 2.0])
    binned.bins(other)
    assert len(calls) == 2
