"""Shared test configuration: deterministic hypothesis profile, no progress bars."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("DEPTHSEL_NO_PROGRESS", "1")
torch.set_num_threads(1)

settings.register_profile(
    "depthsel",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("depthsel")

pytest_plugins = ["depthsel.testing"]


import pytest  # noqa: E402


@pytest.fixture(scope="module", params=["torch", "numba"])
def kernel_backend(request: pytest.FixtureRequest):
    """Run a module's tests once with the torch operations and once with the numba loops.

    Module-scoped (hypothesis refuses function-scoped fixtures around ``@given``). The numba
    run is skipped only where numba is not installed and CI is not set: CI installs the
    ``test`` extra, which includes it.
    """
    if request.param == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip("numba is not installed (pip install 'depthsel[fast]')")
    from depthsel import kernels

    with kernels.use(request.param):
        yield request.param
