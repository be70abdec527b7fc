"""Figures of a dissection: response curves (You Fig. 3), heatmaps, feature maps (Fig. 5).

The first two draw one layer's stored tensors (:class:`LayerResponses`) into an
Axes, so they work on a reloaded result (``DissectionResult.plot`` calls them);
:func:`plot_feature_maps` runs the model and writes a PNG. This module reads no
result class: the result imports it, not the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from depthsel.binning import Binner, EdgesBinner
from depthsel.consumer import Consumer
from depthsel.errors import ShapeMismatchError
from depthsel.selectivity import assign_bins
from depthsel.modelinfo import ModelInfo
from depthsel.stream import stream

from .figures import pyplot, save_figure

__all__ = ["LayerResponses", "draw_response_curve", "draw_response_heatmap", "plot_feature_maps",
           "upsampled_activations"]


@dataclass(frozen=True)
class LayerResponses:
    """One layer of one split of a dissection: what its figures draw.

    ``responses`` is ``[K, Nb]``; ``edges`` ``[Nb + 1]``; the rest ``[K]`` per unit.
    """

    layer: str
    responses: torch.Tensor
    edges: torch.Tensor
    assigned: torch.Tensor
    argmax_bin: torch.Tensor
    dead: torch.Tensor
    ds: torch.Tensor
    target_ds: torch.Tensor

    @property
    def num_units(self) -> int:
        """``K``."""
        return int(self.responses.shape[0])

    def binner(self) -> EdgesBinner:
        """The layer's binner, rebuilt from its edges."""
        return EdgesBinner(self.edges)

    def check_unit(self, unit: int) -> None:
        """Refuse a unit index outside ``[0, K)``."""
        if not 0 <= unit < self.num_units:
            raise ShapeMismatchError(f"unit {unit} is out of range; {self.layer!r} has {self.num_units} units")


def draw_response_curve(ax: Any, view: LayerResponses, unit: int) -> None:
    """Response of one unit over depth bins (x: bin centres in metres).

    The assigned bin is marked with a dashed line, the argmax bin with a dot.
    """
    view.check_unit(unit)
    centres = view.binner().centers().numpy()
    y = view.responses[unit].numpy()
    ds = float(view.ds[unit])
    asg, amax, dead = int(view.assigned[unit]), int(view.argmax_bin[unit]), bool(view.dead[unit])
    layer = view.layer
    ax.plot(centres, y, "-", color="tab:gray" if dead else "tab:blue", lw=1.2)
    if not dead:
        ax.plot(centres[amax], y[amax], "o", color="tab:red", label=f"argmax bin {amax}")
    ax.axvline(centres[asg], ls="--", color="tab:green", label=f"assigned bin {asg}")
    ax.set_xlabel("depth (m, bin centre)")
    ax.set_ylabel("average response R")
    # A dead unit's flat line is not a measurement of selectivity: say so in the title.
    ax.set_title(f"{layer} unit {unit}  " + ("DEAD: never active on a valid pixel" if dead else f"DS={ds:.3f}"),
                 color="tab:red" if dead else "black")
    ax.legend(fontsize=7)


def draw_response_heatmap(ax: Any, view: LayerResponses) -> None:
    """Units x bins heatmap, rows sorted by assigned bin (then argmax), each row scaled to max 1.

    A depth-selective layer trained with assigned bins shows a diagonal.
    """
    r = torch.nan_to_num(view.responses.abs(), nan=0.0)
    asg, amax = view.assigned, view.argmax_bin
    order = sorted(range(r.shape[0]), key=lambda k: (int(asg[k]), int(amax[k])))
    rows = r[order]
    rows = rows / rows.max(1, keepdim=True).values.clamp(min=1e-12)
    centres = view.binner().centers().tolist()
    im = ax.imshow(rows.numpy(), aspect="auto", interpolation="nearest", cmap="viridis")
    # x: depth in metres at a few bin centres, not bin indices.
    nb = len(centres)
    ticks = sorted({round(i * (nb - 1) / 5) for i in range(6)}) if nb > 1 else [0]
    ax.set_xticks(ticks, [f"{centres[t]:.2g}" for t in ticks])
    ax.set_xlabel("depth (m, bin centre)")
    ax.set_ylabel("unit (sorted by assigned bin)")
    n_dead = _mark_dead_units(ax, order, view.dead)
    ax.set_title(f"{view.layer}: normalised responses" + (f" ({n_dead} dead, red)" if n_dead else ""))
    ax.figure.colorbar(im, ax=ax, fraction=0.046)


def _mark_dead_units(ax: Any, order: Sequence[int], dead: torch.Tensor) -> int:
    """Label rows with unit numbers when few enough, and mark dead units (never active) in red."""
    n = len(order)
    if n <= 32:
        ax.set_yticks(range(n), [f"{k}{' (dead)' if bool(dead[k]) else ''}" for k in order], fontsize=6)
        for label, k in zip(ax.get_yticklabels(), order):
            if bool(dead[k]):
                label.set_color("tab:red")
    rows = [i for i, k in enumerate(order) if bool(dead[k])]
    for i in rows:
        ax.axhline(i, color="tab:red", lw=0.8, ls=":")
    return len(rows)


class _KeepBatch(Consumer):
    """Keeps the (single) batch a stream shows it and one layer's activations."""

    def __init__(self, layer: str) -> None:
        super().__init__()
        self.layer = layer
        self.batch: dict[str, Any] = {}
        self.act = torch.empty(0)

    def update(self, view: Any) -> None:
        self.batch, self.act = dict(view.batch), view.activations[self.layer]


@torch.no_grad()
def upsampled_activations(model: nn.Module, info: ModelInfo, dataset: Dataset[Any], layer: str,
                          indices: Sequence[int], *, device: str | torch.device = "cpu",
                          align_corners: bool = False) -> tuple[dict[str, Any], torch.Tensor]:
    """Run ``model`` (in eval mode) on the images at ``indices``; return the batch and ``layer``'s maps.

    The maps are bilinearly upsampled to the depth resolution, ``[n, K, H, W]`` on the CPU.
    Indices outside the dataset are skipped; none left is an error.
    """
    idx = [i for i in indices if 0 <= i < len(dataset)]  # type: ignore[arg-type]
    if not idx:
        raise ShapeMismatchError(f"no image index in {list(indices)} lies in the dataset of {len(dataset)} images")
    keep = _KeepBatch(layer)
    stream(model, dataset, {"keep": keep}, layers=[layer], info=info, batch_size=len(idx), device=device,
           indices=idx, max_batches=1, progress=False)
    batch, act = keep.batch, keep.act
    up = F.interpolate(act.float(), size=batch["depth"].shape[-2:], mode="bilinear", align_corners=align_corners)
    return batch, up.cpu()


@torch.no_grad()
def plot_feature_maps(
    model: nn.Module,
    info: ModelInfo,
    dataset: Dataset[Any],
    layer: str,
    units: Sequence[int],
    binner: Binner,
    out_path: str | Path,
    *,
    assigned: torch.Tensor | None = None,
    indices: Sequence[int] = (0, 1, 2),
    device: str | torch.device = "cpu",
    align_corners: bool = False,
) -> Path:
    """Upsampled feature maps of ``units`` beside the mask of each unit's assigned bin (Fig. 5).

    Rows are images; columns are the image, then for each unit its feature map
    and the ground-truth mask of its assigned bin.

    Parameters
    ----------
    assigned
        ``int64 [K]`` bins; default :func:`~depthsel.assign_bins` with ``binner.num_bins``
        (pass ``result.get(layer, "assigned")`` to match a dissection).
    indices
        Dataset indices of the images shown (those beyond the dataset are skipped).
    """
    plt = pyplot()
    if not units:
        raise ShapeMismatchError("plot_feature_maps needs at least one valid image index and one unit")
    batch, up = upsampled_activations(model, info, dataset, layer, indices, device=device,
                                      align_corners=align_corners)
    idx = list(range(up.shape[0]))
    k = up.shape[1]
    if any(not 0 <= u < k for u in units):
        raise ShapeMismatchError(f"units must lie in [0, {k}) for layer {layer!r}")
    asg = assign_bins(k, binner.num_bins) if assigned is None else assigned
    bins = binner(batch["depth"], batch.get("valid")).cpu()
    ncol = 1 + 2 * len(units)
    fig, axes = plt.subplots(len(idx), ncol, figsize=(1.8 * ncol, 1.6 * len(idx)), squeeze=False)
    for row in range(len(idx)):
        axes[row, 0].imshow(batch["image"][row].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        for j, u in enumerate(units):
            axes[row, 1 + 2 * j].imshow(up[row, u].numpy(), cmap="magma")
            axes[row, 2 + 2 * j].imshow((bins[row] == int(asg[u])).numpy(), cmap="gray", vmin=0, vmax=1)
            if row == 0:
                axes[row, 1 + 2 * j].set_title(f"unit {u}", fontsize=7)
                axes[row, 2 + 2 * j].set_title(f"bin {int(asg[u])} mask", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, out_path)
