"""Joint, deterministic transforms of a depthsel sample dict.

Every transform is called as ``t(sample, generator=None)`` and returns a new
dict. Geometry is applied to all spatial entries at once (``image``,
``depth``, ``valid`` and ``sparse_depth`` when present) so they stay aligned.

Two rules hold for every transform, because depth selectivity is computed from
ground-truth depth bins and a blended depth value would land in a bin no
surface occupies:

* depth is only ever resampled with *nearest* neighbours, so every valid output
  depth value is a value of the input (no invented depths at object edges);
* ``valid`` is recomputed afterwards as ``resampled valid & depth > 0``, and
  pixels rotated in from outside the frame are invalid.

Randomness comes from the ``generator`` argument when given (datasets pass a
generator seeded by ``(seed, epoch, index)``), else from the transform's own
generator seeded at construction with ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .data import DepthSample
from .errors import DatasetError

__all__ = [
    "Compose",
    "Resize",
    "CenterCrop",
    "RandomCrop",
    "HFlip",
    "Rotation",
    "ColorJitter",
    "sample_sparse_depth",
]

class _Random:
    """Mixin holding a fallback generator for transforms called without one."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._generator = torch.Generator()
        self._generator.manual_seed(0 if seed is None else int(seed))

    def _gen(self, generator: torch.Generator | None) -> torch.Generator:
        return generator if generator is not None else self._generator

    def _uniform(self, generator: torch.Generator | None, lo: float, hi: float) -> float:
        u = float(torch.rand((), generator=self._gen(generator)))
        return lo + (hi - lo) * u


def _finish(sample: DepthSample, depth: torch.Tensor, valid: torch.Tensor) -> DepthSample:
    # Keep the contract exact: invalid pixels carry 0 and valid means depth > 0.
    valid = valid & (depth > 0) & torch.isfinite(depth)
    sample["depth"] = torch.where(valid, depth, torch.zeros_like(depth))
    sample["valid"] = valid
    return sample


def _map_spatial(sample: DepthSample, fn: Callable[[torch.Tensor], torch.Tensor]) -> DepthSample:
    out: DepthSample = dict(sample)  # type: ignore[assignment]
    for key in ("image", "depth", "valid", "sparse_depth"):
        if key in out:
            out[key] = fn(out[key])  # type: ignore[literal-required]
    return out


class Compose:
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Callable[..., DepthSample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Resize to ``(H, W)``: image bilinear (antialiased), depth and masks nearest."""

    def __init__(self, size: tuple[int, int], antialias: bool = True) -> None:
        if len(size) != 2 or any(int(s) <= 0 for s in size):
            raise DatasetError(f"Resize size must be (H, W) with positive ints, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.antialias = antialias

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        if tuple(sample["image"].shape[-2:]) == self.size:
            return dict(sample)  # type: ignore[return-value]
        out: DepthSample = dict(sample)  # type: ignore[assignment]
        img = sample["image"].unsqueeze(0)
        out["image"] = F.interpolate(
            img, size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias
        ).squeeze(0).clamp_(0.0, 1.0)

        def nearest(t: torch.Tensor) -> torch.Tensor:
            # "nearest-exact" picks the source pixel whose centre is closest: a copy, never a blend.
            return F.interpolate(t[None].float(), size=self.size, mode="nearest-exact")[0]

        if "sparse_depth" in sample:
            out["sparse_depth"] = nearest(sample["sparse_depth"])
        return _finish(out, nearest(sample["depth"]), nearest(sample["valid"]) > 0.5)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the central ``(H, W)`` window."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        h, w = sample["image"].shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise DatasetError(f"CenterCrop {self.size} is larger than the sample {(h, w)}; resize first")
        top, left = (h - th) // 2, (w - tw) // 2
        return _map_spatial(sample, lambda t: t[..., top : top + th, left : left + tw].clone())

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomCrop(_Random):
    """Crop a random ``(H, W)`` window."""

    def __init__(self, size: tuple[int, int], seed: int | None = None) -> None:
        super().__init__(seed)
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        h, w = sample["image"].shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise DatasetError(f"RandomCrop {self.size} is larger than the sample {(h, w)}; resize first")
        g = self._gen(generator)
        top = int(torch.randint(0, h - th + 1, (), generator=g))
        left = int(torch.randint(0, w - tw + 1, (), generator=g))
        return _map_spatial(sample, lambda t: t[..., top : top + th, left : left + tw].clone())

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class HFlip(_Random):
    """Flip left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__(seed)
        self.p = float(p)

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        # Always draw, so the random stream does not depend on the outcome.
        if self._uniform(generator, 0.0, 1.0) >= self.p:
            return dict(sample)  # type: ignore[return-value]
        return _map_spatial(sample, lambda t: t.flip(-1))

    def __repr__(self) -> str:
        return f"HFlip(p={self.p})"


class Rotation(_Random):
    """Rotate by an angle drawn uniformly from ``[-degrees, degrees]`` about the centre.

    Image: bilinear with black borders. Depth: nearest; pixels that come from
    outside the frame are invalid (depth 0), never extrapolated.
    """

    def __init__(self, degrees: float = 5.0, seed: int | None = None) -> None:
        super().__init__(seed)
        if not 0 <= degrees <= 45:
            raise DatasetError(f"Rotation degrees must be in [0, 45], got {degrees}; it is meant to be small")
        self.degrees = float(degrees)

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        angle = math.radians(self._uniform(generator, -self.degrees, self.degrees))
        h, w = sample["image"].shape[-2:]
        c, s = math.cos(angle), math.sin(angle)
        # Normalised coordinates stretch x by W/2 and y by H/2: correct for the aspect
        # ratio so a rotation stays a rotation in pixels.
        theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, 1, h, w], align_corners=False)

        def warp(t: torch.Tensor, mode: str) -> torch.Tensor:
            return F.grid_sample(
                t[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=False
            )[0]

        out: DepthSample = dict(sample)  # type: ignore[assignment]
        out["image"] = warp(sample["image"], "bilinear").clamp_(0.0, 1.0)
        if "sparse_depth" in sample:
            out["sparse_depth"] = warp(sample["sparse_depth"], "nearest")
        return _finish(out, warp(sample["depth"], "nearest"), warp(sample["valid"], "nearest") > 0.5)

    def __repr__(self) -> str:
        return f"Rotation({self.degrees})"


class ColorJitter(_Random):
    """Random brightness, contrast and saturation factors in ``[1-x, 1+x]`` (image only)."""

    def __init__(
        self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed)
        for label, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= v < 1:
                raise DatasetError(f"ColorJitter {label} must be in [0, 1), got {v}")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)

    def __call__(self, sample: DepthSample, generator: torch.Generator | None = None) -> DepthSample:
        b = self._uniform(generator, 1 - self.brightness, 1 + self.brightness)
        c = self._uniform(generator, 1 - self.contrast, 1 + self.contrast)
        s = self._uniform(generator, 1 - self.saturation, 1 + self.saturation)
        img = sample["image"] * b
        grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
        img = (img - grey.mean()) * c + grey.mean()
        grey = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
        img = (img - grey) * s + grey
        out: DepthSample = dict(sample)  # type: ignore[assignment]
        out["image"] = img.clamp(0.0, 1.0)
        return out

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


def sample_sparse_depth(
    depth: torch.Tensor, valid: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Keep ``n`` valid depth pixels drawn without replacement, 0 elsewhere.

    Parameters
    ----------
    depth, valid
        ``[1, H, W]`` depth (metres) and its mask.
    n
        Number of samples; all valid pixels are kept when fewer exist.
    generator
        Source of randomness (seed it for reproducible samples).
    """
    flat_valid = valid.reshape(-1).nonzero().squeeze(1)
    if n < flat_valid.numel():
        pick = torch.randperm(flat_valid.numel(), generator=generator)[:n]
        flat_valid = flat_valid[pick]
    sparse = torch.zeros(depth.numel(), dtype=depth.dtype)
    sparse[flat_valid] = depth.reshape(-1)[flat_valid]
    return sparse.view_as(depth)
