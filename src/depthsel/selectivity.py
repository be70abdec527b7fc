"""Depth selectivity (Eq. 2 of You et al.), bin assignment (Eq. 6) and layer summaries.

``DS_k = (|R[k, d*]| - mean_{d != d*} |R[k, d]|) / (|R[k, d*]| + mean_{d != d*} |R[k, d]|)``

with ``d*`` the unit's argmax bin (DS in ``[0, 1]``) or its assigned bin
(target DS, in ``[-1, 1]``). Bins never seen (``R`` is NaN there) are left out
of the "other bins" mean by default; ``absent="zero"`` counts them as zeros, as
the reference code does, which inflates DS.

Every function here is differentiable in ``R`` so the training objective can
use it directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .errors import BinCountError, ConfigError, ShapeMismatchError

__all__ = [
    "depth_selectivity",
    "selectivity_from_stats",
    "assign_bins",
    "matched_assignment",
    "LayerSummary",
    "summarize_layer",
]

_EPS = 1e-12
ABSENT_POLICIES = ("exclude", "zero")


def selectivity_from_stats(
    r_abs: torch.Tensor,
    present: torch.Tensor,
    assigned: torch.Tensor | None = None,
    *,
    absent: str = "exclude",
) -> tuple[torch.Tensor, torch.Tensor]:
    """DS from non-negative responses and a mask of the bins that were seen.

    Parameters
    ----------
    r_abs
        ``[K, Nb]`` non-negative responses; values at absent bins are ignored.
    present
        ``bool [Nb]`` (or ``[K, Nb]``): bins with at least one valid pixel.
    assigned
        ``int64 [K]`` target bins, or ``None`` for the argmax bin.
    absent
        ``"exclude"`` (default) or ``"zero"`` (reference behaviour).

    Returns
    -------
    ds, defined
        ``[K]`` selectivity and a ``bool [K]`` mask of units for which it is
        defined. With ``absent="exclude"`` a unit is undefined when its target
        bin was not seen, or when fewer than two bins were seen. With
        ``absent="zero"`` every unit is defined; one whose target bin was not
        seen scores 0, as in the reference.
    """
    if absent not in ABSENT_POLICIES:
        raise ConfigError(f"absent must be one of {ABSENT_POLICIES}, got {absent!r}")
    k, nb = r_abs.shape
    pres = present.expand(k, nb) if present.ndim == 1 else present
    zero = torch.zeros((), dtype=r_abs.dtype, device=r_abs.device)
    r = torch.where(pres, r_abs, zero)
    if assigned is None:
        masked = torch.where(pres, r, torch.full_like(r, -1.0))
        target = masked.argmax(dim=1)
    else:
        target = assigned.to(device=r.device, dtype=torch.long)
        if target.shape != (k,):
            raise ShapeMismatchError(f"assigned must have shape [{k}], got {tuple(target.shape)}")
        if bool(((target < 0) | (target >= nb)).any()):
            raise BinCountError(f"assigned bins must lie in [0, {nb})")
    one_hot = torch.nn.functional.one_hot(target, nb).to(torch.bool)
    r_target = r.gather(1, target.unsqueeze(1)).squeeze(1)
    target_seen = pres.gather(1, target.unsqueeze(1)).squeeze(1)
    others = torch.where(one_hot, zero, r)
    if absent == "exclude":
        n_other = (pres & ~one_hot).sum(1)
        mean_other = others.sum(1) / n_other.clamp(min=1).to(r.dtype)
        defined = target_seen & (n_other > 0)
    else:
        mean_other = others.sum(1) / max(nb - 1, 1)
        defined = torch.ones(k, dtype=torch.bool, device=r.device)
    ds = (r_target - mean_other) / (r_target + mean_other + _EPS)
    if absent == "zero":
        ds = torch.where(target_seen, ds, zero)
    else:
        ds = torch.where(defined, ds, zero)
    return ds, defined


def depth_selectivity(
    responses: torch.Tensor,
    assigned: torch.Tensor | None = None,
    *,
    absent: str = "exclude",
) -> torch.Tensor:
    """Depth selectivity per unit.

    Parameters
    ----------
    responses
        ``[K, Nb]`` average responses ``R`` (e.g. :meth:`ResponseAccumulator.responses`),
        NaN where a bin was never seen. ``|R|`` is taken inside.
    assigned
        ``int64 [K]`` assigned bins for the *target* DS; ``None`` uses the argmax bin.
    absent
        ``"exclude"`` leaves never-seen bins out of the other-bins mean (default);
        ``"zero"`` counts them as zeros (reference code).

    Returns
    -------
    torch.Tensor
        ``[K]`` DS; NaN for units where it is undefined (see
        :func:`selectivity_from_stats`). In ``[0, 1]`` with the argmax bin,
        ``[-1, 1]`` with assigned bins.
    """
    if not isinstance(responses, torch.Tensor):
        raise ShapeMismatchError(f"responses must be a torch.Tensor [K, Nb], got {type(responses).__name__}")
    if responses.ndim != 2:
        raise ShapeMismatchError(f"responses must be [K, Nb], got shape {tuple(responses.shape)}")
    if responses.shape[1] < 1:
        raise BinCountError("responses have no bins (shape [K, 0]); DS needs at least one depth bin")
    present = ~torch.isnan(responses).all(dim=0)
    r_abs = torch.nan_to_num(responses, nan=0.0).abs()
    ds, defined = selectivity_from_stats(r_abs, present, assigned, absent=absent)
    return torch.where(defined, ds, torch.full_like(ds, float("nan")))


def assign_bins(num_units: int, num_bins: int) -> torch.Tensor:
    """Eq. 6 of You et al.: ``d_k = floor(k / (K / Nb))``; ``Nb = K`` when ``K < Nb``.

    Integer arithmetic (``k * Nb // K``) gives the exact floor without
    float rounding, also when ``K`` is not a multiple of ``Nb``.
    """
    if num_units < 1 or num_bins < 1:
        raise BinCountError(f"need num_units >= 1 and num_bins >= 1, got {num_units}, {num_bins}")
    nb = min(num_bins, num_units)
    k = torch.arange(num_units, dtype=torch.long)
    return (k * nb) // num_units


def matched_assignment(responses: torch.Tensor, num_bins: int | None = None) -> torch.Tensor:
    """Assign bins so each unit keeps a bin close to the one it already prefers.

    Uses the Hungarian method (``scipy.optimize.linear_sum_assignment``) over
    the bin *slots* of the paper rule: the multiset of bins is exactly that of
    :func:`assign_bins`, so every bin keeps its share of units, but which unit
    gets which bin maximises the total normalised response.

    Parameters
    ----------
    responses
        ``[K, Nb]`` dissected responses of the model (NaN for unseen bins).
    num_bins
        Defaults to ``responses.shape[1]``.
    """
    from scipy.optimize import linear_sum_assignment

    r = torch.nan_to_num(responses.detach().to(torch.float64), nan=0.0).abs().cpu()
    k, nb = r.shape
    nb = num_bins or nb
    slots = assign_bins(k, nb)
    # Normalise each unit's profile so strong units do not dominate the matching.
    profile = r / r.sum(1, keepdim=True).clamp(min=1e-12)
    cost = -profile[:, slots].numpy()
    rows, cols = linear_sum_assignment(cost)
    out = torch.empty(k, dtype=torch.long)
    out[torch.as_tensor(rows)] = slots[torch.as_tensor(cols)]
    return out


@dataclass
class LayerSummary:
    """Selectivity summary of one hooked layer.

    Attributes
    ----------
    argmax_ds
        Mean DS with the argmax bin over units where it is defined.
    target_ds
        Mean DS with the assigned bin.
    peak_on_target
        Fraction of units whose argmax bin is their assigned bin.
    dead_units
        Units never active on a valid pixel.
    """

    layer: str
    num_units: int
    num_bins: int
    argmax_ds: float
    target_ds: float
    peak_on_target: float
    dead_units: int
    dead_unit_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return asdict(self)


def _nanmean(x: torch.Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else float("nan")


def summarize_layer(
    layer: str,
    responses: torch.Tensor,
    assigned: torch.Tensor | None = None,
    *,
    absent: str = "exclude",
    dead: torch.Tensor | None = None,
) -> LayerSummary:
    """Summarise a layer's ``[K, Nb]`` responses.

    Parameters
    ----------
    layer
        Layer name.
    responses
        ``[K, Nb]`` responses (NaN where a bin was never seen).
    assigned
        Assigned bins; defaults to :func:`assign_bins`.
    absent
        Policy for never-seen bins (see :func:`depth_selectivity`).
    dead
        ``bool [K]`` dead units; defaults to units whose response is 0 in every seen bin.
    """
    k, nb = responses.shape
    if assigned is None:
        assigned = assign_bins(k, nb)
    ds = depth_selectivity(responses, absent=absent)
    tds = depth_selectivity(responses, assigned, absent=absent)
    r = torch.nan_to_num(responses, nan=-1.0).abs()
    r = torch.where(torch.isnan(responses), torch.full_like(r, -1.0), r)
    if dead is None:
        dead = (torch.nan_to_num(responses, nan=0.0).abs().sum(1) == 0)
    alive = ~dead.to(r.device)
    peak = (r.argmax(1) == assigned.to(r.device)) & alive
    return LayerSummary(
        layer=layer,
        num_units=k,
        num_bins=nb,
        argmax_ds=_nanmean(ds),
        target_ds=_nanmean(tds),
        peak_on_target=float(peak.float().mean()) if k else float("nan"),
        dead_units=int(dead.sum()),
        dead_unit_indices=[int(i) for i in dead.nonzero().flatten().tolist()],
    )
