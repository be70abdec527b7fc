"""Figures of an experiment over seeds: metric comparison, learning curves, and the sweep trade-off.

Every figure shows the spread it rests on: per-seed values as dots, the mean
with its 95% Student-t interval as a bar or band, and the number of seeds in
the title.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from depthsel.figures import pyplot, save_figure
from depthsel.stats import seed_summary

__all__ = ["plot_experiment"]

_COMPARE = ("rmse", "delta1", "target_ds", "peak_on_target", "target_ds_train", "pred_target_ds")
_CURVES = (("target_ds_test", "target DS, held-out"), ("target_ds_train", "target DS, training split"),
           ("rmse", "held-out RMSE (m)"))


def _save(fig: Any, path: Path) -> Path:
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def _seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}" + (" (no interval from one seed)" if n == 1 else ", mean ± 95% CI")


def _comparison(summary: Mapping[str, Any], out: Path) -> Path | None:
    rows = [r for r in summary["table"] if r["key"] in _COMPARE]
    if not rows:
        return None
    plt = pyplot()
    labels = [a["label"] for a in summary["arms"]]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.2), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for i, label in enumerate(labels):
            stat = row["arms"].get(label)
            if not stat:
                continue
            vals = [v for v in stat["values"] if v is not None]
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, s=12, color="0.45", zorder=3)
            hw = stat.get("half_width")
            ax.errorbar([i], [stat["mean"]], yerr=[[hw or 0.0], [hw or 0.0]], fmt="o", color=f"C{i}",
                        capsize=5, ms=7, zorder=4)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(row["metric"] + (" ↑" if row["better"] == "higher" else " ↓"), fontsize=9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
    fig.suptitle(f"held-out split unless stated; {_seeds_text(summary['num_seeds'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "comparison.png")


def _band(curves: list[list[dict[str, Any]]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    epochs = sorted({p["epoch"] for c in curves for p in c})
    mean, lo, hi = [], [], []
    for e in epochs:
        vals = [p[key] for c in curves for p in c if p["epoch"] == e and p.get(key) is not None
                and math.isfinite(p[key])]
        if not vals:
            mean.append(math.nan), lo.append(math.nan), hi.append(math.nan)
            continue
        s = seed_summary(vals)
        mean.append(s.mean)
        lo.append(s.ci_low if s.n > 1 else s.mean)
        hi.append(s.ci_high if s.n > 1 else s.mean)
    return epochs, mean, lo, hi


def _curves(summary: Mapping[str, Any], out: Path) -> Path | None:
    labels = [a["label"] for a in summary["arms"]]
    per = summary["per_seed"]
    if not any(per[s][lb]["curve"] for s in per for lb in labels):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(_CURVES), figsize=(4.2 * len(_CURVES), 3.2))
    for ax, (key, text) in zip(axes, _CURVES):
        for i, label in enumerate(labels):
            epochs, mean, lo, hi = _band([per[s][label]["curve"] for s in per], key)
            ax.plot(epochs, mean, color=f"C{i}", label=label)
            ax.fill_between(epochs, lo, hi, color=f"C{i}", alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(text, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"learning curves; {_seeds_text(summary['num_seeds'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "learning_curves.png")


def _tradeoff(summary: Mapping[str, Any], out: Path) -> Path | None:
    rows = {r["key"]: r for r in summary["table"]}
    if summary.get("kind") != "sweep" or "target_ds" not in rows or "rmse" not in rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for i, arm in enumerate(summary["arms"]):
        x, y = rows["target_ds"]["arms"].get(arm["label"]), rows["rmse"]["arms"].get(arm["label"])
        if not x or not y:
            continue
        ax.errorbar([x["mean"]], [y["mean"]], xerr=[[x.get("half_width") or 0]] * 2,
                    yerr=[[y.get("half_width") or 0]] * 2, fmt="o", capsize=4, color=f"C{i}",
                    label=f"λ = {arm['weight']:g}")
    ax.set_xlabel("held-out target DS ↑")
    ax.set_ylabel("held-out RMSE (m) ↓")
    ax.legend(fontsize=8)
    ax.set_title(f"accuracy vs selectivity; {_seeds_text(summary['num_seeds'])}", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "tradeoff.png")


def plot_experiment(summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the experiment's figures into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made = [_comparison(summary, out), _curves(summary, out), _tradeoff(summary, out)]
    return [p for p in made if p is not None]
