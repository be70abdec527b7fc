"""Tests for the FastDepth and Hu et al. MFF plugins and their backbones.

Expected key names/shapes and parameter counts are derived independently of
the implementation: the key tables were transcribed from the reference
repositories (dwofk/fast-depth, JunjH/Revisiting_Single_Depth_Estimation) and
the counts are recomputed here from their layer definitions with closed-form
arithmetic, never by instantiating our modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from depthsel import ModelInfo
from depthsel.checkpoints import strip_prefix
from depthsel_plugins.models import fastdepth as fd
from depthsel_plugins.models import hu_mff
from depthsel_plugins.models.backbones.mobilenet import mobilenet_v1
from depthsel_plugins.models.backbones.resnet import resnet50
from depthsel_plugins.models.backbones.senet import senet154

# --------------------------------------------------------------------------
# Independent parameter arithmetic, transcribed from the reference code.


def _conv(cin: int, cout: int, k: int, groups: int = 1, bias: bool = False) -> int:
    return cin // groups * cout * k * k + (cout if bias else 0)


def _bn(c: int) -> int:
    return 2 * c  # affine weight + bias; running stats are buffers


def _resnet50_encoder() -> int:
    total = _conv(3, 64, 7) + _bn(64)
    inp = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            out = 4 * planes
            total += _conv(inp, planes, 1) + _bn(planes) + _conv(planes, planes, 3) + _bn(planes)
            total += _conv(planes, out, 1) + _bn(out)
            if b == 0:
                total += _conv(inp, out, 1) + _bn(out)
            inp = out
    return total


def _senet154_encoder() -> int:
    total = _conv(3, 64, 3) + _bn(64) + _conv(64, 64, 3) + _bn(64) + _conv(64, 128, 3) + _bn(128)
    inp = 128
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 8, 36, 3))):
        for b in range(blocks):
            p2, p4 = 2 * planes, 4 * planes
            total += _conv(inp, p2, 1) + _bn(p2) + _conv(p2, p4, 3, groups=64) + _bn(p4)
            total += _conv(p4, p4, 1) + _bn(p4)
            total += _conv(p4, p4 // 16, 1, bias=True) + _conv(p4 // 16, p4, 1, bias=True)
            if b == 0:
                total += _conv(inp, p4, 1 if i == 0 else 3) + _bn(p4)
            inp = p4
    return total


def _densenet161_features() -> int:
    total = _conv(3, 96, 7) + _bn(96)
    c = 96
    for i, n in enumerate((6, 12, 36, 24)):
        for _ in range(n):
            total += _bn(c) + _conv(c, 192, 1) + _bn(192) + _conv(192, 48, 3)
            c += 48
        if i < 3:
            total += _bn(c) + _conv(c, c // 2, 1)
            c //= 2
    return total + _bn(c)


def _upproj(cin: int, cout: int) -> int:
    return 2 * _conv(cin, cout, 5) + _conv(cout, cout, 3) + 3 * _bn(cout)


def _hu_head(block_channel: tuple[int, int, int, int]) -> int:
    nf = block_channel[3]
    total = _conv(nf, nf // 2, 1) + _bn(nf // 2)
    ch = nf // 2
    for _ in range(4):
        total += _upproj(ch, ch // 2)
        ch //= 2
    total += sum(_upproj(c, 16) for c in block_channel) + _conv(64, 64, 5) + _bn(64)
    r = 64 + nf // 32
    total += 2 * (_conv(r, r, 5) + _bn(r)) + _conv(r, 1, 5, bias=True)
    return total


def _fastdepth() -> int:
    cfg = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    cfg += [(512, 512)] * 5 + [(512, 1024), (1024, 1024)]
    total = _conv(3, 32, 3) + _bn(32)
    total += sum(_conv(i, i, 3, groups=i) + _bn(i) + _conv(i, o, 1) + _bn(o) for i, o in cfg)
    dec = [(1024, 512), (512, 256), (256, 128), (128, 64), (64, 32)]
    total += sum(_conv(i, i, 5, groups=i) + _bn(i) + _conv(i, o, 1) + _bn(o) for i, o in dec)
    return total + _conv(32, 1, 1) + _bn(1)


# Measured full-size counts, as recorded in docs/models.md.
DOC_COUNTS: dict[str, int] = {
    "fastdepth": 3_960_930,
    "hu_mff_resnet50": 67_569_473,
    "hu_mff_senet154": 157_101_425,
    "hu_mff_densenet161": 77_101_151,
}
INDEPENDENT_COUNTS: dict[str, Callable[[], int]] = {
    "fastdepth": _fastdepth,
    "hu_mff_resnet50": lambda: _resnet50_encoder() + _hu_head((256, 512, 1024, 2048)),
    "hu_mff_senet154": lambda: _senet154_encoder() + _hu_head((256, 512, 1024, 2048)),
    "hu_mff_densenet161": lambda: _densenet161_features() + _hu_head((192, 384, 1056, 2208)),
}

# A sample of reference state-dict keys and shapes (after stripping ``module.``).
OFFICIAL_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "fastdepth": {
        "conv0.0.weight": (32, 3, 3, 3),
        "conv0.1.running_mean": (32,),
        "conv1.0.weight": (32, 1, 3, 3),
        "conv1.3.weight": (64, 32, 1, 1),
        "conv1.4.bias": (64,),
        "conv12.0.weight": (512, 1, 3, 3),
        "conv13.3.weight": (1024, 1024, 1, 1),
        "decode_conv1.0.0.weight": (1024, 1, 5, 5),
        "decode_conv1.0.1.weight": (1024,),
        "decode_conv1.1.0.weight": (512, 1024, 1, 1),
        "decode_conv3.1.1.running_var": (128,),
        "decode_conv5.1.0.weight": (32, 64, 1, 1),
        "decode_conv6.0.weight": (1, 32, 1, 1),
        "decode_conv6.1.bias": (1,),
    },
    "hu_mff_resnet50": {
        "E.conv1.weight": (64, 3, 7, 7),
        "E.bn1.running_var": (64,),
        "E.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "E.layer2.0.conv2.weight": (128, 128, 3, 3),
        "E.layer4.2.bn3.weight": (2048,),
        "D.conv.weight": (1024, 2048, 1, 1),
        "D.bn.weight": (1024,),
        "D.up1.conv1.weight": (512, 1024, 5, 5),
        "D.up1.conv1_2.weight": (512, 512, 3, 3),
        "D.up1.bn1_2.weight": (512,),
        "D.up1.conv2.weight": (512, 1024, 5, 5),
        "D.up4.bn2.running_mean": (64,),
        "MFF.up1.conv1.weight": (16, 256, 5, 5),
        "MFF.up4.conv2.weight": (16, 2048, 5, 5),
        "MFF.conv.weight": (64, 64, 5, 5),
        "MFF.bn.bias": (64,),
        "R.conv0.weight": (128, 128, 5, 5),
        "R.bn0.weight": (128,),
        "R.conv1.weight": (128, 128, 5, 5),
        "R.bn1.running_var": (128,),
        "R.conv2.weight": (1, 128, 5, 5),
        "R.conv2.bias": (1,),
    },
    "hu_mff_senet154": {
        "E.base.0.conv1.weight": (64, 3, 3, 3),
        "E.base.0.conv3.weight": (128, 64, 3, 3),
        "E.base.0.bn3.weight": (128,),
        "E.base.1.0.conv1.weight": (128, 128, 1, 1),
        "E.base.1.0.conv2.weight": (256, 2, 3, 3),
        "E.base.1.0.conv3.weight": (256, 256, 1, 1),
        "E.base.1.0.se_module.fc1.weight": (16, 256, 1, 1),
        "E.base.1.0.se_module.fc1.bias": (16,),
        "E.base.1.0.se_module.fc2.weight": (256, 16, 1, 1),
        "E.base.1.0.downsample.0.weight": (256, 128, 1, 1),
        "E.base.2.0.downsample.0.weight": (512, 256, 3, 3),
        "E.base.3.35.conv2.weight": (1024, 8, 3, 3),
        "E.base.4.0.downsample.0.weight": (2048, 1024, 3, 3),
        "E.base.4.2.se_module.fc2.bias": (2048,),
        "D.conv.weight": (1024, 2048, 1, 1),
        "MFF.up4.conv1.weight": (16, 2048, 5, 5),
        "R.conv0.weight": (128, 128, 5, 5),
    },
    "hu_mff_densenet161": {
        "E.features.conv0.weight": (96, 3, 7, 7),
        "E.features.norm0.weight": (96,),
        "E.features.denseblock1.denselayer1.norm1.weight": (96,),
        "E.features.denseblock1.denselayer1.conv1.weight": (192, 96, 1, 1),
        "E.features.denseblock1.denselayer1.conv2.weight": (48, 192, 3, 3),
        "E.features.transition1.conv.weight": (192, 384, 1, 1),
        "E.features.transition3.conv.weight": (1056, 2112, 1, 1),
        "E.features.denseblock4.denselayer24.conv2.weight": (48, 192, 3, 3),
        "E.features.norm5.running_mean": (2208,),
        "D.conv.weight": (1104, 2208, 1, 1),
        "D.up4.conv1.weight": (69, 138, 5, 5),
        "MFF.up1.conv1.weight": (16, 192, 5, 5),
        "MFF.up3.conv2.weight": (16, 1056, 5, 5),
        "R.conv0.weight": (133, 133, 5, 5),
        "R.conv2.weight": (1, 133, 5, 5),
    },
}
# Keys the reference has no counterpart for (classifier heads were dropped).
FORBIDDEN_SUBSTRINGS = ("fc.", "last_linear", "classifier")

FACTORIES: dict[str, Callable[..., nn.Module]] = {"fastdepth": fd.fastdepth, **hu_mff.FACTORIES}
TINY_INPUT: dict[str, tuple[int, int]] = {
    "fastdepth": (64, 96),
    **{name: (64, 80) for name in hu_mff.FACTORIES},
}


def _infos() -> dict[str, ModelInfo]:
    infos: dict[str, ModelInfo] = {}

    def register(name: str, factory: Any, *, description: str = "", info: Any = None) -> None:
        assert name not in infos and callable(factory) and description
        infos[name] = info

    fd.register_models(register)
    hu_mff.register_models(register)
    return infos


INFOS = _infos()


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return FACTORIES[name]()


def _expected_out(name: str, h: int, w: int) -> tuple[int, int]:
    s = INFOS[name].output_stride
    return h // s, w // s


# --------------------------------------------------------------------------


def test_registration_metadata() -> None:
    assert set(INFOS) == set(FACTORIES)
    assert INFOS["fastdepth"].normalization == "unit"
    assert INFOS["fastdepth"].input_size == (224, 224) and INFOS["fastdepth"].output_stride == 1
    assert INFOS["fastdepth"].layer_units == dict(
        zip(fd.DECODER_LAYERS, (512, 256, 128, 64, 32))
    )
    for name in hu_mff.FACTORIES:
        assert INFOS[name].normalization == "imagenet"
        assert INFOS[name].input_size == (228, 304) and INFOS[name].output_stride == 2
        assert INFOS[name].suggested_layers == ("D", "MFF", "R.conv0", "R.conv1")
    assert INFOS["hu_mff_densenet161"].layer_units["D"] == 69


@pytest.mark.parametrize("name", list(FACTORIES))
def test_full_size_parameter_count(name: str) -> None:
    model = _meta(name)
    measured = sum(p.numel() for p in model.parameters())
    assert measured == INDEPENDENT_COUNTS[name]()
    assert measured == DOC_COUNTS[name]
    doc = Path(__file__).resolve().parents[2] / "docs" / "models.md"
    assert f"{measured:,}" in doc.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(FACTORIES))
def test_full_size_official_keys_and_layers(name: str) -> None:
    model = _meta(name)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in OFFICIAL_KEYS[name].items():
        assert shapes.get(key) == shape, key
    assert not [k for k in shapes if any(s in k for s in FORBIDDEN_SUBSTRINGS)]
    # Exposed layers are real module paths with the documented full-size width.
    units = {layer: getattr(model, "layer_units")[layer] for layer in INFOS[name].suggested_layers}
    assert units == dict(INFOS[name].layer_units)
    for layer, n in units.items():
        module = model.get_submodule(layer)
        last_bn = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, nn.Conv2d))][-1]
        if isinstance(last_bn, nn.BatchNorm2d):
            width = last_bn.num_features
        else:
            width = last_bn.out_channels
        assert width == n, layer


def test_fastdepth_key_count_matches_reference() -> None:
    # conv0: 1 conv + 1 BN (5 entries); conv1..13 and decode_conv1..5: 2 convs + 2 BNs;
    # decode_conv6: 1 conv + 1 BN.
    assert len(_meta("fastdepth").state_dict()) == 6 + 13 * 12 + 5 * 12 + 6


@pytest.mark.parametrize("name", list(FACTORIES))
def test_tiny_forward_and_hooked_layers(name: str) -> None:
    torch.manual_seed(0)
    model = FACTORIES[name](tiny=True).eval()
    h, w = TINY_INPUT[name]
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for layer in INFOS[name].suggested_layers:
            def hook(_m: nn.Module, _i: Any, out: torch.Tensor, layer: str = layer) -> None:
                captured[layer] = out.detach().clone()
            handles.append(model.get_submodule(layer).register_forward_hook(hook))
        with torch.no_grad():
            out = model(torch.rand(2, 3, h, w))
    finally:
        for handle in handles:
            handle.remove()
    assert out.shape == (2, 1, *_expected_out(name, h, w))
    assert torch.isfinite(out).all()
    assert set(captured) == set(INFOS[name].suggested_layers)
    for layer, fmap in captured.items():
        assert fmap.ndim == 4 and fmap.shape[0] == 2
        assert fmap.shape[1] == model.layer_units[layer], layer
    if name == "fastdepth":
        assert [captured[f"decode_conv{i}"].shape[-1] for i in range(1, 6)] == [
            w // 32, w // 16, w // 8, w // 4, w // 2
        ]
    else:
        for layer in ("D", "MFF", "R.conv0", "R.conv1"):
            assert captured[layer].shape[-2:] == out.shape[-2:]


@pytest.mark.parametrize(
    ("build", "channels"),
    [
        (lambda: resnet50(width_mult=1 / 16), (16, 32, 64, 128)),
        (lambda: senet154(width_mult=1 / 16), (16, 32, 64, 128)),
    ],
)
def test_backbone_stages(build: Callable[[], nn.Module], channels: tuple[int, ...]) -> None:
    net = build().eval()
    assert net.channels == channels
    with torch.no_grad():
        feats = net.forward_features(torch.rand(1, 3, 64, 96))
        logits = net(torch.rand(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == list(channels)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert logits.shape == (1, 1000)


def test_mobilenet_backbone() -> None:
    net = mobilenet_v1(width_mult=1 / 16).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    assert net.channels[-1] == 64 and net.strides[-1] == 32
    assert all(isinstance(m, nn.ReLU6) for m in net.model[1] if isinstance(m, (nn.ReLU, nn.ReLU6)))


def test_full_backbone_counts() -> None:
    with torch.device("meta"):
        counts = [
            sum(p.numel() for p in net.parameters())
            for net in (mobilenet_v1(), resnet50(), senet154())
        ]
    # torchvision / pretrainedmodels published totals with 1000-way classifiers.
    assert counts == [4_231_976, 25_557_032, 115_088_984]
    assert counts[1] == _resnet50_encoder() + 2048 * 1000 + 1000
    assert counts[2] == _senet154_encoder() + 2048 * 1000 + 1000


@pytest.mark.parametrize("name", list(FACTORIES))
def test_safetensors_roundtrip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = FACTORIES[name](tiny=True).eval()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    torch.manual_seed(2)
    dst = FACTORIES[name](tiny=True).eval()
    x = torch.rand(1, 3, *TINY_INPUT[name])
    with torch.no_grad():
        assert not torch.equal(src(x), dst(x))  # different init: the load must matter
        dst.load_state_dict(load_file(str(path)), strict=True)
        assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize("name", ["fastdepth", "hu_mff_resnet50"])
def test_dataparallel_prefix_and_legacy_bn(name: str) -> None:
    torch.manual_seed(3)
    src = FACTORIES[name](tiny=True).eval()
    # A DataParallel checkpoint from PyTorch < 0.4: ``module.`` prefix, no
    # ``num_batches_tracked`` buffers and no ``_metadata`` attribute.
    legacy = {
        f"module.{k}": v.clone() for k, v in src.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    dst = FACTORIES[name](tiny=True).eval()
    with pytest.raises(RuntimeError):
        dst.load_state_dict(legacy, strict=True)
    dst.load_state_dict(strip_prefix(legacy), strict=True)
    x = torch.rand(1, 3, *TINY_INPUT[name])
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_densenet_legacy_key_names_load() -> None:
    torch.manual_seed(4)
    src = hu_mff.hu_mff_densenet161(tiny=True).eval()
    state = {k: v.clone() for k, v in src.state_dict().items()}
    renamed = {}
    for key, value in state.items():
        for new, old in (("norm1", "norm.1"), ("conv1", "conv.1"), ("norm2", "norm.2"),
                         ("conv2", "conv.2")):
            if ".denselayer" in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert "E.features.denseblock1.denselayer1.norm.1.weight" in renamed
    assert "R.conv1.weight" in renamed and "MFF.up1.conv1_2.weight" in renamed
    dst = hu_mff.hu_mff_densenet161(tiny=True).eval()
    dst.load_state_dict(renamed, strict=True)
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_align_corners_flag() -> None:
    torch.manual_seed(5)
    default = hu_mff.hu_mff_resnet50(tiny=True).eval()
    modern = hu_mff.hu_mff_resnet50(tiny=True, align_corners=False).eval()
    modern.load_state_dict(default.state_dict())
    ups = [m for m in default.modules() if isinstance(m, hu_mff.UpProjection)]
    assert len(ups) == 8 and all(m.align_corners for m in ups)
    assert default.align_corners and not modern.align_corners
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert not torch.allclose(default(x), modern(x))


def test_fastdepth_rejects_bad_size_and_width() -> None:
    model = fd.fastdepth(tiny=True).eval()
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError):
        fd.fastdepth(width=0.0)
    assert fd.fastdepth(width=0.25).layer_units["decode_conv1"] == 128
