"""Shared by the 2-process gloo tests: load a worker module and run its ranks once.

Not a test module. Each ``_*_worker.py`` is a script (``WORKER RANK WORLD STORE OUT``)
that saves what its rank saw to ``OUT/rank{RANK}.pt``; its builders are also imported
by the test, which recomputes everything in a single process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

TIMEOUT_S = 90

requires_gloo = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def load_worker(path: Path, name: str) -> ModuleType:
    """Import a worker script as a module, for its builders."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ranks(worker: Path, tmp: Path, world: int) -> list[dict[str, Any]]:
    """Launch ``world`` ranks of ``worker`` (file store: no port to race for) and load their outputs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(world), str(tmp / "store"), str(tmp)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for r in range(world)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"gloo ranks did not finish within {TIMEOUT_S}s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
