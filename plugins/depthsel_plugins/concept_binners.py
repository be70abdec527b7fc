"""Concept binners computed from the depth map alone: surface orientation and depth boundaries.

You et al. (2021) name occlusion boundaries and surface normals as the next
concepts to dissect. Both follow from the ground-truth depth, so they need no
new labels. They are ordinary :class:`~depthsel.Binner` plugins: each maps a
depth batch (and its validity mask) to one *categorical* bin per pixel, ``-1``
where the concept is undefined, so dissection (``--set binner=normals``), the
selectivity regulariser and the report use them unchanged. Their ``edges``
are the category indices ``0, 1, ..., Nb`` (not metres) and ``labels`` names
the bins; bin ``i`` is ``labels[i]``.

Both work on inverse depth ``z = 1/d``, because a plane's inverse depth is an
*affine* function of the pixel coordinates under any pinhole camera: its second
differences are exactly 0 on a plane, non-zero only at creases and occlusions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from depthsel import Binner
from depthsel.binning import prepare_depth
from depthsel.errors import BinCountError

__all__ = ["NormalBinner", "BoundaryBinner", "StratifiedBinner", "CAMERAS", "camera_intrinsics", "surface_normals",
           "occlusion_edges", "register_concept_binners"]

#: Known cameras: ``(fx, fy, cx, cy)`` in pixels of a ``(H, W)`` frame.
CAMERAS: dict[str, tuple[tuple[float, float, float, float], tuple[int, int]]] = {
    # NYU Depth V2 colour camera (Silberman et al. 2012 toolbox, camera_params.m).
    "nyu": ((518.857901, 519.469611, 325.582449, 253.736166), (480, 640)),
    # Microsoft 7-Scenes: the dataset's stated Kinect intrinsics.
    "7scenes": ((585.0, 585.0, 320.0, 240.0), (480, 640)),
}
#: Default for unknown intrinsics: a 60 degree horizontal field of view, square
#: pixels, principal point at the centre (the Kinect v1 spans 57-63 degrees).
DEFAULT_HFOV_DEG = 60.0


def camera_intrinsics(size: tuple[int, int], *, camera: str | None = None,
                      intrinsics: tuple[float, float, float, float] | None = None,
                      intrinsics_size: tuple[int, int] | None = None,
                      hfov_deg: float = DEFAULT_HFOV_DEG) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` for a ``size = (H, W)`` depth map.

    Intrinsics given for another frame size (``intrinsics_size``, or the
    camera preset's) are scaled per axis, which is right for a resized frame
    (the depthsel datasets resize, they do not crop). ``cx, cy`` use the
    pixel-centre convention: ``c' = (c + 0.5) * scale - 0.5``. Without
    ``camera`` or ``intrinsics``: a ``hfov_deg`` horizontal field of view.
    """
    h, w = size
    if camera is not None:
        if camera not in CAMERAS:
            raise BinCountError(f"unknown camera {camera!r}; use one of {sorted(CAMERAS)} or intrinsics=")
        intrinsics, intrinsics_size = CAMERAS[camera]
    if intrinsics is None:
        if not 0 < hfov_deg < 180:
            raise BinCountError(f"hfov_deg must lie in (0, 180), got {hfov_deg}")
        f = (w / 2) / math.tan(math.radians(hfov_deg) / 2)
        return f, f, (w - 1) / 2, (h - 1) / 2
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    if not (fx > 0 and fy > 0):
        raise BinCountError(f"focal lengths must be > 0, got fx={fx}, fy={fy}")
    h0, w0 = intrinsics_size if intrinsics_size is not None else (h, w)
    sx, sy = w / float(w0), h / float(h0)
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]``; NaN outside the frame."""
    h, w = t.shape[-2:]
    out = torch.full_like(t, math.nan)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def _inverse_depth(depth: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    d = prepare_depth(depth, valid).to(torch.float64)
    return torch.where(d > 0, 1.0 / d, torch.full_like(d, math.nan))


def surface_normals(depth: torch.Tensor, valid: torch.Tensor | None = None, *,
                    intrinsics: tuple[float, float, float, float], step: int = 1,
                    crease_threshold: float = 0.05) -> torch.Tensor:
    """Unit camera-frame normals ``float64 [B, 3, H, W]`` facing the camera; NaN where undefined.

    Points are back-projected, ``P = d · ((u − cx)/fx, (v − cy)/fy, 1)`` (x right,
    y down, z forward), and the normal is ``(P(v+s) − P(v−s)) × (P(u+s) − P(u−s))``,
    exact on a plane. A normal is undefined where a stencil pixel is invalid or
    where the stencil straddles a crease or an occlusion: relative second
    difference of inverse depth ``|z(+s) − 2z + z(−s)| / z > crease_threshold``.
    """
    z = _inverse_depth(depth, valid)
    b, h, w = z.shape
    fx, fy, cx, cy = intrinsics
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=z.device),
                          torch.arange(w, dtype=torch.float64, device=z.device), indexing="ij")
    d = 1.0 / z
    pts = torch.stack([d * (u - cx) / fx, d * (v - cy) / fy, d], 1)  # [B, 3, H, W]
    du = _shift(pts, 0, step) - _shift(pts, 0, -step)
    dv = _shift(pts, step, 0) - _shift(pts, -step, 0)
    n = torch.cross(dv, du, dim=1)
    n = n / n.norm(dim=1, keepdim=True)
    # Face the camera: n . P < 0 (only noise can flip it for a visible surface).
    n = torch.where((n * pts).sum(1, keepdim=True) > 0, -n, n)
    bend = torch.zeros_like(z)
    for dy, dx in ((0, step), (step, 0)):
        second = (_shift(z, dy, dx) - 2 * z + _shift(z, -dy, -dx)).abs() / z
        bend = torch.maximum(bend, torch.nan_to_num(second, nan=math.inf))
    bad = ~(bend <= crease_threshold) | torch.isnan(n).any(1)
    return torch.where(bad[:, None], torch.full_like(n, math.nan), n)


def occlusion_edges(depth: torch.Tensor, valid: torch.Tensor | None = None, *,
                    threshold: float = 0.1) -> torch.Tensor:
    """``bool [B, H, W]``: pixels on either side of a depth discontinuity.

    For each 4-neighbour pair ``(p, q)`` the step of inverse depth ``z(q) − z(p)``
    is compared with the steps just before and after it along the same line;
    the excess is the smaller of the two differences, and a neighbouring step
    that does not exist (frame border, invalid pixel) counts as 0. A plane's steps are all equal, and a crease
    changes them gradually; an occlusion makes one step stand out from both
    neighbours. The pair is an edge when the excess exceeds
    ``threshold · max(z(p), z(q))``; for a jump
    from ``d1`` to ``d2 > d1`` on a fronto-parallel pair that is
    ``(d2 − d1) / d2 > threshold``. Pairs with an invalid pixel are not edges.
    """
    z = _inverse_depth(depth, valid)
    edge = torch.zeros(z.shape, dtype=torch.bool, device=z.device)
    for dy, dx in ((0, 1), (1, 0)):
        zq = _shift(z, dy, dx)
        step = zq - z
        before, after = z - _shift(z, -dy, -dx), _shift(z, 2 * dy, 2 * dx) - zq
        # An occlusion step differs from *both* neighbouring steps; the pair next to a
        # jump differs from one only, so the smaller difference is the test statistic.
        # A neighbouring step that does not exist (frame border, invalid pixel) counts as flat.
        before, after = before.nan_to_num(nan=0.0), after.nan_to_num(nan=0.0)
        excess = torch.minimum((step - before).abs(), (step - after).abs())
        pair = excess > threshold * torch.maximum(z, zq)
        pair &= ~(torch.isnan(z) | torch.isnan(zq))
        edge |= pair
        edge |= _shift(pair.to(torch.float64), -dy, -dx).nan_to_num(0.0).bool()  # the q side
    return edge


class _ConceptBinner(Binner):
    """Categorical bins: ``edges`` are the category indices ``0..Nb``, ``labels`` their names."""

    labels: tuple[str, ...] = ()

    def _check_labels(self, labels: list[str] | None) -> None:
        # Configs record the labels for readers; rebuilding from one must not change them.
        if labels is not None and tuple(labels) != self.labels:
            raise BinCountError(f"{self.name} bins are {list(self.labels)}, not {list(labels)}")

    @property
    def edges(self) -> torch.Tensor:
        return torch.arange(len(self.labels) + 1, dtype=torch.float64)


class NormalBinner(_ConceptBinner):
    """Surface orientation in the camera frame: floor, wall-left, wall-right, ceiling, facing-camera.

    Each pixel takes the direction, among up ``(0, −1, 0)``, right ``(1, 0, 0)``
    (a left-hand wall faces right), left ``(−1, 0, 0)``, down ``(0, 1, 0)`` and
    towards the camera ``(0, 0, −1)``, closest to its normal
    (:func:`surface_normals`). Orientation is relative to the camera, which
    suits the roughly level cameras of NYU and 7-Scenes; a rolled or pitched
    camera mixes floor and wall.

    Parameters
    ----------
    camera
        ``"nyu"`` or ``"7scenes"`` (known Kinect intrinsics), or ``None``.
    intrinsics, intrinsics_size
        ``(fx, fy, cx, cy)`` in pixels of an ``(H, W)`` frame (default: the
        depth map's own size); scaled to the batch's resolution.
    hfov_deg
        Without ``camera``/``intrinsics``: the documented default for unknown
        intrinsics, a 60° horizontal field of view with centred principal point.
    step
        Half-width of the central differences, in pixels.
    crease_threshold
        See :func:`surface_normals`.
    min_alignment
        Pixels whose best cosine is below this get ``-1`` (0 keeps all).
    """

    name = "normals"
    labels = ("floor", "wall-left", "wall-right", "ceiling", "facing-camera")
    _DIRECTIONS = ((0.0, -1.0, 0.0), (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0))

    def __init__(self, camera: str | None = None, intrinsics: list[float] | None = None,
                 intrinsics_size: list[int] | None = None, hfov_deg: float = DEFAULT_HFOV_DEG,
                 step: int = 1, crease_threshold: float = 0.05, min_alignment: float = 0.0,
                 labels: list[str] | None = None) -> None:
        self._check_labels(labels)
        if intrinsics is not None and len(intrinsics) != 4:
            raise BinCountError(f"intrinsics must be [fx, fy, cx, cy], got {intrinsics!r}")
        if intrinsics_size is not None and (len(intrinsics_size) != 2 or min(intrinsics_size) < 1):
            raise BinCountError(f"intrinsics_size must be [H, W], got {intrinsics_size!r}")
        if not isinstance(step, int) or step < 1:
            raise BinCountError(f"step must be a positive integer, got {step!r}")
        if not crease_threshold > 0 or not -1 <= min_alignment < 1:
            raise BinCountError("need crease_threshold > 0 and -1 <= min_alignment < 1")
        camera_intrinsics((8, 8), camera=camera, intrinsics=intrinsics,  # validate now, not per batch
                          intrinsics_size=intrinsics_size, hfov_deg=hfov_deg)
        self.camera, self.hfov_deg, self.step = camera, float(hfov_deg), step
        self.intrinsics = None if intrinsics is None else [float(v) for v in intrinsics]
        self.intrinsics_size = None if intrinsics_size is None else [int(v) for v in intrinsics_size]
        self.crease_threshold, self.min_alignment = float(crease_threshold), float(min_alignment)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "camera": self.camera, "intrinsics": self.intrinsics,
                "intrinsics_size": self.intrinsics_size, "hfov_deg": self.hfov_deg, "step": self.step,
                "crease_threshold": self.crease_threshold, "min_alignment": self.min_alignment,
                "labels": list(self.labels), "edges": [float(e) for e in self.edges.tolist()]}

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        d = prepare_depth(depth, valid)
        k = camera_intrinsics(tuple(d.shape[-2:]), camera=self.camera,  # type: ignore[arg-type]
                              intrinsics=self.intrinsics, intrinsics_size=self.intrinsics_size,
                              hfov_deg=self.hfov_deg)
        n = surface_normals(d, intrinsics=k, step=self.step, crease_threshold=self.crease_threshold)
        dirs = torch.tensor(self._DIRECTIONS, dtype=n.dtype, device=n.device)
        cos = torch.einsum("kc,bchw->bkhw", dirs, n)
        best, bins = torch.nan_to_num(cos, nan=-2.0).max(1)
        ok = ~torch.isnan(n).any(1) & (best >= self.min_alignment) & (d > 0)
        return torch.where(ok, bins, torch.full_like(bins, -1))


class BoundaryBinner(_ConceptBinner):
    """Distance to the nearest occlusion edge: on an edge, near one, far from any.

    Parameters
    ----------
    threshold
        Relative inverse-depth step that makes an edge (:func:`occlusion_edges`).
    near_fraction
        "Near" is a Chebyshev distance of at most ``max(1, round(near_fraction · max(H, W)))``
        pixels from an edge pixel (resolution independent).
    near_pixels
        A fixed radius in pixels instead (overrides ``near_fraction``).

    Notes
    -----
    An image without any edge has every valid pixel "far". Edges are only
    found between valid pixels: the border of missing depth is not an edge.
    """

    name = "boundary"
    labels = ("edge", "near", "far")

    def __init__(self, threshold: float = 0.1, near_fraction: float = 0.05,
                 near_pixels: int | None = None, labels: list[str] | None = None) -> None:
        self._check_labels(labels)
        if not 0 < threshold < 1:
            raise BinCountError(f"threshold must lie in (0, 1), got {threshold}")
        if not 0 < near_fraction < 1 or (near_pixels is not None and int(near_pixels) < 1):
            raise BinCountError("need 0 < near_fraction < 1 and near_pixels >= 1 (or None)")
        self.threshold, self.near_fraction = float(threshold), float(near_fraction)
        self.near_pixels = None if near_pixels is None else int(near_pixels)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "near_fraction": self.near_fraction,
                "near_pixels": self.near_pixels, "labels": list(self.labels),
                "edges": [float(e) for e in self.edges.tolist()]}

    def radius(self, size: tuple[int, int]) -> int:
        """The "near" radius in pixels for a ``(H, W)`` map."""
        if self.near_pixels is not None:
            return self.near_pixels
        return max(1, round(self.near_fraction * max(size)))

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        d = prepare_depth(depth, valid)
        edge = occlusion_edges(d, threshold=self.threshold)
        r = self.radius(tuple(d.shape[-2:]))  # type: ignore[arg-type]
        near = F.max_pool2d(edge[:, None].double(), 2 * r + 1, stride=1, padding=r)[:, 0] > 0
        bins = torch.where(edge, 0, torch.where(near, 1, 2)).long()
        return torch.where(d > 0, bins, torch.full_like(bins, -1))


class StratifiedBinner(_ConceptBinner):
    """Concept x depth-stratum bins, to tell concept selectivity from depth selectivity.

    Concepts correlate with depth (a kitchen's up-facing pixels are mostly the
    nearby table), so a pure depth detector scores a concept DS. This binner
    gives pixel ``p`` the bin ``concept(p) * Nd + depth_bin(p)``;
    :func:`depthsel_plugins.analyses.concepts.stratified_concept_ds` then
    compares concepts *within* each depth stratum.

    Parameters
    ----------
    concept
        A concept binner (name, config dict or Binner), default ``"normals"``.
    depth
        A depth binner giving the strata, default 10 uniform bins over 0-5 m.
    """

    name = "stratified"

    def __init__(self, concept: Any = "normals", depth: Any = None, labels: list[str] | None = None) -> None:
        from depthsel.api import binner_from_config

        self.concept = binner_from_config(concept)
        self.depth = binner_from_config(depth if depth is not None else
                                        {"name": "uniform", "num_bins": 10, "min_depth": 0.0, "max_depth": 5.0})
        names = getattr(self.concept, "labels", None) or [f"bin {i}" for i in range(self.concept.num_bins)]
        self.labels = tuple(f"{c}@{i}" for c in names for i in range(self.depth.num_bins))
        self._check_labels(labels)

    @property
    def num_strata(self) -> int:
        """Number of depth strata ``Nd``."""
        return self.depth.num_bins

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "concept": self.concept.config(), "depth": self.depth.config(),
                "labels": list(self.labels), "edges": [float(e) for e in self.edges.tolist()]}

    def __call__(self, depth: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        c, z = self.concept(depth, valid), self.depth(depth, valid)
        ok = (c >= 0) & (z >= 0)
        return torch.where(ok, c * self.num_strata + z, torch.full_like(c, -1))


def register_concept_binners(register: Any) -> None:
    """Register ``normals``, ``boundary`` and ``stratified`` (called by :mod:`depthsel_plugins.binners`)."""
    register("normals", NormalBinner,
             description="surface orientation from depth: floor/wall-left/wall-right/ceiling/facing-camera")
    register("boundary", BoundaryBinner, description="distance to occlusion edges: edge/near/far")
    register("stratified", StratifiedBinner,
             description="concept x depth-stratum bins (concept selectivity at equal depth)")
