"""An in-place op after a hooked module is an error, never a silently changed measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from depthsel import Capture, SelectivityRegularizer, get_binner
from depthsel.capture import InplaceModificationError
from depthsel.testing import assert_no_hooks


class BnInplaceRelu(nn.Module):
    """conv -> BatchNorm -> ReLU(inplace): hooking ``bn`` would see post-ReLU values."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=inplace)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x)))).squeeze(1)


@pytest.mark.parametrize("detach", [True, False])
def test_inplace_after_hooked_module_raises_naming_module_and_fix(detach: bool) -> None:
    model = BnInplaceRelu(inplace=True)
    with pytest.raises(InplaceModificationError, match=r"'bn' \(BatchNorm2d\).*inplace=False"):
        with Capture(model, ["bn"], detach=detach):
            model(torch.randn(2, 3, 8, 8))
    assert_no_hooks(model)


def test_out_of_place_and_hooking_the_inplace_module_are_fine() -> None:
    x = torch.randn(2, 3, 8, 8)
    model = BnInplaceRelu(inplace=False)
    with Capture(model, ["bn"]) as cap:
        model(x)
    # The captured BatchNorm output keeps its negative values (no ReLU applied to it).
    assert bool((cap.outputs["bn"] < 0).any())
    inplace = BnInplaceRelu(inplace=True)
    inplace.load_state_dict(model.state_dict())
    with Capture(inplace, ["act"]) as cap:
        inplace(x)
    assert bool((cap.outputs["act"] >= 0).all())


def test_regularizer_refuses_inplace_modified_activation() -> None:
    model = BnInplaceRelu(inplace=True)
    reg = SelectivityRegularizer(model, ["bn"], get_binner("uniform", num_bins=4, max_depth=10.0))
    with pytest.raises(InplaceModificationError, match="bn"):
        with reg.attach():
            model(torch.randn(2, 3, 8, 8))
    assert_no_hooks(model)
