"""benchmarks/analyses_over_seeds.py end to end on a tiny two-seed experiment.

Every aggregated number in the report is recomputed here with depthsel.stats
from the per-seed values the report keeps, so a wrong aggregation fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment
from depthsel.stats import benjamini_hochberg, paired_difference, seed_summary

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(size=(32, 32), model_config={"width": 0.25}, epochs=1, batch_size=4, permutations=0, bootstrap=20,
            train_data={"split": "train", "num_samples": 8}, test_data={"split": "test", "num_samples": 4})
FAST = ["--random-orders", "2", "--ablation-step", "2", "--mask-steps", "2", "--mask-lambdas", "1,5",
        "--mask-width", "2"]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


script = _load("analyses_over_seeds")
agg = sys.modules["analyses_over_seeds_stats"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("aos")
    # Regularised on decode_conv5 explicitly (the demo's default layer is decode_conv4 since round 5):
    # the tests below analyse and retrain at the other layer.
    run_experiment(ExperimentConfig(out_dir=str(base), name="exp", seeds=[0, 1], layers=["decode_conv5"], **TINY),
                   progress=False)
    out = base / "out"
    assert script.main([str(base / "exp"), "--out", str(out), *FAST]) == 0
    return base / "exp", out, json.loads((out / "analyses_over_seeds.json").read_text())


def _close(a: float | None, b: float) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and a == pytest.approx(b, abs=1e-12))


def test_every_summary_is_what_depthsel_stats_gives_for_the_per_seed_values(analysed: Any) -> None:
    _, _, rep = analysed
    assert rep["seeds"] == [0, 1] and rep["num_seeds"] == 2
    keys = set(rep["summary"])
    for area in ("correction/", "ablation/", "adversarial/", "masks/lambda=5/"):
        assert any(k.startswith(area) for k in keys), area
    check_summaries(rep)


def check_summaries(rep: dict[str, Any]) -> None:
    """Each model's summary and the paired difference, recomputed from the per-seed values."""
    for key, entry in rep["summary"].items():
        vals = {m: [rep["per_seed"][str(s)][m]["scalars"].get(key) for s in rep["seeds"]] for m in agg.MODELS}
        for m in agg.MODELS:
            if entry[m].get("undefined"):
                assert not all(v is not None and math.isfinite(v) for v in vals[m])
                continue
            ref = seed_summary(vals[m])
            assert entry[m]["values"] == vals[m]
            for f in ("mean", "ci_low", "ci_high"):
                assert _close(entry[m][f], getattr(ref, f)), (key, m, f)
            assert _close(entry[m]["p_zero"], paired_difference([0.0] * len(vals[m]), vals[m]).pvalue)
            if ref.std > 0:  # cross-check the zero test against scipy's one-sample t-test
                assert entry[m]["p_zero"] == pytest.approx(sps.ttest_1samp(vals[m], 0.0).pvalue)
        if "difference" in entry:
            ref_d = paired_difference(vals["baseline"], vals["interpretable"])
            assert _close(entry["difference"]["mean"], ref_d.summary.mean)
            assert _close(entry["difference"]["pvalue"], ref_d.pvalue)


def test_ablation_bands_and_curve_ends(analysed: Any) -> None:
    _, _, rep = analysed
    layer = rep["experiment"]["layers"][0]
    for m in agg.MODELS:
        band = rep["curves"][m][layer]
        for order in agg.ORDERS:
            rows = np.asarray([rep["per_seed"][str(s)][m]["curves"][layer][order]["delta1"] for s in rep["seeds"]])
            for j in range(rows.shape[1]):
                ref = seed_summary(rows[:, j].tolist())
                assert _close(band[f"{order}/delta1"]["mean"][j], ref.mean)
                assert _close(band[f"{order}/delta1"]["ci_low"][j], ref.ci_low)
        for s in rep["seeds"]:
            c = rep["per_seed"][str(s)][m]["curves"][layer]
            sc = rep["per_seed"][str(s)][m]["scalars"]
            # Nothing ablated is the clean model the correction also measured; everything ablated is one model.
            for o in agg.ORDERS:
                assert c[o]["rmse"][0] == pytest.approx(sc["correction/rmse_clean"])
            assert len({round(c[o]["rmse"][-1], 9) for o in agg.ORDERS}) == 1
            assert len(c["single_unit_drop"]) == rep["per_seed"][str(s)][m]["curves"][layer]["steps"][-1]
            for lam in (1, 5):
                assert 0.0 <= sc[f"masks/lambda={lam}/sparseness"] <= 1.0


def test_claims_use_bh_over_their_own_pvalues(analysed: Any) -> None:
    _, out, rep = analysed
    claims = rep["claims"]
    assert {c["analysis"] for c in claims} == {"correction", "ablation", "adversarial", "masks"}
    q = benjamini_hochberg([math.nan if c["p"] is None else c["p"] for c in claims])
    for c, qi in zip(claims, q):
        assert _close(c["q_bh"], qi)
        who = c["who"]
        entry = rep["summary"][c["key"]][who]
        assert c["mean"] == entry["mean"]
        assert c["verdict"] == agg.verdict(c)
    for name in ("ablation_curves.png", "claims.png", "tables.md"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("shift", [-1.0, 0.0, 1.0])
def test_verdict_follows_sign_and_bh(shift: float) -> None:
    """Synthetic per-seed values: a clear effect holds or is reversed, no effect is not shown."""
    rng = np.random.default_rng(7)
    seeds = [0, 1, 2, 3, 4]
    per_seed = {str(s): {m: {"scalars": {"correction/delta1_gain": float(shift * (1 if m == "interpretable" else -1)
                                                                          + 0.01 * rng.standard_normal())},
                             "curves": {}} for m in agg.MODELS} for s in seeds}
    summary = agg.summarise(per_seed, seeds)
    rows = agg.claims(summary, [], [])
    assert [r["who"] for r in rows] == ["difference", "baseline", "interpretable"]
    expected = {1.0: "holds", -1.0: "reversed"}.get(shift)
    for r in rows:
        if expected is not None:
            assert r["verdict"] == expected
        elif r["q_bh"] >= agg.ALPHA:
            assert r["verdict"].startswith("not shown")
            assert ("unadjusted" in r["verdict"]) == (r["p"] < agg.ALPHA)


def test_rerun_reads_the_cache_and_partial_runs_analyse_the_ready_seeds(analysed: Any, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run, out, rep = analysed
    capsys.readouterr()
    assert script.main([str(run), "--out", str(out), *FAST]) == 0
    assert "analysed in" not in capsys.readouterr().out  # every model came from the cache
    assert json.loads((out / "analyses_over_seeds.json").read_text())["summary"] == rep["summary"]
    # A run still training: no summary.json, seed 1 without its interpretable model.
    part = tmp_path / "part"
    shutil.copytree(run, part, ignore=shutil.ignore_patterns("plots", "summary.json"))
    (part / "seed1" / "interpretable" / "model.safetensors").unlink()
    assert script.main([str(part), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "--config" in capsys.readouterr().err
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(json.loads((run / "summary.json").read_text())["config"]))
    shutil.copytree(out / "per_seed", tmp_path / "o" / "per_seed")
    assert script.main([str(part), "--out", str(tmp_path / "o"), "--config", str(cfg), *FAST]) == 0
    one = json.loads((tmp_path / "o" / "analyses_over_seeds.json").read_text())
    assert one["seeds"] == [0] and one["skipped_seeds"] == [1]
    assert all(c["verdict"] == "one seed: no verdict" for c in one["claims"])
    assert one["summary"]["correction/delta1_gain"]["baseline"]["mean"] == \
        rep["per_seed"]["0"]["baseline"]["scalars"]["correction/delta1_gain"]


def test_other_layers_of_the_same_models(analysed: Any, tmp_path: Path) -> None:
    """--layers analyses layers the models were not regularised on (fresh dissections), each keyed by layer."""
    run, _, _ = analysed
    layers = ["decode_conv4", "decode_conv5"]
    assert script.main([str(run), "--out", str(tmp_path), "--layers", ",".join(layers), "--no-masks", *FAST]) == 0
    rep = json.loads((tmp_path / "analyses_over_seeds.json").read_text())
    assert rep["experiment"]["layers"] == layers and rep["experiment"]["regularised_layers"] == ["decode_conv5"]
    check_summaries(rep)
    units = {"decode_conv4": 16, "decode_conv5": 8}  # width 0.25
    for layer in layers:
        assert f"ablation/{layer}/auc_most_minus_random" in rep["summary"]
        assert f"adversarial/{layer}/iou_gap" in rep["summary"]
        assert rep["curves"]["baseline"][layer]["steps"][-1] == units[layer]
        assert (tmp_path / f"ablation_curves_{layer}.png").is_file()
    assert not any(k.startswith("masks/") for k in rep["summary"])


def test_no_ready_seed_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "seed0" / "baseline").mkdir(parents=True)
    (tmp_path / "summary.json").write_text(json.dumps({"config": {"layers": ["x"]}, "binner": {}}))
    assert script.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no seed" in err[0]


def test_retrain_at_layer_copies_baselines_and_regularises_the_new_layer(analysed: Any, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    retrain = _load("retrain_at_layer")
    run, _, _ = analysed
    assert retrain.main([str(run), "--layers", "decode_conv4", "--out", str(tmp_path), "--name", "r4",
                         "--seeds", "0"]) == 0
    new = tmp_path / "r4"
    assert (new / "seed0" / "baseline" / "model.safetensors").read_bytes() == \
        (run / "seed0" / "baseline" / "model.safetensors").read_bytes()
    sel = json.loads((new / "seed0" / "interpretable" / "config.json").read_text())["selectivity"]
    # The retrained run keeps the source recipe's number of bins (4 by default; 16 units at width 0.25).
    src_bins = json.loads((run / "summary.json").read_text())["config"]["num_bins"]
    assert sel["layers"] == ["decode_conv4"] and len(sel["binner"]["edges"]) == min(src_bins or 16, 16) + 1
    summary = json.loads((new / "summary.json").read_text())
    assert summary["config"]["layers"] == ["decode_conv4"] and summary["seeds"] == [0]
    # The copy is sound only if a baseline does not depend on the regularised layer: train one to check.
    cfg = ExperimentConfig(out_dir=str(tmp_path), name="b4", seeds=[0], layers=["decode_conv4"], **TINY)
    run_experiment(cfg, progress=False)
    a = load_file(str(tmp_path / "b4" / "seed0" / "baseline" / "model.safetensors"))
    b = load_file(str(run / "seed0" / "baseline" / "model.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    # The analyses read the retrained run like any experiment.
    assert script.main([str(new), "--out", str(tmp_path / "o"), "--no-masks", *FAST]) == 0
    rep = json.loads((tmp_path / "o" / "analyses_over_seeds.json").read_text())
    assert rep["experiment"]["layers"] == ["decode_conv4"] and rep["seeds"] == [0]
    # Only the retrained model has a saved dissection: its row is kept, the baseline's cell is undefined.
    row = rep["summary"]["dissection/train/mean_target_ds"]
    assert row["baseline"]["undefined"] and "mean" in row["interpretable"] and "difference" not in row
    check_summaries(rep)
