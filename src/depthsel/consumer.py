"""What the streaming loop feeds: consumers whose state is declared once.

A :class:`Consumer` declares each piece of its state with :meth:`Consumer.add_state`,
naming how two copies combine (``"sum"``, ``"max"``, ``"min"`` or ``"cat"``), as
torchmetrics' ``add_state`` does. Everything that moves state around follows from
that one declaration, so no subclass writes it by hand:

* :meth:`~Consumer.reset` restores the declared defaults;
* :meth:`~Consumer.merge` combines another consumer's state into this one;
* :meth:`~Consumer.sync` all-reduces (or all-gathers) across ``torch.distributed`` ranks;
* :meth:`~Consumer.state_dict` / :meth:`~Consumer.load_state_dict` give flat tensors
  for the stream's checkpoints, validated on load.

A state whose leading size is not known until the first batch (the unit count of a
layer) is declared with a leading dimension of 0 and re-declared with
:meth:`~Consumer.grow_state` when the size is known; merging into or loading onto
an empty state adopts the other's size.

Subclasses implement :meth:`~Consumer.update` (one :class:`~depthsel.stream.BatchView`)
and may override :meth:`~Consumer.after_merge` to restore an invariant that a plain
reduction breaks (a bounded sample trimmed back to its size).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import torch

from .errors import ResultFormatError, ShapeMismatchError

__all__ = ["BatchCallback", "Consumer", "Reduction", "distributed_ready"]

Reduction = Literal["sum", "max", "min", "cat"]
_REDUCTIONS = ("sum", "max", "min", "cat")
Self = TypeVar("Self", bound="Consumer")


def distributed_ready() -> bool:
    """Whether ``torch.distributed`` is available and initialised (the one check for every consumer)."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


class Consumer:
    """Base class of everything the stream feeds (see the module docstring)."""

    def __init__(self) -> None:
        self._defaults: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        self._reductions: dict[str, str] = {}
        self._children: dict[str, Consumer] = {}

    # ------------------------------------------------------------ declaring
    def add_state(self, name: str, default: torch.Tensor | list[Any], reduce: Reduction = "sum") -> None:
        """Declare one piece of state and set it to ``default``.

        Parameters
        ----------
        name
            Attribute name of the state.
        default
            A tensor (for ``sum``/``max``/``min``) or an empty list (``cat``:
            a list of tensors, one per item, concatenated by merge and sync).
        reduce
            How two copies combine.
        """
        if reduce not in _REDUCTIONS:
            raise ShapeMismatchError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        if reduce == "cat":
            if not isinstance(default, list) or default:
                raise ShapeMismatchError(f"state {name!r}: a 'cat' state starts as an empty list")
            self._defaults[name] = []
        else:
            if not isinstance(default, torch.Tensor):
                raise ShapeMismatchError(f"state {name!r}: a {reduce!r} state needs a tensor default")
            self._defaults[name] = default.detach().clone()
        self._reductions[name] = reduce
        setattr(self, name, self._fresh(name))

    def add_child(self, name: str, child: "Consumer") -> None:
        """Own another consumer whose state resets, merges, syncs and saves with this one's."""
        self._children[name] = child
        setattr(self, name, child)

    def grow_state(self, name: str, default: torch.Tensor) -> None:
        """Re-declare a lazily sized tensor state (leading size 0) once its size is known."""
        self._defaults[name] = default.detach().clone()
        setattr(self, name, default.detach().clone())

    def _fresh(self, name: str) -> torch.Tensor | list[torch.Tensor]:
        d = self._defaults[name]
        return [] if isinstance(d, list) else d.clone()

    def state_names(self) -> list[str]:
        """The declared states, in declaration order."""
        return list(self._defaults)

    # ------------------------------------------------------------- protocol
    def update(self, view: Any) -> None:
        """Take one batch (a :class:`~depthsel.stream.BatchView`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(view)")

    def reset(self) -> None:
        """Restore every declared state to its default."""
        for name in self._defaults:
            setattr(self, name, self._fresh(name))
        for child in self._children.values():
            child.reset()

    def after_merge(self) -> None:
        """Restore an invariant after a merge, a sync or a load (default: nothing)."""

    def merge(self: Self, other: Self) -> Self:
        """Combine ``other``'s state into this one (in place); returns ``self``."""
        if type(other) is not type(self) or other.state_names() != self.state_names():
            raise ShapeMismatchError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        for name, how in self._reductions.items():
            setattr(self, name, self._combine(name, how, getattr(self, name), getattr(other, name)))
        for name, child in self._children.items():
            child.merge(other._children[name])
        self.after_merge()
        return self

    def _combine(self, name: str, how: str, mine: Any, theirs: Any) -> Any:
        if how == "cat":
            return [*mine, *[t.clone() for t in theirs]]
        if mine.shape[:1] == (0,) and theirs.shape[:1] != (0,):
            mine = torch.zeros_like(theirs, device=mine.device)
            self._defaults[name] = torch.zeros_like(theirs)
        if theirs.shape[:1] == (0,) and mine.shape[:1] != (0,):
            return mine
        if mine.shape != theirs.shape:
            raise ShapeMismatchError(
                f"cannot merge state {name!r} of shape {tuple(theirs.shape)} into {tuple(mine.shape)}")
        theirs = theirs.to(mine.device, mine.dtype)
        if how == "sum":
            return mine + theirs
        return torch.maximum(mine, theirs) if how == "max" else torch.minimum(mine, theirs)

    def sync(self: Self, group: Any = None) -> Self:
        """Reduce every state across ``torch.distributed`` ranks (no-op without it); returns ``self``.

        Every rank must call it. Tensor states must agree in shape across ranks
        (a rank that saw no batch of a lazily sized state gets an error naming it).
        """
        if not distributed_ready():
            return self
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        for name, how in self._reductions.items():
            value = getattr(self, name)
            if how == "cat":
                setattr(self, name, _all_gather_list(name, value, group))
                continue
            shapes = _gather_shapes(value, group)
            if len(set(shapes)) > 1:
                raise ShapeMismatchError(
                    f"{type(self).__name__}.{name} has shapes {shapes} across ranks; every rank needs "
                    "at least one batch (use fewer processes than samples)")
            dist.all_reduce(value, op=ops[how], group=group)
        for child in self._children.values():
            child.sync(group)
        self.after_merge()
        return self

    # ---------------------------------------------------------- persistence
    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat CPU tensors: ``prefix + name`` per tensor state, ``prefix + name/i`` per list item."""
        out: dict[str, torch.Tensor] = {}
        for name, how in self._reductions.items():
            value = getattr(self, name)
            if how == "cat":
                out[f"{prefix}{name}/len"] = torch.tensor(len(value), dtype=torch.int64)
                out.update({f"{prefix}{name}/{i}": t.detach().cpu().clone() for i, t in enumerate(value)})
            else:
                out[f"{prefix}{name}"] = value.detach().cpu().clone()
        for name, child in self._children.items():
            out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Restore :meth:`state_dict`, checking names, dtypes and shapes against the declaration."""
        for name, how in self._reductions.items():
            try:
                if how == "cat":
                    n = int(state[f"{prefix}{name}/len"])
                    setattr(self, name, [state[f"{prefix}{name}/{i}"].clone() for i in range(n)])
                    continue
                value = state[f"{prefix}{name}"]
            except KeyError as exc:
                raise ResultFormatError(f"{type(self).__name__} state lacks {exc}; it was saved by another "
                                        "version or for other layers") from None
            self._load_tensor(name, value)
        for name, child in self._children.items():
            child.load_state_dict(state, f"{prefix}{name}.")
        self.after_merge()

    def _load_tensor(self, name: str, value: torch.Tensor) -> None:
        default = self._defaults[name]
        assert isinstance(default, torch.Tensor)
        lazy = default.shape[:1] == (0,)
        same = value.shape == default.shape or (lazy and value.shape[1:] == default.shape[1:])
        if not isinstance(value, torch.Tensor) or value.dtype != default.dtype or not same:
            raise ResultFormatError(
                f"{type(self).__name__} state {name!r} must be {default.dtype} of shape "
                f"{tuple(default.shape)}, got {getattr(value, 'dtype', type(value).__name__)} "
                f"{tuple(getattr(value, 'shape', ()))}")
        if lazy and value.shape[:1] != (0,):
            self._defaults[name] = torch.zeros_like(value)
        setattr(self, name, value.clone())


def _gather_shapes(value: torch.Tensor, group: Any) -> list[tuple[int, ...]]:
    import torch.distributed as dist

    world = dist.get_world_size(group)
    mine = torch.tensor([value.ndim, *value.shape, *([0] * (8 - value.ndim))], dtype=torch.int64,
                        device=value.device)
    bufs = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(bufs, mine, group=group)
    return [tuple(int(x) for x in b[1:1 + int(b[0])]) for b in bufs]


def _all_gather_list(name: str, items: list[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """Every rank's list items, in rank order (items of one state share dtype and shape)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    code = _DTYPES.index(items[0].dtype) if items else -1
    mine = torch.tensor([len(items), code], dtype=torch.int64)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    counts = [int(g[0]) for g in gathered]
    if sum(counts) == 0:
        return []
    template = items[0] if items else torch.zeros(0)
    shapes = _gather_shapes(template, group)
    real = {s for s, c in zip(shapes, counts) if c > 0}
    if len(real) > 1:
        raise ShapeMismatchError(f"state {name!r} holds items of shapes {sorted(real)} across ranks; "
                                 "sync needs one item shape")
    shape = next(iter(real))
    dtype = _DTYPES[max(int(g[1]) for g in gathered)]
    stacked = torch.zeros(max(counts), *shape, dtype=dtype, device=template.device)
    if items:
        stacked[: len(items)] = torch.stack(items).to(dtype)
    bufs = [torch.zeros_like(stacked) for _ in range(world)]
    dist.all_gather(bufs, stacked, group=group)
    return [b[i].clone() for b, c in zip(bufs, counts) for i in range(c)]


# Item dtypes a 'cat' state may sync (the code travels as an index into this tuple).
_DTYPES = (torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16, torch.bfloat16,
           torch.float32, torch.float64)


class BatchCallback(Consumer):
    """A consumer that calls ``fn(view)`` on every batch and declares no state.

    For passes whose state lives with the caller and is reduced by the caller
    (a probe's least-squares sums, an attack's running statistics): the stream
    still owns the loop, the device moves, capture and sharding. Nothing of it
    is checkpointed, so do not give such a pass a checkpoint path expecting the
    caller's state to resume.
    """

    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def update(self, view: Any) -> None:
        """Call the function."""
        self.fn(view)
