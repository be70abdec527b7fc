"""An independent re-implementation of the published reference algorithm, for benchmarking.

This follows the *algorithm* of the released training and dissection code of
You et al. (youzunzhi/InterpretableMDE, ``utils/utils.py``, ``train.py``,
``dissect.py``), written from scratch for depthsel's benchmarks. It is kept
deliberately naive, as the published code is:

* depth is discretised by a Python loop over bins with boolean masks; depth
  ``<= 0`` is invalid (``-1``) and depth above ``beta`` stays in bin 0;
* activations are upsampled to the depth resolution (``align_corners=False``);
* per-bin sums are a loop over images and bins that gathers the masked pixels
  of the upsampled map and adds their sum into a float64 ``[K, Nb]`` slice;
* DS uses ``(sum of responses - target) / (Nb - 1)`` as the "other bins" mean,
  so absent bins count as zeros; in training ``|A|`` is taken before
  averaging, the target is the assigned bin (Eq. 6), units whose assigned
  bin is absent score 0, and the layer means are *summed* over layers;
* dissection runs one image at a time, averages the signed ``A`` and takes
  ``|.|`` afterwards, with the argmax bin as target.

Nothing here is used by depthsel itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "sid_thresholds",
    "discretize",
    "count_bins",
    "sum_on_bins",
    "selectivity",
    "training_selectivity",
    "ReferenceDissector",
]


def sid_thresholds(num_bins: int, alpha: float = 0.75, beta: float = 10.0) -> list[float]:
    """``[0, alpha, t_1, ..., t_{Nb-2}, beta]``: the shifted SID edges (``Nb + 1`` values)."""
    edges = [0.0, alpha]
    for i in range(1, num_bins - 1):
        edges.append(math.exp(math.log(beta + 1.0 - alpha) * i / (num_bins - 1)) - (1.0 - alpha))
    edges.append(beta)
    return edges


def discretize(depth: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Float bin map ``[B, 1, H, W]`` of a depth batch; ``-1`` where depth <= 0.

    Starts from zeros, so depth above the last edge remains in bin 0.
    """
    out = torch.zeros_like(depth)
    out[depth <= 0] = -1
    for i in range(len(edges) - 1):
        out[(depth > edges[i]) & (depth <= edges[i + 1])] = i
    return out


def count_bins(disc: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Float64 pixel count per bin, one image and one bin at a time."""
    cnt = torch.zeros(num_bins, dtype=torch.float64, device=disc.device)
    for i in range(disc.shape[0]):
        top = int(disc[i].max())
        for d in range(top + 1):
            n = int((disc[i, 0] == d).sum())
            if n:
                cnt[d] += n
    return cnt


def sum_on_bins(disc: torch.Tensor, fmaps: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Float64 ``[K, Nb]`` sums of the upsampled maps over the pixels of each bin.

    Differentiable in ``fmaps`` (the training code back-propagates through it).
    """
    h, w = disc.shape[-2:]
    up = F.interpolate(fmaps, (h, w), mode="bilinear", align_corners=False)
    total = torch.zeros(fmaps.shape[1], num_bins, dtype=torch.float64, device=fmaps.device)
    for i in range(disc.shape[0]):
        top = int(disc[i].max())
        for d in range(top + 1):
            mask = disc[i, 0] == d
            if not bool(mask.any()):
                continue
            total[:, d] += up[i][:, mask].sum(-1).to(torch.float64)
    return total


def selectivity(avg: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DS per unit with absent bins counted as zero responses (``Nb - 1`` in the mean)."""
    k, nb = avg.shape
    r_t = avg[torch.arange(k), target]
    r_o = (avg.sum(1) - r_t) / (nb - 1)
    return (r_t - r_o) / (r_t + r_o + 1e-15)


def training_selectivity(
    feats: Sequence[torch.Tensor], depth: torch.Tensor, edges_per_layer: Sequence[Sequence[float]]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The training term of the reference: sum over layers of the mean target DS.

    Returns ``(selectivity, sums_per_layer, counts_per_layer)``; the loss is
    ``-0.1 * selectivity``.
    """
    if depth.ndim == 3:
        depth = depth.unsqueeze(1)
    total = torch.zeros((), dtype=torch.float64, device=depth.device)
    all_sums, all_counts = [], []
    for fmap, edges in zip(feats, edges_per_layer):
        nb = len(edges) - 1
        disc = discretize(depth, edges)
        cnt = count_bins(disc, nb)
        sums = sum_on_bins(disc, fmap.abs(), nb)
        avg = sums / (cnt + 1e-15)
        k = avg.shape[0]
        unit_bin = (torch.arange(k) // (k / nb)).long().to(avg.device)
        ds = selectivity(avg, unit_bin)
        ds = torch.where(cnt[unit_bin] == 0, torch.zeros_like(ds), ds)
        total = total + ds.mean()
        all_sums.append(sums)
        all_counts.append(cnt)
    return total, all_sums, all_counts


class ReferenceDissector:
    """Dataset-level statistics of one layer, accumulated one image at a time."""

    def __init__(self, edges: Sequence[float], num_units: int, device: str | torch.device = "cpu") -> None:
        self.edges = list(edges)
        self.num_bins = len(self.edges) - 1
        self.sums = torch.zeros(num_units, self.num_bins, dtype=torch.float64, device=device)
        self.counts = torch.zeros(self.num_bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, fmaps: torch.Tensor, depth: torch.Tensor) -> None:
        """Add a batch, image by image (the reference's loader has batch size 1)."""
        if depth.ndim == 3:
            depth = depth.unsqueeze(1)
        for i in range(fmaps.shape[0]):
            disc = discretize(depth[i : i + 1], self.edges)
            self.counts += count_bins(disc, self.num_bins)
            self.sums += sum_on_bins(disc, fmaps[i : i + 1], self.num_bins)

    def selectivity(self) -> torch.Tensor:
        """DS with the argmax bin of ``|mean signed A|``, absent bins as zeros."""
        avg = (self.sums / (self.counts + 1e-15)).abs()
        return selectivity(avg, avg.argmax(-1))
