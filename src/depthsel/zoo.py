"""Model metadata and the model registry front door.

A model plugin registers a factory together with a :class:`ModelInfo`. The CLI
and the analyses read only this metadata, so one command works for every
network: they know the input size, how to normalise the image, which layers
are worth hooking, and which extra inputs (sparse depth for completion) to feed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["ModelInfo", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of depthsel needs to know about a registered depth network.

    Parameters
    ----------
    input_size
        Default ``(H, W)`` of the input image at full size.
    output_stride
        Input size divided by output size (1 for FastDepth, 2 for Hu et al. MFF).
    normalization
        ``"imagenet"`` (mean/std below) or ``"unit"`` (images stay in ``[0, 1]``).
    suggested_layers
        Layers the papers hooked, by module name.
    layer_units
        Channel count of each suggested layer at full width.
    depth_presets
        Maximum depth in metres per dataset preset, e.g. ``{"nyu": 10.0}``.
    extra_inputs
        Names of extra forward inputs beyond the image, e.g. ``("sparse_depth",)``.
        The model is called as ``model(image, **{name: tensor})``.
    input_multiple
        Input sides must be multiples of this (32 for BTS).
    reference
        Paper or repository the architecture follows.
    """

    input_size: tuple[int, int]
    output_stride: int = 1
    normalization: str = "imagenet"
    suggested_layers: tuple[str, ...] = ()
    layer_units: Mapping[str, int] = field(default_factory=dict)
    depth_presets: Mapping[str, float] = field(
        default_factory=lambda: {"nyu": 10.0, "kitti": 80.0}
    )
    extra_inputs: tuple[str, ...] = ()
    input_multiple: int = 1
    reference: str = ""

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean subtracted from ``[0, 1]`` images."""
        return IMAGENET_MEAN if self.normalization == "imagenet" else (0.0, 0.0, 0.0)

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation images are divided by."""
        return IMAGENET_STD if self.normalization == "imagenet" else (1.0, 1.0, 1.0)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Map a ``[B, 3, H, W]`` image in ``[0, 1]`` to the network's input space."""
        if self.normalization == "unit":
            return image
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return (image - mean) / std

    def forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run ``model`` on a dataset batch, normalising and adding extra inputs.

        Parameters
        ----------
        model
            The network.
        batch
            A collated dataset batch with ``"image"`` in ``[0, 1]`` and, for
            completion models, the extra inputs named in :attr:`extra_inputs`.
        """
        image = self.normalize(batch["image"])
        extras = {name: batch[name] for name in self.extra_inputs}
        return model(image, **extras)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        data = asdict(self)
        data["layer_units"] = dict(self.layer_units)
        data["depth_presets"] = dict(self.depth_presets)
        return data
