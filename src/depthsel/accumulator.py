"""Streaming per-unit, per-bin response statistics of one layer (Eq. 1 of You et al.).

The accumulator keeps float64 sums of ``A`` and of ``|A|`` per (unit, bin) and
the valid-pixel count per bin, pooled over every valid pixel of every image it
has seen. Sums are order- and split-invariant, so the result does not depend
on batch size, batch order, or how many processes shared the data.
"""

from __future__ import annotations

from typing import Any

import torch

from .alignment import METHODS, bin_counts, bin_weight_maps, binned_sums, check_inputs
from . import kernels
from .binning import Binner
from .consumer import Consumer, distributed_ready
from .errors import ConfigError, ShapeMismatchError
from .per_image import per_image_binned_sums, per_image_sums_available

__all__ = ["ResponseAccumulator"]



class ResponseAccumulator(Consumer):
    """Per-unit average response per depth bin, accumulated over a dataset.

    A :class:`~depthsel.consumer.Consumer`: its state (``sums``, ``abs_sums``,
    ``counts``, ``images``, ``skipped``, all summed) is declared once, and
    reset, merge, sync and the checkpointed state follow from that.

    Parameters
    ----------
    num_bins
        Number of depth bins ``Nb``.
    num_units
        Number of units ``K``; inferred from the first :meth:`update` when ``None``.
    align_corners
        Bilinear alignment convention (``False`` as in the reference code).
    method
        ``"adjoint"`` (exact, no upsampled tensor) or ``"upsample"`` (plain path).
    compute_dtype
        Dtype of the per-batch product; sums are accumulated in float64.
    layer, binner
        For use as a stream consumer: the captured layer to read and the binner
        of its ground truth (see :func:`depthsel.stream.stream`).

    Examples
    --------
    >>> acc = ResponseAccumulator(num_bins=8)
    >>> acc.update(torch.rand(2, 4, 5, 5), torch.randint(-1, 8, (2, 10, 10)))
    >>> acc.responses("abs").shape
    torch.Size([4, 8])
    """

    def __init__(
        self,
        num_bins: int,
        num_units: int | None = None,
        *,
        align_corners: bool = False,
        method: str = "adjoint",
        compute_dtype: torch.dtype = torch.float64,
        layer: str | None = None,
        binner: Binner | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if num_bins < 1:
            raise ShapeMismatchError("num_bins must be >= 1")
        if binner is not None and binner.num_bins != num_bins:
            raise ShapeMismatchError(f"the binner has {binner.num_bins} bins, the accumulator {num_bins}")
        self.num_bins = int(num_bins)
        self.align_corners = align_corners
        self.method = method
        self.compute_dtype = compute_dtype
        self.layer, self.binner = layer, binner
        k = 0 if num_units is None else int(num_units)
        f64 = torch.float64
        self.add_state("sums", torch.zeros(k, self.num_bins, dtype=f64))
        self.add_state("abs_sums", torch.zeros(k, self.num_bins, dtype=f64))
        self.add_state("counts", torch.zeros(self.num_bins, dtype=f64))
        self.add_state("images", torch.zeros((), dtype=torch.int64))
        self.add_state("skipped", torch.zeros((), dtype=torch.int64))

    # ----------------------------------------------------------------- state
    @property
    def num_units(self) -> int | None:
        """``K``, or ``None`` before the first batch."""
        k = int(self.sums.shape[0])
        return k or None

    @property
    def num_images(self) -> int:
        """Images with at least one valid pixel seen so far."""
        return int(self.images)

    @property
    def skipped_batches(self) -> int:
        """Batches without any valid pixel (they carry no information)."""
        return int(self.skipped)

    def _alloc(self, k: int, device: torch.device) -> None:
        for name in ("sums", "abs_sums"):
            self.grow_state(name, torch.zeros(k, self.num_bins, dtype=torch.float64))
            setattr(self, name, getattr(self, name).to(device))
        self.counts = self.counts.to(device)

    @torch.no_grad()
    def update(
        self,
        activations: torch.Tensor | Any,
        bins: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``update(activations, bins[, weights])`` or, in a stream, ``update(view)``.

        Parameters
        ----------
        activations
            ``[B, K, h, w]`` feature maps, or a :class:`~depthsel.stream.BatchView`
            (then the layer and binner given at construction are read from it, and
            its cached bins and weight maps are used).
        bins
            ``int64 [B, H, W]`` bin indices from a :class:`~depthsel.Binner`; ``-1`` invalid.
        weights
            Optional precomputed :func:`~depthsel.alignment.bin_weight_maps`.
        """
        view = None
        known_nonnegative = False
        if bins is None and hasattr(activations, "binned"):
            view = activations
            activations, bins = self._from_view(view)
            # The capture proved the layer ends in a ReLU: no need to read A again for a sign.
            known_nonnegative = self.layer in getattr(view, "nonnegative", ())
        if isinstance(bins, torch.Tensor) and bins.ndim == 4 and bins.shape[1] == 1:
            bins = bins[:, 0]
        # Types, ranks, batch sizes, dtypes and the bin range: one check for every caller,
        # before anything indexes with the bins (an out-of-range bin gets this error).
        # With the numba loops the counts and the weight maps check the bin range as they
        # read the bins, so the separate pass over them is skipped.
        check_inputs(activations, bins, self.num_bins,
                     check_range=not (isinstance(bins, torch.Tensor) and kernels.numba_enabled(bins)))
        assert bins is not None
        per_image = None
        if view is not None:
            weights, per_image = self._cached(view, activations, bins)
        act = activations.detach()
        if self.num_units is not None and act.shape[1] != self.num_units:
            raise ShapeMismatchError(
                f"this accumulator holds {self.num_units} units but the batch has {act.shape[1]}; "
                "use one accumulator per layer"
            )
        # One histogram gives the pixel counts, "any valid pixel" and the image count.
        per_image = self._counts(bins, per_image, act.shape[0])
        valid_images = per_image.sum(1) > 0
        if not bool(valid_images.any()):
            # An all-invalid batch carries no information; count it instead of dividing by 0.
            self.skipped += 1
            return
        act = act.to(self.compute_dtype)
        sums, abs_sums = self._batch_sums(act, bins, weights, per_image, known_nonnegative)
        if known_nonnegative and bool((sums < 0).any()):
            # The proof was wrong after all (e.g. an edit through ``.data`` after the hook, which
            # no version counter sees): a sum of non-negative values cannot be negative. Take
            # |A| the slow way. Not every wrong proof shows here; see Capture.nonnegative.
            sums, abs_sums = self._batch_sums(act, bins, weights, per_image, False)
        if self.num_units is None:
            self._alloc(act.shape[1], act.device)
        if self.sums.device != act.device:
            self._alloc_device(act.device)
        self.sums += sums.sum(0).to(torch.float64)
        self.abs_sums += abs_sums.sum(0).to(torch.float64)
        self.counts += per_image.sum(0).to(self.counts.device, torch.float64)
        # Only images with a valid pixel count: an all-invalid frame adds nothing, and
        # counting it would make num_images depend on which batch it shared.
        self.images += int(valid_images.sum())

    def _counts(self, bins: torch.Tensor, cached: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``[B, Nb]`` bin counts of the batch (the view's, if it has them), checked before any state changes."""
        counts = bin_counts(bins, self.num_bins) if cached is None else cached
        if tuple(counts.shape) != (batch, self.num_bins):
            # A stream's binner with another number of bins (refitted after construction).
            raise ShapeMismatchError(
                f"the binner gives {counts.shape[-1]} bins but this accumulator holds {self.num_bins}; "
                "build the accumulator with the binner it reads"
            )
        return counts

    def _batch_sums(self, act: torch.Tensor, bins: torch.Tensor, weights: torch.Tensor | None,
                    counts: torch.Tensor, known_nonnegative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, K, Nb]`` sums of ``A`` and ``|A|`` of one checked batch (``|A| = A`` if ``known_nonnegative``)."""
        if self.method == "adjoint" and weights is None and per_image_sums_available(act, bins):
            # The numba loops: one image's weight map at a time, in cache (same numbers).
            return per_image_binned_sums(act, bins, self.num_bins, self.align_corners, counts,
                                         nonnegative=known_nonnegative)
        if self.method == "adjoint" and weights is None:
            # Build the bin weight maps once for both the signed and the |A| sums.
            weights = bin_weight_maps(bins.long(), self.num_bins, tuple(act.shape[-2:]),
                                      self.align_corners, dtype=self.compute_dtype)
        sums = binned_sums(act, bins, self.num_bins, align_corners=self.align_corners,
                           method=self.method, weights=weights, check=False)
        # After a ReLU (most hooked layers) no activation is negative, |A| = A, and one
        # product serves both sums: one read of A instead of a second product.
        nonnegative = known_nonnegative or act.numel() == 0 or bool(act.amin() >= 0)
        abs_sums = sums if nonnegative else binned_sums(
            act, bins, self.num_bins, use_abs=True, align_corners=self.align_corners,
            method=self.method, weights=weights, check=False)
        return sums, abs_sums

    def _from_view(self, view: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's activations and the view's cached bins."""
        if self.layer is None or self.binner is None:
            raise ConfigError("a ResponseAccumulator fed by a stream needs layer= and binner=")
        if bool(getattr(view.binned, "align_corners", self.align_corners)) != self.align_corners:
            # The view's cached weight maps use its convention: both must agree, or the
            # numbers would depend on which path (cached maps or per image) ran.
            raise ConfigError(
                f"the stream aligns with align_corners={view.binned.align_corners} but this accumulator "
                f"with align_corners={self.align_corners}; build both with the same convention"
            )
        act = view.activations[self.layer]
        return act, view.binned.bins(self.binner, act.device)

    def _cached(self, view: Any, act: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The view's weight maps and counts of this binner, built once per batch and shared by layers."""
        assert self.binner is not None
        weights = None
        if self.method == "adjoint" and not per_image_sums_available(act, bins, self.compute_dtype):
            weights = view.binned.weights(self.binner, tuple(act.shape[-2:]), self.compute_dtype, act.device)
        return weights, view.binned.counts(self.binner, act.device)

    def _alloc_device(self, device: torch.device) -> None:
        for name in ("sums", "abs_sums", "counts", "images", "skipped"):
            setattr(self, name, getattr(self, name).to(device))

    # --------------------------------------------------------------- results
    def _seen(self) -> None:
        if self.num_units is None:
            raise ShapeMismatchError("the accumulator has seen no batch yet; call update() first")

    def responses(self, mode: str = "abs") -> torch.Tensor:
        """Average response ``R [K, Nb]`` (float64); NaN where a bin was never seen.

        Parameters
        ----------
        mode
            ``"abs"``: mean of ``|A|`` (the training objective's definition, and
            depthsel's default for dissection); ``"signed"``: mean of ``A`` (the
            reference ``dissect.py`` takes ``|.|`` of this afterwards).
        """
        if mode not in ("abs", "signed"):
            raise ConfigError(f"mode must be 'abs' or 'signed', got {mode!r}")
        self._seen()
        total = self.abs_sums if mode == "abs" else self.sums
        counts = self.counts.to(total.device)
        r = total / counts.clamp(min=1.0)
        return torch.where(counts > 0, r, torch.full_like(r, float("nan")))

    def dead_units(self) -> torch.Tensor:
        """Boolean ``[K]``: units whose response is zero on every valid pixel seen."""
        self._seen()
        return self.abs_sums.sum(1) == 0

    # --------------------------------------------------------- combination
    def merge(self, other: "ResponseAccumulator") -> "ResponseAccumulator":  # type: ignore[override]
        """Add another accumulator's statistics into this one (in place)."""
        if not isinstance(other, ResponseAccumulator) or other.num_bins != self.num_bins:
            raise ShapeMismatchError(f"cannot merge {getattr(other, 'num_bins', '?')} bins into {self.num_bins}")
        if (self.num_units and other.num_units) and self.num_units != other.num_units:
            raise ShapeMismatchError(f"cannot merge {other.num_units} units into {self.num_units}")
        return super().merge(other)

    def sync(self, group: Any = None) -> "ResponseAccumulator":
        """All-reduce (sum) the statistics across ``torch.distributed`` ranks.

        A no-op when torch.distributed is not initialised. Every rank must call
        it, and every rank must have seen at least one batch (or been given
        ``num_units``), so that the tensors agree in shape.
        """
        if distributed_ready() and self.num_units is None:
            raise ShapeMismatchError(
                "sync() needs num_units on ranks that saw no data; pass num_units= to the accumulator"
            )
        return super().sync(group)

    def __repr__(self) -> str:
        k = "?" if self.num_units is None else self.num_units
        return (f"ResponseAccumulator(units={k}, bins={self.num_bins}, images={self.num_images}, "
                f"pixels={int(self.counts.sum())})")
