"""CPU time of the regularizer term and of one batch of dissection statistics, for before/after runs.

    .venv/bin/python benchmarks/ab_terms.py                          # this tree's depthsel
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/ab_terms.py # another tree's src/

FastDepth, batch 8, 224x224, activations of ``decode_conv4`` + ``decode_conv5``
captured once; 64 SID bins (``decode_conv5`` refitted to 32). Prints the
median CPU time of this thread over 11 runs (one intra-op thread) of

* the regularizer term: ``reg.loss(depth)`` plus ``autograd.grad`` to the
  activations (``benchmarks/run.py:ds_train_term``);
* the statistics ``collect_responses`` computes per batch today: bin, float64
  weight maps, ``ResponseAccumulator.update`` with float64 products.

Alternate the two trees a few times to compare them on a shared machine.
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
from depthsel.alignment import bin_weight_maps  # noqa: E402

import run  # noqa: E402
from common import cpu_median  # noqa: E402

LAYERS = ["decode_conv4", "decode_conv5"]


def cpu_ms(fn: Callable[[], Any], repeats: int = 11) -> float:
    """Median CPU milliseconds of ``fn`` (:func:`common.cpu_median`)."""
    return 1e3 * cpu_median(fn, repeats)


def main() -> int:
    torch.set_num_threads(1)
    model = run.build_model("fastdepth").eval()
    x, depth = run.make_batch(8, (224, 224), seed=1)
    acts = run.capture(model, LAYERS, x)
    feed = run.Feed(LAYERS)
    reg = depthsel.SelectivityRegularizer(feed, LAYERS, run.sid(64), weight=0.1, fit_bins_to_units=True)
    leaf = [a.clone().requires_grad_() for a in acts]
    run.ds_train_term(feed, reg, leaf, depth)
    binners = {l: reg.binner_for(l) for l in LAYERS}

    def stats() -> None:
        for l, a in zip(LAYERS, acts):
            b = binners[l]
            bins = b(depth, depth > 0)
            w = bin_weight_maps(bins, b.num_bins, tuple(a.shape[-2:]), dtype=torch.float64)
            ResponseAccumulator(b.num_bins).update(a, bins, weights=w)

    term = cpu_ms(lambda: run.ds_train_term(feed, reg, leaf, depth))
    print(f"{depthsel.__file__}: regularizer term {term:.1f} ms, statistics {cpu_ms(stats):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
