"""Issue 12 diagnostic: held-out target DS of the interpretable model, split by the units' assigned bin.

A layer's target DS is a mean over units; when it misses, this tells whether every bin is a
little short or one bin fails. Next to it, per bin and averaged over seeds, the model's own
depth error on the held-out split (from the run's ``per_bin_error``): the fraction of the
bin's pixels predicted inside the bin, MAE over the bin's width, and the mean bin offset.

``python benchmarks/ds_by_bin.py RUN_DIR [LAYER]`` on a ``depthsel demo`` run directory
(default layer: the run's first), e.g. ``python benchmarks/ds_by_bin.py runs/demo``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from safetensors.torch import load_file


def by_bin(run: Path, layer: str | None = None) -> tuple[str, list[list[float]], list[list[float]], list[dict]]:
    """(layer, GT target DS per seed and bin, predicted-bin target DS per seed and bin, per-bin error per seed)."""
    summary = json.loads((run / "summary.json").read_text())
    layer = layer or summary["config"]["layers"][0]
    gt, pred, errors = [], [], []
    for seed in summary["seeds"]:
        t = load_file(str(run / f"seed{seed}" / "interpretable" / "dissection" / "result.safetensors"))
        assigned, ds, pds = (t[f"test/{layer}/{k}"] for k in ("assigned", "target_ds", "pred_target_ds"))
        nb = int(assigned.max()) + 1
        gt.append([float(ds[assigned == b].nanmean()) for b in range(nb)])
        pred.append([float(pds[assigned == b].nanmean()) for b in range(nb)])
        errors.append(summary["per_seed"][str(seed)]["interpretable"]["per_bin_error"][layer])
    return layer, gt, pred, errors


def main(argv: list[str]) -> None:
    run = Path(argv[0])
    layer, gt, pred, errors = by_bin(run, argv[1] if len(argv) > 1 else None)
    print(f"{run.name}, {layer}, {len(gt)} seeds (interpretable model, held-out split)\n")
    print("| assigned bin | depth (m) | target DS, per seed | mean | predicted-bin target DS, mean "
          "| pixels predicted in the bin | MAE / bin width | mean bin offset |")
    print("|---|---|---|---|---|---|---|---|")
    for b in range(len(gt[0])):
        e = [seed[b] for seed in errors]
        print(f"| {b} | {e[0]['low']:.2f}–{e[0]['high']:.2f} | {'/'.join(f'{s[b]:.2f}' for s in gt)} "
              f"| {statistics.mean(s[b] for s in gt):.3f} | {statistics.mean(s[b] for s in pred):.3f} "
              f"| {statistics.mean(x['in_bin'] for x in e):.2f} | {statistics.mean(x['mae_over_width'] for x in e):.2f} "
              f"| {statistics.mean(x['mean_bin_offset'] for x in e):+.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
