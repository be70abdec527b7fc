"""Packaging a well-kept library ships: SPDX licence, LICENSE, py.typed, URLs, one version, absolute README links."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import depthsel

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"  # a string (PEP 639), not the deprecated table
    assert "LICENSE" in project["license-files"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    # PEP 639 forbids a licence classifier next to an SPDX expression.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]


def test_classifiers_urls_and_typing_marker() -> None:
    project = PYPROJECT["project"]
    assert "Typing :: Typed" in project["classifiers"]
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(project["urls"])
    assert all(u.startswith("https://") for u in project["urls"].values())
    for package in ("src/depthsel", "plugins/depthsel_plugins"):
        assert (ROOT / package / "py.typed").is_file()
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert data["depthsel"] == ["py.typed"] and data["depthsel_plugins"] == ["py.typed"]


def test_version_has_one_source() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "depthsel._version.__version__"}
    assert importlib.metadata.version("depthsel") == depthsel.__version__
    written = [p for p in (ROOT / "src").rglob("*.py")
               if re.search(r"^__version__\s*=", p.read_text(), flags=re.M)]
    assert [p.relative_to(ROOT).as_posix() for p in written] == ["src/depthsel/_version.py"]


def test_readme_links_are_absolute() -> None:
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links
    relative = [u for u in links if not u.startswith(("https://", "http://", "#"))]
    assert not relative, relative
