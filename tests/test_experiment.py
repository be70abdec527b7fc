"""The main job at tiny size: seeds, CIs and paired differences; synthetic, CLI and real folders."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from datahelpers import shared_data_dir
from typer.testing import CliRunner

from depthsel.errors import DepthselError
from depthsel_plugins.experiments.experiment import ExperimentConfig, parse_seeds, run_experiment, run_sweep
from depthsel.stats import seed_summary

TINY = dict(size=(32, 32), model_config={"width": 0.25}, epochs=1, batch_size=4, permutations=0, bootstrap=50)


def check_summary(summary: dict, run: Path, seeds: list[int]) -> None:
    keys = [r["key"] for r in summary["table"]]
    assert keys[:3] == ["delta1", "rmse", "abs_rel"] and "target_ds" in keys and "target_ds_train" in keys
    assert "near_target" in keys  # diagnostics reach the table, not only the saved dissection
    assert summary["num_seeds"] == len(seeds) and summary["seeds"] == seeds
    for row in summary["table"]:
        for label in ("baseline", "interpretable"):
            stat = row["arms"][label]
            per_seed = [summary["per_seed"][str(s)][label]["scalars"].get(row["key"]) for s in seeds]
            if row["key"] != "rmse_ratio":
                # The row is computed from the per-seed values the summary keeps, not invented.
                assert stat["values"] == pytest.approx(per_seed)
            assert stat["n"] == len(seeds)
            if len(seeds) > 1:
                ref = seed_summary(stat["values"])
                assert stat["ci_low"] == pytest.approx(ref.ci_low) and stat["ci_high"] == pytest.approx(ref.ci_high)
            else:
                assert stat["ci_low"] is None
        if row["key"] != "rmse_ratio":
            d = row["difference"]["interpretable"]
            diffs = [b - a for a, b in zip(row["arms"]["baseline"]["values"], row["arms"]["interpretable"]["values"])]
            assert d["mean"] == pytest.approx(sum(diffs) / len(diffs))
    for s in seeds:
        for label in ("baseline", "interpretable"):
            m = summary["per_seed"][str(s)][label]
            assert 0 <= m["scalars"]["delta1"] <= 1 and m["scalars"]["rmse"] > 0
            lo, hi = m["intervals"]["rmse"]
            assert lo <= hi
            assert (run / f"seed{s}" / label / "dissection" / "result.json").is_file()
    pngs = sorted((run / f"seed{seeds[0]}" / "baseline" / "plots").glob("*.png"))
    assert any("heatmap" in p.name for p in pngs) and any("feature_maps" in p.name for p in pngs)
    assert (run / "plots" / "comparison.png").is_file()
    saved = json.loads((run / "summary.json").read_text())
    assert saved["table"] == json.loads(json.dumps(summary["table"]))


def test_synthetic_pipeline_over_two_seeds_with_curves(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="syn", train_data={"split": "train", "num_samples": 8},
                           test_data={"split": "test", "num_samples": 4}, seeds=[0, 1], curve_every=1,
                           **TINY | {"epochs": 2})
    summary = run_experiment(cfg, progress=False)
    check_summary(summary, tmp_path / "syn", [0, 1])
    # Different seeds give different models: a spread of zero would mean the seed is ignored.
    rmse = next(r for r in summary["table"] if r["key"] == "rmse")["arms"]["baseline"]["values"]
    assert rmse[0] != rmse[1]
    curve = summary["per_seed"]["0"]["interpretable"]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2] and all(math.isfinite(p["rmse"]) for p in curve)
    assert (tmp_path / "syn" / "plots" / "learning_curves.png").is_file()


def test_learning_curve_does_not_change_the_trained_model(tmp_path: Path) -> None:
    base = dict(train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 4},
                seeds=[3], **TINY | {"epochs": 2})
    a = run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="a", curve_every=1, **base), progress=False)
    b = run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="b", curve_every=0, **base), progress=False)
    for label in ("baseline", "interpretable"):
        assert a["per_seed"]["3"][label]["scalars"]["rmse"] == b["per_seed"]["3"][label]["scalars"]["rmse"]


def test_sweep_pairs_every_weight_with_the_baseline(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="sw", train_data={"split": "train", "num_samples": 8},
                           test_data={"split": "test", "num_samples": 4}, seeds=[0, 1], **TINY)
    summary = run_sweep(cfg, [0.5, 0.1], progress=False)
    assert [a["weight"] for a in summary["arms"]] == [0.0, 0.1, 0.5]
    row = next(r for r in summary["table"] if r["key"] == "target_ds")
    assert set(row["difference"]) == {"weight=0.1", "weight=0.5"}
    assert (tmp_path / "sw" / "plots" / "tradeoff.png").is_file()


def test_parse_seeds() -> None:
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,4,7") == [0, 4, 7] and parse_seeds(2) == [0, 1]
    for bad in ("x", "0", "1,1"):
        with pytest.raises(DepthselError):
            parse_seeds(bad)


@pytest.mark.parametrize("folder,train,test", [("nyu2_mini_test", "0:6", "6:10"),
                                               ("7scenes_redkitchen", "0:8", "80:84")])
def test_real_folder_pipeline(tmp_path: Path, folder: str, train: str, test: str) -> None:
    root = shared_data_dir(folder)
    cfg = ExperimentConfig(out_dir=str(tmp_path), name=folder, data="folder",
                           train_data={"root": str(root), "frames": train},
                           test_data={"root": str(root), "frames": test}, binning="quantile", **TINY)
    summary = run_experiment(cfg, progress=False)
    check_summary(summary, tmp_path / folder, [0])
    edges = summary["binner"]["edges"]
    assert edges[-1] < 10.5  # bins fitted to the data, not the fixed 0.75-10 m range


def test_cli_demo_json_holds_per_seed_values_cis_and_differences(tmp_path: Path) -> None:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25",
                                      "--train-samples", "8", "--test-samples", "4", "--out", str(tmp_path),
                                      "--seeds", "2", "--curve-every", "0", "--permutations", "0",
                                      "--format", "json"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["num_seeds"] == 2 and set(data["per_seed"]) == {"0", "1"}
    rmse = next(r for r in data["table"] if r["key"] == "rmse")
    assert rmse["arms"]["baseline"]["ci_low"] is not None and "pvalue" in rmse["difference"]["interpretable"]
    assert (tmp_path / "demo" / "summary.json").is_file()
    # The recipe chosen on validation blocks: four bins by default, on decode_conv4 (16 units
    # at width 0.25).
    assert data["binner"]["num_bins"] == 4 and data["units"] == {"decode_conv4": 16}
    one_per_unit = CliRunner().invoke(app, ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25",
                                            "--train-samples", "8", "--test-samples", "2", "--out", str(tmp_path),
                                            "--name", "per_unit", "--bins", "0", "--seeds", "1",
                                            "--curve-every", "0", "--permutations", "0", "--format", "json"],
                                      env={"COLUMNS": "120"})
    assert one_per_unit.exit_code == 0, one_per_unit.output
    assert json.loads(one_per_unit.stdout)["binner"]["num_bins"] == 16


def test_cli_demo_table_says_how_many_seeds(tmp_path: Path) -> None:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25",
                                      "--train-samples", "8", "--test-samples", "4", "--out", str(tmp_path),
                                      "--seeds", "1", "--curve-every", "0", "--permutations", "0"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1 seed [0]" in result.output and "ONE seed" in result.output and "(1 seed)" in result.output


def test_combine_runs_equals_one_run_over_all_seeds(tmp_path: Path) -> None:
    from depthsel_plugins.experiments.combine import combine_runs

    base = dict(train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 4},
                **TINY)
    one = run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="all", seeds=[0, 1], **base), progress=False)
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="s0", seeds=[0], **base), progress=False)
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="s1", seeds=[1], **base), progress=False)
    both = combine_runs([tmp_path / "s1", tmp_path / "s0"], tmp_path / "comb")
    assert both["seeds"] == [0, 1]
    assert json.dumps(both["table"], sort_keys=True) == json.dumps(one["table"], sort_keys=True)
    with pytest.raises(DepthselError, match="twice"):
        combine_runs([tmp_path / "s0", tmp_path / "all"], tmp_path / "bad")
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="lr", seeds=[2], **base | {"lr": 0.5}),
                   progress=False)
    with pytest.raises(DepthselError, match="lr"):
        combine_runs([tmp_path / "s0", tmp_path / "lr"], tmp_path / "bad2")
    # A summary written before an option existed ran with its default: it combines with a run
    # that states the default, and not with one that changed it.
    old = json.loads((tmp_path / "s0" / "summary.json").read_text())
    del old["config"]["pooling"]
    (tmp_path / "s0" / "summary.json").write_text(json.dumps(old))
    assert combine_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "comb_old")["seeds"] == [0, 1]
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="img", seeds=[3], **base | {"pooling": "image"}),
                   progress=False)
    with pytest.raises(DepthselError, match="pooling"):
        combine_runs([tmp_path / "s0", tmp_path / "img"], tmp_path / "bad3")


def test_experiment_commands_are_plugin_commands_not_core_ones() -> None:
    from depthsel.cli import BUILTIN_COMMANDS
    from depthsel.registry import get_plugin_manager

    commands = get_plugin_manager().entries("commands")
    for name in ("demo", "sweep", "combine", "train"):
        assert name not in BUILTIN_COMMANDS
        assert commands[name].source == "depthsel:experiments"
        assert commands[name].factory.__module__ == "depthsel_plugins.experiments.commands"


def test_init_weights_start_both_arms_from_a_checkpoint_per_seed_and_a_missing_one_fails_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from depthsel.checkpoints import load_state_dict
    from depthsel_plugins.experiments import measure

    base = dict(train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 4},
                seeds=[3], **TINY)
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="pre", **base), progress=False)
    weights = str(tmp_path / "pre" / "seed{seed}" / "baseline" / "model.safetensors")
    missing = ExperimentConfig(out_dir=str(tmp_path), name="missing", init_weights=weights,
                               **base | {"seeds": [3, 4]})
    with pytest.raises(DepthselError, match="seed 4"):
        run_experiment(missing, progress=False)
    assert not (tmp_path / "missing" / "seed3").exists()  # refused before any training
    started: list[tuple[Path, dict]] = []
    real = measure.load_weights

    def spy(model, path, **kw):  # what each arm holds right after loading, before training
        out = real(model, path, **kw)
        started.append((Path(path), {k: v.clone() for k, v in model.state_dict().items()}))
        return out

    monkeypatch.setattr(measure, "load_weights", spy)
    tuned = run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="tuned", init_weights=weights, **base),
                           progress=False)
    pretrained = load_state_dict(tmp_path / "pre" / "seed3" / "baseline" / "model.safetensors")
    assert [p for p, _ in started] == [tmp_path / "pre" / "seed3" / "baseline" / "model.safetensors"] * 2
    for _, state in started:  # both arms start from exactly the pretrained weights
        assert all(torch.equal(state[k], pretrained[k]) for k in pretrained)
    assert tuned["config"]["init_weights"] == weights


def test_cli_demo_init_weights_missing_file_is_one_line_error_before_training(tmp_path: Path) -> None:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)
    missing = str(tmp_path / "pre" / "seed{seed}.safetensors")
    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25",
                                      "--train-samples", "8", "--test-samples", "4", "--out", str(tmp_path),
                                      "--seeds", "1", "--curve-every", "0", "--permutations", "0",
                                      "--init-weights", missing], env={"COLUMNS": "200"})
    assert result.exit_code != 0
    assert "seed0.safetensors" in result.output and "is not a file" in result.output
    assert not (tmp_path / "demo" / "seed0").exists()


def test_matched_assignment_comes_from_the_starting_weights_and_scores_both_arms(tmp_path: Path) -> None:
    import torch

    from depthsel.api import get_model, get_model_info
    from depthsel.checkpoints import load_weights
    from depthsel.selectivity import matched_assignment
    from depthsel_plugins.analyses.dissection_result import DissectionResult
    from depthsel_plugins.experiments.experiment import fit_binner
    from depthsel_plugins.experiments.measure import start_assignment

    base = dict(train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 4},
                seeds=[3], **TINY)
    with pytest.raises(DepthselError, match="assignment must be one of"):
        run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="bad", assignment="nearest", **base),
                       progress=False)
    assert not (tmp_path / "bad").exists()
    run_experiment(ExperimentConfig(out_dir=str(tmp_path), name="pre", **base), progress=False)
    weights = str(tmp_path / "pre" / "seed{seed}" / "baseline" / "model.safetensors")
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="matched", init_weights=weights, assignment="matched",
                           **base)
    out = run_experiment(cfg, progress=False)
    assert out["config"]["assignment"] == "matched"
    # The expected assignment, computed independently: dissect the pretrained weights on the
    # training split and match with the Hungarian method.
    from depthsel_plugins.experiments.experiment import CachedDataset, get_dataset

    train_set = CachedDataset(get_dataset(cfg.data, size=tuple(cfg.size), **cfg.train_data))
    binner = fit_binner(train_set, cfg.binning, cfg.num_bins)
    model = get_model(cfg.model, **cfg.model_config)
    load_weights(model, weights.format(seed=3))
    info = get_model_info(cfg.model)
    expected = start_assignment(model, info, cfg, binner, train_set, 3)
    assert expected is not None
    layer = cfg.layers[0]
    res = DissectionResult.load(tmp_path / "pre" / "seed3" / "baseline" / "dissection_train")
    r = res.responses(layer, "train", "abs")
    assert expected[layer] == matched_assignment(r, cfg.num_bins).tolist()
    assert sorted(expected[layer]) == sorted((torch.arange(len(expected[layer])) % cfg.num_bins).tolist())
    paper = (torch.arange(len(expected[layer])) % cfg.num_bins).tolist()
    assert expected[layer] != paper  # the test means something only if matching moved a unit
    for arm in ("baseline", "interpretable"):  # both arms are scored against it, on both splits
        for split, folder in (("test", "dissection"), ("train", "dissection_train")):
            saved = DissectionResult.load(tmp_path / "matched" / "seed3" / arm / folder)
            assert saved.get(layer, "assigned", split).tolist() == expected[layer]
    # The regularizer trained towards it (what the checkpoint records of the live regularizer).
    ckpt = json.loads((tmp_path / "matched" / "seed3" / "interpretable" / "checkpoint.json").read_text())
    assert ckpt["reg_assignment"][layer] == expected[layer]


def tiny_demo(out: Path, *extra: str) -> Any:
    """``depthsel demo`` through the CLI at tiny size (one seed, one epoch) into ``out``; the result."""
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)
    base = ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25", "--train-samples", "8",
            "--test-samples", "4", "--out", str(out), "--seeds", "1", "--curve-every", "0",
            "--permutations", "0"]
    return CliRunner().invoke(app, base + list(extra), env={"COLUMNS": "200"})


def test_cli_demo_layers_and_assignment_reach_the_config_and_a_bad_one_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tiny_demo(tmp_path, "--assignment", "nearest")
    assert bad.exit_code != 0 and "--assignment 'nearest'" in bad.output and "paper, matched" in bad.output
    assert not (tmp_path / "demo").exists()
    ok = tiny_demo(tmp_path, "--layers", "decode_conv4", "--assignment", "matched", "--name", "c4")
    assert ok.exit_code == 0, ok.output
    cfg = json.loads((tmp_path / "c4" / "summary.json").read_text())["config"]
    assert cfg["layers"] == ["decode_conv4"] and cfg["assignment"] == "matched"
