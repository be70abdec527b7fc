"""``depthsel train``: runs, writes a resumable run directory, and fails in one line on bad input."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import assert_one_line_error, invoke, invoke_json

ARGS = ["train", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
        "--data-set", "num_samples=8", "--data-set", "size=[32,32]", "--layers", "decode_conv5",
        "--binner", '{"name": "sid", "num_bins": 2, "min_depth": 0.5, "max_depth": 10}',
        "--weight", "0.5", "--batch-size", "4", "--checkpoint-every", "1"]


def test_train_writes_run_and_resumes(runner, tmp_path: Path) -> None:
    out = invoke_json(runner, [*ARGS, "--epochs", "1", "--out", str(tmp_path), "--name", "r"])
    run = tmp_path / "r"
    assert out["steps"] == 2 and out["run_dir"] == str(run)
    for name in ("config.json", "checkpoint.json", "model.safetensors", "history.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["selectivity"]["layers"] == ["decode_conv5"]
    # A second call with more epochs continues from step 2 instead of starting over.
    again = invoke_json(runner, [*ARGS, "--epochs", "2", "--out", str(tmp_path), "--name", "r", "--resume"])
    assert again["steps"] == 4
    history = json.loads((run / "history.json").read_text())
    assert [s["step"] for s in history["steps"]] == [1, 2, 3, 4]


def test_train_bad_inputs_are_one_line(runner, tmp_path: Path) -> None:
    bad_binner = [a if not a.startswith("{") else "{not json" for a in ARGS]
    result = invoke(runner, [*bad_binner, "--out", str(tmp_path)])
    assert_one_line_error(result, "--binner")
    result = invoke(runner, [*ARGS, "--loss", "l7", "--out", str(tmp_path)])
    assert_one_line_error(result, "loss")
    result = invoke(runner, ["train", "--model", "fastdeep", "--data", "synthetic", "--out", str(tmp_path)])
    assert_one_line_error(result, "fastdepth")
