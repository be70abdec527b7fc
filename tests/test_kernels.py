"""The numba loops (depthsel.kernels) against the torch operations they replace.

Binning and counting must be identical; the weight maps and per-bin sums identical at
power-of-two scale factors (every tap weight a short dyadic fraction) and equal to float
rounding elsewhere. Also: the backend switch, and bad bins never written.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthsel import kernels
from depthsel.accumulator import ResponseAccumulator
from depthsel.alignment import bin_counts, bin_weight_maps, binned_sums
from depthsel.per_image import per_image_binned_sums
from depthsel.binning import EdgesBinner
from depthsel.errors import ConfigError, ShapeMismatchError

if os.environ.get("CI") != "true":
    pytest.importorskip("numba")


def on(backend: str, fn, *args, **kw):
    """Call ``fn`` with ``DEPTHSEL_KERNELS=backend`` (restored afterwards)."""
    with kernels.use(backend):
        return fn(*args, **kw)


def both(fn, *args, **kw):
    return on("torch", fn, *args, **kw), on("numba", fn, *args, **kw)


@given(edges=st.lists(st.floats(0.009999999776482582, 50.0, width=32), min_size=2, max_size=70, unique=True),
       seed=st.integers(0, 2**16), above=st.sampled_from([-1, 0]))
def test_binning_is_identical_near_every_edge(edges: list[float], seed: int, above: int) -> None:
    e = torch.tensor(sorted(edges), dtype=torch.float64)
    binner = EdgesBinner(e)
    binner.above_range_bin = above
    g = torch.Generator().manual_seed(seed)
    e32 = e.to(torch.float32)
    near = torch.cat([e32, torch.nextafter(e32, e32 + 1), torch.nextafter(e32, e32 - 1)])
    depth = torch.cat([near, torch.rand(500, generator=g) * 60, torch.zeros(3)]).view(1, 1, -1)
    valid = torch.rand(depth.shape, generator=g) > 0.1
    ref, fast = both(binner, depth, valid)
    assert torch.equal(ref, fast) and fast.dtype == torch.int64


@given(nb=st.integers(1, 40), shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
       seed=st.integers(0, 2**16))
def test_counts_are_identical(nb: int, shape: tuple[int, int, int], seed: int) -> None:
    bins = torch.randint(-1, nb, shape, generator=torch.Generator().manual_seed(seed))
    ref, fast = both(bin_counts, bins, nb)
    assert torch.equal(ref, fast)
    assert int(fast.sum()) == int((bins >= 0).sum())


def test_out_of_range_bins_raise_before_anything_is_written() -> None:
    bins = torch.zeros(1, 4, 4, dtype=torch.int64)
    bins[0, 1, 2] = 5
    with pytest.raises(ShapeMismatchError, match="out of range for 5 bins"):
        on("numba", bin_counts, bins, 5)
    with pytest.raises(ShapeMismatchError, match="out of range for 5 bins"):
        on("numba", bin_weight_maps, bins, 5, (2, 2))


sizes = st.sampled_from([(8, 8, 4, 4), (16, 12, 4, 3), (8, 8, 8, 8), (12, 16, 3, 2),  # power-of-two scales
                         (9, 7, 4, 5), (11, 5, 1, 1), (5, 6, 7, 9), (13, 17, 6, 4)])  # the rest


def integer_scale(h_, w_, h, w, align_corners: bool) -> bool:
    return not align_corners and h_ % h == 0 and w_ % w == 0 and (h_ // h) in (1, 2, 4, 8) and (w_ // w) in (1, 2, 4, 8)


@given(size=sizes, nb=st.integers(1, 9), align_corners=st.booleans(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_weight_maps_match_the_torch_path(size: tuple[int, int, int, int], nb: int, align_corners: bool,
                                          seed: int, dtype: torch.dtype) -> None:
    height, width, h, w = size
    bins = torch.randint(-1, nb, (2, height, width), generator=torch.Generator().manual_seed(seed))
    ref, fast = both(bin_weight_maps, bins, nb, (h, w), align_corners, dtype=dtype)
    assert fast.shape == ref.shape == (2, nb, h, w) and fast.dtype == dtype
    if integer_scale(height, width, h, w, align_corners) or dtype == torch.bfloat16:
        assert torch.equal(ref, fast)  # bfloat16: both sum in float64 and round once
    else:
        torch.testing.assert_close(fast, ref, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=1e-6)
    # Summed over locations, each bin's map is its pixel count (the adjoint of interpolation).
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(fast.double().sum((2, 3)), bin_counts(bins, nb).double(), rtol=tol, atol=tol)


@given(size=sizes, nb=st.integers(1, 9), align_corners=st.booleans(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]), signed=st.sampled_from(["relu", "one", "all"]),
       empty=st.sampled_from([None, 0, 1]))
def test_per_image_sums_match_the_batch_product(size: tuple[int, int, int, int], nb: int, align_corners: bool,
                                                seed: int, dtype: torch.dtype, signed: str, empty: int | None) -> None:
    height, width, h, w = size
    g = torch.Generator().manual_seed(seed)
    bins = torch.randint(-1, nb, (3, height, width), generator=g)
    if empty is not None:  # an image without a valid pixel, before or at the one with a negative value
        bins[empty] = -1
    act = torch.randn(3, 4, h, w, generator=g, dtype=torch.float64).to(dtype)
    if signed != "all":
        act = act.abs()
        if signed == "one":  # only the second image has a negative activation
            act[1, 2, 0, 0] = -1.5
    sums, abs_sums = on("numba", per_image_binned_sums, act, bins, nb, align_corners)
    ref = on("torch", binned_sums, act, bins, nb, align_corners=align_corners)
    ref_abs = on("torch", binned_sums, act, bins, nb, use_abs=True, align_corners=align_corners)
    # The weight maps agree (above); one matrix product per image may round differently
    # from the batched product, so equal to float rounding.
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(sums, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(abs_sums, ref_abs, rtol=tol, atol=tol)
    if signed != "all":  # |A| = A wherever no activation is negative: the same sums
        nonneg = [b for b in range(3) if not (signed == "one" and b == 1)]
        assert torch.equal(abs_sums[nonneg], sums[nonneg])


def test_accumulator_state_is_the_same_with_either_backend() -> None:
    g = torch.Generator().manual_seed(0)
    state = {}
    for backend in ("torch", "numba"):
        acc = ResponseAccumulator(6, compute_dtype=torch.float64)
        for _ in range(3):
            act = torch.relu(torch.randn(4, 5, 14, 14, generator=g))
            act[0, 0, 0, 0] = -0.25  # one negative activation in one image
            bins = torch.randint(-1, 6, (4, 56, 56), generator=g)
            on(backend, acc.update, act, bins)
        state[backend] = acc.state_dict()
        g = torch.Generator().manual_seed(0)
    assert state["torch"].keys() == state["numba"].keys()
    for k, v in state["torch"].items():  # float64 sums: to rounding; counts and images: exact
        torch.testing.assert_close(v, state["numba"][k], rtol=1e-12, atol=1e-12)
        assert v.is_floating_point() and k.endswith("sums") or torch.equal(v, state["numba"][k]), k


def test_backend_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_KERNELS", "torch")
    assert kernels.backend() == "torch" and not kernels.numba_enabled(torch.zeros(1))
    monkeypatch.setenv("DEPTHSEL_KERNELS", "numba")
    assert kernels.backend() == "numba" and kernels.numba_enabled(torch.zeros(1))
    assert not kernels.numba_enabled(torch.zeros(1), torch.empty(1, device="meta"))  # off-CPU: torch
    monkeypatch.setenv("DEPTHSEL_KERNELS", "fastest")
    with pytest.raises(ConfigError, match="DEPTHSEL_KERNELS='fastest'"):
        kernels.backend()
    monkeypatch.setattr(kernels, "_LOADED", {"numba": None})  # as if numba were not installed
    monkeypatch.setenv("DEPTHSEL_KERNELS", "numba")
    with pytest.raises(ConfigError, match="not installed"):
        kernels.backend()
    monkeypatch.setenv("DEPTHSEL_KERNELS", "auto")
    assert kernels.backend() == "torch"


# ---- red-team regressions (round 5): each failed before its fix -------------------------------
def test_counts_that_disagree_with_the_bins_raise_instead_of_writing_out_of_bounds() -> None:
    g = torch.Generator().manual_seed(1)
    bins = torch.randint(0, 4, (2, 16, 16), generator=g)
    act = torch.rand(2, 3, 8, 8, generator=g)
    counts = bin_counts(bins, 4)
    counts[0, int(bins[0, 0, 0])] = 0  # a bin with pixels counted as empty
    with pytest.raises(ShapeMismatchError, match="counts say is empty"):
        on("numba", per_image_binned_sums, act, bins, 4, False, counts)
    with pytest.raises(ShapeMismatchError, match="counts have shape"):
        on("numba", per_image_binned_sums, act, bins, 4, False, counts[:, :3])


def test_a_nan_activation_does_not_turn_the_other_units_abs_sums_into_signed_ones() -> None:
    g = torch.Generator().manual_seed(2)
    bins = torch.randint(0, 3, (1, 8, 8), generator=g)
    act = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    act[0, 0, 1, 1] = float("nan")  # unit 0 has a NaN; unit 1 has negative values but no NaN
    _, abs_sums = on("numba", per_image_binned_sums, act, bins, 3)
    ref_abs = on("torch", binned_sums, act, bins, 3, use_abs=True)
    assert bool((abs_sums[0, 1] >= 0).all())
    torch.testing.assert_close(abs_sums[0, 1], ref_abs[0, 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("new_edges", [[0.0, 1.0, 2.0, 4.0], [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]])
def test_a_refitted_binner_in_a_stream_is_refused_before_the_state_changes(backend: str,
                                                                          new_edges: list[float]) -> None:
    from depthsel.binned import BinnedDepth
    from depthsel.stream import BatchView

    depth = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 4
    act = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    binner = EdgesBinner([0.0, 1.0, 2.0, 3.0, 4.0])
    acc = ResponseAccumulator(4, layer="l", binner=binner)

    def view() -> BatchView:
        return BatchView({"depth": depth}, None, {"l": act}, BinnedDepth(depth), torch.arange(2), 0)

    on(backend, acc.update, view())
    before = {k: v.clone() for k, v in acc.state_dict().items()}
    binner._edges = torch.tensor(new_edges, dtype=torch.float64)  # refitted after construction
    with pytest.raises(ShapeMismatchError):
        on(backend, acc.update, view())
    assert all(torch.equal(v, acc.state_dict()[k]) for k, v in before.items())


def test_a_stream_with_another_alignment_convention_is_refused() -> None:
    from depthsel.binned import BinnedDepth
    from depthsel.stream import BatchView

    depth = torch.rand(2, 1, 8, 8) * 4
    binner = EdgesBinner([0.0, 1.0, 2.0, 3.0, 4.0])
    acc = ResponseAccumulator(4, layer="l", binner=binner, align_corners=False)
    view = BatchView({"depth": depth}, None, {"l": torch.rand(2, 2, 4, 4)}, BinnedDepth(depth, align_corners=True),
                     torch.arange(2), 0)
    with pytest.raises(ConfigError, match="align_corners=True"):
        acc.update(view)


def test_bins_below_minus_one_are_invalid_on_both_backends() -> None:
    bins = torch.randint(0, 4, (2, 8, 8), generator=torch.Generator().manual_seed(4))
    bins[0, 0, 0], bins[1, 3, 5], bins[1, 7, 7] = -2, -5, -100
    ref, fast = both(bin_weight_maps, bins, 4, (4, 4), dtype=torch.float64)
    assert torch.equal(ref, fast)
    torch.testing.assert_close(fast.sum((2, 3)), bin_counts(bins, 4).double())


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_an_empty_batch_gives_empty_maps_and_counts_and_is_skipped(backend: str) -> None:
    bins = torch.zeros(0, 8, 8, dtype=torch.int64)
    assert on(backend, bin_weight_maps, bins, 3, (4, 4)).shape == (0, 3, 4, 4)
    assert on(backend, bin_counts, bins, 3).shape == (0, 3)
    acc = ResponseAccumulator(3)
    on(backend, acc.update, torch.zeros(0, 2, 4, 4), bins)
    assert acc.skipped_batches == 1 and acc.num_images == 0


def test_use_sets_the_backend_for_a_block_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_KERNELS", "numba")
    with kernels.use("torch"):
        assert kernels.backend() == "torch"
    assert os.environ["DEPTHSEL_KERNELS"] == "numba"
    monkeypatch.delenv("DEPTHSEL_KERNELS")
    with pytest.raises(RuntimeError), kernels.use("torch"):
        raise RuntimeError  # restored on error too
    assert "DEPTHSEL_KERNELS" not in os.environ
