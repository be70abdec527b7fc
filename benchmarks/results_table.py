"""Render an experiment's ``summary.json`` as the Markdown table docs/results.md quotes.

Every cell is mean ± 95% CI half-width over seeds (Student t), the difference
column is interpretable - baseline paired by seed with its CI and paired t-test
p-value, and the last column lists the per-seed values, so nothing in the docs
is typed by hand.

Run: ``python benchmarks/results_table.py runs/7s_end/summary.json``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    if stat["n"] < 2:
        return f"{stat['mean']:.3f} (1 seed)"
    return f"{stat['mean']:.3f} ± {stat['half_width']:.3f}"


def table(summary: dict[str, Any], keys: list[str] | None = None) -> str:
    labels = [a["label"] for a in summary["arms"]]
    ref = labels[0]
    head = ["metric"] + labels + [f"{lb} − {ref} [95% CI], p" for lb in labels[1:]] + ["per seed (" + ", ".join(labels) + ")"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary["table"]:
        if keys and row["key"] not in keys:
            continue
        arrow = "↑" if row["better"] == "higher" else "↓"
        cells = [f"{row['metric']} {arrow}"] + [cell(row["arms"].get(lb)) for lb in labels]
        for lb in labels[1:]:
            d = row["difference"].get(lb)
            cells.append("–" if not d else f"{d['mean']:+.3f} [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}], "
                                           f"p = {fmt(d['pvalue'], 3)}")
        per = []
        for lb in labels:
            st = row["arms"].get(lb)
            per.append("–" if not st else "/".join(f"{v:.2f}" for v in st["values"]))
        cells.append("; ".join(per))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summary", type=Path)
    ap.add_argument("--keys", default=None, help="comma-separated metric keys to keep")
    args = ap.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    print(f"{summary['num_seeds']} seeds {summary['seeds']}, {summary['seconds']} s\n")
    print(table(summary, args.keys.split(",") if args.keys else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
