"""A unit gallery: each unit's response curve beside its feature map overlaid on input images.

One row per unit, sorted by assigned bin: the curve says *which depths* a unit
responds to (assigned bin shaded green, argmax dot red, dead units labelled),
and the overlays say *where in the image* it fires, with the outline of the
unit's assigned-bin pixels drawn on top, so a reader can check at a glance
that the two agree. Runs the model once on the shown images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from depthsel.errors import ShapeMismatchError

from .dissection_plots import LayerResponses, upsampled_activations
from .figures import pyplot, save_figure

__all__ = ["plot_unit_gallery"]


def _curve(ax: Any, view: LayerResponses, unit: int) -> None:
    r = view.responses.numpy()[unit]
    edges = view.edges.numpy()
    centres = (edges[1:] + edges[:-1]) / 2
    asg, amax = int(view.assigned[unit]), int(view.argmax_bin[unit])
    dead, tds = bool(view.dead[unit]), float(view.target_ds[unit])
    ax.axvspan(edges[asg], edges[asg + 1], color="tab:green", alpha=0.25)
    ax.plot(centres, r, "-", color="0.5" if dead else "tab:blue", lw=1.1)
    if not dead:
        ax.plot(centres[amax], r[amax], "o", color="tab:red", ms=4)
    title = f"unit {unit}: DEAD" if dead else f"unit {unit}: target DS {tds:.2f}"
    ax.set_title(title, fontsize=7, color="tab:red" if dead else "black")
    ax.tick_params(labelsize=6)
    ax.set_xlabel("depth (m)", fontsize=6)


@torch.no_grad()
def plot_unit_gallery(model: nn.Module, info: Any, dataset: Dataset[Any], view: LayerResponses,
                      out_path: str | Path, *, units: Sequence[int] | None = None,
                      indices: Sequence[int] = (0, 1, 2), device: str | torch.device = "cpu",
                      align_corners: bool = False) -> Path:
    """Write the gallery of ``units`` (default: every unit, at most 16, sorted by assigned bin).

    ``view`` is one layer of a dissection (``DissectionResult.layer_view``);
    ``align_corners`` should be the dissection's.
    """
    plt = pyplot()
    asg, layer = view.assigned, view.layer
    k = view.num_units
    chosen = list(units) if units is not None else sorted(range(k), key=lambda u: (int(asg[u]), u))[:16]
    if not chosen or any(not 0 <= u < k for u in chosen):
        raise ShapeMismatchError(f"the gallery needs units in [0, {k}) of {layer!r}")
    batch, up = upsampled_activations(model, info, dataset, layer, indices, device=device,
                                      align_corners=align_corners)
    idx = [i for i in indices if 0 <= i < len(dataset)]  # type: ignore[arg-type]
    bins = view.binner()(batch["depth"], batch.get("valid")).cpu()
    images = batch["image"].permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy()
    fig, axes = plt.subplots(len(chosen), 1 + len(idx), figsize=(2.2 * (1 + len(idx)), 1.5 * len(chosen)),
                             squeeze=False)
    for row, u in enumerate(chosen):
        _curve(axes[row, 0], view, u)
        for col in range(len(idx)):
            ax = axes[row, 1 + col]
            fmap = up[col, u].numpy()
            span = float(fmap.max() - fmap.min())
            ax.imshow(images[col])
            ax.imshow((fmap - fmap.min()) / (span or 1.0), cmap="magma", alpha=0.6, vmin=0, vmax=1)
            mask = (bins[col] == int(asg[u])).numpy().astype(np.float32)
            if mask.any() and not mask.all():
                ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"image {idx[col]} (green: assigned-bin pixels)", fontsize=6)
    fig.suptitle(f"{layer}: units by assigned bin", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / len(chosen)))
    return save_figure(fig, out_path)
