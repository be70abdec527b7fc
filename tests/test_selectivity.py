"""Depth selectivity: ranges, the random baseline, assignment rules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from depthsel import assign_bins, depth_selectivity, matched_assignment, summarize_layer
from depthsel.errors import BinCountError

responses = st.integers(0, 10_000).flatmap(
    lambda seed: st.tuples(st.just(seed), st.integers(1, 12), st.integers(2, 16), st.floats(0.0, 0.6))
)


def make_r(seed: int, k: int, nb: int, p_absent: float, signed: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(k, nb, generator=g, dtype=torch.float64) * torch.rand(k, 1, generator=g, dtype=torch.float64) * 3
    if not signed:
        r = r.abs()
    absent = torch.rand(nb, generator=g) < p_absent
    r[:, absent] = float("nan")
    return r


@given(case=responses, absent=st.sampled_from(["exclude", "zero"]))
def test_ds_ranges(case, absent) -> None:
    seed, k, nb, p = case
    r = make_r(seed, k, nb, p)
    ds = depth_selectivity(r, absent=absent)
    ok = ~torch.isnan(ds)
    assert bool(((ds[ok] >= 0) & (ds[ok] <= 1)).all())
    assigned = torch.randint(0, nb, (k,), generator=torch.Generator().manual_seed(seed))
    tds = depth_selectivity(r, assigned, absent=absent)
    ok = ~torch.isnan(tds)
    assert bool(((tds[ok] >= -1) & (tds[ok] <= 1)).all())
    # Target DS never exceeds argmax DS.
    both = ok & ~torch.isnan(ds)
    assert bool((tds[both] <= ds[both] + 1e-12).all())


def test_hand_computed_values_and_absent_policies() -> None:
    r = torch.tensor([[4.0, 1.0, 1.0, float("nan")]], dtype=torch.float64)
    # exclude: others = mean(1, 1) = 1 -> (4-1)/(4+1) = 0.6
    assert depth_selectivity(r).item() == pytest.approx(0.6)
    # zero (reference): others = (1+1+0)/3 -> (4-2/3)/(4+2/3)
    assert depth_selectivity(r, absent="zero").item() == pytest.approx((4 - 2 / 3) / (4 + 2 / 3))
    # Target at bin 1: (1 - mean(4,1)) / (1 + 2.5)
    assert depth_selectivity(r, torch.tensor([1])).item() == pytest.approx((1 - 2.5) / 3.5)
    # Target at an absent bin: undefined (NaN) by default, 0 in the reference.
    assert torch.isnan(depth_selectivity(r, torch.tensor([3]))).item()
    assert depth_selectivity(r, torch.tensor([3]), absent="zero").item() == 0.0
    # Sign: |R| is used.
    assert depth_selectivity(-r).item() == pytest.approx(0.6)


def test_random_uniform_responses_have_ds_near_one_third() -> None:
    # Eq. 3 of the paper: for R drawn uniformly at random, E[DS] ~ 1/3: with
    # many bins the mean of the others concentrates at 1/2 and the max
    # approaches 1, so DS -> (1 - 1/2) / (1 + 1/2). At 64 bins it is ~0.326.
    g = torch.Generator().manual_seed(0)
    r = torch.rand(20000, 64, generator=g, dtype=torch.float64)
    ds = depth_selectivity(r)
    assert float(ds.mean()) == pytest.approx(1 / 3, abs=0.01)


def test_assign_bins_formula() -> None:
    assert assign_bins(64, 64).tolist() == list(range(64))
    assert assign_bins(128, 64).tolist() == [k // 2 for k in range(128)]
    assert assign_bins(32, 64).tolist() == list(range(32))  # N_b = K when K < N_b
    a = assign_bins(69, 64)  # DenseNet-161 D layer: K not a multiple of N_b
    ref = [int(k // (69 / 64)) for k in range(69)]
    assert a.tolist() == ref
    assert set(a.tolist()) == set(range(64))
    with pytest.raises(BinCountError):
        assign_bins(0, 4)


def test_matched_assignment_keeps_slots_and_follows_preference() -> None:
    k, nb = 16, 8
    prefs = torch.randperm(k, generator=torch.Generator().manual_seed(1)) % nb
    r = torch.full((k, nb), 0.1, dtype=torch.float64)
    r[torch.arange(k), prefs] = 1.0
    m = matched_assignment(r)
    assert sorted(m.tolist()) == sorted(assign_bins(k, nb).tolist())
    assert torch.equal(m, prefs)


def test_summarize_layer() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    s = summarize_layer("x", r, torch.tensor([0, 2, 1]))
    assert s.dead_units == 1 and s.dead_unit_indices == [2]
    assert s.peak_on_target == pytest.approx(1 / 3)
    assert s.argmax_ds == pytest.approx((1 + 1 + 0) / 3)
    assert s.to_dict()["layer"] == "x"
