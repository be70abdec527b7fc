"""Concept binners on analytic scenes whose normals and occlusion edges are known exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import depthsel
from depthsel.errors import DepthselError
from depthsel_plugins.concept_binners import (BoundaryBinner, NormalBinner, camera_intrinsics,
                                               occlusion_edges, surface_normals)

K = (40.0, 42.0, 23.5, 15.5)  # fx, fy, cx, cy of a 32 x 48 frame
SIZE = (32, 48)
FLOOR, LEFT, RIGHT, CEIL, BACK = range(5)


def _rays(size: tuple[int, int], k: tuple[float, float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    return (u - k[2]) / k[0], (v - k[3]) / k[1]


def render_room(size: tuple[int, int] = SIZE, k: tuple[float, float, float, float] = K, left: float = 1.5,
                right: float = 2.0, floor: float = 1.2, ceiling: float = 1.3, back: float = 6.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-cast a box room (camera frame: x right, y down, z forward): ``(depth [1,H,W], plane [H,W])``."""
    rx, ry = _rays(size, k)
    inf = torch.full_like(rx, math.inf)
    # Depth along z of the hit with each plane (rays have z = 1), infinite where it is never hit.
    t = torch.stack([torch.where(ry > 0, floor / ry, inf), torch.where(rx < 0, -left / rx, inf),
                     torch.where(rx > 0, right / rx, inf), torch.where(ry < 0, -ceiling / ry, inf),
                     torch.full_like(rx, back)])
    depth, plane = t.min(0)
    return depth[None], plane


def _same_plane_stencil(plane: torch.Tensor, step: int = 1) -> torch.Tensor:
    p = plane.numpy()
    ok = np.zeros_like(p, dtype=bool)
    h, w = p.shape
    for y in range(step, h - step):
        for x in range(step, w - step):
            ok[y, x] = len({p[y, x], p[y - step, x], p[y + step, x], p[y, x - step], p[y, x + step]}) == 1
    return torch.from_numpy(ok)


def test_room_planes_get_their_orientation_bin_exactly() -> None:
    depth, plane = render_room()
    bins = NormalBinner(intrinsics=list(K))(depth)[0]
    inner = _same_plane_stencil(plane)
    assert set(plane[inner].unique().tolist()) == {FLOOR, LEFT, RIGHT, CEIL, BACK}  # the scene has all five
    assert torch.equal(bins[inner], plane[inner])
    # The frame border has no full stencil: undefined, never guessed.
    assert bool((bins[0] == -1).all() and (bins[:, -1] == -1).all())
    # A stencil across a crease is undefined (-1) or takes the label of one of the planes it spans.
    h, w = plane.shape
    for y in range(1, h - 1):
        for x in range(1, w - 1):
            if not inner[y, x] and int(bins[y, x]) != -1:
                spanned = {int(plane[y + dy, x + dx]) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))}
                assert int(bins[y, x]) in spanned, (y, x)
    assert float((bins[inner] >= 0).double().mean()) == 1.0


@settings(max_examples=25, deadline=None)
@given(theta=st.floats(0.0, 1.2), phi=st.floats(-math.pi, math.pi), dist=st.floats(0.5, 5.0),
       fx=st.floats(20.0, 80.0), aspect=st.floats(0.8, 1.25), step=st.integers(1, 2))
def test_normals_of_any_plane_are_exact(theta: float, phi: float, dist: float, fx: float, aspect: float,
                                        step: int) -> None:
    # Plane n . P = -dist with n facing the camera (n_z < 0), tilted by theta from the optical axis.
    n = torch.tensor([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), -math.cos(theta)],
                     dtype=torch.float64)
    k = (fx, fx * aspect, 11.3, 8.7)
    rx, ry = _rays((18, 24), k)
    denom = n[0] * rx + n[1] * ry + n[2]
    depth = torch.where(denom < -1e-3, -dist / denom, torch.zeros_like(rx))
    depth = torch.where(depth < 50, depth, torch.zeros_like(depth))  # grazing rays: invalid
    normals = surface_normals(depth[None], intrinsics=k, step=step)[0]
    got = ~torch.isnan(normals).any(0)
    assert bool(got.any())
    torch.testing.assert_close(normals[:, got], n[:, None].expand(3, int(got.sum())), atol=1e-9, rtol=0)


def test_intrinsics_given_for_another_size_are_rescaled() -> None:
    depth, _ = render_room()
    k2 = (2 * K[0], 2 * K[1], (K[2] + 0.5) * 2 - 0.5, (K[3] + 0.5) * 2 - 0.5)  # the same camera at 2x
    direct = NormalBinner(intrinsics=list(K))(depth)
    scaled = NormalBinner(intrinsics=list(k2), intrinsics_size=[64, 96])(depth)
    assert torch.equal(direct, scaled)
    f = camera_intrinsics((30, 40))  # documented default: 60 degree horizontal FOV, centred
    assert f[0] == pytest.approx(20 / math.tan(math.radians(30))) and f[2:] == (19.5, 14.5)
    nyu = camera_intrinsics((240, 320), camera="nyu")
    assert nyu[0] == pytest.approx(518.857901 / 2) and nyu[3] == pytest.approx((253.736166 + 0.5) / 2 - 0.5)


def test_wrong_intrinsics_change_the_answer() -> None:
    # Not vacuous: a wall turned 50 degrees (a left-hand wall) looks nearly fronto-parallel
    # to a binner that assumes a much wider field of view (the rays spread more, the depth less).
    n = torch.tensor([math.sin(0.87), 0.0, -math.cos(0.87)], dtype=torch.float64)
    rx, ry = _rays(SIZE, K)
    depth = (-3.0 / (n[0] * rx + n[2]))[None]
    assert bool((depth > 0).all())
    right = NormalBinner(intrinsics=list(K))(depth)[0]
    wrong = NormalBinner(hfov_deg=150)(depth)[0]
    assert bool((right[1:-1, 1:-1] == LEFT).all())
    assert bool((wrong[1:-1, 1:-1] == BACK).all())


def _box_scene(h: int = 20, w: int = 30) -> torch.Tensor:
    depth = torch.full((1, h, w), 5.0, dtype=torch.float64)
    depth[0, 6:13, 9:17] = 2.0  # a fronto-parallel box in front of the wall
    depth[0, 2:5, 22:28] = 4.0  # a slab 20% nearer: (5 - 4) / 5 = 0.2 > 0.1
    return depth


def _reference_bins(depth: torch.Tensor, r: int) -> torch.Tensor:
    """Brute force: edge = a 4-neighbour with another depth; near = Chebyshev distance <= r."""
    d = depth[0].numpy()
    h, w = d.shape
    edge = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and d[yy, xx] != d[y, x]:
                    edge[y, x] = True
    ys, xs = np.nonzero(edge)
    out = np.full((h, w), 2)
    for y in range(h):
        for x in range(w):
            dist = np.maximum(abs(ys - y), abs(xs - x)).min() if len(ys) else np.inf
            out[y, x] = 0 if dist == 0 else (1 if dist <= r else 2)
    return torch.from_numpy(out)[None]


@pytest.mark.parametrize("r", [1, 3])
def test_boundary_bins_match_brute_force_on_a_box_scene(r: int) -> None:
    depth = _box_scene()
    got = BoundaryBinner(near_pixels=r)(depth)
    assert torch.equal(got, _reference_bins(depth, r))
    assert {0, 1, 2} <= set(got.unique().tolist())


def test_small_steps_and_creases_and_slanted_planes_are_not_edges() -> None:
    depth = _box_scene()
    depth[0, 2:5, 22:28] = 4.8  # 4% nearer: below the 10% threshold
    edge = occlusion_edges(depth)
    assert not bool(edge[0, :5, 20:].any()) and bool(edge.any())
    room, _ = render_room()  # creases between five planes, slanted floor, no occlusion at all
    assert not bool(occlusion_edges(room).any())
    assert bool((BoundaryBinner()(room) == 2).all())


def test_invalid_pixels_are_minus_one_and_their_border_is_not_an_edge() -> None:
    depth = torch.full((1, 10, 12), 3.0, dtype=torch.float64)
    valid = torch.ones_like(depth, dtype=torch.bool)
    valid[0, :, 6:] = False
    for binner in (BoundaryBinner(), NormalBinner()):
        bins = binner(depth, valid)
        assert bool((bins[~valid] == -1).all())
    assert bool((BoundaryBinner()(depth, valid)[valid] == 2).all())


def test_registered_configs_round_trip_and_reject_bad_options() -> None:
    for name, cls in (("normals", NormalBinner), ("boundary", BoundaryBinner)):
        b = depthsel.get_binner(name)
        assert isinstance(b, cls) and b.num_bins == len(b.labels)
        again = depthsel.api.binner_from_config(b.config())
        assert again.config() == b.config()
    assert depthsel.get_binner("normals", camera="7scenes").config()["camera"] == "7scenes"
    for name, bad in (("normals", {"camera": "gopro"}), ("normals", {"intrinsics": [1, 2]}),
                      ("boundary", {"threshold": 2.0}), ("boundary", {"labels": ["a", "b", "c"]})):
        with pytest.raises(DepthselError):
            depthsel.get_binner(name, **bad)


def test_concept_bins_plug_into_dissection_and_the_regularizer(tmp_path: Path) -> None:
    from depthsel.testing import ToyDepthNet, toy_batch
    from depthsel.testing import ToyDepthDataset
    from depthsel_plugins.analyses.dissection import dissect_splits

    torch.manual_seed(0)
    model = ToyDepthNet(width=8)
    info = depthsel.ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec3",))
    res = dissect_splits(model, info, {"test": ToyDepthDataset(4, seed=2)}, layers=["dec3"],
                         binner="boundary", permutations=0)
    counts = res.get("dec3", "counts")
    assert counts.shape == (3,) and float(counts.sum()) > 0
    assert res.get("dec3", "ds").shape[0] == 8
    # The labels come back from the stored binner config; each live unit prefers its argmax concept.
    from depthsel_plugins.analyses.concepts import concept_preferences, concept_summary

    prefs = concept_preferences(res, "dec3")
    r = res.get("dec3", "R")
    for p in prefs:
        if not p["dead"]:
            assert p["prefers"] == ("edge", "near", "far")[int(r[p["unit"]].argmax())]
    summ = concept_summary(res, "dec3")
    assert sum(c["units"] for c in summ["concepts"].values()) == 8 - summ["dead"]
    assert sum(c["pixel_share"] for c in summ["concepts"].values()) == pytest.approx(1.0)
    from depthsel_plugins.analyses.concepts import plot_concept_responses

    assert plot_concept_responses(res, "dec3", tmp_path / "c.png").stat().st_size > 1000
    image, depth = toy_batch(batch=2)
    reg = depthsel.SelectivityRegularizer(model, ["dec3"], "normals", weight=0.1)
    with reg.attach():
        model(image)
        loss = reg.loss(depth)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) != 0.0
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.realdata
def test_real_nyu_frames_put_floors_low_and_ceilings_high() -> None:
    from datahelpers import shared_data_dir

    ds = depthsel.get_dataset("folder", root=str(shared_data_dir("nyu2_mini_test")), size=(60, 80))
    depth = torch.stack([ds[i]["depth"] for i in range(len(ds))])
    valid = torch.stack([ds[i]["valid"] for i in range(len(ds))])
    bins = NormalBinner(camera="nyu")(depth, valid)
    rows = torch.arange(bins.shape[-2], dtype=torch.float64).view(1, -1, 1).expand_as(bins)
    mid = (bins.shape[-2] - 1) / 2
    floor_rows, ceil_rows = rows[bins == FLOOR], rows[bins == CEIL]
    assert floor_rows.numel() > 100 and ceil_rows.numel() > 100
    # Up-facing surfaces are seen below the horizon, down-facing ones above it.
    assert float((floor_rows > mid).double().mean()) > 0.8
    assert float((ceil_rows < mid).double().mean()) > 0.8
    assert float((bins >= 0).double().mean()) > 0.5
    edges = BoundaryBinner()(depth, valid)
    assert 0.01 < float((edges == 0).double().mean()) < 0.2


class _Rooms(torch.utils.data.Dataset):
    """Ray-cast corridors with a far back wall; channel 0 = the depth stratum, channel 1 = 1 on floor pixels."""

    def __init__(self) -> None:
        self.items = []
        for i, (back, left, floor) in enumerate([(7.5, 0.8, 0.9), (6.5, 1.0, 1.0), (7.0, 0.9, 1.1)]):
            depth, _ = render_room(back=back, left=left, right=left, floor=floor, ceiling=floor)
            # ceil(depth) is constant within each right-closed 1 m stratum: a depth detector at stratum resolution.
            # Channel 1 marks what the binner calls floor (crease pixels may get a neighbour's label).
            floor_bin = (NormalBinner(intrinsics=list(K))(depth)[0] == FLOOR).double()
            image = torch.stack([depth[0].ceil() / 10, floor_bin, torch.zeros_like(depth[0])])
            self.items.append({"image": image, "depth": depth, "valid": depth > 0, "name": f"room{i}"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_stratified_ds_separates_a_depth_detector_from_a_floor_detector() -> None:
    from depthsel_plugins.analyses.concepts import stratified_concept_ds
    from depthsel_plugins.analyses.dissection import dissect_splits

    net = torch.nn.Conv2d(3, 2, 1, bias=False).double()
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0] = 1.0  # unit 0: a pure depth detector
        net.weight[1, 1] = 1.0  # unit 1 = floor indicator: a pure concept detector
    model = torch.nn.Sequential(net)
    info = depthsel.ModelInfo(input_size=SIZE, normalization="unit", suggested_layers=("0",))
    binner = {"name": "stratified", "concept": {"name": "normals", "intrinsics": list(K)},
              "depth": {"name": "uniform", "num_bins": 8, "min_depth": 0.0, "max_depth": 8.0}}
    # Two units on 40 concept x depth bins: the paper's N_b = K rule does not apply to categorical bins.
    res = dissect_splits(model, info, {"test": _Rooms()}, layers=["0"], binner=binner, permutations=0,
                         fit_bins_to_units=False, assignment={"0": [0, 0]})
    out = stratified_concept_ds(res, "0")
    assert out["strata_used"] >= 3
    pooled, within = out["pooled"], out["within"]
    # Pooled over depth, the depth detector looks concept-selective; at equal depth it is not at all.
    # Exactly 0 up to the float32 rounding of the per-batch products (sums are float64).
    assert float(pooled[0]) > 0.2 and float(within[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(within[1]) > 0.99 and float(pooled[1]) > 0.99
    again = depthsel.api.binner_from_config(res.data["binners"]["0"])
    assert again.config() == res.data["binners"]["0"] and again.num_bins == 5 * 8
