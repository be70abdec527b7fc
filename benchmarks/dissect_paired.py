"""Dissection throughput over inference, estimated batch by batch (paired) instead of pass by pass.

``benchmarks/run.py --parts dissect`` times whole passes minutes apart, so the ratio moves by
±0.06 between repeats with what the neighbours do to the shared caches. Here every batch is
run twice back to back, in alternating order: once as plain ``no_grad`` inference, once as the
dissection step (forward with ``Capture`` hooks, one ``BinnedDepth``, one float32-product
``ResponseAccumulator.update(view)`` per layer, exactly the work of ``collect_responses`` per batch).
The ratio is sum(plain) / sum(dissection) over all batches and rounds; its 95% interval is a
percentile bootstrap over the (batch, round) pairs. CPU time of this thread, one intra-op
thread.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dissect_paired.py --rounds 20 \\
        --out benchmarks/results_fastdepth_dissect_paired.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthsel.accumulator import ResponseAccumulator  # noqa: E402
from depthsel.binned import BinnedDepth  # noqa: E402
from depthsel.capture import Capture  # noqa: E402
from depthsel.stream import BatchView  # noqa: E402

from common import SETUPS, ListDataset, build_model, layer_binners, machine, shared_binners  # noqa: E402
from dissect_bench import collate  # noqa: E402


def pairs(name: str, images: int, rounds: int) -> list[tuple[float, float]]:
    """(plain seconds, dissection seconds) for every batch of every round."""
    s = SETUPS[name]
    model = build_model(name).eval()
    binners = shared_binners(layer_binners(model, name))
    data = ListDataset(images, s["size"], seed=1)
    batches = [collate([data[j] for j in range(i, min(images, i + s["batch"]))])
               for i in range(0, images, s["batch"])]
    accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=torch.float32, layer=l, binner=binners[l])
            for l in s["layers"]}
    out: list[tuple[float, float]] = []

    def plain(b: dict[str, Any]) -> float:
        t = time.thread_time()
        with torch.no_grad():
            model(b["image"])
        return time.thread_time() - t

    def dissect(b: dict[str, Any]) -> float:
        # The hooks are registered inside the timed region (microseconds), so the plain
        # forward of the pair runs with none.
        t = time.thread_time()
        with torch.no_grad(), Capture(model, s["layers"], detach=True) as cap:
            out = model(b["image"])
            # What depthsel.stream hands every consumer: one BatchView, its depth binned once
            # per binner, with its counts cached; the weight maps are built
            # inside (one image at a time with the numba loops, else once per batch).
            view = BatchView(b, out, cap.outputs, BinnedDepth(b["depth"], b["valid"]),
                             torch.arange(b["depth"].shape[0]), 0)
            for l in s["layers"]:
                accs[l].update(view)
        return time.thread_time() - t

    dissect(batches[0])  # warm-up: lookup tables, caches
    for r in range(rounds + 1):
        for i, b in enumerate(batches):
            if (r + i) % 2:  # alternate which of the pair runs first
                d = dissect(b)
                p = plain(b)
            else:
                p = plain(b)
                d = dissect(b)
            if r:  # round 0 warms up
                out.append((p, d))
    return out


def bootstrap(pairs_: list[tuple[float, float]], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    p = torch.tensor([a for a, _ in pairs_], dtype=torch.float64)
    d = torch.tensor([b for _, b in pairs_], dtype=torch.float64)
    idx = torch.randint(len(pairs_), (n, len(pairs_)), generator=g)
    r = p[idx].sum(1) / d[idx].sum(1)
    return float(r.quantile(0.025)), float(r.quantile(0.975))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", default="fastdepth", choices=sorted(SETUPS))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ps = pairs(args.setup, args.images, args.rounds)
    plain_s, dis_s = sum(a for a, _ in ps), sum(b for _, b in ps)
    lo, hi = bootstrap(ps)
    res = {"setup": args.setup, "batches": len(ps), "plain_s": plain_s, "dissect_s": dis_s,
           "ratio": plain_s / dis_s, "ratio_ci95": [lo, hi],
           "stats_ms_per_batch": 1e3 * (dis_s - plain_s) / len(ps), "pairs": ps, "machine": machine("cpu"),
           "command": " ".join(sys.argv)}
    print(f"{args.setup}: dissection/inference {res['ratio']:.3f} [{lo:.3f}, {hi:.3f}] over {len(ps)} "
          f"paired batches; statistics {res['stats_ms_per_batch']:.1f} ms per batch")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
