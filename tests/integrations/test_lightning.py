"""The Lightning callback: hooks live exactly as long as fit, DS is logged, errors clean up."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from depthsel.errors import DepthselError
from depthsel.testing import ToyDepthNet, assert_no_hooks, toy_batch

HAS_LIGHTNING = any(importlib.util.find_spec(m) is not None for m in ("lightning", "pytorch_lightning"))


def test_module_imports_without_lightning() -> None:
    import depthsel.integrations.lightning as integration

    if HAS_LIGHTNING:
        pytest.skip("Lightning is installed; the missing-dependency message cannot be shown")
    with pytest.raises(DepthselError, match=r"pip install depthsel\[lightning\]"):
        integration.SelectivityCallback(["net.dec2"], binner="sid")


@pytest.fixture
def L() -> Any:
    return pytest.importorskip("lightning.pytorch")


def _module_class(L: Any) -> type:
    class DepthModule(L.LightningModule):
        def __init__(self, fail_at: int | None = None) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = ToyDepthNet(width=8)
            self.fail_at = fail_at

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            from depthsel.integrations.lightning import SelectivityCallback

            if self.fail_at is not None and batch_idx == self.fail_at:
                raise RuntimeError("training blew up")
            image, depth = batch
            loss = F.l1_loss(self.net(image), depth)
            # The one line the integration asks a training_step to add:
            return loss + SelectivityCallback.find(self.trainer).loss(depth)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return DepthModule


def _loader() -> Any:
    image, depth = toy_batch(8, (32, 32), seed=3)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(image, depth), batch_size=4)


def _trainer(L: Any, callback: Any) -> Any:
    return L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[callback])


def test_fit_attaches_logs_and_detaches(L: Any) -> None:
    from depthsel.integrations.lightning import SelectivityCallback

    callback = SelectivityCallback(["net.dec2"], binner={"name": "uniform", "num_bins": 16},
                                   weight=0.1)
    assert isinstance(callback, L.Callback) and isinstance(callback, SelectivityCallback)
    module = _module_class(L)()
    trainer = _trainer(L, callback)
    trainer.fit(module, _loader())
    assert "depthsel/ds" in trainer.callback_metrics
    assert "depthsel/net.dec2/target_ds" in trainer.callback_metrics
    assert "depthsel/net.dec2/argmax_ds" in trainer.callback_metrics
    assert "depthsel/net.dec2/mean_ds" not in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["depthsel/ds"])
    assert not callback.attached
    assert_no_hooks(module)
    with pytest.raises(DepthselError, match="outside trainer.fit"):
        callback.loss(torch.ones(1, 1, 32, 32))


def test_exception_removes_hooks(L: Any) -> None:
    from depthsel.integrations.lightning import SelectivityCallback

    callback = SelectivityCallback(["net.dec2"], binner={"name": "uniform", "num_bins": 16})
    module = _module_class(L)(fail_at=1)
    with pytest.raises(RuntimeError, match="training blew up"):
        _trainer(L, callback).fit(module, _loader())
    assert not callback.attached
    assert_no_hooks(module)


def test_weight_is_checkpointed_and_bad_attr_is_reported(L: Any) -> None:
    from depthsel.integrations.lightning import SelectivityCallback

    callback = SelectivityCallback(["dec2"], binner="sid", model_attr="missing")
    callback.weight = 0.3
    assert callback.state_dict() == {"weight": 0.3}
    callback.load_state_dict({"weight": 0.05})
    assert callback.weight == 0.05
    with pytest.raises(DepthselError, match="model_attr='missing'"):
        callback.setup(None, _module_class(L)(), "fit")
