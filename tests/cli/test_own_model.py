"""Your own model in the CLI: import paths, saved training choices, one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from safetensors import safe_open

from cli_support import ROOT, assert_one_line_error, invoke, invoke_json

import depthsel
from depthsel import modelinfo
from depthsel.testing import ToyDepthDataset

UNET = str(ROOT / "examples" / "my_unet.py") + ":UNet"
DATA = ["--data", "synthetic", "--data-set", "num_samples=8", "--data-set", "size=[32,32]"]

PLAIN_NET = '''
import torch
from torch import nn

class Net(nn.Module):
    """A model file with no depthsel metadata at all."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return 5 * torch.sigmoid(self.head(self.body(x))).squeeze(1)
'''


def test_layers_of_a_model_file(runner) -> None:
    rows = invoke_json(runner, ["layers", UNET])
    by_name = {r["name"]: r for r in rows}
    assert by_name["up1"]["units"] == 8 and by_name["up1"]["suggested"]
    assert by_name["bottom"]["shape"] == [1, 32, 16, 16]
    # Repeated -p keeps every pattern (it used to keep only the last one).
    rows = invoke_json(runner, ["layers", UNET, "-p", "up1", "-p", "head"])
    assert [r["name"] for r in rows] == ["up1", "head"]
    rows = invoke_json(runner, ["layers", UNET, "--model-config", '{"base": 4}', "-p", "up1"])
    assert rows[0]["units"] == 4


def test_layers_of_a_module_path(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "examples")
    rows = invoke_json(runner, ["layers", "my_unet:UNet", "-p", "up*"])
    assert "up1" in [r["name"] for r in rows]


@pytest.mark.parametrize("spec, needle", [
    ("examples/nope.py:UNet", "does not exist"),
    (UNET.replace(":UNet", ":Unet"), "UNet"),
    ("no_such_pkg.mod:Net", "cannot import module"),
])
def test_bad_model_specs_are_one_line(runner, spec: str, needle: str) -> None:
    assert_one_line_error(invoke(runner, ["layers", spec]), needle)


def test_set_values_must_be_json_and_bad_sizes_are_one_line(runner, tmp_path: Path) -> None:
    base = ["dissect", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic", "--limit", "2",
            "--out", tmp_path / "o"]
    assert_one_line_error(invoke(runner, [*base, "--set", "binner={name:sid}"]), "not valid JSON")
    bad = invoke(runner, [*base, "--data-set", "size=[50,70]", "--set", "permutations=0"])
    assert_one_line_error(bad, "multiples of 32")
    assert not (tmp_path / "o").exists()


def test_trained_run_is_dissected_as_trained(runner, tmp_path: Path) -> None:
    # 8 units, 16 bins: train fits the bins to the units; dissect must do the same.
    invoke_json(runner, ["train", "--model", UNET, *DATA, "--layers", "up1", "--weight", "0.5",
                         "--binner", '{"name": "sid", "num_bins": 16}', "--epochs", "1",
                         "--batch-size", "4", "--out", tmp_path, "--name", "u"])
    run = tmp_path / "u"
    saved = json.loads((run / "config.json").read_text())
    assert saved["selectivity"]["fit_bins_to_units"] is True and saved["normalization"] == "imagenet"
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["normalization"] == "imagenet"
    res = invoke(runner, ["dissect", "--model", UNET, *DATA, "--weights", run / "model.safetensors",
                          "--set", "permutations=0", "--out", tmp_path / "d", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert "saved by training" in res.stderr
    result = json.loads((tmp_path / "d" / "result.json").read_text())
    assert result["data"]["binners"]["up1"]["num_bins"] == 8
    assert result["data"]["layers"] == ["up1"]
    # The explicit, mismatching choice is refused with the fix, not silently measured.
    res = invoke(runner, ["dissect", "--model", UNET, *DATA, "--weights", run / "model.safetensors",
                          "--set", "permutations=0", "--set", "fit_bins_to_units=false",
                          "--out", tmp_path / "d2"])
    assert res.exit_code == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fit_bins_to_units=true" in last and "Traceback" not in res.stderr
    assert "differs from the training run" in res.stderr
    # The Python call reads the same run and gets the same numbers.
    model = depthsel.modelspec.build_import_model(UNET)[0]
    depthsel.load_weights(model, run / "model.safetensors")
    api = depthsel.dissect(model, ToyDepthDataset(2), run=run)
    assert api.data["binners"]["up1"]["num_bins"] == 8


def test_normalization_is_recorded_or_warned_once(runner, tmp_path: Path) -> None:
    net = tmp_path / "plainnet.py"
    net.write_text(PLAIN_NET)
    spec = f"{net}:Net"
    invoke_json(runner, ["train", "--model", spec, *DATA, "--weight", "0", "--epochs", "1",
                         "--batch-size", "4", "--out", tmp_path, "--name", "p", "--normalization", "unit"])
    res = invoke(runner, ["dissect", "--model", spec, *DATA, "--layers", "body", "--weights",
                          tmp_path / "p" / "model.safetensors", "--set", "permutations=0",
                          "--out", tmp_path / "d"])
    assert res.exit_code == 0, res.stderr
    meta = json.loads((tmp_path / "d" / "result.json").read_text())["meta"]["cli"]["model"]
    assert meta["normalization"] == "unit"
    assert "not stated" not in res.stderr
    modelinfo._WARNED_UNSTATED.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = depthsel.ModelInfo(input_size=(8, 8), normalization=None)
        for _ in range(3):
            info.normalize(ToyDepthDataset(1)[0]["image"][None])
    unstated = [w for w in caught if issubclass(w.category, modelinfo.UnstatedNormalizationWarning)]
    assert len(unstated) == 1 and "normalization=" in str(unstated[0].message)


def test_token_layers_from_the_command_line(runner, tmp_path: Path) -> None:
    vit = str(ROOT / "examples" / "vit_adapter.py") + ":TinyDPT"
    base = ["dissect", "--model", vit, *DATA, "--layers", "blocks.1", "--normalization", "unit",
            "--set", "permutations=0"]
    res = invoke(runner, [*base, "--tokens", "blocks.1:grid=8x8:skip=1", "--out", tmp_path / "t"])
    assert res.exit_code == 0, res.stderr
    result = json.loads((tmp_path / "t" / "result.json").read_text())
    assert result["data"]["layers"] == ["blocks.1"]
    _error_line(invoke(runner, [*base, "--out", tmp_path / "u"]), "--tokens")
    # Training reads token layers the same way.
    trained = invoke_json(runner, ["train", "--model", vit, *DATA, "--layers", "blocks.1", "--normalization",
                                   "unit", "--tokens", "blocks.1:grid=8x8:skip=1", "--binner",
                                   '{"name": "sid", "num_bins": 4}', "--epochs", "1", "--batch-size", "4",
                                   "--out", tmp_path, "--name", "vit"])
    assert trained["steps"] == 2 and trained["target_ds"] == trained["target_ds"]
    _error_line(invoke(runner, [*base, "--tokens", "blocks.1:grid=8x8:skp=1", "--out", tmp_path / "v"]),
                "grid=HxW or skip=N")


def _error_line(res, needle: str) -> None:
    # Progress notes ("data: ...") may come first on stderr; the error itself is one line.
    assert res.exit_code == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last, res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("analyzer, figure", [("dissection", "test_up1_heatmap.png"),
                                              ("correction", "correction.png"),
                                              ("ablation", "ablation_up1.png")])
def test_every_analyzer_writes_its_figures_from_the_cli(runner, tmp_path: Path, analyzer: str,
                                                        figure: str) -> None:
    extra = {"dissection": ["--set", "permutations=0"], "correction": [],
             "ablation": ["--set", "step=4", "--set", "seeds=1"]}[analyzer]
    res = invoke(runner, ["analyze", analyzer, "--model", UNET, "--model-config", '{"base": 4}', *DATA,
                          "--limit", "4", "--layers", "up1", *extra, "--out", tmp_path / "r"])
    assert res.exit_code == 0, res.stderr
    png = tmp_path / "r" / "figures" / figure
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"


def test_train_data_gives_an_analyzer_its_training_split(runner, tmp_path: Path) -> None:
    base = ["analyze", "probe", "--model", UNET, "--model-config", '{"base": 4}', *DATA, "--layers", "up1"]
    invoke_json(runner, [*base, "--out", tmp_path / "own"])
    invoke_json(runner, [*base, "--train-data", "synthetic", "--out", tmp_path / "given"])
    own, given = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("own", "given"))
    assert given["meta"]["cli"]["train_data"] == "synthetic" and own["meta"]["cli"]["train_data"] is None
    # Without --train-data the probe fits on the leading half of --data; with it, on all 8 given samples.
    fit_own, fit_given = (r["data"]["metrics"]["up1"]["train_pixels"] for r in (own, given))
    assert fit_given > fit_own > 0
