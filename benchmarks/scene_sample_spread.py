"""How much held-out target DS depends on which synthetic scenes are drawn.

``OMP_NUM_THREADS=1 python benchmarks/scene_sample_spread.py RUN_DIR [--sets N] [--scenes 48] [--out JSON]``,
e.g. ``python benchmarks/scene_sample_spread.py /work/exp3/runs_r5/syn_nb4_conv4 --sets 10
--out benchmarks/scene_sample_spread_syn_nb4_conv4.json``.

Every seed's baseline and interpretable model of an experiment run (``summary.json`` plus
``seed*/ARM/model.safetensors``) is dissected on N disjoint scene sets (synthetic split "test",
base seeds 0..N-1, ``--scenes`` scenes each; base seed 0 is the run's own test set), on one large
set (split test, base seed 100, 480 scenes) and, for reference, on the validation block the
recipe was chosen on (split train, base seed 1, 48 scenes). The binner is the run's own (fitted on
its training split), rebuilt from the summary; target DS and peak-on-target come from the
experiment's own ``_dissect`` and ``layer_mean``. Neither depends on the permutation test or the
diagnostics, so both are off.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from depthsel.api import binner_from_config, get_dataset, get_model, get_model_info
from depthsel.checkpoints import load_weights
from depthsel.data import CachedDataset
from depthsel.stats import seed_summary
from depthsel_plugins.experiments.config import ExperimentConfig
from depthsel_plugins.experiments.measure import _dissect, layer_mean

ARMS = ("interpretable", "baseline")
LARGE = ("large", "test", 100, 480)
VALIDATION = ("val", "train", 1, 48)


def load_run(run_dir: Path) -> tuple[ExperimentConfig, Any, dict[tuple[str, str], torch.nn.Module]]:
    """The run's config, its stored binner and every (seed, arm) model."""
    summary = json.loads((run_dir / "summary.json").read_text())
    stored = summary["config"]
    cfg = ExperimentConfig(**{f.name: stored[f.name] for f in fields(ExperimentConfig) if f.name in stored})
    binner = binner_from_config(summary["binner"])
    if binner.edges.tolist() != summary["binner"]["edges"]:
        raise SystemExit(f"rebuilt binner edges {binner.edges.tolist()} differ from the stored ones")
    models = {}
    for seed in summary["seeds"]:
        for arm in ARMS:
            model = get_model(cfg.model, **cfg.model_config)
            load_weights(model, run_dir / f"seed{seed}" / arm / "model.safetensors")
            models[(str(seed), arm)] = model.eval()
    return cfg, binner, models


def measure_set(cfg: ExperimentConfig, binner: Any, models: dict[tuple[str, str], torch.nn.Module],
                split: str, base_seed: int, scenes: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{seed: {arm: {target_ds, peak_on_target}}}`` on one synthetic scene set."""
    info = get_model_info(cfg.model)
    data = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), split=split, seed=base_seed,
                                     num_samples=scenes))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (seed, arm), model in models.items():
        res = _dissect(model, info, cfg, binner, data, split, int(seed), 0, False, False)
        layers = res.summary()["splits"][split]
        out.setdefault(seed, {})[arm] = {"target_ds": layer_mean(layers, "target_ds", "mean_target_ds"),
                                         "peak_on_target": layer_mean(layers, "peak_on_target")}
    return out


def arm_summary(values: dict[str, dict[str, dict[str, float]]], arm: str, key: str) -> dict[str, Any]:
    """Mean and 95% Student-t CI over model seeds of one arm's ``key``."""
    return seed_summary([values[s][arm][key] for s in sorted(values, key=int)]).to_dict()


def table(sets: list[dict[str, Any]], n: int) -> str:
    """Markdown: per set, interpretable target DS over seeds; then the spread of the N set means."""
    rows = ["| scene set | split | base seed | scenes | interp. target DS (mean ± CI) "
            "| interp. peak-on-target | baseline target DS |", "|---|---|---|---|---|---|---|"]
    for s in sets:
        it, ip, bt = (s["summary"][k] for k in ("interpretable/target_ds", "interpretable/peak_on_target",
                                                 "baseline/target_ds"))
        rows.append(f"| {s['name']} | {s['split']} | {s['base_seed']} | {s['scenes']} "
                    f"| {it['mean']:.3f} ± {it['half_width']:.3f} | {ip['mean']:.3f} ± {ip['half_width']:.3f} "
                    f"| {bt['mean']:.3f} ± {bt['half_width']:.3f} |")
    means = [s["summary"]["interpretable/target_ds"]["mean"] for s in sets[:n]]
    order = sorted(means)
    rows += ["", f"Across the {n} test sets of {sets[0]['scenes']} scenes, interpretable target DS per-set mean: "
             f"mean {sum(means) / n:.3f}, min {order[0]:.3f}, max {order[-1]:.3f}, std "
             f"{seed_summary(means).std:.3f}; set 0 (the demo's) ranks {order.index(means[0]) + 1} of {n} "
             "(1 = lowest)."]
    return "\n".join(rows)


def main() -> None:
    """Parse arguments, measure every set, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sets", type=int, default=10)
    p.add_argument("--scenes", type=int, default=48)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg, binner, models = load_run(args.run_dir)
    specs = [(f"set{i}", "test", i, args.scenes) for i in range(args.sets)] + [LARGE, VALIDATION]
    sets = []
    for name, split, base_seed, scenes in specs:
        values = measure_set(cfg, binner, models, split, base_seed, scenes)
        summ = {f"{a}/{k}": arm_summary(values, a, k) for a in ARMS for k in ("target_ds", "peak_on_target")}
        sets.append({"name": name, "split": split, "base_seed": base_seed, "scenes": scenes,
                     "values": values, "summary": summ})
        print(f"{name}: interpretable target DS {summ['interpretable/target_ds']['mean']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(table(sets, args.sets))
    seconds = round(time.perf_counter() - t0, 1)
    print(f"\n{seconds} s")
    if args.out:
        args.out.write_text(json.dumps({"run_dir": str(args.run_dir), "binner": binner.config(),
                                        "layers": cfg.layers, "seconds": seconds, "sets": sets}, indent=1))


if __name__ == "__main__":
    main()
