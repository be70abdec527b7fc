"""The main job: baseline vs interpretable twin over seeds, weight sweeps, pooled runs, training.

``depthsel demo``, ``sweep``, ``combine`` and ``train`` are registered here
through the ``register_commands`` hook, as a third party's commands would be;
the command module (and typer) is imported only when the hook runs. The
Python API is :mod:`.experiment` (``ExperimentConfig``, ``run_experiment``,
``run_sweep``) and :mod:`.combine` (``combine_runs``).
"""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl

__all__ = ["register_commands"]


@hookimpl
def register_commands(register: Any) -> None:
    """Register ``demo``, ``sweep``, ``combine`` and ``train``."""
    from . import commands

    for name in ("demo", "sweep", "combine", "train"):
        register(name, getattr(commands, name))
