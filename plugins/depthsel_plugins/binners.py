"""Built-in depth binners: ``uniform``, ``log``, ``sid`` and ``quantile``.

The concept binners ``normals`` and ``boundary`` (:mod:`.concept_binners`) are
registered by the same hook.

All bins are right-closed, ``(edges[i], edges[i+1]]``. Depth outside the range
is invalid (``-1``) unless ``above_range="first_bin"`` reproduces the
reference code, which leaves depth above ``max_depth`` in bin 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from depthsel import Binner, hookimpl
from depthsel.binning import check_edges
from depthsel.errors import BinCountError

__all__ = ["UniformBinner", "LogBinner", "SIDBinner", "QuantileBinner"]

_ABOVE = ("invalid", "first_bin")


def _check_range(num_bins: int, min_depth: float, max_depth: float) -> None:
    if not isinstance(num_bins, int) or num_bins < 1:
        raise BinCountError(f"num_bins must be a positive integer, got {num_bins!r}")
    if not (math.isfinite(min_depth) and math.isfinite(max_depth)) or not 0 <= min_depth < max_depth:
        raise BinCountError(
            f"need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}"
        )


class _RangeBinner(Binner):
    """Shared behaviour of binners defined by ``num_bins`` over ``[min_depth, max_depth]``."""

    def __init__(
        self, num_bins: int = 64, min_depth: float = 0.75, max_depth: float = 10.0,
        above_range: str = "invalid",
    ) -> None:
        _check_range(num_bins, float(min_depth), float(max_depth))
        if above_range not in _ABOVE:
            raise BinCountError(f"above_range must be one of {_ABOVE}, got {above_range!r}")
        self._num_bins = num_bins
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.above_range = above_range
        # "first_bin" reproduces the reference code: depth above the range stays in bin 0.
        self.above_range_bin = 0 if above_range == "first_bin" else -1
        self._edges = check_edges(self._make_edges())

    def _make_edges(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def edges(self) -> torch.Tensor:
        return self._edges

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_bins": self._num_bins,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
            "above_range": self.above_range,
            "edges": [float(e) for e in self._edges.tolist()],
        }

    def with_num_bins(self, num_bins: int) -> Binner:
        return type(self)(num_bins, self.min_depth, self.max_depth, self.above_range)

class UniformBinner(_RangeBinner):
    """Equal-width bins over ``(min_depth, max_depth]``.

    Parameters
    ----------
    num_bins, min_depth, max_depth
        Number of bins and the metric range; depth at or below ``min_depth`` is invalid.
    above_range
        ``"invalid"`` (default) or ``"first_bin"`` (reference behaviour).
    """

    name = "uniform"

    def __init__(self, num_bins: int = 64, min_depth: float = 0.0, max_depth: float = 10.0,
                 above_range: str = "invalid") -> None:
        super().__init__(num_bins, min_depth, max_depth, above_range)

    def _make_edges(self) -> torch.Tensor:
        return torch.linspace(self.min_depth, self.max_depth, self._num_bins + 1, dtype=torch.float64)


class LogBinner(_RangeBinner):
    """Bins equally spaced in log-depth over ``(min_depth, max_depth]`` (``min_depth > 0``)."""

    name = "log"

    def __init__(self, num_bins: int = 64, min_depth: float = 0.5, max_depth: float = 10.0,
                 above_range: str = "invalid") -> None:
        if min_depth <= 0:
            raise BinCountError("log bins need min_depth > 0")
        super().__init__(num_bins, min_depth, max_depth, above_range)

    def _make_edges(self) -> torch.Tensor:
        lo, hi = math.log(self.min_depth), math.log(self.max_depth)
        return torch.exp(torch.linspace(lo, hi, self._num_bins + 1, dtype=torch.float64))


class SIDBinner(_RangeBinner):
    """Spacing-increasing discretisation (DORN), shifted as in the reference code.

    Edges are ``[0, t_0, ..., t_{Nb-1}]`` with
    ``t_i = exp(ln(beta + 1 - alpha) * i / (Nb - 1)) - (1 - alpha)``, so bin 0 is
    ``(0, alpha]`` and the last edge is ``beta``. ``alpha = min_depth`` and
    ``beta = max_depth``; presets: NYU ``(0.75, 10)``, KITTI ``(3, 80)``.
    """

    name = "sid"

    def __init__(self, num_bins: int = 64, min_depth: float = 0.75, max_depth: float = 10.0,
                 above_range: str = "invalid", preset: str | None = None) -> None:
        if preset is not None:
            presets = {"nyu": (0.75, 10.0), "kitti": (3.0, 80.0)}
            if preset not in presets:
                raise BinCountError(f"unknown SID preset {preset!r}; use one of {sorted(presets)}")
            min_depth, max_depth = presets[preset]
        if min_depth <= 0:
            raise BinCountError("SID bins need min_depth (alpha) > 0")
        if num_bins < 2:
            raise BinCountError("SID bins need num_bins >= 2")
        super().__init__(num_bins, min_depth, max_depth, above_range)

    def _make_edges(self) -> torch.Tensor:
        alpha, beta, nb = self.min_depth, self.max_depth, self._num_bins
        i = torch.arange(nb, dtype=torch.float64)
        t = torch.exp(math.log(beta + 1 - alpha) * i / (nb - 1)) - (1 - alpha)
        # Pin the ends to the exact values the formula yields analytically.
        t[0], t[-1] = alpha, beta
        return torch.cat([torch.zeros(1, dtype=torch.float64), t])


class QuantileBinner(Binner):
    """Equal-frequency bins fitted on a sample of training depths.

    For scenes whose depth range is narrow or skewed (a kitchen at 0.8-4 m),
    fixed 0.75-10 m bins leave most bins empty; quantile bins give every bin
    the same share of the fitting sample.

    Parameters
    ----------
    num_bins
        Number of bins.
    depths
        Depth samples (any shape; invalid values are ignored) to fit on.
    edges
        Pre-computed edges (e.g. from a saved result) instead of ``depths``.
    max_samples
        Subsample to at most this many valid values, with a fixed seed.
    """

    name = "quantile"

    def __init__(self, num_bins: int = 64, depths: torch.Tensor | Iterable[torch.Tensor] | None = None,
                 edges: torch.Tensor | list[float] | None = None, max_samples: int = 2_000_000,
                 seed: int = 0) -> None:
        if edges is not None:
            self._edges = check_edges(edges)
            return
        if depths is None:
            raise BinCountError("the quantile binner needs training depths (depths=...) or edges=")
        self._edges = check_edges(self.fit_edges(num_bins, depths, max_samples, seed))

    @staticmethod
    def fit_edges(num_bins: int, depths: torch.Tensor | Iterable[torch.Tensor],
                  max_samples: int = 2_000_000, seed: int = 0) -> torch.Tensor:
        """Return equal-frequency edges ``[0, q_1, ..., q_{Nb-1}, max]``."""
        if not isinstance(num_bins, int) or num_bins < 1:
            raise BinCountError(f"num_bins must be a positive integer, got {num_bins!r}")
        chunks = [depths] if isinstance(depths, torch.Tensor) else list(depths)
        values = torch.cat([c.detach().reshape(-1).to(torch.float64).cpu() for c in chunks])
        values = values[torch.isfinite(values) & (values > 0)]
        if values.numel() < num_bins + 1:
            raise BinCountError(
                f"only {values.numel()} valid depths to fit {num_bins} quantile bins; give more data"
            )
        if values.numel() > max_samples:
            g = torch.Generator().manual_seed(seed)
            values = values[torch.randperm(values.numel(), generator=g)[:max_samples]]
        qs = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)[1:-1]
        inner = torch.quantile(values, qs) if values.numel() <= 16_000_000 else torch.tensor(
            [float(v) for v in values.sort().values[(qs * (values.numel() - 1)).long()]]
        )
        top = values.max()
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), inner, top.reshape(1)])
        if not bool((edges[1:] > edges[:-1]).all()):
            raise BinCountError(
                f"the data has too few distinct depths for {num_bins} quantile bins; use fewer bins"
            )
        return edges

    @property
    def edges(self) -> torch.Tensor:
        return self._edges

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_bins": self.num_bins,
                "edges": [float(e) for e in self._edges.tolist()]}


@hookimpl
def register_binners(register: Any) -> None:
    """Register the built-in binners."""
    register("uniform", UniformBinner, description="equal-width bins over (min_depth, max_depth]")
    register("log", LogBinner, description="bins equally spaced in log depth")
    register("sid", SIDBinner, description="spacing-increasing discretisation (DORN, reference edges)")
    register("quantile", QuantileBinner, description="equal-frequency bins fitted on training depths")
    # Concept binners (surface orientation, occlusion boundaries) live in their own module.
    from .concept_binners import register_concept_binners

    register_concept_binners(register)
