"""Aggregating an experiment over seeds: per-metric means, confidence intervals and paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from depthsel.errors import DepthselError
from depthsel.stats import paired_difference, seed_summary

if TYPE_CHECKING:
    from .measure import Measurement

__all__ = ["METRICS", "aggregate"]

#: (key, label, better) of every row, in table order. "train" rows are on the training split.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("delta1", "δ1", "higher"), ("rmse", "RMSE (m)", "lower"), ("abs_rel", "AbsRel", "lower"),
    ("rmse_ratio", "RMSE / baseline RMSE", "lower"),
    ("argmax_ds", "argmax DS", "higher"), ("target_ds", "target DS", "higher"),
    ("peak_on_target", "peak-on-target", "higher"), ("near_target", "near-target (±1 bin)", "higher"),
    ("dead_units", "dead units", "lower"), ("frac_significant_bh", "significant units (BH, α=0.05)", "higher"),
    ("pred_target_ds", "target DS, predicted-depth bins", "higher"),
    ("pred_peak_on_target", "peak-on-target, predicted-depth bins", "higher"),
    ("target_ds_train", "target DS, training split", "higher"),
    ("peak_on_target_train", "peak-on-target, training split", "higher"),
)


def _values(per_seed: Mapping[str, Mapping[str, Measurement]], label: str, key: str) -> list[float] | None:
    vals = []
    for seed, arms in per_seed.items():
        if key == "rmse_ratio":
            base = next(iter(arms.values())).scalars["rmse"]
            v = arms[label].scalars["rmse"] / base if base else math.nan
        else:
            v = arms[label].scalars.get(key, math.nan)
        if v is None or not math.isfinite(float(v)):
            return None  # undefined for some seed (e.g. no permutation test): no row entry
        vals.append(float(v))
    return vals


def aggregate(per_seed: Mapping[str, Mapping[str, Measurement]], labels: Sequence[str]) -> dict[str, Any]:
    """The summary table: for every metric and arm, mean/std/CI over seeds, and paired differences.

    The first arm is the reference: every other arm gets ``difference[arm]`` =
    arm - reference, paired by seed, with its CI and a paired t-test p-value.
    """
    if not per_seed:
        raise DepthselError("no seed finished; nothing to aggregate")
    ref = labels[0]
    table = []
    for key, text, better in METRICS:
        row: dict[str, Any] = {"key": key, "metric": text, "better": better, "arms": {}, "difference": {}}
        for label in labels:
            vals = _values(per_seed, label, key)
            row["arms"][label] = seed_summary(vals).to_dict() if vals else None
            if vals and len(per_seed) == 1:
                # One seed has no seed spread; the image bootstrap is the only interval there is.
                only = next(iter(per_seed.values()))[label]
                row["arms"][label]["image_ci"] = only.intervals.get(key)
        base = _values(per_seed, ref, key)
        for label in labels[1:]:
            vals = _values(per_seed, label, key)
            if vals and base and key != "rmse_ratio":
                row["difference"][label] = paired_difference(base, vals).to_dict()
        if any(v is not None for v in row["arms"].values()):
            table.append(row)
    return {"table": table, "num_seeds": len(per_seed), "reference_arm": ref}
