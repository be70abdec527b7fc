"""Built-in selectivity objectives: ``assign`` (Eq. 5) and ``regularize`` (Eq. 4)."""

from __future__ import annotations

from typing import Any

from depthsel import hookimpl
from depthsel.objectives import BatchStats, ObjectiveOutput, SelectivityObjective

__all__ = ["AssignObjective", "RegularizeObjective"]


class AssignObjective(SelectivityObjective):
    """Eq. 5 of You et al.: mean target DS, each unit measured at its assigned bin.

    The paper's recommended objective: units are pushed towards fixed,
    evenly spread depth ranges, so they neither collapse onto the bin that
    dominates a batch nor drift between bins.
    """

    name = "assign"

    def layer_score(self, stats: BatchStats) -> ObjectiveOutput:
        return self._mean_ds(stats, stats.assigned)


class RegularizeObjective(SelectivityObjective):
    """Eq. 4 of You et al.: mean DS at each unit's current argmax bin.

    Kept for comparison; the paper shows it underperforms ``assign`` because
    units collapse or drift towards whichever bin dominates a batch.
    """

    name = "regularize"

    def layer_score(self, stats: BatchStats) -> ObjectiveOutput:
        return self._mean_ds(stats, None)


@hookimpl
def register_objectives(register: Any) -> None:
    """Register the built-in objectives."""
    register("assign", AssignObjective, description="Eq. 5: target DS at assigned bins (default)")
    register("regularize", RegularizeObjective, description="Eq. 4: DS at each unit's argmax bin")
