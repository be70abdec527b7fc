"""Right and repeatable results: issue #15 cases F2 (num_images vs batch size),
F3 (int or NaN weights accepted silently) and F12 (train --seed left the model's
initial weights unseeded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from depthsel.binning import EdgesBinner
from depthsel.checkpoints import load_weights, save_state_dict
from depthsel.responses import collect_responses
from depthsel.errors import CheckpointError
from depthsel.testing import ToyDepthNet, toy_batch

ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}


def invoke(args: list[Any]) -> Any:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


class Frames(torch.utils.data.Dataset):
    """Eight toy frames; frames 1, 2, 5 and 6 have no valid depth at all."""

    def __init__(self) -> None:
        self.image, self.depth = toy_batch(8, (24, 24), seed=5)
        for i in (1, 2, 5, 6):
            self.depth[i] = 0.0

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.depth[i]
        return {"image": self.image[i], "depth": d, "valid": d > 0, "name": f"f{i}"}


# ----------------------------------------------------------------------- F2
def test_f2_num_images_does_not_depend_on_the_batch_size() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=4)
    binner = EdgesBinner(torch.linspace(0.5, 10.0, 5))
    expected = sum(bool((Frames()[i]["depth"] > 0).any()) for i in range(8))  # plain loop: 4
    sums = []
    for bs in (1, 2, 3, 4, 8):
        coll = collect_responses(model, Frames(), ["dec3"], binner, batch_size=bs, progress=False)
        acc = coll.accumulators["dec3"]
        assert acc.num_images == expected, (bs, acc.num_images)
        sums.append(acc.sums)
    for s in sums[1:]:
        assert torch.allclose(s, sums[0], rtol=1e-5, atol=1e-8)  # float32 convs differ by batch


# ----------------------------------------------------------------------- F3
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_f3_integer_weights_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    state = ToyDepthNet(width=4).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].to(dtype)
    save_state_dict(state, tmp_path / "w.safetensors")
    model = ToyDepthNet(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"tensor '{name}' is {str(dtype)[6:]}.*floating point"):
        load_weights(model, tmp_path / "w.safetensors")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_f3_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    state = ToyDepthNet(width=4).state_dict()
    name = [k for k, v in state.items() if v.is_floating_point()][-1]
    state[name].view(-1)[0] = bad
    save_state_dict(state, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds 1 NaN or infinite"):
        load_weights(ToyDepthNet(width=4), tmp_path / "w.safetensors")


def test_f3_nan_weights_through_the_cli_are_one_line(tmp_path: Path) -> None:
    from depthsel.api import get_model

    torch.manual_seed(0)
    state = get_model("fastdepth", width=0.25).state_dict()
    state["decode_conv5.0.0.weight"].fill_(float("nan"))
    save_state_dict(state, tmp_path / "nan.safetensors")
    res = invoke(["dissect", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
                  "--data-set", "num_samples=2", "--data-set", "size=[32,32]", "--weights",
                  tmp_path / "nan.safetensors", "--out", tmp_path / "d"])
    assert res.exit_code == 1, res.stderr
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "'decode_conv5.0.0.weight'" in err, err
    assert not (tmp_path / "d").exists()


def test_f3_integer_buffers_stay_allowed(tmp_path: Path) -> None:
    # BatchNorm's num_batches_tracked is int64 in the model too: that is not a bad dtype.
    state = torch.nn.BatchNorm2d(3).state_dict()
    save_state_dict(state, tmp_path / "bn.safetensors")
    load_weights(torch.nn.BatchNorm2d(3), tmp_path / "bn.safetensors")


# ---------------------------------------------------------------------- F12
TRAIN = ["train", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
         "--data-set", "num_samples=4", "--data-set", "size=[32,32]", "--weight", "0",
         "--batch-size", "4", "--max-steps", "1", "--epochs", "1"]


def _first_loss(tmp_path: Path, name: str, seed: int) -> float:
    res = invoke([*TRAIN, "--out", tmp_path, "--name", name, "--seed", seed])
    assert res.exit_code == 0, res.stderr
    return json.loads((tmp_path / name / "history.json").read_text())["steps"][0]["loss"]


def test_f12_train_seed_seeds_the_initial_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)  # whatever the process did before must not matter
    a = _first_loss(tmp_path, "a", 3)
    torch.rand(100)
    b = _first_loss(tmp_path, "b", 3)
    c = _first_loss(tmp_path, "c", 4)
    assert a == b
    assert c != a  # the seed is what decides: another seed, another start


# ---------------------------------------------------------------------- F11
def test_f11_resumed_dissection_with_permutations_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """The permutation sample, its key generator and the diagnostics are checkpointed with the sums."""
    import torch

    from depthsel import ModelInfo
    from depthsel.analysis import AnalysisContext
    from depthsel.testing import ToyDepthDataset, ToyDepthNet
    from depthsel_plugins.analyses.dissection import DissectionAnalyzer

    info = ModelInfo(input_size=(32, 32), normalization="unit")
    data = ToyDepthDataset(9, seed=4)
    cfg = dict(binner={"name": "sid", "num_bins": 6}, permutations=99, permutation_images=5)

    def run(**extra: object) -> object:
        torch.manual_seed(0)
        model = ToyDepthNet(width=4).eval()
        ctx = AnalysisContext(model=model, dataset=data, info=info, layers=["dec2", "dec3"], batch_size=2,
                              progress=False, seed=7)
        return DissectionAnalyzer(**cfg, **extra).run(ctx)

    whole = run()
    stem = str(tmp_path / "ck")
    run(checkpoint=stem, max_batches=2)  # "killed" after 2 of 5 batches
    resumed = run(checkpoint=stem)
    assert resumed.data["splits"]["test"]["dec3"]["resumed_from"] == 4
    assert set(resumed.tensors) == set(whole.tensors)
    for key, value in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], value, rtol=0, atol=1e-12, equal_nan=True, msg=key)
    for layer in ("dec2", "dec3"):
        a, b = whole.data["splits"]["test"][layer], resumed.data["splits"]["test"][layer]
        assert a["frac_significant"] == b["frac_significant"] and a["per_bin_error"] == b["per_bin_error"]
