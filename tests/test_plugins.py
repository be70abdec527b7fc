"""The plugin manager: inline registration, fault isolation, conflicts, suggestions."""

from __future__ import annotations

import subprocess
import sys

import pytest

import depthsel
from depthsel import hookimpl
from depthsel.errors import PluginConflictError, PluginError, UnknownPluginError
from depthsel.registry import PluginManager


class GoodPlugin:
    @hookimpl
    def register_binners(self, register):
        register("good_bins", lambda **cfg: ("good", cfg), description="a good binner")


class RaisingPlugin:
    @hookimpl
    def register_binners(self, register):
        raise RuntimeError("I am broken")


class TypoPlugin:
    @hookimpl
    def register_binerz(self, register):  # misspelt hook name
        pass


class ClashPlugin:
    @hookimpl
    def register_binners(self, register):
        register("good_bins", lambda **cfg: "clash")


def test_inline_register_and_unregister_global() -> None:
    name = depthsel.register_plugin(GoodPlugin(), name="test-good")
    try:
        assert depthsel.get_binner("good_bins", a=1) == ("good", {"a": 1})
        assert "good_bins" in depthsel.list_plugins("binners")
        assert "sid" in depthsel.list_plugins("binners")  # entry-point plugins still there
    finally:
        depthsel.unregister_plugin(name)
    with pytest.raises(UnknownPluginError):
        depthsel.get_binner("good_bins")


def test_broken_plugin_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    pm = PluginManager(load_entry_points=False)
    pm.register(GoodPlugin(), name="good")
    with pytest.warns(RuntimeWarning, match="skipped"):
        pm.register(TypoPlugin(), name="typo")
    bad = pm.register(RaisingPlugin(), name="raising")
    with pytest.warns(RuntimeWarning, match="I am broken"):
        entries = pm.entries("binners")
    assert list(entries) == ["good_bins"]
    status = {s.name: s for s in pm.statuses()}
    assert status["good"].ok and status["good"].hooks == ["register_binners"]
    assert not status["typo"].ok and "register_binerz" in status["typo"].error
    assert not status[bad].ok and "I am broken" in status[bad].error


def test_strict_mode_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_STRICT_PLUGINS", "1")
    pm = PluginManager(load_entry_points=False)
    pm.register(RaisingPlugin(), name="raising")
    with pytest.raises(PluginError, match="I am broken"):
        pm.entries("binners")


def test_conflict_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    pm = PluginManager(load_entry_points=False)
    pm.register(GoodPlugin(), name="first")
    pm.register(ClashPlugin(), name="second")
    with pytest.raises(PluginConflictError, match="more than one plugin") as err:
        pm.create("binners", "good_bins")
    assert "'first'" in str(err.value) and "'second'" in str(err.value)
    failed = {s.name for s in pm.failures()}
    assert failed == {"first", "second"}


def test_bad_config_is_a_depthsel_error() -> None:
    with pytest.raises(PluginError, match="num_binz"):
        depthsel.get_binner("sid", num_binz=3)


def test_unknown_name_suggests() -> None:
    with pytest.raises(UnknownPluginError, match="did you mean 'sid'"):
        depthsel.get_binner("sd")


def test_entry_points_load_lazily() -> None:
    code = (
        "import sys, depthsel\n"
        "assert 'depthsel_plugins' not in sys.modules, 'plugins imported at import time'\n"
        "depthsel.get_binner('sid')\n"
        "assert 'depthsel_plugins.binners' in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_core_never_imports_plugins() -> None:
    from pathlib import Path

    core = Path(depthsel.__file__).parent
    import re

    pattern = re.compile(r"^\s*(from|import)\s+depthsel_plugins", re.M)
    offenders = [p.name for p in core.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
