"""Seed summaries, paired differences, bootstrap and Benjamini-Hochberg against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from depthsel.errors import DepthselError
from depthsel.stats import benjamini_hochberg, bootstrap_ci, paired_difference, seed_summary

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@given(st.lists(floats, min_size=2, max_size=12))
@settings(max_examples=60, deadline=None)
def test_seed_summary_matches_scipy_t_interval(values: list[float]) -> None:
    from scipy import stats

    s = seed_summary(values)
    arr = np.array(values)
    assert s.mean == pytest.approx(arr.mean(), abs=1e-9)
    assert s.std == pytest.approx(arr.std(ddof=1), abs=1e-9)
    if arr.std(ddof=1) > 1e-9:
        lo, hi = stats.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=stats.sem(arr))
        assert s.ci_low == pytest.approx(lo, rel=1e-7, abs=1e-7)
        assert s.ci_high == pytest.approx(hi, rel=1e-7, abs=1e-7)
    assert s.ci_low <= s.mean <= s.ci_high


def test_t_interval_covers_the_true_mean_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        s = seed_summary(rng.normal(1.0, 2.0, size=3).tolist())
        hits += s.ci_low <= 1.0 <= s.ci_high
    assert 0.93 <= hits / 2000 <= 0.97


def test_one_seed_says_so_and_bad_values_are_refused() -> None:
    s = seed_summary([0.5])
    assert s.n == 1 and math.isnan(s.ci_low) and "1 seed" in s.format()
    assert s.to_dict()["ci_low"] is None
    with pytest.raises(DepthselError, match="non-finite"):
        seed_summary([0.1, float("nan")])
    with pytest.raises(DepthselError, match="no per-seed"):
        seed_summary([])


@given(st.lists(st.tuples(floats, floats), min_size=2, max_size=10))
@settings(max_examples=60, deadline=None)
def test_paired_difference_matches_scipy_ttest_rel(pairs: list[tuple[float, float]]) -> None:
    from scipy import stats

    a, b = (np.array(x) for x in zip(*pairs))
    d = paired_difference(a.tolist(), b.tolist())
    assert d.summary.mean == pytest.approx((b - a).mean(), abs=1e-9)
    if (b - a).std(ddof=1) > 1e-6 * max(1.0, abs((b - a).mean())):
        ref = stats.ttest_rel(b, a).pvalue
        assert d.pvalue == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_paired_difference_detects_a_shift_that_seed_noise_hides() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1.0, 5)  # large seed-to-seed spread shared by both models
    d = paired_difference(base.tolist(), (base + 0.1 + rng.normal(0, 0.01, 5)).tolist())
    assert d.pvalue < 0.001 and d.summary.ci_low > 0
    assert seed_summary((base + 0.1).tolist()).ci_low < 0 < seed_summary((base + 0.1).tolist()).ci_high


def test_bootstrap_ci_of_a_mean_matches_normal_theory() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 1.0, size=(400, 2))
    x[:, 1] = 1.0  # counts: the statistic is sum / count, the mean

    low, high = bootstrap_ci(x, lambda s: s[:, 0] / s[:, 1], resamples=4000, seed=0)
    se = x[:, 0].std(ddof=1) / math.sqrt(400)
    assert low == pytest.approx(x[:, 0].mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(x[:, 0].mean() + 1.96 * se, abs=0.25 * se)


def _bh_reference(p: list[float]) -> list[float]:
    """Plain loop: q_i = min over ranks j >= rank(i) of p_(j) * m / j, capped at 1."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    for r, i in enumerate(order, start=1):
        q[i] = min(min(p[order[j - 1]] * m / j for j in range(r, m + 1)), 1.0)
    return q


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=30))
@settings(max_examples=80, deadline=None)
def test_benjamini_hochberg_matches_plain_loop(p: list[float]) -> None:
    np.testing.assert_allclose(benjamini_hochberg(p), _bh_reference(p), rtol=1e-12, atol=1e-15)


def test_benjamini_hochberg_leaves_nan_out() -> None:
    q = benjamini_hochberg([0.01, float("nan"), 0.04])
    assert math.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2]], _bh_reference([0.01, 0.04]))
