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
from .errors import ConfigError, ResultFormatError, ShapeMismatchError

__all__ = ["ResponseAccumulator"]

_STATE_VERSION = 1


class ResponseAccumulator:
    """Per-unit average response per depth bin, accumulated over a dataset.

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
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if num_bins < 1:
            raise ShapeMismatchError("num_bins must be >= 1")
        self.num_bins = int(num_bins)
        self.num_units = num_units
        self.align_corners = align_corners
        self.method = method
        self.compute_dtype = compute_dtype
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sums: torch.Tensor | None = None
        self._abs_sums: torch.Tensor | None = None
        self._counts = torch.zeros(self.num_bins, dtype=torch.float64)
        self.num_images = 0
        self.skipped_batches = 0
        if self.num_units is not None:
            self._alloc(self.num_units, torch.device("cpu"))

    def _alloc(self, k: int, device: torch.device) -> None:
        self.num_units = k
        self._sums = torch.zeros(k, self.num_bins, dtype=torch.float64, device=device)
        self._abs_sums = torch.zeros_like(self._sums)
        self._counts = self._counts.to(device)

    @torch.no_grad()
    def update(
        self,
        activations: torch.Tensor,
        bins: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Parameters
        ----------
        activations
            ``[B, K, h, w]`` feature maps.
        bins
            ``int64 [B, H, W]`` bin indices from a :class:`~depthsel.Binner`; ``-1`` invalid.
        weights
            Optional precomputed :func:`~depthsel.alignment.bin_weight_maps`.
        """
        if isinstance(bins, torch.Tensor) and bins.ndim == 4 and bins.shape[1] == 1:
            bins = bins[:, 0]
        # Types, ranks, batch sizes, dtypes and the bin range: one check for every caller.
        check_inputs(activations, bins, self.num_bins)
        act = activations.detach()
        if self.num_units is not None and act.shape[1] != self.num_units:
            raise ShapeMismatchError(
                f"this accumulator holds {self.num_units} units but the batch has {act.shape[1]}; "
                "use one accumulator per layer"
            )
        if not bool((bins >= 0).any()):
            # An all-invalid batch carries no information; count it instead of dividing by 0.
            self.skipped_batches += 1
            return
        act = act.to(self.compute_dtype)
        if self.method == "adjoint" and weights is None:
            # Build the bin weight maps once for both the signed and the |A| sums.
            weights = bin_weight_maps(bins.long(), self.num_bins, tuple(act.shape[-2:]),
                                      self.align_corners, dtype=self.compute_dtype)
        sums = binned_sums(act, bins, self.num_bins,
                           align_corners=self.align_corners, method=self.method, weights=weights)
        abs_sums = binned_sums(act, bins, self.num_bins, use_abs=True,
                               align_corners=self.align_corners, method=self.method, weights=weights)
        if self._sums is None or self._sums.shape[0] != act.shape[1]:
            self._alloc(act.shape[1], act.device)
        assert self._sums is not None and self._abs_sums is not None
        if self._sums.device != act.device:
            self._move(act.device)
        self._sums += sums.sum(0).to(torch.float64)
        self._abs_sums += abs_sums.sum(0).to(torch.float64)
        self._counts += bin_counts(bins, self.num_bins).sum(0).to(torch.float64)
        # Only images with a valid pixel count: an all-invalid frame adds nothing, and
        # counting it would make num_images depend on which batch it shared.
        self.num_images += int((bins >= 0).flatten(1).any(1).sum())

    def _move(self, device: torch.device) -> None:
        assert self._sums is not None and self._abs_sums is not None
        self._sums = self._sums.to(device)
        self._abs_sums = self._abs_sums.to(device)
        self._counts = self._counts.to(device)

    # --------------------------------------------------------------- results
    @property
    def counts(self) -> torch.Tensor:
        """Valid-pixel count per bin (float64 ``[Nb]``)."""
        return self._counts.clone()

    @property
    def sums(self) -> torch.Tensor:
        """Sum of aligned ``A`` per (unit, bin), float64 ``[K, Nb]``."""
        if self._sums is None:
            raise ShapeMismatchError("the accumulator has seen no batch yet; call update() first")
        return self._sums.clone()

    @property
    def abs_sums(self) -> torch.Tensor:
        """Sum of aligned ``|A|`` per (unit, bin), float64 ``[K, Nb]``."""
        if self._abs_sums is None:
            raise ShapeMismatchError("the accumulator has seen no batch yet; call update() first")
        return self._abs_sums.clone()

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
        total = self.abs_sums if mode == "abs" else self.sums
        counts = self._counts.to(total.device)
        r = total / counts.clamp(min=1.0)
        return torch.where(counts > 0, r, torch.full_like(r, float("nan")))

    def dead_units(self) -> torch.Tensor:
        """Boolean ``[K]``: units whose response is zero on every valid pixel seen."""
        return self.abs_sums.sum(1) == 0

    # --------------------------------------------------------- combination
    def merge(self, other: "ResponseAccumulator") -> "ResponseAccumulator":
        """Add another accumulator's statistics into this one (in place)."""
        if other.num_bins != self.num_bins:
            raise ShapeMismatchError(f"cannot merge {other.num_bins} bins into {self.num_bins}")
        if other._sums is None:
            self.skipped_batches += other.skipped_batches
            return self
        if self._sums is None:
            self._alloc(other._sums.shape[0], other._sums.device)
        assert self._sums is not None and self._abs_sums is not None
        if self._sums.shape != other._sums.shape:
            raise ShapeMismatchError(
                f"cannot merge {other._sums.shape[0]} units into {self._sums.shape[0]}"
            )
        assert other._abs_sums is not None
        self._sums += other._sums.to(self._sums.device)
        self._abs_sums += other._abs_sums.to(self._sums.device)
        self._counts += other._counts.to(self._sums.device)
        self.num_images += other.num_images
        self.skipped_batches += other.skipped_batches
        return self

    def sync(self, group: Any = None) -> "ResponseAccumulator":
        """All-reduce (sum) the statistics across ``torch.distributed`` ranks.

        A no-op when torch.distributed is not initialised. Every rank must call
        it, and every rank must have seen at least one batch (or been given
        ``num_units``), so that the tensors agree in shape.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self._sums is None:
            raise ShapeMismatchError(
                "sync() needs num_units on ranks that saw no data; pass num_units= to the accumulator"
            )
        assert self._abs_sums is not None
        meta = torch.tensor([float(self.num_images), float(self.skipped_batches)],
                            dtype=torch.float64, device=self._sums.device)
        for t in (self._sums, self._abs_sums, self._counts, meta):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self.num_images, self.skipped_batches = int(meta[0]), int(meta[1])
        return self

    # ---------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Tensors and counters that :meth:`load_state_dict` restores exactly."""
        k = 0 if self._sums is None else self._sums.shape[0]
        empty = torch.zeros(0, self.num_bins, dtype=torch.float64)
        return {
            "version": _STATE_VERSION,
            "num_bins": self.num_bins,
            "num_units": k,
            "sums": empty if self._sums is None else self._sums.detach().cpu().clone(),
            "abs_sums": empty if self._abs_sums is None else self._abs_sums.detach().cpu().clone(),
            "counts": self._counts.detach().cpu().clone(),
            "num_images": self.num_images,
            "skipped_batches": self.skipped_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, validating shapes and dtypes."""
        try:
            version = int(state["version"])
            nb, k = int(state["num_bins"]), int(state["num_units"])
            sums, abs_sums, counts = state["sums"], state["abs_sums"], state["counts"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFormatError(f"accumulator state is missing a field: {exc}") from exc
        if version != _STATE_VERSION:
            raise ResultFormatError(f"accumulator state version {version} is not supported")
        if nb != self.num_bins:
            raise ResultFormatError(f"state has {nb} bins, this accumulator {self.num_bins}")
        for name, t, shape in (("sums", sums, (k, nb)), ("abs_sums", abs_sums, (k, nb)),
                               ("counts", counts, (nb,))):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.dtype != torch.float64:
                raise ResultFormatError(f"accumulator state field {name!r} must be float64 {shape}")
        if k == 0:
            self._sums = self._abs_sums = None
        else:
            self.num_units = k
            self._sums, self._abs_sums = sums.clone(), abs_sums.clone()
        self._counts = counts.clone()
        self.num_images = int(state.get("num_images", 0))
        self.skipped_batches = int(state.get("skipped_batches", 0))

    def __repr__(self) -> str:
        k = "?" if self._sums is None else self._sums.shape[0]
        return (f"ResponseAccumulator(units={k}, bins={self.num_bins}, images={self.num_images}, "
                f"pixels={int(self._counts.sum())})")
