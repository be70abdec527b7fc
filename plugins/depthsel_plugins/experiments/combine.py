"""Combine experiment runs made on different seeds (another process, machine or GPU) into one summary.

Seeds are independent, so they can run anywhere and be pooled afterwards, as
long as everything else about the runs is the same: the combined table is then
exactly what one run over all seeds would have printed. What "the same" means
is checked, not assumed: configurations must agree except for the run name,
folder and seeds, the fitted bins must be identical, and no seed may appear twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from depthsel.checkpoints import atomic_write_bytes
from depthsel.errors import DepthselError

from .measure import Measurement
from .table import aggregate

__all__ = ["combine_runs"]

#: Configuration keys allowed to differ between combined runs (where and how fast a seed ran is not
#: part of the experiment; each run's environment is kept in the combined summary).
_FREE_KEYS = {"name", "out_dir", "seeds", "threads", "device"}


def _load(run: Path) -> dict[str, Any]:
    path = run / "summary.json" if run.is_dir() else run
    if not path.is_file():
        raise DepthselError(f"{str(run)!r} holds no summary.json; pass experiment run directories")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DepthselError(f"{str(path)!r} is not a valid summary ({exc})") from None
    if not isinstance(data, dict) or "per_seed" not in data or "arms" not in data:
        raise DepthselError(f"{str(path)!r} is not an experiment summary (no per_seed/arms); rerun it with "
                            "this version of depthsel")
    return data


def _compared_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config keys that must agree, a key the run predates counting as its default.

    A summary written before an option existed (``pooling``, say) ran with the option's
    default behaviour; it combines with a newer run that states that default.
    """
    import dataclasses

    from .config import ExperimentConfig

    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
                for f in dataclasses.fields(ExperimentConfig)}
    full = {**json.loads(json.dumps(defaults, default=str)), **config}  # JSON types, as a summary holds
    return {k: v for k, v in full.items() if k not in _FREE_KEYS}


def combine_runs(runs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Pool the seeds of several runs of the same experiment; writes ``out_dir/summary.json`` and plots."""
    if len(runs) < 2:
        raise DepthselError("give at least two run directories to combine")
    loaded = [_load(Path(r)) for r in runs]
    first = loaded[0]
    cfg0 = _compared_config(first["config"])
    for run, data in zip(runs[1:], loaded[1:]):
        cfg = _compared_config(data["config"])
        diff = sorted(k for k in set(cfg) | set(cfg0) if cfg.get(k) != cfg0.get(k))
        if diff:
            raise DepthselError(f"{str(run)!r} differs from {str(runs[0])!r} in {diff}; only runs of the same "
                                "experiment (other seeds) can be combined")
        if data["binner"] != first["binner"] or data["arms"] != first["arms"] or data["kind"] != first["kind"]:
            raise DepthselError(f"{str(run)!r} has other bins or arms than {str(runs[0])!r}; not combinable")
    per_seed: dict[str, dict[str, Measurement]] = {}
    for run, data in zip(runs, loaded):
        for seed, arms in data["per_seed"].items():
            if seed in per_seed:
                raise DepthselError(f"seed {seed} appears twice (again in {str(run)!r}); repeated seeds are "
                                    "not independent runs")
            per_seed[seed] = {label: Measurement.from_dict(m) for label, m in arms.items()}
    order = sorted(per_seed, key=int)
    per_seed = {s: per_seed[s] for s in order}
    labels = [a["label"] for a in first["arms"]]
    summary = {k: v for k, v in first.items() if k not in ("per_seed", "table", "plots", "seconds")}
    summary["config"] = dict(first["config"], seeds=[int(s) for s in order])
    summary["seeds"] = [int(s) for s in order]
    summary["combined_from"] = [str(r) for r in runs]
    # Runs from other machines are combinable; where each came from stays on record.
    summary["environment"] = [d.get("environment") for d in loaded]
    summary["per_seed"] = {s: {lb: m.to_dict() for lb, m in arms.items()} for s, arms in per_seed.items()}
    summary.update(aggregate(per_seed, labels))
    summary["seconds"] = round(sum(float(d.get("seconds", 0.0)) for d in loaded), 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .plots import plot_experiment

    summary["plots"] = [str(p) for p in plot_experiment(summary, out / "plots")]
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
