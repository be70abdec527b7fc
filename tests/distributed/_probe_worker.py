"""One rank of the 2-process gloo probe test (launched by test_probe_gloo.py; not a test module).

    python _probe_worker.py RANK WORLD STORE_FILE OUT_DIR

Fits the ``probe`` analyzer on this rank's shard and saves what it saw to
``OUT_DIR/rank{RANK}.pt``, with the number of all-reduce calls each phase made.
The builders are shared with the test, which recomputes everything in one process.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from depthsel.analysis import AnalysisContext
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel.modelinfo import ModelInfo
from depthsel_plugins.analyses.probe import ProbeAnalyzer

LAYERS = ["dec2", "dec3"]
INFO = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=tuple(LAYERS))


def context() -> AnalysisContext:
    """A float64 toy model over 9 samples: an odd count, so the shards differ in size."""
    torch.manual_seed(0)
    model = ToyDepthNet(width=4).double().eval()
    return AnalysisContext(model=model, dataset=ToyDepthDataset(9, seed=3, dtype=torch.float64), info=INFO,
                           layers=list(LAYERS), batch_size=2, progress=False)


def analyzer() -> ProbeAnalyzer:
    return ProbeAnalyzer(ridge=1e-3, train_fraction=0.6)


def run() -> dict[str, Any]:
    calls = {"n": 0}
    original = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting  # type: ignore[assignment]
    try:
        ctx, an = context(), analyzer()
        train, _ = an.splits(ctx)
        stats = an.fit(ctx, train)
        fit_calls = calls["n"]
        res = an.run(ctx)
    finally:
        dist.all_reduce = original  # type: ignore[assignment]
    return {"fit_calls": fit_calls, "total_calls": calls["n"],
            "flat": {n: s.flat() for n, s in stats.items()},
            "tensors": res.tensors, "metrics": res.data["metrics"], "constant": res.data["constant"]}


def main() -> None:
    rank, world, store, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=40))
    try:
        torch.save(run(), f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
