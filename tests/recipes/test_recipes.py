"""The papers' recipes: paper values, the schedule, the data pipeline, and tiny end-to-end runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from depthsel import get_binner, get_model, get_model_info
from depthsel.errors import CheckpointError
from depthsel.regularizer import REGULARIZER_PRESETS
from depthsel.results import load_result
from depthsel_plugins.recipes import FASTDEPTH2021, HU2019, RECIPES, YOU2021, get_recipe
from depthsel_plugins.recipes.run import (
    RecipeTrainer,
    RunOptions,
    build_recipe_model,
    build_splits,
    train_config,
)

ROOT = Path(__file__).resolve().parents[2]
ENV = {"COLUMNS": "120", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}


# ------------------------------------------------------------------ helpers
def write_densedepth(root: Path, n_train: int = 4, n_test: int = 2, size: tuple[int, int] = (480, 640)) -> Path:
    """A tiny NYU folder in the DenseDepth layout: 8-bit train depth (x/255*10 m), 16-bit mm test depth."""
    rng = np.random.default_rng(0)
    h, w = size
    ramp = np.linspace(1.0, 8.0, w, dtype=np.float32)[None].repeat(h, 0)
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / "data" / f"nyu2_{split}"
        folder.mkdir(parents=True)
        rows = []
        for i in range(n):
            depth = np.roll(ramp, 40 * i, axis=1)
            shade = (255 * (1 - depth / 9.0)).astype(np.uint8)
            rgb = np.stack([shade, rng.integers(0, 255, (h, w), dtype=np.uint8), shade[:, ::-1]], -1)
            Image.fromarray(rgb).save(folder / f"{i}_rgb.png")
            if split == "train":
                Image.fromarray((depth / 10.0 * 255).astype(np.uint8)).save(folder / f"{i}_depth.png")
            else:
                Image.fromarray((depth * 1000).astype(np.uint16)).save(folder / f"{i}_depth.png")
            rows.append(f"data/nyu2_{split}/{i}_rgb.png,data/nyu2_{split}/{i}_depth.png")
        (root / "data" / f"nyu2_{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_densedepth(tmp_path_factory.mktemp("nyu"))


def plugin_app() -> typer.Typer:
    """A fresh application holding the plugin commands (the global one stays untouched)."""
    from depthsel.cli import add_plugin_commands

    app = typer.Typer()
    app.command("probe")(lambda: None)  # two commands make typer keep subcommand names
    assert "reproduce" in add_plugin_commands(app)
    return app


def invoke(args: list[Any]) -> Any:
    return CliRunner(env=ENV).invoke(plugin_app(), [str(a) for a in args])


# ------------------------------------------------------------- paper values
def test_you2021_has_the_papers_values() -> None:
    r = get_recipe("you2021")
    assert r is YOU2021
    assert r.model == "hu_mff_resnet50" and r.layers == ("D", "MFF")
    assert r.model_config["align_corners"] is False  # InterpretableMDE's MFF
    assert r.weight == 0.1 and r.objective == "assign"
    assert REGULARIZER_PRESETS[r.preset]["layer_reduction"] == "sum"  # D + MFF summed, as in the code
    binner = get_binner(r.binner["name"], **{k: v for k, v in r.binner.items() if k != "name"})
    edges = binner.edges.tolist()
    assert r.num_bins == binner.num_bins == 64 and len(edges) == 65
    assert edges[0] == 0 and math.isclose(edges[1], 0.75) and math.isclose(edges[-1], 10.0)
    # 64 units per layer at full width: one bin per unit, as in the paper.
    units = get_model_info(r.model).layer_units
    assert [units[layer] for layer in r.layers] == [64, 64]
    opt = r.optimizer
    assert (opt.name, opt.lr, opt.weight_decay, r.batch_size, r.epochs) == ("adam", 1e-4, 1e-4, 16, 20)
    # train.py counts epochs from 1 and decays by 10x at epochs 5, 10, 15, 20.
    lrs = [opt.lr_at_epoch(e) for e in range(20)]
    expected = [1e-4 * 0.1 ** ((e + 1) // 5) for e in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[3] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-5)
    assert r.crop == (228, 304) and r.protocol == "you2021"


def test_hu2019_and_fastdepth2021_values() -> None:
    assert HU2019.model == YOU2021.model and HU2019.model_config["align_corners"] is True
    assert HU2019.weight == 0 and HU2019.optimizer.epoch_offset == 0
    assert HU2019.optimizer.lr_at_epoch(4) == pytest.approx(1e-4)  # Hu's loop counts from 0
    fd = FASTDEPTH2021
    assert fd.model == "fastdepth" and fd.layers == ("decode_conv5",)
    assert get_model_info("fastdepth").layer_units["decode_conv5"] == 32 == fd.num_bins
    assert fd.binner["name"] == "log" and fd.weight == 0.1 and fd.objective == "assign"
    assert fd.input_size == (224, 224) and fd.optimizer.name == "sgd" and fd.assumptions
    assert set(RECIPES) == {"you2021", "hu2019", "fastdepth2021"}


def test_align_corners_option_of_the_two_hu_recipes_changes_the_forward() -> None:
    torch.manual_seed(0)
    you = get_model(YOU2021.model, **YOU2021.model_config, tiny=True).eval()
    hu = get_model(HU2019.model, **HU2019.model_config, tiny=True).eval()
    hu.load_state_dict(you.state_dict(), strict=True)  # same weights, same keys
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert not torch.allclose(you(x), hu(x))


# ------------------------------------------------------- schedule, pipeline
def test_recipe_trainer_uses_the_papers_optimizer_and_step_schedule(tmp_path: Path) -> None:
    from depthsel.testing import ToyDepthDataset, ToyDepthNet
    from depthsel.modelinfo import ModelInfo

    info = ModelInfo(input_size=(32, 32), normalization="unit")
    for recipe, cls in ((YOU2021, torch.optim.Adam), (FASTDEPTH2021, torch.optim.SGD)):
        opts = RunOptions(data="toy", out_dir=str(tmp_path), name=recipe.name, epochs=6, batch_size=4,
                          baseline=True)
        cfg = train_config(recipe, opts)
        trainer = RecipeTrainer(ToyDepthNet(width=4), info, ToyDepthDataset(8, seed=1), cfg, recipe.optimizer)
        assert type(trainer.opt) is cls
        history = trainer.fit(resume=False)
        seen = [s["lr"] for s in history["steps"]]
        assert seen == pytest.approx([recipe.optimizer.lr_at_epoch(i // 2) for i in range(12)], rel=1e-12)
        assert len(set(seen)) == 2  # the step decay happened inside these 6 epochs


def test_full_size_pipeline_crops_like_the_papers(nyu_root: Path) -> None:
    for recipe, shape in ((YOU2021, (228, 304)), (FASTDEPTH2021, (224, 224))):
        train, test = build_splits(recipe, RunOptions(data="nyu", data_root=str(nyu_root)))
        assert (len(train), len(test)) == (4, 2)
        a, t = train[0], test[0]
        assert tuple(a["image"].shape[-2:]) == shape == tuple(t["image"].shape[-2:])
        assert a["depth"].max() <= 10.0 and t["valid"].any()
        # Training augmentation is redrawn per epoch; the test split has none.
        images = []
        for epoch in range(4):
            train.set_epoch(epoch)  # type: ignore[attr-defined]
            images.append(train[0]["image"])
        assert any(not torch.equal(images[0], im) for im in images[1:])
        assert torch.equal(test[0]["image"], t["image"])


# ------------------------------------------------------------ tiny runs
@pytest.mark.parametrize("name", ["you2021", "fastdepth2021"])
def test_reproduce_tiny_run_trains_and_dissects(name: str, nyu_root: Path, tmp_path: Path) -> None:
    recipe = RECIPES[name]
    result = invoke(["reproduce", name, "--data", f"nyu:{nyu_root}", "--tiny", "--epochs", "1",
                     "--max-steps", "2", "--out", tmp_path, "--format", "json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    printed = json.loads(result.stdout)
    run = tmp_path / name
    summary = json.loads((run / "summary.json").read_text())
    assert printed["run_dir"] == str(run) and summary["scale"] == "reduced" and summary["steps"] == 2
    assert summary["recipe"]["binner"] == recipe.binner and summary["recipe"]["weight"] == recipe.weight
    assert summary["overrides"] == {"epochs": 1, "max_steps": 2, "tiny": True}
    config = json.loads((run / "config.json").read_text())
    assert config["selectivity"]["layers"] == list(recipe.layers)
    assert config["selectivity"]["binner"] == recipe.binner and config["selectivity"]["weight"] == recipe.weight
    dissection = load_result(run / "dissection")
    assert set(dissection.layers) == set(recipe.layers) == set(summary["dissection"])
    for layer in recipe.layers:
        stats = summary["dissection"][layer]
        assert -1.0 <= stats["target_ds"] <= 1.0 and 0.0 <= stats["argmax_ds"] <= 1.0
    assert math.isfinite(summary["metrics"]["rmse"]) and summary["metrics"]["protocol"] == recipe.protocol
    # The selectivity term is -lambda * sum over layers of mean DS (layers summed, not averaged).
    for step in json.loads((run / "history.json").read_text())["steps"]:
        term = step["loss"] - step["task_loss"]
        assert term == pytest.approx(-recipe.weight * len(recipe.layers) * step["target_ds"], rel=1e-4, abs=1e-6)


def test_reproduce_baseline_and_synthetic_data(tmp_path: Path) -> None:
    result = invoke(["reproduce", "hu2019", "--data", "synthetic", "--data-set", "num_samples=2", "--tiny",
                     "--max-steps", "1", "--out", tmp_path, "--name", "hu"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    config = json.loads((tmp_path / "hu" / "config.json").read_text())
    assert config["selectivity"] is None and config["extra"]["optimizer"]["epoch_offset"] == 0
    assert load_result(tmp_path / "hu" / "dissection").layers


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["reproduce", "you2022", "--data", "synthetic"], "unknown recipe 'you2022'"),
        (["reproduce", "you2021"], "give --data"),
        (["reproduce", "fastdepth2021", "--data", "synthetic", "--data-set", "num_samples=2", "--tiny",
          "--size", "48x48"], "multiples of 32"),
        (["reproduce", "you2021", "--data", "nyu:/no/such/folder", "--tiny"], "does not exist"),
    ],
)
def test_reproduce_errors_are_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    result = invoke([*args, "--out", tmp_path])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def test_reproduce_is_registered_through_the_entry_point() -> None:
    # A fresh process: the command comes from the depthsel entry points, not from this test.
    out = subprocess.run([sys.executable, "-m", "depthsel.cli", "reproduce", "--show", "--format", "json"],
                         env={**os.environ, **ENV}, capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert {row["recipe"] for row in json.loads(out.stdout)} == set(RECIPES)
    core = (ROOT / "src" / "depthsel").rglob("*.py")
    names = ("depthsel_plugins.recipes", '"reproduce"', "fastdepth2021")
    assert not any(n in p.read_text() for p in core for n in names)


def test_recipe_loads_an_official_style_checkpoint_and_refuses_a_partial_load_that_matches_nothing(
        tmp_path: Path) -> None:
    torch.manual_seed(3)
    src = get_model(YOU2021.model, **YOU2021.model_config, tiny=True)
    # As released: a DataParallel state dict saved with torch.save.
    path = tmp_path / "mff_resnet.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    model, _, loaded = build_recipe_model(YOU2021, RunOptions(data="nyu", tiny=True, weights=str(path)))
    assert loaded == {"path": str(path), "strict": True}
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # An ImageNet encoder under torchvision's names matches nothing: an error, not a silent scratch run.
    encoder = {k[len("E."):]: v for k, v in src.state_dict().items() if k.startswith("E.")}
    bare = tmp_path / "resnet50_imagenet.pth"
    torch.save(encoder, bare)
    with pytest.raises(CheckpointError, match="none of the"):
        build_recipe_model(YOU2021, RunOptions(data="nyu", tiny=True, weights=str(bare), strict=False))
    renamed = tmp_path / "encoder_E.pth"
    torch.save({f"E.{k}": v for k, v in encoder.items()}, renamed)
    _, _, partial = build_recipe_model(YOU2021, RunOptions(data="nyu", tiny=True, weights=str(renamed),
                                                           strict=False))
    assert partial["loaded"] == len(encoder) < partial["model_tensors"]


def test_eval_only_evaluates_and_dissects_the_given_weights_untouched(nyu_root: Path, tmp_path: Path) -> None:
    from depthsel.training import evaluate

    torch.manual_seed(4)
    src = get_model(HU2019.model, **HU2019.model_config, tiny=True).eval()
    path = tmp_path / "hu.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    result = invoke(["reproduce", "hu2019", "--data", f"nyu:{nyu_root}", "--tiny", "--weights", path,
                     "--eval-only", "--out", tmp_path, "--format", "json"])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    printed = json.loads(result.stdout)
    assert printed["trained"] is False and printed["steps"] == 0
    _, test = build_splits(HU2019, RunOptions(data="nyu", data_root=str(nyu_root), tiny=True))
    expected = evaluate(src, get_model_info(HU2019.model), test, protocol="hu2019", batch_size=2)
    assert printed["metrics"]["rmse"] == pytest.approx(expected["rmse"], rel=1e-6)
    assert load_result(tmp_path / "hu2019" / "dissection").layers
    assert not (tmp_path / "hu2019" / "model.safetensors").exists()  # nothing was trained
    missing = invoke(["reproduce", "hu2019", "--data", f"nyu:{nyu_root}", "--tiny", "--eval-only",
                      "--out", tmp_path])
    assert missing.exit_code == 1 and "--eval-only needs --weights" in missing.stderr


def test_recipe_trainer_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    # SGD momentum buffers and the epoch-stepped lr must survive a checkpoint.
    from depthsel.testing import ToyDepthDataset, ToyDepthNet
    from depthsel.modelinfo import ModelInfo

    info = ModelInfo(input_size=(32, 32), normalization="unit")

    def run(name: str, max_steps: int | None, fresh: bool = True) -> tuple[torch.nn.Module, int]:
        torch.manual_seed(0)
        model = ToyDepthNet(width=4)
        calls: list[int] = []
        model.register_forward_pre_hook(lambda m, a: calls.append(1) if m.training else None)
        opts = RunOptions(data="toy", out_dir=str(tmp_path), name=name, epochs=6, batch_size=4,
                          max_steps=max_steps, baseline=True)
        cfg = train_config(FASTDEPTH2021, opts)
        cfg.checkpoint_every = 1
        RecipeTrainer(model, info, ToyDepthDataset(8, seed=1), cfg, FASTDEPTH2021.optimizer).fit(resume=not fresh)
        return model, len(calls)

    whole, n_whole = run("whole", None)
    _, n_cut = run("cut", 7)
    resumed, n_rest = run("cut", None, fresh=False)
    assert (n_whole, n_cut, n_rest) == (12, 7, 5)  # the second half really resumed
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
