"""The main job: train a baseline and its interpretable twin over several seeds, dissect, compare.

For every seed both models start from the same weights, see the same batches in
the same order and differ only in the selectivity term, so the *paired*
difference interpretable - baseline isolates that term's effect; the spread
over seeds says how far to trust it (:mod:`depthsel.stats`). A sweep does the
same for a list of selectivity weights, weight 0 being the baseline.

Everything resolves through the plugin registry (models, datasets, binners, the
``dissection`` analyzer), so the same pipeline runs on the synthetic default, a
folder of real RGB-D pairs, or a third-party model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch.utils.data import Dataset

from depthsel.api import get_binner, get_dataset, get_model, get_model_info
from depthsel.binning import Binner
from depthsel.checkpoints import atomic_write_bytes
from depthsel.data import CachedDataset
from depthsel.errors import DepthselError
from depthsel.progress import get_console
from depthsel.regularizer import POOLINGS
from depthsel.stream import probe_units

from .config import ExperimentConfig

from .measure import ASSIGNMENTS, Measurement, init_weights_path, measure_model
from .table import aggregate

__all__ = ["ExperimentConfig", "run_experiment", "run_sweep", "fit_binner", "parse_seeds"]


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """``3`` or ``"3"`` -> ``[0, 1, 2]``; ``"0,4,7"`` -> ``[0, 4, 7]``; a list is kept."""
    if isinstance(spec, int):
        values: list[int] = list(range(spec))
    elif isinstance(spec, str):
        text = spec.strip()
        try:
            values = ([int(x) for x in text.split(",") if x.strip()] if "," in text
                      else list(range(int(text))))
        except ValueError:
            raise DepthselError(f"seeds {spec!r}: give a count (3) or a comma list (0,1,2)") from None
    else:
        values = [int(x) for x in spec]
    if not values:
        raise DepthselError(f"seeds {spec!r} selects no seed; give at least one")
    if len(set(values)) != len(values):
        raise DepthselError(f"seeds {spec!r} repeats a seed; repeated seeds are not independent runs")
    return values


def fit_binner(dataset: Dataset[Any], kind: str, num_bins: int, max_images: int = 64) -> Binner:
    """Choose bins from the training depths.

    ``"sid-fit"`` keeps SID spacing but reads its range off the data (1st and
    99.5th percentiles of valid depth); ``"quantile"`` gives every bin the same
    share of training pixels. A fixed 0.75-10 m range (``"sid"``) leaves most
    bins empty on a 0.8-4 m scene.
    """
    n = min(len(dataset), max_images)  # type: ignore[arg-type]
    step = max(1, len(dataset) // n)  # type: ignore[arg-type]
    depths = []
    for i in range(0, step * n, step):
        item = dataset[i]
        depths.append(item["depth"][item["valid"]].double())
    values = torch.cat(depths)
    if values.numel() == 0:
        raise DepthselError("the training set has no valid depth pixel to fit bins on")
    if kind == "quantile":
        return get_binner("quantile", num_bins=num_bins, depths=values)
    if kind == "sid-fit":
        sample = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
        lo = float(torch.quantile(sample, 0.01))
        hi = float(torch.quantile(sample, 0.995))
        return get_binner("sid", num_bins=num_bins, min_depth=max(lo, 0.05), max_depth=hi)
    if kind == "sid":
        return get_binner("sid", num_bins=num_bins)
    raise DepthselError(f"binning must be 'sid-fit', 'quantile' or 'sid', got {kind!r}")


def _units(cfg: ExperimentConfig, info: Any, train_set: Dataset[Any]) -> dict[str, int]:
    # The global seed is set as before, so that later draws do not move.
    torch.manual_seed(0)
    model = get_model(cfg.model, **cfg.model_config)
    return probe_units(model, train_set, list(cfg.layers), info=info)


def environment() -> dict[str, Any]:
    """What a rerun must match to reproduce numbers bit for bit: versions, threads, machine.

    Same seeds give identical numbers only on the same machine with the same
    thread count and library versions; anything else reorders floating-point
    sums, and training amplifies the difference.
    """
    import platform

    import numpy

    from depthsel import __version__

    return {"depthsel": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "device": _device_name()}


def _device_name() -> str:
    """The CUDA card's name when one is visible, else ``"cpu"``."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _compare(cfg: ExperimentConfig, arms: Sequence[tuple[str, float]], progress: bool | None,
             kind: str) -> dict[str, Any]:
    """Train and measure every (label, weight) arm for every seed; aggregate over seeds."""
    if not cfg.seeds:
        raise DepthselError("no seed to run; give at least one")
    if cfg.threads < 0:
        raise DepthselError(f"threads must be >= 0 (0 keeps torch's setting), got {cfg.threads}")
    if cfg.assignment not in ASSIGNMENTS:
        raise DepthselError(f"assignment must be one of {', '.join(ASSIGNMENTS)}; got {cfg.assignment!r}")
    if cfg.pooling not in POOLINGS:
        raise DepthselError(f"pooling must be one of {', '.join(POOLINGS)}; got {cfg.pooling!r}")
    if cfg.init_weights:
        for seed in cfg.seeds:  # every seed's file exists before hours of training start
            init_weights_path(cfg, seed)
    before = torch.get_num_threads()
    if cfg.threads and str(cfg.device).startswith("cpu"):
        torch.set_num_threads(cfg.threads)
    try:
        return _compare_arms(cfg, arms, progress, kind)
    finally:
        torch.set_num_threads(before)


def _compare_arms(cfg: ExperimentConfig, arms: Sequence[tuple[str, float]], progress: bool | None,
                  kind: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    info = get_model_info(cfg.model)
    # Every arm and seed reads the same items: decode/render them once.
    train_set = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.train_data))
    test_set = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.test_data))
    units = _units(cfg, info, train_set)
    binner = fit_binner(train_set, cfg.binning, cfg.num_bins or min(units.values()))
    get_console().print(
        f"[bold]depthsel[/] {cfg.name}: {cfg.model} {cfg.model_config} on {cfg.data} "
        f"({len(train_set)} train / {len(test_set)} test, {cfg.size[0]}x{cfg.size[1]}), layers {cfg.layers} "
        f"({units}), {binner}, {len(cfg.seeds)} seed{'s' if len(cfg.seeds) != 1 else ''} {cfg.seeds}")
    per_seed: dict[str, dict[str, Measurement]] = {}
    for seed in cfg.seeds:
        per_seed[str(seed)] = {
            label: measure_model(cfg, label, weight, seed, info, binner, train_set, test_set, progress)
            for label, weight in arms
        }
    summary: dict[str, Any] = {
        "kind": kind, "config": asdict(cfg), "binner": binner.config(), "units": units,
        "seeds": list(cfg.seeds), "arms": [{"label": lb, "weight": w} for lb, w in arms],
        "environment": environment(),
        "per_seed": {s: {lb: m.to_dict() for lb, m in row.items()} for s, row in per_seed.items()},
    }
    summary.update(aggregate(per_seed, [lb for lb, _ in arms]))
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    from .plots import plot_experiment

    summary["plots"] = [str(p) for p in plot_experiment(summary, run / "plots")]
    atomic_write_bytes(run / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary


def run_experiment(cfg: ExperimentConfig, progress: bool | None = None) -> dict[str, Any]:
    """Baseline (weight 0) and interpretable twin (``cfg.weight``) for every seed.

    Returns
    -------
    dict
        ``table`` (one row per metric: mean, CI and per-seed values of each model
        and the paired difference), ``per_seed``, ``binner``, ``config``; also
        written to ``run_dir/summary.json``.
    """
    return _compare(cfg, [("baseline", 0.0), ("interpretable", cfg.weight)], progress, "experiment")


def run_sweep(cfg: ExperimentConfig, weights: Sequence[float], progress: bool | None = None) -> dict[str, Any]:
    """The accuracy-vs-selectivity trade-off: one arm per selectivity weight, for every seed.

    Weight 0 is the baseline every other arm is paired with; it is added when
    missing.
    """
    ws = sorted({float(w) for w in weights} | {0.0})
    if any(w < 0 for w in ws):
        raise DepthselError(f"selectivity weights must be >= 0, got {sorted(weights)}")
    arms = [("baseline" if w == 0 else f"weight={w:g}", w) for w in ws]
    return _compare(cfg, arms, progress, "sweep")
