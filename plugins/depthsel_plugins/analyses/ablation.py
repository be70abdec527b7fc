"""Cumulative unit ablation by selectivity (You et al. 2021, Fig. 2): the ``ablation`` analyzer.

For each hooked layer the units are ordered three ways — most to least
selective, least to most selective, and random (several seeds, averaged) —
and zeroed cumulatively: after ``n`` steps the first ``n`` units of the order
output 0 everywhere. Accuracy (δ1, RMSE, AbsRel) is measured after each step.
If selective units matter more, the "most first" curve falls fastest.

Selectivity is the per-unit DS of a stored dissection (``dissection: path``)
or of one computed here on ``ctx.dataset``. Units whose DS is undefined
(NaN, e.g. dead units) sort as the least selective.

Cost: one evaluation pass per distinct set of ablated units; sets shared by
the orders (the empty set, all units) are evaluated once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.errors import DepthselError
from depthsel.figures import panels
from depthsel.results import Result, provenance

from .interventions import evaluate, load_or_dissect

__all__ = ["AblationAnalyzer", "AblationResult", "ablation_steps", "register_analyzers"]

METRICS = ("delta1", "rmse", "abs_rel")
ORDERS = ("most_selective_first", "least_selective_first", "random")


class AblationConfigError(DepthselError):
    """The ablation configuration is invalid."""


def ablation_steps(num_units: int, max_units: int | None, step: int) -> list[int]:
    """Numbers of ablated units at which accuracy is measured: ``0, step, ...`` and the last."""
    top = num_units if max_units is None else min(int(max_units), num_units)
    steps = list(range(0, top + 1, max(1, int(step))))
    if steps[-1] != top:
        steps.append(top)
    return steps


class AblationResult(Result):
    """Accuracy curves per layer and order.

    Tensors (``float64``): ``"{layer}/steps"`` ``[S]`` (units ablated),
    ``"{layer}/{order}"`` ``[S, 3]`` (``METRICS`` columns; random = mean over seeds),
    ``"{layer}/random_runs"`` ``[seeds, S, 3]``, ``"{layer}/ds"`` ``[K]``, and
    ``int64`` ``"{layer}/order/most_selective_first"`` ``[K]``.
    """

    kind: ClassVar[str] = "ablation"

    def curve(self, layer: str, order: str, metric: str = "delta1") -> tuple[torch.Tensor, torch.Tensor]:
        """``(steps, values)`` of one curve."""
        if order not in ORDERS or metric not in METRICS:
            raise AblationConfigError(f"order must be in {ORDERS} and metric in {METRICS}")
        key = f"{layer}/{order}"
        if key not in self.tensors:
            raise AblationConfigError(f"no ablation of layer {layer!r}; layers: {self.data.get('layers')}")
        return self.tensors[f"{layer}/steps"], self.tensors[key][:, METRICS.index(metric)]

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer, order and step."""
        out = []
        for layer in self.data.get("layers", []):
            steps = self.tensors[f"{layer}/steps"]
            for order in ORDERS:
                vals = self.tensors[f"{layer}/{order}"]
                for i, n in enumerate(steps.tolist()):
                    out.append({"layer": layer, "order": order, "ablated": int(n),
                                **{m: float(vals[i, j]) for j, m in enumerate(METRICS)}})
        return out

    def plot(self, ax: Any = None, *, layer: str | None = None, metric: str | None = None) -> Any:
        """Fig. 2 style: δ1, RMSE and AbsRel against the number of ablated units, three orders.

        One panel per metric, or only ``metric``'s (what ``ax`` can hold);
        ``layer`` defaults to the first ablated layer.
        """
        layers = list(self.data.get("layers", []))
        layer = layer if layer is not None else (layers[0] if layers else "")
        metrics = list(METRICS) if metric is None else [metric]
        fig, axes = panels(ax, 1, len(metrics), figsize=(4 * len(metrics), 3), pick="pick one with metric=")
        runs = self.tensors.get(f"{layer}/random_runs")
        for a, name in zip(axes[0], metrics):
            for order, style in zip(ORDERS, ("-o", "-s", "--")):
                steps, vals = self.curve(layer, order, name)
                a.plot(steps.numpy(), vals.numpy(), style, ms=3, label=order.replace("_", " "))
            if runs is not None and runs.shape[0] > 1:
                j = METRICS.index(name)
                sd = runs[:, :, j].std(0)
                mean = self.tensors[f"{layer}/random"][:, j]
                a.fill_between(steps.numpy(), (mean - sd).numpy(), (mean + sd).numpy(), alpha=0.2)
            a.set_xlabel("units ablated")
            a.set_title(f"{layer}: {name}")
        axes[0, 0].legend(fontsize=7)
        if ax is None:
            fig.tight_layout()
        return fig

    def figures(self) -> dict[str, dict[str, Any]]:
        """One PNG per layer with the three curves for each metric."""
        layers = self.data.get("layers", [])
        return {f"ablation_{layer.replace('/', '_')}.png": {"layer": layer} for layer in layers}


class AblationAnalyzer(Analyzer):
    """Zero units cumulatively in three orders of selectivity and track accuracy.

    Parameters
    ----------
    dissection
        Path to a saved dissection (``None``: dissect ``ctx.dataset`` first).
    split
        Dissection split whose DS orders the units (default ``"train"`` if present).
    selectivity
        ``"ds"`` (argmax bin, as in Fig. 2) or ``"target_ds"``.
    seeds
        Random orders averaged (an int count, or a list of seeds).
    max_units, step
        Ablate up to ``max_units`` units (default all), measuring every ``step`` units.
    protocol
        Metric protocol name.
    binner, fit_bins_to_units, preset
        Forwarded to a dissection computed here.
    """

    name = "ablation"
    description = "zero units cumulatively (most/least selective first, random) and track accuracy"

    def __init__(self, *, dissection: str | Path | None = None, split: str | None = None,
                 selectivity: str = "ds", seeds: int | list[int] = 3, max_units: int | None = None,
                 step: int = 1, protocol: str = "default", binner: Any = "sid",
                 fit_bins_to_units: bool = True, preset: str = "default") -> None:
        if selectivity not in ("ds", "target_ds"):
            raise AblationConfigError(f"selectivity must be 'ds' or 'target_ds', got {selectivity!r}")
        if int(step) < 1:
            raise AblationConfigError(f"step must be >= 1, got {step}")
        seed_list = list(range(int(seeds))) if isinstance(seeds, int) else [int(s) for s in seeds]
        if not seed_list:
            raise AblationConfigError("seeds must give at least one random order (e.g. seeds=3)")
        super().__init__(dissection=str(dissection) if dissection is not None else None, split=split,
                         selectivity=selectivity, seeds=seed_list, max_units=max_units, step=int(step),
                         protocol=protocol, binner=binner if isinstance(binner, (str, dict)) else str(binner),
                         fit_bins_to_units=fit_bins_to_units, preset=preset)
        self.dissection, self.split, self.selectivity = dissection, split, selectivity
        self.seeds, self.max_units, self.step, self.protocol = seed_list, max_units, int(step), protocol
        self.dissect_cfg = {"binner": binner, "fit_bins_to_units": fit_bins_to_units, "preset": preset}

    def orders(self, ds: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Unit orders: most/least selective first (NaN last/first), and one per seed."""
        key = torch.nan_to_num(ds.double(), nan=-float("inf"))
        most = torch.argsort(key, descending=True, stable=True)
        least = torch.argsort(key, descending=False, stable=True)
        rand = [torch.randperm(ds.numel(), generator=torch.Generator().manual_seed(s)) for s in self.seeds]
        return {"most_selective_first": [most], "least_selective_first": [least], "random": rand}

    def run(self, ctx: AnalysisContext) -> AblationResult:
        """Ablate each hooked layer separately and record the curves."""
        dis, source = load_or_dissect(ctx, self.dissection, **self.dissect_cfg)
        split = self.split or dis.default_split()
        res = AblationResult(config=self.config(), meta=provenance(None))
        common = dict(batch_size=ctx.batch_size, device=ctx.device, protocol=self.protocol,
                      progress=ctx.progress, adapters=ctx.adapters)
        clean = evaluate(ctx.model, ctx.info, ctx.dataset, description="clean", **common)
        res.data = {"layers": list(ctx.layers), "metrics": list(METRICS), "orders": list(ORDERS),
                    "clean": clean, "dissection_source": source, "selectivity_split": split}
        for layer in ctx.layers:
            ds = dis.get(layer, self.selectivity, split)
            steps = ablation_steps(ds.numel(), self.max_units, self.step)
            cache: dict[frozenset[int], list[float]] = {}

            def measure(units: frozenset[int], layer: str = layer, k: int = ds.numel()) -> list[float]:
                if units not in cache:
                    keep = torch.ones(k)
                    keep[list(units)] = 0.0

                    def zero(act: torch.Tensor) -> torch.Tensor:
                        return act * keep.to(act).view(1, -1, 1, 1)

                    m = evaluate(ctx.model, ctx.info, ctx.dataset, fns={layer: zero},
                                 description=f"{layer}: {len(units)} ablated", **common)
                    cache[units] = [float(m[name]) for name in METRICS]
                return cache[units]

            for order, perms in self.orders(ds).items():
                curves = torch.tensor([[measure(frozenset(p[:n].tolist())) for n in steps] for p in perms],
                                      dtype=torch.float64)
                res.tensors[f"{layer}/{order}"] = curves.mean(0)
                if order == "random":
                    res.tensors[f"{layer}/random_runs"] = curves
                else:
                    res.tensors[f"{layer}/order/{order}"] = perms[0]
            res.tensors[f"{layer}/steps"] = torch.tensor(steps, dtype=torch.float64)
            res.tensors[f"{layer}/ds"] = ds.double()
            res.data.setdefault("evaluations", {})[layer] = len(cache)
        return res


def register_analyzers(register: Any) -> None:
    """Register the ``ablation`` analyzer."""
    register("ablation", AblationAnalyzer, description=AblationAnalyzer.description)
