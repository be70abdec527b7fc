"""One arm of an experiment for one seed: train, evaluate with image-bootstrap CIs, dissect, learning curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from depthsel.analysis import AnalysisContext
from depthsel.api import get_analyzer, get_model
from depthsel.binning import Binner
from depthsel.checkpoints import load_weights
from depthsel.consumer import BatchCallback
from depthsel.errors import ConfigError
from depthsel.metrics import DepthMetrics
from depthsel.stats import bootstrap_ci
from depthsel.stream import stream
from depthsel.training import SelectivityConfig, TrainConfig, Trainer

if TYPE_CHECKING:
    from .config import ExperimentConfig

__all__ = ["Measurement", "measure_model", "per_image_metrics", "layer_mean", "brief_layers",
           "dissection_scalars", "dissection_intervals"]

#: Metrics with an image-bootstrap interval per model and seed.
BOOTSTRAP_METRICS = ("rmse", "delta1", "abs_rel")


@dataclass
class Measurement:
    """Everything measured on one model of one seed (scalars are what the table aggregates)."""

    scalars: dict[str, float]
    intervals: dict[str, list[float | None]] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)
    per_bin_error: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return {"scalars": self.scalars, "intervals": self.intervals, "curve": self.curve,
                "per_bin_error": self.per_bin_error, **self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Rebuild from :meth:`to_dict` (a saved summary's ``per_seed`` entry)."""
        known = {"scalars", "intervals", "curve", "per_bin_error"}
        return cls(scalars=data["scalars"], intervals=data.get("intervals", {}), curve=data.get("curve", []),
                   per_bin_error=data.get("per_bin_error", {}),
                   details={k: v for k, v in data.items() if k not in known})


def layer_mean(layers: dict[str, dict[str, Any]], *keys: str) -> float:
    """Mean over hooked layers of the first of ``keys`` each layer reports (NaN when none does)."""
    vals = []
    for v in layers.values():
        for k in keys:
            if v.get(k) is not None:
                vals.append(float(v[k]))
                break
    return sum(vals) / len(vals) if vals else float("nan")


@torch.no_grad()
def per_image_metrics(model: torch.nn.Module, info: Any, dataset: Dataset[Any], protocol: str,
                      batch_size: int, device: str) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Pooled metrics, and the additive per-image metric sums ``[n_images, n_sums]`` for a bootstrap."""
    pooled = DepthMetrics(protocol)
    rows: list[list[float]] = []
    keys: list[str] = []

    def add(view: Any) -> None:
        pred = view.prediction().float()
        for i in range(pred.shape[0]):
            one = DepthMetrics(protocol)
            one.update(pred[i:i + 1], view.depth[i:i + 1], view.valid[i:i + 1])
            sums = one.to_json()["sums"]
            keys[:] = sorted(sums)
            rows.append([float(sums[k]) for k in keys])
            pooled.merge(one)

    stream(model, dataset, {"per_image": BatchCallback(add)}, info=info, batch_size=batch_size, device=device,
           progress=False, description="metrics per image")
    return pooled.compute(), np.asarray(rows, dtype=np.float64), keys


def _metric_intervals(sums: np.ndarray, keys: list[str], protocol: str, resamples: int,
                      seed: int) -> dict[str, list[float | None]]:
    """Percentile-bootstrap CIs over images of the pooled metrics."""
    if resamples <= 0 or len(sums) < 2:
        return {}

    proto = DepthMetrics(protocol).to_json()["protocol"]

    def stat(boot: np.ndarray) -> np.ndarray:
        out = np.empty((boot.shape[0], len(BOOTSTRAP_METRICS)))
        for r in range(boot.shape[0]):
            m = DepthMetrics(protocol).merge({"protocol": proto, "sums": dict(zip(keys, boot[r].tolist()))}).compute()
            out[r] = [m[k] for k in BOOTSTRAP_METRICS]
        return out

    low, high = bootstrap_ci(sums, stat, resamples=resamples, seed=seed)
    return {k: [float(lo), float(hi)] for k, lo, hi in zip(BOOTSTRAP_METRICS, low, high)}


def _dissect(model: torch.nn.Module, info: Any, cfg: ExperimentConfig, binner: Binner, dataset: Dataset[Any],
             split: str, seed: int, permutations: int, diagnostics: bool, progress: bool | None,
             assignment: Any = None) -> Any:
    ctx = AnalysisContext(model=model, dataset=dataset, info=info, layers=list(cfg.layers), device=cfg.device,
                          batch_size=cfg.batch_size, seed=seed, progress=progress)
    return get_analyzer("dissection", binner=binner.config(), fit_bins_to_units=True, permutations=permutations,
                        diagnostics=diagnostics, split=split, assignment=assignment).run(ctx)


ASSIGNMENTS = ("paper", "matched")


def start_assignment(model: torch.nn.Module, info: Any, cfg: ExperimentConfig, binner: Binner,
                     train_set: Dataset[Any], seed: int) -> dict[str, list[int]] | None:
    """The seed's unit-to-bin assignment, fixed before training (``None``: the paper's Eq. 6).

    ``"matched"`` dissects the starting weights on the training split and matches every
    unit to a bin slot near what it already prefers (:func:`depthsel.matched_assignment`).
    Both arms of a seed start from the same weights, so they get the same assignment; the
    held-out split is never read.
    """
    if cfg.assignment not in ASSIGNMENTS:
        raise ConfigError(f"assignment must be one of {', '.join(ASSIGNMENTS)}; got {cfg.assignment!r}")
    if cfg.assignment == "paper":
        return None
    rng = torch.get_rng_state()  # choosing the targets must not change the training run
    try:
        res = _dissect(model, info, cfg, binner, train_set, "train", seed, 0, False, False, assignment="matched")
    finally:
        torch.set_rng_state(rng)
    return {layer: [int(b) for b in res.get(layer, "assigned", "train")] for layer in res.layers}


def _curve_callback(cfg: ExperimentConfig, info: Any, binner: Binner, train_set: Dataset[Any],
                    test_set: Dataset[Any], seed: int, assignment: dict[str, list[int]] | None = None) -> Any:
    """Adds held-out RMSE and train/held-out target DS to the history every ``curve_every`` epochs."""

    def callback(trainer: Trainer, entry: dict[str, Any]) -> None:
        last = trainer.step >= trainer.total_steps
        if cfg.curve_every <= 0 or (entry["epoch"] % cfg.curve_every and not last):
            return
        rng = torch.get_rng_state()  # measuring must not change the training run
        try:
            metrics, _, _ = per_image_metrics(trainer.model, info, test_set, cfg.protocol, cfg.batch_size,
                                              cfg.device)
            point: dict[str, Any] = {"epoch": entry["epoch"], "rmse": metrics["rmse"], "delta1": metrics["delta1"]}
            for split, ds in (("train", train_set), ("test", test_set)):
                res = _dissect(trainer.model, info, cfg, binner, ds, split, seed, 0, False, False, assignment)
                layers = res.summary()["splits"][split]
                point[f"target_ds_{split}"] = layer_mean(layers, "target_ds", "mean_target_ds")
                point[f"peak_on_target_{split}"] = layer_mean(layers, "peak_on_target")
            entry["curve"] = point
        finally:
            torch.set_rng_state(rng)

    return callback


def init_weights_path(cfg: ExperimentConfig, seed: int) -> Path:
    """The weights file seed ``seed`` starts from; a missing one is a one-line error before any training."""
    if cfg.init_weights is None:
        raise ConfigError("this experiment starts from random weights (init_weights is None)")
    try:
        path = Path(cfg.init_weights.format(seed=seed))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"init_weights {cfg.init_weights!r}: only {{seed}} may be substituted ({exc})") from exc
    if not path.is_file():
        raise ConfigError(f"init_weights for seed {seed}: {str(path)!r} is not a file; train or copy it first")
    return path


def measure_model(cfg: ExperimentConfig, label: str, weight: float, seed: int, info: Any, binner: Binner,
                  train_set: Dataset[Any], test_set: Dataset[Any], progress: bool | None) -> Measurement:
    """Train one arm from the seed's initial weights, then measure it on both splits."""
    torch.manual_seed(seed)  # every arm of a seed starts from the same weights
    model = get_model(cfg.model, **cfg.model_config)
    if cfg.init_weights:
        load_weights(model, init_weights_path(cfg, seed))
    run = cfg.run_dir / f"seed{seed}" / label
    assigned = start_assignment(model, info, cfg, binner, train_set, seed)
    sel = SelectivityConfig(layers=list(cfg.layers), binner=binner.config(), objective=cfg.objective,
                            weight=weight, fit_bins_to_units=True, warmup_steps=cfg.warmup_steps,
                            objective_options=dict(cfg.objective_options), assignment=assigned,
                            pooling=cfg.pooling)
    tcfg = TrainConfig(name=label, out_dir=str(run.parent), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr=cfg.lr, loss=cfg.loss, seed=seed, device=cfg.device, selectivity=sel if weight else None,
                       eval_protocol=cfg.protocol, checkpoint_every=10_000)
    history = Trainer(model, info, train_set, tcfg,
                      epoch_callbacks=[_curve_callback(cfg, info, binner, train_set, test_set, seed, assigned)]
                      ).fit(resume=False)
    metrics, sums, keys = per_image_metrics(model, info, test_set, cfg.protocol, cfg.batch_size, cfg.device)
    test_res = _dissect(model, info, cfg, binner, test_set, "test", seed, cfg.permutations, True, progress,
                        assigned)
    train_res = _dissect(model, info, cfg, binner, train_set, "train", seed, 0, False, progress, assigned)
    test_res.save(run / "dissection")
    train_res.save(run / "dissection_train")
    layers = test_res.data["splits"]["test"]
    tlayers = train_res.data["splits"]["train"]
    scalars = dissection_scalars(layers, tlayers)
    scalars.update(delta1=metrics["delta1"], rmse=metrics["rmse"], abs_rel=metrics["abs_rel"])
    intervals = _metric_intervals(sums, keys, cfg.protocol, cfg.bootstrap, seed)
    intervals.update(dissection_intervals(layers))
    curve = [e["curve"] for e in history["epochs"] if "curve" in e]
    plots: list[str] = []
    if seed == cfg.seeds[0]:  # figures of one seed are enough to look at; numbers cover all seeds
        plots = [str(p) for p in test_res.save_figures(run / "plots")]
        fmaps = getattr(test_res, "plot_feature_maps", None)
        if callable(fmaps):
            plots += [str(p) for p in fmaps(model, info, test_set, run / "plots", device=cfg.device)]
    return Measurement(scalars=scalars, intervals=intervals, curve=curve,
                       per_bin_error={n: v.get("per_bin_error") for n, v in layers.items()},
                       details={"metrics": metrics, "dissection": brief_layers(layers), "dissection_train": brief_layers(tlayers),
                                "plots": plots, "run_dir": str(run)})


def brief_layers(layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A layer summary without the per-bin error table (kept once, under ``per_bin_error``)."""
    return {n: {k: v for k, v in d.items() if k != "per_bin_error"} for n, d in layers.items()}


def dissection_intervals(layers: dict[str, dict[str, Any]]) -> dict[str, list[float | None]]:
    """Image-bootstrap intervals of target DS and peak-on-target (single-layer dissections only)."""
    out: dict[str, list[float | None]] = {}
    if len(layers) == 1:
        only = next(iter(layers.values()))
        for key in ("target_ds_ci", "peak_on_target_ci"):
            if only.get(key) is not None:
                out[key[:-3]] = only[key]
    return out


def dissection_scalars(layers: dict[str, dict[str, Any]], tlayers: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The per-model selectivity numbers of the table, averaged over hooked layers."""
    return {
        "argmax_ds": layer_mean(layers, "argmax_ds", "mean_ds"),
        "target_ds": layer_mean(layers, "target_ds", "mean_target_ds"),
        "peak_on_target": layer_mean(layers, "peak_on_target"),
        "near_target": layer_mean(layers, "near_target"),
        "dead_units": float(sum(int(v["dead_units"]) for v in layers.values())),
        "pred_target_ds": layer_mean(layers, "pred_target_ds"),
        "pred_peak_on_target": layer_mean(layers, "pred_peak_on_target"),
        "frac_significant_bh": layer_mean(layers, "frac_significant_bh"),
        "target_ds_train": layer_mean(tlayers, "target_ds", "mean_target_ds"),
        "peak_on_target_train": layer_mean(tlayers, "peak_on_target"),
    }
