"""Depth discretisation: the abstract :class:`Binner` and input validation.

A binner maps metric depth to bin indices with right-closed bins
``(edges[i], edges[i+1]]``, so a depth equal to an edge falls in the lower bin,
as in the reference implementation. Pixels that are not finite, not positive,
or outside ``(edges[0], edges[-1]]`` get ``-1`` (invalid) and are never counted.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any

import torch

from . import kernels
from .bitbins import BitTable, build_bit_table, edges_rounded_down, lookup_index
from .errors import BinCountError, InvalidDepthError

__all__ = ["Binner", "EdgesBinner", "InvalidDepthWarning", "prepare_depth"]


class InvalidDepthWarning(UserWarning):
    """Depth contained NaN, inf or negative values, which were masked as invalid."""


_WARNED_NONFINITE = False


def prepare_depth(depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Validate a depth batch and return it as ``[B, H, W]`` with invalid pixels set to 0.

    Parameters
    ----------
    depth
        ``[B, H, W]`` or ``[B, 1, H, W]`` metric depth.
    valid
        Optional boolean mask of the same shape; ``False`` pixels become invalid.

    Notes
    -----
    NaN, inf and negative values are masked as invalid with a warning the first
    time they are seen in a process, so they are never silently counted.
    """
    global _WARNED_NONFINITE
    if not isinstance(depth, torch.Tensor):
        raise InvalidDepthError(f"depth must be a torch.Tensor, got {type(depth).__name__}")
    if depth.ndim == 4:
        if depth.shape[1] != 1:
            raise InvalidDepthError(
                f"depth of shape {tuple(depth.shape)} has {depth.shape[1]} channels; "
                "pass [B, H, W] or [B, 1, H, W]"
            )
        depth = depth[:, 0]
    elif depth.ndim != 3:
        raise InvalidDepthError(
            f"depth must be [B, H, W] or [B, 1, H, W], got shape {tuple(depth.shape)}; "
            "add a batch dimension with depth.unsqueeze(0)"
        )
    if not depth.is_floating_point():
        raise InvalidDepthError(
            f"depth must be floating point metres, got {depth.dtype}; "
            "convert millimetre PNGs with depth.float() / 1000"
        )
    depth = depth.detach()
    # One pass decides the common case: min and max propagate NaN, so a batch whose
    # minimum is >= 0 and maximum finite holds no NaN, inf or negative value.
    lo, hi = torch.aminmax(depth) if depth.numel() else (depth.new_zeros(()), depth.new_zeros(()))
    bad = None if bool((lo >= 0) & torch.isfinite(hi)) else ~torch.isfinite(depth) | (depth < 0)
    if bad is not None and bool(bad.any()):
        if not _WARNED_NONFINITE:
            _WARNED_NONFINITE = True
            warnings.warn(
                f"depth has {int(bad.sum())} NaN, inf or negative values; they are treated "
                "as invalid (mask them yourself to silence this warning)",
                InvalidDepthWarning,
                stacklevel=3,
            )
        depth = torch.where(bad, torch.zeros((), dtype=depth.dtype, device=depth.device), depth)
    if valid is not None:
        if not isinstance(valid, torch.Tensor):
            raise InvalidDepthError(f"valid must be a boolean torch.Tensor, got {type(valid).__name__}")
        if valid.ndim == 4 and valid.shape[1] == 1:
            valid = valid[:, 0]
        if valid.shape != depth.shape:
            raise InvalidDepthError(
                f"valid mask {tuple(valid.shape)} does not match depth {tuple(depth.shape)}"
            )
        depth = torch.where(valid.bool(), depth, torch.zeros((), dtype=depth.dtype, device=depth.device))
    return depth


class Binner(ABC):
    """Maps metric depth to integer bins; ``-1`` marks invalid pixels.

    Subclasses provide :attr:`edges`; the default :meth:`__call__` bins with
    right-closed intervals. Override :meth:`__call__` for other rules, keeping
    the contract: int64 output with the depth's spatial shape, values in
    ``[0, num_bins)`` or ``-1``, non-decreasing in depth.
    """

    #: Registry name, set by subclasses; used when saving results.
    name: str = "custom"

    @property
    @abstractmethod
    def edges(self) -> torch.Tensor:
        """``float64`` tensor of ``num_bins + 1`` strictly increasing edges."""

    @property
    def num_bins(self) -> int:
        """Number of bins."""
        return int(self.edges.numel()) - 1

    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration that rebuilds this binner."""
        return {"name": self.name, "edges": [float(e) for e in self.edges.tolist()]}

    def with_num_bins(self, num_bins: int) -> "Binner":
        """Return the same kind of binner over the same range with ``num_bins`` bins.

        Used when a layer has fewer units than bins (the paper sets N_b = K).
        """
        raise BinCountError(
            f"{type(self).__name__} cannot be rebuilt with {num_bins} bins; "
            "construct one with the right num_bins yourself"
        )

    def for_units(self, num_units: int) -> "Binner":
        """The binner for a layer of ``num_units`` units: ``N_b = min(K, N_b)`` (paper, Eq. 6).

        A layer with at least as many units as bins keeps this binner (the same
        object); one with ``K < N_b`` units gets ``K`` bins over the same range
        (:meth:`with_num_bins`), so every bin has a unit assigned to it.
        """
        if num_units < 1:
            raise BinCountError(f"a layer needs at least one unit to fit bins to, got {num_units}")
        return self if num_units >= self.num_bins else self.with_num_bins(num_units)

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Bin a depth batch.

        Parameters
        ----------
        depth
            ``[B, H, W]`` or ``[B, 1, H, W]`` metres.
        valid
            Optional mask; pixels where it is ``False`` get ``-1``.

        Returns
        -------
        torch.Tensor
            ``int64 [B, H, W]`` bin indices, ``-1`` for invalid pixels.
        """
        return self._bin_prepared(prepare_depth(depth, valid))

    def _bin_prepared(self, d: torch.Tensor) -> torch.Tensor:
        """The bins of depth that has been through :func:`prepare_depth` (``[B, H, W]``, invalid = 0).

        :class:`~depthsel.binned.BinnedDepth` masks a batch once and bins it under every
        binner that keeps this base rule; checking the same depth again per binner was a
        full pass over it each time. ``d`` is shared by those binners: never change it in place.
        """
        edges = self.edges.to(device=d.device)
        # The index counts the edges strictly below d: 0 (depth <= edges[0], which covers
        # invalid zeros since edges[0] >= 0), i for bin i - 1, N_b + 1 beyond the range.
        if d.dtype == torch.float32:
            # Exact without a float64 copy: for float32 d, d <= e holds iff d <= the largest
            # float32 not above e, so compare against the edges rounded down to float32.
            table = self._bit_table(d.device)
            if table is not None and kernels.numba_enabled(d):
                # One compiled pass: cell, base, split comparison and the bin table.
                return kernels.lookup_bins(d, table, self._index_to_bin(d.device))
            if table is not None:
                index = lookup_index(d, table)
            else:
                index = torch.bucketize(d, edges_rounded_down(edges), right=False)
        else:
            # Compare in float64 so edges such as 0.75 are exact.
            index = torch.bucketize(d.to(torch.float64), edges, right=False)
        return torch.index_select(self._index_to_bin(d.device), 0, index.view(-1)).view(index.shape)

    def _index_to_bin(self, device: torch.device) -> torch.Tensor:
        """Edges-below count -> bin: 0 -> -1 (at or below the range), i -> i - 1, Nb + 1 -> above range."""
        lut = torch.arange(-1, self.num_bins + 1, device=device)
        lut[-1] = self.above_range_bin
        return lut

    #: Bin of finite depth above the last edge: ``-1`` (invalid). A subclass may
    #: set 0 to reproduce the reference code, which leaves such depth in bin 0.
    above_range_bin: int = -1

    def _bit_table(self, device: torch.device) -> BitTable | None:
        """The float32 lookup tables of the edges on ``device``, built once (:mod:`depthsel.bitbins`)."""
        # Keyed by the (host) edges' values: a refitted binner gets new tables, and reading a
        # device copy of the edges here would synchronise with the device on every batch.
        edges = self.edges.cpu()
        key = (str(device), tuple(edges.tolist()))
        cache = self.__dict__.setdefault("_bit_tables", {})
        table = cache.get(key)
        if key not in cache:
            if len(cache) >= 8:
                cache.clear()  # refitted edges or many devices: keep the cache small
            table = cache[key] = build_bit_table(edges_rounded_down(edges), device)
        return table

    def __getstate__(self) -> dict[str, Any]:
        # The lookup tables are a cache: rebuilt on first use, never pickled or copied.
        state = self.__dict__.copy()
        state.pop("_bit_tables", None)
        return state

    def centers(self) -> torch.Tensor:
        """Bin centres in metres (``float64 [num_bins]``)."""
        e = self.edges
        return (e[1:] + e[:-1]) / 2

    def __repr__(self) -> str:
        e = self.edges
        return f"{type(self).__name__}(num_bins={self.num_bins}, range=({float(e[0]):.4g}, {float(e[-1]):.4g}])"


def check_edges(edges: torch.Tensor | list[float]) -> torch.Tensor:
    """Validate and return edges as a contiguous float64 tensor."""
    # Build float64 directly: going through torch's float32 default would round edges.
    e = torch.as_tensor(edges, dtype=torch.float64).flatten().contiguous()
    if e.numel() < 2:
        raise BinCountError("a binner needs at least 2 edges (1 bin)")
    if not bool(torch.isfinite(e).all()):
        raise BinCountError("bin edges must be finite")
    if not bool((e[1:] > e[:-1]).all()):
        raise BinCountError(
            "bin edges must be strictly increasing; with quantile bins this means the "
            "data has too few distinct depths for that many bins: use fewer bins"
        )
    if float(e[0]) < 0 or math.isnan(float(e[0])):
        raise BinCountError("the first bin edge must be >= 0")
    return e


class EdgesBinner(Binner):
    """A binner defined by explicit edges, e.g. rebuilt from a saved result.

    Parameters
    ----------
    edges
        ``num_bins + 1`` strictly increasing values.
    name
        Name recorded in results.
    """

    def __init__(self, edges: torch.Tensor | list[float], name: str = "edges") -> None:
        self._edges = check_edges(edges)
        self.name = name

    @property
    def edges(self) -> torch.Tensor:
        return self._edges
