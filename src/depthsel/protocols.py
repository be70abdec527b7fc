"""Metric protocols: how an accuracy number is measured, and the registry of named presets.

Published numbers are computed under different protocols (see the project
README, "What the published reference code does differently"): per-image or
pooled averaging, ``<`` or ``<=`` in the δ thresholds, a depth cap, an
evaluation crop, metres or millimetres. Comparing numbers across protocols is
meaningless, so every result carries its protocol's name.

The core knows the machinery (:class:`MetricProtocol`, :class:`CropBox`) and
one neutral preset, ``"default"``. The presets that reproduce a paper's or a
repository's evaluation are plugins: a ``register_protocols`` hook registers a
factory returning a :class:`MetricProtocol`, and :func:`get_protocol` looks a
name up there (the first-party plugins register the published evaluations'
presets). A protocol saved in a metric state is stored in full,
field by field, so reading it back never needs the registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import DepthselError, UnknownPluginError, suggest

__all__ = ["MetricProtocolError", "CropBox", "MetricProtocol", "DEFAULT_PROTOCOL", "get_protocol",
           "protocol_names", "crop_mask", "protocol_from_dict"]


class MetricProtocolError(DepthselError):
    """A metric protocol is unknown or inconsistent."""


@dataclass(frozen=True)
class CropBox:
    """An evaluation crop: rows ``[top, bottom)`` and columns ``[left, right)`` of a reference frame.

    Bounds are given in the units of ``frame = (H, W)`` and scaled to the image:
    row ``top`` of an ``h``-row image is ``rounding(top * h / frame[0])``. With
    the default ``frame = (1, 1)`` the bounds are fractions of the image.

    Parameters
    ----------
    name
        Recorded with the protocol, e.g. ``"eigen"``.
    top, bottom, left, right
        The box in frame units.
    frame
        ``(H, W)`` of the frame the bounds refer to.
    rounding
        ``"round"`` (Python's ``round``) or ``"floor"`` (``int``), as the
        reference code of the crop does.
    """

    name: str
    top: float
    bottom: float
    left: float
    right: float
    frame: tuple[float, float] = (1.0, 1.0)
    rounding: Literal["round", "floor"] = "floor"

    def __post_init__(self) -> None:
        if self.rounding not in ("round", "floor"):
            raise MetricProtocolError(f"CropBox.rounding={self.rounding!r}; use 'round' or 'floor'")
        fh, fw = self.frame
        if not (0 <= self.top < self.bottom <= fh and 0 <= self.left < self.right <= fw):
            raise MetricProtocolError(
                f"crop {self.name!r}: need 0 <= top < bottom <= {fh} and 0 <= left < right <= {fw}, "
                f"got rows {self.top}:{self.bottom}, cols {self.left}:{self.right}")

    def mask(self, h: int, w: int) -> torch.Tensor:
        """Boolean ``[h, w]`` mask of the box scaled to an ``h x w`` image."""
        rnd = round if self.rounding == "round" else int
        fh, fw = self.frame
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[rnd(self.top * h / fh): rnd(self.bottom * h / fh), rnd(self.left * w / fw): rnd(self.right * w / fw)] = True
        return mask


@dataclass(frozen=True)
class MetricProtocol:
    """How accuracy is measured. Fields are validated on construction.

    Parameters
    ----------
    name
        Recorded in every result.
    reduction
        ``"image"``: per-image metrics averaged over images; ``"pixel"``: pooled.
    crop
        A :class:`CropBox` of the evaluated pixels, or ``None`` for the whole frame.
    max_depth
        Ground truth above it is invalid (``None``: no cap).
    max_op
        Keep ``gt <= max_depth`` or ``gt < max_depth``.
    min_depth
        Ground truth must exceed it to count.
    delta_op
        ``"<"`` or ``"<="`` in ``max(p/g, g/p) op threshold``.
    rmse_mode
        ``"sqrt_of_mean_mse"`` (mean MSE, then the root) or ``"mean_of_rmse"``
        (mean of per-image RMSE); only for ``reduction="image"``.
    clamp_pred
        Clamp predictions to ``[min_depth, max_depth]`` before measuring.
    units
        ``"m"`` or ``"mm"``: the unit of rmse, mae and sq_rel.
    mask_op
        ``"and"``: a pixel counts when its ground truth is valid. ``"or"``:
        when ground truth *or* prediction is positive (a bug some released
        code has; kept to reproduce its numbers).
    deltas
        δ thresholds.
    description
        One line for listings.
    """

    name: str = "default"
    reduction: Literal["image", "pixel"] = "pixel"
    crop: CropBox | None = None
    max_depth: float | None = None
    max_op: Literal["<", "<="] = "<="
    min_depth: float = 1e-3
    delta_op: Literal["<", "<="] = "<"
    rmse_mode: Literal["sqrt_of_mean_mse", "mean_of_rmse"] = "sqrt_of_mean_mse"
    clamp_pred: bool = True
    units: Literal["m", "mm"] = "m"
    mask_op: Literal["and", "or"] = "and"
    deltas: tuple[float, ...] = (1.25, 1.25**2, 1.25**3, 1.02, 1.05, 1.10)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        choices: dict[str, tuple[Any, ...]] = {
            "reduction": ("image", "pixel"), "max_op": ("<", "<="), "delta_op": ("<", "<="),
            "rmse_mode": ("sqrt_of_mean_mse", "mean_of_rmse"), "units": ("m", "mm"),
            "mask_op": ("and", "or"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise MetricProtocolError(f"MetricProtocol.{key}={getattr(self, key)!r}; use one of {allowed}")
        if self.crop is not None and not isinstance(self.crop, CropBox):
            raise MetricProtocolError(f"MetricProtocol.crop must be a CropBox or None, got {self.crop!r}")
        if self.max_depth is not None and not self.max_depth > self.min_depth:
            raise MetricProtocolError(f"max_depth {self.max_depth} must exceed min_depth {self.min_depth}")
        if not self.deltas or any(d <= 1 for d in self.deltas):
            raise MetricProtocolError(f"deltas must be thresholds > 1, got {self.deltas}")

    def delta_names(self) -> list[str]:
        """Result keys of the δ thresholds: ``delta1..3`` for powers of 1.25, else ``delta_1.05``."""
        names = []
        for d in self.deltas:
            k = next((k for k in (1, 2, 3) if math.isclose(d, 1.25**k)), None)
            names.append(f"delta{k}" if k else f"delta_{d:.2f}")
        return names


#: The core's one preset: pooled over pixels, ``<``, no crop, no cap, predictions clamped.
DEFAULT_PROTOCOL = MetricProtocol(description="pooled over pixels; '<'; no crop, no cap; predictions clamped")


def protocol_names() -> list[str]:
    """``"default"`` and every name registered through ``register_protocols``."""
    from .registry import get_plugin_manager

    return [DEFAULT_PROTOCOL.name, *(n for n in get_plugin_manager().entries("protocols")
                                     if n != DEFAULT_PROTOCOL.name)]


def get_protocol(protocol: MetricProtocol | str) -> MetricProtocol:
    """Return the protocol itself, the core's ``"default"``, or a plugin-registered preset by name.

    The plugin registry is consulted only for names other than ``"default"``,
    and a registered ``"default"`` never replaces the core's.
    """
    if isinstance(protocol, MetricProtocol):
        return protocol
    if protocol == DEFAULT_PROTOCOL.name:
        return DEFAULT_PROTOCOL
    from .registry import get_plugin_manager

    try:
        made = get_plugin_manager().create("protocols", str(protocol))
    except UnknownPluginError:
        raise MetricProtocolError(
            f"unknown metric protocol {protocol!r}; {suggest(str(protocol), protocol_names())} "
            "(or build a MetricProtocol(...); `depthsel protocols` lists them)"
        ) from None
    if not isinstance(made, MetricProtocol) or made.name != protocol:
        raise MetricProtocolError(f"the plugin registering protocol {protocol!r} returned {made!r}, not a "
                                  f"MetricProtocol named {protocol!r}")
    return made


def crop_mask(crop: CropBox | None, h: int, w: int) -> torch.Tensor:
    """Mask of ``crop`` at ``h x w`` (``None``: every pixel)."""
    return torch.ones(h, w, dtype=torch.bool) if crop is None else crop.mask(h, w)


def protocol_from_dict(fields: Mapping[str, Any]) -> MetricProtocol:
    """Rebuild a protocol from its ``dataclasses.asdict`` view, as a metric state stores it."""
    d = dict(fields)
    d["deltas"] = tuple(d["deltas"])
    crop = d.get("crop")
    if isinstance(crop, Mapping):
        d["crop"] = CropBox(**{**crop, "frame": tuple(crop.get("frame", (1.0, 1.0)))})
    elif crop is not None:
        raise MetricProtocolError(f"this metric state names its crop {crop!r} instead of storing its box: it "
                                  "was saved by an older depthsel; re-run the evaluation")
    if d.get("crop") is None:
        d.pop("crop_dataset", None)  # older states carried it unused when there was no crop
    return MetricProtocol(**d)
