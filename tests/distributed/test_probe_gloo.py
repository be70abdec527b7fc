"""The ``probe`` analyzer under two gloo processes equals one process over the same data.

Each rank streams a disjoint shard; the probe statistics of every layer are
summed with exactly one all-reduce, the held-out sums with one more.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_launch import load_worker, requires_gloo, run_ranks

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_probe_worker.py"
WORLD = 2

W = load_worker(WORKER, "depthsel_probe_worker")

pytestmark = requires_gloo


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Launch both ranks once and load their outputs."""
    return run_ranks(WORKER, tmp_path_factory.mktemp("probe_gloo"), WORLD)


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
