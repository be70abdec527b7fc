"""Errors are one line everywhere: issue #15 cases F1, F4, F16, F17, F18, F19.

Each case used to end in a traceback (or, for F18/F19, in a dead or unparsable
CLI). The generated sweep over every command's options is in
``test_cli_sweep.py``.
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

from depthsel.errors import DepthselError

ROOT = Path(__file__).resolve().parents[2]
ENV = {"COLUMNS": "200", "DEPTHSEL_NO_PROGRESS": "1", "DEPTHSEL_DEBUG": "", "NO_COLOR": "1"}
TINY = ["--model", "fastdepth", "--width", "0.25", "--data", "synthetic", "--data-set", "num_samples=2",
        "--layers", "decode_conv5", "--set", 'binner={"name": "sid", "num_bins": 4}']


def invoke(args: list[Any]) -> Any:
    from depthsel.cli import add_plugin_commands, app

    add_plugin_commands(app)  # demo, train, ... are plugin commands

    return CliRunner(env=ENV).invoke(app, [str(a) for a in args])


def one_line(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: "), result.stderr
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------- F1
def test_f1_fastdepth_size_not_a_multiple_of_32(tmp_path: Path) -> None:
    res = invoke(["dissect", *TINY, "--data-set", "size=[40,72]", "--out", tmp_path / "d"])
    one_line(res, "needs input sides that are multiples of 32, but the data gives 40x72", "size=[32,64]")
    assert not (tmp_path / "d").exists()
    from depthsel.api import get_model

    # Also a ValueError, as before, for code that caught that.
    with pytest.raises(ValueError):
        get_model("fastdepth", width=0.25)(torch.rand(1, 3, 40, 40))


# ----------------------------------------------------------------------- F4
def test_f4_binary_model_config_file(tmp_path: Path) -> None:
    blob = tmp_path / "cfg.json"
    blob.write_bytes(bytes(range(256)) * 4)
    one_line(invoke(["dissect", *TINY, "--model-config", blob, "--data-set", "size=[32,32]",
                     "--out", tmp_path / "d"]), "--model-config file", "is not UTF-8")


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_f4_binary_assignment_file(tmp_path: Path, suffix: str) -> None:
    blob = tmp_path / f"assignment{suffix}"
    blob.write_bytes(bytes(range(256)) * 4)
    one_line(invoke(["dissect", *TINY, "--data-set", "size=[32,32]", "--set", f"assignment={blob}",
                     "--out", tmp_path / "d"]), "assignment")


# ---------------------------------------------------------------------- F16
def test_f16_splits_option_builds_its_datasets(tmp_path: Path) -> None:
    spec = {s: {"name": "synthetic", "split": s, "num_samples": 2, "size": [32, 32]} for s in ("train", "test")}
    res = invoke(["dissect", *TINY, "--data-set", "size=[32,32]", "--set", f"splits={json.dumps(spec)}",
                  "--set", f"checkpoint={tmp_path / 'ck'}", "--out", tmp_path / "d", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    assert set(json.loads(res.stdout)["summary"]["splits"]) == {"train", "test"}
    # One checkpoint per split: "ck.train" and "ck.test" do not collapse into one "ck.ckpt.json".
    assert (tmp_path / "ck.train.ckpt.json").is_file() and (tmp_path / "ck.test.ckpt.json").is_file()
    from depthsel.api import get_dataset

    with pytest.raises(DepthselError, match="needs a 'name' string"):
        get_dataset(split="train")


def test_f16_dissect_splits_with_a_checkpoint(tmp_path: Path) -> None:
    from depthsel.api import get_dataset, get_model, get_model_info
    from depthsel_plugins.analyses.dissection import dissect_splits

    torch.manual_seed(0)
    model = get_model("fastdepth", width=0.25)
    data = {s: get_dataset("synthetic", split=s, num_samples=2, size=(32, 32)) for s in ("train", "test")}
    kw = dict(layers=["decode_conv5"], binner={"name": "sid", "num_bins": 4}, permutations=0, progress=False)
    res = dissect_splits(model, get_model_info("fastdepth"), data, checkpoint=str(tmp_path / "ck"), **kw)
    plain = dissect_splits(model, get_model_info("fastdepth"), data, **kw)
    assert res.splits == plain.splits == ["train", "test"]
    for name, t in plain.tensors.items():
        assert torch.allclose(res.tensors[name], t, rtol=0, atol=0, equal_nan=True), name


# ---------------------------------------------------------------------- F17
def test_f17_disk_full_inside_the_safetensors_write(tmp_path: Path) -> None:
    torch.save({"w": torch.rand(100_000)}, tmp_path / "w.pth")
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old weights")
    # A file-size limit makes the write fail like a full disk (EFBIG instead of ENOSPC).
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
            "from depthsel.cli import main\nmain(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "convert", tmp_path / "w.pth", target, "--force"],
                          capture_output=True, text=True, env={**os.environ, **ENV}, cwd=str(ROOT), timeout=120)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("error: could not write") and "check free disk space" in err, err
    assert target.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth", "w.safetensors"]


# ---------------------------------------------------------------- F18 / F19
PLUGINS = {
    "depthsel_exits": ("exits", "import sys\nsys.exit(3)\n"),
    "depthsel_interrupts": ("interrupts", "raise KeyboardInterrupt\n"),
    "depthsel_chatty": ("chatty", "print('hello from a chatty plugin')\n"),
    "depthsel_sleepy": ("sleepy", "import time\ntime.sleep(0.3)\n"),
}


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("hostile")
    for module, (dist, code) in PLUGINS.items():
        (site / f"{module}.py").write_text(code)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: depthsel-{dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[depthsel]\n{dist} = {module}\n")
    return site


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    env.pop("DEPTHSEL_STRICT_PLUGINS", None)
    env["DEPTHSEL_PLUGIN_SLOW_S"] = "0.2"
    return subprocess.run([sys.executable, "-m", "depthsel.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=120)


def test_f18_plugin_exit_or_interrupt_at_import_is_reported(hostile_site: Path) -> None:
    proc = _run(hostile_site, "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("depthsel "), (proc.returncode, proc.stderr)
    proc = _run(hostile_site, "plugins", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["depthsel-exits:exits"]["status"] == "failed"
    assert "sys.exit(3)" in rows["depthsel-exits:exits"]["error"]
    assert rows["depthsel-interrupts:interrupts"]["status"] == "failed"
    assert "KeyboardInterrupt" in rows["depthsel-interrupts:interrupts"]["error"]
    assert rows["depthsel:binners"]["status"] == "ok"
    assert "Traceback" not in proc.stderr
    assert "warning: depthsel plugin 'depthsel-exits:exits' was skipped" in proc.stderr


def test_f19_plugin_output_at_import_goes_to_stderr(hostile_site: Path) -> None:
    proc = _run(hostile_site, "binners", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    names = [r["name"] for r in json.loads(proc.stdout)]  # stdout is pure JSON
    assert "sid" in names
    assert "hello from a chatty plugin" in proc.stderr


def test_slow_plugin_import_is_named(hostile_site: Path) -> None:
    proc = _run(hostile_site, "binners", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: depthsel plugin 'depthsel-sleepy:sleepy' took" in proc.stderr
    assert "depthsel-chatty:chatty' took" not in proc.stderr
