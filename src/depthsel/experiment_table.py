"""Aggregating an experiment over seeds: per-metric means, confidence intervals and paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import DepthselError
from .stats import paired_difference, seed_summary

if TYPE_CHECKING:
    from .experiment_measure import Measurement

__all__ = ["METRICS", "aggregate", "format_table", "format_cell"]

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


def format_cell(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
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


def format_table(summary: Mapping[str, Any]) -> list[dict[str, str]]:
    """Printable rows: metric, each arm as mean ± CI, and the paired difference with its p-value."""
    rows = []
    labels = [a["label"] for a in summary["arms"]]
    for r in summary["table"]:
        out = {"metric": r["metric"] + (" ↑" if r["better"] == "higher" else " ↓")}
        out.update({lb: format_cell(r["arms"].get(lb)) for lb in labels})
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
