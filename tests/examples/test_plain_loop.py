"""examples/plain_loop.py runs at tiny size and its three added lines raise target DS."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plain_loop.py"


def test_plain_loop_raises_target_ds() -> None:
    spec = importlib.util.spec_from_file_location("plain_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(steps=120)
    assert out["last_ds"] > out["first_ds"] + 0.3


def test_plain_loop_script_runs() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "target DS" in proc.stdout


def test_integration_is_three_lines() -> None:
    marked = [line for line in EXAMPLE.read_text().splitlines() if line.rstrip().endswith("# depthsel")]
    # the import plus the three lines the docs promise
    assert len(marked) == 4
