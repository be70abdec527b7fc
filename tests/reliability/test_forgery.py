"""Nothing forged, nothing leaked: results verify, and the report stays inside its folder.

Issue #15 cases F5/F6 (edited numbers, optional tensors hash), F7 (report renders
results that fail verification), F8 (deeply nested JSON) and F9 (symlinks out of
the run directory end up in report.html).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from depthsel.errors import ResultFormatError
from depthsel.results import Result, load_result

ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}
SECRET = "s3cr3t-api-key-0123456789"


def invoke(args: list[Any]) -> Any:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def save(directory: Path, value: float = 0.4677, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    return Result(tensors={"ds": torch.rand(4, generator=g)}, data={"mean_ds": value},
                  config={"num_bins": 4}).save(directory)


def edit(directory: Path, change: Any) -> None:
    path = directory / "result.json"
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))


def refused(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------ F5 / F6
def test_f5_an_edited_number_is_detected(tmp_path: Path) -> None:
    res = save(tmp_path / "run" / "res")
    edit(res, lambda p: p["data"].update(mean_ds=0.9999))
    with pytest.raises(ResultFormatError, match="was edited after it was saved"):
        load_result(res)
    refused(invoke(["report", tmp_path / "run"]), "res/ fails verification", "--skip-invalid")
    assert not (tmp_path / "run" / "report.html").exists()


def test_f5_reformatting_the_json_is_not_an_edit(tmp_path: Path) -> None:
    res = save(tmp_path / "res")
    edit(res, lambda p: None)  # same content, other whitespace and key order
    assert load_result(res).data["mean_ds"] == 0.4677


def test_f6_tensors_hash_is_mandatory(tmp_path: Path) -> None:
    from depthsel.results import content_hash

    res, other = save(tmp_path / "res"), save(tmp_path / "other", seed=1)
    # Swap the tensors for another result's, drop the tensors hash and even re-seal the JSON.
    shutil.copyfile(other / "result.safetensors", res / "result.safetensors")

    def drop(p: dict[str, Any]) -> None:
        p.pop("tensors_sha256")
        p["content_sha256"] = content_hash(p)

    edit(res, drop)
    with pytest.raises(ResultFormatError, match="records no tensors_sha256"):
        load_result(res)


def test_f6_content_hash_is_mandatory(tmp_path: Path) -> None:
    res = save(tmp_path / "res")
    edit(res, lambda p: p.pop("content_sha256"))
    with pytest.raises(ResultFormatError, match="records no content_sha256"):
        load_result(res)


# ----------------------------------------------------------------------- F7
@pytest.mark.parametrize("damage", ["swapped", "deleted", "symlinked"])
def test_f7_report_refuses_a_result_that_fails_verification(tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    good, bad = save(run / "good", 0.25), save(run / "bad", 0.4677)
    other = save(tmp_path / "other", 0.5, seed=7)
    target = bad / "result.safetensors"
    target.unlink()
    if damage == "swapped":
        shutil.copyfile(other / "result.safetensors", target)
    elif damage == "symlinked":
        target.symlink_to(other / "result.safetensors")
    refused(invoke(["report", run]), "bad/ fails verification")
    assert not (run / "report.html").exists()
    res = invoke(["report", run, "--skip-invalid", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    skipped = json.loads(res.stdout)["skipped"]
    assert [s for s in skipped if s.startswith("bad/ (fails verification")], skipped
    assert "warning: skipped bad/" in res.stderr
    html = (run / "report.html").read_text()
    assert "0.4677" not in html and "0.25" in html
    load_result(good)


def test_f7_report_checks_a_training_manifest(tmp_path: Path) -> None:
    from depthsel.rundir import open_run

    run = tmp_path / "run"
    with open_run(run) as rd:
        (run / "history.json").write_text(json.dumps({"loss": [1.0, 0.5]}))
        rd.write_manifest("train", {"lr": 0.1}, ["history.json"])
    assert invoke(["report", run]).exit_code == 0
    (run / "history.json").write_text(json.dumps({"loss": [1.0, 0.01]}))
    refused(invoke(["report", run]), "history.json changed since it was written")


# ----------------------------------------------------------------------- F8
def test_f8_deeply_nested_json_is_skipped_not_a_crash(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save(run / "res")
    (run / "metrics.json").write_text("[" * 200_000 + "]" * 200_000)
    (run / "log.jsonl").write_text('{"a": 1}\n' + '{"b":' * 100_000 + "1" + "}" * 100_000 + "\n")
    res = invoke(["report", run, "--format", "json"])
    assert res.exit_code == 0, (res.stderr, res.exception)
    skipped = json.loads(res.stdout)["skipped"]
    assert any(s.startswith("metrics.json (unreadable") and "levels deep" in s for s in skipped), skipped
    assert any(s.startswith("log.jsonl (unreadable") for s in skipped), skipped


def test_f8_deeply_nested_result_json_is_refused(tmp_path: Path) -> None:
    res = save(tmp_path / "res")
    (res / "result.json").write_text('{"format": "depthsel-result", "data": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ResultFormatError, match="levels deep"):
        load_result(res)


# ----------------------------------------------------------------------- F9
def test_f9_report_never_follows_symlinks_out_of_the_run(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text(f"token: {SECRET}\n")
    (outside / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET.encode())
    (outside / "dir").mkdir()
    (outside / "dir" / "metrics.json").write_text(json.dumps({"token": SECRET}))
    run = tmp_path / "run"
    save(run / "res")
    (run / "config.yaml").symlink_to(outside / "secret.yaml")
    (run / "thumb.png").symlink_to(outside / "secret.png")
    (run / "linked").symlink_to(outside / "dir", target_is_directory=True)
    res = invoke(["report", run, "--format", "json"])
    assert res.exit_code == 0, res.stderr
    html = (run / "report.html").read_text()
    import base64

    assert SECRET not in html and base64.b64encode(b"\x89PNG\r\n\x1a\n" + SECRET.encode()).decode() not in html
    skipped = json.loads(res.stdout)["skipped"]
    for name in ("config.yaml (symlink", "thumb.png (symlink", "linked/ (symlink"):
        assert any(s.startswith(name) for s in skipped), (name, skipped)


def test_f9_read_regular_refuses_a_link_swapped_in_after_listing(tmp_path: Path) -> None:
    from depthsel.safeio import read_regular

    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "a.json").symlink_to(tmp_path / "secret")
    with pytest.raises(ResultFormatError, match="is a symlink"):
        read_regular(tmp_path / "a.json", 1024)
