"""Model metadata and the model registry front door.

A model plugin registers a factory together with a :class:`ModelInfo`. The CLI
and the analyses read only this metadata, so one command works for every
network: they know the input size, how to normalise the image, which layers
are worth hooking, and which extra inputs (sparse depth for completion) to feed.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

__all__ = ["ModelInfo", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "UnstatedNormalizationWarning",
           "select_prediction"]

NORMALIZATIONS = ("imagenet", "unit")
_WARNED_UNSTATED: list[bool] = []


class UnstatedNormalizationWarning(UserWarning):
    """A model's input normalisation was not stated, so ImageNet statistics were assumed."""


def select_prediction(output: Any, key: str | None = None) -> torch.Tensor:
    """The depth map of a model output: the one output-selection rule of every analyzer.

    A tensor is returned as is; a mapping gives ``output[key]`` (default
    ``"depth"``); a tuple or list gives its first element.
    """
    from .errors import ShapeMismatchError

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        k = key or "depth"
        if k in output and isinstance(output[k], torch.Tensor):
            return output[k]
        raise ShapeMismatchError(
            f"the model returned a dict with keys {sorted(map(str, output))} but no tensor {k!r}; "
            "set ModelInfo(output_key=...) to the key that holds the depth map"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ShapeMismatchError(
        f"cannot find the depth map in a model output of type {type(output).__name__}; "
        "return a tensor, a tuple starting with it, or a dict with 'depth'"
    )

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
        ``None`` means not stated: ImageNet statistics are used and a warning is
        issued once, since a wrong guess silently changes every number.
    suggested_layers
        Layers the papers hooked, by module name.
    layer_units
        Channel count of each suggested layer at full width.
    extra_inputs
        Names of extra forward inputs beyond the image, e.g. ``("sparse_depth",)``.
        The model is called as ``model(image, **{name: tensor})``.
    input_multiple
        Input sides must be multiples of this (32 for BTS).
    reference
        Paper or repository the architecture follows.
    output_key
        Key of the depth map when the model returns a dict (default ``"depth"``).
    """

    input_size: tuple[int, int]
    output_stride: int = 1
    normalization: str | None = None
    suggested_layers: tuple[str, ...] = ()
    layer_units: Mapping[str, int] = field(default_factory=dict)
    extra_inputs: tuple[str, ...] = ()
    input_multiple: int = 1
    reference: str = ""
    output_key: str | None = None

    def __post_init__(self) -> None:
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            from .errors import ConfigError

            raise ConfigError(
                f"normalization must be one of {NORMALIZATIONS} or None, got {self.normalization!r}"
            )

    @property
    def resolved_normalization(self) -> str:
        """The normalisation in use: the stated one, or ``"imagenet"`` (warned once) if unstated."""
        if self.normalization is not None:
            return self.normalization
        if not _WARNED_UNSTATED:
            _WARNED_UNSTATED.append(True)
            warnings.warn(
                "the model's input normalisation is not stated; assuming ImageNet mean/std. State it "
                "(ModelInfo(normalization='imagenet' or 'unit'), normalization= in depthsel.dissect, "
                "or --normalization on the command line): a wrong guess changes every number",
                UnstatedNormalizationWarning, stacklevel=3,
            )
        return "imagenet"

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean subtracted from ``[0, 1]`` images."""
        return IMAGENET_MEAN if self.resolved_normalization == "imagenet" else (0.0, 0.0, 0.0)

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation images are divided by."""
        return IMAGENET_STD if self.resolved_normalization == "imagenet" else (1.0, 1.0, 1.0)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Map a ``[B, 3, H, W]`` image in ``[0, 1]`` to the network's input space."""
        if self.resolved_normalization == "unit":
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

    def predict(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`forward`, then the depth map by :func:`select_prediction` (dict/tuple outputs)."""
        return select_prediction(self.forward(model, batch), self.output_key)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable view."""
        data = asdict(self)
        data["layer_units"] = dict(self.layer_units)
        return data
