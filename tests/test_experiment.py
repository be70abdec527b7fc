"""The main job at tiny size: synthetic default, CLI demo, and the real NYU / 7-Scenes folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datahelpers import shared_data_dir
from typer.testing import CliRunner

from depthsel.experiment import ExperimentConfig, run_experiment

TINY = dict(size=(32, 32), model_config={"width": 0.25}, epochs=1, batch_size=4, permutations=0)


def check_summary(summary: dict, run: Path) -> None:
    labels = [r["metric"] for r in summary["table"]]
    assert labels[:3] == ["δ1 ↑", "RMSE ↓", "AbsRel ↓"] and len(labels) == 9
    for row in summary["table"]:
        assert set(row) == {"metric", "baseline", "interpretable"}
    for label in ("baseline", "interpretable"):
        m = summary["models"][label]["metrics"]
        assert 0 <= m["delta1"] <= 1 and m["rmse"] > 0
        assert (run / label / "dissection" / "result.json").is_file()
        pngs = sorted((run / label / "plots").glob("*.png"))
        assert any("heatmap" in p.name for p in pngs) and any("feature_maps" in p.name for p in pngs)
        assert any("unit" in p.name for p in pngs)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["table"] == json.loads(json.dumps(summary["table"]))


def test_synthetic_pipeline(tmp_path: Path) -> None:
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="syn", train_data={"split": "train", "num_samples": 8},
                           test_data={"split": "test", "num_samples": 4}, **TINY)
    check_summary(run_experiment(cfg, progress=False), tmp_path / "syn")


@pytest.mark.parametrize("folder,train,test", [("nyu2_mini_test", "0:6", "6:10"),
                                               ("7scenes_redkitchen", "0:8", "80:84")])
def test_real_folder_pipeline(tmp_path: Path, folder: str, train: str, test: str) -> None:
    root = shared_data_dir(folder)
    cfg = ExperimentConfig(out_dir=str(tmp_path), name=folder, data="folder",
                           train_data={"root": str(root), "frames": train},
                           test_data={"root": str(root), "frames": test}, binning="quantile", **TINY)
    summary = run_experiment(cfg, progress=False)
    check_summary(summary, tmp_path / folder)
    edges = summary["binner"]["edges"]
    assert edges[-1] < 10.5  # bins fitted to the data, not the fixed 0.75-10 m range


def test_cli_demo_json(tmp_path: Path) -> None:
    from depthsel.cli import app

    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--size", "32x32", "--width", "0.25",
                                      "--train-samples", "8", "--test-samples", "4", "--out", str(tmp_path),
                                      "--format", "json"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["metric"] for r in data["table"]][0] == "δ1 ↑"
    assert (tmp_path / "demo" / "summary.json").is_file()
