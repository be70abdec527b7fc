"""``synthetic``: procedurally rendered indoor RGB-D scenes (NOT real data).

This is the embedded default dataset: it lets every command and test run on a
fresh machine with no data at all. Each sample is ray cast on the fly (nothing
is cached on disk) from a scene drawn with a seeded generator:

* a box-shaped room 3-6.5 m wide/deep and 2.4-3 m high, whose floor (planks or
  tiles), walls (painted, striped) and ceiling get procedural textures tied to
  the surface type, at world scale, so texture density falls with distance;
* 3-8 furniture-like axis-aligned blocks standing on the floor;
* a pinhole camera (horizontal FOV 55-65 deg) at 1.1-1.7 m height, looking
  roughly across the room, slight downward pitch and roll, kept 0.6 m away from walls and blocks;
* Lambertian shading from a camera-mounted light with inverse-square falloff
  (plus a ceiling light) and a dark distance haze, so brightness and contrast
  fall with distance: RGB carries monocular depth cues.

Depth is z-depth in metres. Like a Kinect, pixels closer than 0.5 m or beyond
10 m are invalid (0); by construction that is a tiny fraction of pixels.

Every item depends only on ``(seed, split, index)``: random access is
deterministic, and the ``"train"`` and ``"test"`` splits use disjoint seed
streams. Results on it say nothing about real-image performance.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from depthsel.datasets import PairedDepthDataset, Transform
from depthsel.errors import DatasetError

__all__ = ["SyntheticDataset", "render_scene", "MIN_DEPTH", "MAX_DEPTH"]

MIN_DEPTH, MAX_DEPTH = 0.5, 10.0
_SPLITS = {"train": 0x7A11, "test": 0x7E57}


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    # Sign chosen so that a negative pitch tilts the optical axis (0, 0, 1) down (y is up).
    rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return (ry @ rx @ rz).astype(np.float32)


def _scene(rng: np.random.Generator) -> dict[str, Any]:
    """Draw room, camera and blocks."""
    room = np.array([rng.uniform(3.0, 6.5), rng.uniform(2.4, 3.0), rng.uniform(3.0, 6.5)], np.float32)
    cam = np.array([rng.uniform(0.7, room[0] - 0.7), rng.uniform(1.1, 1.7),
                    rng.uniform(0.7, room[2] - 0.7)], np.float32)
    boxes: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(int(rng.integers(3, 9))):
        for _try in range(20):
            size = np.array([rng.uniform(0.3, 1.6), rng.uniform(0.4, 2.2), rng.uniform(0.3, 1.6)], np.float32)
            lo = np.array([rng.uniform(0, room[0] - size[0]), 0.0, rng.uniform(0, room[2] - size[2])], np.float32)
            hi = lo + size
            # Keep the camera 0.6 m outside every block (xz), so nothing fills the view at < 0.5 m.
            if not (lo[0] - 0.6 < cam[0] < hi[0] + 0.6 and lo[2] - 0.6 < cam[2] < hi[2] + 0.6):
                boxes.append((lo, hi))
                break
    return {
        "room": room, "cam": cam, "boxes": boxes,
        # Look roughly across the room (+-57 deg) so views span near and far depths.
        "rot": _rotation(math.atan2(room[0] / 2 - cam[0], room[2] / 2 - cam[2]) + rng.uniform(-1.0, 1.0), rng.uniform(-0.45, 0.0), rng.uniform(-0.04, 0.04)),
        "hfov": math.radians(rng.uniform(55, 65)),
        "floor_kind": int(rng.integers(0, 2)),
        "floor_rgb": rng.uniform([0.35, 0.2, 0.1], [0.65, 0.45, 0.3]).astype(np.float32),
        "wall_rgb": rng.uniform(0.45, 0.9, size=(4, 3)).astype(np.float32),
        "box_rgb": rng.uniform(0.1, 0.9, size=(max(len(boxes), 1), 3)).astype(np.float32),
        "phase": rng.uniform(0, 2 * math.pi, size=6).astype(np.float32),
        "haze": float(rng.uniform(0.04, 0.09)),
    }


def _albedo(s: dict[str, Any], surf: np.ndarray, axis: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Procedural albedo ``[P, 3]``; surf: 0 floor, 1 ceiling, 2-5 walls, 6+ blocks."""
    ph = s["phase"]
    # The two in-plane world coordinates of each hit, so patterns have a fixed size in metres.
    u = np.where(axis == 0, x[:, 2], x[:, 0])
    v = np.where(axis == 1, x[:, 2], x[:, 1])
    fine = 0.04 * np.sin(23.0 * u + ph[0]) * np.sin(19.0 * v + ph[1])
    out = np.empty((x.shape[0], 3), np.float32)
    m = surf == 0
    if s["floor_kind"] == 0:  # planks 0.18 m wide with per-plank tone and grain
        plank = np.floor(u[m] / 0.18)
        tone = 0.8 + 0.2 * np.sin(plank * 12.9898 + ph[2]) ** 2
        grain = 0.06 * np.sin(40.0 * v[m] + 3.0 * np.sin(plank))
        out[m] = s["floor_rgb"] * (tone + grain)[:, None]
    else:  # 0.5 m checker tiles with grout lines
        chk = (np.floor(u[m] / 0.5) + np.floor(v[m] / 0.5)) % 2
        grout = (np.minimum(np.mod(u[m], 0.5), np.mod(v[m], 0.5)) < 0.015)
        out[m] = s["floor_rgb"][None] * (0.75 + 0.35 * chk)[:, None] * np.where(grout, 0.5, 1.0)[:, None]
    m = surf == 1
    out[m] = np.float32(0.92)
    for w in range(4):
        m = surf == 2 + w
        stripes = 0.06 * np.sin(2 * math.pi * 4.0 * u[m] + ph[3 + w % 3])
        skirting = np.where(x[m, 1] < 0.1, 0.45, 1.0)
        out[m] = s["wall_rgb"][w][None] * ((1.0 + stripes) * skirting)[:, None]
    m = surf >= 6
    if m.any():
        rgb = s["box_rgb"][surf[m] - 6]
        lines = (np.mod(v[m], 0.4) < 0.02) | (np.mod(u[m], 0.6) < 0.02)
        out[m] = rgb * np.where(lines, 0.55, 1.0)[:, None]
    return np.clip(out * (1.0 + fine)[:, None], 0.0, 1.0)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Render one scene: ``(rgb float32 [H,W,3], depth float32 [H,W], (fx, fy, cx, cy))``."""
    s = _scene(rng)
    fx = width / (2.0 * math.tan(s["hfov"] / 2.0))
    cx, cy = width / 2.0, height / 2.0
    vv, uu = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")
    # Camera rays with z-component 1: the ray parameter t of a hit *is* its z-depth.
    d_cam = np.stack([(uu - cx) / fx, -(vv - cy) / fx, np.ones_like(uu)], -1).reshape(-1, 3)
    d = d_cam @ s["rot"].T
    o = s["cam"]
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        # Room (seen from inside): exit distance along each axis, nearest wins.
        t_axis = np.where(d > 0, (s["room"] - o) * inv, -o * inv)
        t_axis = np.where(np.isfinite(t_axis), t_axis, np.inf)
        axis = np.argmin(t_axis, 1)
        t = t_axis[np.arange(len(d)), axis]
        positive = d[np.arange(len(d)), axis] > 0
        surf = np.select([axis == 1, axis == 0, axis == 2], [np.where(positive, 1, 0),
                         np.where(positive, 3, 2), np.where(positive, 5, 4)]).astype(np.int64)
        if s["boxes"]:
            lo = np.stack([b[0] for b in s["boxes"]])  # [K, 3]
            hi = np.stack([b[1] for b in s["boxes"]])
            n_box, n_px = lo.shape[0], len(d)
            tnear = np.full((n_box, n_px), -np.inf, np.float32)
            tfar = np.full((n_box, n_px), np.inf, np.float32)
            enter = np.zeros((n_box, n_px), np.int64)
            for a in range(3):  # slab test, one axis at a time on contiguous [K, P] arrays (fast)
                t1 = (lo[:, a, None] - o[a]) * inv[None, :, a]
                t2 = (hi[:, a, None] - o[a]) * inv[None, :, a]
                mn, mx = np.fmin(t1, t2), np.fmax(t1, t2)  # fmin/fmax skip the NaN of 0 * inf
                enter = np.where(mn > tnear, a, enter)
                tnear = np.maximum(tnear, mn)
                tfar = np.minimum(tfar, mx)
            tb = np.where((tnear < tfar) & (tnear > 1e-4), tnear, np.inf)
            k = np.argmin(tb, 0)
            tk = tb[k, np.arange(n_px)]
            hit = tk < t
            t = np.where(hit, tk, t)
            axis = np.where(hit, enter[k, np.arange(n_px)], axis)
            surf = np.where(hit, 6 + k, surf)
    x = o + t[:, None] * d
    normal = np.zeros_like(d)
    normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
    albedo = _albedo(s, surf, axis, x)
    light = np.array([s["room"][0] / 2, s["room"][1] - 0.4, s["room"][2] / 2], np.float32)
    to_l = light - x
    r2 = (to_l**2).sum(1)
    lambert = np.clip((normal * to_l).sum(1) / np.sqrt(r2 + 1e-9), 0.0, 1.0)
    dist = t * np.linalg.norm(d, axis=1)
    # Camera-mounted key light (a "flash"): Lambertian with inverse-square falloff in the
    # distance to the camera, the main monocular brightness cue; the ceiling light adds variety.
    head = np.clip(-(normal * d).sum(1) / np.linalg.norm(d, axis=1), 0.0, 1.0)
    shade = 0.08 + 0.5 * lambert / (1.0 + 0.12 * r2) + 1.3 * head / (1.0 + 0.1 * dist**2)
    fog = np.exp(-s["haze"] * dist)[:, None]
    rgb = albedo * shade[:, None] * fog + 0.05 * (1.0 - fog)
    rgb = rgb + rng.normal(0.0, 0.008, size=rgb.shape)  # sensor noise, so flat regions are not exact
    depth = np.where((t >= MIN_DEPTH) & (t <= MAX_DEPTH), t, 0.0)
    return (np.clip(rgb, 0, 1).reshape(height, width, 3).astype(np.float32),
            depth.reshape(height, width).astype(np.float32), (fx, fx, cx, cy))


class SyntheticDataset(PairedDepthDataset):
    """Deterministic synthetic indoor RGB-D scenes rendered on the fly (not real data).

    Parameters
    ----------
    num_samples
        Number of scenes.
    size
        ``(H, W)`` render size.
    seed
        Base seed; scene ``i`` of split ``s`` depends only on ``(seed, s, i)``.
    split
        ``"train"`` or ``"test"``: disjoint seed streams.
    sparse_samples, transforms, max_depth
        See :class:`~depthsel.datasets.PairedDepthDataset`.
    """

    def __init__(
        self,
        num_samples: int = 64,
        size: tuple[int, int] = (96, 128),
        seed: int = 0,
        split: str = "train",
        sparse_samples: int | None = None,
        transforms: Transform | None = None,
        max_depth: float | None = None,
    ) -> None:
        super().__init__(transforms=transforms, sparse_samples=sparse_samples, max_depth=max_depth, seed=seed)
        if split not in _SPLITS:
            raise DatasetError(f"synthetic split must be 'train' or 'test', got {split!r}")
        if int(num_samples) < 1:
            raise DatasetError(f"num_samples must be >= 1, got {num_samples}")
        if len(size) != 2 or not all(8 <= int(v) <= 4096 for v in size):
            raise DatasetError(f"size must be (H, W) with 8 <= H, W <= 4096, got {size!r}")
        self.num_samples = int(num_samples)
        self.render_size = (int(size[0]), int(size[1]))
        self.split = split

    def __len__(self) -> int:
        return self.num_samples

    def names(self) -> list[str]:
        """Return ``synthetic/<split>/<seed>/<index>`` for every sample."""
        return [f"synthetic/{self.split}/{self.seed}/{i:06d}" for i in range(self.num_samples)]

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, _SPLITS[self.split], index]))

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, depth, _ = render_scene(self._rng(index), *self.render_size)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), torch.from_numpy(depth)[None]

    def intrinsics(self, index: int) -> tuple[float, float, float, float]:
        """Pinhole ``(fx, fy, cx, cy)`` in pixels of sample ``index``."""
        h, w = self.render_size
        fx = w / (2.0 * math.tan(_scene(self._rng(index))["hfov"] / 2.0))
        return (fx, fx, w / 2.0, h / 2.0)

    def config(self) -> dict[str, Any]:
        """Options that change the items."""
        cfg = super().config()
        cfg.update(num_samples=self.num_samples, render_size=self.render_size, split=self.split)
        return cfg

    def fingerprint(self) -> str:
        """Hash of the configuration (the data is a pure function of it)."""
        return self.fingerprint_files([], Path("."))

    def describe(self) -> str:
        """Say plainly what this is."""
        return (
            f"SYNTHETIC procedurally rendered indoor scenes ({self.num_samples} x "
            f"{self.render_size[0]}x{self.render_size[1]}, split={self.split}, seed={self.seed}); "
            "not real data: use it for smoke tests and demos, not for conclusions about real images"
        )
