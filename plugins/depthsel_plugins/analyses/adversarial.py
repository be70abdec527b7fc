"""Adversarial error tracing (You et al., ICCV 2021, Sec. 5.3 and Fig. 8).

Each image is attacked with FGSM (or PGD) to *maximise* the mean absolute
depth error against the ground truth over valid pixels. The attack works in
``[0, 1]`` image space: the un-normalised image moves by at most ``epsilon``
per channel, is clamped to ``[0, 1]`` and only then normalised by the model's
:class:`~depthsel.ModelInfo`, so ``epsilon`` means the same for every model
(the paper does not say in which space its 0.05 is measured). Then, per dataset:

* accuracy before and after the attack (δ1, RMSE, ... under a metric protocol);
* error pixels: ``max(pred/gt, gt/pred) > error_threshold`` (1.25) on valid pixels
  of the adversarial prediction;
* a histogram of the *predicted* depth bins of the error pixels, per hooked
  layer (a layer with ``K`` units below ``num_bins`` uses ``K`` bins, as the
  paper's assignment does);
* for the ``top_bins`` dominant bins, the units assigned to them (Eq. 6,
  :func:`~depthsel.assign_bins`, or ``ctx.assignment``) and the IoU of
  their thresholded, upsampled feature maps with the error region, pooled over
  the dataset (sum of intersections over sum of unions). A unit's map is
  thresholded per image at its ``quantile`` over valid pixels (strictly above,
  so a constant, dead map marks nothing). IoU is computed for both the
  adversarial and the clean activations, and for all other units as a baseline.

The attack and the error-region primitives are in :mod:`.adversarial_attack`;
this module runs them over a dataset and keeps the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.binning import Binner
from depthsel.capture import Capture
from depthsel.consumer import BatchCallback
from depthsel.data import dataset_fingerprint
from depthsel.errors import DepthselError
from depthsel.figures import panels
from depthsel.metrics import DepthMetrics
from depthsel.results import Result, provenance
from depthsel.selectivity import assign_bins
from depthsel.stream import stream

from .adversarial_attack import (
    attack_images,
    error_pixels,
    mask_iou,
    predict_depth,
    threshold_maps,
    to_depth_size,
)

__all__ = ["AdversarialAnalyzer", "AdversarialResult", "AdversarialConfigError", "attack_images",
           "error_pixels", "threshold_maps", "mask_iou", "register_analyzers"]


class AdversarialConfigError(DepthselError):
    """The adversarial analysis was configured with invalid values."""


def _make_binner(spec: Any, num_bins: int, min_depth: float, max_depth: float) -> Binner:
    """A binner from an instance, a config dict (e.g. a dissection's fitted quantile bins) or a name.

    A bare name takes this analysis's bin count and depth range.
    """
    from depthsel.api import binner_from_config

    if isinstance(spec, str):
        spec = {"name": spec, "num_bins": num_bins, "min_depth": min_depth, "max_depth": max_depth}
    return binner_from_config(spec)


class AdversarialResult(Result):
    """Result of :class:`AdversarialAnalyzer`.

    ``data`` holds ``clean``/``adversarial`` metrics, ``drop``, ``table`` (one row
    per layer and dominant bin) and ``layers`` (units, bins). Tensors:
    ``{layer}/error_hist``, ``{layer}/pred_hist``, ``{layer}/iou``,
    ``{layer}/iou_clean``, ``{layer}/assigned``, ``{layer}/edges`` and
    ``figure/*`` (the chosen image, its attack, error map and unit maps).
    """

    kind: ClassVar[str] = "adversarial"
    figure_dpi: ClassVar[int] = 110
    figures_in_save: ClassVar[bool] = True

    def rows(self) -> list[dict[str, Any]]:
        """The per-dataset table (layer, dominant bin, units, IoU)."""
        return [dict(r) for r in self.data.get("table", [])]

    def figures(self) -> dict[str, dict[str, Any]]:
        """``figure.png`` when a figure was recorded (``save`` writes it)."""
        return {"figure.png": {}} if "figure/image" in self.tensors else {}

    def plot(self, ax: Any = None) -> Any:
        """Draw the Fig. 8-style panel (2 rows of at least 4 panels, so ``ax`` must be ``None``)."""
        t, fig_info = self.tensors, self.data.get("figure", {})
        if "figure/image" not in t:
            raise AdversarialConfigError("this result has no figure; run with figure_index set to an image")
        units = fig_info.get("units", [])
        ncol = max(4, len(units))
        fig, axes = panels(ax, 2, ncol, figsize=(2.6 * ncol, 5.4))
        for ax in axes.flat:
            ax.axis("off")
        for ax, key, title in ((axes[0, 0], "image", "image"), (axes[0, 1], "adversarial",
                                f"adversarial (eps={self.config.get('epsilon')})")):
            ax.imshow(t[f"figure/{key}"].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_title(title)
        axes[0, 2].imshow(t["figure/error"][0].float().numpy(), cmap="Reds", vmin=0, vmax=1)
        axes[0, 2].set_title("error pixels")
        hist = t[f"{fig_info['layer']}/error_hist"].double()
        ax = axes[0, 3]
        ax.axis("on")
        colors = ["tab:red" if i == fig_info.get("bin") else "tab:gray" for i in range(hist.numel())]
        ax.bar(range(hist.numel()), (hist / hist.sum().clamp_min(1)).numpy(), color=colors, width=1.0)
        ax.set_title("pred. bin of error pixels (all images)", fontsize=9)
        ax.set_xlabel("bin")
        for i, u in enumerate(units):
            a = axes[1, i]
            a.imshow(t["figure/units"][i].numpy(), cmap="viridis")
            a.contour(t["figure/error"][0].float().numpy(), levels=[0.5], colors="r", linewidths=0.6)
            a.set_title(f"{fig_info['layer']}#{u}", fontsize=8)
        fig.tight_layout()
        return fig


class AdversarialAnalyzer(Analyzer):
    """Trace adversarial depth errors back to depth-selective units (You et al., Fig. 8).

    Parameters
    ----------
    attack
        ``"fgsm"`` (default) or ``"pgd"``.
    epsilon
        L-inf budget in ``[0, 1]`` image space (0.05).
    steps, step_size, random_start
        PGD settings (``step_size=None``: ``2.5 * epsilon / steps``).
    binner, num_bins, min_depth, max_depth
        Binner of predicted depth (a registered name or a :class:`~depthsel.Binner`).
    error_threshold
        A pixel is an error when ``max(pred/gt, gt/pred)`` exceeds it (1.25).
    top_bins
        How many dominant bins to report per layer.
    quantile
        Per-unit, per-image activation quantile for the IoU masks (0.8: top 20%).
    protocol
        Metric protocol name (``"you2021"``).
    figure_index, figure_layer, figure_units
        Dataset index drawn in the figure (``None``: no figure), its layer
        (default: the first) and the most unit maps shown.
    max_images
        Stop after this many images (``None``: all).
    """

    name = "adversarial"
    description = "FGSM/PGD attack; trace error pixels to the units of their depth bins"

    def __init__(self, *, attack: str = "fgsm", epsilon: float = 0.05, steps: int = 10,
                 step_size: float | None = None, random_start: bool = False,
                 binner: str | dict[str, Any] | Binner = "sid", num_bins: int = 64, min_depth: float = 0.75,
                 max_depth: float = 10.0, error_threshold: float = 1.25, top_bins: int = 3,
                 quantile: float = 0.8, protocol: str = "you2021", figure_index: int | None = 0,
                 figure_layer: str | None = None, figure_units: int = 6,
                 max_images: int | None = None) -> None:
        problems = [msg for bad, msg in (
            (attack not in ("fgsm", "pgd"), f"attack={attack!r}: use 'fgsm' or 'pgd'"),
            (not epsilon >= 0, f"epsilon={epsilon} must be >= 0 ([0, 1] image units)"),
            (steps < 1 or (step_size is not None and not step_size > 0),
             "PGD steps must be >= 1 and step_size > 0 (or None)"),
            (not error_threshold > 1, f"error_threshold={error_threshold} must exceed 1 (e.g. 1.25)"),
            (not 0 < quantile < 1, f"quantile={quantile} must lie in (0, 1); 0.8 keeps the top 20%"),
            (top_bins < 1 or figure_units < 1, "top_bins and figure_units must be >= 1"),
        ) if bad]
        if problems:
            raise AdversarialConfigError("; ".join(problems))
        self.binner = _make_binner(binner, num_bins, min_depth, max_depth)
        super().__init__(
            attack=attack, epsilon=epsilon, steps=steps, step_size=step_size, random_start=random_start,
            binner=self.binner.config(), error_threshold=error_threshold, top_bins=top_bins,
            quantile=quantile, protocol=protocol, figure_index=figure_index,
            figure_layer=figure_layer, figure_units=figure_units, max_images=max_images,
        )
        self.c = self.config()

    def _layer_binner(self, k: int) -> Binner:
        # The paper sets N_b = K for layers with fewer units than bins.
        return self.binner.for_units(k)

    def run(self, ctx: AnalysisContext) -> AdversarialResult:
        """Attack every image, measure the accuracy drop and trace errors to units."""
        c, model = self.c, ctx.model
        n_data = len(ctx.dataset)  # type: ignore[arg-type]
        if c["figure_index"] is not None and not 0 <= c["figure_index"] < n_data:
            raise AdversarialConfigError(
                f"figure_index={c['figure_index']} is outside the dataset of {n_data} images; "
                "pass an index in range or figure_index=None")
        gen = torch.Generator().manual_seed(ctx.seed)
        clean_m, adv_m = DepthMetrics(c["protocol"]), DepthMetrics(c["protocol"])
        st: dict[str, dict[str, Any]] = {}
        fig: dict[str, Any] = {}

        def each(view: Any) -> None:
            batch, gt, valid = view.batch, view.depth, view.valid
            pred_c, acts_c = view.prediction(), dict(view.activations)
            x_adv = attack_images(model, ctx.info, batch, attack=c["attack"], epsilon=c["epsilon"],
                                  steps=c["steps"], step_size=c["step_size"],
                                  random_start=c["random_start"], generator=gen)
            with Capture(model, ctx.layers, adapters=ctx.adapters or None) as cap:
                pred_a = predict_depth(model, ctx.info, batch, x_adv)
                acts_a = dict(cap.outputs)
            clean_m.update(pred_c, gt, valid)
            adv_m.update(pred_a, gt, valid)
            err = error_pixels(pred_a, gt, valid, c["error_threshold"])
            self._accumulate(st, acts_a, acts_c, pred_a, err, valid)
            hit = (view.indices == c["figure_index"]).nonzero() if c["figure_index"] is not None else []
            if len(hit):
                i = int(hit[0])
                fig.update(image=batch["image"][i], adversarial=x_adv[i], error=err[i],
                           acts={n: a[i] for n, a in acts_a.items()})

        # Exactly the first max_images images; every rank attacks all of them (no shard),
        # since the error statistics below are not reduced across ranks.
        n = n_data if c["max_images"] is None else min(n_data, int(c["max_images"]))
        stream(model, ctx.dataset, {"adversarial": BatchCallback(each)}, layers=ctx.layers, info=ctx.info,
               batch_size=ctx.batch_size, device=ctx.device, adapters=ctx.adapters or None,
               num_workers=ctx.num_workers, progress=ctx.progress, description="adversarial",
               indices=range(n), shard=False, sync=False)
        return self._finish(ctx, st, clean_m, adv_m, fig)

    def _accumulate(self, st: dict[str, dict[str, Any]], acts_a: Mapping[str, torch.Tensor],
                    acts_c: Mapping[str, torch.Tensor], pred: torch.Tensor, err: torch.Tensor,
                    valid: torch.Tensor) -> None:
        size = (int(err.shape[-2]), int(err.shape[-1]))
        pred = to_depth_size(pred, err)
        for name, act in acts_a.items():
            k = int(act.shape[1])
            if name not in st:
                st[name] = {"binner": self._layer_binner(k), "k": k, "errors_out_of_range": 0,
                            **{key: torch.zeros(k, dtype=torch.float64)
                               for key in ("inter", "union", "inter_c", "union_c")}}
            s = st[name]
            binner = s["binner"]
            # [B,H,W], -1 outside the range or invalid; clamped so a negative prediction
            # of an untrained network is simply out of range rather than a warning.
            bins = binner(pred.detach().clamp_min(0), valid)
            nb = binner.num_bins
            s["error_hist"] = s.get("error_hist", 0) + torch.bincount(
                bins[err[:, 0] & (bins >= 0)].cpu(), minlength=nb).double()
            s["pred_hist"] = s.get("pred_hist", 0) + torch.bincount(
                bins[bins >= 0].cpu(), minlength=nb).double()
            s["errors_out_of_range"] += int((err[:, 0] & (bins < 0)).sum())
            for b in range(act.shape[0]):
                e = err[b, 0]
                for tag, maps in (("", act[b]), ("_c", acts_c[name][b])):
                    m = threshold_maps(maps, size, valid[b, 0], self.c["quantile"])
                    s["inter" + tag] += (m & e).flatten(1).sum(1).double().cpu()
                    s["union" + tag] += (m | e).flatten(1).sum(1).double().cpu()

    def _finish(self, ctx: AnalysisContext, st: dict[str, dict[str, Any]], clean_m: DepthMetrics,
                adv_m: DepthMetrics, fig: dict[str, Any]) -> AdversarialResult:
        c = self.c
        clean, adv = clean_m.compute(), adv_m.compute()
        tensors: dict[str, torch.Tensor] = {}
        table: list[dict[str, Any]] = []
        layers: dict[str, Any] = {}
        given = ctx.assignment or {}
        for name, s in st.items():
            k, binner = s["k"], s["binner"]
            nb = binner.num_bins
            assigned = torch.as_tensor(given[name], dtype=torch.long) if name in given else assign_bins(k, nb)
            if assigned.shape != (k,) or bool(((assigned < 0) | (assigned >= nb)).any()):
                raise AdversarialConfigError(
                    f"ctx.assignment[{name!r}] must hold {k} bin indices in [0, {nb})")
            iou = s["inter"] / s["union"].clamp_min(1)
            iou_c = s["inter_c"] / s["union_c"].clamp_min(1)
            hist = s["error_hist"]
            edges = binner.edges
            tensors.update({f"{name}/error_hist": hist, f"{name}/pred_hist": s["pred_hist"],
                            f"{name}/iou": iou, f"{name}/iou_clean": iou_c,
                            f"{name}/assigned": assigned, f"{name}/edges": edges})
            total = float(hist.sum())
            order = [int(b) for b in torch.argsort(hist, descending=True, stable=True) if hist[b] > 0]
            dominant = order[: c["top_bins"]]
            layers[name] = {"units": k, "bins": nb, "dominant_bins": dominant,
                            "error_pixels": total, "errors_out_of_range": s["errors_out_of_range"]}
            for rank, b in enumerate(dominant):
                units = (assigned == b).nonzero().flatten()
                others = (assigned != b).nonzero().flatten()
                best = int(units[iou[units].argmax()]) if units.numel() else -1
                table.append({
                    "layer": name, "rank": rank, "bin": b, "low": float(edges[b]),
                    "high": float(edges[b + 1]), "error_pixels": float(hist[b]),
                    "error_share": float(hist[b]) / total if total else math.nan,
                    "error_rate": float(hist[b] / s["pred_hist"][b]) if s["pred_hist"][b] else math.nan,
                    "units": " ".join(str(int(u)) for u in units),
                    "mean_iou": float(iou[units].mean()) if units.numel() else math.nan,
                    "best_unit": best, "best_iou": float(iou[best]) if best >= 0 else math.nan,
                    "mean_iou_clean": float(iou_c[units].mean()) if units.numel() else math.nan,
                    "mean_iou_other_units": float(iou[others].mean()) if others.numel() else math.nan,
                })
        data: dict[str, Any] = {
            "clean": clean, "adversarial": adv, "images": int(clean["images"]),
            "drop": {"delta1": clean["delta1"] - adv["delta1"], "rmse": adv["rmse"] - clean["rmse"],
                     "abs_rel": adv["abs_rel"] - clean["abs_rel"]},
            "table": table, "layers": layers,
        }
        if fig:
            self._figure(fig, st, tensors, data)
        fp = dataset_fingerprint(ctx.dataset)
        return AdversarialResult(tensors=tensors, data=data, config=self.config(),
                                 meta={**provenance(fp), "layers": list(st), "seed": ctx.seed})

    def _figure(self, fig: dict[str, Any], st: dict[str, dict[str, Any]],
                tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        layer = self.c["figure_layer"] or next(iter(st))
        if layer not in st:
            raise AdversarialConfigError(f"figure_layer {layer!r} was not hooked; use one of {list(st)}")
        dominant = data["layers"][layer]["dominant_bins"]
        b = dominant[0] if dominant else -1
        assigned = tensors[f"{layer}/assigned"]
        units = (assigned == b).nonzero().flatten()
        # Show the units of the dominant bin that overlap the errors best.
        order = torch.argsort(tensors[f"{layer}/iou"][units], descending=True)
        units = units[order][: self.c["figure_units"]]
        size = tuple(fig["error"].shape[-2:])
        act = fig["acts"][layer][units].float()[None]
        maps = F.interpolate(act, size=size, mode="bilinear", align_corners=False)[0] if units.numel() \
            else torch.zeros((0, *size))
        tensors.update({"figure/image": fig["image"].float().cpu(),
                        "figure/adversarial": fig["adversarial"].float().cpu(),
                        "figure/error": fig["error"].cpu(), "figure/units": maps.cpu()})
        data["figure"] = {"index": self.c["figure_index"], "layer": layer, "bin": b,
                          "units": [int(u) for u in units]}


def register_analyzers(register: Any) -> None:
    """Register the ``adversarial`` analyzer."""
    register("adversarial", AdversarialAnalyzer, description=AdversarialAnalyzer.description)
