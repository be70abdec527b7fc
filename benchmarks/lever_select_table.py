"""Compare the runs of ``benchmarks/lever_select.py`` on the validation block and name the winner.

The rule is fixed before looking: the winner has the highest mean validation target DS of
the interpretable arm; its RMSE ratio to the baseline must not be worse than the incumbent's
(the first run named) by more than the incumbent's CI half-width. Held-out frames are not read.

``python benchmarks/lever_select_table.py runs/sel_7s_nb16 runs/sel_7s_nb8 runs/sel_7s_nb4``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KEYS = ("target_ds", "peak_on_target", "dead_units", "rmse_ratio", "pred_target_ds", "target_ds_train")


def stats(run: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((run / "summary.json").read_text())
    rows = {r["key"]: r["arms"]["interpretable"] for r in summary["table"]}
    out = {k: rows[k] for k in KEYS if k in rows}
    out["_bins"] = {"mean": summary["binner"].get("num_bins"), "n": len(summary["seeds"])}
    return out


def cell(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['half_width']:.3f}" if s.get("n", 0) > 1 else f"{s['mean']:.3f}"


def fixed_rule(runs: dict[str, dict[str, Any]]) -> tuple[str, float]:
    """(winner, RMSE-ratio bound): the highest mean target DS among the runs whose mean RMSE
    ratio is at most the incumbent's (the first run's) mean plus its CI half-width.

    ``runs`` maps a name to ``{"target_ds": {"mean", ...}, "rmse_ratio": {"mean", "half_width"}}``.
    """
    first = next(iter(runs.values()))
    allowed = first["rmse_ratio"]["mean"] + first["rmse_ratio"]["half_width"]
    ok = [n for n, s in runs.items() if s["rmse_ratio"]["mean"] <= allowed]
    return max(ok, key=lambda n: runs[n]["target_ds"]["mean"]), allowed


def main(paths: list[str]) -> None:
    runs = {Path(p).name: stats(Path(p)) for p in paths}
    print("| run | bins | seeds | " + " | ".join(KEYS) + " |")
    print("|" + "---|" * (len(KEYS) + 3))
    for name, s in runs.items():
        print(f"| {name} | {s['_bins']['mean']} | {s['_bins']['n']} | "
              + " | ".join(cell(s[k]) if k in s else "–" for k in KEYS) + " |")
    best, allowed = fixed_rule(runs)
    print(f"\nwinner by the fixed rule: {best} (RMSE ratio bound {allowed:.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
