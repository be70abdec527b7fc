"""Rebuild an experiment summary's selectivity rows from the dissections saved beside it.

Runs made with depthsel before the dissection summary carried its diagnostics
(near-target, prediction DS, BH-significant fraction, bootstrap intervals)
saved them in every ``seedS/ARM/dissection*/result.json`` but left them out of
``summary.json``. This reads those files (the run's own output) and writes a
new summary with the full table; accuracy numbers are copied unchanged.

Run: ``python benchmarks/refresh_summary.py RUN OUT``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from depthsel_plugins.experiments.measure import Measurement, brief_layers, dissection_intervals, dissection_scalars
from depthsel_plugins.experiments.plots import plot_experiment
from depthsel_plugins.experiments.table import aggregate


def _splits(path: Path, split: str) -> dict:
    return json.loads((path / "result.json").read_text())["data"]["splits"][split]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    summary = json.loads((args.run / "summary.json").read_text())
    per_seed = {}
    for seed, arms in summary["per_seed"].items():
        per_seed[seed] = {}
        for label, saved in arms.items():
            base = args.run / f"seed{seed}" / label
            layers, tlayers = _splits(base / "dissection", "test"), _splits(base / "dissection_train", "train")
            m = Measurement.from_dict(saved)
            m.scalars = dict(m.scalars) | dissection_scalars(layers, tlayers)
            m.intervals = dict(m.intervals) | dissection_intervals(layers)
            m.per_bin_error = {n: d.get("per_bin_error") for n, d in layers.items()}
            m.details["dissection"] = brief_layers(layers)
            per_seed[seed][label] = m
    labels = [a["label"] for a in summary["arms"]]
    summary["per_seed"] = {s: {lb: x.to_dict() for lb, x in arms.items()} for s, arms in per_seed.items()}
    summary.update(aggregate(per_seed, labels))
    summary["refreshed_from"] = str(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = [str(p) for p in plot_experiment(summary, args.out / "plots")]
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
