"""The contract every registered model keeps, checked for all of them at once.

For each name in ``depthsel.list_plugins("models")``: complete metadata, layer
names that resolve, full-width unit counts that match ``ModelInfo.layer_units``
(checked on the ``meta`` device, so nothing is allocated), a selectivity
regularizer on the suggested layers that trains (finite loss, finite non-zero
gradients in every hooked layer, no hook left behind), the documented
parameter count, and safe loading of pickled whole-module checkpoints.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import depthsel
from depthsel.errors import UntrustedFileError
from depthsel.testing import assert_no_hooks

MODELS = sorted(depthsel.list_plugins("models"))
DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
# Every first-party encoder downsamples by 32, so 32 is the smallest side that
# keeps all stages non-empty; a non-square size catches H/W mix-ups.
MIN_SIZE = (32, 64)
NUM_BINS = 16


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _test_size(info: depthsel.ModelInfo) -> tuple[int, int]:
    m = max(1, info.input_multiple)
    return _round_up(MIN_SIZE[0], m), _round_up(MIN_SIZE[1], m)


def _batch(info: depthsel.ModelInfo, size: tuple[int, int], n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, w = size
    max_depth = 10.0
    # From 0.5 m up: SID's first bin is (0, 0.75], so a 2-unit layer refitted to
    # 2 bins only has two *present* bins if some pixels are nearer than 0.75 m.
    depth = 0.5 + (max_depth - 0.6) * torch.rand(n, 1, h, w, generator=g)
    batch = {"image": torch.rand(n, 3, h, w, generator=g), "depth": depth}
    if "sparse_depth" in info.extra_inputs:
        mask = torch.rand(n, 1, h, w, generator=g) < 0.05
        batch["sparse_depth"] = depth * mask
    missing = set(info.extra_inputs) - set(batch)
    assert not missing, f"the contract test does not know how to make inputs {missing}"
    return batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: intra-op threads only add
    # synchronisation cost (10-100x slower under load), so use one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_registry_lists_the_first_party_models() -> None:
    expected = {"fastdepth", "hu_mff_resnet50", "hu_mff_senet154", "hu_mff_densenet161",
                "bts_densenet161", "cspn_resnet50"}
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_metadata_is_complete(name: str) -> None:
    info = depthsel.get_model_info(name)
    assert isinstance(info, depthsel.ModelInfo)
    assert len(info.input_size) == 2 and all(int(s) > 0 for s in info.input_size)
    assert info.input_multiple >= 1
    assert all(s % info.input_multiple == 0 for s in info.input_size), info.input_size
    assert info.output_stride >= 1
    assert info.normalization in {"imagenet", "unit"}
    assert info.suggested_layers, "suggested_layers must not be empty"
    assert len(set(info.suggested_layers)) == len(info.suggested_layers)
    assert set(info.suggested_layers) <= set(info.layer_units), "layer_units misses a layer"
    assert all(int(info.layer_units[n]) > 0 for n in info.suggested_layers)
    assert info.reference
    assert isinstance(info.to_dict(), dict)


@pytest.mark.parametrize("name", MODELS)
def test_full_width_units_and_documented_parameter_count(name: str) -> None:
    """Build the full-size network on ``meta`` (no memory) and compare with the metadata."""
    info = depthsel.get_model_info(name)
    with torch.device("meta"):
        model = depthsel.get_model(name).eval()
    channels: dict[str, int] = {}
    handles = [
        model.get_submodule(layer).register_forward_hook(
            lambda _m, _i, out, layer=layer: channels.__setitem__(
                layer, (out[0] if isinstance(out, (tuple, list)) else out).shape[1]
            )
        )
        for layer in info.suggested_layers
    ]
    size = _test_size(info)
    batch = {k: v.to("meta") for k, v in _batch(info, size, n=1).items()}
    try:
        with torch.no_grad():
            out = info.forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    assert channels == {n: int(info.layer_units[n]) for n in info.suggested_layers}
    assert tuple(out.shape[-2:]) == (size[0] // info.output_stride, size[1] // info.output_stride)
    # docs/models.md must quote the measured full-size count.
    count = sum(p.numel() for p in model.parameters())
    assert f"{count:,}" in DOC.read_text(encoding="utf-8"), f"{name}: {count:,} not in {DOC.name}"


@pytest.mark.parametrize("name", MODELS)
def test_regularizer_trains_suggested_layers(name: str) -> None:
    info = depthsel.get_model_info(name)
    torch.manual_seed(0)
    model = depthsel.get_model(name, tiny=True).eval()
    for layer in info.suggested_layers:
        model.get_submodule(layer)  # raises AttributeError for a stale name
    size = _test_size(info)
    batch = _batch(info, size)
    binner = depthsel.get_binner("sid", num_bins=NUM_BINS)
    reg = depthsel.SelectivityRegularizer(
        model, list(info.suggested_layers), binner, objective="assign", weight=1.0,
        fit_bins_to_units=True,
    )
    assert_no_hooks(model)
    with reg.attach():
        pred = info.forward(model, batch)
        loss = reg.loss(batch["depth"])
    assert_no_hooks(model)

    h, w = size
    assert pred.shape == (2, 1, h // info.output_stride, w // info.output_stride)
    assert torch.isfinite(pred).all()
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    stats = reg.last_stats()
    assert set(info.suggested_layers) <= set(stats)
    loss.backward()
    for layer in info.suggested_layers:
        params = list(model.get_submodule(layer).parameters())
        assert params, f"{name}: hooked layer {layer!r} has no parameters to check"
        grads = [p.grad for p in params if p.grad is not None]
        assert grads, f"{name}: no gradient reached {layer!r}"
        assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite grad in {layer!r}"
        assert any(bool(g.abs().sum() > 0) for g in grads), f"{name}: zero gradient in {layer!r}"
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite grad in {pname}"


def _fresh(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return depthsel.get_model(name, tiny=True)


@pytest.mark.parametrize("name", MODELS)
def test_pickled_module_needs_trust_pickle(name: str, tmp_path: Path) -> None:
    source = _fresh(name, seed=1)
    path = tmp_path / f"{name}_whole_module.pth"
    torch.save(source, path)  # like FastDepth's releases: the whole object, not a state dict

    target = _fresh(name, seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UntrustedFileError, match="trust_pickle=True"):
        depthsel.load_weights(target, path)
    after = target.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), (
        "a refused load must leave the model untouched"
    )

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # anything but the expected warning fails the test
        with pytest.warns(RuntimeWarning, match="trust_pickle=True"):
            depthsel.load_weights(target, path, trust_pickle=True)
    expected = source.state_dict()
    loaded = target.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_docs_name_every_registered_model() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in MODELS:
        assert re.search(rf"`{re.escape(name)}`", text), f"{name} is not documented in {DOC.name}"
