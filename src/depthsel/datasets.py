"""Building blocks for dataset plugins: safe paths, checked image decoding, a paired base class.

Public API, so a third-party dataset is built the way the first-party ones are:

* :func:`safe_join` / :func:`safe_relative`: resolve a path read from an index
  or list file and refuse anything that leaves the dataset root (``..``,
  absolute paths, or a symlink pointing outside). Index files are
  user-supplied data; a dataset must never become a way to read arbitrary files.
* :func:`decode_rgb` / :func:`decode_depth_png`: decode and *check* image
  files, turning Pillow's heterogeneous exceptions into :class:`DatasetError`
  messages that say what to do.
* :class:`PairedDepthDataset`: the common ``__getitem__`` (invalid-pixel
  handling, ``max_depth``, resize, transforms, sparse sampling), so every
  dataset produces items that follow :mod:`depthsel.data` in the same way. A
  subclass implements ``_load``, ``__len__`` and ``names``; :func:`to_tensors`
  turns decoded arrays into contract tensors.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import DepthSample
from .errors import DatasetError
from .transforms import Resize, sample_sparse_depth

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "safe_join",
    "safe_relative",
    "decode_rgb",
    "decode_depth_png",
    "item_seed",
    "PairedDepthDataset",
    "to_tensors",
]

Transform = Callable[..., DepthSample]
Source = Path | bytes

# Pillow modes a 16-bit single-channel PNG decodes to (depends on version/endianness).
_16BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def safe_relative(rel: str, what: str = "path", *, strip_leading_slash: bool = False) -> str:
    """Normalise a relative path string and refuse one that escapes its root.

    Parameters
    ----------
    rel
        The path as written in the index (``/`` or ``\\`` separators).
    what
        Where it came from, for the error message.
    strip_leading_slash
        Some list files write paths as ``/scene/rgb_00045.jpg`` and mean
        "relative to the data path"; with this flag such a leading slash is dropped.
    """
    text = rel.strip().replace("\\", "/")
    if strip_leading_slash:
        text = text.lstrip("/")
    if not text:
        raise DatasetError(f"{what} is empty; every row must name a file relative to the dataset root")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise DatasetError(
            f"{what} {rel!r} is an absolute path; write paths relative to the dataset root"
        )
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise DatasetError(
            f"{what} {rel!r} escapes the dataset root with '..'; move the file under the root "
            "and list it relative to it"
        )
    return "/".join(parts)


def safe_join(root: Path, rel: str, what: str = "path", *, strip_leading_slash: bool = False) -> Path:
    """Return ``root / rel`` after checking it stays inside ``root`` (symlinks included).

    Raises
    ------
    DatasetError
        If ``rel`` is absolute, contains ``..``, or resolves (through a symlink)
        outside ``root``.
    """
    if "\x00" in rel:
        raise DatasetError(f"{what} {rel!r} contains a NUL byte; fix the index file")
    clean = safe_relative(rel, what, strip_leading_slash=strip_leading_slash)
    root_resolved = root.resolve()
    path = (root_resolved / clean).resolve()
    # resolve() follows symlinks, so a link pointing outside is caught here too.
    if not path.is_relative_to(root_resolved):
        raise DatasetError(
            f"{what} {rel!r} resolves to {path}, outside the dataset root {root_resolved} "
            "(a symlink?); copy the file into the root instead of linking to it"
        )
    return path


def _open_image(src: Source, name: str) -> PILImage:
    # Pillow is imported here, not at ``import depthsel``: only file-backed datasets need it.
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        img.load()  # decode now: a truncated file raises here, not later in numpy
    except FileNotFoundError:
        raise DatasetError(
            f"{name}: file not found; check the path in the index and the dataset root"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"{name}: the image claims an implausible size ({exc}); the file is corrupt or hostile"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"{name}: cannot decode image ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated: re-download or re-export it, or drop it from the index"
        ) from None
    return img


def decode_rgb(src: Source, name: str) -> np.ndarray:
    """Decode an RGB image (PNG/JPEG/...) to ``uint8 [H, W, 3]``.

    Grey and palette images are converted to RGB; 16-bit images are refused
    because they are almost certainly a depth map listed in the rgb column.
    """
    img = _open_image(src, name)
    if img.mode in _16BIT_MODES or img.mode == "F":
        raise DatasetError(
            f"{name}: rgb image has mode {img.mode!r} (16/32-bit single channel, i.e. a depth map?); "
            "check that the rgb and depth columns are not swapped"
        )
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_depth_png(
    src: Source, name: str, *, scale: float, allow_8bit_scale: float | None = None
) -> np.ndarray:
    """Decode a single-channel depth PNG to ``float32 [H, W]`` metres.

    Parameters
    ----------
    src
        File path or the file's bytes (zip members).
    name
        For error messages.
    scale
        Units per metre of 16-bit files (e.g. 1000 for millimetres).
    allow_8bit_scale
        When set, 8-bit files are accepted and mean ``value / 255 * allow_8bit_scale``
        metres (some datasets ship 8-bit training PNGs). Otherwise 8-bit files are refused:
        they hold only 256 levels and are usually a visualisation, not depth.
    """
    img = _open_image(src, name)
    if img.mode in _16BIT_MODES:
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            # Mode "I" is int32 in memory; PNG caps it at 16 bits, anything larger is not depth.
            if arr.min() < 0 or arr.max() > 65535:
                raise DatasetError(f"{name}: depth values outside 16-bit range; save depth as uint16 PNG")
            arr = arr.astype(np.uint16)
        return arr.astype(np.float32) / np.float32(scale)
    if img.mode == "L" and allow_8bit_scale is not None:
        return np.asarray(img).astype(np.float32) / np.float32(255.0) * np.float32(allow_8bit_scale)
    raise DatasetError(
        f"{name}: depth PNG has mode {img.mode!r} ({len(img.getbands())} channel(s), not 16-bit); "
        "depth must be a single-channel uint16 PNG (e.g. millimetres); re-export it with "
        "Image.fromarray(depth_mm.astype(np.uint16))"
    )


def item_seed(*parts: int) -> int:
    """Return a 63-bit seed derived from integers, independent of access order."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


class PairedDepthDataset(Dataset[DepthSample]):
    """Base class: subclasses implement :meth:`_load`, :meth:`__len__` and :meth:`names`.

    Parameters
    ----------
    size
        ``(H, W)`` to resize every sample to (image bilinear, depth nearest), or ``None``.
    transforms
        A callable ``transform(sample, generator)``, e.g. a
        :class:`~depthsel.transforms.Compose`.
    sparse_samples
        When set, add ``sparse_depth`` with this many valid pixels drawn with a
        generator seeded by ``(seed, index)`` (the same pixels every epoch).
    max_depth
        Depth above this (metres) becomes invalid (0).
    seed
        Base seed of transforms and sparse sampling.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int] | None = None,
        transforms: Transform | None = None,
        sparse_samples: int | None = None,
        max_depth: float | None = None,
        seed: int = 0,
    ) -> None:
        if size is not None:
            if len(size) != 2 or any(int(s) <= 0 for s in size):
                raise DatasetError(f"size must be (H, W) with positive ints, got {size!r}")
            size = (int(size[0]), int(size[1]))
        if sparse_samples is not None and int(sparse_samples) < 0:
            raise DatasetError(f"sparse_samples must be >= 0, got {sparse_samples}; use None to disable")
        if max_depth is not None and not float(max_depth) > 0:
            raise DatasetError(f"max_depth must be > 0 metres, got {max_depth}; use None for no cap")
        self.size = size
        self.transforms = transforms
        self.sparse_samples = None if sparse_samples is None else int(sparse_samples)
        self.max_depth = None if max_depth is None else float(max_depth)
        self.seed = int(seed)
        self.epoch = 0
        self._resize = Resize(size) if size is not None else None

    # ------------------------------------------------------------ subclass API
    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image float32 [3,H,W] in [0,1], depth float32 [1,H,W] metres)``."""
        raise NotImplementedError

    def names(self) -> list[str]:
        """Return the stable name of every sample, in order."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Return the options that change what items look like (for fingerprints)."""
        return {
            "size": self.size,
            "sparse_samples": self.sparse_samples,
            "max_depth": self.max_depth,
            "seed": self.seed,
            "transforms": repr(self.transforms),
        }

    # ------------------------------------------------------------------ common
    def set_epoch(self, epoch: int) -> None:
        """Change the seed of random transforms (not of sparse sampling) per epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> DepthSample:
        n = len(self)  # type: ignore[arg-type]
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index = index % n
        return self.finish_item(self.cacheable_item(index), index)

    def cacheable_item(self, index: int) -> DepthSample:
        """The deterministic part of item ``index``: load, invalid pixels, ``max_depth``, resize.

        :class:`depthsel.data.CachedDataset` caches this and calls
        :meth:`finish_item` on every read, so random transforms still change
        with the epoch.
        """
        image, depth = self._load(index)
        name = self.names()[index]
        if image.shape[-2:] != depth.shape[-2:]:
            raise DatasetError(
                f"{name}: image is {tuple(image.shape[-2:])} but depth is {tuple(depth.shape[-2:])} "
                "(H, W); use depth registered to the RGB frame at the same resolution"
            )
        # Contract: 0 means invalid; NaN/inf and negative values are treated as such too.
        depth = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
        if self.max_depth is not None:
            depth = torch.where(depth > self.max_depth, torch.zeros_like(depth), depth)
        sample: DepthSample = {"image": image, "depth": depth, "valid": depth > 0, "name": name}
        if self._resize is not None:
            sample = self._resize(sample)
        return sample

    def finish_item(self, sample: DepthSample, index: int) -> DepthSample:
        """Apply the transforms (seeded by ``(seed, epoch, index)``) and sparse sampling."""
        if self.transforms is not None:
            gen = torch.Generator().manual_seed(item_seed(self.seed, 1, self.epoch, index))
            sample = self.transforms(sample, gen)
        if self.sparse_samples is not None:
            gen = torch.Generator().manual_seed(item_seed(self.seed, 2, index))
            sample = dict(sample)  # type: ignore[assignment]
            sample["sparse_depth"] = sample_sparse_depth(
                sample["depth"], sample["valid"], self.sparse_samples, gen
            )
        return sample

    def fingerprint_files(self, paths: Sequence[Path], root: Path) -> str:
        """Hash relative paths, file sizes, :meth:`names` and :meth:`config` (no file contents: fast)."""
        h = hashlib.sha256(type(self).__qualname__.encode())
        root_r = root.resolve()
        for p in paths:
            rel = os.path.relpath(p, root_r) if p.is_absolute() else str(p)
            size = p.stat().st_size if p.exists() else -1
            h.update(f"{rel}\0{size}\n".encode())
        for name in self.names():  # the selection (indices, split) matters too
            h.update(f"{name}\n".encode())
        h.update(repr(sorted(self.config().items(), key=lambda kv: kv[0])).encode())
        return h.hexdigest()[:16]


def to_tensors(rgb: np.ndarray, depth_m: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert ``uint8 [H,W,3]`` and ``float32 [H,W]`` arrays to contract tensors."""
    # np.require copies read-only arrays (Pillow hands those out): torch needs writable memory.
    rgb = np.require(rgb, dtype=np.uint8, requirements=["C", "W"])
    depth_m = np.require(depth_m, dtype=np.float32, requirements=["C", "W"])
    image = torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)
    depth = torch.from_numpy(depth_m).unsqueeze(0)
    return image.contiguous(), depth
