"""A calibrated permutation test of depth selectivity: whole depth maps are shuffled across images.

Why images and not pixels
-------------------------
Neighbouring pixels share both activation and depth, so pixels are not
exchangeable: shuffling bin labels pixel by pixel destroys the spatial
correlation the real statistic keeps, and the test flagged 62% of a random
network's units on depth maps that had been shuffled across images (so no unit
could truly select depth). What *is* exchangeable under the null "a unit's
response is unrelated to this image's depth" is the pairing of each image with
its depth map. The test keeps every image's activations and every depth map
whole and re-pairs them at random: spatial structure, per-image depth
statistics and bin counts all survive each permutation.

What it tests, in one sentence: does unit ``k`` respond to *this image's* depth
more selectively than it would to the depth map of another image of the same
dataset? A unit that only tracks image position (floor at the bottom) is not
significant when every image has its floor at the bottom; that is intended.

How it is computed
------------------
:class:`ImageReservoir` keeps a uniform random sample of at most
``max_images`` images (priority sampling with one key per image), storing
each image's activations at the layer's resolution and its bin map. At the end
the bilinear adjoint turns every bin map into weight maps ``W_j [Nb, h, w]``
and one matrix product gives ``G[i, j] = <A_i, W_j> [K, Nb]``: the binned sums
of image ``i``'s activations under image ``j``'s depth. A permutation ``pi`` then
costs a gather: ``S = sum_i G[i, pi(i)]``. Counts per bin are invariant under
re-pairing, so ``R = S / counts`` and the present-bin mask are too.

``p = (1 + #{DS_perm >= DS_obs}) / (1 + N)``; the smallest attainable value is
``1 / (1 + N)``, and with ``m`` images there are only ``m!`` distinct
pairings, so a test on fewer than 5 images cannot reach ``p < 0.05``. Images
of different sizes are only re-paired within their own size group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import torch

from depthsel.alignment import bin_weight_maps
from depthsel.binning import Binner
from depthsel.consumer import Consumer
from depthsel.errors import ShapeMismatchError
from depthsel.selectivity import selectivity_from_stats

__all__ = ["ImageReservoir", "PermutationTest", "image_permutation_test"]

# Elements of the [P, m, K, Nb] gather per permutation chunk: bounds peak memory.
_CHUNK_ELEMENTS = 8_000_000
# Above this many multiply-adds the Gram product runs in float32 (still summed per bin).
_FLOAT64_MACS = 2e9


def image_keys(indices: torch.Tensor, seed: int) -> torch.Tensor:
    """``float64 [B]`` uniform keys, a pure function of (seed, dataset index).

    Every layer's reservoir, every rank of a distributed pass and a resumed pass
    draw the same key for the same image, so they all keep the same images.
    """
    out = [np.random.default_rng([int(seed) & 0xFFFFFFFF, int(i), 0x5E1EC7]).random() for i in indices.tolist()]
    return torch.tensor(out, dtype=torch.float64)


class ImageReservoir(Consumer):
    """A uniform random sample of whole images of a stream, with one layer's activations.

    The images with the ``max_images`` smallest keys (:func:`image_keys`) are
    kept, sorted by key: the sample depends only on which images were seen, not
    on batch order, resumption or the number of processes.

    Parameters
    ----------
    max_images
        Most images kept.
    signed
        Keep signed activations (reference preset, ``|mean A|``) instead of ``|A|``.
    layer, binner, seed
        For use as a stream consumer: the layer read from each
        :class:`~depthsel.stream.BatchView`, the binner of its ground truth, and the
        seed of the image keys.
    """

    def __init__(self, max_images: int, *, signed: bool = False, layer: str | None = None,
                 binner: Binner | None = None, seed: int = 0) -> None:
        super().__init__()
        if max_images < 1:
            raise ShapeMismatchError(f"permutation_images must be >= 1, got {max_images}")
        self.max_images = int(max_images)
        self.signed = signed
        self.layer, self.binner, self.seed = layer, binner, int(seed)
        self.add_state("keys", [], reduce="cat")
        self.add_state("acts", [], reduce="cat")
        self.add_state("bins", [], reduce="cat")
        self.add_state("seen", torch.zeros((), dtype=torch.int64))

    @property
    def images_seen(self) -> int:
        """Images with a valid pixel offered so far."""
        return int(self.seen)

    @torch.no_grad()
    def update(self, act: Any, bins: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> None:
        """Offer a batch: ``act [B, K, h, w]``, ``bins int64 [B, H, W]``, ``keys float64 [B]``, or a view."""
        if bins is None and hasattr(act, "binned"):
            if self.layer is None or self.binner is None:
                raise ShapeMismatchError("a reservoir fed by a stream needs layer= and binner=")
            view = act
            act = view.activations[self.layer]
            bins, keys = view.binned.bins(self.binner), image_keys(view.indices, self.seed)
        assert bins is not None and keys is not None
        if act.ndim != 4 or bins.ndim != 3 or act.shape[0] != bins.shape[0] or keys.shape != (act.shape[0],):
            raise ShapeMismatchError(
                f"reservoir update needs act [B,K,h,w], bins [B,H,W], keys [B]; got "
                f"{tuple(act.shape)}, {tuple(bins.shape)}, {tuple(keys.shape)}")
        valid = (bins >= 0).flatten(1).any(1)
        for b in range(act.shape[0]):
            if not bool(valid[b]):
                continue  # an image with no valid pixel carries nothing to re-pair
            self.seen += 1
            a = act[b].detach().to("cpu", torch.float32)
            self.keys.append(keys[b].detach().to("cpu", torch.float64).reshape(()))
            self.acts.append(a if self.signed else a.abs())
            self.bins.append(bins[b].detach().to("cpu", torch.int64))
        self.after_merge()

    def after_merge(self) -> None:
        """Keep the ``max_images`` smallest keys, in key order."""
        order = sorted(range(len(self.keys)), key=lambda i: float(self.keys[i]))[: self.max_images]
        self.keys = [self.keys[i] for i in order]
        self.acts = [self.acts[i] for i in order]
        self.bins = [self.bins[i] for i in order]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class PermutationTest:
    """Outcome of :func:`image_permutation_test` for one layer.

    Attributes
    ----------
    sample_ds, sample_target_ds
        ``[K]`` argmax and target DS on the sampled images (NaN where undefined).
    pvalue, pvalue_target
        ``[K]`` one-sided p-values of those two statistics.
    per_image_sums, per_image_counts
        ``[m, K, Nb]`` binned sums of each sampled image under its own depth
        and ``[m, Nb]`` its pixel counts: additive, for a bootstrap over images.
    images, permutations, distinct_pairings
        Sample size, number of shuffles, and ``m!`` (capped) pairings possible.
    """

    sample_ds: torch.Tensor
    sample_target_ds: torch.Tensor
    pvalue: torch.Tensor
    pvalue_target: torch.Tensor
    per_image_sums: torch.Tensor
    per_image_counts: torch.Tensor
    images: int
    permutations: int
    distinct_pairings: float


def _groups(res: ImageReservoir) -> list[list[int]]:
    """Indices of stored images that share activation and depth sizes."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (a, b) in enumerate(zip(res.acts, res.bins)):
        by_shape.setdefault(tuple(a.shape) + tuple(b.shape), []).append(i)
    return list(by_shape.values())


def _gram(res: ImageReservoir, idx: list[int], num_bins: int,
          align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``G [m, m, K, Nb]`` (image i's activations under image j's depth) and counts ``[m, Nb]``."""
    acts = torch.stack([res.acts[i] for i in idx])  # [m, K, h, w]
    bins = torch.stack([res.bins[i] for i in idx])  # [m, H, W]
    m, k, h, w = acts.shape
    dtype = torch.float64 if m * m * k * num_bins * h * w < _FLOAT64_MACS else torch.float32
    wmaps = bin_weight_maps(bins, num_bins, (h, w), align_corners, dtype=dtype)  # [m, Nb, h, w]
    counts = torch.stack([torch.bincount(b[b >= 0], minlength=num_bins) for b in bins]).double()
    g = acts.to(dtype).reshape(m * k, h * w) @ wmaps.reshape(m * num_bins, h * w).T
    return g.view(m, k, m, num_bins).permute(0, 2, 1, 3).double().contiguous(), counts


def _ds(sums: torch.Tensor, counts: torch.Tensor, assigned: torch.Tensor | None, signed: bool,
        absent: str) -> torch.Tensor:
    """DS ``[P, K]`` of summed responses ``[P, K, Nb]`` (NaN where undefined)."""
    p, k, nb = sums.shape
    r = sums / counts.clamp(min=1).view(1, 1, nb)
    r = r.abs() if signed else r
    target = None if assigned is None else assigned.repeat(p)
    ds, defined = selectivity_from_stats(r.reshape(p * k, nb), counts > 0, target, absent=absent)
    return torch.where(defined, ds, torch.full_like(ds, float("nan"))).view(p, k)


@torch.no_grad()
def image_permutation_test(
    res: ImageReservoir,
    num_bins: int,
    assigned: torch.Tensor,
    *,
    permutations: int,
    align_corners: bool = False,
    absent: str = "exclude",
    seed: int = 0,
) -> PermutationTest:
    """Permutation p-values of each unit's argmax and target DS, re-pairing whole depth maps.

    Parameters
    ----------
    res
        The filled reservoir of one layer.
    num_bins
        ``Nb`` of the layer's binner.
    assigned
        ``int64 [K]`` assigned bins (for the target-DS test).
    permutations
        Number of random re-pairings ``N``.
    align_corners, absent
        The dissection's alignment convention and absent-bin policy.
    seed
        Seed of the re-pairings.
    """
    if len(res) == 0:
        raise ShapeMismatchError("the permutation reservoir holds no image with a valid pixel")
    groups = _groups(res)
    grams = [_gram(res, idx, num_bins, align_corners) for idx in groups]
    counts = sum(c.sum(0) for _, c in grams)
    eye = [g[torch.arange(len(i)), torch.arange(len(i))] for (g, _), i in zip(grams, groups)]
    observed_sums = sum(e.sum(0) for e in eye).unsqueeze(0)  # [1, K, Nb]
    obs = _ds(observed_sums, counts, None, res.signed, absent)[0]
    obs_t = _ds(observed_sums, counts, assigned, res.signed, absent)[0]
    k = obs.shape[0]
    exceed = torch.zeros(k, dtype=torch.float64)
    exceed_t = torch.zeros(k, dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    largest = max(len(i) for i in groups)
    chunk = max(1, min(permutations, _CHUNK_ELEMENTS // max(1, largest * k * num_bins)))
    done = 0
    while done < permutations:
        p = min(chunk, permutations - done)
        sums = torch.zeros(p, k, num_bins, dtype=torch.float64)
        for (g, _), idx in zip(grams, groups):
            m = len(idx)
            pi = torch.argsort(torch.rand(p, m, generator=gen), dim=1)
            sums += g[torch.arange(m).unsqueeze(0), pi].sum(1)
        # A tiny tolerance counts exact ties (dead units, the identity pairing) as exceedances.
        exceed += (_ds(sums, counts, None, res.signed, absent) >= obs - 1e-12).double().sum(0)
        exceed_t += (_ds(sums, counts, assigned, res.signed, absent) >= obs_t - 1e-12).double().sum(0)
        done += p
    pv = (1.0 + exceed) / (1.0 + permutations)
    pv_t = (1.0 + exceed_t) / (1.0 + permutations)
    order = [i for idx in groups for i in idx]
    per_image = torch.cat(eye)  # in group order
    per_counts = torch.cat([c for _, c in grams])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    pairings = float(math.prod(math.factorial(min(len(i), 20)) for i in groups))
    return PermutationTest(
        sample_ds=obs, sample_target_ds=obs_t,
        pvalue=torch.where(torch.isnan(obs), obs, pv),
        pvalue_target=torch.where(torch.isnan(obs_t), obs_t, pv_t),
        per_image_sums=per_image[inverse], per_image_counts=per_counts[inverse],
        images=len(res), permutations=int(permutations), distinct_pairings=pairings,
    )


def test_tensors(test: PermutationTest) -> dict[str, torch.Tensor]:
    """The per-unit tensors a dissection result stores for a test."""
    from depthsel.stats import benjamini_hochberg

    q = torch.from_numpy(benjamini_hochberg(test.pvalue.numpy()))
    q_t = torch.from_numpy(benjamini_hochberg(test.pvalue_target.numpy()))
    return {"sample_ds": test.sample_ds, "sample_target_ds": test.sample_target_ds, "pvalue": test.pvalue,
            "pvalue_target": test.pvalue_target, "qvalue": q, "qvalue_target": q_t}


def significance_summary(test: PermutationTest, tensors: dict[str, torch.Tensor] | None = None,
                         alpha: float = 0.05) -> dict[str, object]:
    """Layer summary of a test: significant fractions, raw and Benjamini-Hochberg corrected.

    ``frac_significant`` counts ``p < alpha`` (argmax DS); ``frac_significant_bh``
    counts units whose BH-adjusted value is ``<= alpha`` (false-discovery rate
    ``alpha`` over the layer's units); the ``_target`` pair does the same for
    target DS. ``min_pvalue`` is the smallest value the test could return.
    ``tensors`` is :func:`test_tensors` of ``test`` when the caller already has it.
    """
    tensors = test_tensors(test) if tensors is None else tensors  # q-values computed once per test
    out: dict[str, object] = {"perm_images": test.images, "permutations": test.permutations,
                              "min_pvalue": max(1.0 / (1 + test.permutations), 1.0 / test.distinct_pairings),
                              "alpha": alpha}
    for suffix, p, q in (("", tensors["pvalue"], tensors["qvalue"]),
                         ("_target", tensors["pvalue_target"], tensors["qvalue_target"])):
        ok = ~torch.isnan(p)
        n = int(ok.sum())
        out[f"frac_significant{suffix}"] = float((p[ok] < alpha).double().mean()) if n else None
        out[f"frac_significant_bh{suffix}"] = float((q[ok] <= alpha).double().mean()) if n else None
    if out["min_pvalue"] >= alpha:  # type: ignore[operator]
        out["warning"] = (f"with {test.images} images only {test.distinct_pairings:.0f} pairings exist: "
                          f"no p-value can fall below {alpha}; dissect more images")
    return out
