"""The one loop over a dataset.

:func:`stream` owns everything a pass over a dataset needs, once:

* the data loader, the move of each batch to the device, eval mode and ``no_grad``;
* the forward pass (through :class:`~depthsel.ModelInfo` when given) with
  :class:`~depthsel.Capture` hooks on the requested layers, and optional
  output-replacing hooks (interventions);
* binning the batch's ground truth once per binner, with the weight maps cached
  per (binner, h, w) (:class:`~depthsel.binned.BinnedDepth`);
* sharding across ``torch.distributed`` ranks (each rank a disjoint slice, no
  padding, so no image counts twice) and the final :meth:`Consumer.sync`;
* checkpoint and resume of every consumer's declared state
  (:func:`~depthsel.checkpoints.write_checkpoint_pair`), so that a resumed pass
  equals an uninterrupted one.

What to do with each batch belongs to the consumers (:class:`~depthsel.consumer.Consumer`):
they receive a :class:`BatchView` and never loop themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .binned import BinnedDepth
from .capture import Adapter, Capture
from .checkpoints import read_checkpoint_pair, write_checkpoint_pair
from .consumer import Consumer, distributed_ready
from .data import collate, dataset_fingerprint
from .errors import ResultFormatError, ShapeMismatchError
from .hooks import replace_outputs
from .layers import LayerSelector, LayerSpec
from .progress import track

__all__ = ["BatchView", "StreamReport", "stream", "distributed_rank", "move_batch", "probe_units"]


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` under ``torch.distributed``, ``(0, 1)`` without it."""
    if distributed_ready():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def move_batch(batch: Mapping[str, Any], device: str | torch.device) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (other entries kept as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class BatchView:
    """What every consumer sees of one batch.

    Attributes
    ----------
    batch
        The collated batch on the device (``image``, ``depth``, ``valid``, ...).
    output
        The model's raw output.
    activations
        ``{layer: [B, K, h, w]}`` captured (detached unless ``grad``) outputs.
    binned
        The batch's ground truth, binned once per binner.
    indices
        ``int64 [B]`` dataset indices of the batch's items.
    number
        Batch number within this call (a resumed pass counts from 0 again).
    nonnegative
        Layers whose output is provably never negative
        (:func:`~depthsel.capture.ends_nonnegative`): a consumer may take ``|A| = A``
        without looking. Empty when unknown, which is always safe.
    """

    batch: Mapping[str, Any]
    output: Any
    activations: Mapping[str, torch.Tensor]
    binned: BinnedDepth
    indices: torch.Tensor
    number: int
    output_key: str | None = None
    nonnegative: frozenset[str] = frozenset()
    _prediction: torch.Tensor | None = field(default=None, repr=False)

    @property
    def depth(self) -> torch.Tensor:
        """Ground-truth depth ``[B, 1, H, W]``."""
        return self.batch["depth"]

    @property
    def valid(self) -> torch.Tensor | None:
        """Validity mask (or ``None``)."""
        return self.batch.get("valid")

    def prediction(self) -> torch.Tensor:
        """The model's depth map (:func:`~depthsel.modelinfo.select_prediction`), selected once."""
        if self._prediction is None:
            from .modelinfo import select_prediction

            self._prediction = select_prediction(self.output, self.output_key)
        return self._prediction


@dataclass
class StreamReport:
    """What a pass did: images this rank processed (resumed ones included) and where it resumed."""

    images_done: int
    resumed_from: int
    fingerprint: str


Forward = Callable[[nn.Module, Mapping[str, Any]], Any]


def _forward_fn(info: Any) -> Forward:
    if info is None:
        return lambda model, batch: model(batch["image"])
    return info.forward


def _checkpoint_path(checkpoint: str | Path, rank: int, world: int) -> Path:
    """``<checkpoint>[.rankN].ckpt.json``; a marker suffix keeps ``ck.train`` and ``ck.test`` apart."""
    p = Path(str(checkpoint))
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.parent / (p.name + (f".rank{rank}" if world > 1 else "") + ".ckpt.json")


def _save(path: Path, done: int, fp: str, consumers: Mapping[str, Consumer]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, c in consumers.items():
        tensors.update(c.state_dict(f"{name}/"))
    meta = {"images_done": done, "fingerprint": fp,
            "consumers": {n: type(c).__name__ for n, c in consumers.items()}}
    write_checkpoint_pair(path, tensors, meta, tag=done)


def _resume(path: Path, fp: str, consumers: Mapping[str, Consumer]) -> int:
    pair = read_checkpoint_pair(path)
    if pair is None:
        return 0
    tensors, meta = pair
    try:
        done = int(meta["images_done"])
    except (KeyError, TypeError, ValueError):
        raise ResultFormatError(f"checkpoint {str(path)!r} does not say how many images it holds; "
                                "delete it to start over") from None
    kinds = {n: type(c).__name__ for n, c in consumers.items()}
    if meta.get("fingerprint") != fp or meta.get("consumers") != kinds:
        raise ResultFormatError(
            f"checkpoint {str(path)!r} belongs to another dataset or layer set (or another analysis); "
            "delete it or choose another checkpoint path")
    for name, c in consumers.items():
        prefix = f"{name}/"
        c.load_state_dict({k: v for k, v in tensors.items() if k.startswith(prefix)}, prefix)
    return done


class _IndexedSubset(Dataset):  # type: ignore[type-arg]
    """The items at ``indices``, each carrying its dataset index, so consumers can key images stably."""

    def __init__(self, dataset: Dataset[Any], indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        item = dict(self.dataset[self.indices[i]])
        item["_index"] = torch.tensor(self.indices[i], dtype=torch.int64)
        return item


def stream(
    model: nn.Module,
    dataset: Dataset[Any],
    consumers: Mapping[str, Consumer],
    *,
    layers: LayerSpec | None = None,
    info: Any = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    adapters: Mapping[str, Adapter] | None = None,
    replace: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    align_corners: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    fingerprint_extra: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool | None = None,
    description: str = "streaming",
    max_batches: int | None = None,
    indices: Sequence[int] | None = None,
    on_batch: Callable[[Mapping[str, Any]], None] | None = None,
    shard: bool = True,
    sync: bool = True,
) -> StreamReport:
    """Run ``model`` over ``dataset`` once and feed every batch to ``consumers``.

    Parameters
    ----------
    model
        The network (put in eval mode here; its mode is restored afterwards).
    dataset
        Items with ``image``, ``depth`` and ``valid``.
    consumers
        ``{name: Consumer}``; names key their state in checkpoints.
    layers
        Layers to capture for the consumers (``None``: none).
    info
        A :class:`~depthsel.ModelInfo` (normalisation, extra inputs, output key);
        ``None`` calls ``model(batch["image"])``.
    adapters
        ``{layer: callable}`` turning a raw layer output into ``[B, K, h, w]``.
    replace
        ``{layer: fn}``: replace the layer's output by ``fn(output)`` (interventions).
    align_corners
        Bilinear convention of the cached bin weight maps.
    checkpoint
        Path stem of a resumable checkpoint (``<stem>[.rankN].ckpt.json`` and
        its tensors file), saved every ``checkpoint_every`` batches and at the end.
    fingerprint_extra
        Settings folded into the dataset fingerprint that guards resumption
        (e.g. layers and bin edges).
    max_batches
        Stop after this many batches of this pass.
    indices
        Restrict to these dataset indices (in this order).
    on_batch
        Called with the device batch before the forward pass (e.g. so that an
        intervention can read its ground truth).
    shard
        Give each ``torch.distributed`` rank a disjoint slice (default); ``False``
        makes every rank see every image.
    sync
        Sync every consumer across ranks at the end (under ``torch.distributed``).

    Returns
    -------
    StreamReport
    """
    modules = LayerSelector(layers).resolve(model) if layers else {}
    fp = dataset_fingerprint(dataset, {"layers": list(modules), **dict(fingerprint_extra or {})})
    rank, world = distributed_rank() if shard else (0, 1)
    order = list(range(len(dataset))) if indices is None else [int(i) for i in indices]  # type: ignore[arg-type]
    shard = order[rank::world]
    path = _checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    start = _resume(path, fp, consumers) if path is not None else 0
    loader = DataLoader(_IndexedSubset(dataset, shard[start:]), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    forward, key = _forward_fn(info), getattr(info, "output_key", None)
    # Adapters serve both the captured layers and the replaced ones; Capture takes its own.
    captured_adapters = {n: a for n, a in (adapters or {}).items() if n in modules}
    was_training = model.training
    model.eval()
    done = start
    try:
        with torch.no_grad(), replace_outputs(model, replace or {}, adapters), \
                Capture(model, modules, detach=True, adapters=captured_adapters) as cap:
            for i, batch in enumerate(track(loader, description, enabled=progress)):
                if max_batches is not None and i >= max_batches:
                    break
                batch = move_batch(batch, device)
                idx = batch.pop("_index")
                if on_batch is not None:
                    on_batch(batch)
                output = forward(model, batch)
                acts, nonnegative = dict(cap.outputs), frozenset(cap.nonnegative)
                cap.clear()
                missing = [n for n in modules if n not in acts]
                if missing:
                    raise ShapeMismatchError(f"layers {missing} did not run in the forward pass")
                view = BatchView(batch, output, acts, BinnedDepth(batch["depth"], batch.get("valid"),
                                 align_corners=align_corners), idx, i, output_key=key,
                                 nonnegative=nonnegative)
                for c in consumers.values():
                    c.update(view)
                done += int(idx.shape[0])
                if path is not None and (i + 1) % checkpoint_every == 0:
                    _save(path, done, fp, consumers)
    finally:
        model.train(was_training)
    if path is not None:
        _save(path, done, fp, consumers)
    if sync and world > 1:
        for c in consumers.values():
            c.sync()
    return StreamReport(images_done=done, resumed_from=start, fingerprint=fp)


def probe_units(model: nn.Module, dataset: Dataset[Any], layers: LayerSpec, *, info: Any = None,
                adapters: Mapping[str, Adapter] | None = None,
                device: str | torch.device = "cpu") -> dict[str, int]:
    """``{layer: K}``: the channel count of each layer, from one forward pass on the first item.

    Bins are fitted to the unit count before the pass over the data, so the
    count must be known first; this is the one place that probes for it.
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ShapeMismatchError("the dataset is empty; give it at least one sample")
    modules = LayerSelector(layers).resolve(model)
    batch = move_batch(collate([dataset[0]]), device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), Capture(model, modules, adapters=adapters) as cap:
            _forward_fn(info)(model, batch)
            return {n: int(cap.outputs[n].shape[1]) for n in modules if n in cap.outputs}
    finally:
        model.train(was)
