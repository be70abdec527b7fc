"""The capture proves which layers end in a ReLU, and the dissection then skips the sign check.

A wrong proof would make ``|A|`` sums silently signed, so the proof is tested on every
way around it (other module types, subclasses, hooks before ours, global hooks,
adapters, replaced outputs), and the statistics with the check skipped are held
against the plain update, which reads the activations for a negative value.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import depthsel
from depthsel.accumulator import ResponseAccumulator
from depthsel.capture import Capture, ends_nonnegative
from depthsel.stream import stream
from depthsel.testing import ToyDepthDataset, ToyDepthNet

pytestmark = pytest.mark.usefixtures("kernel_backend")


class _MyReLU(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 1.0  # a subclass may do anything


def _conv() -> nn.Conv2d:
    return nn.Conv2d(2, 2, 1)


@pytest.mark.parametrize("module, expected", [
    (nn.ReLU(), True),
    (nn.ReLU6(), True),
    (nn.Sequential(_conv(), nn.BatchNorm2d(2), nn.ReLU()), True),
    (nn.Sequential(_conv(), nn.Sequential(_conv(), nn.ReLU(inplace=True))), True),
    (_conv(), False),
    (nn.Sequential(_conv(), nn.ReLU(), _conv()), False),
    (nn.Sequential(_conv(), nn.LeakyReLU()), False),
    (nn.Sequential(_conv(), nn.Tanh()), False),
    (nn.Sequential(_conv(), _MyReLU()), False),
    (nn.Sequential(), False),
])
def test_ends_nonnegative_only_for_an_exact_relu_chain(module: nn.Module, expected: bool) -> None:
    assert ends_nonnegative(module) is expected


def test_any_hook_or_patched_forward_on_the_chain_voids_the_proof() -> None:
    block = nn.Sequential(_conv(), nn.Sequential(_conv(), nn.ReLU()))
    assert ends_nonnegative(block)
    handle = block[1][1].register_forward_hook(lambda m, i, o: o - 5.0)  # on the inner ReLU
    assert not ends_nonnegative(block)
    handle.remove()
    handle = block[1].register_forward_hook(lambda m, i, o: o - 5.0)  # on the inner Sequential
    assert not ends_nonnegative(block)
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)  # global
    try:
        assert not ends_nonnegative(block)
    finally:
        handle.remove()
    assert ends_nonnegative(block)
    block[1][1].forward = lambda x: x - 1.0  # type: ignore[method-assign]
    assert not ends_nonnegative(block)


def _captured_nonnegative(model: nn.Module, layers: list[str], **kw: Any) -> set[str]:
    with torch.no_grad(), Capture(model, layers, **kw) as cap:
        model(torch.rand(1, 3, 16, 16))
        return set(cap.nonnegative)


def test_capture_marks_relu_layers_and_not_a_layer_whose_output_a_hook_before_ours_replaces() -> None:
    torch.manual_seed(0)
    model = ToyDepthNet(width=2).eval()
    assert _captured_nonnegative(model, ["dec2", "dec3", "head"]) == {"dec2", "dec3"}
    handle = model.dec2.register_forward_hook(lambda m, i, o: o - 1.0)  # before ours: replaces the output
    try:
        assert _captured_nonnegative(model, ["dec2", "dec3"]) == {"dec3"}
    finally:
        handle.remove()
    # An adapter's tensor is not the module's output: no proof.
    assert _captured_nonnegative(model, ["dec2", "dec3"], adapters={"dec3": lambda o: o - 1.0}) == {"dec2"}


def _collect(model: nn.Module, data: Any, binner: Any, **kw: Any) -> dict[str, ResponseAccumulator]:
    accs = {n: ResponseAccumulator(binner.num_bins, compute_dtype=torch.float32, layer=n, binner=binner)
            for n in ("dec2", "dec3")}
    stream(model, data, accs, layers=list(accs), batch_size=3, progress=False, **kw)
    return accs


def test_the_skipped_sign_check_gives_the_plain_update_and_is_really_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model, data = ToyDepthNet(width=2).eval(), ToyDepthDataset(7, seed=3)
    binner = depthsel.get_binner("sid", num_bins=5, min_depth=0.75, max_depth=10.0)
    calls: list[int] = []
    amin = torch.Tensor.amin

    def counting_amin(self: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        calls.append(self.ndim)
        return amin(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "amin", counting_amin)
    got = _collect(model, data, binner)
    assert calls == []  # dec2 and dec3 end in a ReLU: the activations are read once
    # An intervention before the capture voids the proof; then the sign is checked, and
    # the intervention's negative values make |A| sums differ from the signed ones.
    shifted = _collect(model, data, binner, replace={"dec3": lambda t: t - 0.5})
    assert calls and not torch.equal(shifted["dec3"].abs_sums, shifted["dec3"].sums)
    # The plain update (no view, so no proof: it looks for a negative value) gives the same state.
    ref = {n: ResponseAccumulator(binner.num_bins, compute_dtype=torch.float32) for n in ("dec2", "dec3")}
    with torch.no_grad(), Capture(model, list(ref)) as cap:
        for start in range(0, len(data), 3):
            items = [data[i] for i in range(start, min(start + 3, len(data)))]
            model(torch.stack([it["image"] for it in items]))
            bins = binner(torch.stack([it["depth"] for it in items]), torch.stack([it["valid"] for it in items]))
            for n in ref:
                ref[n].update(cap.outputs[n], bins)
    for n in ref:
        for state in ("sums", "abs_sums", "counts"):
            assert torch.equal(getattr(got[n], state), getattr(ref[n], state)), (n, state)


# ---- red-team regressions (round 7): each claimed a negative layer non-negative before its fix ----
class _Block(nn.Module):
    """conv -> Sequential(conv, ReLU) -> ``after`` -> head: the hooked layer is ``blk``."""

    def __init__(self, after: Any = None, last: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blk = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), last if last is not None else nn.ReLU())
        self.after = after or (lambda y: y)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.after(self.blk(self.stem(x))))) * 10


class _Plain:
    """The reference: ``update(activations, bins)`` on the stream's own captured tensors (sign always checked)."""

    def __init__(self, binner: Any) -> None:
        self.acc, self.binner, self.claims = ResponseAccumulator(binner.num_bins), binner, []

    def update(self, view: Any) -> None:
        self.claims.append("blk" in view.nonnegative)
        self.acc.update(view.activations["blk"], view.binned.bins(self.binner))


def _against_plain(model: nn.Module, **kw: Any) -> tuple[list[bool], ResponseAccumulator, ResponseAccumulator]:
    torch.manual_seed(0)
    binner = depthsel.get_binner("sid", num_bins=5, min_depth=0.75, max_depth=10.0)
    new, plain = ResponseAccumulator(5, layer="blk", binner=binner), _Plain(binner)
    stream(model.eval(), ToyDepthDataset(5, seed=3), {"new": new, "plain": plain},  # type: ignore[dict-item]
           layers=["blk"], batch_size=3, progress=False, **kw)
    return plain.claims, new, plain.acc


def _sub_half_in_place(y: torch.Tensor) -> torch.Tensor:
    return y.sub_(0.5)


@pytest.mark.parametrize("case", ["inference_mode", "adapter_same_object", "relu6_negative_bound",
                                  "instance_call_impl", "class_forward_patched", "functional_patched",
                                  "function_mode", "data_edit_after_hook"])
def test_ways_around_the_proof_give_the_plain_statistics(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    kw: dict[str, Any] = {}
    model = _Block(after=_sub_half_in_place if case in ("inference_mode", "adapter_same_object") else None)
    if case == "adapter_same_object":  # an adapter that edits the output and returns the same object
        model, kw = _Block(), {"adapters": {"blk": _sub_half_in_place}}
    elif case == "relu6_negative_bound":
        relu6 = nn.ReLU6()
        relu6.min_val = -3.0
        model = _Block(last=relu6)
    elif case == "instance_call_impl":
        inner = model.blk[1]
        inner._call_impl = lambda *a, **k: nn.ReLU._call_impl(inner, *a, **k) - 1.0  # type: ignore[method-assign]
    elif case == "class_forward_patched":
        monkeypatch.setattr(nn.ReLU, "forward", lambda self, x: torch.relu(x) - 1.0)
    elif case == "functional_patched":
        relu = torch.nn.functional.relu
        monkeypatch.setattr(torch.nn.functional, "relu", lambda x, inplace=False: relu(x) - 1.0)
    elif case == "data_edit_after_hook":  # .data has its own version counter: the in-place check cannot see it
        model = _Block(after=lambda y: (y.data.sub_(0.5), y)[1])

    if case == "inference_mode":  # no version counters: an in-place edit after the hook goes unseen
        with torch.inference_mode():
            claims, new, plain = _against_plain(model, **kw)
    elif case == "function_mode":
        class _Shift(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                out = func(*args, **(kwargs or {}))
                return out - 1.0 if func is torch.nn.functional.relu else out

        with _Shift():
            claims, new, plain = _against_plain(model, **kw)
    else:
        claims, new, plain = _against_plain(model, **kw)
    if case != "data_edit_after_hook":
        assert claims and not any(claims)  # no proof claimed
    assert torch.equal(new.sums, plain.sums) and torch.equal(new.counts, plain.counts)
    # The data edit is claimed (nothing sees it), and the negative sums refute the claim.
    assert torch.equal(new.abs_sums, plain.abs_sums) and bool((new.abs_sums >= 0).all())
