"""The tutorial (docs/tutorial.md) as one script: your own model, dissected, then trained to be selective.

Every figure in docs/tutorial.md is written by this script, and the test suite
runs it at a tiny size (tests/examples/test_tutorial.py), so the code in the
tutorial cannot go stale. Regenerate the figures with::

    python examples/tutorial.py --out docs/img/tutorial

Steps (each is a section of the tutorial):

1. list the layers of ``examples/my_unet.py:UNet`` with :func:`depthsel.layers`;
2. dissect the untrained model's ``up1`` layer with :func:`depthsel.dissect`;
3. train a baseline and a twin with the selectivity term (same seed, same data)
   with :class:`depthsel.training.Trainer`;
4. dissect both trained models *with the binning saved by training* (``run=``);
5. write the figures and a small JSON summary.

The data is depthsel's SYNTHETIC scene renderer, so this runs anywhere; the
numbers it prints are from synthetic scenes and one seed, not a result about
real images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

import depthsel
from depthsel.training import SelectivityConfig, TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from my_unet import DEPTHSEL_INFO, UNet  # noqa: E402

__all__ = ["run_tutorial", "main"]

LAYER = "up1"


def _data(size: tuple[int, int], train: int, test: int) -> tuple[Any, Any]:
    train_set = depthsel.get_dataset("synthetic", split="train", num_samples=train, size=size)
    test_set = depthsel.get_dataset("synthetic", split="test", num_samples=test, size=size)
    return train_set, test_set


def _train(label: str, weight: float, train_set: Any, runs: Path, epochs: int, base: int,
           num_bins: int, resume: bool = False) -> Path:
    torch.manual_seed(0)  # both twins start from the same weights
    model = UNet(base=base)
    sel = SelectivityConfig(layers=[LAYER], binner={"name": "sid", "num_bins": num_bins},
                            weight=weight, fit_bins_to_units=True,
                            objective_options={"liveness": 1.0}) if weight else None
    cfg = TrainConfig(name=label, out_dir=str(runs), epochs=epochs, batch_size=8, lr=3e-3,
                      selectivity=sel, checkpoint_every=10_000)
    # resume=True continues (or, when finished, just reloads) a run left in `runs`.
    Trainer(model, DEPTHSEL_INFO, train_set, cfg).fit(resume=resume)
    return cfg.run_dir


def run_tutorial(out: str | Path, *, size: tuple[int, int] = (64, 64), train: int = 96, test: int = 24,
                 epochs: int = 30, base: int = 8, num_bins: int = 16,
                 runs: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run every step and write the figures to ``out`` (training runs to ``runs``, default ``out/runs``)."""
    out = Path(out)
    runs_dir = Path(runs) if runs is not None else out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set = _data(size, train, test)

    # 1. What can be hooked?
    table = depthsel.layers(UNet(base=base), size, pattern="up*")
    (out / "layers.txt").write_text(str(table) + "\n")

    # 2. Dissect the untrained model (binner: SID over the NYU range, fitted to the units).
    torch.manual_seed(0)
    untrained = depthsel.dissect(UNet(base=base), test_set, layers=[LAYER], normalization="imagenet",
                                 binner={"name": "sid", "num_bins": num_bins})

    # 3. Train a baseline and its interpretable twin.
    runs = {label: _train(label, weight, train_set, runs_dir, epochs, base, num_bins, resume)
            for label, weight in (("baseline", 0.0), ("interpretable", 1.0))}

    # 4. Dissect both with exactly the binning the interpretable run saved.
    summary: dict[str, Any] = {"untrained": untrained.summary()["splits"]["test"][LAYER]}
    figures: list[str] = []
    for label, run in runs.items():
        model = UNet(base=base)
        depthsel.load_weights(model, run / "model.safetensors")
        result = depthsel.dissect(model, test_set, layers=[LAYER], run=runs["interpretable"])
        summary[label] = result.summary()["splits"]["test"][LAYER]
        summary[label]["metrics"] = depthsel.training.evaluate(model, DEPTHSEL_INFO, test_set)
        # 5. Figures: the units-by-bins heatmap and four unit curves per model.
        for path in result.save_figures(out / label):
            figures.append(str(path.relative_to(out)))
        result.to_csv(out / label / "units.csv")
    summary["figures"] = sorted(figures)
    summary["settings"] = {"size": list(size), "train": train, "test": test, "epochs": epochs,
                           "base": base, "num_bins": num_bins, "seed": 0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python examples/tutorial.py --out DIR [--tiny]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/img/tutorial", help="folder for figures and summary.json")
    parser.add_argument("--runs", default=None, help="folder for the two training runs (default: OUT/runs)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (what the tests do)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse finished runs in --runs (redraw figures without retraining)")
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"size": (32, 32), "train": 16, "test": 4, "epochs": 1, "base": 4} if args.tiny else {}
    kwargs["runs"] = args.runs
    kwargs["resume"] = args.resume
    summary = run_tutorial(args.out, **kwargs)
    for label in ("untrained", "baseline", "interpretable"):
        s = summary[label]
        print(f"{label:14s} target DS {s['target_ds']:+.3f}  argmax DS {s['argmax_ds']:.3f}  "
              f"peak-on-target {s['peak_on_target']:.2f}  dead {s['dead_units']}")


if __name__ == "__main__":
    main()
