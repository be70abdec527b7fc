"""Reading a dissection run with a concept binner: which concept each unit prefers.

A dissection with ``binner="normals"`` or ``binner="boundary"`` (see
:mod:`depthsel_plugins.concept_binners`) is an ordinary
:class:`~.dissection_result.DissectionResult` whose bins are categories. The
helpers here put the bin labels back: per unit, the preferred concept (the
argmax bin of the scored response ``R``) and its selectivity DS (Eq. 2 over
concepts instead of depth bins); per layer, how many units prefer each concept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from depthsel.errors import DepthselError
from depthsel.selectivity import depth_selectivity

from .dissection_result import DissectionResult
from .figures import pyplot, save_figure

__all__ = ["concept_labels", "concept_preferences", "concept_summary", "plot_concept_responses",
           "stratified_concept_ds"]


def concept_labels(result: DissectionResult, layer: str) -> list[str]:
    """The bin labels of ``layer``'s binner (``bin 0``... for a binner without labels)."""
    cfg = result.data.get("binners", {}).get(layer, {})
    labels = cfg.get("labels")
    if labels:
        return [str(v) for v in labels]
    nb = int(result.get(layer, "counts").numel())
    return [f"bin {i}" for i in range(nb)]


def concept_preferences(result: DissectionResult, layer: str, split: str | None = None) -> list[dict[str, Any]]:
    """One row per unit: ``unit``, ``prefers`` (label), ``ds``, ``dead`` and the response per concept."""
    labels = concept_labels(result, layer)
    r = result.get(layer, "R", split)
    ds, arg, dead = (result.get(layer, k, split) for k in ("ds", "argmax_bin", "dead"))
    rows = []
    for k in range(r.shape[0]):
        row: dict[str, Any] = {"unit": k, "prefers": None if bool(dead[k]) else labels[int(arg[k])],
                               "ds": float(ds[k]), "dead": bool(dead[k])}
        row.update({f"R[{lab}]": float(r[k, i]) for i, lab in enumerate(labels)})
        rows.append(row)
    return rows


def concept_summary(result: DissectionResult, layer: str, split: str | None = None) -> dict[str, Any]:
    """Per layer: pixel share of each concept, units preferring it, and their mean DS."""
    labels = concept_labels(result, layer)
    counts = result.get(layer, "counts", split).double()
    total = float(counts.sum())
    prefs = concept_preferences(result, layer, split)
    live = [p for p in prefs if not p["dead"] and math.isfinite(p["ds"])]
    out: dict[str, Any] = {"layer": layer, "units": len(prefs), "dead": len(prefs) - len(live),
                           "mean_ds": sum(p["ds"] for p in live) / len(live) if live else math.nan,
                           "concepts": {}}
    for i, lab in enumerate(labels):
        mine = [p["ds"] for p in live if p["prefers"] == lab]
        out["concepts"][lab] = {"pixel_share": float(counts[i]) / total if total else math.nan,
                                "units": len(mine),
                                "mean_ds": sum(mine) / len(mine) if mine else math.nan}
    return out


def plot_concept_responses(result: DissectionResult, layer: str, out_path: str | Path,
                           split: str | None = None) -> Path:
    """Units x concepts heatmap of ``R`` (each row scaled to a maximum of 1), labelled by concept."""
    labels = concept_labels(result, layer)
    r = result.get(layer, "R", split).double()
    scaled = r / r.abs().nan_to_num(0.0).amax(1, keepdim=True).clamp_min(1e-12)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 1.2 + 0.22 * r.shape[0]))
    im = ax.imshow(scaled.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("unit")
    ds = result.get(layer, "ds", split)
    ax.set_title(f"{layer}: response by concept (mean DS {float(ds.nanmean()):.2f})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return save_figure(fig, out_path)


def stratified_concept_ds(result: DissectionResult, layer: str, split: str | None = None) -> dict[str, Any]:
    """Concept DS at equal depth, from a dissection with the ``stratified`` binner.

    ``R[k, c, d]`` is unit ``k``'s response to concept ``c`` in depth stratum ``d``.
    ``pooled`` is each unit's DS over concepts with the strata merged
    (pixel-weighted), which is what a plain concept dissection measures. ``within`` is
    the pixel-weighted mean over strata of the DS over the concepts present in that
    stratum (strata with fewer than 2 concepts are skipped). A pure depth detector
    has ``within`` near 0; concept selectivity that is not depth selectivity keeps it high.

    Returns
    -------
    dict
        ``pooled`` and ``within`` (``float64 [K]``), their means over units, and
        ``strata_used``.
    """
    cfg = result.data.get("binners", {}).get(layer, {})
    if cfg.get("name") != "stratified":
        raise DepthselError(f"layer {layer!r} was not dissected with the 'stratified' binner")
    nd = len(cfg["depth"]["edges"]) - 1
    r = result.get(layer, "R", split).double()
    counts = result.get(layer, "counts", split).double()
    dead = result.get(layer, "dead", split).bool()
    k, nc = r.shape[0], r.shape[1] // nd
    r, counts = r.view(k, nc, nd), counts.view(nc, nd)
    weight = counts.sum(1)
    pooled_r = torch.einsum("kcd,cd->kc", r.nan_to_num(0.0), counts) / weight.clamp_min(1)
    pooled_r = torch.where(weight > 0, pooled_r, torch.full_like(pooled_r, float("nan")))
    pooled = depth_selectivity(pooled_r)
    total, acc = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    used = 0
    for d in range(nd):
        present = counts[:, d] > 0
        if int(present.sum()) < 2:
            continue
        rd = r[:, present, d]
        ds = depth_selectivity(rd)
        # A unit silent in this stratum (DS defined as 0 there) says nothing about concepts in it.
        ok = torch.isfinite(ds) & (rd.abs().nan_to_num(0.0).amax(1) > 0)
        total += torch.where(ok, ds, torch.zeros_like(ds)) * float(counts[present, d].sum())
        acc += ok.double() * float(counts[present, d].sum())
        used += 1
    within = torch.where((acc > 0) & ~dead, total / acc.clamp_min(1e-300), torch.full_like(total, float("nan")))
    pooled = torch.where(dead, torch.full_like(pooled, float("nan")), pooled)
    return {"pooled": pooled, "within": within, "mean_pooled": float(pooled.nanmean()),
            "mean_within": float(within.nanmean()), "strata_used": used}
