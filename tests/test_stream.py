"""The one streaming loop and the declared-state consumers.

Every fast path is held against a plain loop: the stream's accumulators against
a hand-written per-batch loop, merge and load against one consumer fed
everything, a resumed pass against an uninterrupted one.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings, strategies as st

import depthsel
from depthsel.accumulator import ResponseAccumulator
from depthsel.consumer import BatchCallback, Consumer
from depthsel.errors import ResultFormatError, ShapeMismatchError
from depthsel.hooks import HookHandles
from depthsel.metrics import DepthMetrics
from depthsel.stream import probe_units, stream
from depthsel.testing import ToyDepthDataset, ToyDepthNet, assert_no_hooks

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["dec2", "dec3"]


def _model() -> ToyDepthNet:
    torch.manual_seed(0)
    return ToyDepthNet(width=4).double().eval()


def _binner() -> Any:
    return depthsel.get_binner("sid", num_bins=5, min_depth=0.75, max_depth=10.0)


class _MaxAndList(Consumer):
    """A consumer with every reduction: sum, max, min and cat."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(3, dtype=torch.float64))
        self.add_state("high", torch.full((3,), -torch.inf, dtype=torch.float64), reduce="max")
        self.add_state("low", torch.full((3,), torch.inf, dtype=torch.float64), reduce="min")
        self.add_state("items", [], reduce="cat")

    def update(self, view: Any) -> None:
        x = view if isinstance(view, torch.Tensor) else view.depth.flatten(1)[:, :3]
        self.total = self.total + x.sum(0)
        self.high = torch.maximum(self.high, x.max(0).values)
        self.low = torch.minimum(self.low, x.min(0).values)
        self.items.extend(list(x))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(0, 9), st.integers(0, 2**16))
def test_merge_equals_one_consumer_fed_everything(n: int, cut: int, seed: int) -> None:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cut = min(cut, n)
    whole, left, right = _MaxAndList(), _MaxAndList(), _MaxAndList()
    whole.update(x)
    if cut:
        left.update(x[:cut])
    if cut < n:
        right.update(x[cut:])
    merged = left.merge(right)
    for name in ("total", "high", "low"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(merged.items, whole.items)) and len(merged.items) == n
    restored = _MaxAndList()
    restored.load_state_dict(merged.state_dict("p/"), "p/")
    assert torch.equal(restored.total, merged.total) and len(restored.items) == n
    restored.reset()
    assert float(restored.total.abs().sum()) == 0 and restored.items == []


def test_load_state_dict_refuses_wrong_names_dtypes_and_shapes() -> None:
    c = _MaxAndList()
    c.update(torch.ones(2, 3, dtype=torch.float64))
    state = c.state_dict()
    with pytest.raises(ResultFormatError, match="lacks"):
        _MaxAndList().load_state_dict({k: v for k, v in state.items() if k != "total"})
    with pytest.raises(ResultFormatError, match="float64"):
        _MaxAndList().load_state_dict({**state, "total": state["total"].float()})
    with pytest.raises(ResultFormatError, match="shape"):
        _MaxAndList().load_state_dict({**state, "high": torch.zeros(4, dtype=torch.float64)})
    with pytest.raises(ShapeMismatchError):
        ResponseAccumulator(3).merge(_MaxAndList())  # type: ignore[arg-type]


def test_stream_accumulators_equal_a_plain_loop() -> None:
    """collect_responses (stream, cached bins and weights) == update() per batch by hand."""
    data = ToyDepthDataset(7, seed=2, dtype=torch.float64)
    model, binner = _model(), _binner()
    got = depthsel.collect_responses(model, data, LAYERS, binner, batch_size=3, progress=False,
                                     compute_dtype=torch.float64)
    fast = depthsel.collect_responses(model, data, LAYERS, binner, batch_size=3, progress=False)
    ref = {n: ResponseAccumulator(binner.num_bins, method="upsample") for n in LAYERS}
    with torch.no_grad(), depthsel.Capture(model, LAYERS) as cap:
        for start in range(0, len(data), 3):
            items = [data[i] for i in range(start, min(start + 3, len(data)))]
            depth = torch.stack([it["depth"] for it in items])
            valid = torch.stack([it["valid"] for it in items])
            model(torch.stack([it["image"] for it in items]))
            for n in LAYERS:
                ref[n].update(cap.outputs[n], binner(depth, valid))
    for n in LAYERS:
        torch.testing.assert_close(got.accumulators[n].sums, ref[n].sums, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got.accumulators[n].counts, ref[n].counts, rtol=0, atol=0)
        assert got.accumulators[n].num_images == ref[n].num_images == 7
        # The default float32 products, accumulated in float64, agree to float32 rounding.
        torch.testing.assert_close(fast.accumulators[n].sums, ref[n].sums, rtol=1e-5, atol=1e-6)
    assert_no_hooks(model)


def test_resumed_pass_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    data = ToyDepthDataset(9, seed=4, dtype=torch.float64)
    model, binner = _model(), _binner()

    def consumers() -> dict[str, Consumer]:
        return {"acc": ResponseAccumulator(5, layer="dec3", binner=binner),
                "metrics": DepthMetrics("default"), "misc": _MaxAndList()}

    straight = consumers()
    stream(model, data, straight, layers=["dec3"], batch_size=2, progress=False)
    first = consumers()
    report = stream(model, data, first, layers=["dec3"], batch_size=2, progress=False,
                    checkpoint=tmp_path / "ck", checkpoint_every=1, max_batches=2)
    assert report.images_done == 4
    resumed = consumers()
    report = stream(model, data, resumed, layers=["dec3"], batch_size=2, progress=False,
                    checkpoint=tmp_path / "ck", checkpoint_every=1)
    assert report.resumed_from == 4 and report.images_done == 9
    for name in straight:
        a, b = straight[name].state_dict(), resumed[name].state_dict()
        assert set(a) == set(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-12, atol=1e-12, msg=f"{name}/{key}")
    with pytest.raises(ResultFormatError, match="another dataset"):
        stream(model, ToyDepthDataset(8, seed=4, dtype=torch.float64), consumers(), layers=["dec3"],
               batch_size=2, progress=False, checkpoint=tmp_path / "ck")


def test_views_carry_indices_and_the_model_mode_is_restored() -> None:
    data = ToyDepthDataset(5, seed=1)
    model = ToyDepthNet(width=4).train()
    seen: list[int] = []
    stream(model, data, {"cb": BatchCallback(lambda v: seen.extend(v.indices.tolist()))},
           batch_size=2, indices=[4, 0, 2], progress=False)
    assert seen == [4, 0, 2] and model.training
    assert probe_units(model, data, LAYERS) == {"dec2": 8, "dec3": 4}


def test_hook_handles_remove_everything_even_when_the_block_fails() -> None:
    net = ToyDepthNet(width=4)
    with pytest.raises(RuntimeError):
        with HookHandles() as handles:
            for m in net.modules():
                handles.append(m.register_forward_hook(lambda *_: None))
            raise RuntimeError("boom")
    assert_no_hooks(net)
    failing = stream.__wrapped__ if hasattr(stream, "__wrapped__") else stream
    with pytest.raises(ZeroDivisionError):
        failing(net, ToyDepthDataset(3), {"cb": BatchCallback(lambda v: 1 / 0)}, layers=LAYERS, progress=False,
                replace={"dec3": lambda a: a * 2})
    assert_no_hooks(net)


def _calls(tree: ast.AST, name: str) -> list[int]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if called == name:
                out.append(node.lineno)
    return out


# The two optimisation loops (the trainer's epochs and the mask generator's training)
# shuffle and step an optimizer: they are not passes over a dataset, and say so in the docs.
LOOP_EXCEPTIONS = {"src/depthsel/training.py", "plugins/depthsel_plugins/analyses/masks.py"}


def test_stream_is_the_only_loop_over_a_dataset() -> None:
    """Only stream.py builds a DataLoader (and registers forward hooks outside the hook owners)."""
    offenders, hooks = [], []
    for path in [*(ROOT / "src/depthsel").rglob("*.py"), *(ROOT / "plugins/depthsel_plugins").rglob("*.py")]:
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        if _calls(tree, "DataLoader") and rel not in LOOP_EXCEPTIONS | {"src/depthsel/stream.py"}:
            offenders.append(rel)
        if _calls(tree, "register_forward_hook") and "HookHandles" not in path.read_text() \
                and rel != "src/depthsel/hooks.py":
            hooks.append(rel)
    assert offenders == [], f"loops over a dataset outside stream(): {offenders}"
    assert hooks == [], f"forward hooks not owned by HookHandles: {hooks}"


def test_worker_processes_give_the_same_pass() -> None:
    """Items carry their dataset index through worker processes (the indexed subset pickles)."""
    data = ToyDepthDataset(5, seed=6, dtype=torch.float64)
    model, binner = _model(), _binner()
    states = []
    for workers in (0, 1):
        seen: list[int] = []
        acc = ResponseAccumulator(5, layer="dec3", binner=binner, compute_dtype=torch.float64)
        stream(model, data, {"acc": acc, "ids": BatchCallback(lambda v: seen.extend(v.indices.tolist()))},
               layers=["dec3"], batch_size=2, num_workers=workers, progress=False)
        states.append((acc.state_dict(), seen))
    assert states[0][1] == states[1][1] == [0, 1, 2, 3, 4]
    assert all(torch.equal(states[0][0][k], states[1][0][k]) for k in states[0][0])
