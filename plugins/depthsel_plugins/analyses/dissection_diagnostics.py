"""Diagnostics of a dissection: why units are (or are not) selective on a split.

Three questions, each answered during the same streaming pass as the dissection:

*Prediction DS.* The same responses, but binned by the model's *own predicted*
depth instead of the ground truth. A unit can encode faithfully what the model
believes while the model is wrong about the depth: then prediction DS is high
and ground-truth DS is low, and the gap between the two is depth error, not a
failure of the units' code.

*Per-bin depth error.* For every ground-truth bin, the mean absolute error, the
RMSE, the bin's width and the fraction of pixels whose predicted depth lands in
the right bin. Bins narrower than the model's typical error cannot be told apart
by any unit that follows the model's belief.

*Bootstrap intervals.* Target DS, argmax DS and peak-on-target of a layer with a
95% percentile interval over images, from the per-image binned sums kept by the
permutation reservoir (all images when the split fits in it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from depthsel.accumulator import ResponseAccumulator
from depthsel.binning import Binner
from depthsel.consumer import Consumer
from depthsel.errors import DepthselError
from depthsel.selectivity import selectivity_from_stats
from depthsel.stats import bootstrap_ci

__all__ = ["PredictionDiagnostics", "bootstrap_layer", "near_target_fraction"]


def _as_bhw(t: torch.Tensor) -> torch.Tensor:
    return t[:, 0] if t.ndim == 4 else t


class PredictionDiagnostics(Consumer):
    """Prediction-binned responses and per-bin depth error of one layer's binner.

    A stream consumer: its sums are declared state, so it resets, merges, syncs
    and resumes with the pass.

    Parameters
    ----------
    binner
        The layer's binner (edges in metres).
    align_corners
        Alignment convention of the dissection.
    layer
        The layer read from each :class:`~depthsel.stream.BatchView` (stream use).
    """

    _SUMS = ("abs_err", "sq_err", "count", "same_bin", "bin_offset")

    def __init__(self, binner: Binner, align_corners: bool = False, *, layer: str | None = None) -> None:
        super().__init__()
        self.binner, self.layer = binner, layer
        self.add_child("acc", ResponseAccumulator(binner.num_bins, align_corners=align_corners))
        for name in self._SUMS:
            self.add_state(name, torch.zeros(binner.num_bins, dtype=torch.float64))
        # Why the diagnostics could not run (a model output that is not a depth map), or None.
        self.unusable_output: str | None = None

    @torch.no_grad()
    def update(self, act: Any, pred: torch.Tensor | None = None, depth: torch.Tensor | None = None,
               gt_bins: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> None:
        """Add one batch (``pred`` is the model's depth at any resolution), or a stream view."""
        if pred is None and hasattr(act, "binned"):
            view = act
            pred = self._view_prediction(view)
            if pred is None:
                return
            act, depth = view.activations[self.layer], view.depth
            gt_bins = view.binned.bins(self.binner)
        assert pred is not None and depth is not None and gt_bins is not None
        self._add(act, pred, depth, gt_bins)

    def _view_prediction(self, view: Any) -> torch.Tensor | None:
        try:
            pred: torch.Tensor | None = view.prediction()
        except DepthselError:
            pred = None
        if pred is None or pred.ndim not in (3, 4) or pred.shape[0] != view.depth.shape[0]:
            self.unusable_output = (f"model output of type {type(view.output).__name__} is not a "
                                    "depth map [B,1,H,W]")
            return None
        return pred.detach()

    def _add(self, act: torch.Tensor, pred: torch.Tensor, depth: torch.Tensor, gt_bins: torch.Tensor) -> None:
        gt = _as_bhw(depth).double()
        p = pred if pred.ndim == 4 else pred.unsqueeze(1)
        if p.shape[-2:] != gt.shape[-2:]:
            p = F.interpolate(p.float(), size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)
        p = _as_bhw(p).double()
        gt_bins = _as_bhw(gt_bins)
        ok = gt_bins >= 0
        # Same pixels as the ground-truth dissection; only the labels change.
        pbins = _as_bhw(self.binner(p.clamp(min=1e-6).unsqueeze(1), ok.unsqueeze(1)))
        # A prediction outside the edges has no bin: clip it to the nearest end bin.
        pred_bins = torch.where(ok & (pbins < 0), self._nearest_end(p), pbins)
        pred_bins = torch.where(ok, pred_bins, torch.full_like(pred_bins, -1))
        self.acc.update(act, pred_bins)
        idx = gt_bins[ok]
        err = (p - gt)[ok]
        nb = self.binner.num_bins
        self.abs_err += torch.bincount(idx, weights=err.abs(), minlength=nb).cpu()
        self.sq_err += torch.bincount(idx, weights=err * err, minlength=nb).cpu()
        self.count += torch.bincount(idx, minlength=nb).double().cpu()
        same = (pred_bins[ok] == idx).double()
        self.same_bin += torch.bincount(idx, weights=same, minlength=nb).cpu()
        self.bin_offset += torch.bincount(idx, weights=(pred_bins[ok] - idx).abs().double(), minlength=nb).cpu()

    def _nearest_end(self, p: torch.Tensor) -> torch.Tensor:
        edges = self.binner.edges.to(p.device)
        low = torch.zeros_like(p, dtype=torch.long)
        return torch.where(p > edges[-1], torch.full_like(low, self.binner.num_bins - 1), low)

    def per_bin(self) -> list[dict[str, Any]]:
        """One row per ground-truth bin: width, MAE, RMSE, MAE/width, in-bin fraction."""
        edges = self.binner.edges.double().cpu()
        rows = []
        for d in range(self.binner.num_bins):
            n = float(self.count[d])
            width = float(edges[d + 1] - edges[d])
            mae = float(self.abs_err[d]) / n if n else float("nan")
            rows.append({
                "bin": d, "low": float(edges[d]), "high": float(edges[d + 1]), "width": width,
                "pixels": n, "mae": mae, "rmse": (float(self.sq_err[d]) / n) ** 0.5 if n else float("nan"),
                "mae_over_width": mae / width if n and width > 0 else float("nan"),
                "in_bin": float(self.same_bin[d]) / n if n else float("nan"),
                "mean_bin_offset": float(self.bin_offset[d]) / n if n else float("nan"),
            })
        return rows


def near_target_fraction(r: torch.Tensor, assigned: torch.Tensor, dead: torch.Tensor, radius: int = 1) -> float:
    """Fraction of units whose argmax bin lies within ``radius`` bins of their assigned bin.

    Dead units never count as near their target. NaN responses (unseen bins)
    never win the argmax.
    """
    masked = torch.where(torch.isnan(r), torch.full_like(r, -1.0), r.abs())
    peak = masked.argmax(1)
    near = ((peak - assigned.to(peak.device)).abs() <= radius) & ~dead.to(peak.device)
    return float(near.double().mean()) if near.numel() else float("nan")


def _layer_stats(sums: np.ndarray, counts: np.ndarray, assigned: torch.Tensor, signed: bool,
                 absent: str) -> np.ndarray:
    """``[R, 3]``: argmax DS mean, target DS mean, peak-on-target of summed resamples."""
    s = torch.from_numpy(sums)  # [R, K, Nb]
    c = torch.from_numpy(counts)  # [R, Nb]
    rs, k, nb = s.shape
    r = s / c.clamp(min=1).unsqueeze(1)
    r = r.abs() if signed else r
    present = (c > 0).unsqueeze(1).expand(rs, k, nb).reshape(rs * k, nb)
    flat = r.reshape(rs * k, nb)
    ds, ok = selectivity_from_stats(flat, present, None, absent=absent)
    tds, ok_t = selectivity_from_stats(flat, present, assigned.repeat(rs), absent=absent)
    nan = torch.full_like(ds, float("nan"))
    ds, tds = torch.where(ok, ds, nan).view(rs, k), torch.where(ok_t, tds, nan).view(rs, k)
    masked = torch.where(present, flat, torch.full_like(flat, -1.0)).view(rs, k, nb)
    alive = s.abs().sum(2) > 0
    peak = ((masked.argmax(2) == assigned.view(1, k)) & alive).double().mean(1)
    return np.stack([np.nanmean(ds.numpy(), 1), np.nanmean(tds.numpy(), 1), peak.numpy()], axis=1)


def bootstrap_layer(per_image_sums: torch.Tensor, per_image_counts: torch.Tensor, assigned: torch.Tensor, *,
                    signed: bool, absent: str, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """95% bootstrap intervals over images of a layer's argmax DS, target DS and peak-on-target."""
    sums = per_image_sums.double().numpy()
    counts = per_image_counts.double().numpy()
    k, nb = sums.shape[1:]
    packed = np.concatenate([sums.reshape(len(sums), -1), counts], axis=1)

    def stat(x: np.ndarray) -> np.ndarray:
        return _layer_stats(x[:, : k * nb].reshape(-1, k, nb), x[:, k * nb:], assigned, signed, absent)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples become NaN bounds
        low, high = bootstrap_ci(packed, stat, resamples=resamples, seed=seed)
    names = ("argmax_ds", "target_ds", "peak_on_target")
    return {f"{n}_ci": [None if np.isnan(lo) else float(lo), None if np.isnan(hi) else float(hi)]
            for n, lo, hi in zip(names, low, high)} | {"bootstrap_images": int(len(sums))}
