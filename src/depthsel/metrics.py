"""Depth-estimation accuracy metrics under an explicit evaluation protocol.

How a number is measured (averaging, δ comparison, cap, crop, units) is a
:class:`~depthsel.protocols.MetricProtocol`; named presets come from the
protocol registry (:func:`~depthsel.protocols.get_protocol`), and every
result carries its protocol's name.

Metrics (over the valid pixels of the protocol):

* ``abs_rel = mean |p-g|/g``, ``sq_rel = mean (p-g)^2/g``, ``mae = mean |p-g|``
* ``rmse`` and ``rmse_log`` (natural log), ``log10 = mean |log10 p - log10 g|``
* ``delta1..3``: fraction with ``max(p/g, g/p) < 1.25^k``; ``delta_1.02/1.05/1.10``
  for depth completion.

With ``reduction="image"`` each metric is computed per image and averaged over
images (images without a valid pixel are skipped). RMSE then follows
``rmse_mode``: ``"sqrt_of_mean_mse"`` or ``"mean_of_rmse"``. With
``reduction="pixel"`` all valid pixels of all images are pooled.

Predictions of another spatial size than the ground truth are upsampled
bilinearly (``align_corners=False``) to the ground-truth size first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F

from .consumer import Consumer
from .errors import InvalidDepthError, ShapeMismatchError
from .protocols import MetricProtocol, MetricProtocolError, crop_mask, get_protocol, protocol_from_dict

__all__ = [
    "MetricProtocolError",
    "MetricProtocol",
    "get_protocol",
    "DepthMetrics",
    "compute_metrics",
    "metrics_by_bin",
]


def _as_b1hw(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.ndim == 2:
        return t[None, None]
    if t.ndim == 3:
        return t[:, None]
    if t.ndim == 4 and t.shape[1] == 1:
        return t
    raise InvalidDepthError(f"{what} must be [B,1,H,W], [B,H,W] or [H,W], got {tuple(t.shape)}")


_TERMS = ("abs", "sq", "abs_rel", "sq_rel", "log_sq", "log10")


def _pixel_terms(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None, p: MetricProtocol
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Return ``(mask [B,1,H,W], per-pixel float64 terms zeroed outside mask, gt [B,1,H,W])``."""
    gt = _as_b1hw(gt.detach(), "gt").to(torch.float64)
    pred = _as_b1hw(pred.detach(), "pred").to(torch.float64)
    if pred.shape[0] != gt.shape[0]:
        raise ShapeMismatchError(f"pred has batch {pred.shape[0]} but gt has {gt.shape[0]}; pass matching batches")
    if pred.shape[-2:] != gt.shape[-2:]:
        pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    ok = torch.isfinite(gt) & (gt > p.min_depth)
    if p.max_depth is not None:
        ok &= (gt < p.max_depth) if p.max_op == "<" else (gt <= p.max_depth)
    if valid is not None:
        valid = _as_b1hw(valid.detach(), "valid")
        if valid.shape != gt.shape:
            raise ShapeMismatchError(f"valid {tuple(valid.shape)} must match gt {tuple(gt.shape)}")
        ok &= valid.bool()
    if p.mask_op == "or":
        ok = ok | (pred > 0)  # a released evaluation's bug, kept to reproduce it; see MetricProtocol.mask_op
    ok &= crop_mask(p.crop, gt.shape[-2], gt.shape[-1]).to(ok.device)
    if p.clamp_pred:
        hi = p.max_depth if p.max_depth is not None else math.inf
        pred = torch.nan_to_num(pred, nan=p.min_depth, posinf=hi).clamp(p.min_depth, hi)
    scale = 1000.0 if p.units == "mm" else 1.0
    ps, gs = pred * scale, gt * scale
    diff = ps - gs
    with torch.no_grad():
        terms = {
            "abs": diff.abs(),
            "sq": diff**2,
            "abs_rel": diff.abs() / gs,
            "sq_rel": diff**2 / gs,
            "log_sq": (torch.log(ps) - torch.log(gs)) ** 2,
            "log10": (torch.log10(ps) - torch.log10(gs)).abs(),
        }
        ratio = torch.maximum(ps / gs, gs / ps)
        for name, thr in zip(p.delta_names(), p.deltas):
            terms[name] = ((ratio < thr) if p.delta_op == "<" else (ratio <= thr)).double()
    zero = torch.zeros((), dtype=torch.float64, device=gt.device)
    return ok, {k: torch.where(ok, v, zero) for k, v in terms.items()}, gt


class DepthMetrics(Consumer):
    """Streaming accumulator; results do not depend on how data is split into batches.

    It keeps additive float64 sums only (pooled pixel sums *and* sums of
    per-image means), declared once as consumer state, so :meth:`merge` of two
    accumulators equals one accumulator fed both streams, for either reduction,
    and :meth:`sync` sums them across ``torch.distributed`` ranks (without it
    each rank would report the metrics of its own shard).

    Examples
    --------
    >>> m = DepthMetrics("default")  # or a registered preset name, or a MetricProtocol
    >>> for batch in loader:  # doctest: +SKIP
    ...     m.update(model(batch["image"]), batch["depth"], batch["valid"])
    >>> m.compute()["rmse"]  # doctest: +SKIP
    """

    def __init__(self, protocol: MetricProtocol | str = "default") -> None:
        super().__init__()
        self.protocol = get_protocol(protocol)
        keys = list(_TERMS) + self.protocol.delta_names()
        self._names = ([f"px_{k}" for k in keys] + [f"img_{k}" for k in keys]
                       + ["count", "images", "img_rmse", "img_rmse_log"])
        self._slot = {k: i for i, k in enumerate(self._names)}
        self.add_state("totals", torch.zeros(len(self._names), dtype=torch.float64))

    def _keys(self) -> list[str]:
        return list(_TERMS) + self.protocol.delta_names()

    @property
    def _sums(self) -> dict[str, float]:
        return dict(zip(self._names, self.totals.tolist()))

    def update(self, pred: Any, gt: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> None:
        """Add a batch: ``pred`` [B,1,h,w] (upsampled if needed), ``gt``/``valid`` [B,1,H,W]; or a stream view."""
        if gt is None and hasattr(pred, "binned"):
            pred, gt, valid = pred.prediction().float(), pred.depth, pred.valid
        assert gt is not None
        mask, terms, _ = _pixel_terms(pred, gt, valid, self.protocol)
        counts = mask.flatten(1).sum(1).double()
        has = counts > 0
        add = torch.zeros_like(self.totals)
        add[self._slot["count"]] = counts.sum().cpu()
        add[self._slot["images"]] = has.sum().double().cpu()
        for k, v in terms.items():
            per_image = v.flatten(1).sum(1).double()
            add[self._slot[f"px_{k}"]] = per_image.sum().cpu()
            add[self._slot[f"img_{k}"]] = (per_image[has] / counts[has]).sum().cpu()
            if k in ("sq", "log_sq"):
                key = "img_rmse" if k == "sq" else "img_rmse_log"
                add[self._slot[key]] = (per_image[has] / counts[has]).sqrt().sum().cpu()
        self.totals = self.totals + add

    def merge(self, other: DepthMetrics | Mapping[str, Any]) -> DepthMetrics:  # type: ignore[override]
        """Add another accumulator (or its :meth:`to_json`) into this one; returns ``self``."""
        state = other.to_json() if isinstance(other, DepthMetrics) else other
        if _protocol_from(state) != self.protocol:
            raise MetricProtocolError(
                f"cannot merge metrics of protocol {state.get('protocol', {}).get('name')!r} into "
                f"{self.protocol.name!r}; accumulate each protocol separately"
            )
        add = torch.zeros_like(self.totals)
        for k, v in state["sums"].items():
            if k not in self._slot:
                raise MetricProtocolError(f"unknown metric state entry {k!r}; the state is from another version")
            add[self._slot[k]] = float(v)
        self.totals = self.totals + add
        return self

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable state (protocol and sums), for storing next to results."""
        proto = asdict(self.protocol)
        proto["deltas"] = list(proto["deltas"])
        return {"protocol": proto, "sums": self._sums}

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> DepthMetrics:
        """Rebuild an accumulator from :meth:`to_json`."""
        out = cls(_protocol_from(state))
        return out.merge(state)

    def compute(self) -> dict[str, Any]:
        """Return ``{metric: float}`` plus ``count``, ``images`` and ``protocol`` (its name, a str).

        Metrics are NaN when nothing valid was seen.
        """
        s, p = self._sums, self.protocol
        out: dict[str, Any] = {"protocol": p.name}
        if p.reduction == "pixel":
            n = s["count"]
            mean = {k: (s[f"px_{k}"] / n if n else math.nan) for k in self._keys()}
            rmse, rmse_log = math.sqrt(mean["sq"]), math.sqrt(mean["log_sq"])
        else:
            n = s["images"]
            mean = {k: (s[f"img_{k}"] / n if n else math.nan) for k in self._keys()}
            if p.rmse_mode == "mean_of_rmse":
                rmse = s["img_rmse"] / n if n else math.nan
                rmse_log = s["img_rmse_log"] / n if n else math.nan
            else:
                rmse, rmse_log = math.sqrt(mean["sq"]), math.sqrt(mean["log_sq"])
        out.update(
            abs_rel=mean["abs_rel"], sq_rel=mean["sq_rel"], rmse=rmse, rmse_log=rmse_log,
            log10=mean["log10"], mae=mean["abs"],
        )
        out.update({k: mean[k] for k in p.delta_names()})
        out.update(count=s["count"], images=s["images"])
        return out


def _protocol_from(state: Mapping[str, Any]) -> MetricProtocol:
    try:
        return protocol_from_dict(state["protocol"])
    except (KeyError, TypeError) as exc:
        raise MetricProtocolError(f"malformed metric state ({exc}); pass DepthMetrics.to_json() output") from None


def compute_metrics(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None,
    protocol: MetricProtocol | str = "default",
) -> dict[str, Any]:
    """One-shot :class:`DepthMetrics` over a batch."""
    m = DepthMetrics(protocol)
    m.update(pred, gt, valid)
    return m.compute()


def metrics_by_bin(
    pred: torch.Tensor,
    gt: torch.Tensor,
    binner_edges: torch.Tensor | Sequence[float],
    valid: torch.Tensor | None = None,
    protocol: MetricProtocol | str = "default",
) -> list[dict[str, Any]]:
    """Metrics per ground-truth depth bin ``(e_i, e_{i+1}]`` (pixels pooled within a bin).

    Parameters
    ----------
    pred, gt, valid
        As in :meth:`DepthMetrics.update`.
    binner_edges
        Increasing bin edges in metres (float64 tensor, e.g. a binner's edges).
        Pixels outside ``(e_0, e_last]`` are left out.
    protocol
        Masking/crop/cap/units come from it; the reduction is always ``"pixel"``.

    Returns
    -------
    list of dict
        One per bin: ``bin``, ``low``, ``high``, ``count``, ``protocol`` and the
        metrics (NaN for an empty bin). Counts add up to the pooled count of
        pixels inside the edges.
    """
    p = replace(get_protocol(protocol), reduction="pixel")
    edges = torch.as_tensor(binner_edges, dtype=torch.float64).reshape(-1)
    if edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise InvalidDepthError("binner_edges must hold at least 2 strictly increasing values (metres)")
    mask, terms, gt64 = _pixel_terms(pred, gt, valid, p)
    nb = edges.numel() - 1
    # bucketize(right=False) gives i with e[i-1] < x <= e[i]: right-closed bins.
    idx = torch.bucketize(gt64.nan_to_num(-1.0), edges.to(gt64.device), right=False) - 1
    keep = mask & (idx >= 0) & (idx < nb)
    idx = idx[keep]
    counts = torch.bincount(idx, minlength=nb).double()
    sums = {k: torch.bincount(idx, weights=v[keep], minlength=nb) for k, v in terms.items()}
    out = []
    for b in range(nb):
        n = float(counts[b])
        mean = {k: (float(sums[k][b]) / n if n else math.nan) for k in sums}
        row: dict[str, Any] = {
            "bin": b, "low": float(edges[b]), "high": float(edges[b + 1]), "count": n, "protocol": p.name,
            "abs_rel": mean["abs_rel"], "sq_rel": mean["sq_rel"], "rmse": math.sqrt(mean["sq"]),
            "rmse_log": math.sqrt(mean["log_sq"]), "log10": mean["log10"], "mae": mean["abs"],
        }
        row.update({k: mean[k] for k in p.delta_names()})
        out.append(row)
    return out
