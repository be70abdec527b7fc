"""Untrusted files: malicious pickles never run, dataset paths never escape, results are validated.

The planted pickle's ``__reduce__`` creates a marker file when unpickled. Every
depthsel entry point that reads weights or results is fed it without the trust
flag, and the marker must never appear.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import depthsel
from depthsel.checkpoints import load_state_dict, load_weights, save_state_dict
from depthsel.errors import (
    CheckpointError,
    DatasetError,
    DepthselError,
    ResultFormatError,
    UntrustedFileError,
)
from depthsel.results import Result, load_result
from depthsel.testing import ToyDepthNet

CLI_ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}


class Planted:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(params=["torch-zip", "torch-legacy", "raw-pickle", "nested-module"])
def evil(request: pytest.FixtureRequest, tmp_path: Path, marker: Path) -> Path:
    """A malicious .pth in each container torch.load accepts."""
    path = tmp_path / f"evil-{request.param}.pth"
    weights = ToyDepthNet(width=4).state_dict()
    if request.param == "torch-zip":
        torch.save({"state_dict": weights, "extra": Planted(marker)}, path)
    elif request.param == "torch-legacy":
        torch.save({"state_dict": weights, "extra": Planted(marker)}, path,
                   _use_new_zipfile_serialization=False)
    elif request.param == "raw-pickle":
        path.write_bytes(pickle.dumps({"extra": Planted(marker)}))
    else:
        # A pickled whole module (as FastDepth releases ship) with the payload inside.
        net = ToyDepthNet(width=4)
        net.payload = Planted(marker)  # type: ignore[attr-defined]
        torch.save({"model": net}, path)
    assert not marker.exists()
    return path


def test_load_state_dict_refuses_without_trust(evil: Path, marker: Path) -> None:
    with pytest.raises(UntrustedFileError, match="trust_pickle=True.*depthsel convert"):
        load_state_dict(evil)
    assert not marker.exists()


def test_load_weights_refuses_without_trust(evil: Path, marker: Path) -> None:
    model = ToyDepthNet(width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UntrustedFileError):
        load_weights(model, evil)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registered_model_plus_load_refuses(evil: Path, marker: Path) -> None:
    model = depthsel.get_model("fastdepth", width=0.25)
    with pytest.raises(UntrustedFileError):
        load_weights(model, evil, strict=False)
    assert not marker.exists()


def test_trust_flag_is_what_runs_the_code(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "extra": Planted(marker)}, path)
    with pytest.warns(RuntimeWarning, match="runs code from the file"):
        with pytest.raises(CheckpointError, match="holds no tensor state dict"):
            load_state_dict(path, trust_pickle=True)
    assert marker.exists()  # the flag really means "run this file's code"


def test_result_and_checkpoint_files_are_never_unpickled(tmp_path: Path, marker: Path) -> None:
    blob = pickle.dumps({"x": Planted(marker)})
    res = Result(tensors={"x": torch.rand(2, 3)}, data={"a": 1})
    out = res.save(tmp_path / "res")
    (out / "result.safetensors").write_bytes(blob)
    with pytest.raises(ResultFormatError):
        load_result(out)
    (tmp_path / "w.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_state_dict(tmp_path / "w.safetensors")
    # A dissection checkpoint whose tensors file is a pickle.
    from depthsel.checkpoints import read_checkpoint_pair

    (tmp_path / "dissect.json").write_text(json.dumps(
        {"images_done": 2, "fingerprint": "f", "tensors": "dissect.0000000002.safetensors"}))
    (tmp_path / "dissect.0000000002.safetensors").write_bytes(blob)
    with pytest.raises(ResultFormatError, match="delete it to start over"):
        read_checkpoint_pair(tmp_path / "dissect.json")
    assert not marker.exists()


# ----------------------------------------------------------------------- CLI
def invoke(args: list[Any]) -> Any:
    from typer.testing import CliRunner

    from depthsel.cli import add_plugin_commands, app


    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=CLI_ENV).invoke(app, [str(a) for a in args])




def test_cli_convert_refuses_then_warns_with_trust(tmp_path: Path, marker: Path) -> None:
    evil = tmp_path / "evil.pth"
    weights = {"w": torch.ones(3)}
    torch.save({"state_dict": weights, "model": Planted(marker)}, evil)
    out = tmp_path / "out.safetensors"
    result = invoke(["convert", evil, out])
    assert result.exit_code == 1 and "--trust-pickle" in result.stderr, result.stderr
    assert not marker.exists() and not out.exists()
    result = invoke(["convert", evil, out, "--trust-pickle"])
    assert "warning: --trust-pickle" in result.stderr and "runs whatever code" in result.stderr
    assert marker.exists()
    assert result.exit_code == 0, result.stderr
    assert set(load_state_dict(out)) == {"w"}


@pytest.mark.parametrize("command", [["dissect"], ["analyze", "dissection"]])
def test_cli_analyze_and_dissect_refuse_pickled_weights(tmp_path: Path, marker: Path,
                                                       command: list[str]) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "extra": Planted(marker)}, evil)
    out = tmp_path / "out"
    result = invoke([*command, "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
                     "--limit", "1", "--weights", evil, "--out", out])
    assert result.exit_code == 1, result.stderr
    assert "contains pickled Python objects" in result.stderr and "--trust-pickle" in result.stderr
    assert not marker.exists() and not out.exists()


def test_cli_report_does_not_unpickle(tmp_path: Path, marker: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.safetensors").write_bytes(pickle.dumps(Planted(marker)))
    (run / "model.pth").write_bytes(pickle.dumps(Planted(marker)))
    invoke(["report", run, "--out", tmp_path / "r.html"])
    assert not marker.exists()


# ------------------------------------------------------------ dataset paths


def make_root(root: Path, rows: list[str]) -> Path:
    from PIL import Image

    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "rgb/0.png")
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(root / "depth/0.png")
    (root / "index.csv").write_text("rgb,depth\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize(("row", "why"), [
    ("../../etc/passwd,depth/0.png", "escapes the dataset root"),
    ("rgb/../../../etc/passwd,depth/0.png", "escapes the dataset root"),
    ("..\\..\\etc\\passwd,depth/0.png", "escapes the dataset root"),
    ("/etc/passwd,depth/0.png", "absolute path"),
    ("C:/Windows/win.ini,depth/0.png", "absolute path"),
    ("rgb/0.png,../../../etc/shadow", "escapes the dataset root"),
])
def test_index_paths_cannot_escape_root(tmp_path: Path, row: str, why: str) -> None:
    root = make_root(tmp_path / "ds", [row])
    with pytest.raises(DatasetError, match=why):
        depthsel.get_dataset("folder", root=str(root))


def test_symlinks_to_outside_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes((make_root(tmp_path / "other", ["rgb/0.png,depth/0.png"]) / "rgb/0.png").read_bytes())
    root = make_root(tmp_path / "ds", ["rgb/link.png,depth/0.png"])
    os.symlink(outside, root / "rgb/link.png")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        depthsel.get_dataset("folder", root=str(root))
    # A symlinked directory inside the root, pointing out of it.
    root2 = make_root(tmp_path / "ds2", ["etc/passwd,depth/0.png"])
    os.symlink("/etc", root2 / "etc")
    with pytest.raises(DatasetError, match="outside the dataset root"):
        depthsel.get_dataset("folder", root=str(root2))
    # The index itself may not live outside the root either.
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        depthsel.get_dataset("folder", root=str(root2), index="../ds/index.csv")


def test_symlink_inside_root_is_fine(tmp_path: Path) -> None:
    root = make_root(tmp_path / "ds", ["rgb/alias.png,depth/0.png"])
    os.symlink(root / "rgb/0.png", root / "rgb/alias.png")
    assert depthsel.get_dataset("folder", root=str(root))[0]["image"].shape == (3, 4, 4)


# --------------------------------------------------------- result validation
@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return Result(tensors={"x": torch.rand(2, 3), "n": torch.arange(4)}, data={"a": 1},
                  config={"c": 2}).save(tmp_path / "res")


def tamper(directory: Path, **changes: Any) -> None:
    path = directory / "result.json"
    payload = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            payload.pop(key)
        else:
            payload[key] = value
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize(("changes", "match"), [
    ({"format_version": 99}, "format version 99"),
    ({"format_version": None}, "format version None"),
    ({"format": "something-else"}, "is not a depthsel result"),
    ({"kind": 3}, "field 'kind' must be a str"),
    ({"config": [1, 2]}, "field 'config' must be a dict"),
    ({"data": "x"}, "field 'data' must be a dict"),
    ({"tensor_specs": {"x": {"shape": [3, 2], "dtype": "float32"},
                       "n": {"shape": [4], "dtype": "int64"}}}, "do not belong together"),
    ({"tensor_specs": {"x": {"shape": [2, 3], "dtype": "float64"},
                       "n": {"shape": [4], "dtype": "int64"}}}, "do not belong together"),
    ({"tensor_specs": {"x": "float32", "n": {"shape": [4], "dtype": "int64"}}}, "tensor spec of 'x'"),
    ({"tensor_specs": {"x": {"shape": [2, 3], "dtype": "float32"}}}, "not listed"),
    ({"tensor_specs": {"x": {"shape": [2, 3], "dtype": "float32"}, "n": {"shape": [4], "dtype": "int64"},
                       "y": {"shape": [1], "dtype": "float32"}}}, "'y' is listed"),
])
def test_result_json_is_validated(saved: Path, changes: dict[str, Any], match: str) -> None:
    tamper(saved, **changes)
    with pytest.raises(ResultFormatError, match=match):
        load_result(saved)


def test_result_of_another_kind_is_refused(saved: Path) -> None:
    class OtherResult(Result):
        kind = "tests.reliability-other"

    with pytest.raises(ResultFormatError, match="not 'tests.reliability-other'"):
        OtherResult.load(saved)


def test_safetensors_state_dict_roundtrip_only_holds_tensors(tmp_path: Path) -> None:
    path = save_state_dict({"a": torch.ones(2)}, tmp_path / "w.safetensors")
    assert torch.equal(load_state_dict(path)["a"], torch.ones(2))
    with pytest.raises(DepthselError):
        load_state_dict(tmp_path / "missing.safetensors")
