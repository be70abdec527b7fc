"""The training-loop wrapper: depth selectivity as one extra loss term.

::

    reg = depthsel.SelectivityRegularizer(model, layers=["decode_conv5"],
                                          binner=binner, objective="assign", weight=0.1)
    with reg.attach():                  # hooks on; removed on exit, even on error
        pred = model(x)
        loss = criterion(pred, depth) + reg.loss(depth)

The architecture is untouched: forward hooks capture the hooked layers'
outputs with their graph, and :meth:`SelectivityRegularizer.loss` turns them
into ``-weight * mean DS`` using the exact adjoint alignment, in float32 (or
float64) even under autocast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .api import binner_from_config
from .alignment import METHODS, bin_counts, binned_sums
from .binned import BinnedDepth
from .binning import Binner
from .capture import Adapter, Capture
from .errors import BinCountError, CaptureError, ConfigError, InvalidDepthError, ShapeMismatchError
from .layers import LayerSelector, LayerSpec
from .objectives import BatchStats, ObjectiveOutput, SelectivityObjective, batch_selectivity
from .selectivity import assign_bins

__all__ = ["SelectivityRegularizer", "REGULARIZER_PRESETS", "POOLINGS"]

#: How the objective pools per-bin responses: over the batch (the paper's) or per image.
POOLINGS = ("batch", "image")

#: Named bundles of options. ``reference`` reproduces the published training code.
REGULARIZER_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"absent": "exclude", "layer_reduction": "mean"},
    "reference": {"absent": "zero", "layer_reduction": "sum"},
}


def _resolve_objective(objective: str | SelectivityObjective, absent: str,
                       options: Mapping[str, Any] | None = None) -> SelectivityObjective:
    if isinstance(objective, SelectivityObjective):
        return objective
    from .api import get_objective

    return get_objective(objective, absent=absent, **dict(options or {}))


class SelectivityRegularizer:
    """Adds a depth-selectivity term to any training loop.

    Parameters
    ----------
    model
        The depth network (plain, DDP-wrapped or compiled).
    layers
        Layer specification (names, globs, types, predicates).
    binner
        A :class:`~depthsel.Binner`, a registry name, or ``{layer: binner}``.
    objective
        ``"assign"`` (Eq. 5, default), ``"regularize"`` (Eq. 4), or an instance.
    weight
        ``lambda``; the loss is ``-weight * score``. Mutable, for schedules.
    assignment
        ``None``/``"paper"`` for Eq. 6, or ``{layer: int64 [K]}`` (e.g. from
        :func:`~depthsel.matched_assignment`).
    fit_bins_to_units
        When a layer has fewer units than bins, rebuild its binner with
        ``K`` bins (the paper's rule) instead of raising.
    layer_reduction
        ``"mean"`` over layers (default) or ``"sum"`` (reference code).
    absent
        Never-seen bins policy (see :class:`~depthsel.SelectivityObjective`).
    preset
        ``"reference"`` sets ``absent="zero"`` and ``layer_reduction="sum"``.
    align_corners, method
        Alignment convention and path (``"adjoint"`` or ``"upsample"``).
    stats_dtype
        Dtype of the statistics (float32 or float64), independent of autocast.
    sync_stats
        Under ``torch.distributed``, all-reduce per-bin sums and counts through
        autograd so DS is taken over the global batch.
    adapters
        ``{layer: callable}`` reshaping non-spatial outputs to ``[B, K, h, w]``.
    objective_options
        Extra options of a named objective, e.g. ``{"liveness": 1.0}``.
    pooling
        ``"batch"`` (default, the paper's): per-bin responses are pooled over
        every image of the batch and the objective scores them once.
        ``"image"``: the objective scores each image's own per-bin responses
        and the layer's score is the mean over images with valid pixels, so a
        unit must prefer its bin within every image rather than only across
        the batch's mix of depths. Under ``sync_stats`` the per-image scores
        are not all-reduced (they need no global statistics): each rank averages
        over its own scored images, so DDP's gradient average equals the mean over
        the global batch only when every rank scores equally many images.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec,
        binner: Binner | str | Mapping[str, Any],
        objective: str | SelectivityObjective = "assign",
        weight: float = 0.1,
        *,
        assignment: str | Mapping[str, torch.Tensor] | None = None,
        fit_bins_to_units: bool = False,
        layer_reduction: str | None = None,
        absent: str | None = None,
        preset: str = "default",
        align_corners: bool = False,
        method: str = "adjoint",
        stats_dtype: torch.dtype = torch.float32,
        sync_stats: bool = False,
        adapters: Mapping[str, Adapter] | None = None,
        objective_options: Mapping[str, Any] | None = None,
        pooling: str = "batch",
    ) -> None:
        if preset not in REGULARIZER_PRESETS:
            raise ConfigError(f"preset must be one of {sorted(REGULARIZER_PRESETS)}, got {preset!r}")
        opts = dict(REGULARIZER_PRESETS[preset])
        if absent is not None:
            opts["absent"] = absent
        if layer_reduction is not None:
            opts["layer_reduction"] = layer_reduction
        if opts["layer_reduction"] not in ("mean", "sum"):
            raise ConfigError("layer_reduction must be 'mean' or 'sum'")
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if stats_dtype not in (torch.float32, torch.float64):
            raise ConfigError("stats_dtype must be torch.float32 or torch.float64")
        self.model = model
        self.modules = LayerSelector(layers).resolve(model)
        self.layers = list(self.modules)
        if isinstance(binner, Mapping) and "name" not in binner:
            missing = set(self.layers) - set(binner)
            if missing:
                raise BinCountError(f"no binner given for layers {sorted(missing)}")
            self._binners = {n: binner_from_config(binner[n]) for n in self.layers}
        else:
            shared = binner_from_config(binner)  # type: ignore[arg-type]
            self._binners = {n: shared for n in self.layers}
        self.objective = _resolve_objective(objective, opts["absent"], objective_options)
        self.weight = float(weight)
        self.layer_reduction = opts["layer_reduction"]
        self.preset = preset
        self.fit_bins_to_units = fit_bins_to_units
        self.align_corners = align_corners
        self.method = method
        self.stats_dtype = stats_dtype
        self.sync_stats = sync_stats
        self.pooling = pooling
        self.adapters = dict(adapters or {})
        self._assigned: dict[str, torch.Tensor] = {}
        if isinstance(assignment, Mapping):
            for name, value in assignment.items():
                self.set_assignment(name, value)
        elif assignment not in (None, "paper"):
            raise ConfigError("assignment must be None, 'paper', or {layer: tensor}")
        self._capture: Capture | None = None
        self._last: dict[str, dict[str, float]] = {}
        self.skipped_batches = 0

    # ------------------------------------------------------------ assignment
    def binner_for(self, layer: str) -> Binner:
        """The binner used for ``layer`` (after any rebinning to its unit count)."""
        return self._binners[layer]

    def set_assignment(self, layer: str, assigned: torch.Tensor) -> None:
        """Fix the bins of ``layer``'s units (broadcast from rank 0 under torch.distributed)."""
        if layer not in self.modules:
            raise BinCountError(f"{layer!r} is not a hooked layer ({self.layers})")
        t = torch.as_tensor(assigned, dtype=torch.long).flatten().cpu()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Every rank must optimise the same assignment.
            dist.broadcast(t, src=0)
        self._assigned[layer] = t

    def assignment(self, layer: str, num_units: int) -> torch.Tensor:
        """Assigned bins of ``layer`` (Eq. 6 unless set explicitly)."""
        binner = self._binners[layer]
        if num_units < binner.num_bins and not self.fit_bins_to_units:
            raise BinCountError(
                f"layer {layer!r} has {num_units} units but the binner has {binner.num_bins} "
                f"bins; under the paper rule N_b = K, so pass a binner with num_bins={num_units} "
                "for this layer, or fit_bins_to_units=True"
            )
        self._binners[layer] = binner = binner.for_units(num_units)
        if layer not in self._assigned:
            self._assigned[layer] = assign_bins(num_units, binner.num_bins)
        a = self._assigned[layer]
        if a.numel() != num_units or int(a.max()) >= binner.num_bins or int(a.min()) < 0:
            raise BinCountError(
                f"assignment of {layer!r} has {a.numel()} entries in [{int(a.min())}, {int(a.max())}] "
                f"but the layer has {num_units} units and {binner.num_bins} bins"
            )
        return a

    # --------------------------------------------------------------- hooks
    @contextmanager
    def attach(self) -> Iterator["SelectivityRegularizer"]:
        """Register the capture hooks for the duration of the block; always removed."""
        if self._capture is not None and self._capture.active:
            raise CaptureError("the regularizer is already attached; do not nest attach()")
        self._capture = Capture(self.model, self.modules, detach=False, adapters=self.adapters)
        try:
            with self._capture:
                yield self
        finally:
            if self._capture is not None:
                self._capture.clear()

    @property
    def attached(self) -> bool:
        """Whether hooks are registered now."""
        return self._capture is not None and self._capture.active

    # ---------------------------------------------------------------- loss
    def loss(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Return ``-weight * score`` for the activations of the last forward pass.

        Parameters
        ----------
        depth
            Ground truth ``[B, H, W]`` or ``[B, 1, H, W]`` in metres for the batch
            the model just ran on.
        valid
            Optional validity mask of the same shape.
        """
        if self._capture is None or not self._capture.outputs:
            raise CaptureError(
                "no activations were captured: call reg.loss(depth) after model(x), inside "
                "`with reg.attach():`"
            )
        if not isinstance(depth, torch.Tensor) or depth.ndim not in (3, 4):
            raise InvalidDepthError(
                f"depth must be a [B, H, W] or [B, 1, H, W] tensor, got "
                f"{tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__}; "
                "add a batch dimension with depth.unsqueeze(0)"
            )
        outputs = self._capture.outputs
        self._capture.clear()
        missing = [n for n in self.layers if n not in outputs]
        if missing:
            raise CaptureError(f"layers {missing} did not run in the last forward pass")
        scores: list[torch.Tensor] = []
        stats_log: dict[str, dict[str, float]] = {}
        # Each binner bins this batch once, and each (binner, feature size) gets one
        # set of weight maps, shared by every layer that needs it.
        binned = BinnedDepth(depth, valid, align_corners=self.align_corners)
        first = next(iter(outputs.values()))
        with torch.autocast(device_type=first.device.type, enabled=False):
            for name in self.layers:
                score, stats = self._layer_score(name, outputs[name], binned, depth.shape[0])
                stats_log[name] = stats
                if score is not None:
                    scores.append(score)
        if not scores:
            # No valid pixel anywhere: a zero that stays in the autograd graph, so that
            # reg.loss(depth).backward() works on its own (and DDP sees every rank's graph).
            total = torch.nan_to_num(first.reshape(-1)[:1].to(self.stats_dtype)).sum() * 0
        else:
            stacked = torch.stack(scores)
            total = stacked.sum() if self.layer_reduction == "sum" else stacked.mean()
        loss = -self.weight * total
        stats_log["_total"] = {"score": float(total.detach()), "loss": float(loss.detach())}
        self._last = stats_log
        return loss

    def _layer_score(self, name: str, act: torch.Tensor, binned: BinnedDepth,
                     batch: int) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The objective's score of one layer on this batch (``None`` without valid pixels)."""
        if act.shape[0] != batch:
            raise ShapeMismatchError(
                f"layer {name!r} saw a batch of {act.shape[0]} but depth has {batch}; "
                "pass the depth of the batch the model just ran on"
            )
        assigned = self.assignment(name, act.shape[1]).to(act.device)
        binner = self._binners[name]
        nb = binner.num_bins
        bins = binned.bins(binner, act.device)
        act = act.to(self.stats_dtype)
        w = None
        if self.method == "adjoint":
            w = binned.weights(binner, (act.shape[2], act.shape[3]), self.stats_dtype, act.device)
        per_image = binned_sums(act, bins, nb, use_abs=self.objective.uses_abs,
                                align_corners=self.align_corners, method=self.method, weights=w)
        per_image_counts = bin_counts(bins, nb)
        sums, counts = self._maybe_sync(per_image.sum(0), per_image_counts.sum(0))
        if int(counts.sum()) == 0:
            self.skipped_batches += 1
            nan = float("nan")
            return None, {"score": nan, "target_ds": nan, "argmax_ds": nan,
                          "peak_on_target": nan, "units_counted": 0.0}
        batch_stats = BatchStats(sums, counts, assigned)
        if self.pooling == "image":
            out = self._image_pooled_score(per_image, per_image_counts, assigned)
        else:
            out = self.objective.layer_score(batch_stats)
        # The logged DS and peak are the batch-pooled ones under either pooling: the
        # numbers a dissection reports, comparable across runs.
        return out.score, {**out.stats(), **batch_selectivity(batch_stats, self.objective.absent)}

    def _image_pooled_score(self, sums: torch.Tensor, counts: torch.Tensor,
                            assigned: torch.Tensor) -> ObjectiveOutput:
        """Mean of the objective's score of each image with valid pixels (``pooling="image"``).

        One call of the objective per image keeps any objective (a third party's
        too) usable unchanged; batches are small, so the loop costs little next
        to the forward pass.
        """
        outs = [self.objective.layer_score(BatchStats(sums[i], counts[i], assigned))
                for i in range(sums.shape[0]) if bool((counts[i] > 0).any())]
        # An image whose depth falls in one bin defines no unit's DS. Without a liveness term
        # it scores 0 with no gradient and leaves the mean instead of diluting it; a non-zero
        # score (the liveness hinge, which needs only the assigned bin) keeps it in the mean.
        scored = [o for o in outs if bool(o.defined.any()) or bool(o.score.detach() != 0)]
        if not scored:
            # No image of this rank defines a unit (under sync_stats another rank's may): a zero
            # that stays in the graph, so backward() and DDP's gradient hooks still run.
            zero = torch.nan_to_num(sums).sum() * 0
            return ObjectiveOutput(score=zero, ds=torch.zeros(sums.shape[1], dtype=sums.dtype, device=sums.device),
                                   defined=torch.zeros(sums.shape[1], dtype=torch.bool, device=sums.device))
        score = torch.stack([o.score for o in scored]).mean()
        # ds/defined: those of the images' mean, over units defined in at least one image.
        each_defined = torch.stack([o.defined for o in outs])
        ds_sum = torch.stack([torch.where(o.defined, o.ds, torch.zeros_like(o.ds)) for o in outs]).sum(0)
        n_def = each_defined.sum(0).clamp(min=1).to(ds_sum.dtype)
        return ObjectiveOutput(score=score, ds=ds_sum / n_def, defined=each_defined.any(0))

    def _maybe_sync(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.sync_stats:
            return sums, counts
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return sums, counts
        from torch.distributed.nn.functional import all_reduce

        # Autograd-aware all_reduce: gradients flow back to every rank's activations.
        sums = all_reduce(sums, op=dist.ReduceOp.SUM)
        counts = counts.clone()
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return sums, counts

    def last_stats(self) -> dict[str, dict[str, float]]:
        """Per-layer numbers of the last :meth:`loss`, and ``"_total"``.

        Each layer has ``score`` (what the objective maximised), ``target_ds``
        (mean DS at the assigned bins), ``argmax_ds`` (mean DS at each unit's
        argmax bin), ``peak_on_target`` and ``units_counted``: the names a
        dissection's layer summary uses. They are statistics of *this batch*;
        under gradient accumulation each call of :meth:`loss` sees one
        micro-batch, so they (and the DS the loss is built on) are per
        micro-batch, not pooled over the accumulated batch.
        """
        return {k: dict(v) for k, v in self._last.items()}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration (for run directories)."""
        return {
            "layers": self.layers,
            "binners": {n: b.config() for n, b in self._binners.items()},
            "objective": self.objective.config(),
            "weight": self.weight,
            "layer_reduction": self.layer_reduction,
            "preset": self.preset,
            "align_corners": self.align_corners,
            "method": self.method,
            "stats_dtype": str(self.stats_dtype).replace("torch.", ""),
            "sync_stats": self.sync_stats,
            "pooling": self.pooling,
            "assignment": {n: a.tolist() for n, a in self._assigned.items()},
        }
