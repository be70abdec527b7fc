"""Network dissection for depth (You et al. 2021, Sec. 3): the ``dissection`` analyzer.

For each hooked layer it streams the dataset once
(:func:`depthsel.dissect.collect_responses`) and reports the responses ``R``
(mean of ``|A|`` and signed mean, Eq. 1), per-bin pixel counts, DS with the
argmax bin and with the assigned bin (Eq. 2), peak-on-target, dead units, a
:class:`~depthsel.LayerSummary`, and a permutation p-value per unit (see
:mod:`.dissection_stats` for the sampling approximation).

Presets
-------
``"default"``
    ``R`` = mean of ``|A|``; bins never seen are left out of the other-bins mean.
``"reference"``
    As the published ``dissect.py``: ``R`` = ``|mean of A|`` (signed mean, then
    abs), argmax bin, never-seen bins counted as zeros (inflates DS).

The analyzer dissects one dataset per run and labels it with ``split``. To hold
train and test in one result use :func:`dissect_splits`, or pass ``splits`` =
``{"train": {"name": "folder", ...}, "test": {...}}`` (dataset-plugin configs,
built with :func:`depthsel.get_dataset`; ``ctx.dataset`` is then not used).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from depthsel import get_dataset
from depthsel.api import binner_from_config
from depthsel.accumulator import ResponseAccumulator
from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.binning import Binner
from depthsel.responses import collect_responses
from depthsel.stream import probe_units
from depthsel.errors import BinCountError, DepthselError, ResultFormatError
from depthsel.results import provenance
from depthsel.safeio import read_json_bounded
from safetensors import SafetensorError
from depthsel.selectivity import assign_bins, depth_selectivity, matched_assignment, summarize_layer
from depthsel.modelinfo import ModelInfo

from .dissection_result import DissectionResult
from .dissection_diagnostics import PredictionDiagnostics, bootstrap_layer, near_target_fraction
from .dissection_stats import ImageReservoir, image_permutation_test, significance_summary, test_tensors

__all__ = ["DissectionAnalyzer", "DissectionResult", "DissectionConfigError", "dissect_splits",
           "make_binner", "register_analyzers"]

DISSECTION_PRESETS = ("default", "reference")


class DissectionConfigError(DepthselError):
    """The dissection configuration is invalid."""


def make_binner(spec: str | Mapping[str, Any] | Binner) -> Binner:
    """Build a binner from a registry name, a config dict (``Binner.config()``) or an instance."""
    try:
        return cast(Binner, binner_from_config(spec))
    except BinCountError as exc:
        raise DissectionConfigError(str(exc)) from exc


def _load_assignment(spec: Any, layer: str, r: torch.Tensor, nb: int) -> torch.Tensor:
    k = r.shape[0]
    if spec is None:
        if k < nb:
            # Eq. 6 with K < Nb puts the K units on bins 0..K-1 and leaves the rest of the
            # range unassigned: target DS and peak-on-target would silently mean something else.
            raise BinCountError(
                f"layer {layer!r} has {k} units but the binner has {nb} bins, so the paper's "
                f"assignment would cover only bins 0..{k - 1}; pass fit_bins_to_units=true (the "
                f"paper rule, what `depthsel train` saves), binner.num_bins={k}, or an explicit "
                "assignment"
            )
        return assign_bins(k, nb)
    if spec == "matched":
        return matched_assignment(r, nb)
    if isinstance(spec, Mapping):
        table = spec
    else:
        path = Path(str(spec))
        if not path.is_file():
            raise DissectionConfigError(
                f"assignment file {str(path)!r} does not exist; pass a JSON {{layer: [bins]}} or "
                "safetensors file, 'matched', or None for the paper rule"
            )
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                table = load_file(str(path))
            else:
                table = read_json_bounded(path)
        except (SafetensorError, OSError, ValueError, ResultFormatError) as exc:
            raise DissectionConfigError(
                f"assignment file {str(path)!r} is not a readable JSON or safetensors table ({exc}); "
                "write {layer: [bins]} as JSON or safetensors") from None
        if not isinstance(table, Mapping):
            raise DissectionConfigError(f"assignment file {str(path)!r} must hold a {{layer: [bins]}} object")
    if layer not in table:
        raise DissectionConfigError(f"the assignment lists no layer {layer!r}; add it or use assignment=None")
    out = torch.as_tensor(table[layer], dtype=torch.long).flatten()
    if out.shape != (k,) or bool(((out < 0) | (out >= nb)).any()):
        raise BinCountError(f"assignment of {layer!r} must hold {k} bins in [0, {nb}); fix the file")
    return out


class DissectionAnalyzer(Analyzer):
    """Dissect hooked layers: responses, DS, target DS, dead units, p-values.

    Parameters
    ----------
    binner
        Registry name, config dict or :class:`~depthsel.Binner` (default ``"sid"``:
        NYU preset, 64 bins).
    preset
        ``"default"`` or ``"reference"`` (see the module docstring).
    permutations
        Random re-pairings of images with depth maps in the permutation test
        (0 disables it). The default 999 puts the smallest p-value at 0.001.
    permutation_images
        Most images the test (and the bootstrap intervals) sample, uniformly
        over the split; the whole split when it is smaller.
    diagnostics
        Also bin responses by the model's predicted depth (prediction DS) and
        measure the depth error per bin (see :mod:`.dissection_diagnostics`).
    assignment
        ``None`` (paper rule, Eq. 6), ``"matched"`` (Hungarian matching of the
        paper's bin slots to each unit's profile), a ``{layer: [bins]}`` dict,
        or a path to such a JSON/safetensors file.
    fit_bins_to_units
        Use ``K`` bins for a layer with ``K < Nb`` units, as the paper does and as
        ``depthsel train`` saves (default). ``False`` with ``K < Nb`` and the paper
        assignment is an error, since units would cover only bins ``0..K-1``.
    split
        Label of ``ctx.dataset`` in the result.
    splits
        Optional ``{split: dataset config}``; dissects each instead of ``ctx.dataset``.
    align_corners, max_batches, checkpoint
        Passed to :func:`~depthsel.dissect.collect_responses` (the checkpoint
        stem gets ``.{split}`` appended). The checkpoint also holds the
        permutation sample and the diagnostics, so a resume changes nothing.
    """

    name = "dissection"
    description = "per-unit depth responses, DS, target DS, dead units and permutation p-values"

    def __init__(self, *, binner: str | Mapping[str, Any] | Binner = "sid", preset: str = "default",
                 permutations: int = 999, permutation_images: int = 128, diagnostics: bool = True,
                 assignment: str | Mapping[str, Any] | None = None, fit_bins_to_units: bool = True,
                 split: str = "test", splits: Mapping[str, Mapping[str, Any]] | None = None,
                 align_corners: bool = False, max_batches: int | None = None,
                 checkpoint: str | None = None) -> None:
        if preset not in DISSECTION_PRESETS:
            raise DissectionConfigError(f"preset must be one of {DISSECTION_PRESETS}, got {preset!r}")
        if int(permutations) < 0:
            raise DissectionConfigError(
                f"permutations must be >= 0 (0 disables the test), got {permutations}")
        self.binner = make_binner(binner)
        super().__init__(binner=self.binner.config(), preset=preset, permutations=int(permutations),
                         permutation_images=int(permutation_images), diagnostics=bool(diagnostics),
                         assignment=assignment if not isinstance(assignment, Mapping) else "inline",
                         fit_bins_to_units=bool(fit_bins_to_units), split=split,
                         splits=dict(splits) if splits else None, align_corners=bool(align_corners),
                         max_batches=max_batches, checkpoint=checkpoint)
        self.preset, self.permutations = preset, int(permutations)
        self.permutation_images, self.assignment = int(permutation_images), assignment
        self.diagnostics = bool(diagnostics)
        self.fit_bins_to_units, self.split, self.splits = bool(fit_bins_to_units), split, splits
        self.align_corners, self.max_batches, self.checkpoint = align_corners, max_batches, checkpoint

    # ------------------------------------------------------------------ run
    def run(self, ctx: AnalysisContext) -> DissectionResult:
        """Dissect ``ctx.dataset`` (or every configured split) and return one result."""
        if self.splits:
            datasets = {name: get_dataset(**dict(spec)) for name, spec in self.splits.items()}
        else:
            datasets = {self.split: ctx.dataset}
        result: DissectionResult | None = None
        for name, ds in datasets.items():
            part = self.dissect_split(ctx, ds, name)
            result = part if result is None else result.merge(part)
        assert result is not None
        return result

    def layer_binners(self, units: Mapping[str, int]) -> dict[str, Binner]:
        """The binner of each layer (``K`` bins where ``fit_bins_to_units`` and ``K < Nb``)."""
        return {name: self.binner.for_units(k) if self.fit_bins_to_units else self.binner
                for name, k in units.items()}

    def dissect_split(self, ctx: AnalysisContext, dataset: Dataset[Any], split: str) -> DissectionResult:
        """Dissect one dataset and label it ``split``."""
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DissectionConfigError(f"split {split!r} is empty; give it at least one sample")
        units = probe_units(ctx.model, dataset, ctx.layers, info=ctx.info, adapters=ctx.adapters or None,
                            device=ctx.device)
        binners = self.layer_binners(units)
        signed = self.preset == "reference"
        reservoirs = ({n: ImageReservoir(self.permutation_images, signed=signed, layer=n, binner=binners[n],
                                         seed=ctx.seed) for n in units}
                      if self.permutations > 0 else {})
        diags = ({n: PredictionDiagnostics(binners[n], self.align_corners, layer=n) for n in units}
                 if self.diagnostics else {})
        extra = {**{f"reservoir.{n}": r for n, r in reservoirs.items()},
                 **{f"diagnostics.{n}": d for n, d in diags.items()}}
        coll = collect_responses(
            ctx.model, dataset, list(units), binners, info=ctx.info, batch_size=ctx.batch_size,
            device=ctx.device, align_corners=self.align_corners, adapters=dict(ctx.adapters) or None,
            # One checkpoint per split: each has its own dataset fingerprint.
            checkpoint=f"{self.checkpoint}.{split}" if self.checkpoint else None,
            num_workers=ctx.num_workers, progress=ctx.progress,
            max_batches=self.max_batches, extra_consumers=extra,
        )
        res = DissectionResult(config=self.config(), meta={**provenance(coll.fingerprint),
                                                           "dataset_fingerprints": {split: coll.fingerprint}})
        res.data = {"preset": self.preset, "layers": list(units), "splits": {split: {}},
                    "split_order": [split],
                    "binners": {n: b.config() for n, b in binners.items()}}
        for name, acc in coll.accumulators.items():
            tensors, summary = self._layer_stats(name, acc, binners[name], reservoirs.get(name), ctx.seed)
            if name in diags and diags[name].unusable_output is None:
                t2, s2 = self._diagnostic_stats(diags[name], tensors["assigned"])
                tensors.update(t2)
                summary.update(s2)
            elif name in diags:
                summary["diagnostics_skipped"] = diags[name].unusable_output
            res.tensors.update({f"{split}/{name}/{k}": v for k, v in tensors.items()})
            summary.update(num_images=acc.num_images, num_pixels=float(acc.counts.sum()),
                           resumed_from=coll.resumed_from)
            res.data["splits"][split][name] = summary
        return res

    def _diagnostic_stats(self, diag: PredictionDiagnostics,
                          assigned: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Prediction-binned DS and the per-bin depth error of one layer."""
        ref = self.preset == "reference"
        absent = "zero" if ref else "exclude"
        acc = diag.acc
        r = acc.responses("signed").abs() if ref else acc.responses("abs")
        dead = acc.dead_units()
        ds_pred = depth_selectivity(r, absent=absent)
        tds_pred = depth_selectivity(r, assigned, absent=absent)
        summ = summarize_layer("pred", r, assigned, absent=absent, dead=dead).to_dict()
        per_bin = diag.per_bin()
        return ({"pred_R": r, "pred_ds": ds_pred, "pred_target_ds": tds_pred, "pred_counts": acc.counts},
                {"pred_argmax_ds": _first(summ, "argmax_ds", "mean_ds"),
                 "pred_target_ds": _first(summ, "target_ds", "mean_target_ds"),
                 "pred_peak_on_target": summ["peak_on_target"],
                 "pred_near_target": near_target_fraction(r, assigned, dead), "per_bin_error": per_bin})

    def _layer_stats(self, name: str, acc: ResponseAccumulator, binner: Binner, reservoir: ImageReservoir | None,
                     seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        r_abs, r_signed = acc.responses("abs").cpu(), acc.responses("signed").cpu()
        ref = self.preset == "reference"
        absent = "zero" if ref else "exclude"
        # Reference: |signed mean|; NaN marks unseen bins so `absent` can count them as zeros.
        r_scored = r_signed.abs() if ref else r_abs
        nb = binner.num_bins
        assigned = _load_assignment(self.assignment, name, r_abs, nb)
        dead = acc.dead_units().cpu()
        ds = depth_selectivity(r_scored, absent=absent)
        tds = depth_selectivity(r_scored, assigned, absent=absent)
        masked = torch.where(torch.isnan(r_scored), torch.full_like(r_scored, -1.0), r_scored)
        summ = summarize_layer(name, r_scored, assigned, absent=absent, dead=dead).to_dict()
        tensors = {
            "R_abs": r_abs, "R_signed": r_signed, "counts": acc.counts.cpu(),
            # The reference code's R has zeros where a bin was never seen.
            "R": torch.nan_to_num(r_scored, nan=0.0) if ref else r_scored,
            "edges": binner.edges.to(torch.float64).cpu(), "ds": ds, "target_ds": tds,
            "argmax_bin": masked.argmax(1), "assigned": assigned, "dead": dead,
        }
        summ["near_target"] = near_target_fraction(r_scored, assigned, dead)
        summ.update(permutations=self.permutations, perm_images=0)
        if reservoir is not None and len(reservoir):
            test = image_permutation_test(reservoir, nb, assigned, permutations=self.permutations,
                                          align_corners=self.align_corners, absent=absent, seed=seed)
            per_unit = test_tensors(test)
            tensors.update(per_unit)
            summ.update(significance_summary(test, per_unit))
            summ.update(bootstrap_layer(test.per_image_sums, test.per_image_counts, assigned,
                                        signed=ref, absent=absent, seed=seed))
        return tensors, summ


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present in ``d`` (summary names changed between versions)."""
    for k in keys:
        if k in d:
            return d[k]
    return None


def dissect_splits(
    model: nn.Module,
    info: ModelInfo,
    datasets: Mapping[str, Dataset[Any]],
    *,
    layers: list[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    seed: int = 0,
    progress: bool | None = None,
    **config: Any,
) -> DissectionResult:
    """Dissect several datasets (e.g. ``{"train": ds1, "test": ds2}``) into one result.

    Every split uses the same configuration (``config`` = :class:`DissectionAnalyzer`
    keyword arguments) and per-layer binners.
    """
    if not datasets:
        raise ResultFormatError("datasets is empty; pass e.g. {'train': train_ds, 'test': test_ds}")
    analyzer = DissectionAnalyzer(**config)
    result: DissectionResult | None = None
    for split, ds in datasets.items():
        ctx = AnalysisContext(model=model, dataset=ds, info=info, layers=list(layers or []),
                              device=device, batch_size=batch_size, seed=seed, progress=progress)
        part = analyzer.dissect_split(ctx, ds, split)
        result = part if result is None else result.merge(part)
    assert result is not None
    return result


def register_analyzers(register: Any) -> None:
    """Register the ``dissection`` analyzer."""
    register("dissection", DissectionAnalyzer, description=DissectionAnalyzer.description)
