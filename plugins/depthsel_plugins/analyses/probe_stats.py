"""Streamed sufficient statistics of a closed-form ridge depth probe.

A linear probe predicts a pixel's depth from the ``K`` activations of one
layer at that pixel: ``y_p ≈ x_pᵀ w + b``. Least squares (and ridge) need only
the additive statistics ``n``, ``Σx``, ``Σy``, ``Σy²``, ``XᵀX`` and ``Xᵀy``,
so a probe is fitted in one streaming pass with memory ``O(K²)``: no
activation tensor is stored, two accumulators merge by adding their sums, and
under ``torch.distributed`` every layer's state is summed in *one* all-reduce.

Alignment. ``x_p`` is the layer's activation map bilinearly upsampled to the
ground truth's resolution (``up(A)_p``, the same alignment as the dissection's
Eq. 1), and every valid ground-truth pixel is one sample. We align the
activations to the depth pixels rather than pooling depth to the feature grid
because (i) the probe is then scored on exactly the pixels, and with exactly
the metric protocol, the network's own prediction is scored on; (ii) pooling
depth over a coarse cell averages across occlusion boundaries, producing
targets no pixel has; (iii) it matches the dissection's alignment, so probe and
selectivity numbers describe the same features. The aligned features are
streamed in row blocks of at most 64 MiB (:func:`aligned_rows`), so a wide
layer on a full-resolution frame never builds its upsampled tensor.

The solve. With ``μ = Σx/n``, ``C = XᵀX/n − μμᵀ``, ``c = Xᵀy/n − μ ȳ`` and the
feature scales ``s = sqrt(diag C)``, the probe minimises
``mean((y − Xw − b)²) + ridge · ‖s ⊙ w‖²`` (ridge on standardised features,
intercept not penalised), i.e. ``(D⁻¹CD⁻¹ + ridge·I) w_s = D⁻¹c``, ``w = D⁻¹w_s``,
``b = ȳ − μᵀw``. With ``ridge = 0`` this is ordinary least squares with an
intercept (minimum-norm when rank-deficient).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from depthsel.binning import prepare_depth
from depthsel.errors import DepthselError, ShapeMismatchError

__all__ = ["ProbeStatistics", "ProbeFit", "aligned_features", "aligned_rows", "sync_all", "TARGETS"]

TARGETS = ("depth", "log")
_FIELDS = ("n", "sx", "sy", "syy", "xtx", "xty")


class ProbeError(DepthselError):
    """A probe was fitted or applied with invalid inputs."""


def aligned_features(act: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """``[B, K, h, w]`` activations bilinearly aligned to ``size = (H, W)`` as ``float64 [B, H, W, K]``.

    The plain path (builds the whole upsampled tensor); :func:`aligned_rows` streams it.
    """
    _check_act(act)
    a = act.detach().to(torch.float64)
    if tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=align_corners)
    return a.permute(0, 2, 3, 1)


def _check_act(act: torch.Tensor) -> None:
    if act.ndim != 4:
        raise ShapeMismatchError(
            f"a probe needs [B, K, h, w] activations, got {tuple(act.shape)}; hook a conv layer "
            "or pass adapters={layer: depthsel.TokenGridAdapter(...)}")


def _interp_matrix(n_in: int, n_out: int, align_corners: bool, device: torch.device) -> torch.Tensor:
    """``[n_out, n_in]`` matrix of 1-D linear interpolation (bilinear is separable: ``U_h A U_wᵀ``)."""
    eye = torch.eye(n_in, dtype=torch.float64, device=device)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=align_corners)[0].T


def aligned_rows(act: torch.Tensor, size: tuple[int, int], align_corners: bool = False,
                 max_elements: int = 1 << 23) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Stream one image's aligned features in row blocks: ``(r0, r1, float64 [r1 - r0, W, K])``.

    ``act`` is ``[K, h, w]``. Each block holds at most ``max_elements`` values
    (64 MiB), so a wide layer on a full-resolution frame never materialises the
    whole ``[H, W, K]`` upsampled tensor. Equal to :func:`aligned_features`.
    """
    k, h, w = act.shape
    big_h, big_w = size
    a = act.detach().to(torch.float64)
    u_h = _interp_matrix(h, big_h, align_corners, a.device)
    half = a @ _interp_matrix(w, big_w, align_corners, a.device).T  # [K, h, W]: columns first, once
    step = max(1, max_elements // max(1, big_w * k))
    for r0 in range(0, big_h, step):
        r1 = min(big_h, r0 + step)
        yield r0, r1, torch.einsum("rh,khx->rxk", u_h[r0:r1], half)


def to_target(depth: torch.Tensor, target: str) -> torch.Tensor:
    """Metres to the regression target (``"depth"``: metres, ``"log"``: ln metres)."""
    return depth.log() if target == "log" else depth


def from_target(y: torch.Tensor, target: str) -> torch.Tensor:
    """Regression target back to metres."""
    return y.exp() if target == "log" else y


class ProbeFit:
    """A solved probe: ``pred = up(A)ᵀ weight + bias`` in target space.

    Attributes
    ----------
    weight
        ``float64 [K]``.
    bias
        ``float`` intercept.
    target
        ``"depth"`` or ``"log"``.
    """

    def __init__(self, weight: torch.Tensor, bias: float, target: str = "depth") -> None:
        self.weight, self.bias, self.target = weight.to(torch.float64), float(bias), target

    def predict(self, act: torch.Tensor, size: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
        """Target-space prediction ``float64 [B, H, W]`` at every pixel of ``size``."""
        _check_act(act)
        if act.shape[1] != self.weight.numel():
            raise ShapeMismatchError(f"the probe has {self.weight.numel()} weights but the layer "
                                     f"emits {act.shape[1]} units")
        # Upsampling is linear, so up(A)ᵀw = up(Σ_k w_k A_k): mix the channels first, then
        # upsample one map (never the [B, K, H, W] tensor).
        mixed = torch.einsum("bkhw,k->bhw", act.detach().to(torch.float64), self.weight.to(act.device))
        return aligned_features(mixed[:, None], size, align_corners)[..., 0] + self.bias


class ProbeStatistics:
    """Additive float64 sufficient statistics of one layer's depth probe.

    Parameters
    ----------
    target
        ``"depth"`` (metres) or ``"log"`` (ln metres) as the regression target.
    align_corners
        Bilinear convention of the alignment.
    block_elements
        Most values of one streamed block of aligned features (see :func:`aligned_rows`).
    """

    def __init__(self, target: str = "depth", align_corners: bool = False,
                 block_elements: int = 1 << 23) -> None:
        self.block_elements = max(1, int(block_elements))
        if target not in TARGETS:
            raise ProbeError(f"target must be one of {TARGETS}, got {target!r}")
        self.target, self.align_corners = target, bool(align_corners)
        self.num_features: int | None = None
        self.n = self.sy = self.syy = torch.zeros((), dtype=torch.float64)
        self.sx = self.xty = torch.zeros(0, dtype=torch.float64)
        self.xtx = torch.zeros(0, 0, dtype=torch.float64)

    def _init(self, k: int, device: torch.device) -> None:
        z = dict(dtype=torch.float64, device=device)
        self.num_features = k
        self.n, self.sy, self.syy = (torch.zeros((), **z) for _ in range(3))  # type: ignore[arg-type]
        self.sx, self.xty = torch.zeros(k, **z), torch.zeros(k, **z)  # type: ignore[arg-type]
        self.xtx = torch.zeros(k, k, **z)  # type: ignore[arg-type]

    def update(self, act: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> None:
        """Add one batch.

        Parameters
        ----------
        act
            ``[B, K, h, w]`` activations.
        depth, valid
            Ground truth ``[B, (1,) H, W]`` metres and optional validity mask.
        keep
            Optional ``bool [B, H, W]`` restricting which valid pixels are samples
            (e.g. a random subsample).
        """
        d = prepare_depth(depth, valid).to(torch.float64)
        _check_act(act)
        if act.shape[0] != d.shape[0]:
            raise ShapeMismatchError(f"activations {tuple(act.shape)} do not match depth {tuple(d.shape)}")
        if self.num_features is None:
            self._init(int(act.shape[1]), act.device)
        if act.shape[1] != self.num_features:
            raise ShapeMismatchError(f"layer emitted {act.shape[1]} units, earlier batches {self.num_features}")
        mask = d > 0
        if keep is not None:
            mask &= keep.to(mask.device)
        for i in range(act.shape[0]):
            m = mask[i]
            if not bool(m.any()):
                continue
            for r0, r1, rows in aligned_rows(act[i], tuple(d.shape[-2:]), self.align_corners,
                                           self.block_elements):
                mr = m[r0:r1]
                x, y = rows[mr], to_target(d[i, r0:r1][mr], self.target)
                self.n = self.n + y.numel()
                self.sx = self.sx + x.sum(0)
                self.sy, self.syy = self.sy + y.sum(), self.syy + (y * y).sum()
                self.xtx = self.xtx + x.T @ x
                self.xty = self.xty + x.T @ y

    # ---------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Tensors and settings; :meth:`load_state_dict` restores them."""
        return {"target": self.target, "align_corners": self.align_corners,
                "num_features": self.num_features, **{f: getattr(self, f).clone() for f in _FIELDS}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.target, self.align_corners = state["target"], bool(state["align_corners"])
        self.num_features = state["num_features"]
        for f in _FIELDS:
            setattr(self, f, state[f].to(torch.float64))

    def merge(self, other: "ProbeStatistics") -> "ProbeStatistics":
        """Add ``other``'s sums (same layer, other data); returns ``self``."""
        if other.num_features is None:
            return self
        if self.num_features is None:
            self.load_state_dict(other.state_dict())
            return self
        if other.num_features != self.num_features or other.target != self.target:
            raise ProbeError("cannot merge probe statistics of different layers or targets")
        for f in _FIELDS:
            setattr(self, f, getattr(self, f) + getattr(other, f).to(getattr(self, f).device))
        return self

    def flat(self) -> torch.Tensor:
        """All sums as one float64 vector (the all-reduce buffer)."""
        return torch.cat([getattr(self, f).reshape(-1) for f in _FIELDS])

    def set_flat(self, vec: torch.Tensor) -> None:
        """Inverse of :meth:`flat`."""
        i = 0
        for f in _FIELDS:
            t = getattr(self, f)
            setattr(self, f, vec[i:i + t.numel()].reshape(t.shape).clone())
            i += t.numel()

    # ---------------------------------------------------------- solve
    def solve(self, ridge: float = 1e-4) -> ProbeFit:
        """Closed-form ridge solution (see the module docstring)."""
        if self.num_features is None or float(self.n) < 2:
            raise ProbeError("the probe saw fewer than 2 valid pixels; give the training split more data")
        if not (ridge >= 0 and math.isfinite(ridge)):
            raise ProbeError(f"ridge must be a finite number >= 0, got {ridge}")
        n = self.n
        mu, ybar = self.sx / n, self.sy / n
        cov = self.xtx / n - torch.outer(mu, mu)
        cxy = self.xty / n - mu * ybar
        scale = cov.diagonal().clamp_min(0).sqrt()
        # Constant (e.g. dead) units have no scale: leave them unscaled; they get weight 0.
        tiny = 1e-12 * float(scale.max()) if scale.numel() else 0.0
        scale = torch.where(scale > tiny, scale, torch.ones_like(scale))
        cs = cov / scale[:, None] / scale[None, :]
        rhs = cxy / scale
        a = cs + ridge * torch.eye(cs.shape[0], dtype=cs.dtype, device=cs.device)
        ws = torch.linalg.lstsq(a.cpu(), rhs.cpu()[:, None], driver="gelsd").solution[:, 0]
        w = ws.to(scale.device) / scale
        return ProbeFit(w, float(ybar - mu @ w), self.target)


def sync_all(stats: list[ProbeStatistics]) -> None:
    """Sum every accumulator over ``torch.distributed`` ranks with a single all-reduce.

    A no-op outside a distributed run. Every rank must hold initialised
    accumulators for the same layers, in the same order.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if any(s.num_features is None for s in stats):
        raise ProbeError("a rank saw no data for the probe; use fewer processes than samples")
    flats = [s.flat() for s in stats]
    buf = torch.cat(flats)
    dist.all_reduce(buf)
    i = 0
    for s, f in zip(stats, flats):
        s.set_flat(buf[i:i + f.numel()])
        i += f.numel()
