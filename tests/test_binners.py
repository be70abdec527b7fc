"""Binner contract: edges, monotonicity, invalid pixels, SID reference edges."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import depthsel
from depthsel.errors import BinCountError, InvalidDepthError

# Every test here runs with the torch operations and with the numba loops (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("kernel_backend")

NAMES = ["uniform", "log", "sid"]


def make(name: str, nb: int, lo: float, hi: float) -> depthsel.Binner:
    return depthsel.get_binner(name, num_bins=nb, min_depth=lo, max_depth=hi)


@given(name=st.sampled_from(NAMES), nb=st.integers(2, 128),
       lo=st.floats(0.05, 5.0), span=st.floats(0.5, 100.0))
def test_edges_strictly_increasing(name: str, nb: int, lo: float, span: float) -> None:
    b = make(name, nb, lo, lo + span)
    e = b.edges
    assert e.dtype == torch.float64 and e.numel() == nb + 1 == b.num_bins + 1
    assert bool((e[1:] > e[:-1]).all())


@given(name=st.sampled_from(NAMES), nb=st.integers(2, 64),
       depths=st.lists(st.one_of(st.floats(-2.0, 30.0), st.sampled_from([float('nan'), float('inf'), -float('inf')])),
                       min_size=1, max_size=200))
def test_bins_in_range_and_monotone(name: str, nb: int, depths: list[float]) -> None:
    b = make(name, nb, 0.5, 10.0)
    d = torch.tensor(depths, dtype=torch.float32).view(1, 1, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bins = b(d)[0, 0]
    assert bins.dtype == torch.int64 and bins.shape == (len(depths),)
    assert bool(((bins >= -1) & (bins < nb)).all())
    d32 = d.view(-1).tolist()  # the binner sees float32 values
    finite = [(x, int(k)) for x, k in zip(d32, bins.tolist()) if k >= 0]
    finite.sort()
    ks = [k for _, k in finite]
    assert ks == sorted(ks), "bins must be non-decreasing in depth"
    for x, k in zip(d32, bins.tolist()):
        invalid = not math.isfinite(x) or x <= float(b.edges[0]) or x > float(b.edges[-1])
        if invalid:
            assert k == -1
        else:
            assert float(b.edges[k]) < x <= float(b.edges[k + 1])


def test_sid_reference_edges() -> None:
    b = depthsel.get_binner("sid", num_bins=64, min_depth=0.75, max_depth=10)
    e = b.edges
    assert e.numel() == 65
    assert float(e[0]) == 0.0 and float(e[1]) == 0.75
    assert float(e[2]) == pytest.approx(0.7876, abs=1e-4)
    assert float(e[-2]) == pytest.approx(9.628, abs=1e-3)
    assert float(e[-1]) == 10.0
    # Independent formula: t_i = exp(ln(beta + 1 - alpha) * i / (Nb - 1)) - (1 - alpha)
    for i in (5, 31, 62):
        t = math.exp(math.log(10 + 1 - 0.75) * i / 63) - 0.25
        assert float(e[i + 1]) == pytest.approx(t, rel=1e-12)


def test_sid_right_closed_and_above_range() -> None:
    b = depthsel.get_binner("sid", num_bins=64, min_depth=0.75, max_depth=10)
    d = torch.tensor([[[0.75, 0.7501, 10.0, 10.5, 0.0]]])
    assert b(d)[0, 0].tolist() == [0, 1, 63, -1, -1]
    ref = depthsel.get_binner("sid", num_bins=64, min_depth=0.75, max_depth=10, above_range="first_bin")
    assert ref(d)[0, 0].tolist() == [0, 1, 63, 0, -1]


def test_invalid_depth_masked_with_warning() -> None:
    import depthsel.binning as binning

    binning._WARNED_NONFINITE = False
    b = make("uniform", 4, 0.0, 4.0)
    d = torch.tensor([[[float("nan"), float("inf"), -1.0, 1.0]]])
    with pytest.warns(depthsel.InvalidDepthWarning):
        out = b(d)
    assert out[0, 0].tolist() == [-1, -1, -1, 0]
    valid = torch.tensor([[[True, True, True, False]]])
    assert b(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), valid)[0, 0].tolist() == [0, 1, 2, -1]


def test_shapes_and_errors() -> None:
    b = make("log", 8, 0.5, 10.0)
    assert b(torch.ones(2, 1, 5, 6)).shape == (2, 5, 6)
    assert b(torch.ones(2, 5, 6)).shape == (2, 5, 6)
    with pytest.raises(InvalidDepthError):
        b(torch.ones(5, 6))
    with pytest.raises(InvalidDepthError):
        b(torch.ones(2, 3, 5, 6))
    with pytest.raises(InvalidDepthError):
        b(torch.ones(2, 5, 6, dtype=torch.int64))
    with pytest.raises(BinCountError):
        make("uniform", 0, 0.0, 1.0)
    with pytest.raises(BinCountError):
        make("uniform", 4, 2.0, 1.0)


def test_quantile_equal_frequency() -> None:
    g = torch.Generator().manual_seed(0)
    depths = 0.8 + 3.2 * torch.rand(10000, generator=g) ** 2  # skewed towards near
    b = depthsel.get_binner("quantile", num_bins=10, depths=depths)
    counts = torch.bincount(b(depths.view(1, 1, -1))[0, 0], minlength=10)
    assert int(counts.min()) >= 990 and int(counts.max()) <= 1010
    again = depthsel.get_binner("quantile", edges=b.edges.tolist())
    assert torch.equal(again.edges, b.edges)
    with pytest.raises(BinCountError):
        depthsel.get_binner("quantile", num_bins=10, depths=torch.ones(100))


def test_with_num_bins_keeps_range() -> None:
    b = make("sid", 64, 0.75, 10.0).with_num_bins(32)
    assert b.num_bins == 32 and float(b.edges[1]) == 0.75 and float(b.edges[-1]) == 10.0


@given(st.integers(2, 80), st.integers(2, 80))  # SID needs two bins
def test_for_units_fits_bins_only_when_fewer_units(units: int, nb: int) -> None:
    b = make("sid", nb, 0.75, 10.0)
    fitted = b.for_units(units)
    assert fitted.num_bins == min(units, nb)
    if units >= nb:
        assert fitted is b  # nothing to fit: the same binner, not a rebuilt copy
    assert float(fitted.edges[1]) == 0.75 and float(fitted.edges[-1]) == 10.0


def test_for_units_refuses_no_units_and_unfittable_binners() -> None:
    with pytest.raises(BinCountError):
        make("sid", 8, 0.75, 10.0).for_units(0)
    fixed = depthsel.EdgesBinner(torch.linspace(0.5, 10.0, 9, dtype=torch.float64))
    assert fixed.for_units(8) is fixed and fixed.for_units(20) is fixed
    with pytest.raises(BinCountError):
        fixed.for_units(4)
