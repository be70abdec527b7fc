"""Dissection benchmarks: throughput over plain inference, and speed-up over the reference loops."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.accumulator import ResponseAccumulator
from depthsel.binned import BinnedDepth
from depthsel.capture import Capture
from depthsel.data import collate
from depthsel.responses import collect_responses
from depthsel.selectivity import depth_selectivity

import reference_impl as ref
from common import (ALPHA, BETA, SETUPS, TIMER, ListDataset, build_model, capture, layer_binners, median,
                    rel_err, shared_binners, timed)

def stream_stats(model: nn.Module, data: Any, layers: list[str], binners: dict[str, Any], batch: int,
                 device: str, compute_dtype: torch.dtype) -> dict[str, ResponseAccumulator]:
    """The dissection statistics loop the issue's ``stream`` is to run, built from public pieces.

    Capture hooks, one :class:`~depthsel.binned.BinnedDepth` per batch (each
    binner bins once), and one accumulator per layer whose weight maps and
    per-batch products are in ``compute_dtype`` and whose sums across batches
    are float64.
    """
    accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=compute_dtype) for l in layers}
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=collate)
    with torch.no_grad(), Capture(model, layers, detach=True) as cap:
        for b in loader:
            model(b["image"].to(device))
            binned = BinnedDepth(b["depth"].to(device), b["valid"].to(device))
            for l in layers:
                act = cap.outputs[l]
                accs[l].update(act, binned.bins(binners[l]))
            cap.clear()
    return accs


def bench_dissect(name: str, n_images: int, repeats: int, device: str) -> dict[str, Any]:
    """Throughput of each dissection configuration over plain no_grad inference, interleaved."""
    s = SETUPS[name]
    model = build_model(name).to(device).eval()
    binners = shared_binners(layer_binners(model, name))
    data = ListDataset(n_images, s["size"], seed=1)
    collect_kw: dict[str, Any] = {}
    if "compute_dtype" in inspect.signature(collect_responses).parameters:
        collect_kw["compute_dtype"] = torch.float32

    def plain() -> None:
        loader = torch.utils.data.DataLoader(data, batch_size=s["batch"], shuffle=False, collate_fn=collate)
        with torch.no_grad():
            for batch in loader:
                model(batch["image"].to(device))

    configs: dict[str, Callable[[], Any]] = {
        "plain": plain,
        # What ships: collect_responses (float64 products unless it accepts compute_dtype).
        "collect_responses": lambda: collect_responses(
            model, data, s["layers"], binners, batch_size=s["batch"], device=device, progress=False,
            **collect_kw),
        "stream_float32": lambda: stream_stats(model, data, s["layers"], binners, s["batch"], device,
                                               torch.float32),
        "stream_float64": lambda: stream_stats(model, data, s["layers"], binners, s["batch"], device,
                                               torch.float64),
    }
    names = list(configs)
    for fn in configs.values():
        fn()
    times: dict[str, list[float]] = {c: [] for c in names}
    for r in range(repeats):
        for c in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            times[c].append(timed(configs[c], device))
    out: dict[str, Any] = {"images": n_images, "batch": s["batch"], "repeats": repeats,
                           "timer": TIMER["kind"], "collect_kwargs": {k: str(v) for k, v in collect_kw.items()},
                           "seconds_all": times, "plain_img_s": n_images / median(times["plain"])}
    for c in names[1:]:
        ratios = [p / d for p, d in zip(times["plain"], times[c])]  # throughput ratio
        out[c] = {"img_s": n_images / median(times[c]), "ratio": median(ratios), "ratio_all": ratios,
                  "ratio_min": min(ratios), "ratio_max": max(ratios),
                  # statistics cost per batch, from the medians
                  "stats_ms_per_batch": 1e3 * (median(times[c]) - median(times["plain"]))
                  / math.ceil(n_images / s["batch"])}
    out["ratio"] = out["collect_responses"]["ratio"]
    return out


Batches = list[tuple[list[torch.Tensor], torch.Tensor]]


def ds_stats(batches: Batches, layers: list[str], binners: dict[str, Any],
             dtype: torch.dtype = torch.float32) -> dict[str, ResponseAccumulator]:
    """depthsel's per-batch statistics: bin once per binner, then update (weight maps and
    products in ``dtype``, sums across batches float64)."""
    accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=dtype) for l in layers}
    for acts, depth in batches:
        binned = BinnedDepth(depth)
        for l, a in zip(layers, acts):
            # The weight maps are built inside update, as a stream's view has them built:
            # one image at a time with the numba loops, else once per (binner, size).
            accs[l].update(a, binned.bins(binners[l]))
    return accs


def ref_stats(batches: Batches, layers: list[str], edges: dict[str, list[float]],
              device: str) -> dict[str, ref.ReferenceDissector]:
    """The reference's statistics, one image at a time."""
    dis = {l: ref.ReferenceDissector(edges[l], a.shape[1], device) for l, a in zip(layers, batches[0][0])}
    for acts, depth in batches:
        for l, a in zip(layers, acts):
            dis[l].update(a, depth)
    return dis


def read_floor(batches: Batches) -> None:
    """One read of every activation: the memory-bound floor of any statistic of them."""
    for acts, _ in batches:
        for a in acts:
            a.sum()


def ref_upsample_only(batches: Batches) -> None:
    """The reference's own unavoidable part: one bilinear upsampling per image and layer."""
    for acts, depth in batches:
        for a in acts:
            for i in range(a.shape[0]):
                F.interpolate(a[i:i + 1], depth.shape[-2:], mode="bilinear", align_corners=False)


def reference_agreement(batches: Batches, layers: list[str], binners: dict[str, Any],
                        edges: dict[str, list[float]], device: str) -> dict[str, Any]:
    """Both sides on float64 copies of the activations (the reference sums each image
    and bin in the activation dtype before adding into float64)."""
    b64 = [([a.double() for a in acts], depth.double()) for acts, depth in batches]
    accs, dis = ds_stats(b64, layers, binners, torch.float64), ref_stats(b64, layers, edges, device)
    check: dict[str, Any] = {"sums_rel_err": 0.0, "counts_equal": True, "ds_max_abs_err": 0.0,
                             "ds_within_eps_tolerance": True}
    for l in layers:
        check["sums_rel_err"] = max(check["sums_rel_err"], rel_err(accs[l].sums, dis[l].sums))
        check["counts_equal"] &= bool(torch.equal(accs[l].counts.cpu(), dis[l].counts.cpu()))
        ds = depth_selectivity(accs[l].responses("signed"), absent="zero").cpu()
        err = (ds - dis[l].selectivity().cpu()).abs()
        # The two DS formulas differ only in the epsilon of the denominator
        # (1e-12 vs 1e-15): allow for it where responses are tiny.
        avg = (dis[l].sums / (dis[l].counts + 1e-15)).abs().cpu()
        r_max = avg.max(1).values
        denom = r_max + (avg.sum(1) - r_max) / (avg.shape[1] - 1)
        tol = 1e-9 + 2e-12 / denom.clamp(min=1e-300)
        check["ds_max_abs_err"] = max(check["ds_max_abs_err"], float(err.max()))
        check["ds_within_eps_tolerance"] &= bool((err <= tol).all())
    check["ok"] = check["sums_rel_err"] < 1e-10 and check["counts_equal"] and check["ds_within_eps_tolerance"]
    return check


def bench_reference_dissect(name: str, n_images: int, repeats: int, device: str) -> dict[str, Any]:
    """Speed-up of depthsel's dissection statistics over the reference loops, with the floors."""
    s = SETUPS[name]
    layers = s["layers"]
    model = build_model(name).to(device).eval()
    binners = shared_binners(layer_binners(model, name, above_range="first_bin"))
    data = ListDataset(n_images, s["size"], seed=1)
    batches: Batches = []
    for i in range(0, n_images, s["batch"]):
        b = collate([data[j] for j in range(i, min(n_images, i + s["batch"]))])
        batches.append((capture(model, layers, b["image"].to(device)), b["depth"].to(device)))
    edges = {l: ref.sid_thresholds(binners[l].num_bins, ALPHA, BETA) for l in layers}
    check = reference_agreement(batches, layers, binners, edges, device)
    runs: dict[str, Callable[[], Any]] = {
        "reference": lambda: ref_stats(batches, layers, edges, device),
        "depthsel_float32": lambda: ds_stats(batches, layers, binners),
        "depthsel_float64": lambda: ds_stats(batches, layers, binners, torch.float64),
        "activation_read_floor": lambda: read_floor(batches),
        "reference_upsample_only": lambda: ref_upsample_only(batches)}
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    med = {k: median(v) for k, v in times.items()}
    check["sums_rel_err_float32"] = max(rel_err(a.sums, r.sums) for a, r in zip(
        runs["depthsel_float32"]().values(), runs["reference"]().values()))
    speedups = [r / d for r, d in zip(times["reference"], times["depthsel_float32"])]
    return {"check": check, "images": n_images, "seconds_median": med, "seconds_all": times,
            "depthsel_s": med["depthsel_float32"], "reference_s": med["reference"],
            "speedup": median(speedups), "speedup_all": speedups,
            "speedup_float64": med["reference"] / med["depthsel_float64"],
            # the best any implementation reading the activations once could do
            "speedup_bound_activation_read": med["reference"] / med["activation_read_floor"],
            "reference_upsample_fraction": med["reference_upsample_only"] / med["reference"],
            "repeats": repeats}
