"""BinnedDepth bins once per binner and matches the direct computation."""

import warnings

import torch
from hypothesis import assume, given, settings, strategies as st

from depthsel.alignment import bin_weight_maps
from depthsel.binned import BinnedDepth
import pytest
from depthsel.binning import EdgesBinner, InvalidDepthWarning

# Every test here runs with the torch operations and with the numba loops (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_backend")


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


class _AboveRangeInBinZero(EdgesBinner):
    above_range_bin = 0  # as the reference code: depth beyond the last edge lands in bin 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.booleans(), st.booleans(), st.sampled_from(["none", "mask", "nan"]),
       st.integers(0, 2**16))
def test_counts_from_the_binning_pass_equal_counting_the_bins(bsz: int, nb: int, above_zero: bool, f64: bool,
                                                              invalid: str, seed: int) -> None:
    # Binned once through the shared, masked depth: the binner's own bins and counts on every path.
    from depthsel.alignment import bin_counts

    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(bsz, 1, 11, 13, generator=g) * 5.0  # beyond the last edge (4 m) too
    valid = torch.rand(bsz, 1, 11, 13, generator=g) > 0.3 if invalid == "mask" else None
    if invalid == "nan":
        depth[0, 0, :3] = float("nan")
    depth = depth.double() if f64 else depth
    b = (_AboveRangeInBinZero if above_zero else EdgesBinner)(torch.linspace(0.0, 4.0, nb + 1).tolist())
    binned = BinnedDepth(depth, valid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InvalidDepthWarning)  # NaN depth warns once per process
        bins = binned.bins(b)
        assert torch.equal(bins, b(depth, valid))
    assert torch.equal(binned.counts(b), bin_counts(bins, nb))


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


def _reference_bins(binner: EdgesBinner, depth: torch.Tensor) -> torch.Tensor:
    """The plain rule in float64: bin i holds edges[i] < d <= edges[i+1]; others (and d <= 0) are -1."""
    d = depth.reshape(depth.shape[0], *depth.shape[-2:]).to(torch.float64)
    e = binner.edges
    out = torch.full(d.shape, -1, dtype=torch.long)
    for i in range(binner.num_bins):
        out[(d > e[i]) & (d <= e[i + 1]) & (d > 0)] = i
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.05, 9.0, allow_nan=False), min_size=2, max_size=9, unique=True), st.booleans())
def test_binner_equals_the_plain_rule_at_every_float32_neighbour_of_its_edges(edges: list[float], f32: bool) -> None:
    b = EdgesBinner([0.0, *sorted(edges)])
    e = b.edges.to(torch.float32)
    near = torch.cat([torch.nextafter(e, torch.full_like(e, -1.0)), e, torch.nextafter(e, torch.full_like(e, 99.0)),
                      torch.tensor([0.0, 9.5, 1e-7])]).clamp(min=0)
    depth = near.reshape(1, 1, 1, -1)
    depth = depth if f32 else depth.to(torch.float64)
    assert torch.equal(b(depth), _reference_bins(b, depth))


@settings(max_examples=40, deadline=None)
@given(st.floats(0.0, 50.0), st.lists(st.floats(1e-7, 0.5), min_size=1, max_size=40), st.integers(0, 2**31 - 1))
def test_bit_table_lookup_equals_bucketize_near_every_edge_and_on_random_depth(
        first: float, gaps: list[float], seed: int) -> None:
    """The float32 bit-pattern lookup is bucketize exactly, including edges closer than a table cell."""
    from depthsel.bitbins import build_bit_table, edges_rounded_down, lookup_index

    e64 = torch.tensor([first], dtype=torch.float64)
    e64 = torch.cat([e64, first + torch.tensor(gaps, dtype=torch.float64).mul(first + 1.0).cumsum(0)])
    e32 = edges_rounded_down(e64)
    assume(bool((e32[1:] > e32[:-1]).all()))
    table = build_bit_table(e32)
    assume(table is not None)
    g = torch.Generator().manual_seed(seed)
    probes = [e32, torch.nextafter(e32, torch.full_like(e32, -1.0)), torch.nextafter(e32, torch.full_like(e32, 1e9)),
              torch.rand(2000, generator=g) * float(e32[-1]) * 1.2, torch.tensor([0.0, -0.0, 1e-40])]
    d = torch.cat(probes).to(torch.float32).clamp(min=0)
    d = torch.cat([d, torch.tensor([-0.0])])
    assert torch.equal(lookup_index(d, table), torch.bucketize(d, e32, right=False))


def test_bit_table_gives_up_on_ranges_too_wide_for_it_and_the_binner_still_bins_exactly() -> None:
    from depthsel.bitbins import build_bit_table, edges_rounded_down

    # Two edges one float apart force cells of one float: 2**29 cells over [0, 2] is too many.
    one = torch.tensor(1.0)
    e = torch.tensor([0.0, 1.0, float(torch.nextafter(one, torch.tensor(2.0))), 2.0], dtype=torch.float64)
    assert build_bit_table(edges_rounded_down(e)) is None
    b = EdgesBinner(e.tolist())
    depth = torch.tensor([0.0, 0.5, 1.0, float(e[2]), 1.5, 2.0, 3.0]).reshape(1, 1, -1)
    assert b(depth).tolist() == [[[-1, 0, 0, 1, 2, 2, -1]]]
    assert torch.equal(b(depth), _reference_bins(b, depth))


def test_counts_are_computed_once_per_binner_and_equal_bin_counts() -> None:
    from depthsel.alignment import bin_counts

    b = EdgesBinner([0.0, 1.0, 2.0, 4.0])
    binned = BinnedDepth(torch.rand(3, 1, 6, 5) * 5)
    c = binned.counts(b)
    assert c is binned.counts(b)
    assert torch.equal(c, bin_counts(binned.bins(b), b.num_bins))
    assert int(c.sum()) == int((binned.bins(b) >= 0).sum())


def test_bit_table_refuses_edges_whose_bit_patterns_are_not_monotone() -> None:
    from depthsel.bitbins import build_bit_table

    for edges in ([-1.0, 0.5, 2.0], [-0.0, 1.0], [0.0, float("inf")], [0.0, float("nan")]):
        assert build_bit_table(torch.tensor(edges)) is None, edges
    assert build_bit_table(torch.tensor([0.0, 1.0, 2.0])) is not None


def test_bit_table_agrees_with_bucketize_on_denormal_depth_in_flush_to_zero_mode() -> None:
    """Denormal depth is decided by an FPU comparison, so both flush modes match bucketize."""
    from depthsel.bitbins import edges_rounded_down

    b = EdgesBinner([0.0, 0.5, 1.0, 2.0])
    b(torch.rand(1, 2, 2))  # the table is built with flush-to-zero off
    d = torch.tensor([1e-40, 1e-45, 0.0, 1.0, 3e-39, 0.7]).reshape(1, 1, -1)
    for flush in (False, True):
        if not torch.set_flush_denormal(flush):
            continue  # this CPU cannot flush: nothing to compare
        try:
            want = torch.bucketize(d, edges_rounded_down(b.edges), right=False) - 1
            want[want == b.num_bins] = -1
            assert torch.equal(b(d), want), flush
        finally:
            torch.set_flush_denormal(False)


def test_binner_with_a_zero_first_edge_keeps_a_small_table_and_drops_it_when_pickled() -> None:
    import pickle

    b = EdgesBinner(torch.linspace(0.0, 10.0, 65).tolist())
    b(torch.rand(1, 4, 4) * 10)
    table = b._bit_table(torch.device("cpu"))
    assert table is not None and table.base.numel() < 100_000  # not the ~500k cells from 0 upwards
    assert len(pickle.dumps(b)) < 10_000
