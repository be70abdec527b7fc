"""Depth selectivity on transformer tokens through ``TokenGridAdapter`` (tiny DPT-style ViT).

The model lives in ``examples/vit_adapter.py`` (the example docs/models.md
points to), so the documented code is the tested code.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

import depthsel
from depthsel.errors import ActivationShapeError
from depthsel.testing import assert_no_hooks, toy_batch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vit_adapter.py"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("depthsel_example_vit_adapter", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclass/pickle-friendly, and needed by some tools
    spec.loader.exec_module(module)
    return module


vit = _load_example()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny models on a shared 2-core machine: intra-op threads only add
    # synchronisation cost (10-100x slower under load), so use one.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def model() -> "vit.TinyDPT":
    torch.manual_seed(0)
    return vit.TinyDPT()


def test_blocks_emit_tokens_with_a_class_token(model: "vit.TinyDPT") -> None:
    image, _ = toy_batch(batch=2)
    seen: dict[str, torch.Tensor] = {}
    handle = model.blocks[1].register_forward_hook(lambda _m, _i, out: seen.setdefault("t", out))
    try:
        depth = model(image)
    finally:
        handle.remove()
    h, w = model.grid
    assert seen["t"].shape == (2, 1 + h * w, 16)
    assert depth.shape == (2, 1, 32, 32)


def test_without_adapter_a_clear_error_names_the_adapter(model: "vit.TinyDPT") -> None:
    image, depth = toy_batch(batch=2)
    binner = depthsel.get_binner("sid", num_bins=16, min_depth=0.5, max_depth=10.0)
    reg = depthsel.SelectivityRegularizer(model, ["blocks.1"], binner, fit_bins_to_units=True)
    with pytest.raises(ActivationShapeError) as info, reg.attach():
        model(image)
        reg.loss(depth)
    message = str(info.value)
    assert "blocks.1" in message
    assert "TokenGridAdapter" in message and "adapters=" in message
    assert "[B, K, h, w]" in message
    assert_no_hooks(model)


def test_adapter_with_wrong_token_layout_is_refused(model: "vit.TinyDPT") -> None:
    # Forgetting skip_tokens=1 leaves 65 tokens, which are no 8x8 grid.
    image, depth = toy_batch(batch=2)
    reg = depthsel.SelectivityRegularizer(
        model, ["blocks.1"], "sid", fit_bins_to_units=True,
        adapters={"blocks.1": depthsel.TokenGridAdapter(model.grid)},
    )
    with pytest.raises(ActivationShapeError, match="skip_tokens"), reg.attach():
        model(image)
    assert_no_hooks(model)


def test_adapter_reshapes_patch_tokens_in_row_major_order() -> None:
    b, h, w, c = 2, 3, 4, 5
    grid = torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)
    tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, C], row-major patches
    with_cls = torch.cat([torch.full((b, 1, c), -1.0), tokens], dim=1)
    out = depthsel.TokenGridAdapter((h, w), skip_tokens=1)(with_cls)
    assert torch.equal(out, grid)
    # A square grid is inferred when none is given.
    square = torch.randn(b, 1 + 16, c)
    assert depthsel.TokenGridAdapter(skip_tokens=1)(square).shape == (b, c, 4, 4)


def test_regularizer_gradients_reach_the_transformer_block(model: "vit.TinyDPT") -> None:
    image, depth = toy_batch(batch=4)
    reg = vit.make_regularizer(model, weight=1.0)
    with reg.attach():
        model(image)
        loss = reg.loss(depth)
    assert_no_hooks(model)
    assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
    loss.backward()
    for prefix in ("blocks.1", "blocks.0", "patch_embed"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert all(torch.isfinite(g).all() for g in grads), prefix
        assert any(bool(g.abs().sum() > 0) for g in grads), prefix
    # The selectivity term alone does not touch layers after the hooked block.
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("head"))
    stats = reg.last_stats()["blocks.1"]
    assert stats["units_counted"] > 0 and math.isfinite(stats["target_ds"])


def test_training_raises_target_selectivity_of_the_block() -> None:
    hooked = vit.train(steps=40, seed=0, weight=1.0)
    control = vit.train(steps=40, seed=0, weight=0.0)  # same data, no selectivity term
    assert math.isfinite(hooked["last_loss"])
    assert math.isfinite(hooked["ds_start"]) and math.isfinite(hooked["ds_end"])
    assert hooked["ds_end"] > hooked["ds_start"] + 0.05, hooked
    assert hooked["ds_end"] > control["ds_end"] + 0.05, (hooked, control)


def test_training_loop_leaves_no_hooks_and_tracks_loss(model: "vit.TinyDPT") -> None:
    reg = vit.make_regularizer(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for step in range(3):
        image, depth = toy_batch(batch=4, seed=step)
        with reg.attach():
            loss = F.l1_loss(model(image), depth) + reg.loss(depth)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(float(loss.detach()))
        assert_no_hooks(model)
    assert not reg.attached
