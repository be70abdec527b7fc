"""Exact float32 binning by a table lookup on the float's bit pattern.

``torch.bucketize`` does a binary search per pixel (about 20 ns on a 2-core
CPU for 65 edges: 8 ms for a batch of eight 224x224 depth maps). Binning is a
monotone step function of depth, and for non-negative float32 values the
int32 bit pattern is monotone in the value. So the top bits of the pattern,
``code = bits >> shift``, name a *cell*: a run of consecutive floats of
relative width about ``2**(shift - 23)``. Every cell lies wholly inside one
bin except the cells that hold an edge; a cell holds at most one edge (the
shift is lowered until it does), so

    index(d) = base[code] + (d > split[code])

is exact, with ``split`` the edge inside the cell (``+inf`` where there is
none, so the comparison is always false). This is five memory-bound passes
with no search, and no data-dependent branch (the same on a GPU).

``index`` counts the edges strictly below ``d``, exactly as
``torch.bucketize(d, edges32, right=False)`` does on the float32 edges
rounded down (for float32 ``d``, ``d <= e`` iff ``d <= round_down(e)``).

The tables cover the codes from the second edge's cell to the last edge's;
codes below (including negative patterns: negative floats) share entry 0,
which compares with the first edge, and codes above get index ``Nb + 1``. NaN and infinities never arrive here:
:func:`~depthsel.binning.prepare_depth` sets them to 0 first.
"""

from __future__ import annotations

import torch

__all__ = ["edges_rounded_down", "BitTable", "build_bit_table", "lookup_index"]

#: Mantissa bits kept by the first try: cells of relative width 2**-12 (0.024%).
_FIRST_SHIFT = 11
#: Refuse to build tables larger than this (very wide ranges at fine cells).
_MAX_CELLS = 1 << 22


def edges_rounded_down(edges: torch.Tensor) -> torch.Tensor:
    """float64 edges as the largest float32 not above each (exact comparisons for float32 depth)."""
    e32 = edges.to(torch.float32)
    return torch.where(e32.to(torch.float64) > edges, torch.nextafter(e32, torch.full_like(e32, -1.0)), e32)


class BitTable:
    """The lookup tables of one set of edges on one device (see the module docstring).

    Attributes
    ----------
    shift
        Bits dropped from the int32 pattern.
    low
        Code of the first table entry minus one (entry 0 is "below the first edge").
    base
        ``int64 [cells + 2]``: edges strictly below every float of the cell.
    split
        ``float32 [cells + 2]``: the edge inside the cell, ``+inf`` if none.
    """

    def __init__(self, shift: int, low: int, base: torch.Tensor, split: torch.Tensor) -> None:
        self.shift, self.low, self.base, self.split = shift, low, base, split

    @property
    def high(self) -> int:
        """Largest code with its own entry (larger codes share the last one)."""
        return self.low + int(self.base.numel()) - 1


def build_bit_table(edges32: torch.Tensor, device: torch.device | str = "cpu") -> BitTable | None:
    """Tables for float32 ``edges32`` (strictly increasing, ``>= 0``); ``None`` when unsuitable.

    The table starts at the cell of the second edge: everything below it is decided by
    entry 0, one comparison with the first edge. So a first edge of 0 costs no table
    for the tiny and denormal floats, and a denormal depth is compared by the FPU as
    bucketize compares it (flush-to-zero mode included). The shift starts at 11 bits
    and is lowered until no cell holds two edges; ``None`` (use bucketize) for fewer
    than two edges, edges that are negative, non-finite or denormal (other than a
    first edge of 0), or a table over 4 M entries.
    """
    e = edges32.to(torch.float32).cpu()
    tiny = torch.finfo(torch.float32).tiny
    if e.numel() < 2 or not bool(torch.isfinite(e).all()) or bool(torch.signbit(e).any()):
        # Bit patterns are monotone only over non-negative finite floats (-0.0 included
        # in the refusal: its pattern is the most negative int32).
        return None
    if bool((e[1:] < tiny).any()) or 0.0 < float(e[0]) < tiny:
        return None  # denormal edges: FPU flush-to-zero modes would disagree with the bits
    bits = e.view(torch.int32).to(torch.int64)
    for shift in range(_FIRST_SHIFT, -1, -1):
        codes = bits >> shift
        # An edge's transition (its next float) stays inside its cell unless the
        # edge is the cell's last float: then the cell boundary is the transition.
        inside = ((bits + 1) >> shift) == codes
        if _two_edges_share_a_cell(codes, inside):
            continue
        lo, hi = int(codes[1]), int(codes[-1])
        n = hi - lo + 1
        if n + 2 > _MAX_CELLS:
            return None
        first = ((torch.arange(lo, hi + 1, dtype=torch.int64) << shift)).to(torch.int32).view(torch.float32)
        # Index of the cell's first float: edges strictly below it.
        base = torch.searchsorted(e, first, right=False)
        split = torch.full((n,), float("inf"), dtype=torch.float32)
        e_in = torch.nonzero(inside & (codes >= lo)).squeeze(1)
        split[codes[e_in] - lo] = e[e_in]
        nb1 = int(e.numel())  # Nb + 1: the index of "above the last edge"
        # Entry 0, below the table (no edge there but the first): 0 + (d > edges[0]).
        base = torch.cat([torch.zeros(1, dtype=torch.int64), base, torch.full((1,), nb1, dtype=torch.int64)])
        split = torch.cat([e[:1], split, torch.full((1,), float("inf"), dtype=torch.float32)])
        return BitTable(shift, lo - 1, base.to(device), split.to(device))
    return None


def _two_edges_share_a_cell(codes: torch.Tensor, inside: torch.Tensor) -> bool:
    """True when two edges' transitions fall in the same cell (one split per cell is not enough)."""
    c = codes[inside]
    return bool((c[1:] == c[:-1]).any())


def lookup_index(depth32: torch.Tensor, table: BitTable) -> torch.Tensor:
    """``int64`` count of edges strictly below each float32 value (non-negative, finite)."""
    code = depth32.contiguous().view(torch.int32) >> table.shift
    # Negative patterns (never produced by prepare_depth, but -0.0 is) and codes
    # below the table land on entry 0; codes above it on the last entry.
    code = code.clamp_(table.low, table.high).sub_(table.low).view(-1)
    base = torch.index_select(table.base, 0, code)
    split = torch.index_select(table.split, 0, code)
    return base.add_(depth32.reshape(-1) > split).view(depth32.shape)
