"""A small, readable trainer: AdamW, optional schedule, L1/Hu/SILog, and resumable runs.

Selectivity comes from :class:`~depthsel.SelectivityRegularizer`, so this
trainer is just one user of the public wrapper. Runs live in ``runs/<name>/``:

``config.json``
    the full configuration;
``checkpoint.json`` + ``checkpoint.<step>.safetensors``
    model, optimizer and RNG state plus the position in the data, written
    atomically every ``checkpoint_every`` steps and at the end (the JSON,
    written last, names the tensors file, so a crash between the two writes
    leaves the previous checkpoint in force);
``model.safetensors``
    the final weights;
``history.json``
    per-step loss and DS, per-epoch evaluation.

A run killed mid-epoch resumes from its last checkpoint and, on CPU, ends with
exactly the same weights and metrics as an uninterrupted run: the data order
of each epoch is a seeded permutation, and RNG states are restored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .checkpoints import (atomic_write_bytes, load_optimizer_tensors, optimizer_tensors, read_checkpoint_pair,
                          write_checkpoint_pair)
from .data import collate
from .errors import DepthselError, ResultFormatError
from .metrics import DepthMetrics
from .progress import get_console, progress_enabled
from .regularizer import SelectivityRegularizer
from .modelinfo import ModelInfo
from .stream import stream

__all__ = ["SelectivityConfig", "TrainConfig", "Trainer", "evaluate"]


def _loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from . import losses

    table = {"l1": losses.l1_loss, "hu": losses.hu_depth_loss, "silog": losses.silog_loss}
    if name not in table:
        raise DepthselError(f"unknown loss {name!r}; use one of {sorted(table)}")
    return table[name]


#: Files a training run owns in its directory (glob patterns).
RUN_FILES = ("config.json", "checkpoint.json", "checkpoint.*.safetensors", "model.safetensors",
             "history.json", "manifest.json")
#: Config keys a resumed run may change: they extend the run or move it, not redefine it.
RESUME_MAY_CHANGE = ("epochs", "max_steps", "device", "checkpoint_every", "out_dir", "name")


@dataclass
class SelectivityConfig:
    """Options of the selectivity term (see :class:`~depthsel.SelectivityRegularizer`).

    ``warmup_steps`` ramps the weight linearly from 0, so the depth head can
    settle before units are pushed towards their bins.
    """

    layers: list[str] = field(default_factory=list)
    binner: dict[str, Any] = field(default_factory=dict)  # required: the core names no binner
    objective: str = "assign"
    weight: float = 0.1
    fit_bins_to_units: bool = True
    preset: str = "default"
    warmup_steps: int = 0
    assignment: dict[str, list[int]] | None = None
    objective_options: dict[str, Any] = field(default_factory=dict)
    #: ``"batch"`` (the paper's) or ``"image"``: see :class:`~depthsel.SelectivityRegularizer`.
    pooling: str = "batch"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``).

    ``normalization`` is the model's input normalisation; the trainer fills it
    from the :class:`~depthsel.ModelInfo` so analyses of the saved weights can
    read it back (:func:`depthsel.trained.saved_normalization`).
    """

    name: str = "run"
    out_dir: str = "runs"
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    loss: str = "l1"
    seed: int = 0
    device: str = "cpu"
    #: Mixed precision: float16 (with gradient scaling) on CUDA, bfloat16 on CPU.
    amp: bool = False
    checkpoint_every: int = 50
    selectivity: SelectivityConfig | None = None
    eval_protocol: str = "default"
    normalization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """``out_dir/name``."""
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Rebuild from :meth:`to_dict` (validating unknown keys)."""
        d = dict(data)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ResultFormatError(f"unknown training config keys {sorted(unknown)}")
        sel = d.get("selectivity")
        if isinstance(sel, Mapping):
            d["selectivity"] = SelectivityConfig(**sel)
        return cls(**d)


@torch.no_grad()
def evaluate(model: nn.Module, info: ModelInfo, dataset: Dataset[Any], *, protocol: str = "default",
             batch_size: int = 8, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Depth metrics of ``model`` on ``dataset`` under a named protocol."""
    metrics = DepthMetrics(protocol)
    stream(model, dataset, {"metrics": metrics}, info=info, batch_size=batch_size, device=device,
           progress=False, description="evaluating")
    return metrics.compute()


class Trainer:
    """Trains a depth network, optionally with the selectivity regularizer.

    Parameters
    ----------
    model, info
        The network and its metadata (normalisation, extra inputs).
    train_set
        A depthsel dataset.
    config
        The run configuration.
    eval_set
        Optional held-out dataset evaluated after every epoch.
    epoch_callbacks
        Functions ``f(trainer, entry)`` called at the end of every epoch, after
        the evaluation; they may add JSON-serialisable fields to ``entry``,
        which is saved in the history (learning curves use this).
    adapters
        ``{layer: TokenGridAdapter(...)}`` for layers that output tokens (passed to
        the regularizer; not saved in ``config.json``).
    """

    def __init__(self, model: nn.Module, info: ModelInfo, train_set: Dataset[Any], config: TrainConfig,
                 eval_set: Dataset[Any] | None = None,
                 epoch_callbacks: Sequence[Callable[["Trainer", dict[str, Any]], None]] = (),
                 adapters: Mapping[str, Any] | None = None) -> None:
        self.model, self.info, self.cfg = model, info, config
        self.epoch_callbacks = list(epoch_callbacks)
        if config.normalization is None:
            config.normalization = info.resolved_normalization
        elif config.normalization != info.normalization:
            from dataclasses import replace

            # The config states it: train (and record) with that normalisation.
            self.info = info = replace(info, normalization=config.normalization)
        self.train_set, self.eval_set = train_set, eval_set
        self.device = torch.device(config.device)
        self.model.to(self.device)
        self.loss_fn = _loss_fn(config.loss)
        self.opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        n = len(train_set)  # type: ignore[arg-type]
        if n == 0:
            raise DepthselError("the training set is empty; check the dataset path and split")
        if n < config.batch_size:
            # Full batches only (drop_last), so a smaller set would give epochs without a
            # single step: refuse instead of training nothing (or looping forever).
            raise DepthselError(f"the training set has {n} samples, fewer than the batch size "
                                f"{config.batch_size}; give more samples or a smaller batch size")
        self.steps_per_epoch = n // config.batch_size
        total = self.steps_per_epoch * config.epochs
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        self.reg: SelectivityRegularizer | None = None
        sel = config.selectivity
        if sel is not None and sel.weight != 0:
            layers = sel.layers or list(info.suggested_layers)
            assignment = {k: torch.tensor(v) for k, v in (sel.assignment or {}).items()} or None
            self.reg = SelectivityRegularizer(model, layers, dict(sel.binner), objective=sel.objective,
                                              weight=sel.weight, fit_bins_to_units=sel.fit_bins_to_units,
                                              preset=sel.preset, assignment=assignment,
                                              objective_options=sel.objective_options, adapters=adapters,
                                              pooling=sel.pooling)
        self.step = 0
        self.history: dict[str, list[dict[str, Any]]] = {"steps": [], "epochs": []}

    # ------------------------------------------------------------- schedule
    def _lr_at(self, step: int) -> float:
        if self.cfg.schedule == "cosine":
            return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / max(1, self.total_steps)))
        if self.cfg.schedule == "step":
            return self.cfg.lr * (0.1 ** (step // max(1, self.total_steps // 3)))
        if self.cfg.schedule == "none":
            return self.cfg.lr
        raise DepthselError(f"unknown schedule {self.cfg.schedule!r}; use cosine, step or none")

    def _weight_at(self, step: int) -> float:
        sel = self.cfg.selectivity
        assert sel is not None
        if sel.warmup_steps <= 0:
            return sel.weight
        return sel.weight * min(1.0, step / sel.warmup_steps)

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        n = len(self.train_set)  # type: ignore[arg-type]
        return torch.randperm(n, generator=g).tolist()[: self.steps_per_epoch * self.cfg.batch_size]

    # ----------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> None:
        """Atomically save model, optimizer, RNG and position."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_meta = optimizer_tensors(self.opt)
        tensors.update(opt_t)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"step": self.step, "optimizer": opt_meta, "history": self.history,
                "reg_assignment": (self.reg.config()["assignment"] if self.reg else None)}
        write_checkpoint_pair(self.cfg.run_dir / "checkpoint.json", tensors, meta, tag=self.step)

    def load_checkpoint(self) -> bool:
        """Resume from ``run_dir`` if a complete checkpoint is there."""
        run = self.cfg.run_dir
        pair = read_checkpoint_pair(run / "checkpoint.json")
        if pair is None:
            return False
        tensors, meta = pair
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ResultFormatError(f"the checkpoint in {run} does not fit this model ({detail}); "
                                    "resume with the model options of the run, or start over") from exc
        load_optimizer_tensors(self.opt, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])
        self.history = meta.get("history", {"steps": [], "epochs": []})
        return True

    # ----------------------------------------------------------------- loop
    def fit(self, resume: bool = True, *, overwrite: bool = True) -> dict[str, Any]:
        """Train to ``total_steps`` holding the run directory's lock; returns the history.

        Parameters
        ----------
        resume
            Continue from the run directory's checkpoint when there is one. Its
            stored configuration must equal this one (except :data:`RESUME_MAY_CHANGE`);
            a mismatch raises :class:`~depthsel.errors.ConfigError` naming the keys,
            before anything is written.
        overwrite
            When not resuming, allow replacing a run that is already there; ``False``
            raises :class:`~depthsel.errors.RunDirError` instead (the CLI without ``--force``).
        """
        from .rundir import open_run

        with open_run(self.cfg.run_dir) as rd:
            return self._fit(rd, resume, overwrite)

    def _fit(self, rd: Any, resume: bool, overwrite: bool) -> dict[str, Any]:
        run = rd.path
        # Validates the stored config against this one before config.json is touched.
        resuming = rd.begin(self.cfg.to_dict(), resume=resume, overwrite=overwrite, owned=RUN_FILES,
                            may_change=RESUME_MAY_CHANGE, what="a training run",
                            normalize=lambda stored: TrainConfig.from_dict(stored).to_dict())
        if not (resuming and self.load_checkpoint()):
            torch.manual_seed(self.cfg.seed)
        use_amp = bool(self.cfg.amp)
        # CUDA: float16 with a gradient scaler; CPU: bfloat16, which needs no scaler.
        scaler = torch.amp.GradScaler("cuda") if use_amp and self.device.type == "cuda" else None
        self.model.train()
        progress = None
        task = None
        if progress_enabled(None):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(TextColumn(f"[bold]{self.cfg.name}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.3f} target DS {task.fields[ds]:.3f}"),
                                TimeRemainingColumn(), console=get_console())
            progress.start()
            task = progress.add_task("train", total=self.total_steps, completed=self.step, loss=float("nan"),
                                     ds=float("nan"))
        try:
            while self.step < self.total_steps:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                order = self._epoch_order(epoch)[offset * self.cfg.batch_size:]
                # Duck-typed: a dataset with set_epoch reseeds its random transforms,
                # so augmentation differs between epochs (and a resumed run matches).
                set_epoch = getattr(self.train_set, "set_epoch", None)
                if callable(set_epoch):
                    set_epoch(epoch)
                loader = DataLoader(Subset(self.train_set, order), batch_size=self.cfg.batch_size,
                                    shuffle=False, collate_fn=collate, drop_last=True)
                for batch in loader:
                    self._train_step(batch, scaler, use_amp)
                    if progress is not None and task is not None:
                        last = self.history["steps"][-1]
                        progress.update(task, completed=self.step, loss=last["loss"],
                                        ds=last.get("target_ds", float("nan")))
                    at_boundary = self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps
                    if at_boundary:
                        self._end_epoch()
                    # Saved after the epoch's evaluation, so a resumed run never skips one.
                    if at_boundary or self.step % self.cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
        finally:
            if progress is not None:
                progress.stop()
        from .checkpoints import save_state_dict

        save_state_dict(self.model.state_dict(), run / "model.safetensors",
                        metadata={"config": json.dumps(self.cfg.to_dict(), default=str),
                                  "normalization": str(self.cfg.normalization)})
        atomic_write_bytes(run / "history.json", json.dumps(self.history, indent=1).encode())
        rd.write_manifest("train", self.cfg.to_dict(), [p.name for p in run.iterdir() if p.is_file()
                                                         and not p.name.startswith(".")])
        return self.history

    def _train_step(self, batch: dict[str, Any], scaler: Any, use_amp: bool) -> None:
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        lr = self._lr_at(self.step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        depth, valid = batch["depth"], batch["valid"]
        record: dict[str, Any] = {"step": self.step + 1, "lr": lr}
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
            if self.reg is not None:
                self.reg.weight = self._weight_at(self.step)
                with self.reg.attach():
                    pred = self.info.predict(self.model, batch)
                    task_loss = self.loss_fn(pred.float(), depth, valid)
                    reg_loss = self.reg.loss(depth, valid)
                stats = self.reg.last_stats()
                for key in ("target_ds", "argmax_ds"):
                    values = [v[key] for k, v in stats.items() if not k.startswith("_") and v[key] == v[key]]
                    record[key] = sum(values) / len(values) if values else float("nan")
                loss = task_loss + reg_loss
            else:
                pred = self.info.predict(self.model, batch)
                task_loss = self.loss_fn(pred.float(), depth, valid)
                loss = task_loss
        self.opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(self.opt)
            scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.step += 1
        record.update(loss=float(loss.detach()), task_loss=float(task_loss.detach()))
        self.history["steps"].append(record)

    def _end_epoch(self) -> None:
        epoch = (self.step - 1) // self.steps_per_epoch
        entry: dict[str, Any] = {"epoch": epoch + 1, "step": self.step}
        if self.eval_set is not None:
            entry["eval"] = evaluate(self.model, self.info, self.eval_set, protocol=self.cfg.eval_protocol,
                                     batch_size=self.cfg.batch_size, device=self.device)
        for callback in self.epoch_callbacks:
            callback(self, entry)
        if not self.history["epochs"] or self.history["epochs"][-1].get("step") != self.step:
            self.history["epochs"].append(entry)
