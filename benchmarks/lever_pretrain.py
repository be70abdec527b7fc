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

``val`` and ``heldout`` also take ExperimentConfig fields as JSON after ``SCENES`` (a lever on
top of the recipe): ``val 0,1,2 val_warm runs_pre 2000 '{"warmup_steps": 200}'``.
``pretrain`` takes optional ``SCENES EPOCHS`` and ``val``/``heldout`` an optional ``SCENES``
(default 2,000 and 5): ``pretrain 0,1,2 runs_pre 5000 2`` pretrains on 5,000 scenes for the
same 1,250 steps into ``OUT/pre_syn5000/``. A WIDTH after them pretrains another width:
``pretrain 0,1,2 runs_pre 2000 5 1.0`` writes ``OUT/pre_syn_w1/``; its ``val`` run names the width
and the weights in the JSON: ``'{"model_config": {"width": 1.0}, "init_weights":
"runs_pre/pre_syn_w1/seed{seed}/model.safetensors"}'``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from depthsel.api import get_dataset, get_model, get_model_info
from depthsel.training import TrainConfig, Trainer
from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

ROOT = "../shared/data/7scenes_redkitchen"
SIZE = (64, 96)


def pre_path(scenes: int, width: float = 0.5) -> str:
    """Where seed {seed}'s pretrained weights live (the 2,000-scene, width-0.5 recipe keeps its old folder)."""
    folder = ("pre_syn" if scenes == 2000 else f"pre_syn{scenes}") + ("" if width == 0.5 else f"_w{width:g}")
    return folder + "/seed{seed}/model.safetensors"


def pretrain(seeds: list[int], out: Path, scenes: int = 2000, epochs: int = 5, width: float = 0.5) -> None:
    import torch

    torch.set_num_threads(1)
    data = get_dataset("synthetic", size=SIZE, split="train", seed=7, num_samples=scenes)
    for seed in seeds:
        if (out / pre_path(scenes, width).format(seed=seed)).is_file():
            continue
        torch.manual_seed(seed)
        model = get_model("fastdepth", width=width)
        cfg = TrainConfig(name=f"seed{seed}", out_dir=str(out / Path(pre_path(scenes, width)).parts[0]), epochs=epochs,
                          batch_size=8, lr=1e-2, seed=seed, checkpoint_every=10_000)
        Trainer(model, get_model_info("fastdepth"), data, cfg).fit(resume=False)


def config(name: str, out: Path, seeds: list[int], frames: tuple[str, str], permutations: int,
           scenes: int = 2000) -> ExperimentConfig:
    return ExperimentConfig(name=name, out_dir=str(out), data="folder",
                            train_data={"root": ROOT, "frames": frames[0]}, test_data={"root": ROOT, "frames": frames[1]},
                            size=SIZE, epochs=60, binning="quantile", num_bins=4, seeds=seeds, curve_every=0,
                            permutations=permutations, init_weights=str(out / pre_path(scenes)),
                            # Width 0.5 as in rounds 4-5 (the default is 1.0 since round 7); the
                            # width-1.0 recipe passes its model_config and weights as a lever.
                            model_config={"width": 0.5})


def with_lever(cfg: ExperimentConfig, overrides: str | None) -> ExperimentConfig:
    """A lever on top of the recipe: ExperimentConfig fields as JSON, e.g. '{"warmup_steps": 200}'."""
    for key, value in (json.loads(overrides) if overrides else {}).items():
        if not hasattr(cfg, key):
            raise SystemExit(f"ExperimentConfig has no field {key!r}")
        setattr(cfg, key, value)
    return cfg


def main(argv: list[str]) -> None:
    step = argv[0]
    if step == "pretrain":  # pretrain SEEDS OUT [SCENES EPOCHS [WIDTH]]
        extra: list[float] = [int(v) for v in argv[3:5]] + [float(v) for v in argv[5:6]]
        pretrain([int(s) for s in argv[1].split(",")], Path(argv[2]), *extra)  # type: ignore[arg-type]
    elif step == "val":  # val SEEDS NAME OUT [SCENES [JSON]]
        seeds, name, out = [int(s) for s in argv[1].split(",")], argv[2], Path(argv[3])
        scenes = int(argv[4]) if len(argv) > 4 else 2000
        cfg = config(name, out, seeds, ("0:60", "60:80"), 0, scenes)
        run_experiment(with_lever(cfg, argv[5] if len(argv) > 5 else None), progress=False)
    elif step == "heldout":  # heldout {end|start} SEEDS NAME OUT [SCENES [JSON]]
        frames = {"end": ("0:80", "80:100"), "start": ("20:100", "0:20")}[argv[1]]
        seeds, name, out = [int(s) for s in argv[2].split(",")], argv[3], Path(argv[4])
        scenes = int(argv[5]) if len(argv) > 5 else 2000
        cfg = config(name, out, seeds, frames, 199, scenes)
        run_experiment(with_lever(cfg, argv[6] if len(argv) > 6 else None), progress=False)
    else:
        raise SystemExit(f"unknown step {step!r}: pretrain, val or heldout")


if __name__ == "__main__":
    main(sys.argv[1:])
