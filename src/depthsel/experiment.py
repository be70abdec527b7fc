"""The main job: train a baseline and its interpretable twin, dissect both, compare.

Both models start from the same seed, see the same batches in the same order
and differ only in the selectivity term, so any difference in the final table
comes from that term. Everything resolves through the plugin registry (models,
datasets, binners, the ``dissection`` analyzer), so the same pipeline runs on
the synthetic default, a folder of real RGB-D pairs, or a third-party model.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .analysis import AnalysisContext
from .api import get_analyzer, get_binner, get_dataset, get_model, get_model_info
from .binning import Binner
from .checkpoints import atomic_write_bytes
from .data import CachedDataset
from .errors import DepthselError
from .progress import get_console
from .training import SelectivityConfig, TrainConfig, Trainer, evaluate

__all__ = ["ExperimentConfig", "run_experiment", "fit_binner", "format_table"]


@dataclass
class ExperimentConfig:
    """Configuration of a baseline-vs-interpretable comparison.

    ``data`` is a registry name; ``train_data``/``test_data`` are keyword
    options of its factory for the two splits (for ``folder``: ``root`` and
    ``frames``; for ``synthetic``: ``split`` and ``num_samples``).
    """

    name: str = "demo"
    out_dir: str = "runs"
    data: str = "synthetic"
    train_data: dict[str, Any] = field(default_factory=lambda: {"split": "train", "num_samples": 192})
    test_data: dict[str, Any] = field(default_factory=lambda: {"split": "test", "num_samples": 48})
    size: tuple[int, int] = (64, 96)
    model: str = "fastdepth"
    model_config: dict[str, Any] = field(default_factory=lambda: {"width": 0.5})
    layers: list[str] = field(default_factory=lambda: ["decode_conv5"])
    binning: str = "sid-fit"
    num_bins: int | None = None
    objective: str = "assign"
    # The liveness hinge (see SelectivityObjective) keeps units from dying; on
    # 7-Scenes it took dead units from 12/16 to 0 (docs/results.md).
    objective_options: dict[str, Any] = field(default_factory=lambda: {"liveness": 1.0})
    weight: float = 1.0
    warmup_steps: int = 0
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-2
    loss: str = "l1"
    seed: int = 0
    device: str = "cpu"
    protocol: str = "default"
    permutations: int = 0

    @property
    def run_dir(self) -> Path:
        """``out_dir/name``."""
        return Path(self.out_dir) / self.name


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


def _units(model: torch.nn.Module, info: Any, layer: str, size: tuple[int, int], extra: list[str]) -> int:
    from .capture import Capture

    batch = {"image": torch.zeros(1, 3, *size)}
    for name in extra:
        batch[name] = torch.zeros(1, 1, *size)
    with torch.no_grad(), Capture(model, [layer]) as cap:
        model.eval()
        info.forward(model, batch)
    return int(cap.outputs[layer].shape[1])


def _layer_mean(layers: dict[str, dict[str, Any]], key: str) -> float:
    """Mean of one summary number over the hooked layers (NaN when none report it)."""
    vals = [float(v[key]) for v in layers.values() if v.get(key) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def format_table(rows: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The comparison as a list of ``{metric, baseline, interpretable}`` rows.

    Accuracy and selectivity rows are on the test split; the last two rows
    repeat target DS and peak-on-target on the training split.
    """
    keys = [("delta1", "δ1 ↑"), ("rmse", "RMSE ↓"), ("abs_rel", "AbsRel ↓"), ("mean_ds", "mean DS ↑"),
            ("target_ds", "target DS ↑"), ("peak_on_target", "peak-on-target ↑"), ("dead_units", "dead units ↓"),
            ("target_ds_train", "target DS, train split ↑"), ("peak_on_target_train", "peak-on-target, train split ↑")]
    return [{"metric": label, **{m: rows[m].get(k) for m in rows}} for k, label in keys]


def run_experiment(cfg: ExperimentConfig, progress: bool | None = None) -> dict[str, Any]:
    """Train both models, evaluate and dissect them on the test split, write plots.

    Returns
    -------
    dict
        ``{"table": [...], "models": {...}, "binner": {...}, "config": {...}}``,
        also written to ``run_dir/summary.json``.
    """
    t0 = time.perf_counter()
    run = cfg.run_dir
    run.mkdir(parents=True, exist_ok=True)
    info = get_model_info(cfg.model)
    # Both models read the same items every epoch: decode/render them once.
    train_set = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.train_data))
    test_set = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.test_data))
    def build_model() -> torch.nn.Module:
        torch.manual_seed(cfg.seed)  # both twins start from the same weights
        return get_model(cfg.model, **cfg.model_config)

    models = {"baseline": build_model(), "interpretable": build_model()}
    extra = list(info.extra_inputs)
    units = {layer: _units(models["baseline"], info, layer, tuple(cfg.size), extra) for layer in cfg.layers}
    num_bins = cfg.num_bins or min(units.values())
    binner = fit_binner(train_set, cfg.binning, num_bins)
    console = get_console()
    console.print(f"[bold]depthsel[/] {cfg.name}: {cfg.model} {cfg.model_config} on {cfg.data} "
                  f"({len(train_set)} train / {len(test_set)} test, {cfg.size[0]}x{cfg.size[1]}), "
                  f"layers {cfg.layers} ({units}), {binner}")
    summary: dict[str, Any] = {"config": asdict(cfg), "binner": binner.config(), "units": units, "models": {}}
    rows: dict[str, dict[str, float]] = {}
    for label, weight in (("baseline", 0.0), ("interpretable", cfg.weight)):
        model = models[label]
        sel = SelectivityConfig(layers=list(cfg.layers), binner=binner.config(), objective=cfg.objective,
                                weight=weight, fit_bins_to_units=True, warmup_steps=cfg.warmup_steps,
                                objective_options=dict(cfg.objective_options))
        tcfg = TrainConfig(name=label, out_dir=str(run), epochs=cfg.epochs, batch_size=cfg.batch_size,
                           lr=cfg.lr, loss=cfg.loss, seed=cfg.seed, device=cfg.device,
                           selectivity=sel if weight else None, eval_protocol=cfg.protocol,
                           checkpoint_every=10_000)
        Trainer(model, info, train_set, tcfg).fit(resume=False)
        metrics = evaluate(model, info, test_set, protocol=cfg.protocol, batch_size=cfg.batch_size,
                           device=cfg.device)

        def dissect(dataset: Dataset[Any], split: str, permutations: int) -> Any:
            ctx = AnalysisContext(model=model, dataset=dataset, info=info, layers=list(cfg.layers),
                                  device=cfg.device, batch_size=cfg.batch_size, seed=cfg.seed,
                                  progress=progress)
            result = get_analyzer("dissection", binner=binner.config(), fit_bins_to_units=True,
                                  permutations=permutations, split=split).run(ctx)
            result.save(run / label / ("dissection" if split == "test" else f"dissection_{split}"))
            return result

        result = dissect(test_set, "test", cfg.permutations)
        # The training split too: the gap between the two shows whether the
        # units' depth code generalises or was fitted to the training frames.
        tsum = dissect(train_set, "train", 0).summary()["splits"]["train"]
        plots = result.plot(run / label / "plots")
        fmaps = getattr(result, "plot_feature_maps", None)
        if callable(fmaps):
            plots += fmaps(model, info, test_set, run / label / "plots", device=cfg.device)
        dsum = result.summary()["splits"]
        layers = dsum["test"]
        rows[label] = {
            "delta1": metrics["delta1"], "rmse": metrics["rmse"], "abs_rel": metrics["abs_rel"],
            "mean_ds": _layer_mean(layers, "argmax_ds"), "target_ds": _layer_mean(layers, "target_ds"),
            "peak_on_target": _layer_mean(layers, "peak_on_target"),
            "dead_units": sum(int(v["dead_units"]) for v in layers.values()),
            "target_ds_train": _layer_mean(tsum, "target_ds"),
            "peak_on_target_train": _layer_mean(tsum, "peak_on_target"),
        }
        summary["models"][label] = {"metrics": metrics, "dissection": dsum, "dissection_train": tsum,
                                    "plots": [str(p) for p in plots]}
    summary["table"] = format_table(rows)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_bytes(run / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
