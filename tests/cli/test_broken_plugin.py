"""A broken plugin never breaks the CLI; ``depthsel plugins`` shows what failed.

Three broken distributions are faked with dist-info folders on a temporary
path: one whose module raises on import, one whose hook raises, and one with
a misspelt hook name. Every command must still work, in process (fast, many
commands) and in a real subprocess (``python -m depthsel.cli``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_support import assert_one_line_error, invoke, invoke_json, run_cli

from depthsel.registry import reset_plugin_manager
from depthsel.testing import ToyDepthNet

BROKEN = {
    "depthsel_broken_import": ("broken-import", 'raise ImportError("intentionally broken at import")\n'),
    "depthsel_broken_hook": ("broken-hook", (
        "from depthsel import hookimpl\n\n"
        "@hookimpl\n"
        "def register_binners(register):\n"
        "    register('fine-before-boom', object)\n"
        "    raise RuntimeError('hook exploded on purpose')\n"
    )),
    "depthsel_misspelt_hook": ("misspelt-hook", (
        "from depthsel import hookimpl\n\n"
        "@hookimpl\n"
        "def register_binnerz(register):\n"
        "    pass\n"
    )),
}
LABELS = {f"depthsel-{dist}:{dist}": module for module, (dist, _) in BROKEN.items()}


def _make_site(root: Path) -> Path:
    site = root / "site"
    site.mkdir()
    for module, (dist, code) in BROKEN.items():
        (site / f"{module}.py").write_text(code)
        info = site / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: depthsel-{dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[depthsel]\n{dist} = {module}\n")
    return site


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_site(tmp_path_factory.mktemp("broken"))


@pytest.fixture
def broken_in_process(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(broken_site))
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    reset_plugin_manager()
    try:
        yield broken_site
    finally:
        reset_plugin_manager()
        for module in BROKEN:
            sys.modules.pop(module, None)


def _check_failures(rows: list[dict[str, Any]]) -> None:
    by_name = {r["name"]: r for r in rows}
    for label in LABELS:
        assert by_name[label]["status"] == "failed", by_name.get(label)
    assert "intentionally broken at import" in by_name["depthsel-broken-import:broken-import"]["error"]
    assert "hook exploded on purpose" in by_name["depthsel-broken-hook:broken-hook"]["error"]
    assert "register_binnerz" in by_name["depthsel-misspelt-hook:misspelt-hook"]["error"]
    assert by_name["depthsel:binners"]["status"] == "ok"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_every_command_still_works_in_process(runner: Any, broken_in_process: Path, tmp_path: Path) -> None:
    from depthsel import register_plugin, unregister_plugin

    from cli_support import ToyPlugin

    _check_failures(invoke_json(runner, ["plugins"]))
    binners = {r["name"] for r in invoke_json(runner, ["binners"])}
    assert {"uniform", "sid"} <= binners and "fine-before-boom" not in binners
    for kind in ("objectives", "models", "analyzers", "datasets"):
        assert isinstance(invoke_json(runner, [kind]), list)
    assert invoke(runner, ["plugins"]).exit_code == 0
    assert invoke(runner, ["--version"]).exit_code == 0
    label = register_plugin(ToyPlugin(), name="tests-toy-plugin")
    try:
        assert invoke_json(runner, ["layers", "toy", "-p", "dec3"])[0]["units"] == 8
        data = invoke_json(runner, ["analyze", "toy-mean", "-m", "toy", "-d", "toyset", "-o", tmp_path / "a"])
        assert data["summary"]["images"] == 4
    finally:
        unregister_plugin(label)
    torch.save(ToyDepthNet(width=2).state_dict(), tmp_path / "m.pth")
    assert invoke_json(runner, ["convert", tmp_path / "m.pth", tmp_path / "m.safetensors"])["tensors"] > 0
    assert invoke_json(runner, ["report", tmp_path / "a"])["tables"] >= 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_strict_mode_fails_loudly_in_process(runner: Any, broken_in_process: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_STRICT_PLUGINS", "1")
    assert_one_line_error(invoke(runner, ["binners"]), "DEPTHSEL_STRICT_PLUGINS")


def test_subprocess_lists_failures_and_keeps_working(broken_site: Path) -> None:
    proc = run_cli(["plugins", "--format", "json"], env={"PYTHONPATH": str(broken_site)})
    assert proc.returncode == 0, proc.stderr
    _check_failures(json.loads(proc.stdout))
    # Each skipped plugin is one warning line on stderr, not a traceback.
    assert "Traceback" not in proc.stderr
    assert "intentionally broken at import" in proc.stderr


def test_subprocess_strict_mode_fails_loudly(broken_site: Path) -> None:
    proc = run_cli(["binners"], env={"PYTHONPATH": str(broken_site), "DEPTHSEL_STRICT_PLUGINS": "1"})
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "failed" in err and "DEPTHSEL_STRICT_PLUGINS" in err
