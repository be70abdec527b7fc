"""Shared machinery of the intervention analyses (correction, ablation).

* :func:`output_hooks` installs forward hooks that *replace* a layer's output
  (PyTorch feeds a hook's return value to the rest of the network) and always
  removes them.
* :func:`evaluate` streams a dataset through the model and returns accuracy
  metrics (:class:`depthsel.metrics.DepthMetrics`), optionally calling
  ``on_batch(batch)`` first so hooks can see the batch's ground truth.
* :func:`load_or_dissect` reads a stored dissection or computes one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from depthsel.analysis import AnalysisContext
from depthsel.data import collate
from depthsel.errors import ActivationShapeError, BinCountError, ShapeMismatchError
from depthsel.layers import LayerSelector
from depthsel.metrics import DepthMetrics
from depthsel.progress import track
from depthsel.results import load_result
from depthsel.modelinfo import ModelInfo, select_prediction

from .dissection import DissectionAnalyzer
from .dissection_result import DissectionResult

__all__ = ["OracleWarning", "output_hooks", "evaluate", "load_or_dissect", "prediction"]

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class OracleWarning(UserWarning):
    """An analysis used statistics of the very data it evaluates on."""


def prediction(output: Any) -> torch.Tensor:
    """The depth map of a model output (:func:`depthsel.modelinfo.select_prediction`, the one rule)."""
    return select_prediction(output)


def _checked(name: str, act: Any) -> torch.Tensor:
    if not isinstance(act, torch.Tensor) or act.ndim != 4:
        raise ActivationShapeError(
            f"layer {name!r} outputs {getattr(act, 'shape', type(act).__name__)}, not [B, K, h, w]; "
            f"pass adapters={{{name!r}: depthsel.TokenGridAdapter(grid=(h, w), skip_tokens=...)}} "
            "(CLI: --tokens LAYER:grid=HxW:skip=N) or hook a layer with a spatial output"
        )
    return act


def _replace(output: Any, fn: TensorFn, name: str = "layer", adapter: Any = None) -> Any:
    if adapter is not None:
        inverse = getattr(adapter, "inverse", None)
        if not callable(inverse):
            raise ActivationShapeError(
                f"the adapter of layer {name!r} has no inverse(grid, original), so the layer's "
                "output cannot be replaced; use depthsel.TokenGridAdapter"
            )
        return inverse(fn(_checked(name, adapter(output))), output)
    if isinstance(output, torch.Tensor):
        return fn(_checked(name, output))
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return (fn(_checked(name, output[0])), *output[1:])
    if isinstance(output, list) and output and isinstance(output[0], torch.Tensor):
        return [fn(_checked(name, output[0])), *output[1:]]
    raise ShapeMismatchError(
        f"cannot intervene on a layer output of type {type(output).__name__}; hook a layer that "
        "returns a [B, K, h, w] tensor"
    )


@contextmanager
def output_hooks(model: nn.Module, fns: Mapping[str, TensorFn],
                 adapters: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Replace the output of each named layer by ``fn(output)`` inside the block.

    A layer with an adapter (e.g. ViT tokens) is adapted to ``[B, K, h, w]``,
    passed to ``fn``, and written back with the adapter's ``inverse``.
    """
    modules = LayerSelector(list(fns)).resolve(model) if fns else {}
    adapters = dict(adapters or {})
    handles = []
    try:
        for name, module in modules.items():
            fn, adapter = fns[name], adapters.get(name)
            handles.append(module.register_forward_hook(
                lambda _m, _i, out, fn=fn, name=name, adapter=adapter: _replace(out, fn, name, adapter)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    info: ModelInfo,
    dataset: Dataset[Any],
    *,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    protocol: str = "default",
    fns: Mapping[str, TensorFn] | None = None,
    adapters: Mapping[str, Any] | None = None,
    on_batch: Callable[[Mapping[str, Any]], None] | None = None,
    progress: bool | None = None,
    description: str = "evaluating",
    max_batches: int | None = None,
) -> dict[str, Any]:
    """Accuracy of ``model`` on ``dataset`` with optional output-replacing hooks.

    Returns :meth:`DepthMetrics.compute` (``delta1``, ``rmse``, ``abs_rel``, ...).
    """
    metrics = DepthMetrics(protocol)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    was = model.training
    model.eval()
    try:
        with output_hooks(model, fns or {}, adapters):
            for i, batch in enumerate(track(loader, description, enabled=progress)):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                if on_batch is not None:
                    on_batch(batch)
                pred = info.predict(model, batch)
                metrics.update(pred, batch["depth"], batch.get("valid"))
    finally:
        model.train(was)
    return metrics.compute()


def check_assignment(result: DissectionResult) -> None:
    """Refuse a dissection whose units were put on bins ``0..K-1`` of ``Nb > K`` bins.

    Results saved before ``fit_bins_to_units`` became the default could hold
    that silent mismatch (no explicit assignment, bins not fitted): their target
    DS and peak-on-target do not measure what they say.
    """
    if result.config.get("assignment") is not None or result.config.get("fit_bins_to_units", True):
        return
    for split in result.splits:
        for layer in result.layers:
            k = int(result.get(layer, "assigned", split).numel())
            nb = result.binner(layer, split).num_bins
            if k < nb:
                raise BinCountError(
                    f"the dissection of {layer!r} ({split}) assigned its {k} units to bins 0..{k - 1} of "
                    f"{nb}: its target DS does not measure the paper's assignment; dissect again with "
                    "fit_bins_to_units=true (the default) or an explicit assignment"
                )


def load_or_dissect(ctx: AnalysisContext, path: str | Path | DissectionResult | None,
                    **dissect_config: Any) -> tuple[DissectionResult, str]:
    """A stored dissection (path or object), or a fresh one of ``ctx.dataset``.

    Returns the result and a sentence saying where it came from. A fresh
    dissection warns (:class:`OracleWarning`): its statistics come from the
    very data the analysis then evaluates on.
    """
    if isinstance(path, DissectionResult):
        check_assignment(path)
        return path, "dissection passed in by the caller"
    if path is not None:
        res = load_result(path, expected=DissectionResult)
        assert isinstance(res, DissectionResult)
        check_assignment(res)
        return res, f"stored dissection {str(path)!r}"
    msg = ("no dissection given: dissected the evaluation data itself first, so the responses "
           "come from the same images that are evaluated (not a held-out train split)")
    warnings.warn(msg, OracleWarning, stacklevel=3)
    cfg = {"permutations": 0, "split": "train", **dissect_config}
    return DissectionAnalyzer(**cfg).run(ctx), msg
