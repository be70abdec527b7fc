"""Retrain an experiment's interpretable twins with the selectivity term at other layers.

The baseline arm of an experiment (selectivity weight 0) has no selectivity term, so it
does not depend on the regularised layer: with the same seed it starts from the same
weights and sees the same batches. This script therefore copies each seed's baseline
from an existing experiment and trains only the interpretable arm, regularised at
``--layers``, with everything else from the source's ``summary.json``. The number of
bins follows the new layer (``K`` quantile/SID bins for ``K`` units, as ``depthsel demo``
does). The result is a run directory that ``analyses_over_seeds.py`` reads like any other.

Run::

    python benchmarks/retrain_at_layer.py /work/runs_results/7s_end --layers decode_conv4 \\
        --out runs --name 7s_end_reg4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from depthsel import get_dataset, get_model_info
from depthsel.checkpoints import atomic_write_bytes
from depthsel.data import CachedDataset
from depthsel.errors import DepthselError
from depthsel_plugins.experiments.experiment import ExperimentConfig, fit_binner
from depthsel_plugins.experiments.measure import measure_model


def units_of(cfg: ExperimentConfig) -> dict[str, int]:
    """Channels of each hooked layer, from one forward pass of a fresh model."""
    from depthsel import get_model
    from depthsel.capture import Capture

    model = get_model(cfg.model, **cfg.model_config).eval()
    info = get_model_info(cfg.model)
    batch = {"image": torch.zeros(1, 3, *cfg.size)}
    with torch.no_grad(), Capture(model, list(cfg.layers)) as cap:
        info.forward(model, batch)
    return {name: int(t.shape[1]) for name, t in cap.outputs.items()}


def source_config(source: Path, layers: list[str], out: str, name: str,
                  seeds: list[int] | None) -> ExperimentConfig:
    """The source experiment's config with new layers, run directory and seeds."""
    path = source / "summary.json"
    if not path.is_file():
        raise DepthselError(f"{path} does not exist; retrain from a finished experiment")
    raw: dict[str, Any] = json.loads(path.read_text())["config"]
    known = {f.name for f in fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in raw.items() if k in known})
    cfg.size = tuple(cfg.size)  # type: ignore[assignment]
    cfg.layers, cfg.out_dir, cfg.name = list(layers), out, name
    cfg.seeds = list(seeds) if seeds is not None else list(cfg.seeds)
    cfg.curve_every = 0  # the learning curve is not needed by the analyses
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Copy the baselines, train the interpretable twins, write ``summary.json``."""
    torch.set_num_threads(max(1, args.threads))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    cfg = source_config(args.source, [x.strip() for x in args.layers.split(",") if x.strip()],
                        str(args.out), args.name, seeds)
    train = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.train_data))
    test = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.test_data))
    binner = fit_binner(train, cfg.binning, cfg.num_bins or min(units_of(cfg).values()))
    info = get_model_info(cfg.model)
    per_seed: dict[str, Any] = {}
    for seed in cfg.seeds:
        src = args.source / f"seed{seed}" / "baseline" / "model.safetensors"
        if not src.is_file():
            raise DepthselError(f"{src} is missing; the source experiment has no baseline for seed {seed}")
        dst = cfg.run_dir / f"seed{seed}" / "baseline"
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst / "model.safetensors")
        m = measure_model(cfg, "interpretable", cfg.weight, seed, info, binner, train, test, False)
        per_seed[str(seed)] = {"interpretable": {"scalars": m.scalars}}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.scalars.items()), flush=True)
    summary = {"kind": "retrain_at_layer", "source": str(args.source), "config": asdict(cfg),
               "binner": binner.config(), "seeds": cfg.seeds, "per_seed": per_seed}
    atomic_write_bytes(cfg.run_dir / "summary.json", json.dumps(summary, indent=1, default=str).encode())
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="finished experiment (summary.json + seedS/baseline/)")
    ap.add_argument("--layers", required=True, help="comma list of layers to regularise, e.g. decode_conv4")
    ap.add_argument("--out", type=Path, default=Path("runs"))
    ap.add_argument("--name", required=True)
    ap.add_argument("--seeds", default=None, help="comma list (default: the source's seeds)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        run(args)
    except DepthselError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
