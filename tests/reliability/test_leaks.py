"""No leaks: 300 training steps with the regularizer keep RSS flat and leave no hooks behind."""

from __future__ import annotations

import gc
import os
import statistics

import pytest
import torch

from depthsel.binning import EdgesBinner
from depthsel.capture import Capture, count_hooks
from depthsel.regularizer import SelectivityRegularizer
from depthsel.testing import ToyDepthNet, assert_no_hooks, toy_batch

PAGE = os.sysconf("SC_PAGE_SIZE")
STEPS = 300
#: Allowed RSS growth between the medians of steps 50-100 and 250-300. One step's
#: activations and gradients of this model are ~0.2 MB; a leak of one step's graph
#: per step would grow RSS by ~40 MB over 200 steps.
BOUND_MB = 4.0


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


def cuda_rss_mb() -> float:
    return torch.cuda.memory_allocated() / 2**20


def run_steps(device: str, measure: object) -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(0)
    model = ToyDepthNet(width=8).to(device)
    reg = SelectivityRegularizer(model, ["dec2", "dec3"],
                                 EdgesBinner([0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 12.0]), weight=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, d = (t.to(device) for t in toy_batch(4, (32, 32), seed=1))
    samples: list[float] = []
    for step in range(STEPS):
        with reg.attach():
            pred = model(x)
            loss = (pred - d).abs().mean() + reg.loss(d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 3 == 2:
            # An exception inside attach() mid-step: hooks must still go, graph must be freed.
            with pytest.raises(RuntimeError, match="injected"):
                with reg.attach():
                    model(x)
                    raise RuntimeError("injected")
            assert not reg.attached
        del pred, loss
        samples.append(measure())  # type: ignore[operator]
    return samples, model


def assert_flat(samples: list[float]) -> None:
    early = statistics.median(samples[50:100])
    late = statistics.median(samples[250:300])
    assert late - early < BOUND_MB, f"memory grew from {early:.1f} MB to {late:.1f} MB over 200 steps"


def test_regularizer_steps_do_not_leak_on_cpu() -> None:
    gc.collect()
    samples, model = run_steps("cpu", rss_mb)
    assert_flat(samples)
    assert_no_hooks(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_regularizer_steps_do_not_leak_on_cuda() -> None:
    samples, model = run_steps("cuda", cuda_rss_mb)
    assert_flat(samples)
    assert_no_hooks(model)


def test_exception_inside_hook_removes_every_hook() -> None:
    model = ToyDepthNet(width=4)
    calls = {"n": 0}

    def exploding(name: str, out: torch.Tensor) -> None:
        calls["n"] += 1
        raise ValueError("boom inside the hook")

    x, _ = toy_batch(2, (16, 16))
    with pytest.raises(ValueError, match="boom inside the hook"):
        with Capture(model, ["enc1", "dec3"], on_output=exploding):
            model(x)
    assert calls["n"] == 1
    assert_no_hooks(model)
    # Mid-loss: the depth is bad, loss() raises inside attach(); hooks go anyway.
    reg = SelectivityRegularizer(model, "dec3", EdgesBinner([0.5, 2.0, 10.0]))
    with pytest.raises(Exception, match="floating point"):
        with reg.attach():
            model(x)
            reg.loss(torch.ones(2, 16, 16, dtype=torch.long))
    assert count_hooks(model) == 0
    with reg.attach():
        assert count_hooks(model) > 0
    assert_no_hooks(model)


def test_keyboard_interrupt_inside_attach_removes_hooks() -> None:
    model = ToyDepthNet(width=4)
    reg = SelectivityRegularizer(model, ["dec2", "dec3"], EdgesBinner([0.5, 2.0, 10.0]))
    with pytest.raises(KeyboardInterrupt):
        with reg.attach():
            model(toy_batch(1, (16, 16))[0])
            raise KeyboardInterrupt
    assert_no_hooks(model)
    assert reg._capture is not None and reg._capture.outputs == {}
