"""Issue 12 lever: pretrain on many synthetic scenes, then fine-tune on 7-Scenes.

Three steps, each one process (``OMP_NUM_THREADS=1``):

``python benchmarks/lever_pretrain.py pretrain SEEDS OUT``
    For every seed, a plain FastDepth (width 0.5, weight 0) trained on 2,000 synthetic
    scenes at 64x96 for 5 epochs (1,250 steps, lr 1e-2, the experiment's recipe) into
    ``OUT/pre_syn/seed{s}/model.safetensors``. No 7-Scenes frame is read.
``python benchmarks/lever_pretrain.py val SEEDS NAME OUT``
    The validation run of ``benchmarks/lever_select.py 7s 4`` (train frames 0-59, validate
    60-79, 4 quantile bins, 60 epochs) with both arms of each seed starting from the seed's
    pretrained weights. Compared with ``sel_7s_nb4`` by ``benchmarks/lever_select_table.py``
    under its fixed rule; frames 80-99 are not read.
``python benchmarks/lever_pretrain.py heldout {end|start} SEEDS NAME OUT``
    Only if the lever wins on validation: the held-out runs of ``benchmarks/heldout_bins.py``
    from the pretrained weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

from depthsel.api import get_dataset, get_model, get_model_info
from depthsel.training import TrainConfig, Trainer
from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

ROOT = "../shared/data/7scenes_redkitchen"
SIZE = (64, 96)
PRE = "pre_syn/seed{seed}/model.safetensors"


def pretrain(seeds: list[int], out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    data = get_dataset("synthetic", size=SIZE, split="train", seed=7, num_samples=2000)
    for seed in seeds:
        if (out / PRE.format(seed=seed)).is_file():
            continue
        torch.manual_seed(seed)
        model = get_model("fastdepth", width=0.5)
        cfg = TrainConfig(name=f"seed{seed}", out_dir=str(out / "pre_syn"), epochs=5, batch_size=8, lr=1e-2,
                          seed=seed, checkpoint_every=10_000)
        Trainer(model, get_model_info("fastdepth"), data, cfg).fit(resume=False)


def config(name: str, out: Path, seeds: list[int], frames: tuple[str, str], permutations: int) -> ExperimentConfig:
    return ExperimentConfig(name=name, out_dir=str(out), data="folder",
                            train_data={"root": ROOT, "frames": frames[0]}, test_data={"root": ROOT, "frames": frames[1]},
                            size=SIZE, epochs=60, binning="quantile", num_bins=4, seeds=seeds, curve_every=0,
                            permutations=permutations, init_weights=str(out / PRE))


def main(argv: list[str]) -> None:
    step = argv[0]
    if step == "pretrain":
        pretrain([int(s) for s in argv[1].split(",")], Path(argv[2]))
    elif step == "val":
        seeds, name, out = [int(s) for s in argv[1].split(",")], argv[2], Path(argv[3])
        run_experiment(config(name, out, seeds, ("0:60", "60:80"), 0), progress=False)
    elif step == "heldout":
        frames = {"end": ("0:80", "80:100"), "start": ("20:100", "0:20")}[argv[1]]
        seeds, name, out = [int(s) for s in argv[2].split(",")], argv[3], Path(argv[4])
        run_experiment(config(name, out, seeds, frames, 199), progress=False)
    else:
        raise SystemExit(f"unknown step {step!r}: pretrain, val or heldout")


if __name__ == "__main__":
    main(sys.argv[1:])
