"""What the proposed changes to files outside benchmarks/ would buy, measured on FastDepth.

    python benchmarks/proposals.py [--threads 1] [--repeats 11]

FastDepth, batch 8, 224x224, ``decode_conv4`` (64 bins) + ``decode_conv5``
(32 units, 32 bins), on activations captured once. Median CPU time of this
thread (``time.thread_time``) of:

* the dissection statistics of one batch, as ``collect_responses`` runs them
  today (float64 products, weight maps per call), with float32 products and
  :class:`~depthsel.binned.BinnedDepth` (proposal 1), and additionally with
  the faster binner below (proposal 2), and additionally with an accumulator
  update that checks its inputs once and reads the image and validity counts
  off the per-image histogram (proposal 3, checked bit-equal to ``update``);
* the regularizer's term (loss + backward to the activations) with today's
  binner and with the faster one;
* one plain ``no_grad`` forward pass, so each statistics time converts to the
  throughput ratio it implies, ``forward / (forward + statistics)``.

The faster binner (proposal 2, for ``Binner.__call__`` in binning.py) does one
``bucketize`` over all ``Nb + 1`` edges and maps the result through a lookup
table (index 0 and ``Nb + 1`` are out of range), instead of a bucketize over
the inner edges plus three comparisons and a ``where``. For float32 depth it
compares in float32 against the edges rounded *down* to float32, which is
exactly ``d <= e`` for every float32 ``d``, so no float64 copy is needed. It is
checked here to give identical bins on the benchmark depth and on the float32
neighbours of every edge.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import depthsel  # noqa: E402
from depthsel.accumulator import ResponseAccumulator  # noqa: E402
from depthsel.alignment import bin_counts, bin_weight_maps, check_inputs  # noqa: E402
from depthsel.binned import BinnedDepth  # noqa: E402
from depthsel.binning import Binner, prepare_depth  # noqa: E402

import run  # noqa: E402
from common import cpu_median  # noqa: E402

LAYERS = ["decode_conv4", "decode_conv5"]


class LutBinner(Binner):
    """The same bins as ``inner`` (above-range pixels invalid), from one bucketize and a lookup."""

    def __init__(self, inner: Binner) -> None:
        self.inner = inner
        e = inner.edges
        f = e.float()
        # Largest float32 <= each edge: for float32 d, d <= e  <=>  d <= rd(e).
        self._e32 = torch.where(f.double() > e, torch.nextafter(f, torch.tensor(-float("inf"))), f)
        nb = inner.num_bins
        self._lut = torch.cat([torch.tensor([-1]), torch.arange(nb), torch.tensor([-1])])

    @property
    def edges(self) -> torch.Tensor:
        return self.inner.edges

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        d = prepare_depth(depth, valid)
        if d.dtype == torch.float32:
            i = torch.bucketize(d, self._e32.to(d.device), right=False)
        else:
            i = torch.bucketize(d.to(torch.float64), self.edges.to(d.device), right=False)
        # depth <= edges[0] (including invalid zeros, as edges[0] >= 0) -> 0 -> -1.
        return self._lut.to(d.device)[i]


def check_lut(binner: Binner, depth: torch.Tensor) -> bool:
    fast = LutBinner(binner)
    e = binner.edges.float()
    near = torch.stack([torch.nextafter(e, torch.tensor(-1.0)), e, torch.nextafter(e, torch.tensor(99.0))])
    near = near.clamp(min=0).reshape(1, 1, -1)
    return bool(torch.equal(fast(depth, depth > 0), binner(depth, depth > 0))
                and torch.equal(fast(near), binner(near)))


def check_lean(acts: list[torch.Tensor], depth: torch.Tensor, binners: dict[str, Binner]) -> bool:
    """The lean update leaves exactly the state of ``update`` (float64 products, so bit-equal)."""
    ok = True
    for l, a in zip(LAYERS, acts):
        b = binners[l]
        bins = b(depth, depth > 0)
        w = bin_weight_maps(bins, b.num_bins, tuple(a.shape[-2:]), dtype=torch.float64)
        ref, lean = ResponseAccumulator(b.num_bins), ResponseAccumulator(b.num_bins)
        ref.update(a, bins, weights=w)
        lean_update(lean, a, bins, w)
        sa, sb = ref.state_dict(), lean.state_dict()
        ok &= all(torch.equal(sa[k], sb[k]) for k in ("sums", "abs_sums", "counts"))
        ok &= sa["num_images"] == sb["num_images"]
    return ok


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of ``fn`` (:func:`common.cpu_median`)."""
    return cpu_median(fn, repeats)


def lean_update(acc: ResponseAccumulator, act: torch.Tensor, bins: torch.Tensor, weights: torch.Tensor) -> None:
    """``acc.update`` with one input check and the image/validity counts read off the per-image
    histogram, instead of three checks and two more passes over the bins (proposal 3)."""
    check_inputs(act, bins, acc.num_bins)
    counts = bin_counts(bins, acc.num_bins)  # [B, Nb]
    per_image = counts.sum(1)
    if not bool((per_image > 0).any()):
        acc.skipped_batches += 1
        return
    b, k = act.shape[:2]
    a = act.reshape(b, k, -1).to(acc.compute_dtype)
    wt = weights.reshape(b, acc.num_bins, -1).to(acc.compute_dtype).transpose(1, 2)
    if acc._sums is None:
        acc._alloc(k, act.device)
    acc._sums += torch.bmm(a, wt).sum(0).to(torch.float64)
    acc._abs_sums += torch.bmm(a.abs(), wt).sum(0).to(torch.float64)
    acc._counts += counts.sum(0).to(torch.float64)
    acc.num_images += int((per_image > 0).sum())


def dissect_stats(acts: list[torch.Tensor], depth: torch.Tensor, binners: dict[str, Binner],
                  mode: str) -> None:
    if mode == "today":  # what collect_responses does per batch now
        cache: dict[int, torch.Tensor] = {}
        for l, a in zip(LAYERS, acts):
            b = binners[l]
            bins = cache.setdefault(id(b), b(depth, depth > 0))
            w = bin_weight_maps(bins, b.num_bins, tuple(a.shape[-2:]), dtype=torch.float64)
            ResponseAccumulator(b.num_bins).update(a, bins, weights=w)
        return
    binned = BinnedDepth(depth, depth > 0)
    for l, a in zip(LAYERS, acts):
        b = binners[l]
        acc = ResponseAccumulator(b.num_bins, compute_dtype=torch.float32)
        w = binned.weights(b, tuple(a.shape[-2:]), torch.float32)
        if mode == "lean":
            lean_update(acc, a, binned.bins(b), w)
        else:
            acc.update(a, binned.bins(b), weights=w)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--out", default=str(HERE / "proposals.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = run.build_model("fastdepth").eval()
    x, depth = run.make_batch(8, (224, 224), seed=1)
    acts = run.capture(model, LAYERS, x)
    binners = run.shared_binners(run.layer_binners(model, "fastdepth"))
    fast = {l: LutBinner(b) for l, b in binners.items()}
    res: dict[str, Any] = {"command": " ".join(["python", "benchmarks/proposals.py"] + (argv or sys.argv[1:])),
                           "threads": args.threads, "repeats": args.repeats, "timer": "thread_time",
                           "lut_binner_identical": all(check_lut(b, depth) for b in binners.values()),
                           "lean_update_identical": check_lean(acts, depth, binners)}
    with torch.no_grad():
        res["forward_ms"] = 1e3 * timed(lambda: model(x), args.repeats)
    ms: dict[str, float] = {}
    ms["binner_ms"] = 1e3 * timed(lambda: binners["decode_conv4"](depth, depth > 0), args.repeats)
    ms["lut_binner_ms"] = 1e3 * timed(lambda: fast["decode_conv4"](depth, depth > 0), args.repeats)
    for name, mode, bs in (("stats_today", "today", binners), ("stats_float32_binned", "new", binners),
                           ("stats_float32_binned_lut", "new", fast),
                           ("stats_float32_binned_lut_lean", "lean", fast)):
        ms[name] = 1e3 * timed(lambda mode=mode, bs=bs: dissect_stats(acts, depth, bs, mode), args.repeats)
        res[f"implied_ratio_{name}"] = res["forward_ms"] / (res["forward_ms"] + ms[name])
    feed = run.Feed(LAYERS)
    for name, binner in (("regularizer_term", run.sid(64)), ("regularizer_term_lut", None)):
        reg = depthsel.SelectivityRegularizer(feed, LAYERS, run.sid(64), weight=0.1, fit_bins_to_units=True)
        leaf = [a.clone().requires_grad_() for a in acts]
        run.ds_train_term(feed, reg, leaf, depth)
        if binner is None:  # swap in the LUT binners of the layers' (refitted) binners
            reg._binners = {l: LutBinner(reg.binner_for(l)) for l in LAYERS}
        ms[name] = 1e3 * timed(lambda reg=reg, leaf=leaf: run.ds_train_term(feed, reg, leaf, depth), args.repeats)
    res.update(ms)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for k, v in res.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
