"""Re-score synthetic validation runs on 480 validation scenes instead of 48, and apply the fixed rule.

``OMP_NUM_THREADS=1 python benchmarks/revalidate_syn.py [--scenes 480] [--out JSON] INCUMBENT RUN ...``

Every lever of ``benchmarks/lever_select.py syn ...`` was judged on 48 validation scenes (split
"train", base seed 1). ``benchmarks/scene_sample_spread.py`` showed that 48 scenes are too few: the
same five models score target DS 0.57 to 0.86 on ten disjoint 48-scene sets. This re-scores the
saved models of each run (both arms, every seed) on the first ``--scenes`` scenes of the same
validation stream (the 48 are its first 48), no retraining: interpretable target DS,
peak-on-target and dead units from the experiment's own dissection, and the RMSE ratio to the
seed's baseline from the experiment's own metrics. The winner follows the rule of
``benchmarks/lever_select_table.py``, unchanged: highest mean target DS among the runs whose mean
RMSE ratio is at most the incumbent's (the first run) mean plus its CI half-width. The test
split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthsel.api import get_dataset, get_model_info  # noqa: E402
from depthsel.data import CachedDataset  # noqa: E402
from depthsel.stats import seed_summary  # noqa: E402
from depthsel_plugins.experiments.measure import _dissect, layer_mean, per_image_metrics  # noqa: E402

from lever_select_table import fixed_rule  # noqa: E402  (the rule, one home)
from scene_sample_spread import load_run  # noqa: E402

KEYS = ("target_ds", "peak_on_target", "dead_units", "rmse_ratio")


def score_run(run: Path, scenes: int) -> dict[str, list[float]]:
    """Per seed (in order): interpretable target DS, peak-on-target, dead units and RMSE ratio."""
    cfg, binner, models = load_run(run)
    info = get_model_info(cfg.model)
    data = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), split="train", seed=1, num_samples=scenes))
    out: dict[str, list[float]] = {k: [] for k in KEYS}
    for seed in sorted({s for s, _ in models}, key=int):
        rmse = {arm: per_image_metrics(models[(seed, arm)], info, data, cfg.protocol, cfg.batch_size,
                                       cfg.device)[0]["rmse"] for arm in ("baseline", "interpretable")}
        layers = _dissect(models[(seed, "interpretable")], info, cfg, binner, data, "val", int(seed), 0,
                          False, False).summary()["splits"]["val"]
        out["target_ds"].append(layer_mean(layers, "target_ds", "mean_target_ds"))
        out["peak_on_target"].append(layer_mean(layers, "peak_on_target"))
        out["dead_units"].append(float(sum(int(v["dead_units"]) for v in layers.values())))
        out["rmse_ratio"].append(float(rmse["interpretable"] / rmse["baseline"]))
    return out


def main() -> None:
    """Score every run, print the table and the winner, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--scenes", type=int, default=480)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, Any] = {}
    for run in args.runs:
        values = score_run(run, args.scenes)
        rows[run.name] = {"run": str(run), "values": values,
                          "summary": {k: seed_summary(v).to_dict() for k, v in values.items()}}
        print(f"{run.name}: done", flush=True)
    print(f"\n| run ({args.scenes} validation scenes) | seeds | " + " | ".join(KEYS) + " |")
    print("|" + "---|" * (len(KEYS) + 2))
    for name, row in rows.items():
        s = row["summary"]
        print(f"| {name} | {s['target_ds']['n']} | "
              + " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['half_width']:.3f}" for k in KEYS) + " |")
    best, allowed = fixed_rule({n: r["summary"] for n, r in rows.items()})
    print(f"\nwinner by the fixed rule: {best} (RMSE ratio bound {allowed:.3f})")
    if args.out:
        args.out.write_text(json.dumps({"scenes": args.scenes, "bound": allowed, "winner": best, "runs": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
