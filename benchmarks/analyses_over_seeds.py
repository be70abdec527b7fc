"""Correction, ablation, adversarial and masks over every seed of an experiment, with 95% CIs.

An experiment (``depthsel demo --seeds N`` or :func:`depthsel_plugins.experiments.experiment.run_experiment`)
leaves ``RUN/seedS/{baseline,interpretable}/model.safetensors`` and ``RUN/summary.json``
(the config and the fitted binner). For every seed and both models this script runs the
registered analyzers on the held-out split, with the train-split dissection (the one the
experiment saved, or a fresh one) supplying responses and selectivity:

* ``correction`` (oracle, You et al. Table 3): δ1/RMSE gain from replacing the units by
  their mean training response at the true depth bin;
* ``ablation`` (Fig. 2): cumulative zeroing most/least selective first and in random
  orders, plus each unit alone (is one unit dominant?);
* ``adversarial`` (Fig. 8): IoU of the error region with the units assigned to the
  error-dominant bins, against the other units;
* ``masks`` (Hu et al. 2019): learned binary mask against the Sobel-edge mask of the
  same sparsity, for a small λ sweep; G is trained on the train split.

The per-seed numbers are aggregated with :mod:`depthsel.stats` (mean ± 95% t-CI,
paired interpretable − baseline differences with p, Benjamini-Hochberg over the
claims) by ``analyses_over_seeds_stats.py``. Per-model results are cached in
``OUT/per_seed/`` keyed by the settings and the weights' hash, so a rerun with more
finished seeds only analyses the new ones.

Run::

    python benchmarks/analyses_over_seeds.py RUN_DIR --out runs/analyses_over_seeds/NAME

Without ``summary.json`` (seeds still training) give ``--config FILE``, a JSON of the
experiment's :class:`~depthsel_plugins.experiments.experiment.ExperimentConfig` fields; the binner is then
read from a model's ``config.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import analyses_over_seeds_stats as agg  # noqa: E402

from depthsel import get_analyzer, get_dataset, get_model, get_model_info  # noqa: E402
from depthsel.analysis import AnalysisContext  # noqa: E402
from depthsel.checkpoints import atomic_write_bytes, load_weights  # noqa: E402
from depthsel.data import CachedDataset  # noqa: E402
from depthsel.errors import DepthselError  # noqa: E402
from depthsel.results import load_result  # noqa: E402

MODELS = agg.MODELS


@dataclass
class Settings:
    """What each analysis runs with (small enough for a loaded 2-core CPU)."""

    random_orders: int = 3
    ablation_step: int = 1
    single_unit: bool = True
    epsilon: float = 0.05
    top_bins: int = 3
    quantile: float = 0.8
    masks: bool = True
    mask_lambdas: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0])
    mask_steps: int = 60
    mask_width: int = 4
    mask_lr: float = 1e-3

    def key(self) -> str:
        """Short hash of the settings (part of the cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ loading
def load_experiment(run: Path, config: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The experiment config and the fitted binner config, from ``summary.json`` or ``config``."""
    summary = run / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return data["config"], data["binner"]
    if config is None:
        raise DepthselError(f"{summary} does not exist (yet); pass --config with the experiment's "
                            "config as JSON to analyse the seeds that have finished")
    cfg = json.loads(Path(config).read_text())
    for tcfg in sorted(run.glob("seed*/interpretable/config.json")):
        sel = json.loads(tcfg.read_text()).get("selectivity") or {}
        if sel.get("binner"):
            return cfg, sel["binner"]
    raise DepthselError(f"no seed*/interpretable/config.json under {run} names the binner")


def available_seeds(run: Path, wanted: list[int] | None) -> tuple[list[int], list[int]]:
    """Seeds whose two models are both saved, and the wanted seeds that are not (yet)."""
    found = sorted(int(p.name[4:]) for p in run.glob("seed*") if p.name[4:].isdigit())
    candidates = wanted if wanted is not None else found
    ready = [s for s in candidates if all((run / f"seed{s}" / m / "model.safetensors").is_file() for m in MODELS)]
    return ready, [s for s in candidates if s not in ready]


def datasets(cfg: dict[str, Any]) -> tuple[CachedDataset, CachedDataset]:
    """The experiment's train and held-out splits (decoded once, kept in memory)."""
    size = tuple(cfg["size"])
    return (CachedDataset(get_dataset(cfg["data"], size=size, **cfg["train_data"])),
            CachedDataset(get_dataset(cfg["data"], size=size, **cfg["test_data"])))


def file_hash(path: Path) -> str:
    """SHA-256 prefix of a file (the weights part of the cache key)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_dissection(ctx: AnalysisContext, model_dir: Path, binner: dict[str, Any]) -> Any:
    """The experiment's saved train-split dissection of this model when it covers the layers, else a fresh one."""
    saved = model_dir / "dissection_train"
    if (saved / "result.json").is_file():
        res = load_result(saved)
        if set(ctx.layers) <= set(res.layers):
            return res
    return get_analyzer("dissection", binner=binner, fit_bins_to_units=True, permutations=0,
                        diagnostics=False, split="train").run(ctx)


_RENAMED = {"mean_ds": "argmax_ds", "mean_target_ds": "target_ds"}


def saved_dissection_scalars(model_dir: Path, layers: list[str]) -> dict[str, float]:
    """Selectivity of the hooked layers from the experiment's saved dissections (no compute)."""
    out: dict[str, float] = {}
    for folder, split, names in (("dissection", "test", agg.DISSECTION + ("frac_significant_bh",)),
                                 ("dissection_train", "train", agg.DISSECTION)):
        path = model_dir / folder / "result.json"
        if not path.is_file():
            continue
        splits = json.loads(path.read_text())["data"]["splits"].get(split, {})
        for layer in layers:
            for name in names:
                # Results written after the summary-key rename say argmax_ds / target_ds.
                value = splits.get(layer, {}).get(name, splits.get(layer, {}).get(_RENAMED.get(name, name)))
                if value is not None:
                    out[f"{agg.prefix('dissection', layer, layers)}/{split}/{name}"] = float(value)
    return out


def dominance_scalars(model_dir: Path, layers: list[str], curves: dict[str, Any]) -> dict[str, float]:
    """Who the most important unit is: its train-DS rank and how loud it is (saved dissection; no compute).

    ``top_unit_ds_rank`` is 1 for the least selective unit and K for the most selective;
    ``top_unit_loudness`` is its mean ``|A|`` over bins divided by the median of the other units'.
    """
    saved = model_dir / "dissection_train"
    if not (saved / "result.json").is_file():
        return {}
    dis = load_result(saved)
    out: dict[str, float] = {}
    for layer in layers:
        drops = curves.get(layer, {}).get("single_unit_drop")
        if drops is None or layer not in dis.layers:
            continue
        ds = dis.get(layer, "ds", "train").numpy()
        loud = np.nanmean(dis.get(layer, "R_abs", "train").numpy(), axis=1)
        top = int(np.argmax(drops))
        pre = agg.prefix("ablation", layer, layers)
        out[f"{pre}/top_unit_ds_rank"] = float(np.sum(np.nan_to_num(ds, nan=-1.0) < ds[top]) + 1)
        out[f"{pre}/top_unit_loudness"] = float(loud[top] / np.median(np.delete(loud, top)))
    return out


# ---------------------------------------------------------------- analyses
def correction(ctx: AnalysisContext, dis: Any, protocol: str) -> dict[str, float]:
    """Oracle correction of all hooked layers: clean, corrected and their change."""
    res = get_analyzer("correction", dissection=dis, split="train", protocol=protocol).run(ctx)
    clean, corr = res.data["clean"], res.data["corrected"]["all"]
    return {"correction/delta1_clean": clean["delta1"], "correction/delta1_corrected": corr["delta1"],
            "correction/delta1_gain": corr["delta1"] - clean["delta1"],
            "correction/rmse_clean": clean["rmse"], "correction/rmse_corrected": corr["rmse"],
            "correction/rmse_change": corr["rmse"] - clean["rmse"]}


def _area(steps: np.ndarray, values: np.ndarray) -> float:
    """Mean of a curve over the fraction of units ablated (trapezoid area on [0, 1])."""
    x = steps / steps[-1]
    return float(np.sum((x[1:] - x[:-1]) * (values[1:] + values[:-1]) / 2.0))


def single_unit_drops(ctx: AnalysisContext, layer: str, k: int, protocol: str) -> np.ndarray:
    """δ1 lost when each unit alone is zeroed."""
    from depthsel_plugins.analyses.interventions import evaluate

    common = dict(batch_size=ctx.batch_size, device=ctx.device, protocol=protocol, progress=False)
    clean = evaluate(ctx.model, ctx.info, ctx.dataset, **common)["delta1"]
    drops = []
    for u in range(k):
        keep = torch.ones(k)
        keep[u] = 0.0

        def zero(act: torch.Tensor, keep: torch.Tensor = keep) -> torch.Tensor:
            return act * keep.to(act).view(1, -1, 1, 1)

        drops.append(clean - evaluate(ctx.model, ctx.info, ctx.dataset, fns={layer: zero}, **common)["delta1"])
    return np.asarray(drops)


def ablation(ctx: AnalysisContext, dis: Any, protocol: str, s: Settings,
             seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Cumulative ablation curves (three orders) and scalar summaries per hooked layer."""
    from scipy.stats import spearmanr

    # Random orders differ between experiment seeds (same orders for both models of a seed).
    orders = [1000 * seed + i for i in range(s.random_orders)]
    res = get_analyzer("ablation", dissection=dis, split="train", selectivity="ds", seeds=orders,
                       step=s.ablation_step, protocol=protocol).run(ctx)
    scalars: dict[str, float] = {}
    curves: dict[str, Any] = {}
    for layer in ctx.layers:
        pre = agg.prefix("ablation", layer, ctx.layers)
        steps = res.tensors[f"{layer}/steps"].numpy()
        curves[layer] = {"steps": steps.tolist()}
        for order in agg.ORDERS:
            vals = res.tensors[f"{layer}/{order}"].numpy()
            curves[layer][order] = {"delta1": vals[:, 0].tolist(), "rmse": vals[:, 1].tolist()}
            scalars[f"{pre}/auc_delta1_{order}"] = _area(steps, vals[:, 0])
        for other in ("random", "least_selective_first"):
            scalars[f"{pre}/auc_most_minus_{other.split('_')[0]}"] = (
                scalars[f"{pre}/auc_delta1_most_selective_first"] - scalars[f"{pre}/auc_delta1_{other}"])
        if s.single_unit:
            ds = res.tensors[f"{layer}/ds"].numpy()
            drops = single_unit_drops(ctx, layer, ds.size, protocol)
            full = curves[layer]["most_selective_first"]["delta1"]
            total = full[0] - full[-1]  # δ1 lost with every unit zeroed
            scalars[f"{pre}/top_unit_share"] = float(drops.max() / total) if total > 0 else math.nan
            ok = np.isfinite(ds)
            with warnings.catch_warnings():  # constant drops (a dead layer): rho is NaN, said in the table
                warnings.simplefilter("ignore")
                rho = spearmanr(ds[ok], drops[ok]).statistic if ok.sum() > 2 else math.nan
            scalars[f"{pre}/spearman_ds_importance"] = float(rho) if np.isfinite(rho) else math.nan
            curves[layer]["single_unit_drop"] = drops.tolist()
    return scalars, curves


def adversarial(ctx: AnalysisContext, dis: Any, binner: dict[str, Any], protocol: str,
                s: Settings) -> dict[str, float]:
    """FGSM accuracy drop and IoU of error-bin units against the other units."""
    ctx.assignment = {layer: dis.get(layer, "assigned", "train") for layer in ctx.layers}
    res = get_analyzer("adversarial", binner=binner, epsilon=s.epsilon, top_bins=s.top_bins,
                       quantile=s.quantile, protocol=protocol, figure_index=None).run(ctx)
    out = {"adversarial/delta1_clean": res.data["clean"]["delta1"],
           "adversarial/delta1_adversarial": res.data["adversarial"]["delta1"],
           "adversarial/delta1_drop": res.data["drop"]["delta1"]}
    for layer in ctx.layers:
        pre = agg.prefix("adversarial", layer, ctx.layers)
        rows = [r for r in res.rows() if r["layer"] == layer and not math.isnan(r["mean_iou"])]
        iou = res.tensors[f"{layer}/iou"].numpy()
        assigned = res.tensors[f"{layer}/assigned"].numpy()
        # Percentile of each error-bin unit's IoU among the other units (0.5 = no better than chance).
        ranks = [float((iou[assigned != r["bin"]] < iou[u]).mean())
                 for r in rows for u in np.flatnonzero(assigned == r["bin"])]
        err = float(np.mean([r["mean_iou"] for r in rows])) if rows else math.nan
        other = float(np.mean([r["mean_iou_other_units"] for r in rows])) if rows else math.nan
        out.update({f"{pre}/iou_error_units": err, f"{pre}/iou_other_units": other,
                    f"{pre}/iou_gap": err - other, f"{pre}/iou_rank": float(np.mean(ranks)) if ranks else math.nan,
                    f"{pre}/top_bin_error_share": rows[0]["error_share"] if rows else math.nan})
    return out


def masks(ctx: AnalysisContext, train_set: Any, protocol: str, s: Settings) -> dict[str, float]:
    """Hu's mask network per λ (trained on the train split) against the same-sparsity edge mask."""
    ctx.train_dataset = train_set
    res = get_analyzer("masks", lambdas=s.mask_lambdas, steps=s.mask_steps, width=s.mask_width, lr=s.mask_lr,
                       protocol=protocol, num_overlays=0, store_weights=False).run(ctx)
    out: dict[str, float] = {}
    for row in res.rows():
        pre = f"masks/lambda={row['lambda']:g}"
        out.update({f"{pre}/sparseness": row["sparseness"], f"{pre}/rmse_full": row["rmse_full"],
                    f"{pre}/rmse_binary": row["rmse_binary"], f"{pre}/rmse_edge": row["rmse_edge"],
                    f"{pre}/edge_minus_binary": row["rmse_edge"] - row["rmse_binary"]})
    return out


def analyse_model(cfg: dict[str, Any], binner: dict[str, Any], model_dir: Path, seed: int,
                  data: tuple[Any, Any], s: Settings) -> dict[str, Any]:
    """Every analysis of one trained model; returns its scalars and ablation curves."""
    info = get_model_info(cfg["model"])
    model = get_model(cfg["model"], **cfg["model_config"])
    load_weights(model, model_dir / "model.safetensors")
    model.eval()
    train_set, test_set = data
    layers, protocol = list(cfg["layers"]), cfg.get("protocol", "default")

    def ctx(dataset: Any) -> AnalysisContext:
        return AnalysisContext(model=model, dataset=dataset, info=info, layers=layers, device="cpu",
                               batch_size=int(cfg.get("batch_size", 8)), seed=seed, progress=False)

    dis = train_dissection(ctx(train_set), model_dir, binner)
    scalars = correction(ctx(test_set), dis, protocol)
    abl, curves = ablation(ctx(test_set), dis, protocol, s, seed)
    scalars.update(abl)
    scalars.update(adversarial(ctx(test_set), dis, binner, protocol, s))
    if s.masks:
        scalars.update(masks(ctx(test_set), train_set, protocol, s))
    return {"scalars": scalars, "curves": curves}


def analyse_seed(run: Path, out: Path, cfg: dict[str, Any], binner: dict[str, Any], seed: int,
                 data: tuple[Any, Any], s: Settings) -> dict[str, Any]:
    """Both models of one seed, each read from the cache when its weights and settings match."""
    row: dict[str, Any] = {}
    for label in MODELS:
        model_dir = run / f"seed{seed}" / label
        # Analysed layers enter the key only when they differ from the trained ones (older caches stay valid).
        extra = "" if cfg.get("analysed_layers") is None else "-" + "+".join(cfg["analysed_layers"])
        key = f"{s.key()}{extra}-{file_hash(model_dir / 'model.safetensors')}"
        cache = out / "per_seed" / f"seed{seed}_{label}.json"
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                row[label] = cached["result"]
                continue
        t0 = time.perf_counter()
        result = analyse_model(cfg, binner, model_dir, seed, data, s)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_bytes(cache, json.dumps({"key": key, "result": result}, indent=1).encode())
        print(f"seed {seed} {label}: analysed in {result['seconds']} s", flush=True)
        row[label] = result
    for label in MODELS:  # read fresh every time: cheap, and not part of the cached analyses
        model_dir, layers = run / f"seed{seed}" / label, list(cfg["layers"])
        row[label]["scalars"].update(saved_dissection_scalars(model_dir, layers))
        row[label]["scalars"].update(dominance_scalars(model_dir, layers, row[label]["curves"]))
    return row


# --------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="experiment run directory (summary.json + seedS/)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (JSON, tables, figures)")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (default: every seed with both models)")
    ap.add_argument("--config", type=Path, default=None, help="experiment config JSON when summary.json is absent")
    ap.add_argument("--layers", default=None,
                    help="comma list of layers to analyse instead of the regularised ones (e.g. decode_conv4)")
    ap.add_argument("--random-orders", type=int, default=3)
    ap.add_argument("--ablation-step", type=int, default=1)
    ap.add_argument("--no-single-unit", action="store_true", help="skip the one-unit-at-a-time ablation")
    ap.add_argument("--epsilon", type=float, default=0.05)
    ap.add_argument("--mask-lambdas", default="1,3,5")
    ap.add_argument("--mask-steps", type=int, default=60)
    ap.add_argument("--mask-width", type=int, default=4)
    ap.add_argument("--no-masks", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (keep low on a shared machine)")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Analyse every ready seed, aggregate, write ``OUT/analyses_over_seeds.json``, tables and figures."""
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    s = Settings(random_orders=args.random_orders, ablation_step=args.ablation_step,
                 single_unit=not args.no_single_unit, epsilon=args.epsilon, masks=not args.no_masks,
                 mask_lambdas=[float(x) for x in args.mask_lambdas.split(",") if x.strip()],
                 mask_steps=args.mask_steps, mask_width=args.mask_width)
    cfg, binner = load_experiment(args.run, args.config)
    cfg = dict(cfg, regularised_layers=list(cfg["layers"]))
    if args.layers:
        cfg["layers"] = cfg["analysed_layers"] = [x.strip() for x in args.layers.split(",") if x.strip()]
    wanted = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    seeds, missing = available_seeds(args.run, wanted)
    if not seeds:
        raise DepthselError(f"no seed under {args.run} has both models saved yet (waiting on {missing})")
    data = datasets(cfg)
    per_seed = {str(seed): analyse_seed(args.run, args.out, cfg, binner, seed, data, s) for seed in seeds}
    report = agg.build_report(per_seed, seeds, cfg, asdict(s))
    report.update({"run": str(args.run), "skipped_seeds": missing,
                   "seconds": round(time.perf_counter() - t0, 1)})
    report["figures"] = [str(p) for p in agg.plot_all(report, args.out)]
    atomic_write_bytes(args.out / "analyses_over_seeds.json", json.dumps(report, indent=1).encode())
    tables = agg.markdown(report)
    atomic_write_bytes(args.out / "tables.md", tables.encode())
    print(tables)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except DepthselError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
