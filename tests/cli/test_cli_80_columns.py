"""The CLI at 80 columns and piped: no broken words, full option names, --set keys in help."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli_support import invoke, invoke_json, run_cli

NARROW = {"COLUMNS": "80"}


def _words(text: str, pattern: str = r"[A-Za-z0-9_.\-]+") -> set[str]:
    return set(re.findall(pattern, text))


def test_models_table_never_breaks_a_word() -> None:
    out = run_cli(["models"], env=NARROW)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    rows = json.loads(run_cli(["models", "--format", "json"], env=NARROW).stdout)
    words, plain = _words(out.stdout), _words(out.stdout, r"[A-Za-z0-9_\-]+")
    for row in rows:
        # Every layer name and every word of a description appears whole in the table.
        for layer in row["info"]["suggested_layers"]:
            assert layer in words, layer
        for word in re.findall(r"[A-Za-z0-9_\-]+", row["description"]):
            assert word in plain, word


@pytest.mark.parametrize("command", ["train", "dissect", "analyze", "layers"])
def test_help_has_full_option_names_and_no_bool_metavar(command: str) -> None:
    out = run_cli([command, "--help"], env=NARROW)
    assert out.returncode == 0, out.stderr
    assert "<bool>" not in out.stdout and "…" not in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    if command == "train":
        for name in ("--checkpoint-every", "--resume", "--force", "--amp", "--normalization"):
            assert name in out.stdout, name
    if command in ("dissect", "analyze"):
        assert "fit_bins_to_units=True" in out.stdout and "permutations=999" in out.stdout
    if command == "analyze":
        assert "ablation:" in out.stdout and "masks:" in out.stdout


def test_amp_trains_in_bfloat16_on_cpu(runner, tmp_path: Path) -> None:
    out = invoke_json(runner, ["train", "--model", "fastdepth", "--width", "0.25", "--data", "synthetic",
                               "--data-set", "num_samples=4", "--data-set", "size=[32,32]", "--layers",
                               "decode_conv5", "--binner", '{"name": "sid", "num_bins": 2}',
                               "--epochs", "1", "--batch-size", "4", "--amp", "--out", tmp_path])
    assert out["steps"] == 1 and out["target_ds"] == out["target_ds"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["amp"] is True
