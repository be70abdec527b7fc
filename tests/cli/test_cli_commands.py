"""layers, convert, analyze/dissect and error handling, through CliRunner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from cli_support import assert_one_line_error, invoke, invoke_json
from datahelpers import shared_data_dir

from depthsel.cli.errors import EXIT_INTERRUPTED, handle_errors
from depthsel.errors import DepthselError
from depthsel.testing import ToyDepthNet

# ------------------------------------------------------------------ layers


def test_layers_lists_shapes_and_units(runner: Any, toy_plugin: str) -> None:
    rows = {r["name"]: r for r in invoke_json(runner, ["layers", "toy", "--width", "4"])}
    assert rows["dec2"]["shape"] == [1, 8, 16, 16]
    assert rows["dec2"]["units"] == 8 and rows["dec2"]["suggested"] is True
    assert rows["dec3"]["shape"] == [1, 4, 32, 32]
    assert rows["enc1.0"]["type"] == "Conv2d"


def test_layers_pattern_and_input_size(runner: Any, toy_plugin: str) -> None:
    rows = invoke_json(runner, ["layers", "toy", "--pattern", "dec?", "--input-size", "64x48"])
    assert [r["name"] for r in rows] == ["dec1", "dec2", "dec3"]
    assert rows[-1]["shape"] == [1, 8, 64, 48]


def test_layers_table_output(runner: Any, toy_plugin: str) -> None:
    result = invoke(runner, ["layers", "toy", "-p", "dec*"])
    assert result.exit_code == 0
    assert "dec3" in result.stdout and "enc1" not in result.stdout


def test_layers_first_party_tiny_model(runner: Any) -> None:
    rows = invoke_json(runner, ["layers", "fastdepth", "--width", "0.0625", "-p", "decode_conv5"])
    assert rows[0]["name"] == "decode_conv5" and rows[0]["shape"][-2:] == [112, 112]


@pytest.mark.parametrize("args, needle", [
    (["layers", "no-such-model"], "no model named"),
    (["layers", "toy", "--pattern", "zzz*"], "matched no module"),
    (["layers", "toy", "--input-size", "big"], "HxW"),
    (["layers", "toy", "--model-config", "{oops"], "--model-config"),
    (["layers", "toy", "--model-config", '{"depth": 3}'], "unknown option"),
])
def test_layers_bad_input_is_one_line(runner: Any, toy_plugin: str, args: list[str], needle: str) -> None:
    assert_one_line_error(invoke(runner, args), needle)


# ----------------------------------------------------------------- convert


def test_convert_state_dict(runner: Any, tmp_path: Path) -> None:
    model = ToyDepthNet(width=4)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.pth")
    out = tmp_path / "model.safetensors"
    data = invoke_json(runner, ["convert", tmp_path / "model.pth", out])
    assert data["tensors"] == len(model.state_dict()) and data["trusted_pickle"] is False
    from safetensors.torch import load_file

    loaded = load_file(str(out))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    # Refuses to overwrite without --force.
    assert_one_line_error(invoke(runner, ["convert", tmp_path / "model.pth", out]), "--force")
    assert invoke(runner, ["convert", tmp_path / "model.pth", out, "--force"]).exit_code == 0


def test_convert_refuses_pickled_module_without_trust(runner: Any, tmp_path: Path) -> None:
    torch.save(ToyDepthNet(width=4), tmp_path / "whole.pth")
    out = tmp_path / "whole.safetensors"
    assert_one_line_error(invoke(runner, ["convert", tmp_path / "whole.pth", out]), "--trust-pickle")
    assert not out.exists()
    result = invoke(runner, ["convert", tmp_path / "whole.pth", out, "--trust-pickle", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    assert "runs whatever code" in " ".join(result.stderr.split())
    assert json.loads(result.stdout)["trusted_pickle"] is True
    assert out.is_file()


# Garbage bytes may be reported as unreadable or as untrusted pickle: either way one line.
@pytest.mark.parametrize("name, needle", [("missing.pth", "does not exist"), ("garbage.pth", "garbage.pth")])
def test_convert_bad_files(runner: Any, tmp_path: Path, name: str, needle: str) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    assert_one_line_error(invoke(runner, ["convert", tmp_path / name, tmp_path / "o.safetensors"]), needle)
    assert_one_line_error(invoke(runner, ["convert", tmp_path / "garbage.pth", tmp_path / "o.bin"]),
                          ".safetensors")


# ----------------------------------------------------------------- analyze


def test_analyze_runs_and_saves(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    data = invoke_json(runner, ["analyze", "toy-mean", "--model", "toy", "--data", "toyset", "--layers",
                                "dec2,dec3", "--set", "scale=2", "--out", out, "--batch-size", "2",
                                "--limit", "3"])
    assert data["kind"] == "tests.toy-mean" and data["out"] == str(out)
    assert data["summary"]["images"] == 3
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"] == {"scale": 2}
    assert saved["meta"]["cli"]["layers"] == ["dec2", "dec3"]
    assert saved["meta"]["cli"]["model"]["name"] == "toy"


def test_analyze_defaults_to_suggested_layers_and_table(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    result = invoke(runner, ["analyze", "toy-mean", "-m", "toy", "-d", "toyset", "-o", tmp_path / "r"])
    assert result.exit_code == 0, result.stderr
    assert "layers.dec2" in result.stdout and "saved to" in result.stderr


def test_analyze_with_weights(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    from depthsel import save_state_dict

    save_state_dict(ToyDepthNet(width=8).state_dict(), tmp_path / "w.safetensors")
    args = ["analyze", "toy-mean", "-m", "toy", "-d", "toyset", "--weights"]
    assert invoke(runner, [*args, tmp_path / "w.safetensors", "-o", tmp_path / "r"]).exit_code == 0
    assert_one_line_error(invoke(runner, [*args, tmp_path / "w.safetensors", "--width", "4",
                                          "-o", tmp_path / "r2"]), "does not fit")


@pytest.mark.parametrize("extra, needle", [
    (["--data", "nosuchdata"], "no dataset named"),
    (["--data", "folder:"], "empty path"),
    (["--data", "folder:/definitely/not/here"], "does not exist"),
    (["--data", "toyset", "--set", "novalue"], "key=value"),
    (["--data", "toyset", "--set", "bogus=1"], "unknown option"),
    (["--data", "toyset", "--layers", "nope"], "matched no module"),
    (["--data", "toyset", "--model-config", "[1, 2]"], "JSON object"),
])
def test_analyze_bad_input_is_one_line(runner: Any, toy_plugin: str, tmp_path: Path,
                                       extra: list[str], needle: str) -> None:
    args = ["analyze", "toy-mean", "--model", "toy", "--out", tmp_path / "r", *extra]
    if "--data" not in extra:
        args += ["--data", "toyset"]
    assert_one_line_error(invoke(runner, args), needle)


def test_analyze_unknown_analyzer(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    result = invoke(runner, ["analyze", "toy-maen", "-m", "toy", "-d", "toyset", "-o", tmp_path])
    assert_one_line_error(result, "did you mean 'toy-mean'")


def test_analyze_missing_option_is_usage_error(runner: Any) -> None:
    assert invoke(runner, ["analyze", "toy-mean", "--model", "toy"]).exit_code == 2


def test_analyze_on_synthetic_data(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    data = invoke_json(runner, ["analyze", "toy-mean", "-m", "toy", "-d", "synthetic", "--data-set",
                                "size=[32,32]", "--limit", "2", "-o", tmp_path / "s"])
    assert data["summary"]["images"] == 2


@pytest.mark.realdata
def test_analyze_on_folder_data(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    root = shared_data_dir("nyu2_mini_test")
    data = invoke_json(runner, ["analyze", "toy-mean", "-m", "toy", "-d", f"folder:{root}", "--data-set",
                                "size=[48,64]", "--limit", "2", "-o", tmp_path / "f"])
    assert data["summary"]["images"] == 2


def test_dissect_is_analyze_dissection(runner: Any, toy_plugin: str, tmp_path: Path) -> None:
    data = invoke_json(runner, ["dissect", "-m", "toy", "--width", "32", "-d", "synthetic", "--data-set",
                                "size=[32,32]", "--limit", "4", "--layers", "dec2", "-o", tmp_path / "d"])
    assert (tmp_path / "d" / "result.json").is_file()
    assert json.loads((tmp_path / "d" / "result.json").read_text())["meta"]["cli"]["analyzer"] == "dissection"
    assert data["out"] == str(tmp_path / "d")


# ------------------------------------------------------------ error policy


def _scratch_app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:
        """Second command so typer builds a group."""

    return app


def test_debug_env_shows_traceback(runner: Any, toy_plugin: str) -> None:
    result = invoke(runner, ["layers", "no-such-model"], env={"DEPTHSEL_DEBUG": "1"})
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "UnknownPluginError" in result.stderr
    assert "DEPTHSEL_DEBUG=1" not in result.stderr


def test_exit_codes(runner: Any) -> None:
    assert runner.invoke(_scratch_app(KeyboardInterrupt()), ["boom"]).exit_code == EXIT_INTERRUPTED
    assert runner.invoke(_scratch_app(DepthselError("bad\ninput")), ["boom"]).exit_code == 1
    bug = runner.invoke(_scratch_app(ZeroDivisionError("bug")), ["boom"])
    assert bug.exit_code == 1 and isinstance(bug.exception, ZeroDivisionError)  # bugs keep their traceback
