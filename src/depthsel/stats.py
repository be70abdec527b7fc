"""Uncertainty for every number depthsel reports: seeds, bootstrap, multiple comparisons.

Three questions come back in every experiment, and each has one function here:

* *How much does this number move between seeds?* :func:`seed_summary` gives
  the mean, the sample standard deviation and a two-sided Student-t confidence
  interval over independent runs (seeds).
* *Is the interpretable model better than its baseline?* :func:`paired_difference`
  pairs the two models of each seed (same initial weights, same batches) and
  gives the mean difference, its t interval and a paired t-test p-value. Pairing
  removes the seed-to-seed variation that both models share.
* *How much does a single model's test number depend on which test images were
  drawn?* :func:`bootstrap_ci` resamples images with replacement.

:func:`benjamini_hochberg` adjusts per-unit p-values for the number of units
tested. Every function accepts NaN-free finite inputs only and says so when it
gets anything else, because a silently dropped seed would be a wrong interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import DepthselError

__all__ = ["SeedSummary", "PairedDifference", "seed_summary", "paired_difference", "bootstrap_ci",
           "benjamini_hochberg", "t_quantile", "format_seed_cell", "format_comparison_table"]


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value, e.g. 4.303 for 95% and 2 degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, dof))


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray([float(v) if v is not None else math.nan for v in values], dtype=np.float64)
    if arr.ndim != 1:
        raise DepthselError(f"{what} must be a flat list of numbers")
    if not np.all(np.isfinite(arr)):
        bad = [i for i, v in enumerate(arr) if not math.isfinite(v)]
        raise DepthselError(f"{what} has non-finite values at positions {bad}; "
                            "a seed that failed must be rerun, not dropped")
    return arr


@dataclass(frozen=True)
class SeedSummary:
    """Mean of a metric over seeds with its spread.

    ``ci_low``/``ci_high`` are NaN for a single seed: one run has no spread,
    and the report says "1 seed" instead of inventing one.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float
    values: tuple[float, ...]

    @property
    def half_width(self) -> float:
        """Half the CI's width (NaN for one seed)."""
        return (self.ci_high - self.ci_low) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (NaN becomes None)."""
        return _jsonable(asdict(self) | {"half_width": self.half_width})

    def format(self, digits: int = 3) -> str:
        """``"0.512 ± 0.034"``, or ``"0.512 (1 seed)"``."""
        if self.n < 2:
            return f"{self.mean:.{digits}g} (1 seed)"
        return f"{self.mean:.{digits}g} ± {self.half_width:.2g}"


def seed_summary(values: Sequence[float], confidence: float = 0.95) -> SeedSummary:
    """Mean, sample std (ddof=1) and Student-t CI of per-seed values.

    Parameters
    ----------
    values
        One number per independent run.
    confidence
        Two-sided coverage of the interval.
    """
    arr = _finite(values, "per-seed values")
    if arr.size == 0:
        raise DepthselError("no per-seed values to summarise; run at least one seed")
    if not 0.0 < confidence < 1.0:
        raise DepthselError(f"confidence must lie in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size < 2:
        return SeedSummary(1, mean, math.nan, math.nan, math.nan, confidence, tuple(arr.tolist()))
    std = float(arr.std(ddof=1))
    half = t_quantile(confidence, arr.size - 1) * std / math.sqrt(arr.size)
    return SeedSummary(int(arr.size), mean, std, mean - half, mean + half, confidence, tuple(arr.tolist()))


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` paired by seed: mean, t interval and paired t-test p-value."""

    summary: SeedSummary
    pvalue: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return _jsonable(self.summary.to_dict() | {"pvalue": self.pvalue})


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Difference ``b - a`` of two metrics measured on the same seeds.

    The p-value is the two-sided paired t-test of a zero mean difference (NaN
    for fewer than two seeds, and 1.0 when every difference is exactly zero).
    """
    xa, xb = _finite(a, "baseline values"), _finite(b, "compared values")
    if xa.shape != xb.shape:
        raise DepthselError(f"paired values need one number per seed on both sides, got {xa.size} and {xb.size}")
    diff = xb - xa
    summ = seed_summary(diff.tolist(), confidence)
    if diff.size < 2:
        return PairedDifference(summ, math.nan)
    if float(np.abs(diff).max()) == 0.0:
        return PairedDifference(summ, 1.0)
    if summ.std == 0.0:
        return PairedDifference(summ, 0.0)
    from scipy.stats import t

    tstat = summ.mean / (summ.std / math.sqrt(diff.size))
    return PairedDifference(summ, float(2.0 * t.sf(abs(tstat), diff.size - 1)))


def bootstrap_ci(
    per_image: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of a statistic of additive per-image sums.

    Parameters
    ----------
    per_image
        ``[n_images, ...]`` additive per-image quantities (sums, counts), so that
        a resample is a weighted sum: ``weights @ per_image``.
    statistic
        Maps ``[R, ...]`` summed resamples to ``[R, m]`` (or ``[R]``) statistics.
    resamples, confidence, seed
        Number of resamples, coverage, and the generator seed.

    Returns
    -------
    low, high
        ``[m]`` (or scalar) interval bounds; NaN where the statistic was NaN in
        more than half of the resamples.
    """
    x = np.asarray(per_image, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        raise DepthselError("bootstrap needs at least one image")
    rng = np.random.default_rng(seed)
    # Multinomial counts are resampling with replacement without building index arrays.
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    flat = x.reshape(n, -1)
    stats = np.asarray(statistic((weights @ flat).reshape((resamples,) + x.shape[1:])), dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    with np.errstate(all="ignore"):
        low = np.nanquantile(stats, alpha, axis=0)
        high = np.nanquantile(stats, 1.0 - alpha, axis=0)
    bad = np.isnan(stats).mean(axis=0) > 0.5
    return np.where(bad, np.nan, low), np.where(bad, np.nan, high)


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN.

    A unit is significant at false-discovery rate ``q`` when its adjusted
    value is ``<= q``. NaN p-values (undefined units) are not counted as tests.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    vals = p[ok]
    order = np.argsort(vals, kind="stable")
    ranked = vals[order] * m / np.arange(1, m + 1)
    # Step-up: each adjusted value is the minimum over all larger ranks.
    adj = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, tuple):
            out[k] = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        else:
            out[k] = v
    return out


def format_seed_cell(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"0.512 ± 0.034"`` (mean ± CI half-width), ``"0.512 (1 seed)"`` or ``"–"``."""
    if not stat:
        return "–"
    mean = stat["mean"]
    if stat.get("n", 1) < 2 or stat.get("half_width") is None:
        ci = stat.get("image_ci")
        if ci and ci[0] is not None and ci[1] is not None:
            return f"{mean:.{digits}g} (1 seed; images [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}])"
        return f"{mean:.{digits}g} (1 seed)"
    return f"{mean:.{digits}g} ± {stat['half_width']:.2g}"


def format_comparison_table(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """Printable rows of a comparison over seeds: metric, each arm as mean ± CI, paired difference, p.

    ``summary`` holds ``arms`` (``[{"label": ...}]``, the first the reference)
    and ``table`` rows (``metric``, ``better``, ``arms`` of :meth:`SeedSummary.to_dict`
    views and ``difference`` of :meth:`PairedDifference.to_dict` views), as an
    experiment summary does; ``depthsel report`` prints such tables.
    """
    rows = []
    labels = [a["label"] for a in summary["arms"]]
    for r in summary["table"]:
        out = {"metric": r["metric"] + (" ↑" if r["better"] == "higher" else " ↓")}
        out.update({lb: format_seed_cell(r["arms"].get(lb)) for lb in labels})
        if len(labels) == 2:
            d = r["difference"].get(labels[1])
            if d:
                ci = (f" [{d['ci_low']:.2g}, {d['ci_high']:.2g}]" if d.get("ci_low") is not None else "")
                out["difference"] = f"{d['mean']:+.3g}{ci}"
                out["p"] = "–" if d.get("pvalue") is None else f"{d['pvalue']:.2g}"
            else:
                out["difference"], out["p"] = "–", "–"
        rows.append(out)
    return rows
