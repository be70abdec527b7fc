"""Per-unit permutation test of depth selectivity on a streamed pixel sample.

The exact null distribution of a unit's DS would need the whole dissection
pass repeated with shuffled depth bins. Instead, during the single streaming
pass, :class:`PixelReservoir` keeps a *uniform random sample without
replacement* of at most ``size`` valid pixels of the whole dataset (priority
sampling: every valid pixel draws a uniform key and the ``size`` smallest keys
are kept), together with each pixel's bin and the bilinearly aligned activation
of every unit there. :func:`permutation_pvalues` then recomputes each unit's DS
on that sample ``N`` times with the bin labels shuffled over the sampled pixels.

Approximations, stated once so the docs and results can point here:

* The observed DS used by the test is the DS *of the sample* (``sample_ds``),
  not the full-data DS; with ``size`` pixels it is close but not equal.
* The null hypothesis is "bin labels are exchangeable over pixels". Pixels of
  one image are spatially correlated, so a unit tracking any smooth image-level
  quantity can look selective: the p-values are optimistic (anti-conservative)
  for real feature maps and are meant for screening, not for a publication claim.
* Bin counts are invariant under a permutation, so which bins are present is
  the same in every permutation and the ``absent`` policy applies unchanged.
"""

from __future__ import annotations

import torch

from depthsel.alignment import interp_weights
from depthsel.errors import ShapeMismatchError
from depthsel.selectivity import selectivity_from_stats

__all__ = ["PixelReservoir", "binned_responses", "sample_selectivity", "permutation_pvalues"]

# Elements per chunk of the batched permutation scatter: bounds peak memory.
_CHUNK_ELEMENTS = 16_000_000


def _two_taps(out_size: int, in_size: int, align_corners: bool,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and weights ``[out, 2]`` of the bilinear kernel, read off the dense matrix."""
    u = interp_weights(out_size, in_size, align_corners).to(device)
    # Each row has at most two non-zeros; a missing second tap gets weight 0.
    w, i = torch.topk(u, k=min(2, in_size), dim=1)
    if in_size == 1:
        w, i = torch.cat([w, torch.zeros_like(w)], 1), torch.cat([i, i], 1)
    return i, w


class PixelReservoir:
    """Uniform sample of valid pixels over a stream, with their aligned activations.

    Parameters
    ----------
    size
        Maximum number of pixels kept.
    align_corners
        Bilinear convention used to align activations with depth pixels; must
        match the dissection's.
    """

    def __init__(self, size: int, *, align_corners: bool = False) -> None:
        if size < 1:
            raise ShapeMismatchError(f"permutation_samples must be >= 1, got {size}")
        self.size = int(size)
        self.align_corners = align_corners
        self.keys = torch.empty(0, dtype=torch.float64)
        self.bins = torch.empty(0, dtype=torch.long)
        self.acts: torch.Tensor | None = None
        self.pixels_seen = 0

    @torch.no_grad()
    def update(self, act: torch.Tensor, bins: torch.Tensor, keys: torch.Tensor) -> None:
        """Offer one batch.

        Parameters
        ----------
        act
            ``[B, K, h, w]`` feature maps.
        bins
            ``int64 [B, H, W]``, ``-1`` invalid.
        keys
            ``float64 [B, H, W]`` uniform random keys (shared by all layers so
            that every layer samples the same pixels).
        """
        bsz, _, h, w = act.shape
        height, width = bins.shape[-2:]
        valid = bins >= 0
        n_valid = int(valid.sum())
        self.pixels_seen += n_valid
        if n_valid == 0:
            return
        flat = torch.where(valid, keys.to(bins.device), torch.full_like(keys, float("inf"),
                                                                          device=bins.device)).flatten()
        cand, idx = torch.topk(flat, min(self.size, n_valid), largest=False)
        if self.keys.numel() >= self.size:
            # Only keys below the current maximum can enter a full reservoir.
            keep = cand < float(self.keys.max())
            cand, idx = cand[keep], idx[keep]
            if cand.numel() == 0:
                return
        b = idx // (height * width)
        rem = idx % (height * width)
        py, px = rem // width, rem % width
        iy, wy = _two_taps(height, h, self.align_corners, act.device)
        ix, wx = _two_taps(width, w, self.align_corners, act.device)
        grid = act.detach().permute(0, 2, 3, 1)  # [B, h, w, K]: gathers give [n, K]
        vals = torch.zeros(idx.numel(), act.shape[1], dtype=torch.float64, device=act.device)
        for a in range(2):
            for c in range(2):
                weight = (wy[py, a] * wx[px, c]).unsqueeze(1)
                vals += weight * grid[b, iy[py, a], ix[px, c]].to(torch.float64)
        new_bins = bins.flatten()[idx]
        keys_all = torch.cat([self.keys, cand.double().cpu()])
        bins_all = torch.cat([self.bins, new_bins.cpu()])
        acts_all = vals.float().cpu() if self.acts is None else torch.cat([self.acts, vals.float().cpu()])
        order = torch.argsort(keys_all)[: self.size]
        self.keys, self.bins, self.acts = keys_all[order], bins_all[order], acts_all[order]

    def __len__(self) -> int:
        return int(self.keys.numel())


def binned_responses(values: torch.Tensor, bins: torch.Tensor, num_bins: int,
                     signed_then_abs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin responses ``[K, Nb]`` of sampled pixels and the ``bool [Nb]`` present mask.

    ``signed_then_abs=False``: mean of ``|a|``; ``True``: ``|mean of a|`` (reference).
    """
    v = values.double()
    v = v if signed_then_abs else v.abs()
    sums = torch.zeros(num_bins, v.shape[1], dtype=torch.float64).index_add_(0, bins, v)
    counts = torch.bincount(bins, minlength=num_bins).double()
    r = (sums / counts.clamp(min=1).unsqueeze(1)).T
    return (r.abs() if signed_then_abs else r), counts > 0


def sample_selectivity(values: torch.Tensor, bins: torch.Tensor, num_bins: int, *,
                       signed_then_abs: bool, absent: str) -> torch.Tensor:
    """Argmax-bin DS ``[K]`` of each unit on a pixel sample (NaN where undefined)."""
    r, present = binned_responses(values, bins, num_bins, signed_then_abs)
    ds, defined = selectivity_from_stats(r, present, None, absent=absent)
    return torch.where(defined, ds, torch.full_like(ds, float("nan")))


@torch.no_grad()
def permutation_pvalues(
    values: torch.Tensor,
    bins: torch.Tensor,
    num_bins: int,
    *,
    permutations: int,
    signed_then_abs: bool = False,
    absent: str = "exclude",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sided permutation p-value of each unit's DS.

    Parameters
    ----------
    values
        ``[S, K]`` aligned activations of ``S`` sampled pixels.
    bins
        ``int64 [S]`` their bins.
    num_bins
        ``Nb``.
    permutations
        Number of label shuffles ``N``.
    signed_then_abs, absent
        The preset's response definition and absent-bin policy.
    seed
        Seed of the shuffles.

    Returns
    -------
    sample_ds, pvalues
        ``[K]`` observed DS on the sample and ``p = (1 + #{DS_perm >= DS_obs}) / (1 + N)``
        (NaN where DS is undefined).
    """
    s, k = values.shape
    if bins.shape != (s,):
        raise ShapeMismatchError(f"bins must be [{s}], got {tuple(bins.shape)}")
    observed = sample_selectivity(values, bins, num_bins, signed_then_abs=signed_then_abs,
                                  absent=absent)
    if permutations < 1 or s == 0:
        return observed, torch.full_like(observed, float("nan"))
    v = values.double()
    v = v if signed_then_abs else v.abs()
    counts = torch.bincount(bins, minlength=num_bins).double()
    present = counts > 0
    g = torch.Generator().manual_seed(int(seed))
    exceed = torch.zeros(k, dtype=torch.float64)
    chunk = max(1, min(permutations, _CHUNK_ELEMENTS // max(1, s * k)))
    done = 0
    while done < permutations:
        p = min(chunk, permutations - done)
        perm_bins = bins[torch.argsort(torch.rand(p, s, generator=g), dim=1)]
        flat = (perm_bins + torch.arange(p).unsqueeze(1) * num_bins).flatten()
        sums = torch.zeros(p * num_bins, k, dtype=torch.float64).index_add_(0, flat, v.repeat(p, 1))
        r = sums.view(p, num_bins, k) / counts.clamp(min=1).view(1, num_bins, 1)
        r = r.abs() if signed_then_abs else r
        r = r.permute(0, 2, 1).reshape(p * k, num_bins)
        ds, _ = selectivity_from_stats(r, present, None, absent=absent)
        # A tiny tolerance makes ties (e.g. dead units, DS 0 everywhere) count as exceedances.
        exceed += (ds.view(p, k) >= observed.unsqueeze(0) - 1e-12).double().sum(0)
        done += p
    pvals = (1.0 + exceed) / (1.0 + permutations)
    return observed, torch.where(torch.isnan(observed), observed, pvals)
