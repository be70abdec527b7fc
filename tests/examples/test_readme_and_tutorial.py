"""The README's own-model section runs as written; the tutorial script writes every figure the tutorial shows."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "DEPTHSEL_NO_PROGRESS": "1", "COLUMNS": "100", "MPLBACKEND": "Agg"}


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start: nxt if nxt != -1 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The snippets use paths relative to the project root; run them in a scratch copy of that view.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_own_model_python_runs_as_written(workdir: Path) -> None:
    section = _section((ROOT / "README.md").read_text(), "## Your own model")
    (code,) = _blocks(section, "python")
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "up1" in proc.stdout and "target_ds" in proc.stdout
    assert any((workdir / "runs" / "my_unet_figs").glob("*heatmap.png"))


def test_readme_own_model_shell_runs_as_written(workdir: Path) -> None:
    section = _section((ROOT / "README.md").read_text(), "## Your own model")
    (script,) = _blocks(section, "bash")
    commands = [shlex.split(c) for c in script.replace("\\\n", " ").splitlines() if c.strip()]
    assert [c[:2] for c in commands] == [["depthsel", "layers"], ["depthsel", "dissect"]]
    for cmd in commands:
        proc = subprocess.run([sys.executable, "-m", "depthsel.cli", *cmd[1:]], cwd=workdir, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stderr)
    assert (workdir / "runs" / "my_unet_dissection" / "result.json").is_file()


def test_tutorial_script_writes_every_figure_the_tutorial_shows(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tutorial.py"), "--tiny", "--out",
                           str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "interpretable" in proc.stdout and "target DS" in proc.stdout
    tutorial = (ROOT / "docs" / "tutorial.md").read_text()
    shown = re.findall(r"\]\(img/tutorial/([^)]+)\)", tutorial)
    assert shown, "the tutorial shows no figure"
    for rel in shown:
        assert (tmp_path / rel).is_file(), f"the script does not write {rel}"
        assert (ROOT / "docs" / "img" / "tutorial" / rel).is_file(), f"docs/img/tutorial/{rel} is missing"
    assert (tmp_path / "layers.txt").read_text().startswith("name")
