"""``inverse``: depth bins of equal width in inverse depth (disparity).

Near depths get narrow bins and far depths wide ones, like SID, but following
1/d, the quantity a stereo or motion cue actually measures.
"""

from __future__ import annotations

from typing import Any

import torch

from depthsel import Binner
from depthsel.binning import check_edges
from depthsel.errors import BinCountError


class InverseDepthBinner(Binner):
    """Bins uniform in ``1/d`` over ``(min_depth, max_depth]``.

    Parameters
    ----------
    num_bins
        Number of bins.
    min_depth, max_depth
        Range in metres; ``0 < min_depth < max_depth``.
    """

    name = "inverse"

    def __init__(self, num_bins: int = 64, min_depth: float = 0.5, max_depth: float = 10.0) -> None:
        if not isinstance(num_bins, int) or num_bins < 1:
            raise BinCountError(f"num_bins must be a positive integer, got {num_bins!r}")
        if not 0 < float(min_depth) < float(max_depth):
            raise BinCountError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        # Equal steps in 1/d, from 1/min (near) down to 1/max (far); inverted, the edges increase.
        inv = torch.linspace(1.0 / self.min_depth, 1.0 / self.max_depth, num_bins + 1, dtype=torch.float64)
        edges = 1.0 / inv
        edges[0], edges[-1] = self.min_depth, self.max_depth  # exact ends despite rounding
        self._edges = check_edges(edges)

    @property
    def edges(self) -> torch.Tensor:
        return self._edges

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_bins": self.num_bins, "min_depth": self.min_depth,
                "max_depth": self.max_depth, "edges": [float(e) for e in self._edges.tolist()]}

    def with_num_bins(self, num_bins: int) -> "InverseDepthBinner":
        return InverseDepthBinner(num_bins, self.min_depth, self.max_depth)
