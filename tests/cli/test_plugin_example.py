"""The example plugin package, installed with pip, works through the real CLI.

The package is installed with ``pip install --target`` into a temporary
folder put on ``PYTHONPATH`` of the subprocesses, rather than into the venv:
the result is the same installed distribution (dist-info with the entry
point) that depthsel discovers, but other tests and developers sharing the
venv never see it, even when the suite runs in parallel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "depthsel-plugin-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = tmp_path_factory.mktemp("plugin-example")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = base / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{proc.stdout}\n{proc.stderr}")
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        yield env
    finally:
        # The "uninstall": the target folder is the whole installation.
        shutil.rmtree(target, ignore_errors=True)


def test_plugins_and_binners_list_the_example(installed: dict[str, str]) -> None:
    proc = run_cli(["plugins", "--format", "json"], env=installed)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    row = rows["depthsel-plugin-example:example"]
    assert row["status"] == "ok" and row["version"] == "0.1.0"
    assert row["hooks"] == ["register_analyzers", "register_binners", "register_models"]
    assert row["source"] == "depthsel_plugin_example.hooks"
    proc = run_cli(["binners", "--format", "json"], env=installed)
    assert proc.returncode == 0, proc.stderr
    binners = {r["name"]: r for r in json.loads(proc.stdout)}
    assert binners["inverse"]["plugin"] == "depthsel-plugin-example:example"
    assert "sid" in binners


def test_analyze_with_the_example_analyzer(installed: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "unit-stats"
    proc = run_cli(["analyze", "unit-stats", "--model", "example-tiny", "--data", "synthetic",
                    "--data-set", "size=[32,32]", "--limit", "2", "--set", "absolute=true",
                    "--out", out, "--format", "json"], env=installed)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["kind"] == "example.unit-stats"
    assert data["summary"]["images"] == 2
    assert set(data["summary"]["layers"]) == {"features", "decoder"}
    assert data["summary"]["layers"]["features"]["units"] == 16
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"] == {"absolute": True}
    assert (out / "result.csv").read_text().startswith("layer,unit,mean,std")
