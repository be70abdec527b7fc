"""Issue 12: held-out selectivity against the number of synthetic training scenes.

Does the train/held-out gap close with more data? Each point is ``depthsel demo`` (FastDepth
width 0.5, ``decode_conv5``, 4 SID bins, liveness 1, lr 1e-2, batch 8, 64x96, 48 held-out
scenes of the test split) over 5 seeds, with the number of training scenes N varied and the
number of optimisation steps held at 1,250 (epochs = 10,000 / N), so that more scenes means
more *different* images, not more training. The runs (one process, one thread):

    for spec in "200 50" "1000 10" "5000 2"; do set -- $spec
      OMP_NUM_THREADS=1 depthsel demo --train-samples $1 --epochs $2 --seeds 0,1,2,3,4 \\
          --curve-every 0 --name lc_$1 --out runs_lc --format json > runs_lc_$1.json
    done

Then ``python benchmarks/learning_curve.py runs_lc/lc_200 runs_lc/lc_1000 runs_lc/lc_5000
--plot docs/img/results/learning_curve_scenes.png`` (or the committed copies,
``benchmarks/runs_round4/lc_*.summary.json``) prints the table (mean ± 95% CI half-width
over seeds, interpretable arm unless named) and draws the curve.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = [("target_ds", "interpretable", "held-out target DS"),
        ("peak_on_target", "interpretable", "held-out peak-on-target"),
        ("pred_target_ds", "interpretable", "held-out target DS, predicted-depth bins"),
        ("target_ds_train", "interpretable", "training-split target DS"),
        ("dead_units", "interpretable", "dead units"),
        ("rmse", "baseline", "held-out RMSE (m), baseline"),
        ("rmse", "interpretable", "held-out RMSE (m), interpretable"),
        ("rmse_ratio", "interpretable", "RMSE ratio")]


def load(run: Path) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
    """A run directory (its summary.json) or a summary file itself."""
    summary = json.loads((run if run.is_file() else run / "summary.json").read_text())
    n = int(summary["config"]["train_data"]["num_samples"])
    table = {(r["key"], arm): r["arms"][arm] for r in summary["table"] for arm in r["arms"]}
    return n, table


def cell(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['half_width']:.3f}" if s.get("n", 0) > 1 else f"{s['mean']:.3f} (1 seed)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)
    points = sorted(load(r) for r in args.runs)
    seeds = {len(t[("target_ds", "interpretable")]["values"]) for _, t in points}
    print(f"| metric | " + " | ".join(f"{n} scenes" for n, _ in points) + " |")
    print("|---|" + "---|" * len(points))
    for key, arm, label in ROWS:
        print(f"| {label} | " + " | ".join(cell(t[(key, arm)]) if (key, arm) in t else "–" for _, t in points) + " |")
    print(f"\nseeds per point: {sorted(seeds)}")
    if args.plot:
        plot(points, args.plot)
    return 0


def plot(points: list[tuple[int, dict[tuple[str, str], dict[str, Any]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [n for n, _ in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for i, (key, label) in enumerate([("target_ds", "held-out, GT bins"), ("pred_target_ds", "held-out, predicted bins"),
                                      ("target_ds_train", "training split")]):
        stats = [t[(key, "interpretable")] for _, t in points]
        mean = [s["mean"] for s in stats]
        err = [s["half_width"] for s in stats]
        ax.errorbar(ns, mean, yerr=err, marker="o", capsize=4, color=f"C{i}", label=label)
    ax.axhline(0.78, color="grey", ls="--", lw=1, label="issue target 0.78")
    ax.set_xscale("log")
    ax.set_xticks(ns, [f"{n:,}" for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("synthetic training scenes (1,250 steps each)")
    ax.set_ylabel("target DS, interpretable model")
    ax.set_title("Selectivity against training-set size: mean ± 95% CI over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
