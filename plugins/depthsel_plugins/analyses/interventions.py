"""Shared machinery of the intervention analyses (correction, ablation).

* :func:`evaluate` streams a dataset through the model (:func:`depthsel.stream.stream`)
  with forward hooks that replace layer outputs (:func:`depthsel.hooks.replace_outputs`) and returns accuracy metrics (:class:`depthsel.metrics.DepthMetrics`), optionally calling
  ``on_batch(batch)`` first so hooks can see the batch's ground truth.
* :func:`load_or_dissect` reads a stored dissection or computes one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from depthsel.analysis import AnalysisContext
from depthsel.errors import BinCountError
from depthsel.hooks import TensorFn
from depthsel.metrics import DepthMetrics
from depthsel.results import load_result
from depthsel.modelinfo import ModelInfo, select_prediction
from depthsel.stream import stream

from .dissection import DissectionAnalyzer
from .dissection_result import DissectionResult

__all__ = ["OracleWarning", "TensorFn", "evaluate", "load_or_dissect", "prediction"]


class OracleWarning(UserWarning):
    """An analysis used statistics of the very data it evaluates on."""


def prediction(output: Any) -> torch.Tensor:
    """The depth map of a model output (:func:`depthsel.modelinfo.select_prediction`, the one rule)."""
    return select_prediction(output)


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
    stream(model, dataset, {"metrics": metrics}, info=info, batch_size=batch_size, device=device,
           adapters=adapters, replace=fns or {}, progress=progress, description=description,
           max_batches=max_batches, on_batch=on_batch)
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
