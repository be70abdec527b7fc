"""The ``probe`` analyzer under two gloo processes equals one process over the same data.

Each rank streams a disjoint shard; the probe statistics of every layer are
summed with exactly one all-reduce, the held-out sums with one more.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_probe_worker.py"
WORLD = 2
TIMEOUT_S = 90

_spec = importlib.util.spec_from_file_location("depthsel_probe_worker", WORKER)
assert _spec is not None and _spec.loader is not None
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("probe_gloo")
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(WORLD), str(tmp / "store"), str(tmp)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for r in range(WORLD)]
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
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_two_ranks_equal_one_process_with_one_all_reduce_per_pass(ranks: list[dict[str, Any]]) -> None:
    ctx, an = W.context(), W.analyzer()
    train, _ = an.splits(ctx)
    single_stats = an.fit(ctx, train)
    single = an.run(ctx)
    for r in ranks:
        assert r["fit_calls"] == 1 and r["total_calls"] - r["fit_calls"] == 2  # run = fit + score
        for name in W.LAYERS:
            torch.testing.assert_close(r["flat"][name], single_stats[name].flat(), rtol=1e-11, atol=1e-9)
        for key, t in single.tensors.items():
            torch.testing.assert_close(r["tensors"][key], t, rtol=1e-7, atol=1e-9, equal_nan=True)
        for name, m in single.data["metrics"].items():
            for k, v in m.items():
                assert r["metrics"][name][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, k)
    # Not vacuous: the layers were fitted on real pixels and differ from each other.
    m = single.data["metrics"]
    assert m["dec2"]["train_pixels"] > 0 and math.isfinite(m["dec3"]["r2"])
    assert m["dec2"]["rmse"] != m["dec3"]["rmse"]
