"""Capture hooks never leak; layer selection resolves names, globs, types, wrappers."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from depthsel import Capture, LayerSelector, RepeatedHookWarning, TokenGridAdapter
from depthsel.capture import count_hooks
from depthsel.errors import ActivationShapeError, LayerNotFoundError
from depthsel.testing import ToyDepthNet, assert_no_hooks


class Boom(RuntimeError):
    pass


@given(fail_at=st.sampled_from(["enter", "forward", "hook", "after"]),
       layers=st.lists(st.sampled_from(["enc1", "enc2", "dec1", "dec2", "dec3"]), min_size=1, max_size=5))
def test_no_hook_left_after_any_exception(fail_at: str, layers: list[str]) -> None:
    model = ToyDepthNet(width=4)
    x = torch.rand(1, 3, 16, 16)
    adapters = {}
    if fail_at == "hook":
        def bad(_out):  # an adapter that fails inside the hook
            raise Boom("adapter failed")
        adapters = {layers[0]: bad}
    with pytest.raises(Boom):
        with Capture(model, layers, adapters=adapters) as cap:
            if fail_at == "enter":
                raise Boom("right away")
            if fail_at == "forward":
                model.enc1.register_forward_hook(lambda *a: (_ for _ in ()).throw(Boom("x"))).remove()
                raise Boom("during forward")
            model(x)
            if fail_at == "after":
                raise Boom("after forward")
    assert_no_hooks(model)
    assert cap.outputs == {}


def test_capture_outputs_detach_and_graph() -> None:
    model = ToyDepthNet(width=4)
    x = torch.rand(2, 3, 16, 16)
    with Capture(model, ["dec2", "dec3"]) as cap:
        model(x)
    assert set(cap.outputs) == {"dec2", "dec3"}
    assert cap.outputs["dec3"].shape == (2, 4, 16, 16) and not cap.outputs["dec3"].requires_grad
    with Capture(model, ["dec3"], detach=False) as cap:
        model(x)
    assert cap.outputs["dec3"].requires_grad
    assert_no_hooks(model)


def test_repeated_module_warns() -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    m = Reuse()
    with pytest.warns(RepeatedHookWarning):
        with Capture(m, ["conv"]):
            m(torch.rand(1, 2, 3, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Capture(m, ["conv"]) as cap:
            m.conv(torch.rand(1, 2, 3, 3))  # calling the submodule once is fine
    assert "conv" in cap.outputs


def test_layer_selector_forms_and_wrappers() -> None:
    model = ToyDepthNet(width=4)
    assert list(LayerSelector("dec?").resolve(model)) == ["dec1", "dec2", "dec3"]
    assert len(LayerSelector("dec*").resolve(model)) == 12  # globs also match submodules
    assert list(LayerSelector(["dec3", "enc1"]).resolve(model)) == ["dec3", "enc1"]
    convs = LayerSelector(nn.Conv2d).resolve(model)
    assert all(isinstance(m, nn.Conv2d) for m in convs.values()) and len(convs) == 7
    pred = LayerSelector(lambda n, m: n.endswith(".2") and n.startswith("enc")).resolve(model)
    assert list(pred) == ["enc1.2", "enc2.2", "enc3.2"]
    wrapped = nn.DataParallel(model)
    assert list(LayerSelector("dec3").resolve(wrapped)) == ["dec3"]
    compiled = torch.compile(model)
    assert LayerSelector("dec3").resolve(compiled)["dec3"] is model.dec3


def test_empty_match_lists_closest_names() -> None:
    model = ToyDepthNet(width=4)
    with pytest.raises(LayerNotFoundError, match="dec3"):
        LayerSelector("dec_3").resolve(model)
    with pytest.raises(LayerNotFoundError, match="closest"):
        LayerSelector("nothing*").resolve(model)


def test_token_adapter_and_non_4d_error() -> None:
    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).flatten(2).transpose(1, 2)
            cls = torch.zeros(t.shape[0], 1, 8)
            return self.block(torch.cat([cls, t], 1))

    m = TinyViT()
    x = torch.rand(2, 3, 16, 24)
    with pytest.raises(ActivationShapeError, match="adapter"):
        with Capture(m, ["block"]):
            m(x)
    assert count_hooks(m) == 0
    with Capture(m, ["block"], adapters={"block": TokenGridAdapter((4, 6), skip_tokens=1)}) as cap:
        out = m(x)
    assert cap.outputs["block"].shape == (2, 8, 4, 6)
    torch.testing.assert_close(cap.outputs["block"][:, :, 1, 2], out[:, 1 + 1 * 6 + 2])
