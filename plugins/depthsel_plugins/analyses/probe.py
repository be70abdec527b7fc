"""Where does depth become linearly decodable? The ``probe`` analyzer.

For every hooked layer a closed-form ridge regression predicts each ground-truth
pixel's depth from the layer's bilinearly aligned activations there
(:mod:`.probe_stats`). The probe is fitted in one streaming pass over a
*training* split (sufficient statistics only, no activations kept), then scored
in a second pass over the *held-out* split: RMSE, δ1, AbsRel (under a metric
protocol), R² in target space, and RMSE/MAE per ground-truth depth bin. This is
the per-layer probing of Probe3D (El Banani et al., CVPR 2024), not a method of
the You et al. papers.

Splits: ``train`` (a dataset config, built with :func:`depthsel.get_dataset`),
else ``ctx.train_dataset``, else the first ``train_fraction`` of
``ctx.dataset`` (a contiguous head, so consecutive video frames do not leak
into the held-out tail). Under ``torch.distributed`` each rank takes a disjoint
shard of both splits; the probe statistics of all layers are summed with one
all-reduce and the held-out sums with a second, so every rank ends with the
single-process result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from depthsel import get_dataset
from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.api import binner_from_config
from depthsel.binning import Binner, prepare_depth
from depthsel.consumer import BatchCallback
from depthsel.data import dataset_fingerprint
from depthsel.errors import DepthselError
from depthsel.layers import LayerSelector
from depthsel.metrics import DepthMetrics
from depthsel.results import load_result, provenance
from depthsel.stream import distributed_rank, stream

from .probe_result import ProbeResult, plot_probe_curves
from .probe_stats import ProbeFit, ProbeStatistics, from_target, sync_all, to_target

__all__ = ["ProbeAnalyzer", "ProbeResult", "ProbeStatistics", "plot_probe_curves", "register_analyzers"]

_DEFAULT_BINNER = {"name": "uniform", "num_bins": 10, "min_depth": 0.0, "max_depth": 10.0}


class ProbeConfigError(DepthselError):
    """The probe configuration is invalid."""


class _HeldOut:
    """Streaming held-out sums of one predictor: metrics, R² and per-bin errors."""

    def __init__(self, protocol: str, num_bins: int, target: str) -> None:
        self.metrics, self.target = DepthMetrics(protocol), target
        # n, Σy, Σy², SSE (target space); then per bin: SSE and Σ|e| in metres.
        self.sums = torch.zeros(4 + 2 * num_bins, dtype=torch.float64)
        self.nb = num_bins

    def update(self, pred_t: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
               bins: torch.Tensor) -> None:
        pred_m = from_target(pred_t, self.target)
        self.metrics.update(pred_m[:, None], depth[:, None], valid[:, None])
        m = valid & (depth > 0)
        y, p = to_target(depth[m], self.target), pred_t[m]
        s = self.sums
        s[0] += y.numel()
        s[1] += y.sum()
        s[2] += (y * y).sum()
        s[3] += ((y - p) ** 2).sum()
        b = bins[m]
        ok = b >= 0
        err = (pred_m[m] - depth[m])[ok]
        s[4:4 + self.nb] += torch.bincount(b[ok], weights=err * err, minlength=self.nb)[:self.nb].cpu()
        s[4 + self.nb:] += torch.bincount(b[ok], weights=err.abs(), minlength=self.nb)[:self.nb].cpu()

    def flat(self) -> torch.Tensor:
        return torch.cat([self.sums, torch.tensor(list(self.metrics.to_json()["sums"].values()),
                                                  dtype=torch.float64)])

    def set_flat(self, vec: torch.Tensor) -> None:
        state = self.metrics.to_json()
        self.sums = vec[:self.sums.numel()].clone()
        state["sums"] = dict(zip(state["sums"], vec[self.sums.numel():].tolist()))
        self.metrics = DepthMetrics.from_json(state)

    def compute(self, counts: torch.Tensor) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        n, sy, syy, sse = (float(v) for v in self.sums[:4])
        sst = syy - sy * sy / n if n else math.nan
        m = self.metrics.compute()
        out = {"rmse": m["rmse"], "delta1": m["delta1"], "abs_rel": m["abs_rel"],
               "r2": 1.0 - sse / sst if n and sst > 0 else math.nan, "test_pixels": n}
        c = counts.double()
        rmse = torch.where(c > 0, (self.sums[4:4 + self.nb] / c).sqrt(), torch.full_like(c, math.nan))
        mae = torch.where(c > 0, self.sums[4 + self.nb:] / c, torch.full_like(c, math.nan))
        return out, rmse, mae


class ProbeAnalyzer(Analyzer):
    """Fit a linear ridge depth probe per layer on a training split; score it held out.

    Parameters
    ----------
    ridge
        Penalty on standardised features (0: ordinary least squares).
    target
        ``"depth"`` (metres, the default) or ``"log"`` (ln metres; predictions exponentiated).
    train
        Dataset config of the training split (``{"name": "folder", "root": ...}``).
    train_fraction
        Without ``train`` or ``ctx.train_dataset``: the leading share of
        ``ctx.dataset`` used for fitting; the rest is held out.
    pixels_per_image
        Fit on at most this many random valid pixels per image (``None``: all).
        Scoring always uses every valid pixel.
    binner
        Ground-truth bins of the per-bin error (a registry name, config dict or Binner;
        default 10 uniform bins over 0-10 m). A concept binner gives per-concept error.
    protocol
        Metric protocol of RMSE, δ1 and AbsRel (``"default"``: pooled over pixels).
    align_corners
        Bilinear convention of the alignment.
    label
        Name of this run in comparison figures (e.g. ``"baseline"``).
    compare
        A saved probe result whose curves are drawn beside this run's.
    max_batches
        Stop each pass after this many batches (quick looks).
    """

    name = "probe"
    description = "per-layer linear ridge depth probe (streamed XᵀX): held-out RMSE, δ1, R², per-bin error"

    def __init__(self, *, ridge: float = 1e-4, target: str = "depth", train: Mapping[str, Any] | None = None,
                 train_fraction: float = 0.5, pixels_per_image: int | None = None,
                 binner: Any = None, protocol: str = "default", align_corners: bool = False,
                 label: str = "model", compare: str | None = None, max_batches: int | None = None) -> None:
        if not (float(ridge) >= 0 and math.isfinite(float(ridge))):
            raise ProbeConfigError(f"ridge must be a finite number >= 0, got {ridge}")
        if target not in ("depth", "log"):
            raise ProbeConfigError(f"target must be 'depth' or 'log', got {target!r}")
        if not 0 < float(train_fraction) < 1:
            raise ProbeConfigError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        if pixels_per_image is not None and int(pixels_per_image) < 1:
            raise ProbeConfigError("pixels_per_image must be >= 1 (or None for every pixel)")
        DepthMetrics(protocol)  # fail early on an unknown protocol
        self.binner: Binner = binner_from_config(binner if binner is not None else dict(_DEFAULT_BINNER))
        super().__init__(ridge=float(ridge), target=target, train=dict(train) if train else None,
                         train_fraction=float(train_fraction), pixels_per_image=pixels_per_image,
                         binner=self.binner.config(), protocol=protocol, align_corners=bool(align_corners),
                         label=str(label), compare=str(compare) if compare else None, max_batches=max_batches)
        self.c = self.config()

    # ------------------------------------------------------------ data
    def splits(self, ctx: AnalysisContext) -> tuple[Dataset[Any], Dataset[Any]]:
        """``(train, held_out)`` datasets."""
        if self.c["train"]:
            spec = dict(self.c["train"])
            if "name" not in spec:
                raise ProbeConfigError("train must be a dataset config with a name, e.g. "
                                       '{"name": "folder", "root": "...", "frames": "0:80"}')
            try:
                return get_dataset(spec.pop("name"), **spec), ctx.dataset
            except TypeError as exc:
                raise ProbeConfigError(f"the train dataset config {self.c['train']} was rejected: {exc}") from exc
        if ctx.train_dataset is not None:
            return ctx.train_dataset, ctx.dataset
        n = len(ctx.dataset)  # type: ignore[arg-type]
        cut = int(round(n * self.c["train_fraction"]))
        if cut < 1 or cut >= n:
            raise ProbeConfigError(f"{n} samples cannot be split {self.c['train_fraction']:g} : rest; "
                                   "give more data or a separate train split (--set train={...})")
        return Subset(ctx.dataset, range(cut)), Subset(ctx.dataset, range(cut, n))

    def _stream(self, ctx: AnalysisContext, data: Dataset[Any], what: str,
                fn: Callable[[torch.Tensor, dict[str, torch.Tensor]], None]) -> None:
        """One pass over ``data`` (this rank's shard): ``fn(depth [B,1,H,W] float64, {layer: act})``."""
        def each(view: Any) -> None:
            fn(prepare_depth(view.depth, view.valid).to(torch.float64), dict(view.activations))

        stream(ctx.model, data, {"probe": BatchCallback(each)}, layers=ctx.layers, info=ctx.info,
               batch_size=ctx.batch_size, device=ctx.device, adapters=ctx.adapters or None,
               num_workers=ctx.num_workers, progress=ctx.progress, description=what,
               max_batches=self.c["max_batches"], sync=False)

    # ------------------------------------------------------------- run
    def _load_compare(self) -> ProbeResult | None:
        if not self.c["compare"]:
            return None
        try:
            other = load_result(self.c["compare"], types={ProbeResult.kind: ProbeResult})
        except DepthselError as exc:
            raise ProbeConfigError(f"compare={self.c['compare']!r} is not a saved probe result: {exc}") from exc
        if not isinstance(other, ProbeResult):
            raise ProbeConfigError(f"compare={self.c['compare']!r} is a {other.kind!r} result, not a probe")
        return other

    def fit(self, ctx: AnalysisContext, data: Dataset[Any]) -> dict[str, ProbeStatistics]:
        """Stream ``data`` once and return each layer's (all-reduced) probe statistics."""
        stats = {n: ProbeStatistics(self.c["target"], self.c["align_corners"]) for n in ctx.layers}
        gen = torch.Generator().manual_seed(ctx.seed)

        def add(depth: torch.Tensor, acts: dict[str, torch.Tensor]) -> None:
            keep = self._subsample(depth > 0, gen)
            for name in ctx.layers:
                stats[name].update(acts[name], depth, keep=keep)

        self._stream(ctx, data, "probe: fitting", add)
        sync_all(list(stats.values()))
        return stats

    def _subsample(self, valid: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        k = self.c["pixels_per_image"]
        if k is None:
            return None
        keys = torch.rand(valid.shape, generator=gen, dtype=torch.float64).to(valid.device)
        keys = torch.where(valid, keys, torch.full_like(keys, 2.0)).flatten(1)
        keep = torch.zeros_like(keys, dtype=torch.bool)
        idx = keys.topk(min(int(k), keys.shape[1]), dim=1, largest=False).indices
        keep.scatter_(1, idx, True)
        return keep.view(valid.shape) & valid

    def score(self, ctx: AnalysisContext, data: Dataset[Any], fits: Mapping[str, ProbeFit],
              constant: float) -> tuple[dict[str, _HeldOut], torch.Tensor]:
        """Stream the held-out split; return per-predictor sums and the per-bin pixel counts."""
        nb, tgt = self.binner.num_bins, self.c["target"]
        held = {n: _HeldOut(self.c["protocol"], nb, tgt) for n in [*fits, "(constant)"]}
        counts = torch.zeros(nb, dtype=torch.float64)

        def add(depth: torch.Tensor, acts: dict[str, torch.Tensor]) -> None:
            valid = depth > 0
            bins = self.binner(depth, valid)
            counts.add_(torch.bincount(bins[bins >= 0], minlength=nb)[:nb].double().cpu())
            size = (depth.shape[-2], depth.shape[-1])
            for name, fit in fits.items():
                held[name].update(fit.predict(acts[name], size, self.c["align_corners"]), depth, valid, bins)
            held["(constant)"].update(torch.full_like(depth, constant), depth, valid, bins)

        self._stream(ctx, data, "probe: scoring", add)
        flats = [h.flat() for h in held.values()]
        buf = torch.cat([counts, *flats])
        _, world = distributed_rank()
        if world > 1:
            import torch.distributed as dist

            buf = buf.to(ctx.device)
            dist.all_reduce(buf)
            buf = buf.cpu()
            counts, i = buf[:nb].clone(), nb
            for h, f in zip(held.values(), flats):
                h.set_flat(buf[i:i + f.numel()])
                i += f.numel()
        return held, counts

    def run(self, ctx: AnalysisContext) -> ProbeResult:
        """Fit on the training split, score on the held-out split, and return the result."""
        compare = self._load_compare()  # before the passes: a bad path must not waste them
        # Resolve globs once, so every pass and the result use the same concrete names.
        ctx = dataclasses.replace(ctx, layers=list(LayerSelector(ctx.layers).resolve(ctx.model)))
        train, test = self.splits(ctx)
        was = ctx.model.training
        ctx.model.eval()
        try:
            stats = self.fit(ctx, train)
            fits = {n: s.solve(self.c["ridge"]) for n, s in stats.items()}
            first = next(iter(stats.values()))
            constant = float(first.sy / first.n)  # the training mean, in target space
            held, counts = self.score(ctx, test, fits, constant)
        finally:
            ctx.model.train(was)
        res = ProbeResult(config=self.config(), meta={**provenance(dataset_fingerprint(test)),
                                                      "train_fingerprint": dataset_fingerprint(train)})
        res.tensors = {"edges": self.binner.edges.double().cpu(), "bin_counts": counts}
        metrics: dict[str, Any] = {}
        for name in [*fits, "(constant)"]:
            out, rmse, mae = held[name].compute(counts)
            if name in fits:
                out.update(units=int(stats[name].num_features or 0), train_pixels=float(stats[name].n))
                res.tensors.update({f"{name}/weight": fits[name].weight.cpu(),
                                    f"{name}/bias": torch.tensor([fits[name].bias], dtype=torch.float64)})
            res.tensors.update({f"{name}/bin_rmse": rmse, f"{name}/bin_mae": mae})
            metrics[name] = out
        res.data = {"label": self.c["label"], "layers": list(fits), "target": self.c["target"],
                    "constant": metrics.pop("(constant)"), "metrics": metrics,
                    "binner": self.binner.config(), "protocol": self.c["protocol"]}
        if compare is not None:
            res.data["compare"] = compare.curves()
        return res


def register_analyzers(register: Any) -> None:
    """Register the ``probe`` analyzer."""
    register("probe", ProbeAnalyzer, description=ProbeAnalyzer.description)
