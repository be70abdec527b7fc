"""Interrupted work: atomic writes, and dissection/training killed with SIGKILL then resumed.

A killed run must leave every file either in its previous complete state or in
its new complete state, and a resumed run must end bit-identical
(``torch.equal``) to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import depthsel.checkpoints as checkpoints
import depthsel.checkpoints as ckpt_writer
import depthsel.responses as dissect
from depthsel.checkpoints import atomic_write, atomic_write_bytes, load_state_dict, save_state_dict
from depthsel.errors import ResultFormatError
from depthsel.results import Result, load_result

ROOT = Path(__file__).resolve().parents[2]

# Shared by the killed subprocess and this process, so both build the same data and model.
COMMON = textwrap.dedent('''
    import time
    import torch
    from depthsel.binning import EdgesBinner
    from depthsel.testing import ToyDepthNet, toy_batch

    torch.set_num_threads(1)

    class ToyImages(torch.utils.data.Dataset):
        """Deterministic toy RGB-D items; ``delay`` seconds per item make a run slow to kill."""

        def __init__(self, n=12, delay=0.0):
            self.image, self.depth = toy_batch(n, (24, 24), seed=3)
            self.depth[:, :, :, :3] = 0.0          # some invalid pixels
            if n > 5:
                self.depth[5] = 0.0                # and one all-invalid image
            self.delay = delay

        def __len__(self):
            return self.image.shape[0]

        def __getitem__(self, i):
            if self.delay:
                time.sleep(self.delay)
            d = self.depth[i]
            return {"image": self.image[i], "depth": d, "valid": d > 0, "name": f"toy/{i}"}

        def fingerprint(self):
            return "reliability-toy-images-v1"

    def make_model():
        torch.manual_seed(0)
        return ToyDepthNet(width=4)

    BINNER = EdgesBinner([0.5, 1.5, 3.0, 5.0, 10.0])
    LAYERS = ["dec2", "dec3"]
''')
NS: dict[str, Any] = {}
exec(COMMON, NS)  # noqa: S102 - test fixture code, the same text the child runs


def run_child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DEPTHSEL_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", COMMON + textwrap.dedent(code)], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}) before the kill point:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("child made no progress in time")


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proc.communicate()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not there yet (never half-written: the test would fail on that below)


def assert_same_accumulators(a: Any, b: Any) -> None:
    assert list(a.accumulators) == list(b.accumulators)
    for name in a.accumulators:
        x, y = a.accumulators[name], b.accumulators[name]
        assert torch.equal(x.sums, y.sums), name
        assert torch.equal(x.abs_sums, y.abs_sums), name
        assert torch.equal(x.counts, y.counts), name
        assert (x.num_images, x.skipped_batches) == (y.num_images, y.skipped_batches), name


# ------------------------------------------------------------- atomic write
def test_failure_mid_write_leaves_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old content")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"new partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left


def test_checkpoint_write_failure_keeps_old_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_state_dict({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    import safetensors.torch as st

    def broken_save(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"\x00" * 10)
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(st, "save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_state_dict(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_sigkill_during_atomic_write_leaves_old_or_new(tmp_path: Path) -> None:
    target, started = tmp_path / "big.bin", tmp_path / "started"
    target.write_bytes(b"old")
    proc = run_child(f'''
        import time
        from pathlib import Path
        from depthsel.checkpoints import atomic_write

        def slow(tmp):
            with open(tmp, "wb") as fh:
                for i in range(1000):
                    fh.write(b"x" * 1000)
                    fh.flush()
                    if i == 5:
                        Path({str(started)!r}).touch()
                    time.sleep(0.01)

        atomic_write({str(target)!r}, slow)
    ''')
    wait_for(started.exists, proc)
    kill(proc)
    assert target.read_bytes() == b"old"
    # SIGKILL gives no chance to clean up: the temp file may stay, hidden and never read.
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("big.bin", "started")]
    assert all(n.startswith(".big.bin.") and n.endswith(".tmp") for n in leftovers), leftovers


def test_result_save_failure_leaves_nothing_or_detectable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import depthsel.results as results

    real = results.atomic_write_bytes

    def fail_on_json(path: Any, data: bytes) -> Path:
        if Path(path).name == "result.json":
            raise OSError("killed before the JSON")
        return real(path, data)

    res = Result(tensors={"x": torch.ones(2, 3)}, data={"v": 1})
    monkeypatch.setattr(results, "atomic_write_bytes", fail_on_json)
    with pytest.raises(OSError):
        res.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()  # a complete result or nothing
    monkeypatch.setattr(results, "atomic_write_bytes", real)
    res.save(tmp_path / "old")
    monkeypatch.setattr(results, "atomic_write_bytes", fail_on_json)
    with pytest.raises(OSError):
        Result(tensors={"x": torch.zeros(2, 3)}, data={"v": 2}).save(tmp_path / "old")
    # Old JSON + new tensors of the same shape: detected, never silently mixed.
    with pytest.raises(ResultFormatError, match="different saves"):
        load_result(tmp_path / "old")


# -------------------------------------------------------------- dissection
def test_dissection_killed_midway_resumes_identically(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt" / "dissect"
    proc = run_child(f'''
        from depthsel.responses import collect_responses
        collect_responses(make_model(), ToyImages(delay=0.25), LAYERS, BINNER, batch_size=2,
                          checkpoint={str(ckpt)!r}, checkpoint_every=1, progress=False)
        print("FINISHED")
    ''')
    state_json = ckpt.parent / "dissect.ckpt.json"

    def progressed() -> bool:
        meta = read_json(state_json)
        return meta is not None and meta["images_done"] >= 4

    wait_for(progressed, proc)
    kill(proc)
    meta = read_json(state_json)
    assert meta is not None and 4 <= meta["images_done"] < 12, meta
    # Exactly the tensors file the JSON names is on disk (older ones are removed).
    assert (ckpt.parent / meta["tensors"]).is_file()

    model, data = NS["make_model"](), NS["ToyImages"]()
    resumed = dissect.collect_responses(model, data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                                        checkpoint=ckpt, checkpoint_every=1, progress=False)
    assert resumed.resumed_from == meta["images_done"]
    straight = dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"],
                                         batch_size=2, progress=False)
    assert resumed.resumed_from > 0 and straight.resumed_from == 0
    assert_same_accumulators(resumed, straight)
    assert resumed.accumulators["dec3"].skipped_batches == 0  # image 5 shares a batch with image 4
    assert float(straight.accumulators["dec3"].counts.sum()) > 0


def test_crash_between_checkpoint_files_never_double_counts(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the tensors file and before the JSON of checkpoint 3 (deterministic)."""
    ckpt = tmp_path / "dissect"
    real = ckpt_writer.atomic_write_bytes
    calls = {"n": 0}

    def crash_third_json(path: Any, data: bytes) -> Path:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(ckpt_writer, "atomic_write_bytes", crash_third_json)
    data = NS["ToyImages"]()
    with pytest.raises(KeyboardInterrupt):
        dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                                  checkpoint=ckpt, checkpoint_every=1, progress=False)
    monkeypatch.setattr(ckpt_writer, "atomic_write_bytes", real)
    assert json.loads((tmp_path / "dissect.ckpt.json").read_text())["images_done"] == 4
    resumed = dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                                        checkpoint=ckpt, checkpoint_every=1, progress=False)
    straight = dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"],
                                         batch_size=2, progress=False)
    assert resumed.resumed_from == 4
    assert_same_accumulators(resumed, straight)


def test_corrupt_dissection_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "dissect"
    data = NS["ToyImages"](n=4)
    dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                              checkpoint=ckpt, progress=False)
    for bad in ("{", "[]", json.dumps({"layers": {}, "images_done": "x"})):
        (tmp_path / "dissect.ckpt.json").write_text(bad)
        with pytest.raises(ResultFormatError, match="delete it to start over"):
            dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                                      checkpoint=ckpt, progress=False)
    # A checkpoint of another dataset is not silently reused.
    ckpt2 = tmp_path / "other"
    dissect.collect_responses(NS["make_model"](), data, NS["LAYERS"], NS["BINNER"], batch_size=2,
                              checkpoint=ckpt2, progress=False)
    with pytest.raises(ResultFormatError, match="another dataset or layer set"):
        dissect.collect_responses(NS["make_model"](), data, ["dec3"], NS["BINNER"], batch_size=2,
                                  checkpoint=ckpt2, progress=False)


# ---------------------------------------------------------------- training

TRAIN = '''
from depthsel.training import SelectivityConfig, TrainConfig, Trainer
from depthsel.modelinfo import ModelInfo

INFO = ModelInfo(input_size=(24, 24), normalization="unit", suggested_layers=("dec3",))

def make_trainer(out_dir, name, delay=0.0):
    cfg = TrainConfig(name=name, out_dir=str(out_dir), epochs=2, batch_size=2, lr=1e-3,
                      checkpoint_every=1, seed=0, loss="l1",
                      selectivity=SelectivityConfig(layers=["dec3"], weight=0.1,
                                                    binner={"name": "uniform", "num_bins": 4,
                                                            "min_depth": 0.5, "max_depth": 10.0}))
    return Trainer(make_model(), INFO, ToyImages(delay=delay), cfg)
'''


def test_training_killed_midway_resumes_identically(tmp_path: Path) -> None:
    proc = run_child(TRAIN + f'''
make_trainer({str(tmp_path)!r}, "killed", delay=0.12).fit()
''')
    ckpt_json = tmp_path / "killed" / "checkpoint.json"

    def progressed() -> bool:
        meta = read_json(ckpt_json)
        return meta is not None and meta["step"] >= 3

    wait_for(progressed, proc, timeout=120)
    kill(proc)
    meta = read_json(ckpt_json)
    assert meta is not None and 3 <= meta["step"] < 12, meta
    ns: dict[str, Any] = dict(NS)
    exec(TRAIN, ns)  # noqa: S102
    ns["make_trainer"](tmp_path, "killed").fit(resume=True)
    ns["make_trainer"](tmp_path, "straight").fit(resume=False)
    a = load_state_dict(tmp_path / "killed" / "model.safetensors")
    b = load_state_dict(tmp_path / "straight" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((tmp_path / "killed" / "history.json").read_text())
    hb = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [s["loss"] for s in ha["steps"]] == [s["loss"] for s in hb["steps"]]


def test_training_crash_between_checkpoint_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after checkpoint.safetensors of step 4 and before its checkpoint.json."""
    import depthsel.checkpoints as training  # the one checkpoint-pair writer lives there

    ns: dict[str, Any] = dict(NS)
    exec(TRAIN, ns)  # noqa: S102
    real = training.atomic_write_bytes

    def crash(path: Any, data: bytes) -> Path:
        if Path(path).name == "checkpoint.json" and json.loads(data)["step"] == 4:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(training, "atomic_write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        ns["make_trainer"](tmp_path, "crashed").fit()
    monkeypatch.setattr(training, "atomic_write_bytes", real)
    ns["make_trainer"](tmp_path, "crashed").fit(resume=True)
    ns["make_trainer"](tmp_path, "straight").fit(resume=False)
    a = load_state_dict(tmp_path / "crashed" / "model.safetensors")
    b = load_state_dict(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_module_exports_atomic_helpers() -> None:
    assert checkpoints.atomic_write is atomic_write
