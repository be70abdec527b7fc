"""Oracle depth correction (You et al. 2021, Sec. 5.2): the ``correction`` analyzer.

For every hooked unit ``k`` and every location ``q`` of its feature map, the
activation is replaced by the unit's average *training* response at the
ground-truth depth bin there::

    A'_k(q) = R[k, bin(gt_nearest(q))]        if that pixel is valid and R is known
    A'_k(q) = A_k(q)                           otherwise

``gt_nearest`` is the ground truth resampled to the feature resolution with
NEAREST sampling; ``R`` comes from a stored dissection of the train split.
The rest of the network then runs on ``A'`` (a forward hook returns it), and
δ1/RMSE before and after are reported. If the units really encode depth bins,
feeding them the "ideal" value improves accuracy; for a non-selective network
it hurts.

**This is an ORACLE experiment**: it reads the ground truth of the test
images at test time. It measures how much depth information the units' code
can carry; it is not a way to predict depth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.binning import Binner
from depthsel.errors import DepthselError
from depthsel.figures import panels
from depthsel.results import Result, provenance

from .dissection_result import DissectionResult
from .interventions import TensorFn, evaluate, load_or_dissect

__all__ = ["CorrectionAnalyzer", "CorrectionResult", "correct_activations", "nearest_bins",
           "register_analyzers"]

ORACLE_NOTE = ("ORACLE experiment: activations are replaced using the GROUND-TRUTH depth of the "
               "evaluated images; the numbers bound what the units' depth code can carry and are "
               "not achievable at test time")
_KEYS = ("delta1", "rmse", "abs_rel")
_TITLES = {"delta1": "δ1 (higher is better)", "rmse": "RMSE, m (lower is better)",
           "abs_rel": "AbsRel (lower is better)"}


class CorrectionConfigError(DepthselError):
    """The correction configuration is invalid."""


def nearest_bins(binner: Binner, depth: torch.Tensor, valid: torch.Tensor | None,
                 size: tuple[int, int]) -> torch.Tensor:
    """Bins ``int64 [B, h, w]`` of the ground truth resampled to ``size`` with NEAREST sampling."""
    d = depth if depth.ndim == 4 else depth.unsqueeze(1)
    d_small = F.interpolate(d.float(), size=size, mode="nearest")
    v_small = None
    if valid is not None:
        v = valid if valid.ndim == 4 else valid.unsqueeze(1)
        v_small = F.interpolate(v.float(), size=size, mode="nearest") > 0.5
    return binner(d_small, v_small)


def correct_activations(act: torch.Tensor, bins: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Replace ``act [B, K, h, w]`` by ``responses[k, bins]`` where the bin is valid and known.

    Parameters
    ----------
    act
        Feature maps.
    bins
        ``int64 [B, h, w]`` at the feature resolution; ``-1`` keeps the activation.
    responses
        ``[K, Nb]`` average responses; NaN (bin never seen in training) keeps the activation.
    """
    table = responses.to(device=act.device, dtype=act.dtype)
    if table.shape[0] != act.shape[1]:
        raise CorrectionConfigError(
            f"the dissection has {table.shape[0]} units but the layer outputs {act.shape[1]}; "
            "use a dissection of this very model"
        )
    vals = table[:, bins.clamp(min=0)].permute(1, 0, 2, 3)  # [B, K, h, w]
    use = (bins >= 0).unsqueeze(1) & torch.isfinite(vals)
    return torch.where(use, vals, act)


class CorrectionResult(Result):
    """Accuracy before and after the oracle correction.

    ``data["clean"]`` and ``data["corrected"][condition]`` hold metric dicts;
    ``condition`` is ``"all"`` (every hooked layer at once) or a layer name.
    ``data["oracle"]`` is always ``True``.
    """

    kind: ClassVar[str] = "correction"

    def rows(self) -> list[dict[str, Any]]:
        """One row for the clean model and one per corrected condition."""
        out = [{"condition": "clean", **{k: self.data["clean"].get(k) for k in _KEYS}}]
        for cond, m in self.data.get("corrected", {}).items():
            out.append({"condition": cond, **{k: m.get(k) for k in _KEYS}})
        return out

    def plot(self, ax: Any = None, *, metric: str | None = None) -> Any:
        """One bar chart per metric (δ1, RMSE, AbsRel), or only ``metric``'s: clean beside each condition."""
        if metric is not None and metric not in _KEYS:
            raise CorrectionConfigError(f"metric must be one of {list(_KEYS)}, got {metric!r}")
        keys = list(_KEYS) if metric is None else [metric]
        rows = self.rows()
        labels = [str(r["condition"]) for r in rows]
        fig, axes = panels(ax, 1, len(keys), figsize=(3.2 * len(keys), 3.0), pick="pick one with metric=")
        for a, key in zip(axes[0], keys):
            values = [float("nan") if r.get(key) is None else float(r[key]) for r in rows]
            colors = ["tab:gray"] + ["tab:orange"] * (len(rows) - 1)
            a.bar(range(len(rows)), values, color=colors)
            a.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
            a.set_title(_TITLES[key], fontsize=9)
            for i, v in enumerate(values):
                a.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
        if ax is None:
            fig.suptitle("ORACLE correction (uses ground-truth depth)", fontsize=9)
            fig.tight_layout()
        return fig

    def figures(self) -> dict[str, dict[str, Any]]:
        """``correction.png``: every metric."""
        return {"correction.png": {}}

    def summary(self) -> dict[str, Any]:
        """Oracle flag, clean and corrected δ1/RMSE/AbsRel."""
        return {"kind": self.kind, "oracle": True, "note": ORACLE_NOTE,
                "source": self.data.get("dissection_source"),
                "rows": self.rows()}


class CorrectionAnalyzer(Analyzer):
    """Oracle correction of hooked layers from a dissection's average responses.

    Parameters
    ----------
    dissection
        Path to a saved :class:`DissectionResult` (of the *train* split), or
        ``None`` to dissect ``ctx.dataset`` first (warns: same data).
    split
        Which split of the dissection supplies ``R`` (default: ``"train"`` if present).
    response
        ``"signed"`` (default: the mean activation, Eq. 1, which is what a unit
        emits on average) or ``"abs"`` (mean of ``|A|``).
    each_layer
        With several hooked layers, also correct each one alone.
    protocol
        Metric protocol (:mod:`depthsel.metrics` presets, e.g. ``"you2021"``).
    binner, fit_bins_to_units, preset
        Forwarded to the dissection when one is computed here.
    """

    name = "correction"
    description = "ORACLE: replace activations by the unit's mean response at the true depth bin"

    def __init__(self, *, dissection: str | Path | None = None, split: str | None = None,
                 response: str = "signed", each_layer: bool = True, protocol: str = "default",
                 binner: Any = "sid", fit_bins_to_units: bool = True, preset: str = "default") -> None:
        if response not in ("signed", "abs"):
            raise CorrectionConfigError(f"response must be 'signed' or 'abs', got {response!r}")
        super().__init__(dissection=str(dissection) if dissection is not None else None, split=split,
                         response=response, each_layer=each_layer, protocol=protocol,
                         binner=binner if isinstance(binner, (str, dict)) else str(binner),
                         fit_bins_to_units=fit_bins_to_units, preset=preset)
        self.dissection, self.split, self.response = dissection, split, response
        self.each_layer, self.protocol = each_layer, protocol
        self.dissect_cfg = {"binner": binner, "fit_bins_to_units": fit_bins_to_units, "preset": preset}

    def hooks(self, dissection: DissectionResult, layers: list[str],
              state: dict[str, Any]) -> dict[str, TensorFn]:
        """Output-replacing functions per layer; they read the batch ground truth from ``state``."""
        split = self.split or dissection.default_split()
        fns: dict[str, TensorFn] = {}
        for layer in layers:
            r = dissection.responses(layer, split, self.response)
            binner = dissection.binner(layer, split)

            def fn(act: torch.Tensor, r: torch.Tensor = r, binner: Binner = binner) -> torch.Tensor:
                bins = nearest_bins(binner, state["depth"], state.get("valid"), tuple(act.shape[-2:]))
                return correct_activations(act, bins, r)

            fns[layer] = fn
        return fns

    def run(self, ctx: AnalysisContext) -> CorrectionResult:
        """Evaluate clean, then with every layer corrected (and each alone)."""
        dis, source = load_or_dissect(ctx, self.dissection, **self.dissect_cfg)
        layers = list(ctx.layers)
        missing = [layer for layer in layers if layer not in dis.layers]
        if missing:
            raise CorrectionConfigError(
                f"the dissection holds no layer(s) {missing}; dissect them or hook {dis.layers}"
            )
        state: dict[str, Any] = {}

        def on_batch(batch: Any) -> None:
            state["depth"], state["valid"] = batch["depth"], batch.get("valid")

        common = dict(batch_size=ctx.batch_size, device=ctx.device, protocol=self.protocol,
                      progress=ctx.progress, adapters=ctx.adapters, on_batch=on_batch)
        clean = evaluate(ctx.model, ctx.info, ctx.dataset, description="clean", **common)
        fns = self.hooks(dis, layers, state)
        corrected = {"all": evaluate(ctx.model, ctx.info, ctx.dataset, fns=fns,
                                     description="corrected (all layers)", **common)}
        if self.each_layer and len(layers) > 1:
            for layer in layers:
                corrected[layer] = evaluate(ctx.model, ctx.info, ctx.dataset, fns={layer: fns[layer]},
                                            description=f"corrected ({layer})", **common)
        data = {"oracle": True, "note": ORACLE_NOTE, "dissection_source": source,
                "response_split": self.split or dis.default_split(), "layers": layers,
                "clean": clean, "corrected": corrected,
                "change": {c: {k: m[k] - clean[k] for k in _KEYS} for c, m in corrected.items()}}
        return CorrectionResult(data=data, config=self.config(), meta=provenance(None))


def register_analyzers(register: Any) -> None:
    """Register the ``correction`` analyzer."""
    register("correction", CorrectionAnalyzer, description=CorrectionAnalyzer.description)
