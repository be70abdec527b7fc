"""ResponseAccumulator: equality with a plain loop, batch-split invariance, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from depthsel import ResponseAccumulator
from depthsel.errors import ActivationShapeError, ResultFormatError, ShapeMismatchError

# Every test here runs with the torch operations and with the numba loops (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_backend")


def plain_loop(acts: torch.Tensor, bins: torch.Tensor, nb: int, align_corners: bool = False):
    """The published algorithm: upsample, then a Python loop over images and bins."""
    acts = acts.to(torch.float64)
    up = F.interpolate(acts, size=bins.shape[-2:], mode="bilinear", align_corners=align_corners)
    k = acts.shape[1]
    sums = torch.zeros(k, nb, dtype=torch.float64)
    abs_sums = torch.zeros(k, nb, dtype=torch.float64)
    counts = torch.zeros(nb, dtype=torch.float64)
    up_abs = F.interpolate(acts.abs(), size=bins.shape[-2:], mode="bilinear", align_corners=align_corners)
    for i in range(acts.shape[0]):
        for d in range(nb):
            m = bins[i] == d
            if m.any():
                sums[:, d] += up[i][:, m].sum(-1)
                abs_sums[:, d] += up_abs[i][:, m].sum(-1)
                counts[d] += m.sum()
    return sums, abs_sums, counts


def random_case(seed: int, b: int, k: int, h: int, w: int, hh: int, ww: int, nb: int, sign: str = "signed"):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(b, k, h, w, generator=g, dtype=torch.float64)
    if sign != "signed":
        # After a ReLU the accumulator computes one product for both sums; a single
        # negative value anywhere must send it back to two.
        acts = acts.relu()
        if sign == "one_negative":
            acts.view(-1)[int(torch.randint(acts.numel(), (1,), generator=g))] = -0.5
    bins = torch.randint(-1, nb, (b, hh, ww), generator=g)
    return acts, bins


@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), k=st.integers(1, 6),
       h=st.integers(1, 9), w=st.integers(1, 9), hh=st.integers(1, 17), ww=st.integers(1, 17),
       nb=st.integers(1, 12), ac=st.booleans(), method=st.sampled_from(["adjoint", "upsample"]),
       sign=st.sampled_from(["signed", "nonnegative", "one_negative"]))
def test_vectorised_equals_plain_loop(seed, b, k, h, w, hh, ww, nb, ac, method, sign) -> None:
    acts, bins = random_case(seed, b, k, h, w, hh, ww, nb, sign)
    acc = ResponseAccumulator(nb, align_corners=ac, method=method)
    acc.update(acts, bins)
    sums, abs_sums, counts = plain_loop(acts, bins, nb, ac)
    if not bool((bins >= 0).any()):
        assert acc.skipped_batches == 1
        return
    torch.testing.assert_close(acc.sums, sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(acc.abs_sums, abs_sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(acc.counts, counts)
    r = acc.responses("abs")
    assert bool(torch.isnan(r[:, counts == 0]).all())
    torch.testing.assert_close(r[:, counts > 0], (abs_sums / counts.clamp(min=1))[:, counts > 0])


@given(seed=st.integers(0, 10_000), n=st.integers(2, 8), cuts=st.lists(st.integers(1, 7), max_size=4),
       perm_seed=st.integers(0, 100))
def test_invariant_to_batch_split_and_order(seed: int, n: int, cuts: list[int], perm_seed: int) -> None:
    acts, bins = random_case(seed, n, 3, 5, 6, 10, 12, 7)
    whole = ResponseAccumulator(7)
    whole.update(acts, bins)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    bounds = sorted({c for c in cuts if c < n} | {0, n})
    parts = ResponseAccumulator(7)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        parts.update(acts[idx], bins[idx])
    torch.testing.assert_close(parts.sums, whole.sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts.abs_sums, whole.abs_sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts.counts, whole.counts)
    # merge() of separately filled halves equals the whole as well.
    a, b2 = ResponseAccumulator(7), ResponseAccumulator(7)
    a.update(acts[: n // 2], bins[: n // 2])
    b2.update(acts[n // 2:], bins[n // 2:])
    torch.testing.assert_close(a.merge(b2).abs_sums, whole.abs_sums, rtol=1e-12, atol=1e-12)


def test_invalid_pixels_never_counted() -> None:
    acts = torch.full((1, 2, 4, 4), 5.0)
    bins = torch.full((1, 4, 4), -1)
    bins[0, 0, 0] = 1
    acc = ResponseAccumulator(3, method="upsample")
    acc.update(acts, bins)
    assert acc.counts.tolist() == [0.0, 1.0, 0.0]
    assert acc.sums[:, 1].tolist() == [5.0, 5.0]
    assert acc.sums[:, [0, 2]].abs().sum() == 0


def test_all_invalid_batch_is_skipped_and_counted() -> None:
    acc = ResponseAccumulator(4, num_units=2)
    acc.update(torch.ones(2, 2, 3, 3), torch.full((2, 6, 6), -1))
    assert acc.skipped_batches == 1 and acc.num_images == 0
    assert bool(torch.isnan(acc.responses()).all())


def test_errors_name_the_fix() -> None:
    acc = ResponseAccumulator(4)
    with pytest.raises(ShapeMismatchError, match="batch size"):
        acc.update(torch.ones(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ActivationShapeError, match="adapter"):
        acc.update(torch.ones(2, 16, 3), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ShapeMismatchError, match="out of range"):
        acc.update(torch.ones(1, 3, 4, 4), torch.full((1, 4, 4), 9))
    acc.update(torch.ones(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ShapeMismatchError, match="units"):
        acc.update(torch.ones(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_state_dict_round_trip_and_validation() -> None:
    acts, bins = random_case(3, 3, 4, 5, 5, 9, 9, 6)
    acc = ResponseAccumulator(6)
    acc.update(acts, bins)
    other = ResponseAccumulator(6)
    other.load_state_dict(acc.state_dict())
    torch.testing.assert_close(other.responses("signed"), acc.responses("signed"), equal_nan=True)
    assert other.num_images == 3
    bad = acc.state_dict()
    bad["sums"] = bad["sums"].float()
    with pytest.raises(ResultFormatError):
        ResponseAccumulator(6).load_state_dict(bad)
    with pytest.raises(ResultFormatError):
        ResponseAccumulator(5).load_state_dict(acc.state_dict())


def test_signed_and_abs_modes_differ_for_signed_activations() -> None:
    acts = torch.tensor([[[[1.0, -1.0]]]])
    bins = torch.zeros(1, 1, 2, dtype=torch.long)
    acc = ResponseAccumulator(1, method="upsample")
    acc.update(acts, bins)
    assert acc.responses("signed").item() == 0.0
    assert acc.responses("abs").item() == 1.0
    assert not bool(acc.dead_units().any())
