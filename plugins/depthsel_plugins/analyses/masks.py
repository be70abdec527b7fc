"""Relevant-pixel masks (Hu et al., ICCV 2019, "Visualization of CNNs for Monocular Depth Estimation").

A mask network G is trained against a frozen depth network N to minimise

``l_dif(N(I), N(I * G(I))) + lambda * mean(G(I))``

where ``l_dif`` is Hu's depth + Sobel-gradient + normal loss with
``F(e) = ln(|e| + 0.5)`` (:func:`depthsel.losses.hu_depth_loss`). The target
is N's own prediction on the full image, not the ground truth. The mask
multiplies the *normalised* image, so a masked pixel becomes the dataset mean
colour (0 after normalisation). G is a DRN-D-22-style dilated residual encoder
(output stride 8) with three up-projection blocks and a 3x3 conv + sigmoid
head; ``width`` scales every channel count (16 is DRN-D-22, 4 runs on a CPU).

For each lambda of the sweep the analysis reports Hu's Table 1: RMSE against
the ground truth with the continuous mask M, with M binarised (``M >= threshold``,
0.025) and the sparseness (fraction of pixels kept by the binary mask), plus
the edge-map baseline of Hu's Fig. 5: the binary mask replaced by the top-k
Sobel-magnitude pixels of the grey image, k = the binary mask's pixel count
per image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from depthsel.analysis import AnalysisContext, Analyzer
from depthsel.consumer import BatchCallback
from depthsel.data import collate, dataset_fingerprint
from depthsel.figures import panels
from depthsel.losses import hu_depth_loss
from depthsel.metrics import DepthMetrics
from depthsel.progress import track
from depthsel.results import Result, provenance
from depthsel.modelinfo import ModelInfo, select_prediction
from depthsel.stream import stream

from .masks_net import MaskConfigError, MaskNet

__all__ = ["MaskNet", "MaskAnalyzer", "MaskResult", "MaskConfigError", "binarize", "sparseness",
           "edge_mask", "load_mask_net", "register_analyzers"]


# ------------------------------------------------------------ mask helpers
def binarize(mask: torch.Tensor, threshold: float = 0.025) -> torch.Tensor:
    """Hu's binary mask: 1 where ``mask >= threshold``, else 0 (same dtype as ``mask``)."""
    return (mask >= threshold).to(mask.dtype)


def sparseness(binary: torch.Tensor) -> float:
    """Fraction of non-zero pixels of a binary mask (Hu's Table 1 'sparseness')."""
    return float((binary != 0).double().mean()) if binary.numel() else math.nan


def edge_mask(image: torch.Tensor, counts: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Binary mask of the ``counts[b]`` strongest-edge pixels of each ``[0, 1]`` image.

    Edges are the Sobel gradient magnitude of the grey image (ITU-R 601 luma),
    with replicate padding so the frame border is not an edge. Exactly
    ``counts[b]`` pixels are kept (ties broken by ``topk``).
    """
    grey = (image * torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype,
                                 device=image.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=image.dtype)
    weight = torch.stack([kx, kx.t()])[:, None].to(image.device)
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), weight)
    mag = g.pow(2).sum(1).sqrt().flatten(1)
    out = torch.zeros_like(mag)
    for b, k in enumerate(torch.as_tensor(counts).tolist()):
        k = int(min(max(k, 0), mag.shape[1]))
        if k:
            out[b, mag[b].topk(k).indices] = 1.0
    return out.view(image.shape[0], 1, *image.shape[-2:])


def _run_net(model: nn.Module, info: ModelInfo, x_norm: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
    # The mask is applied in normalised space, so call the model directly, not info.forward.
    out = select_prediction(model(x_norm, **{n: batch[n] for n in info.extra_inputs}), info.output_key)
    return out[:, None] if out.ndim == 3 else out


def _key(lam: float) -> str:
    return f"lambda={lam:g}"


# ------------------------------------------------------------------ result
class MaskResult(Result):
    """Result of :class:`MaskAnalyzer`.

    ``data["table"]`` has one row per lambda (``rmse_mask``, ``rmse_binary``,
    ``sparseness``, ``rmse_edge``, ``rmse_full``); ``data["full"]`` the full-image
    metrics. Tensors: ``loss/lambda=L`` (training curve), ``overlay/image``,
    ``overlay/mean`` (the model's mean colour), ``overlay/lambda=L`` (masks of the
    first images) and ``G/lambda=L/<param>`` (the trained mask network's state dict).
    """

    kind: ClassVar[str] = "masks"
    figure_dpi: ClassVar[int] = 90
    figures_in_save: ClassVar[bool] = True

    def rows(self) -> list[dict[str, Any]]:
        """Hu Table 1 rows, one per lambda."""
        return [dict(r) for r in self.data.get("table", [])]

    def figures(self) -> dict[str, dict[str, Any]]:
        """``overlays/lambda=L.png`` per lambda when overlays were kept (``save`` writes them)."""
        if "overlay/image" not in self.tensors:
            return {}
        return {f"overlays/{_key(row['lambda'])}.png": {"lam": row["lambda"]} for row in self.rows()}

    def plot(self, ax: Any = None, *, lam: float | None = None) -> Any:
        """Overlays of one lambda (default: the first): image | mask M | what N sees, one row per image."""
        if "overlay/image" not in self.tensors:
            raise MaskConfigError("this result kept no overlay; run with num_overlays > 0")
        row = self.rows()[0] if lam is None else next((r for r in self.rows() if r["lambda"] == lam), None)
        if row is None:
            raise MaskConfigError(f"no lambda {lam:g} in this result; it has {[r['lambda'] for r in self.rows()]}")
        key = _key(row["lambda"])
        images, masks = self.tensors["overlay/image"], self.tensors[f"overlay/{key}"]
        # What N sees: masking the normalised image turns masked pixels into the mean colour.
        mean = self.tensors.get("overlay/mean", torch.zeros(3)).view(1, 1, 3).numpy()
        n = images.shape[0]
        fig, axes = panels(ax, n, 3, figsize=(7.5, 2.2 * n))
        for i in range(n):
            img = images[i].permute(1, 2, 0).clamp(0, 1).numpy()
            m = masks[i, 0].numpy()
            axes[i, 0].imshow(img)
            axes[i, 1].imshow(m, cmap="gray", vmin=0, vmax=1)
            axes[i, 2].imshow(mean + (img - mean) * m[..., None])
            for a, title in zip(axes[i], ("image", "mask M", "N's input (I x M)")):
                a.set_title(title if i == 0 else "", fontsize=9)
                a.axis("off")
        fig.suptitle(f"{key}: sparseness {row['sparseness']:.3f}", fontsize=10)
        fig.tight_layout()
        return fig


def load_mask_net(result: MaskResult, lam: float) -> MaskNet:
    """Rebuild the trained mask network G of one lambda from a (loaded) :class:`MaskResult`."""
    prefix = f"G/{_key(lam)}/"
    state = {k[len(prefix):]: v for k, v in result.tensors.items() if k.startswith(prefix)}
    if not state:
        raise MaskConfigError(f"the result holds no weights for lambda={lam:g}; run with store_weights=True "
                              f"and lambdas containing {lam:g}")
    net = MaskNet(int(result.config["width"]))
    net.load_state_dict(state)
    return net.eval()


# ---------------------------------------------------------------- analyzer
class MaskAnalyzer(Analyzer):
    """Train Hu et al.'s relevant-pixel mask network for each lambda and evaluate it.

    Parameters
    ----------
    lambdas
        Sparsity weights to sweep (Hu's Table 1: 1..6; the released code used 5).
    epochs, steps
        Training length per lambda; ``steps`` (optimizer steps) overrides ``epochs``.
    lr, weight_decay
        Adam settings.
    width
        Mask network width (16 = DRN-D-22; 4 for CPU).
    batch_size
        Training batch size (``None``: the context's).
    threshold
        Binarisation threshold of M (0.025).
    protocol
        Metric protocol for the RMSE (``"hu2019"``).
    num_overlays
        Images whose masks are stored and drawn.
    store_weights
        Store each trained G's state dict in the result.
    reference_offset
        Report Hu's raw ``ln(|e| + 0.5)`` loss values; the default shifts each log
        term by ``-ln 0.5`` so a perfect mask scores 0. Gradients are identical.
    """

    name = "masks"
    description = "Hu et al. 2019 relevant-pixel masks: lambda sweep, RMSE, sparseness, edge baseline"

    def __init__(self, *, lambdas: Sequence[float] = (1, 2, 3, 4, 5, 6), epochs: int = 10,
                 steps: int | None = None, lr: float = 1e-4, weight_decay: float = 1e-4, width: int = 16,
                 batch_size: int | None = None, threshold: float = 0.025, protocol: str = "hu2019",
                 num_overlays: int = 4, store_weights: bool = True, reference_offset: bool = False) -> None:
        lambdas = [float(v) for v in lambdas]
        if not lambdas or any(not v >= 0 for v in lambdas) or len(set(lambdas)) != len(lambdas):
            raise MaskConfigError(f"lambdas={lambdas} must be distinct numbers >= 0, e.g. [1, 2, 3, 4, 5, 6]")
        if epochs < 1 or (steps is not None and steps < 1):
            raise MaskConfigError("epochs and steps must be >= 1 (steps=None trains for epochs)")
        if not lr > 0 or width < 1 or (batch_size is not None and batch_size < 1):
            raise MaskConfigError("lr must be > 0, width >= 1 and batch_size >= 1 (or None)")
        if not 0 < threshold < 1:
            raise MaskConfigError(f"threshold={threshold} must lie in (0, 1); Hu used 0.025")
        super().__init__(lambdas=lambdas, epochs=epochs, steps=steps, lr=lr, weight_decay=weight_decay,
                         width=width, batch_size=batch_size, threshold=threshold, protocol=protocol,
                         num_overlays=max(0, int(num_overlays)), store_weights=store_weights,
                         reference_offset=reference_offset)
        self.c = self.config()

    def run(self, ctx: AnalysisContext) -> MaskResult:
        """Train one G per lambda against the frozen ``ctx.model`` and build Hu's Table 1.

        G is trained on ``ctx.train_dataset`` when given, else on
        ``ctx.dataset``; it is always evaluated on ``ctx.dataset``.
        """
        model, c = ctx.model, self.c
        was_training = model.training
        flags = [p.requires_grad for p in model.parameters()]
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # N is frozen: gradients flow through it into G only
        tensors: dict[str, torch.Tensor] = {}
        table: list[dict[str, Any]] = []
        full: dict[str, Any] = {}
        try:
            for lam in c["lambdas"]:
                net, curve = self._train(ctx, lam)
                row, full, overlays = self._evaluate(ctx, net)
                tail = curve[-max(1, len(curve) // 10):]  # last 10% of steps: less noisy than one step
                table.append({"lambda": lam, **row, "final_loss": float(tail.mean())})
                tensors[f"loss/{_key(lam)}"] = curve
                if overlays:
                    tensors["overlay/image"] = overlays["image"]
                    tensors["overlay/mean"] = torch.tensor(ctx.info.mean, dtype=torch.float32)
                    tensors[f"overlay/{_key(lam)}"] = overlays["mask"]
                if c["store_weights"]:
                    tensors.update({f"G/{_key(lam)}/{k}": v.detach().cpu().clone()
                                    for k, v in net.state_dict().items()})
        finally:
            for p, f in zip(model.parameters(), flags):
                p.requires_grad_(f)
            model.train(was_training)
        fp = dataset_fingerprint(ctx.dataset)
        return MaskResult(tensors=tensors, data={"table": table, "full": full},
                          config=self.config(), meta={**provenance(fp), "seed": ctx.seed})

    def _train(self, ctx: AnalysisContext, lam: float) -> tuple[MaskNet, torch.Tensor]:
        c = self.c
        # Every lambda starts from the same seeded G, so the sweep differs only in lambda.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            net = MaskNet(c["width"]).to(ctx.device)
        opt = torch.optim.Adam(net.parameters(), lr=c["lr"], weight_decay=c["weight_decay"])
        data = ctx.train_dataset if ctx.train_dataset is not None else ctx.dataset
        loader = torch.utils.data.DataLoader(
            data, batch_size=c["batch_size"] or ctx.batch_size, shuffle=True, collate_fn=collate,
            num_workers=ctx.num_workers, generator=torch.Generator().manual_seed(ctx.seed))
        total = c["steps"] or c["epochs"] * len(loader)
        losses: list[float] = []
        net.train()

        def batches() -> Any:
            while True:
                yield from loader

        steps = track(range(total), f"mask net {_key(lam)}", enabled=ctx.progress)
        for _, batch in zip(steps, batches()):
            batch = ctx.to_device(batch)
            x = ctx.info.normalize(batch["image"])
            with torch.no_grad():
                target = _run_net(ctx.model, ctx.info, x, batch)
            mask = net(x)
            pred = _run_net(ctx.model, ctx.info, x * mask, batch)
            loss = hu_depth_loss(pred, target, reference_offset=c["reference_offset"]) + lam * mask.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return net.eval(), torch.tensor(losses, dtype=torch.float64)

    @torch.no_grad()
    def _evaluate(self, ctx: AnalysisContext,
                  net: MaskNet) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        c = self.c
        m = {k: DepthMetrics(c["protocol"]) for k in ("full", "mask", "binary", "edge")}
        ov_img: list[torch.Tensor] = []
        ov_mask: list[torch.Tensor] = []
        totals = {"kept": 0.0, "pixels": 0.0}

        def each(view: Any) -> None:
            batch = view.batch
            x = ctx.info.normalize(batch["image"])
            mask = net(x)
            binary = binarize(mask, c["threshold"])
            edges = edge_mask(batch["image"], binary.flatten(1).sum(1).round().long())
            gt, valid = batch["depth"], batch["valid"]
            m["full"].update(view.prediction(), gt, valid)  # [B,H,W] or [B,1,H,W] both accepted
            for key, inp in (("mask", x * mask), ("binary", x * binary), ("edge", x * edges)):
                m[key].update(_run_net(ctx.model, ctx.info, inp, batch), gt, valid)
            totals["kept"] += float(binary.sum())
            totals["pixels"] += float(binary.numel())
            room = c["num_overlays"] - sum(t.shape[0] for t in ov_img)
            if room > 0:
                ov_img.append(batch["image"][:room].float().cpu())
                ov_mask.append(mask[:room].float().cpu())

        # The stream's own forward pass is the unmasked prediction; the three masked inputs run here.
        stream(ctx.model, ctx.dataset, {"masks": BatchCallback(each)}, info=ctx.info,
               batch_size=ctx.batch_size, device=ctx.device, num_workers=ctx.num_workers,
               progress=False, description="masks: evaluating", shard=False, sync=False)
        kept, pixels = totals["kept"], totals["pixels"]
        res = {k: v.compute() for k, v in m.items()}
        row = {"rmse_mask": res["mask"]["rmse"], "rmse_binary": res["binary"]["rmse"],
               "sparseness": kept / pixels if pixels else math.nan, "rmse_edge": res["edge"]["rmse"],
               "rmse_full": res["full"]["rmse"], "delta1_mask": res["mask"]["delta1"],
               "delta1_binary": res["binary"]["delta1"]}
        overlays = {"image": torch.cat(ov_img), "mask": torch.cat(ov_mask)} if ov_img else {}
        return row, res["full"], overlays


def register_analyzers(register: Any) -> None:
    """Register the ``masks`` analyzer."""
    register("masks", MaskAnalyzer, description=MaskAnalyzer.description)
