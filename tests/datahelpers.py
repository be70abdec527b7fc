"""Locate the shared real RGB-D data (``../shared/data`` beside the project).

One place for the rule: when the data is missing a test is *skipped* with a
reason, except on CI (``CI=true``), where missing data is a configuration
error and the test *fails*.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``<repo>/../shared/data``; this file is ``<repo>/tests/datahelpers.py``.
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def shared_data_dir(name: str | None = None) -> Path:
    """Return ``shared/data`` (or one folder of it), skipping or failing when absent."""
    path = SHARED_DATA if name is None else SHARED_DATA / name
    if (path / "index.csv").is_file() or (name is None and path.is_dir()):
        return path
    msg = f"real data not found at {path.resolve()} (expected ../shared/data beside the project)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(msg + "; on CI the shared data must be provided")
    pytest.skip(msg)
    raise AssertionError("unreachable")
