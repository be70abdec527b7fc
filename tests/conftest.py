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
