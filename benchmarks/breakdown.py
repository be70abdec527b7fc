"""Per-step CPU time of the dissection statistics and of the regularizer term on FastDepth.

    .venv/bin/python benchmarks/breakdown.py

FastDepth, batch 8, 224x224, activations of ``decode_conv4`` (64 units, 64 SID
bins) and ``decode_conv5`` (32 units, 32 bins) captured once; one intra-op
thread; medians of 15 runs of this thread's CPU time (``time.thread_time``).
Prints, per layer: the binner call, the weight maps (float32 out), the
float32 accumulator update and its parts (the two products, counts, the input
check, the validity and image counts), and for the regularizer the products
forward and forward + backward, counts and the objective; then the whole
regularizer term (loss + backward to the activations).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import depthsel  # noqa: E402
from depthsel.accumulator import ResponseAccumulator  # noqa: E402
from depthsel.alignment import bin_counts, bin_weight_maps, binned_sums, check_inputs  # noqa: E402
from depthsel.objectives import BatchStats  # noqa: E402

import run  # noqa: E402
from common import cpu_median  # noqa: E402

LAYERS = ["decode_conv4", "decode_conv5"]


def cpu_ms(fn: Callable[[], Any], repeats: int = 15) -> float:
    """Median CPU milliseconds of ``fn`` (:func:`common.cpu_median`)."""
    return 1e3 * cpu_median(fn, repeats)


def main() -> int:
    torch.set_num_threads(1)
    model = run.build_model("fastdepth").eval()
    x, depth = run.make_batch(8, (224, 224), seed=1)
    valid = depth > 0
    acts = run.capture(model, LAYERS, x)
    feed = run.Feed(LAYERS)
    reg = depthsel.SelectivityRegularizer(feed, LAYERS, run.sid(64), weight=0.1, fit_bins_to_units=True)
    leaf = [a.clone().requires_grad_() for a in acts]
    run.ds_train_term(feed, reg, leaf, depth)
    for l, a, g in zip(LAYERS, acts, leaf):
        b = reg.binner_for(l)
        nb, size = b.num_bins, tuple(a.shape[-2:])
        bins = b(depth, valid)
        w = bin_weight_maps(bins, nb, size)
        acc = ResponseAccumulator(nb, compute_dtype=torch.float32)

        def term() -> torch.Tensor:
            return binned_sums(g, bins, nb, use_abs=True, weights=w).sum(0)

        cot = torch.randn(g.shape[1], nb)
        counts = bin_counts(bins, nb).sum(0)
        stats = BatchStats(term().detach(), counts, reg.assignment(l, g.shape[1]))
        parts = {
            "binner": cpu_ms(lambda: b(depth, valid)),
            "weight maps": cpu_ms(lambda: bin_weight_maps(bins, nb, size)),
            "update (float32)": cpu_ms(lambda: acc.update(a, bins, weights=w)),
            "  product A W^T": cpu_ms(lambda: binned_sums(a, bins, nb, weights=w)),
            "  product |A| W^T": cpu_ms(lambda: binned_sums(a, bins, nb, weights=w, use_abs=True)),
            "  bin_counts": cpu_ms(lambda: bin_counts(bins, nb)),
            "  check_inputs": cpu_ms(lambda: check_inputs(a, bins, nb)),
            "  any valid + image count": cpu_ms(lambda: (bool((bins >= 0).any()),
                                                         int((bins >= 0).flatten(1).any(1).sum()))),
            "regularizer product forward": cpu_ms(term),
            "regularizer product forward + backward": cpu_ms(lambda: torch.autograd.grad(term(), g, cot)),
            "regularizer objective": cpu_ms(lambda: reg.objective.layer_score(stats).score),
        }
        print(l)
        for k, v in parts.items():
            print(f"  {k:42s} {v:7.2f} ms")
    print(f"regularizer term, loss + backward: {cpu_ms(lambda: run.ds_train_term(feed, reg, leaf, depth)):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
