"""One call per job, for any ``nn.Module``: dissect, correct, ablate.

::

    import depthsel
    print(depthsel.layers(model, (64, 64)))                       # what can be hooked
    res = depthsel.dissect(model, data, layers=["up1"], binner=BINNER, normalization="imagenet")
    res.summary(); res.save_figures("figs/"); res.to_csv("units.csv")
    depthsel.correct(model, data, layers=["up1"], dissection=res)   # oracle correction
    depthsel.ablate(model, data, layers=["up1"], dissection=res)    # unit ablation curves

``BINNER`` is a registered binner's name (``depthsel binners``), a config dict
or a :class:`~depthsel.Binner`. ``data`` is a depthsel dataset (items ``{"image", "depth", "valid"}``), or a
pair ``(images [N, 3, H, W] in [0, 1], depths [N, H, W] in metres)``. The
analyzers are resolved through the plugin registry by name, like everything
else in depthsel; these functions only build the :class:`AnalysisContext`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .analysis import AnalysisContext
from .errors import ConfigError, DepthselError, ShapeMismatchError
from .modelinfo import ModelInfo

__all__ = ["TensorPairs", "dissect", "correct", "ablate", "as_dataset", "context"]


class TensorPairs(Dataset[dict[str, Any]]):
    """A dataset over in-memory ``images [N, 3, H, W]`` and ``depths [N, H, W]``.

    Depth ``<= 0`` or non-finite is invalid, as in every depthsel dataset.
    """

    def __init__(self, images: torch.Tensor, depths: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeMismatchError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
        if depths.ndim == 4 and depths.shape[1] == 1:
            depths = depths[:, 0]
        if depths.ndim != 3 or depths.shape[0] != images.shape[0]:
            raise ShapeMismatchError(
                f"depths must be [N, H, W] with N = {images.shape[0]} like the images, got {tuple(depths.shape)}"
            )
        self.images, self.depths = images.float(), depths.float()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        d = self.depths[i]
        return {"image": self.images[i], "depth": d, "valid": torch.isfinite(d) & (d > 0), "name": str(i)}


def as_dataset(data: Any) -> Dataset[Any]:
    """A dataset from a depthsel dataset or an ``(images, depths)`` pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorPairs(data[0], data[1])
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data  # type: ignore[no-any-return]
    raise ConfigError(
        f"data must be a dataset of {{'image', 'depth', 'valid'}} items or a pair (images [N, 3, H, W], "
        f"depths [N, H, W]); got {type(data).__name__}"
    )


def _info(model: nn.Module, info: ModelInfo | None, data: Dataset[Any], normalization: str | None,
          output_key: str | None) -> ModelInfo:
    if info is None:
        size = tuple(data[0]["image"].shape[-2:]) if len(data) else (224, 224)  # type: ignore[arg-type]
        info = ModelInfo(input_size=size, normalization=None)  # type: ignore[arg-type]
    if normalization is not None:
        info = replace(info, normalization=normalization)
    if output_key is not None:
        info = replace(info, output_key=output_key)
    return info


def context(model: nn.Module, data: Any, *, layers: str | Sequence[str] | None = None,
            info: ModelInfo | None = None, normalization: str | None = None,
            output_key: str | None = None, adapters: Mapping[str, Any] | None = None,
            batch_size: int = 4, device: str | torch.device = "cpu", seed: int = 0,
            progress: bool | None = False) -> AnalysisContext:
    """The :class:`AnalysisContext` the one-call functions build (for custom analyzers)."""
    dataset = as_dataset(data)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ConfigError("data is empty; pass at least one image with its depth")
    full = _info(model, info, dataset, normalization, output_key)
    names = [layers] if isinstance(layers, str) else list(layers or full.suggested_layers)
    if not names:
        raise ConfigError(
            "no layers given; pass layers=[...] (list candidates with depthsel.layers(model, input_size))"
        )
    return AnalysisContext(model=model, dataset=dataset, info=full, layers=names, device=device,
                           batch_size=batch_size, seed=seed, progress=progress, adapters=dict(adapters or {}))


def _run(name: str, ctx: AnalysisContext, options: Mapping[str, Any]) -> Any:
    from .api import get_analyzer

    try:
        analyzer = get_analyzer(name, **{k: v for k, v in options.items() if v is not None})
    except TypeError as exc:
        raise ConfigError(f"analyzer {name!r} rejected its options: {exc}") from exc
    return analyzer.run(ctx)


def dissect(model: nn.Module, data: Any, *, layers: str | Sequence[str] | None = None,
            binner: Any = None, run: str | Path | None = None, normalization: str | None = None,
            info: ModelInfo | None = None, permutations: int = 0, **options: Any) -> Any:
    """Dissect ``layers`` of ``model`` on ``data``; returns a result with ``.summary()``, ``.plot()``, ``.to_csv()``.

    ``.plot(layer=..., unit=...)`` returns a matplotlib figure; ``.save_figures(dir)``
    writes the heatmaps and unit curves as PNGs.

    Parameters
    ----------
    model
        Any depth network taking ``[B, 3, H, W]`` and returning depth (a tensor,
        a tuple starting with it, or a dict with ``"depth"``).
    data
        A depthsel dataset, or ``(images, depths)`` tensors.
    layers
        Layer names or globs (see :func:`depthsel.layers`).
    binner
        Registry name (``depthsel binners``), config dict or :class:`~depthsel.Binner`.
        Default: the dissection analyzer's own, or the training run's when ``run`` is given.
    run
        A ``depthsel train`` run directory (or its ``model.safetensors``): its
        binner, ``fit_bins_to_units``, assignment, layers and normalisation are used.
    normalization
        ``"imagenet"`` or ``"unit"``: how the model expects its input. Unstated,
        ImageNet is assumed with a warning (once).
    info
        A full :class:`~depthsel.ModelInfo` instead of ``normalization``.
    permutations
        Permutation-test shuffles (0, the default here, skips the test).
    **options
        Other :class:`dissection` options (``preset``, ``assignment``, ``adapters``...).
    """
    trained: dict[str, Any] = {}
    if run is not None:
        from .trained import dissection_options, run_config_path, saved_normalization

        if run_config_path(run) is None:
            raise ConfigError(f"{run} is not a training run (no config.json there); pass the run directory")
        trained = dissection_options(run)
        if normalization is None and info is None:
            normalization = saved_normalization(run)
    if layers is None and trained.get("layers"):
        layers = trained["layers"]
    adapters = options.pop("adapters", None)
    batch_size = options.pop("batch_size", 4)
    device = options.pop("device", "cpu")
    ctx = context(model, data, layers=layers, info=info, normalization=normalization, adapters=adapters,
                  batch_size=batch_size, device=device, output_key=options.pop("output_key", None))
    cfg = {k: v for k, v in trained.items() if k != "layers"}
    if binner is not None:
        cfg["binner"] = binner
    cfg.update(options)
    cfg["permutations"] = permutations
    return _run("dissection", ctx, cfg)


def correct(model: nn.Module, data: Any, *, layers: str | Sequence[str] | None = None,
            dissection: Any = None, normalization: str | None = None, info: ModelInfo | None = None,
            **options: Any) -> Any:
    """Oracle correction (You et al. Sec. 5.1) of ``layers``; returns a result with clean vs corrected metrics.

    ``dissection`` is a dissection result (or its saved directory) of held-out
    *training* data; without one, ``data`` itself is dissected first (an
    ``OracleWarning`` says so).
    """
    return _intervention("correction", model, data, layers, dissection, normalization, info, options)


def ablate(model: nn.Module, data: Any, *, layers: str | Sequence[str] | None = None,
           dissection: Any = None, normalization: str | None = None, info: ModelInfo | None = None,
           **options: Any) -> Any:
    """Zero units cumulatively (most/least selective first, random) and track accuracy; returns the curves.

    ``dissection`` orders the units, as in :func:`correct`; ``.save_figures(out_dir)``
    draws one figure per layer.
    """
    return _intervention("ablation", model, data, layers, dissection, normalization, info, options)


def _intervention(name: str, model: nn.Module, data: Any, layers: Any, dissection: Any,
                  normalization: str | None, info: ModelInfo | None, options: dict[str, Any]) -> Any:
    adapters = options.pop("adapters", None)
    ctx = context(model, data, layers=layers, info=info, normalization=normalization, adapters=adapters,
                  batch_size=options.pop("batch_size", 4), device=options.pop("device", "cpu"),
                  output_key=options.pop("output_key", None))
    if dissection is not None and not isinstance(dissection, (str, Path)):
        if not hasattr(dissection, "responses"):
            raise DepthselError(f"dissection must be a dissection result or its directory, got {type(dissection).__name__}")
    return _run(name, ctx, {"dissection": dissection, **options})
