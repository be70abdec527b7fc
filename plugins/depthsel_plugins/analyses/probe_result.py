"""The ``probe`` result and the "depth decodability by layer" figure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from depthsel.errors import DepthselError
from depthsel.figures import panels
from depthsel.results import Result, load_result

from .figures import save_figure

__all__ = ["ProbeResult", "draw_probe_curves", "plot_probe_curves", "CURVE_METRICS"]

#: Metrics drawn by :func:`plot_probe_curves`, with their axis labels.
CURVE_METRICS: dict[str, str] = {"r2": "held-out R²", "rmse": "held-out RMSE (m)", "delta1": "held-out δ1"}


class ProbeResult(Result):
    """Per-layer linear depth probes: held-out accuracy and per-depth-bin error.

    ``data["layers"]`` lists the probed layers in order; ``data["metrics"][layer]``
    holds ``rmse``, ``delta1``, ``abs_rel``, ``r2`` (held-out), ``units``,
    ``train_pixels`` and ``test_pixels``; ``data["constant"]`` scores the
    constant predictor (the training mean), the floor every probe should beat.
    Tensors: ``"{layer}/weight"`` ``[K]`` and ``"{layer}/bias"`` (the probe),
    ``"{layer}/bin_rmse"``, ``"{layer}/bin_mae"`` and ``"bin_counts"`` ``[Nb]``
    over the ground-truth bins of ``data["binner"]`` (``"edges"`` ``[Nb + 1]``).
    ``data["compare"]``, when set, holds another run's curves for the figure.
    """

    kind: ClassVar[str] = "probe"

    @property
    def label(self) -> str:
        """The name this run goes by in comparison figures."""
        return str(self.data.get("label") or "model")

    def curve(self, metric: str = "r2") -> list[float]:
        """One metric over the layers, in layer order."""
        if metric not in ("rmse", "delta1", "abs_rel", "r2"):
            raise DepthselError(f"metric must be rmse, delta1, abs_rel or r2, got {metric!r}")
        return [float(self.data["metrics"][n][metric]) for n in self.data.get("layers", [])]

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer (plus the constant predictor)."""
        out = [{"layer": n, **self.data["metrics"][n]} for n in self.data.get("layers", [])]
        if "constant" in self.data:
            out.append({"layer": "(constant)", **self.data["constant"]})
        return out

    def bin_rows(self, layer: str) -> list[dict[str, Any]]:
        """Per-depth-bin error of one layer's probe: bin range, pixel count, RMSE, MAE."""
        edges = self.tensors["edges"].tolist()
        counts = self.tensors["bin_counts"].tolist()
        rmse, mae = self.tensors[f"{layer}/bin_rmse"].tolist(), self.tensors[f"{layer}/bin_mae"].tolist()
        return [{"bin": i, "low": edges[i], "high": edges[i + 1], "pixels": counts[i],
                 "rmse": rmse[i], "mae": mae[i]} for i in range(len(counts))]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "label": self.label}
        for n in self.data.get("layers", []):
            m = self.data["metrics"][n]
            out[n] = f"R2 {m['r2']:.3f}  RMSE {m['rmse']:.3f}  d1 {m['delta1']:.3f}"
        if "constant" in self.data:
            c = self.data["constant"]
            out["(constant)"] = f"R2 {c['r2']:.3f}  RMSE {c['rmse']:.3f}  d1 {c['delta1']:.3f}"
        return out

    def plot(self, ax: Any = None, *, metric: str | None = None) -> Any:
        """Decodability by layer: this run's curve, beside the compared run's if one is stored.

        One panel per metric of :data:`CURVE_METRICS`, or only ``metric``'s.
        """
        runs: list[ProbeResult | Mapping[str, Any]] = [self]
        if self.data.get("compare"):
            runs.append(self.data["compare"])
        return draw_probe_curves(runs, tuple(CURVE_METRICS) if metric is None else (metric,), ax=ax)

    def figures(self) -> dict[str, dict[str, Any]]:
        """``probe_by_layer.png``: every metric."""
        return {"probe_by_layer.png": {}}

    def curves(self) -> dict[str, Any]:
        """What :func:`plot_probe_curves` needs, as plain JSON (stored in a compared run)."""
        return {"label": self.label, "layers": list(self.data.get("layers", [])),
                "metrics": {n: dict(self.data["metrics"][n]) for n in self.data.get("layers", [])},
                "constant": dict(self.data.get("constant", {}))}


def _as_curves(run: "ProbeResult | Mapping[str, Any] | str | Path") -> dict[str, Any]:
    if isinstance(run, (str, Path)):
        run = load_result(run, types={ProbeResult.kind: ProbeResult})
    if isinstance(run, ProbeResult):
        return run.curves()
    if isinstance(run, Mapping) and "layers" in run and "metrics" in run:
        return dict(run)
    raise DepthselError(f"expected a probe result (or its directory), got {type(run).__name__}")


def plot_probe_curves(runs: Sequence["ProbeResult | Mapping[str, Any] | str | Path"],
                      out_path: str | Path, metrics: Sequence[str] = tuple(CURVE_METRICS)) -> Path:
    """"Depth decodability by layer" of several runs, written to the PNG ``out_path``.

    Parameters
    ----------
    runs
        Probe results (or saved result directories), e.g. baseline and
        interpretable model; each is labelled with its ``label``.
    out_path
        PNG to write.
    metrics
        Any of ``r2``, ``rmse``, ``delta1``.
    """
    return save_figure(draw_probe_curves(runs, metrics), out_path)


def draw_probe_curves(runs: Sequence["ProbeResult | Mapping[str, Any] | str | Path"],
                      metrics: Sequence[str] = tuple(CURVE_METRICS), *, ax: Any = None) -> Any:
    """One panel per metric, one line per run (see :func:`plot_probe_curves`); returns the figure."""
    unknown = [m for m in metrics if m not in CURVE_METRICS]
    if unknown:
        raise DepthselError(f"probe curves draw {sorted(CURVE_METRICS)}, not {unknown}")
    curves = [_as_curves(r) for r in runs]
    fig, axes = panels(ax, 1, len(metrics), figsize=(4.2 * len(metrics), 3.4), pick="pick one with metric=")
    for a, metric in zip(axes[0], metrics):
        for i, c in enumerate(curves):
            ys = [float(c["metrics"][n][metric]) for n in c["layers"]]
            line, = a.plot(range(len(ys)), ys, "-o", ms=4, label=c["label"])
            const = c.get("constant", {}).get(metric)
            if const is not None and math.isfinite(float(const)):
                a.axhline(float(const), ls=":", lw=1, color=line.get_color(),
                          label=f"{c['label']}: constant" if i == 0 else None)
        names = max((c["layers"] for c in curves), key=len)
        a.set_xticks(range(len(names)))
        a.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
        a.set_ylabel(CURVE_METRICS[metric])
        a.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    if ax is None:
        fig.suptitle("depth decodability by layer (linear ridge probe)", fontsize=10)
        fig.tight_layout()
    return fig
