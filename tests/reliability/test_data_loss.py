"""Nothing lost: run directories are locked, nothing is overwritten without --force/--resume.

Issue #15 cases F10 (report --out onto a result), F13 (dissect onto an existing
result, and two dissects to one --out), F14 (two trains with one --name) and F15
(resume with changed settings). Each test states the case it covers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from depthsel import errors
from depthsel.errors import ConfigError
from depthsel.results import Result, load_result

ROOT = Path(__file__).resolve().parents[2]
ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}
TRAIN = ["train", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
         "--data-set", "num_samples=8", "--data-set", "size=[32,32]", "--layers", "decode_conv5",
         "--binner", '{"name": "sid", "num_bins": 2, "min_depth": 0.5, "max_depth": 10}',
         "--weight", "0.5", "--batch-size", "4", "--checkpoint-every", "1", "--epochs", "1"]
DISSECT = ["dissect", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
           "--data-set", "num_samples=4", "--data-set", "size=[32,32]", "--layers", "decode_conv5",
           "--set", "binner={\"name\": \"sid\", \"num_bins\": 4}", "--batch-size", "2"]


def open_run(path: Path) -> Any:
    # Imported per call, so that this file also runs (and fails case by case) on a
    # depthsel that predates run-directory locks.
    from depthsel.rundir import open_run as _open_run

    return _open_run(path)


def verify_manifest(path: Path) -> list[str]:
    from depthsel.rundir import RunDir

    return RunDir(path).verify_manifest()


def invoke(args: list[Any]) -> Any:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def one_line_error(result: Any, *needles: str) -> str:
    """The error line; asserts exit 1, one line, no traceback, and every needle in it."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in err, err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --------------------------------------------------------------------- F10
def test_f10_report_out_onto_a_result_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Result(tensors={"x": torch.ones(3)}, data={"mean_ds": 0.4677}).save(run / "res")
    before = snapshot(run / "res")
    err = one_line_error(invoke(["report", run, "--out", run / "res" / "result.json"]),
                         "already exists and is not a depthsel report", "--force")
    assert "result.json" in err
    assert snapshot(run / "res") == before
    load_result(run / "res")
    # The default target is replaced on every run: it is a report written before.
    assert invoke(["report", run]).exit_code == 0
    assert invoke(["report", run]).exit_code == 0
    # --force is what it takes to replace a file that is not a report.
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    one_line_error(invoke(["report", run, "--out", other]), "not a depthsel report")
    assert other.read_text() == "mine"
    assert invoke(["report", run, "--out", other, "--force"]).exit_code == 0
    assert other.read_text().startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------- F13
def test_f13_dissect_onto_an_existing_result_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "d"
    first = invoke([*DISSECT, "--out", out])
    assert first.exit_code == 0, first.stderr
    before = snapshot(out)
    one_line_error(invoke([*DISSECT, "--out", out, "--seed", "1"]), "already holds a result", "--force")
    assert snapshot(out) == before
    assert invoke([*DISSECT, "--out", out, "--seed", "1", "--force"]).exit_code == 0
    assert snapshot(out)["result.json"] != before["result.json"]
    assert verify_manifest(out) == []


def test_f13_dissect_into_a_locked_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "d"
    with open_run(out):
        err = one_line_error(invoke([*DISSECT, "--out", out]), "is in use by another depthsel process")
        assert f"pid {os.getpid()}" in err
        assert not (out / "result.json").exists()
    # Released: the directory (created by the holder, still empty) was removed.
    assert not out.exists()
    assert invoke([*DISSECT, "--out", out]).exit_code == 0


def _spawn(args: list[Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "depthsel.cli", *map(str, args)], cwd=str(ROOT),
                            env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_f13_two_concurrent_dissects_to_one_out_one_wins(tmp_path: Path) -> None:
    out = tmp_path / "d"
    procs = [_spawn([*DISSECT, "--out", out, "--seed", str(i)]) for i in range(2)]
    done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in done)
    assert codes == [0, 1], done
    loser = next(err for rc, _, err in done if rc == 1)
    assert "Traceback" not in loser
    assert "is in use by another depthsel process" in loser or "already holds a result" in loser
    winner = next(i for i, (rc, _, _) in enumerate(done) if rc == 0)
    assert load_result(out).meta["cli"]["seed"] == winner


# --------------------------------------------------------------------- F14
def test_f14_second_train_with_the_same_name_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert invoke([*TRAIN, "--out", tmp_path, "--name", "r"]).exit_code == 0
    before = snapshot(run)
    one_line_error(invoke([*TRAIN, "--out", tmp_path, "--name", "r", "--lr", "0.01"]),
                   "already holds a training run", "--resume", "--force")
    assert snapshot(run) == before
    with open_run(run):
        one_line_error(invoke([*TRAIN, "--out", tmp_path, "--name", "r", "--force"]), "is in use")
    assert snapshot(run) == before
    assert verify_manifest(run) == []


def test_f14_two_concurrent_trains_one_wins(tmp_path: Path) -> None:
    procs = [_spawn([*TRAIN, "--out", tmp_path, "--name", "r", "--lr", lr]) for lr in ("0.001", "0.002")]
    done = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in done) == [0, 1], done
    loser = next(err for rc, _, err in done if rc == 1)
    assert "Traceback" not in loser
    assert "is in use" in loser or "already holds a training run" in loser
    winner = next(i for i, (rc, _, _) in enumerate(done) if rc == 0)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["lr"] == (0.001, 0.002)[winner]
    # Every file in the directory is the winner's: the manifest verifies.
    assert verify_manifest(tmp_path / "r") == []


# --------------------------------------------------------------------- F15
@pytest.mark.parametrize(("change", "key"), [
    (["--lr", "0.01"], "lr"),
    (["--batch-size", "2"], "batch_size"),
    (["--loss", "silog"], "loss"),
    (["--weight", "0.25"], "selectivity.weight"),
    (["--width", "0.5"], "extra.model.config.width"),
    (["--data-set", "num_samples=6"], "extra.data_settings.num_samples"),
])
def test_f15_resume_with_changed_settings_is_refused(tmp_path: Path, change: list[str], key: str) -> None:
    run = tmp_path / "r"
    assert invoke([*TRAIN, "--out", tmp_path, "--name", "r"]).exit_code == 0
    before = snapshot(run)
    args = [*TRAIN, "--out", tmp_path, "--name", "r", "--resume"]
    idx = args.index(change[0]) if change[0] in args and change[0] != "--data-set" else None
    if idx is not None:
        args[idx + 1] = change[1]
    else:
        args += change
    one_line_error(invoke(args), "cannot resume", key)
    # Validation happens before anything is written: config.json still tells the truth.
    assert snapshot(run) == before


def test_f15_resume_with_the_same_settings_continues(tmp_path: Path) -> None:
    run = tmp_path / "r"
    (tmp_path / "r").mkdir()
    (run / ".model.safetensors.k1ll3d.tmp").write_bytes(b"half a file")  # a killed writer's leftover
    assert invoke([*TRAIN, "--out", tmp_path, "--name", "r"]).exit_code == 0
    assert not (run / ".model.safetensors.k1ll3d.tmp").exists()
    res = invoke([*TRAIN, "--out", tmp_path, "--name", "r", "--resume", "--epochs", "2", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["steps"] == 4
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_f15_hand_edited_config_is_not_trusted_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert invoke([*TRAIN, "--out", tmp_path, "--name", "r"]).exit_code == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["lr"] = 0.01
    (run / "config.json").write_text(json.dumps(cfg))
    one_line_error(invoke([*TRAIN, "--out", tmp_path, "--name", "r", "--resume", "--lr", "0.01"]),
                   "was edited after the run wrote it")


def test_f15_api_resume_mismatch_names_keys_before_writing(tmp_path: Path) -> None:
    from depthsel.testing import ToyDepthDataset, ToyDepthNet
    from depthsel.training import TrainConfig, Trainer
    from depthsel.modelinfo import ModelInfo

    info = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec3",))
    data = ToyDepthDataset(num_samples=8, seed=1)
    cfg = dict(name="api", out_dir=str(tmp_path), epochs=1, batch_size=4, checkpoint_every=1)
    torch.manual_seed(0)
    Trainer(ToyDepthNet(width=4), info, data, TrainConfig(**cfg)).fit(resume=False)
    before = snapshot(tmp_path / "api")
    with pytest.raises(ConfigError, match=r"lr: 0\.001 -> 0\.5; schedule: 'cosine' -> 'none'"):
        Trainer(ToyDepthNet(width=4), info, data,
                TrainConfig(**cfg, lr=0.5, schedule="none")).fit(resume=True)
    with pytest.raises(getattr(errors, "RunDirError", errors.DepthselError), match="already holds a training run"):
        Trainer(ToyDepthNet(width=4), info, data, TrainConfig(**cfg)).fit(resume=False, overwrite=False)
    assert snapshot(tmp_path / "api") == before
    # A model that does not fit the checkpoint: one DepthselError, not torch's RuntimeError.
    from depthsel.errors import DepthselError

    with pytest.raises(DepthselError, match="does not fit this model"):
        Trainer(ToyDepthNet(width=8), info, data, TrainConfig(**cfg)).fit(resume=True)


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with open_run(tmp_path / "x") as rd:
        (rd.path / "kept").write_text("1")
        with pytest.raises(getattr(errors, "RunDirError", errors.DepthselError), match="in use"):
            with open_run(tmp_path / "x"):
                pass
    with open_run(tmp_path / "x"):
        pass
    assert (tmp_path / "x" / "kept").is_file() and (tmp_path / "x" / ".depthsel.lock").is_file()
    (tmp_path / "f").write_text("")
    with pytest.raises(getattr(errors, "RunDirError", errors.DepthselError), match="not a directory"):
        with open_run(tmp_path / "f"):
            pass
