"""The abstract :class:`SelectivityObjective` and per-batch layer statistics.

An objective turns one layer's batch statistics (per-bin sums of ``|A|`` and
valid-pixel counts, pooled over the batch) into a scalar *selectivity score*
to be maximised; the regularizer returns ``-weight * score`` as a loss term.
Built-in objectives (``assign``, ``regularize``) are plugins.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError
from .selectivity import ABSENT_POLICIES, selectivity_from_stats

__all__ = ["BatchStats", "SelectivityObjective", "ObjectiveOutput", "batch_selectivity"]


@dataclass
class BatchStats:
    """One layer's statistics over a batch.

    Attributes
    ----------
    sums
        ``[K, Nb]`` sums of the aligned ``|A|`` (or ``A``) per unit and bin,
        differentiable with respect to the activations.
    counts
        ``[Nb]`` valid-pixel counts per bin.
    assigned
        ``int64 [K]`` assigned bins.
    """

    sums: torch.Tensor
    counts: torch.Tensor
    assigned: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        """``bool [Nb]``: bins with at least one valid pixel in the batch."""
        return self.counts > 0

    def responses(self) -> torch.Tensor:
        """Average responses ``[K, Nb]`` (0 at absent bins; use :attr:`present`)."""
        return self.sums / self.counts.clamp(min=1).to(self.sums.dtype)


@dataclass
class ObjectiveOutput:
    """The score of one layer and what to log about it."""

    score: torch.Tensor
    ds: torch.Tensor
    defined: torch.Tensor

    def stats(self) -> dict[str, float]:
        """Per-layer numbers for logging (no graph)."""
        ds = self.ds.detach()
        d = self.defined
        n = int(d.sum())
        return {"score": float(self.score.detach()), "units_counted": float(n)}


@torch.no_grad()
def batch_selectivity(stats: BatchStats, absent: str = "exclude") -> dict[str, float]:
    """The batch's ``target_ds``, ``argmax_ds`` and ``peak_on_target`` of one layer (for logging).

    The same three names as a dissection's layer summary: mean DS with the
    assigned bin, mean DS with the argmax bin (over units where each is
    defined), and the fraction of units whose argmax bin over the bins present
    in the batch is their assigned bin (among units whose assigned bin is present).
    """
    r = stats.responses().detach().abs()
    present = stats.present.to(r.device)
    assigned = stats.assigned.to(r.device)
    tds, t_def = selectivity_from_stats(r, present, assigned, absent=absent)
    ads, a_def = selectivity_from_stats(r, present, None, absent=absent)
    masked = torch.where(present.expand_as(r), r, torch.full_like(r, -1.0))
    seen = present[assigned]
    peak = (masked.argmax(dim=1) == assigned) & seen

    def mean(x: torch.Tensor, m: torch.Tensor) -> float:
        return float(x[m].mean()) if bool(m.any()) else float("nan")

    return {"target_ds": mean(tds, t_def), "argmax_ds": mean(ads, a_def),
            "peak_on_target": float(peak.sum()) / int(seen.sum()) if bool(seen.any()) else float("nan")}


class SelectivityObjective(ABC):
    """Base class of training objectives built on depth selectivity.

    Parameters
    ----------
    absent
        ``"exclude"``: units whose assigned bin is absent from the batch leave
        the layer mean (default); ``"zero"``: they score 0 and still count, and
        absent bins enter every unit's "other bins" mean as zeros (reference).
    liveness
        Weight of a hinge that keeps units alive (0 = the paper's objective).

    Notes
    -----
    Why ``liveness``: a silent unit has DS = 0, which beats any negative DS,
    so under Eq. 5 alone a unit that responds weakly at its own bin can raise
    the score by going silent, and over long trainings units die (the
    FastDepth follow-up reports dead units too). The hinge
    ``relu(1 - r_k / (0.5 * mean_j r_j))``, with ``r_k`` the unit's response
    at its target bin and the layer mean detached, is subtracted (times
    ``liveness``) from the score: it pushes weak units to respond *at their
    own bin*, which is what selectivity asks of them anyway.
    """

    name: str = "custom"
    #: Whether the objective needs ``|A|`` (True for every built-in objective).
    uses_abs: bool = True

    def __init__(self, absent: str = "exclude", liveness: float = 0.0) -> None:
        if absent not in ABSENT_POLICIES:
            raise ConfigError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
        if not liveness >= 0:
            raise ConfigError(f"liveness must be >= 0, got {liveness!r}")
        self.absent = absent
        self.liveness = float(liveness)

    @abstractmethod
    def layer_score(self, stats: BatchStats) -> ObjectiveOutput:
        """Return the selectivity score of one layer (higher is more selective)."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration."""
        return {"name": self.name, "absent": self.absent, "liveness": self.liveness}

    # Shared by the built-ins: mean DS over the units for which it is defined.
    def _mean_ds(self, stats: BatchStats, assigned: torch.Tensor | None) -> ObjectiveOutput:
        r = stats.responses().abs()
        ds, defined = selectivity_from_stats(r, stats.present, assigned, absent=self.absent)
        n = defined.sum()
        score = (ds * defined.to(ds.dtype)).sum() / n.clamp(min=1).to(ds.dtype)
        if self.liveness > 0:
            target = assigned if assigned is not None else r.argmax(dim=1)
            target = target.to(r.device)
            r_t = r.gather(1, target.unsqueeze(1)).squeeze(1)
            seen = stats.present.to(r.device)[target]
            if bool(seen.any()):
                ref = r_t[seen].mean().detach()
                hinge = torch.relu(1 - r_t / (0.5 * ref + 1e-12))
                score = score - self.liveness * hinge[seen].mean()
        return ObjectiveOutput(score=score, ds=ds, defined=defined)
