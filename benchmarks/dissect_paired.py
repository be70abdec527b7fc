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

``--stats-only`` times the statistics alone, per batch, on activations captured once (no
forward pass, so none of its noise): the number to compare between two versions of the
code, run alternately (``PYTHONPATH=OTHER/src:OTHER/plugins`` for the other version).
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


def feed(accs: dict[str, ResponseAccumulator], b: dict[str, Any], out: Any, cap: Any) -> None:
    """What depthsel.stream hands every consumer: one BatchView per batch.

    Its depth is binned once per binner, with the counts cached; the weight maps are built
    inside (one image at a time with the numba loops, else once per batch); the layers the
    capture proved to end in a ReLU skip the sign check. The getattr lets this script time
    older depthsel code too (A/B runs).
    """
    proved = {"nonnegative": frozenset(cap.nonnegative)} if hasattr(cap, "nonnegative") else {}
    view = BatchView(b, out, cap.outputs, BinnedDepth(b["depth"], b["valid"]), torch.arange(b["depth"].shape[0]),
                     0, **proved)
    for acc in accs.values():
        acc.update(view)


def setup(name: str, images: int) -> tuple[Any, list[dict[str, Any]], dict[str, ResponseAccumulator]]:
    """The model, the batches and one float32-product accumulator per layer."""
    s = SETUPS[name]
    model = build_model(name).eval()
    binners = shared_binners(layer_binners(model, name))
    data = ListDataset(images, s["size"], seed=1)
    batches = [collate([data[j] for j in range(i, min(images, i + s["batch"]))])
               for i in range(0, images, s["batch"])]
    accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=torch.float32, layer=l, binner=binners[l])
            for l in s["layers"]}
    return model, batches, accs


def stats_only(name: str, images: int, rounds: int) -> list[float]:
    """Seconds of the statistics alone per batch (activations captured once): code A/B without the forward's noise."""
    model, batches, accs = setup(name, images)
    captured = []
    with torch.no_grad():
        for b in batches:
            with Capture(model, SETUPS[name]["layers"], detach=True) as cap:
                captured.append((b, model(b["image"]), cap))
    times = []
    for r in range(rounds + 1):
        for b, out, cap in captured:
            t = time.thread_time()
            feed(accs, b, out, cap)
            if r:  # round 0 warms up
                times.append(time.thread_time() - t)
    return times


def pairs(name: str, images: int, rounds: int) -> list[tuple[float, float]]:
    """(plain seconds, dissection seconds) for every batch of every round."""
    s = SETUPS[name]
    model, batches, accs = setup(name, images)
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
            feed(accs, b, out, cap)
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
    ap.add_argument("--stats-only", action="store_true",
                    help="time only the statistics on activations captured once (for code A/B runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.stats_only:
        times = sorted(stats_only(args.setup, args.images, args.rounds))
        res = {"setup": args.setup, "batches": len(times), "stats_ms_median": 1e3 * times[len(times) // 2],
               "stats_ms_quartiles": [1e3 * times[len(times) // 4], 1e3 * times[3 * len(times) // 4]],
               "times": times, "machine": machine("cpu"), "command": " ".join(sys.argv)}
        print(f"{args.setup}: statistics alone {res['stats_ms_median']:.2f} ms per batch (median of {len(times)}; "
              f"quartiles {res['stats_ms_quartiles'][0]:.2f}, {res['stats_ms_quartiles'][1]:.2f})")
        if args.out:
            args.out.write_text(json.dumps(res, indent=1))
        return 0
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
