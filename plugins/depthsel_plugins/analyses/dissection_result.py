"""The saved result of a dissection: per split and layer, responses and selectivity.

Tensors are stored under ``"{split}/{layer}/{name}"``:

``R_abs``, ``R_signed``
    ``float64 [K, Nb]`` mean of ``|A|`` and of ``A`` per bin (NaN: bin never seen).
``R``
    The response the preset scores: ``R_abs`` (default) or ``|R_signed|`` with
    never-seen bins as 0 (reference).
``counts``
    ``float64 [Nb]`` valid pixels per bin.
``edges``
    ``float64 [Nb + 1]`` bin edges of this layer's binner.
``ds``, ``target_ds``
    ``float64 [K]`` DS with the argmax bin and with the assigned bin.
``argmax_bin``, ``assigned``
    ``int64 [K]``.
``dead``
    ``bool [K]``.
``sample_ds``, ``pvalue``
    ``float64 [K]`` permutation test (only when ``permutations > 0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from depthsel.binning import EdgesBinner
from depthsel.errors import ResultFormatError, suggest
from depthsel.figures import panels
from depthsel.results import Result
from depthsel.selectivity import LayerSummary

from .dissection_gallery import plot_unit_gallery
from .dissection_plots import LayerResponses, draw_response_curve, draw_response_heatmap, plot_feature_maps

__all__ = ["DissectionResult"]


class DissectionResult(Result):
    """Responses, selectivity and permutation p-values per split and layer.

    ``data["splits"][split][layer]`` holds the :class:`~depthsel.LayerSummary`
    fields plus ``num_images``, ``num_pixels``, ``perm_sample_size`` and
    ``permutations``; ``data["preset"]`` the preset. Load with
    :func:`depthsel.results.load_result` or :meth:`DissectionResult.load`.
    """

    kind: ClassVar[str] = "dissection"

    # ------------------------------------------------------------- access
    @property
    def splits(self) -> list[str]:
        """Split names, in the order they were added."""
        # JSON is saved with sorted keys, so the order is kept in its own list.
        order = list(self.data.get("split_order", []))
        return order + [s for s in self.data.get("splits", {}) if s not in order]

    @property
    def layers(self) -> list[str]:
        """Layer names (the same in every split)."""
        return list(self.data.get("layers", []))

    @property
    def preset(self) -> str:
        """``"default"`` or ``"reference"``."""
        return str(self.data.get("preset", "default"))

    def default_split(self) -> str:
        """``"train"`` when present (what correction and ablation want), else the first split."""
        if not self.splits:
            raise ResultFormatError("this dissection result holds no split")
        return "train" if "train" in self.splits else self.splits[0]

    def _check(self, split: str | None, layer: str) -> str:
        split = split or self.default_split()
        if split not in self.splits:
            raise ResultFormatError(f"no split {split!r} in this dissection; {suggest(split, self.splits)}")
        if layer not in self.layers:
            raise ResultFormatError(f"no layer {layer!r} in this dissection; {suggest(layer, self.layers)}")
        return split

    def get(self, layer: str, name: str, split: str | None = None) -> torch.Tensor:
        """Tensor ``name`` (see the module docstring) of ``layer`` in ``split``."""
        split = self._check(split, layer)
        key = f"{split}/{layer}/{name}"
        if key not in self.tensors:
            raise ResultFormatError(
                f"the dissection has no {name!r} for {layer!r}/{split!r}"
                + ("; rerun with permutations > 0" if name in ("pvalue", "sample_ds") else "")
            )
        return self.tensors[key]

    def responses(self, layer: str, split: str | None = None, mode: str = "preset") -> torch.Tensor:
        """``[K, Nb]`` responses: ``"preset"`` (what DS scored), ``"abs"`` or ``"signed"``."""
        name = {"preset": "R", "abs": "R_abs", "signed": "R_signed"}.get(mode)
        if name is None:
            raise ResultFormatError(f"mode must be 'preset', 'abs' or 'signed', got {mode!r}")
        return self.get(layer, name, split)

    def binner(self, layer: str, split: str | None = None) -> EdgesBinner:
        """The layer's binner, rebuilt from its saved edges."""
        name = self.data.get("binners", {}).get(layer, {}).get("name", "edges")
        return EdgesBinner(self.get(layer, "edges", split), name=str(name))

    def summary_for(self, layer: str, split: str | None = None) -> LayerSummary:
        """The :class:`~depthsel.LayerSummary` of ``layer`` in ``split``."""
        split = self._check(split, layer)
        info = self.data["splits"][split][layer]
        fields = LayerSummary.__dataclass_fields__
        return LayerSummary(**{k: v for k, v in info.items() if k in fields})

    # -------------------------------------------------------- combination
    def merge(self, other: "DissectionResult") -> "DissectionResult":
        """Add ``other``'s splits (same layers, preset and edges); returns ``self``."""
        if set(other.layers) != set(self.layers) or other.preset != self.preset:
            raise ResultFormatError(
                "cannot merge dissections with different layers or presets; dissect every split "
                "with the same configuration (see dissect_splits)"
            )
        clash = set(self.splits) & set(other.splits)
        if clash:
            raise ResultFormatError(
                f"both results hold split(s) {sorted(clash)}; give each split a unique name")
        for layer in self.layers:
            mine, theirs = self.get(layer, "edges"), other.get(layer, "edges")
            if mine.shape != theirs.shape or not torch.equal(mine, theirs):
                raise ResultFormatError(f"layer {layer!r} was binned differently in the two results")
        self.tensors.update(other.tensors)
        self.data["splits"].update(other.data["splits"])
        self.data["split_order"] = self.splits + [s for s in other.splits if s not in self.splits]
        self.meta.setdefault("dataset_fingerprints", {}).update(other.meta.get("dataset_fingerprints", {}))
        return self

    # ------------------------------------------------------------- output
    def rows(self) -> list[dict[str, Any]]:
        """One CSV row per split, layer and unit."""
        out: list[dict[str, Any]] = []
        for split in self.splits:
            for layer in self.layers:
                ds, tds = self.get(layer, "ds", split), self.get(layer, "target_ds", split)
                amax, asg = self.get(layer, "argmax_bin", split), self.get(layer, "assigned", split)
                dead = self.get(layer, "dead", split)
                pkey = f"{split}/{layer}/pvalue"
                pv = self.tensors.get(pkey)
                for k in range(ds.numel()):
                    out.append({
                        "split": split, "layer": layer, "unit": k,
                        "assigned_bin": int(asg[k]), "argmax_bin": int(amax[k]),
                        "ds": float(ds[k]), "target_ds": float(tds[k]),
                        "peak_on_target": bool(amax[k] == asg[k]) and not bool(dead[k]),
                        "dead": bool(dead[k]),
                        "pvalue": float(pv[k]) if pv is not None else "",
                    })
        return out

    def summary(self) -> dict[str, Any]:
        """Preset and, per split and layer, the headline numbers with their tests and diagnostics.

        Argmax and target DS, peak-on-target, near-target, dead units; the
        significance test's fractions (raw and Benjamini-Hochberg) and smallest
        attainable p; bootstrap intervals; prediction-binned DS. Keys a run did
        not compute (no permutations, no diagnostics) are absent.
        """
        keys = ("argmax_ds", "target_ds", "peak_on_target", "near_target", "dead_units", "frac_significant",
                "frac_significant_bh", "frac_significant_target", "frac_significant_bh_target", "min_pvalue",
                "warning", "argmax_ds_ci", "target_ds_ci", "peak_on_target_ci", "pred_argmax_ds",
                "pred_target_ds", "pred_peak_on_target", "pred_near_target", "diagnostics_skipped")
        return {
            "kind": self.kind, "preset": self.preset,
            "splits": {s: {layer: {k: v[k] for k in keys if k in v} for layer, v in d.items()}
                       for s, d in self.data.get("splits", {}).items()},
        }

    def layer_view(self, layer: str, split: str | None = None, mode: str = "preset") -> LayerResponses:
        """``layer`` of ``split`` as the figures draw it (responses in ``mode``, see :meth:`responses`)."""
        return LayerResponses(
            layer=layer, responses=self.responses(layer, split, mode), edges=self.get(layer, "edges", split),
            **{name: self.get(layer, name, split)
               for name in ("assigned", "argmax_bin", "dead", "ds", "target_ds")},
        )

    def plot(self, ax: Any = None, *, layer: str | None = None, split: str | None = None,
             unit: int | None = None, mode: str = "preset") -> Any:
        """The units x bins heatmap of ``layer``, or with ``unit`` that unit's response curve.

        ``layer`` defaults to the first layer, ``split`` to :meth:`default_split`.
        Needs only the stored tensors, so it works on a reloaded result.
        """
        view = self.layer_view(layer if layer is not None else self._first_layer(), split, mode)
        fig, axes = panels(ax, figsize=(5, 3) if unit is not None else (5, 4))
        if unit is None:
            draw_response_heatmap(axes[0, 0], view)
        else:
            draw_response_curve(axes[0, 0], view, unit)
        if ax is None:
            fig.tight_layout()
        return fig

    def _first_layer(self) -> str:
        if not self.layers:
            raise ResultFormatError("this dissection result holds no layer")
        return self.layers[0]

    def figures(self, *, split: str | None = None, units: list[int] | None = None) -> dict[str, dict[str, Any]]:
        """A heatmap per layer and the curves of ``units`` (default: 4 units spread over the layer)."""
        split = split or self.default_split()
        out: dict[str, dict[str, Any]] = {}
        for layer in self.layers:
            safe = layer.replace("/", "_")
            out[f"{split}_{safe}_heatmap.png"] = {"layer": layer, "split": split}
            for u in units if units is not None else self._spread_units(layer, split):
                # Zero-padded so files sort in unit order (unit005 before unit010).
                out[f"{split}_{safe}_unit{u:03d}.png"] = {"layer": layer, "split": split, "unit": u}
        return out

    def _spread_units(self, layer: str, split: str) -> list[int]:
        k = int(self.get(layer, "ds", split).numel())
        return sorted({0, k // 3, (2 * k) // 3, k - 1})

    def plot_feature_maps(self, model: Any, info: Any, dataset: Any, out_dir: str | Path, *,
                          split: str | None = None, units: list[int] | None = None,
                          indices: tuple[int, ...] = (0, 1, 2), device: str = "cpu") -> list[Path]:
        """Fig. 5 of You et al. (feature maps beside assigned-bin masks), and the unit gallery.

        Needs the model and data, so it is separate from :meth:`plot`; writes PNGs.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        split = split or self.default_split()
        align = bool(self.config.get("align_corners", False))
        paths: list[Path] = []
        for layer in self.layers:
            view = self.layer_view(layer, split)
            chosen = units if units is not None else self._spread_units(layer, split)
            safe = layer.replace("/", "_")
            paths.append(plot_feature_maps(
                model, info, dataset, layer, chosen, self.binner(layer, split),
                out / f"{split}_{safe}_feature_maps.png", assigned=view.assigned,
                indices=tuple(i for i in indices if i < len(dataset)), device=device, align_corners=align,
            ))
            paths.append(plot_unit_gallery(model, info, dataset, view, out / f"{split}_{safe}_unit_gallery.png",
                                           indices=indices, device=device, align_corners=align))
        return paths
