"""The benchmark helpers that stand for proposed code, and the GPU script's CPU mode, work.

* ``benchmarks/proposals.py``'s lookup-table binner (proposed for
  ``Binner.__call__``) gives exactly the bins of the binner it wraps, on random
  depth and on the float32 neighbours of every edge;
* ``benchmarks/gpu/run.py``'s AMP training part runs on the CPU (bfloat16
  autocast) at a tiny size and reports finite losses and float32 statistics.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import depthsel

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path, name: str) -> ModuleType:
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(path.parent))


@pytest.fixture(scope="module")
def proposals() -> ModuleType:
    return _load(ROOT / "benchmarks" / "proposals.py", "depthsel_bench_proposals")


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["sid", "uniform"]), nb=st.integers(2, 70), seed=st.integers(0, 2**31 - 1),
       float64=st.booleans(), hi=st.floats(0.5, 90.0))
def test_lut_binner_equals_binner(proposals: ModuleType, kind: str, nb: int, seed: int, float64: bool,
                                  hi: float) -> None:
    binner = depthsel.get_binner(kind, num_bins=nb, min_depth=hi / 10, max_depth=hi)
    fast = proposals.LutBinner(binner)
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(2, 1, 9, 11, generator=g) * hi * 1.2
    depth[torch.rand(depth.shape, generator=g) < 0.1] = 0.0
    if float64:
        depth = depth.double()
    valid = torch.rand(depth.shape, generator=g) > 0.1
    assert torch.equal(fast(depth, valid), binner(depth, valid))
    e = binner.edges.float()
    near = torch.stack([torch.nextafter(e, torch.tensor(-1.0)), e, torch.nextafter(e, torch.tensor(1e4))])
    near = near.clamp(min=0).reshape(1, 3, -1)
    assert torch.equal(fast(near), binner(near))
    assert torch.equal(fast(near.double()), binner(near.double()))


def test_gpu_script_amp_part_runs_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_BENCH_SETUPS", json.dumps({"fastdepth": {"batch": 2, "size": [32, 32]}}))
    # benchmarks/run.py reads the variable at import: load a fresh copy.
    for mod in ("run", "common", "dissect_bench", "reference_impl"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    gpu = _load(ROOT / "benchmarks" / "gpu" / "run.py", "depthsel_bench_gpu")
    run = _load(ROOT / "benchmarks" / "run.py", "depthsel_bench_run")
    assert run.SETUPS["fastdepth"]["size"] == (32, 32)
    threads = torch.get_num_threads()
    try:
        out = gpu.amp_training(run, "fastdepth", "cpu", repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert out["all_losses_finite"] and out["regularizer_dtypes"] == ["torch.float32"], out
    assert out["ok"] and out["autocast_dtype"] == "torch.bfloat16" and out["ratio"] > 0
    assert os.environ["DEPTHSEL_BENCH_SETUPS"]


def test_learning_curve_table_and_plot_come_from_the_committed_summaries(tmp_path: Path, capsys) -> None:
    lc = _load(ROOT / "benchmarks" / "learning_curve.py", "learning_curve_under_test")
    runs = [ROOT / "benchmarks" / "runs_round4" / f"lc_{n}.summary.json" for n in (5000, 200, 1000)]
    out = tmp_path / "lc.png"
    assert lc.main([str(r) for r in runs] + ["--plot", str(out)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("| metric"))
    assert header.index("200 scenes") < header.index("1000 scenes") < header.index("5000 scenes")  # sorted by N
    row = next(line for line in text.splitlines() if line.startswith("| held-out target DS |"))
    for r in runs:  # each cell is that run's interpretable mean ± half-width
        s = json.loads(r.read_text())
        stat = next(x for x in s["table"] if x["key"] == "target_ds")["arms"]["interpretable"]
        assert f"{stat['mean']:.3f} ± {stat['half_width']:.3f}" in row
    assert out.is_file() and out.stat().st_size > 10_000


def test_lever_pretrain_points_each_seed_at_its_pretraining_of_the_chosen_size(tmp_path: Path) -> None:
    lp = _load(ROOT / "benchmarks" / "lever_pretrain.py", "lever_pretrain_under_test")
    cfg = lp.config("v", tmp_path, [0, 1], ("0:60", "60:80"), 0, 5000)
    assert cfg.init_weights == str(tmp_path / "pre_syn5000" / "seed{seed}" / "model.safetensors")
    assert lp.config("v", tmp_path, [0], ("0:60", "60:80"), 0).init_weights.endswith("pre_syn/seed{seed}/model.safetensors")
    assert cfg.num_bins == 4 and cfg.test_data["frames"] == "60:80"
    # Another width gets its own folder, so width-0.5 weights are never loaded into a width-1.0 model.
    assert lp.pre_path(2000, 1.0) == "pre_syn_w1/seed{seed}/model.safetensors"
    assert lp.pre_path(5000, 0.25) == "pre_syn5000_w0.25/seed{seed}/model.safetensors"


def test_lever_pretrain_val_refuses_an_unknown_override_before_running(tmp_path: Path) -> None:
    lp = _load(ROOT / "benchmarks" / "lever_pretrain.py", "lever_pretrain_override_under_test")
    with pytest.raises(SystemExit, match="no field 'warmup'"):
        lp.main(["val", "0", "v", str(tmp_path), "2000", '{"warmup": 200}'])
    assert not (tmp_path / "v").exists()
    with pytest.raises(SystemExit, match="no field 'layer'"):  # held-out runs take the same overrides
        lp.main(["heldout", "end", "0", "h", str(tmp_path), "2000", '{"layer": ["decode_conv4"]}'])
    assert not (tmp_path / "h").exists()
    cfg = lp.with_lever(lp.config("h", tmp_path, [0], ("0:80", "80:100"), 199), '{"layers": ["decode_conv4"]}')
    assert cfg.layers == ["decode_conv4"] and cfg.test_data["frames"] == "80:100"


def test_ds_by_bin_splits_the_layer_mean_by_assigned_bin(tmp_path: Path, capsys) -> None:
    from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(out_dir=str(tmp_path), name="tiny", size=(32, 32), model_config={"width": 0.25},
                           epochs=2, batch_size=4, permutations=0, bootstrap=50, seeds=[0, 1],
                           train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 8})
    summary = run_experiment(cfg, progress=False)
    script = _load(ROOT / "benchmarks" / "ds_by_bin.py", "ds_by_bin_under_test")
    layer, gt, pred, errors = script.by_bin(tmp_path / "tiny")
    assert layer == "decode_conv4" and len(gt) == 2 and len(gt[0]) == cfg.num_bins
    import csv
    import math

    for i, seed in enumerate((0, 1)):
        # Independently, from the per-unit CSV the dissection writes beside its tensors.
        rows = [r for r in csv.DictReader(open(tmp_path / "tiny" / f"seed{seed}" / "interpretable" / "dissection"
                                               / "result.csv")) if r["split"] == "test" and r["layer"] == layer]
        values = {b: [float(r["target_ds"]) for r in rows if int(r["assigned_bin"]) == b
                      and r["target_ds"] not in ("", "nan")] for b in range(cfg.num_bins)}
        for b in range(cfg.num_bins):
            expected = sum(values[b]) / len(values[b]) if values[b] else math.nan
            assert (math.isnan(gt[i][b]) and math.isnan(expected)) or gt[i][b] == pytest.approx(expected, abs=1e-6)
        every = [v for b in values for v in values[b]]
        target = summary["per_seed"][str(seed)]["interpretable"]["scalars"]["target_ds"]
        assert sum(every) / len(every) == pytest.approx(target, abs=1e-6)  # the units the layer mean counts
        assert [e["bin"] for e in errors[i]] == list(range(cfg.num_bins))
    script.main([str(tmp_path / "tiny")])
    table = capsys.readouterr().out
    assert table.count("\n| ") == cfg.num_bins + 1 and "2 seeds" in table


def test_rescoring_scripts_reproduce_the_experiments_own_numbers(tmp_path: Path, capsys) -> None:
    # scene_sample_spread and revalidate_syn re-dissect saved models on other scene sets; on the
    # run's own scenes they must give back the run's stored values (same binner, same formula).
    from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

    val = {"split": "train", "seed": 1, "num_samples": 6}  # revalidate_syn's validation stream
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="tiny", size=(32, 32), model_config={"width": 0.25},
                           epochs=2, batch_size=4, permutations=0, bootstrap=20, seeds=[0, 1],
                           train_data={"split": "train", "num_samples": 8}, test_data=val)
    summary = run_experiment(cfg, progress=False)
    spread = _load(ROOT / "benchmarks" / "scene_sample_spread.py", "scene_sample_spread")
    rescore = _load(ROOT / "benchmarks" / "revalidate_syn.py", "revalidate_syn_under_test")
    run_cfg, binner, models = spread.load_run(tmp_path / "tiny")
    assert binner.edges.tolist() == summary["binner"]["edges"] and len(models) == 4
    again = spread.measure_set(run_cfg, binner, models, "train", 1, 6)
    scores = rescore.score_run(tmp_path / "tiny", 6)
    for i, seed in enumerate(("0", "1")):
        stored = summary["per_seed"][seed]["interpretable"]["scalars"]
        assert again[seed]["interpretable"]["target_ds"] == pytest.approx(stored["target_ds"], abs=1e-9)
        assert again[seed]["interpretable"]["peak_on_target"] == pytest.approx(stored["peak_on_target"], abs=1e-9)
        assert scores["target_ds"][i] == pytest.approx(stored["target_ds"], abs=1e-9)
        base = summary["per_seed"][seed]["baseline"]["scalars"]["rmse"]
        assert scores["rmse_ratio"][i] == pytest.approx(stored["rmse"] / base, rel=1e-9)
    # Another scene set gives other numbers: the set is really read.
    other = spread.measure_set(run_cfg, binner, models, "test", 3, 6)
    assert other["0"]["interpretable"]["target_ds"] != again["0"]["interpretable"]["target_ds"]
