"""Safe loading (no implicit pickle), atomic writes, and validated result files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import depthsel
from depthsel.checkpoints import atomic_write, load_state_dict, load_weights, save_state_dict
from depthsel.errors import CheckpointError, ResultFormatError, UntrustedFileError
from depthsel.results import Result, load_result
from depthsel.testing import ToyDepthNet


class PlantFile:
    """Unpickling this object creates a file: the proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path(self.target).touch, ())


def test_safetensors_round_trip_and_prefix(tmp_path: Path) -> None:
    model = ToyDepthNet(width=4)
    save_state_dict({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    fresh = ToyDepthNet(width=4)
    load_weights(fresh, tmp_path / "w.safetensors")
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k


def test_pth_state_dict_nested_loads(tmp_path: Path) -> None:
    model = ToyDepthNet(width=4)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    load_weights(ToyDepthNet(width=4), tmp_path / "ckpt.pth")


def test_pickled_module_refused_without_trust(tmp_path: Path) -> None:
    model = ToyDepthNet(width=4)
    torch.save({"model": model}, tmp_path / "whole.pth")
    with pytest.raises(UntrustedFileError, match="trust_pickle"):
        load_state_dict(tmp_path / "whole.pth")
    with pytest.warns(RuntimeWarning, match="runs code"):
        state = load_state_dict(tmp_path / "whole.pth", trust_pickle=True)
    assert set(state) == set(model.state_dict())


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": PlantFile(str(marker))}, path)
    with pytest.raises(UntrustedFileError):
        load_state_dict(path)
    assert not marker.exists()
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps(PlantFile(str(marker))))
    with pytest.raises((UntrustedFileError, CheckpointError)):
        load_state_dict(raw)
    assert not marker.exists()


def test_mismatch_and_truncated_files(tmp_path: Path) -> None:
    save_state_dict(ToyDepthNet(width=4).state_dict(), tmp_path / "w4.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(ToyDepthNet(width=8), tmp_path / "w4.safetensors")
    data = (tmp_path / "w4.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_state_dict(tmp_path / "cut.safetensors")
    torch.save(ToyDepthNet(width=4).state_dict(), tmp_path / "w.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "w.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_state_dict(tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pth")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def failing(tmp: Path) -> None:
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "out.json", failing)
    assert list(tmp_path.iterdir()) == []


class ToyResult(Result):
    kind = "toy-test"

    def rows(self):
        return [{"unit": i, "value": float(v)} for i, v in enumerate(self.tensors["v"])]


def test_result_save_load_validate(tmp_path: Path) -> None:
    r = ToyResult(tensors={"v": torch.arange(3, dtype=torch.float64)}, data={"score": 0.5},
                  config={"a": 1})
    r.save(tmp_path / "res")
    back = load_result(tmp_path / "res")
    assert isinstance(back, ToyResult) and back.data["score"] == 0.5
    assert torch.equal(back.tensors["v"], r.tensors["v"])
    assert (tmp_path / "res" / "result.csv").read_text().splitlines()[0] == "unit,value"
    meta = json.loads((tmp_path / "res" / "result.json").read_text())
    meta["tensor_specs"]["v"]["shape"] = [4]
    (tmp_path / "res" / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFormatError, match="do not belong together"):
        load_result(tmp_path / "res")
    meta["format_version"] = 99
    (tmp_path / "res" / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFormatError, match="version"):
        load_result(tmp_path / "res")
    (tmp_path / "res" / "result.json").write_text("{not json")
    with pytest.raises(ResultFormatError, match="corrupt"):
        load_result(tmp_path / "res")
    with pytest.raises(ResultFormatError):
        load_result(tmp_path / "nothing-here")


def test_public_api_names() -> None:
    for name in ("get_binner", "ResponseAccumulator", "depth_selectivity", "assign_bins",
                 "SelectivityRegularizer", "Capture", "LayerSelector", "DepthselError"):
        assert hasattr(depthsel, name), name
