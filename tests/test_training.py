"""Trainer: deterministic on CPU, resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from depthsel import ModelInfo
from depthsel.testing import ToyDepthDataset, ToyDepthNet
from depthsel.training import SelectivityConfig, TrainConfig, Trainer

INFO = ModelInfo(input_size=(32, 32), normalization="unit", suggested_layers=("dec3",))


def ToySet(n: int) -> ToyDepthDataset:  # noqa: N802 - reads as the dataset it builds
    return ToyDepthDataset(n, seed=7)


class Killed(RuntimeError):
    pass


def config(tmp: Path, name: str, **kw) -> TrainConfig:
    sel = SelectivityConfig(layers=["dec3"], binner={"name": "uniform", "num_bins": 4, "min_depth": 0.5,
                                                      "max_depth": 10.0}, weight=0.5)
    base = dict(name=name, out_dir=str(tmp), epochs=3, batch_size=4, lr=3e-3, checkpoint_every=4,
                selectivity=sel, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_deterministic_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m1 = ToyDepthNet(width=4)
    h1 = Trainer(m1, INFO, ToySet(24), config(tmp_path, "full"), eval_set=ToySet(8)).fit(resume=False)
    torch.manual_seed(0)
    m2 = ToyDepthNet(width=4)
    Trainer(m2, INFO, ToySet(24), config(tmp_path, "again"), eval_set=ToySet(8)).fit(resume=False)
    assert torch.equal(weights(m1), weights(m2))

    # Interrupted run: dies at step 10 (last checkpoint at step 8), then resumes in a fresh process state.
    torch.manual_seed(0)
    m3 = ToyDepthNet(width=4)
    t3 = Trainer(m3, INFO, ToySet(24), config(tmp_path, "killed"), eval_set=ToySet(8))
    original = t3._train_step

    def dying(*args, **kwargs):
        if t3.step == 10:
            raise Killed("simulated crash")
        return original(*args, **kwargs)

    t3._train_step = dying  # type: ignore[method-assign]
    with pytest.raises(Killed):
        t3.fit(resume=False)
    assert (tmp_path / "killed" / "checkpoint.json").is_file()
    torch.manual_seed(123)  # a different RNG state, which the checkpoint must override
    m4 = ToyDepthNet(width=4)
    h4 = Trainer(m4, INFO, ToySet(24), config(tmp_path, "killed"), eval_set=ToySet(8)).fit(resume=True)
    assert torch.equal(weights(m4), weights(m1))
    assert h4["epochs"][-1]["eval"] == h1["epochs"][-1]["eval"]
    assert [s["loss"] for s in h4["steps"]] == [s["loss"] for s in h1["steps"]]
    assert (tmp_path / "killed" / "model.safetensors").is_file()


def test_selectivity_term_is_logged_and_baseline_has_none(tmp_path: Path) -> None:
    torch.manual_seed(0)
    h = Trainer(ToyDepthNet(width=4), INFO, ToySet(24), config(tmp_path, "sel", epochs=1)).fit(resume=False)
    assert all("target_ds" in s and "argmax_ds" in s for s in h["steps"])
    h0 = Trainer(ToyDepthNet(width=4), INFO, ToySet(24), config(tmp_path, "base", epochs=1, selectivity=None)).fit()
    assert all("target_ds" not in s for s in h0["steps"])


def test_config_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = config(tmp_path, "x")
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    from depthsel.errors import DepthselError, ResultFormatError

    with pytest.raises(ResultFormatError):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(DepthselError, match="loss"):
        Trainer(ToyDepthNet(width=4), INFO, ToySet(24), config(tmp_path, "y", loss="l3"))


def test_a_set_smaller_than_one_batch_is_refused_not_trained_forever(tmp_path: Path) -> None:
    """Full batches only: 3 samples with batch size 4 would give epochs without a step."""
    from depthsel.errors import DepthselError

    with pytest.raises(DepthselError, match="fewer than the batch size 4"):
        Trainer(ToyDepthNet(width=4), INFO, ToySet(3), config(tmp_path, "small"))
    # Exactly one batch trains: one step per epoch.
    trainer = Trainer(ToyDepthNet(width=4), INFO, ToySet(4), config(tmp_path, "one", epochs=2))
    assert trainer.steps_per_epoch == 1 and trainer.total_steps == 2


def test_a_run_written_before_an_option_existed_resumes_with_its_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``selectivity.pooling`` was added in round 6; runs saved without it resume as "batch"."""
    from dataclasses import asdict

    from depthsel.errors import ConfigError

    def without_pooling(self: TrainConfig) -> dict:
        d = asdict(self)
        d["selectivity"].pop("pooling")  # what the older code wrote
        return d

    torch.manual_seed(0)
    with monkeypatch.context() as m:
        m.setattr(TrainConfig, "to_dict", without_pooling)
        Trainer(ToyDepthNet(width=4), INFO, ToySet(24), config(tmp_path, "old", epochs=1)).fit(resume=False)
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    assert "pooling" not in saved["selectivity"]
    h = Trainer(ToyDepthNet(width=4), INFO, ToySet(24), config(tmp_path, "old", epochs=2)).fit(resume=True)
    assert h["steps"][-1]["step"] == 12  # continued: 2 epochs of 6 steps
    changed = config(tmp_path, "old", epochs=3)
    assert changed.selectivity is not None
    changed.selectivity.pooling = "image"  # a real change is still refused, and named
    with pytest.raises(ConfigError, match="selectivity.pooling"):
        Trainer(ToyDepthNet(width=4), INFO, ToySet(24), changed).fit(resume=True)
