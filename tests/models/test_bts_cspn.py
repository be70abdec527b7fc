"""Tests for the DenseNet-161 backbone, BTS and CSPN model plugins (CPU, tiny widths)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from depthsel.checkpoints import strip_prefix
from depthsel_plugins.models import bts as bts_mod
from depthsel_plugins.models import cspn as cspn_mod
from depthsel_plugins.models.backbones.densenet import STAGE_NAMES, densenet161

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"

# Measured full-size parameter counts; the docs must quote the same numbers.
DENSENET161_PARAMS = 28_681_000
BTS_PARAMS = 47_000_688
CSPN_PARAMS = 256_078_272

# Official key names and shapes, transcribed from cleinc/bts pytorch/bts.py
# (encoder = torchvision densenet161().features) ...
BTS_OFFICIAL_KEYS: dict[str, tuple[int, ...]] = {
    "encoder.base_model.conv0.weight": (96, 3, 7, 7),
    "encoder.base_model.norm0.running_mean": (96,),
    "encoder.base_model.denseblock1.denselayer1.conv1.weight": (192, 96, 1, 1),
    "encoder.base_model.denseblock3.denselayer36.conv2.weight": (48, 192, 3, 3),
    "encoder.base_model.transition3.conv.weight": (1056, 2112, 1, 1),
    "encoder.base_model.norm5.weight": (2208,),
    "decoder.upconv5.conv.weight": (512, 2208, 3, 3),
    "decoder.bn5.weight": (512,),
    "decoder.conv5.0.weight": (512, 896, 3, 3),
    "decoder.bn4_2.running_var": (256,),
    "decoder.daspp_3.atrous_conv.aconv_sequence.1.weight": (256, 256, 1, 1),
    "decoder.daspp_6.atrous_conv.first_bn.weight": (576,),
    "decoder.daspp_24.atrous_conv.aconv_sequence.4.weight": (128, 256, 3, 3),
    "decoder.daspp_conv.0.weight": (128, 896, 3, 3),
    "decoder.reduc8x8.reduc.inter_128_128.0.weight": (128, 128, 1, 1),
    "decoder.reduc8x8.reduc.plane_params.weight": (3, 8, 1, 1),
    "decoder.reduc4x4.reduc.inter_128_64.0.weight": (64, 128, 1, 1),
    "decoder.reduc2x2.reduc.inter_64_32.0.weight": (32, 64, 1, 1),
    "decoder.reduc1x1.reduc.final.0.weight": (1, 8, 1, 1),
    "decoder.conv3.0.weight": (128, 225, 3, 3),
    "decoder.conv2.0.weight": (64, 161, 3, 3),
    "decoder.conv1.0.weight": (32, 36, 3, 3),
    "decoder.get_depth.0.weight": (1, 32, 3, 3),
}
# ... and from XinJCheng/CSPN models/torch_resnet_cspn_nyu.py (resnet50 + UpProj_Block).
CSPN_OFFICIAL_KEYS: dict[str, tuple[int, ...]] = {
    "conv1_1.weight": (64, 4, 7, 7),
    "bn1.running_var": (64,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "conv2.weight": (2048, 2048, 3, 3),
    "bn2.weight": (2048,),
    "up_proj_layer1.conv1.weight": (512, 1024, 5, 5),
    "up_proj_layer4.sc_bn1.running_mean": (64,),
    "conv3.weight": (1, 128, 3, 3),
    "gud_up_proj_layer1.sc_conv1.weight": (1024, 2048, 5, 5),
    "gud_up_proj_layer2.conv1_1.weight": (512, 1024, 3, 3),
    "gud_up_proj_layer3.bn1_1.weight": (256,),
    "gud_up_proj_layer4.conv2.weight": (64, 64, 3, 3),
    "gud_up_proj_layer5.conv1.weight": (1, 64, 3, 3),
    "gud_up_proj_layer6.conv1.weight": (8, 64, 3, 3),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def capture(
    model: nn.Module, names: list[str], run: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``run`` with forward hooks on ``names``; hooks are always removed."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            handles.append(
                model.get_submodule(name).register_forward_hook(
                    lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach().clone())
                )
            )
        with torch.no_grad():
            out = run()
    finally:
        for h in handles:
            h.remove()
    assert all(not m._forward_hooks for m in model.modules())
    return out, seen


@pytest.fixture(scope="module")
def full_models() -> Iterator[dict[str, nn.Module]]:
    # Meta tensors: real module trees and shapes without allocating 1 GB of weights.
    # The device context must close before yielding, or later tests would build on meta too.
    with torch.device("meta"):
        models = {
            "densenet": densenet161(),
            "bts": bts_mod.build_bts(),
            "cspn": cspn_mod.build_cspn(),
        }
    yield models


def doc_count(count: int) -> int:
    """Return ``count`` if docs/models.md quotes it (as measured), else fail."""
    assert f"{count:,}" in DOC.read_text(), f"docs/models.md does not quote the measured count {count:,}"
    return count


# ----------------------------------------------------------------- DenseNet-161
def test_densenet_tiny_stages_and_full_channels(full_models: dict[str, nn.Module]) -> None:
    torch.manual_seed(0)
    net = densenet161(width_mult=1 / 16).eval()
    with torch.no_grad():
        taps = net.forward_stages(torch.randn(2, 3, 64, 96))
        logits = net(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 1000)
    for tap, ch, stride in zip(taps, net.stage_channels, (2, 4, 8, 16, 32), strict=True):
        assert tap.shape == (2, ch, 64 // stride, 96 // stride)
    assert net.stage_channels == (6, 6, 12, 24, 138)  # growth 3, stem 6
    full = full_models["densenet"]
    assert full.stage_channels == (96, 96, 192, 384, 2208)
    assert [full.channels[n] for n in STAGE_NAMES] == list(full.stage_channels)
    assert full.features.norm5.num_features == 2208 == full.classifier.in_features
    assert n_params(full) == DENSENET161_PARAMS == doc_count(DENSENET161_PARAMS)
    sd = full.state_dict()
    assert sd["features.denseblock4.denselayer24.conv2.weight"].shape == (48, 192, 3, 3)
    assert sd["features.transition1.conv.weight"].shape == (192, 384, 1, 1)
    assert sd["classifier.weight"].shape == (1000, 2208)


# ------------------------------------------------------------------------- BTS
BTS_SPATIAL = {
    "decoder.conv1": 1,
    "decoder.upconv1": 1,
    "decoder.conv2": 2,
    "decoder.bn2": 2,
    "decoder.bn3": 4,
}


def test_bts_tiny_forward_and_exposed_layers() -> None:
    torch.manual_seed(0)
    model = bts_mod.build_bts(tiny=True, max_depth=10.0).eval()
    image = torch.randn(1, 3, 64, 96)
    names = list(bts_mod.INFO.suggested_layers)
    depth, seen = capture(model, names, lambda: model(image))
    assert depth.shape == (1, 1, 64, 96)
    assert torch.isfinite(depth).all() and depth.min() > 0 and depth.max() <= 10.0
    units = bts_mod.layer_units(bts_mod.TINY_WIDTH)
    assert set(seen) == set(names) == set(units) == set(BTS_SPATIAL)
    for name, act in seen.items():
        s = BTS_SPATIAL[name]
        assert act.shape == (1, units[name], 64 // s, 96 // s), name
    assert units == {
        "decoder.conv1": 2,
        "decoder.upconv1": 2,
        "decoder.conv2": 4,
        "decoder.bn2": 4,
        "decoder.bn3": 8,
    }
    assert set(bts_mod.PAPER_LAYERS.values()) == set(names)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(1, 3, 60, 96))


def test_local_planar_guidance_follows_plane_equation() -> None:
    # A tilted plane n = (sin t, 0, cos t) at distance d: depth = d / (n1 * u + n3), where u is
    # the patch-local column offset (x - (r - 1) / 2) / r; constant down each column.
    t, d, r = 0.3, 4.0, 4
    eq = torch.tensor([math.sin(t), 0.0, math.cos(t), d]).view(1, 4, 1, 1).repeat(1, 1, 2, 3)
    depth = bts_mod.local_planar_guidance(eq, r)
    assert depth.shape == (1, 2 * r, 3 * r)
    u = (torch.arange(r, dtype=torch.float32) - (r - 1) / 2) / r
    expected_row = (d / (math.sin(t) * u + math.cos(t))).repeat(3)
    torch.testing.assert_close(depth[0], expected_row.expand(2 * r, -1))
    # Swapping the tilt into n2 makes depth vary down the rows instead.
    eq_v = eq[:, [1, 0, 2, 3]]
    expected_col = (d / (math.sin(t) * u + math.cos(t))).repeat(2)
    torch.testing.assert_close(
        bts_mod.local_planar_guidance(eq_v, r)[0], expected_col.unsqueeze(1).expand(-1, 3 * r)
    )


def test_bts_focal_only_rescales_kitti() -> None:
    torch.manual_seed(0)
    model = bts_mod.build_bts(tiny=True, max_depth=80.0, dataset="kitti").eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(image)
        scaled = model(image, torch.tensor([715.0873, 2 * 715.0873]))
    torch.testing.assert_close(scaled[0], plain[0])
    torch.testing.assert_close(scaled[1], 2 * plain[1])
    model.decoder.dataset = "nyu"
    with torch.no_grad():
        torch.testing.assert_close(model(image, 300.0), plain)


def test_bts_full_size_static(full_models: dict[str, nn.Module]) -> None:
    model = full_models["bts"]
    d = model.decoder
    static = {
        "decoder.conv1": d.conv1[0].out_channels,
        "decoder.upconv1": d.upconv1.conv.out_channels,
        "decoder.conv2": d.conv2[0].out_channels,
        "decoder.bn2": d.bn2.num_features,
        "decoder.bn3": d.bn3.num_features,
    }
    assert static == dict(bts_mod.INFO.layer_units) == bts_mod.layer_units(1.0)
    assert static == {
        "decoder.conv1": 32,
        "decoder.upconv1": 32,
        "decoder.conv2": 64,
        "decoder.bn2": 64,
        "decoder.bn3": 128,
    }
    assert bts_mod.INFO.input_size == (416, 544) and bts_mod.INFO.input_multiple == 32
    assert d.bn5.momentum == 0.01 and d.bn5.eps == pytest.approx(1.1e-5)
    assert n_params(model) == BTS_PARAMS == doc_count(BTS_PARAMS)
    sd = model.state_dict()
    for key, shape in BTS_OFFICIAL_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("encoder.base_model.classifier") for k in sd)


# ------------------------------------------------------------------------ CSPN
def sparse_like(depth: torch.Tensor, keep: float = 0.05) -> torch.Tensor:
    return depth * (torch.rand_like(depth) < keep)


def test_cspn_tiny_forward_and_exposed_layers() -> None:
    torch.manual_seed(0)
    model = cspn_mod.build_cspn(tiny=True).eval()
    image, dense = torch.randn(2, 3, 60, 76), 1 + 9 * torch.rand(2, 1, 60, 76)
    names = list(cspn_mod.INFO.suggested_layers)
    depth, seen = capture(model, names, lambda: model(image, sparse_like(dense)))
    assert depth.shape == (2, 1, 60, 76) and torch.isfinite(depth).all()
    units = cspn_mod.layer_units(cspn_mod.TINY_WIDTH)
    assert units == {"gud_up_proj_layer3": 16, "gud_up_proj_layer4": 4}
    assert seen["gud_up_proj_layer3"].shape == (2, 16, 15, 19)
    assert seen["gud_up_proj_layer4"].shape == (2, 4, 30, 38)


def test_cspn_official_crop_sizes_at_228x304() -> None:
    # Upstream hard-codes crops 15x19, 29x38, 57x76, 114x152, 228x304.
    torch.manual_seed(0)
    model = cspn_mod.build_cspn(tiny=True, prop_time=1).eval()
    names = [f"gud_up_proj_layer{i}" for i in range(1, 7)]
    image, sparse = torch.randn(1, 3, 228, 304), torch.zeros(1, 1, 228, 304)
    _, seen = capture(model, names, lambda: model(image, sparse))
    sizes = [tuple(seen[n].shape[-2:]) for n in names]
    assert sizes == [(15, 19), (29, 38), (57, 76), (114, 152), (228, 304), (228, 304)]
    assert seen["gud_up_proj_layer6"].shape[1] == 8


def reference_propagation(
    guidance: torch.Tensor, blur: torch.Tensor, sparse: torch.Tensor, steps: int
) -> torch.Tensor:
    """Padded-map formulation of upstream: normalise on the (H+2, W+2) maps, then crop."""
    pads = [
        (0, 2, 0, 2),
        (1, 1, 0, 2),
        (2, 0, 0, 2),
        (0, 2, 1, 1),
        (2, 0, 1, 1),
        (0, 2, 2, 0),
        (1, 1, 2, 0),
        (2, 0, 2, 0),
    ]
    gate = torch.stack([F.pad(guidance[:, k], p) for k, p in enumerate(pads)], 1)
    gate = gate / gate.abs().sum(1, keepdim=True)
    gate_sum = gate.sum(1)[:, 1:-1, 1:-1]
    mask, depth = sparse[:, 0].sign(), blur[:, 0]
    for _ in range(steps):
        shifted = torch.stack([F.pad(depth, p) for p in pads], 1)
        depth = (gate * shifted).sum(1)[:, 1:-1, 1:-1] + (1 - gate_sum) * blur[:, 0]
        depth = (1 - mask) * depth + mask * blur[:, 0]
    return depth.unsqueeze(1)


def test_cspn_propagation_matches_padded_formulation() -> None:
    torch.manual_seed(0)
    guidance, blur = torch.randn(2, 8, 9, 11), torch.rand(2, 1, 9, 11) * 5
    sparse = sparse_like(torch.rand(2, 1, 9, 11) * 5 + 1, keep=0.2)
    prop = cspn_mod.AffinityPropagate(prop_time=24, norm_type="8sum")
    out = prop(guidance, blur, sparse)
    torch.testing.assert_close(out, reference_propagation(guidance, blur, sparse, 24))
    # A constant map is a fixed point: affinities plus the centre weight sum to one.
    const = torch.full_like(blur, 3.0)
    torch.testing.assert_close(prop(guidance, const), const)
    # Upstream resets measured pixels to the blurry prediction; the paper option, to the sample.
    hit = sparse > 0
    torch.testing.assert_close(out[hit], blur[hit])
    paper = cspn_mod.AffinityPropagate(24, "8sum_abs", reset_to_sparse=True)(guidance, blur, sparse)
    torch.testing.assert_close(paper[hit], sparse[hit])


def test_cspn_full_size_static(full_models: dict[str, nn.Module]) -> None:
    model = full_models["cspn"]
    static = {
        "gud_up_proj_layer3": model.gud_up_proj_layer3.conv2.out_channels,
        "gud_up_proj_layer4": model.gud_up_proj_layer4.conv2.out_channels,
    }
    assert static == dict(cspn_mod.INFO.layer_units) == cspn_mod.layer_units(1.0)
    assert static == {"gud_up_proj_layer3": 256, "gud_up_proj_layer4": 64}
    assert cspn_mod.INFO.extra_inputs == ("sparse_depth",) and cspn_mod.INFO.input_size == (
        228,
        304,
    )
    assert model.post_process_layer.prop_time == 24
    assert n_params(model) == CSPN_PARAMS == doc_count(CSPN_PARAMS)
    sd = model.state_dict()
    for key, shape in CSPN_OFFICIAL_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith(("conv1.", "fc.", "encoder.")) for k in sd)


# ------------------------------------------------- checkpoints and registration
def _bts_case() -> tuple[Callable[[], nn.Module], tuple[torch.Tensor, ...]]:
    return (lambda: bts_mod.build_bts(tiny=True)), (torch.randn(1, 3, 64, 64),)


def _cspn_case() -> tuple[Callable[[], nn.Module], tuple[torch.Tensor, ...]]:
    return (lambda: cspn_mod.build_cspn(tiny=True)), (
        torch.randn(1, 3, 40, 52),
        sparse_like(torch.rand(1, 1, 40, 52) * 9 + 1),
    )


@pytest.mark.parametrize("case", [_bts_case, _cspn_case], ids=["bts", "cspn"])
def test_safetensors_roundtrip_and_module_prefix(case: Callable[[], Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    build, inputs = case()
    src = build().eval()
    # Give BN non-trivial statistics so a missed buffer would change outputs.
    for m in src.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(1)
    dst = build().eval()
    with torch.no_grad():
        assert not torch.equal(dst(*inputs), src(*inputs))  # fresh weights really differ
    assert dst.load_state_dict(load_file(str(path)), strict=True) is not None
    with torch.no_grad():
        expected = src(*inputs)
        torch.testing.assert_close(dst(*inputs), expected, rtol=0, atol=0)
    torch.manual_seed(2)
    dp = build().eval()
    prefixed = {f"module.{k}": v for k, v in src.state_dict().items()}
    with pytest.raises(RuntimeError):
        dp.load_state_dict(prefixed, strict=True)
    dp.load_state_dict(strip_prefix(prefixed), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(dp(*inputs), expected, rtol=0, atol=0)


def test_register_models_contract() -> None:
    calls: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}

    def register(name: str, factory: Callable[..., nn.Module], **kwargs: Any) -> None:
        calls[name] = (factory, kwargs)

    bts_mod.register_models(register)
    cspn_mod.register_models(register)
    assert set(calls) == {"bts_densenet161", "cspn_resnet50"}
    for name, module in (("bts_densenet161", bts_mod), ("cspn_resnet50", cspn_mod)):
        factory, kwargs = calls[name]
        assert kwargs["info"] is module.INFO and kwargs["description"]
        model = factory(tiny=True)
        for layer in module.INFO.suggested_layers:
            model.get_submodule(layer)
    narrow = calls["bts_densenet161"][0](width=0.25, max_depth=80.0)
    assert narrow.decoder.max_depth == 80.0 and narrow.decoder.conv1[0].out_channels == 8
    assert calls["cspn_resnet50"][0](width=0.25).gud_up_proj_layer3.conv2.out_channels == 64
    for factory, _ in calls.values():  # typos must fail loudly (the CLI reports TypeError)
        with pytest.raises(TypeError):
            factory(tiny=True, widht=0.5)


def test_cspn_loads_an_upstream_trained_checkpoint_with_sum_conv(tmp_path: Path) -> None:
    # Upstream's Affinity_Propagate registers post_process_layer.sum_conv.weight
    # (all ones, [1, 8, 1, 1, 1]) during its first forward; a checkpoint saved
    # after training holds it, wrapped in DataParallel's "module." prefix.
    from depthsel.checkpoints import load_weights

    torch.manual_seed(0)
    build, inputs = _cspn_case()
    src = build().eval()
    state = {f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}
    state["module.post_process_layer.sum_conv.weight"] = torch.ones(1, 8, 1, 1, 1)
    path = tmp_path / "cspn_upstream.safetensors"
    save_file(state, str(path))
    torch.manual_seed(1)
    dst = build().eval()
    load_weights(dst, path, strict=True)
    assert "post_process_layer.sum_conv.weight" not in dst.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(dst(*inputs), src(*inputs), rtol=0, atol=0)
    # Only that one key is forgiven: any other stray key still fails a strict load.
    plain = strip_prefix(state)
    plain["post_process_layer.other.weight"] = torch.ones(1)
    with pytest.raises(RuntimeError, match="post_process_layer.other.weight"):
        build().load_state_dict(plain, strict=True)
