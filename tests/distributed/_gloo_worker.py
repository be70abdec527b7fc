"""One rank of the 2-process gloo tests (launched by test_gloo.py; not a test module).

    python _gloo_worker.py RANK WORLD STORE_FILE OUT_DIR

Runs every scenario in one process start (torch imports are the slow part)
and saves what each rank saw to ``OUT_DIR/rank{RANK}.pt``. The builders below
are shared with the test, which recomputes everything in a single process.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

import depthsel
from depthsel.accumulator import ResponseAccumulator
from depthsel.responses import collect_responses
from depthsel.testing import ToyDepthDataset, ToyDepthNet, toy_batch

WIDTH = 4
LAYERS = ["dec2", "dec3"]
NUM_BINS = 4
GLOBAL_BATCH = 4


# --------------------------------------------------------------- builders
def acc_data(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations ``[n, 5, 7, 9]`` and bins ``[n, 15, 20]`` (some invalid), seeded."""
    g = torch.Generator().manual_seed(11)
    acts = torch.randn(n, 5, 7, 9, generator=g, dtype=torch.float64)
    bins = torch.randint(-1, 6, (n, 15, 20), generator=g)
    return acts, bins


def metric_data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and ground truth ``[n, 1, 12, 16]`` (some invalid pixels), seeded."""
    g = torch.Generator().manual_seed(21)
    gt = torch.rand(n, 1, 12, 16, generator=g, dtype=torch.float64) * 5
    gt[gt < 0.5] = 0
    pred = gt + torch.randn(n, 1, 12, 16, generator=g, dtype=torch.float64) * 0.3
    return pred.clamp(min=0.1), gt


def toy_model() -> ToyDepthNet:
    torch.manual_seed(0)
    return ToyDepthNet(width=WIDTH).double().eval()


def binner() -> Any:
    return depthsel.get_binner("sid", num_bins=NUM_BINS, min_depth=0.75, max_depth=10.0)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x, d = toy_batch(GLOBAL_BATCH, (32, 32), seed=5)
    return x.double(), d.double()


def criterion(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    return (pred - depth).abs().mean()


def regularizer(model: torch.nn.Module, sync_stats: bool) -> depthsel.SelectivityRegularizer:
    return depthsel.SelectivityRegularizer(model, LAYERS, binner(), weight=0.1, sync_stats=sync_stats,
                                           stats_dtype=torch.float64)


def stream_consumers() -> dict[str, Any]:
    """States of a response accumulator, a permutation reservoir and depth metrics after one pass."""
    from depthsel.metrics import DepthMetrics
    from depthsel.stream import stream
    from depthsel_plugins.analyses.dissection_stats import ImageReservoir

    b = binner()
    consumers = {"acc": ResponseAccumulator(NUM_BINS, layer="dec3", binner=b),
                 "sample": ImageReservoir(3, layer="dec3", binner=b, seed=4),
                 "metrics": DepthMetrics("default")}
    stream(toy_model(), ToyDepthDataset(5, seed=3, dtype=torch.float64), consumers, layers=["dec3"],
           batch_size=2, progress=False)
    return {name: c.state_dict() for name, c in consumers.items()}


# --------------------------------------------------------------- scenarios
def run(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # (i) accumulator: this rank's share, then sync().
    acts, bins = acc_data()
    acc = ResponseAccumulator(6)
    mine = list(range(rank, acts.shape[0], world))
    for i in range(0, len(mine), 2):
        idx = mine[i:i + 2]
        acc.update(acts[idx], bins[idx])
    acc.sync()
    out["acc"] = acc.state_dict()

    # (ii) collect_responses: sharded by rank and all-reduced inside.
    model = toy_model()
    # float64 products: the exact path, identical whatever the number of ranks.
    res = collect_responses(model, ToyDepthDataset(5, seed=3, dtype=torch.float64), LAYERS, binner(), batch_size=2,
                            progress=False, compute_dtype=torch.float64)
    out["collect"] = {n: a.state_dict() for n, a in res.accumulators.items()}

    # (iii) the regularizer under DDP, each rank on its half of the global batch.
    x, depth = global_batch()
    half = GLOBAL_BATCH // world
    xs, ds = x[rank * half:(rank + 1) * half], depth[rank * half:(rank + 1) * half]
    for sync in (True, False):
        net = toy_model()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        reg = regularizer(ddp, sync)
        with reg.attach():
            pred = ddp(xs)
            reg_loss = reg.loss(ds)
            loss = criterion(pred, ds) + reg_loss
        loss.backward()
        losses = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses, torch.stack([reg_loss.detach(), loss.detach()]))
        out[f"ddp_sync{int(sync)}"] = {
            "reg_loss": float(reg_loss), "loss": float(loss),
            "all_losses": torch.stack(losses),
            "grads": {n: p.grad.detach().clone() for n, p in net.named_parameters()},
            "assignment": {n: reg.assignment(n, net.get_submodule(n)[0].out_channels).clone()
                           for n in LAYERS},
        }
    # (iv) depth metrics: this rank's images, then sync().
    from depthsel.metrics import DepthMetrics

    pred, gt = metric_data()
    for protocol in ("default", "hu2019"):
        m = DepthMetrics(protocol)
        for i in range(rank, pred.shape[0], world):
            m.update(pred[i:i + 1], gt[i:i + 1])
        out[f"metrics_{protocol}"] = m.sync().compute()

    # (v) the stream with three kinds of consumer: sums, a 'cat' sample and metrics.
    out["stream"] = stream_consumers()

    # set_assignment broadcasts rank 0's choice.
    reg = regularizer(toy_model(), True)
    reg.set_assignment("dec2", (torch.arange(2 * WIDTH) + rank) % NUM_BINS)
    out["set_assignment"] = reg.assignment("dec2", 2 * WIDTH).clone()
    return out


def main() -> None:
    rank, world, store, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=40))
    try:
        torch.save(run(rank, world), f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
