"""Streaming dissection: per-layer response statistics over a whole dataset.

:func:`collect_responses` runs the model under ``no_grad`` with capture hooks,
bins each batch's ground truth once, and feeds one
:class:`~depthsel.ResponseAccumulator` per layer. Memory is constant in the
dataset size. It can checkpoint its accumulators every N batches (atomic
safetensors + JSON) and resume after a crash, and under ``torch.distributed``
each rank takes a disjoint shard (no padding, so no sample counts twice) and
the float64 sums are all-reduced at the end: the result equals the
single-process result whatever the world size.
"""

from __future__ import annotations

import sys as _sys
import types as _types

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .accumulator import ResponseAccumulator
from .alignment import bin_weight_maps
from .binning import Binner
from .capture import Adapter, Capture
from .checkpoints import atomic_write, atomic_write_bytes
from .data import collate, dataset_fingerprint
from .errors import ResultFormatError, ShapeMismatchError
from .layers import LayerSelector, LayerSpec
from .progress import track
from .modelinfo import ModelInfo

__all__ = ["collect_responses", "ResponseCollection"]


@dataclass
class ResponseCollection:
    """Accumulators of one dissection pass.

    Attributes
    ----------
    accumulators
        ``{layer: ResponseAccumulator}`` in layer order.
    binners
        ``{layer: Binner}`` used per layer.
    fingerprint
        Dataset fingerprint.
    """

    accumulators: dict[str, ResponseAccumulator]
    binners: dict[str, Binner]
    fingerprint: str
    resumed_from: int = 0


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StreamState(Protocol):
    """Extra per-pass state (e.g. a permutation sample) saved in the same checkpoint as the sums."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata that restore the state exactly."""

    def load_state_dict(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _save_ckpt(path: Path, images_done: int, fp: str, accs: Mapping[str, ResponseAccumulator],
               extra: StreamState | None = None) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"images_done": images_done, "fingerprint": fp, "layers": {}}
    if extra is not None:
        ext, meta["extra"] = extra.state_dict()
        tensors.update({f"extra/{k}": v.contiguous() for k, v in ext.items()})
    for name, acc in accs.items():
        st = acc.state_dict()
        for key in ("sums", "abs_sums", "counts"):
            tensors[f"{name}/{key}"] = st[key]
        meta["layers"][name] = {k: st[k] for k in ("version", "num_bins", "num_units",
                                                   "num_images", "skipped_batches")}
    # Each checkpoint's tensors go to their own file, named in the JSON, which is
    # written last: a crash between the two writes leaves the previous JSON and
    # the previous tensors file (still on disk) in force, so they always match.
    tname = _tensors_name(path, images_done)
    meta["tensors"] = tname
    atomic_write(path.parent / tname, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta).encode())
    # Only now is the previous tensors file unreferenced.
    prefix = path.with_suffix("").name + "."
    for old in path.parent.glob(f"{path.with_suffix('').name}.*.safetensors"):
        middle = old.name[len(prefix):-len(".safetensors")]
        if old.name != tname and middle.isdigit():
            old.unlink(missing_ok=True)


def _ckpt_stem(checkpoint: str | Path, rank: int, world: int) -> Path:
    """The checkpoint path the helpers above derive their file names from.

    They call ``with_suffix``, which replaces whatever follows the last dot: a
    marker suffix keeps ``ck.train`` and ``ck.test`` (or ``ck.rank0`` and
    ``ck.rank1``) two checkpoints instead of one shared ``ck.json``.
    """
    p = Path(str(checkpoint))
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.parent / (p.name + (f".rank{rank}" if world > 1 else "") + ".ckpt")


def _tensors_name(path: Path, images_done: int) -> str:
    return f"{path.with_suffix('').name}.{images_done:010d}.safetensors"


def _load_ckpt(path: Path, fp: str, accs: Mapping[str, ResponseAccumulator],
               extra: StreamState | None = None) -> int:
    jpath = path.with_suffix(".json")
    if not jpath.is_file():
        return 0
    from safetensors.torch import load_file

    try:
        meta = json.loads(jpath.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("layers"), dict):
            raise ValueError("the JSON is not a checkpoint description")
        int(meta["images_done"])
        tname = meta.get("tensors")
        # Checkpoints written before tensors files were versioned use the plain name.
        tpath = path.with_suffix(".safetensors") if tname is None else path.parent / Path(str(tname)).name
        if not tpath.is_file():
            raise FileNotFoundError(f"{tpath.name} is missing")
        tensors = load_file(str(tpath))
    except Exception as exc:  # noqa: BLE001
        raise ResultFormatError(
            f"dissection checkpoint {str(jpath)!r} is unreadable ({exc}); delete it to start over"
        ) from exc
    if meta.get("fingerprint") != fp or set(meta.get("layers", {})) != set(accs):
        raise ResultFormatError(
            f"dissection checkpoint {str(jpath)!r} belongs to another dataset or layer set; "
            "delete it or choose another checkpoint path"
        )
    for name, acc in accs.items():
        try:
            state = dict(meta["layers"][name])
            for key in ("sums", "abs_sums", "counts"):
                state[key] = tensors[f"{name}/{key}"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFormatError(
                f"dissection checkpoint {str(jpath)!r} lacks {exc} for layer {name!r}; delete it to start over"
            ) from exc
        acc.load_state_dict(state)
    if extra is not None:
        if "extra" not in meta:
            raise ResultFormatError(
                f"dissection checkpoint {str(jpath)!r} holds no permutation/diagnostics state; it was written "
                "with those off or by an older version: delete it to start over")
        extra.load_state_dict({k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")},
                              meta["extra"])
    return int(meta["images_done"])


def collect_responses(
    model: nn.Module,
    dataset: Dataset[Any],
    layers: LayerSpec,
    binner: Binner | Mapping[str, Binner],
    *,
    info: ModelInfo | None = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    align_corners: bool = False,
    method: str = "adjoint",
    adapters: Mapping[str, Adapter] | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
    num_workers: int = 0,
    progress: bool | None = None,
    max_batches: int | None = None,
    indices: Sequence[int] | None = None,
    state: StreamState | None = None,
) -> ResponseCollection:
    """Accumulate per-unit, per-bin responses of ``layers`` over ``dataset``.

    Parameters
    ----------
    model
        The network (put in eval mode here; its mode is restored afterwards).
    dataset
        A depthsel dataset (items with ``image``, ``depth``, ``valid``).
    layers
        Layer specification.
    binner
        One binner for all layers, or ``{layer: binner}``.
    info
        Model metadata for input normalisation and extra inputs; ``None``
        feeds ``batch["image"]`` as is.
    checkpoint
        Path stem for resumable checkpoints (``.json`` + ``.safetensors``);
        under torch.distributed each rank appends ``.rankN``.
    checkpoint_every
        Save every this many batches.
    max_batches
        Stop after this many batches (for tests and quick looks).
    indices
        Restrict to these dataset indices (in this order).
    state
        Extra state of the pass (the dissection's permutation sample and
        diagnostics) saved and restored with each checkpoint, so that a
        resumed pass equals an uninterrupted one.
    """
    modules = LayerSelector(layers).resolve(model)
    binners = dict(binner) if isinstance(binner, Mapping) else {n: binner for n in modules}
    accs = {n: ResponseAccumulator(binners[n].num_bins, align_corners=align_corners, method=method)
            for n in modules}
    fp = dataset_fingerprint(dataset, {"layers": list(modules),
                                       "edges": {n: binners[n].edges.tolist() for n in modules}})
    rank, world = _dist()
    order = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    shard = order[rank::world]
    ckpt_path = None
    start = 0
    if checkpoint is not None:
        ckpt_path = _ckpt_stem(checkpoint, rank, world)
        start = _load_ckpt(ckpt_path, fp, accs, state)
    remaining = shard[start:]
    loader = DataLoader(Subset(dataset, remaining), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    done = start
    try:
        with torch.no_grad(), Capture(model, modules, detach=True, adapters=adapters) as cap:
            for i, batch in enumerate(track(loader, "dissecting", enabled=progress)):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                if info is not None:
                    info.forward(model, batch)
                else:
                    model(batch["image"])
                bins_cache: dict[int, torch.Tensor] = {}
                wcache: dict[tuple[int, int, int], torch.Tensor] = {}
                for name in modules:
                    act = cap.outputs.get(name)
                    if act is None:
                        raise ShapeMismatchError(f"layer {name!r} did not run in the forward pass")
                    b = binners[name]
                    if id(b) not in bins_cache:
                        bins_cache[id(b)] = b(batch["depth"], batch.get("valid"))
                    bins = bins_cache[id(b)]
                    wkey = (id(b), act.shape[-2], act.shape[-1])
                    if method == "adjoint" and act.ndim == 4 and act.shape[0] == bins.shape[0]:
                        if wkey not in wcache:
                            wcache[wkey] = bin_weight_maps(bins, b.num_bins, tuple(act.shape[-2:]),
                                                           align_corners, dtype=torch.float64)
                    accs[name].update(act, bins, weights=wcache.get(wkey))
                cap.clear()
                done += int(batch["image"].shape[0])
                if ckpt_path is not None and (i + 1) % checkpoint_every == 0:
                    _save_ckpt(ckpt_path, done, fp, accs, state)
    finally:
        model.train(was_training)
    if ckpt_path is not None:
        _save_ckpt(ckpt_path, done, fp, accs, state)
    if world > 1:
        for acc in accs.values():
            if acc.num_units is None:
                raise ShapeMismatchError(
                    "a rank received no data to dissect; use fewer processes than samples"
                )
            acc.sync()
    return ResponseCollection(accumulators=accs, binners=binners, fingerprint=fp, resumed_from=start)


class _CallableModule(_types.ModuleType):
    """``depthsel.dissect`` is both this module and the one-call :func:`depthsel.quick.dissect`.

    The package attribute and the submodule share a name, so the module itself
    is made callable: ``import depthsel.dissect`` keeps working and
    ``depthsel.dissect(...)`` runs the one-call function.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .quick import dissect as _fn

        return _fn(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
