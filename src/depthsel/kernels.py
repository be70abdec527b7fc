"""Optional compiled CPU loops for binning, bin counts and the adjoint weight maps.

On the CPU the statistics of a dissection are a handful of memory-bound passes
per batch. With torch operations each step is several passes (build an index
tensor, gather, compare, scatter); a compiled loop does each step in one. With
`numba <https://numba.pydata.org>`_ installed (``pip install "depthsel[fast]"``)
these loops are used on CPU tensors; without it, or with
``DEPTHSEL_KERNELS=torch``, the torch operations run. Bins and counts are
identical on both paths; weight maps and per-bin sums agree to float rounding
(bit-identical at power-of-two scale factors), tested in ``tests/test_kernels.py``,
so the choice changes speed only. CUDA tensors always take the torch path.

``DEPTHSEL_KERNELS``: ``auto`` (default: numba when importable), ``numba``
(an error when it is missing) or ``torch``; :func:`use` sets it for a block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType
from typing import Any

import torch

from .errors import ConfigError, ShapeMismatchError

__all__ = ["backend", "use", "numba_enabled", "scatter_taps", "ImageTapScatter", "lookup_bins", "count_bins", "BACKENDS"]

BACKENDS = ("auto", "numba", "torch")
_LOADED: dict[str, ModuleType | None] = {}


def _requested() -> str:
    choice = os.environ.get("DEPTHSEL_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ConfigError(f"DEPTHSEL_KERNELS={choice!r}: use one of {', '.join(BACKENDS)}")
    return choice


def _module() -> ModuleType | None:
    """The compiled loops, imported once (importing numba costs about 0.3 s, so only on first use)."""
    if "numba" not in _LOADED:
        try:
            from . import _numba_kernels
        except ImportError:
            _LOADED["numba"] = None
        else:
            _LOADED["numba"] = _numba_kernels
    return _LOADED["numba"]


def backend() -> str:
    """``"numba"`` or ``"torch"``: what CPU tensors get under ``DEPTHSEL_KERNELS`` now."""
    choice = _requested()
    if choice == "torch":
        return "torch"
    if _module() is None:
        if choice == "numba":
            raise ConfigError('DEPTHSEL_KERNELS=numba but numba is not installed; pip install "depthsel[fast]"')
        return "torch"
    return "numba"


@contextmanager
def use(name: str) -> Iterator[None]:
    """Run a block with ``DEPTHSEL_KERNELS=name`` (``auto``, ``numba`` or ``torch``), restoring it after."""
    old = os.environ.get("DEPTHSEL_KERNELS")
    os.environ["DEPTHSEL_KERNELS"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DEPTHSEL_KERNELS", None)
        else:
            os.environ["DEPTHSEL_KERNELS"] = old


def numba_enabled(*tensors: torch.Tensor) -> bool:
    """True when every tensor is on the CPU and the numba loops are on."""
    return all(t.device.type == "cpu" for t in tensors) and backend() == "numba"


def _np(t: torch.Tensor) -> Any:
    """A NumPy view of a contiguous CPU tensor (no copy; the loops write through it)."""
    if not t.is_contiguous():
        raise ValueError("kernel arrays must be contiguous")  # an internal misuse, not user input
    return t.detach().numpy()


def _out_of_range(bad: int, num_bins: int) -> None:
    if bad:
        raise ShapeMismatchError(
            f"bin indices out of range for {num_bins} bins ({bad} pixels); bin the depth with a binner "
            "of the same num_bins"
        )


def scatter_taps(bins: torch.Tensor, taps: Any, out: torch.Tensor, num_bins: int, feat_width: int, row: int,
                 offset: int, column: torch.Tensor | None = None) -> None:
    """Fill ``out [B, L]`` with the adjoint bilinear weights of ``bins [B, H*W]``.

    ``taps``: a :class:`depthsel.taps.TapTable` in ``out``'s dtype. Feature location
    ``q`` and bin ``d`` land at ``q * row + offset + column[d]`` (``column``: ``int64
    [num_bins]``, the identity when ``None``). See :func:`depthsel.alignment.bin_weight_maps`.
    """
    mod = _module()
    assert mod is not None
    if column is None:
        column = _identity(int(num_bins))
    bad, mismatched = mod.scatter_taps(_np(bins), len(taps.xa), *_tap_arrays(taps), _np(out), _np(column),
                                       int(feat_width), int(row), int(offset))
    _scatter_errors(int(bad), int(mismatched), num_bins)


def _tap_arrays(taps: Any) -> tuple[Any, ...]:
    return _np(taps.ya), _np(taps.yb), _np(taps.row_kind), _np(taps.xa), _np(taps.xb), _np(taps.weights)


def _scatter_errors(bad: int, mismatched: int, num_bins: int) -> None:
    _out_of_range(bad, num_bins)
    if mismatched:
        raise ShapeMismatchError(
            f"{mismatched} pixels have a bin that their bin counts say is empty; the bins changed "
            "after they were counted: pass the counts of these bins, or none"
        )


class ImageTapScatter:
    """:func:`scatter_taps` one image at a time, with the NumPy views of the batch made once.

    A per-image loop calls the compiled loop once per image; converting its ten
    arguments to NumPy on every call cost more than a small image's scatter.
    ``bins int64 [B, H*W]`` and ``columns int64 [B, num_bins]`` (each image's column of
    each bin, ``-1`` absent) must stay alive and unchanged while this object is used.
    """

    def __init__(self, bins: torch.Tensor, taps: Any, columns: torch.Tensor, num_bins: int, feat_width: int) -> None:
        mod = _module()
        assert mod is not None
        self._fn = mod.scatter_taps
        self._bins, self._columns = _np(bins), _np(columns)
        self._taps = (len(taps.xa), *_tap_arrays(taps))
        self._num_bins, self._feat_width = int(num_bins), int(feat_width)

    def __call__(self, image: int, out: Any, row: int) -> None:
        """Fill ``out`` (a NumPy ``[1, L]`` view) with image ``image``'s weights, ``row`` columns per location."""
        bad, mismatched = self._fn(self._bins[image:image + 1], *self._taps, out, self._columns[image],
                                   self._feat_width, row, 0)
        _scatter_errors(int(bad), int(mismatched), self._num_bins)


@lru_cache(maxsize=64)
def _identity(n: int) -> torch.Tensor:
    return torch.arange(n)


def lookup_bins(depth32: torch.Tensor, table: Any, lut: torch.Tensor) -> torch.Tensor:
    """``int64`` bins of non-negative finite float32 depth through a :class:`~depthsel.bitbins.BitTable`."""
    mod = _module()
    assert mod is not None
    flat = depth32.contiguous().view(-1)
    out = torch.empty(flat.shape, dtype=torch.int64)
    mod.lookup_bins(_np(flat), _np(flat.view(torch.int32)), int(table.shift), int(table.low),
                    int(table.high), _np(table.base), _np(table.split), _np(lut), _np(out))
    return out.view(depth32.shape)


def count_bins(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``int64 [B, Nb]`` valid-pixel counts of ``bins [B, ...]``."""
    mod = _module()
    assert mod is not None
    flat = bins.reshape(bins.shape[0], -1).long().contiguous()
    out = torch.zeros(bins.shape[0], num_bins, dtype=torch.int64)
    _out_of_range(int(mod.count_bins(_np(flat), int(num_bins), _np(out))), num_bins)
    return out
