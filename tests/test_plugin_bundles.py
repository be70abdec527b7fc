"""Plugin bundles: the first-party plugins are listed in code, and each member is isolated."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tomllib
import types
from pathlib import Path

import pytest

import depthsel_plugins
from depthsel import hookimpl, registry
from depthsel.errors import PluginError
from depthsel.hookspecs import HOOK_KINDS
from depthsel.plugin_sources import BUNDLE_ATTR, PluginSource
from depthsel.registry import PluginManager

ROOT = Path(__file__).resolve().parents[1]


def _has_hooks(module: types.ModuleType) -> bool:
    """Whether a module defines a ``register_<kind>`` marked with ``@hookimpl``."""
    return any(hasattr(getattr(module, f"register_{kind}", None), "depthsel_impl") for kind in HOOK_KINDS)


def test_the_bundle_lists_exactly_the_plugin_modules_of_the_package() -> None:
    found = set()
    for info in pkgutil.iter_modules(depthsel_plugins.__path__, "depthsel_plugins."):
        if _has_hooks(importlib.import_module(info.name)):
            found.add(info.name)
    assert found == set(depthsel_plugins.DEPTHSEL_PLUGINS.values())
    assert len(found) == len(depthsel_plugins.DEPTHSEL_PLUGINS)  # no module listed twice


def test_the_only_first_party_entry_point_is_the_bundle() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["depthsel"] == {"first_party": "depthsel_plugins"}


class _Bins:
    @hookimpl
    def register_binners(self, register):
        register("bundled_bins", lambda **cfg: "bins")


def _bundle_source(members: dict[str, object], declaration: object) -> PluginSource:
    for name, plugin in members.items():
        sys.modules[f"_bundle_test_{name}"] = plugin  # type: ignore[assignment]
    bundle = types.SimpleNamespace(**{BUNDLE_ATTR: declaration})
    return PluginSource("dist:bundle", "1.0", "bundle_module", lambda: bundle, bundle_prefix="dist:")


def test_a_broken_bundle_member_is_skipped_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    good = types.ModuleType("_bundle_test_good")
    good.register_binners = _Bins().register_binners  # type: ignore[attr-defined]
    declaration = {"good": "_bundle_test_good", "broken": "_bundle_test_no_such_module"}
    source = _bundle_source({"good": good}, declaration)
    monkeypatch.setattr(registry, "entry_point_sources", lambda: [source])
    try:
        pm = PluginManager()
        with pytest.warns(RuntimeWarning, match="dist:broken"):
            entries = pm.entries("binners")
    finally:
        sys.modules.pop("_bundle_test_good", None)
    assert list(entries) == ["bundled_bins"] and entries["bundled_bins"].source == "dist:good"
    status = {s.name: s for s in pm.statuses()}
    assert set(status) == {"dist:good", "dist:broken"}  # the bundle itself is listed as its members
    assert status["dist:good"].ok and status["dist:good"].version == "1.0"
    assert not status["dist:broken"].ok and "_bundle_test_no_such_module" in status["dist:broken"].error


@pytest.mark.parametrize("declaration", [["depthsel_plugins.binners"], {"Bad Label": "x"}, {"ok": 3}])
def test_a_malformed_bundle_is_one_failed_plugin(monkeypatch: pytest.MonkeyPatch, declaration: object) -> None:
    monkeypatch.setenv("DEPTHSEL_STRICT_PLUGINS", "1")
    monkeypatch.setattr(registry, "entry_point_sources", lambda: [_bundle_source({}, declaration)])
    with pytest.raises(PluginError, match=f"dist:bundle.*{BUNDLE_ATTR}"):
        PluginManager().entries("binners")


def test_bundle_members_cannot_nest_bundles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPTHSEL_STRICT_PLUGINS", raising=False)
    inner = types.ModuleType("_bundle_test_inner")
    inner.register_binners = _Bins().register_binners  # type: ignore[attr-defined]
    setattr(inner, BUNDLE_ATTR, {"ignored": "_bundle_test_absent"})
    source = _bundle_source({"inner": inner}, {"inner": "_bundle_test_inner"})
    monkeypatch.setattr(registry, "entry_point_sources", lambda: [source])
    try:
        pm = PluginManager()
        assert list(pm.entries("binners")) == ["bundled_bins"]
    finally:
        sys.modules.pop("_bundle_test_inner", None)
    assert [s.name for s in pm.statuses()] == ["dist:inner"]


def test_strict_mode_names_the_broken_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTHSEL_STRICT_PLUGINS", "1")
    source = _bundle_source({}, {"broken": "_bundle_test_no_such_module"})
    monkeypatch.setattr(registry, "entry_point_sources", lambda: [source])
    with pytest.raises(PluginError, match="^plugin 'dist:broken' failed") as err:
        PluginManager().entries("binners")
    assert "dist:bundle" not in str(err.value)
