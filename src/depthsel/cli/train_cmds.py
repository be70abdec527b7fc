"""``depthsel demo`` and ``depthsel train``: the main job from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DepthselError
from .common import (
    build_dataset,
    build_model,
    parse_dataspec,
    parse_model_config,
    parse_settings,
    parse_tokens,
    split_layers,
)
from .errors import CliError, handle_errors
from .output import FormatOption, OutputFormat, emit, emit_json, message

__all__ = ["register"]


def _print_table(summary: dict[str, Any], fmt: OutputFormat) -> None:
    if fmt == OutputFormat.json:
        emit_json({k: summary[k] for k in ("table", "binner", "units", "seconds") if k in summary}
                  | {"run_dir": summary.get("run_dir")})
        return
    rows = [{"metric": r["metric"], "baseline": _fmt(r.get("baseline")),
             "interpretable": _fmt(r.get("interpretable"))} for r in summary["table"]]
    emit(fmt, rows, ["metric", "baseline", "interpretable"], title="baseline vs interpretable (test split)")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def register(app: typer.Typer) -> None:
    """Add ``demo`` and ``train`` to the application."""

    @app.command("demo")
    @handle_errors
    def demo(
        data: Annotated[str, typer.Option("--data", "-d", help="DATASPEC: 'synthetic' (default) or folder:PATH.")] = "synthetic",
        out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the run directory.")] = Path("runs"),
        name: Annotated[str, typer.Option("--name", help="Run directory name under --out.")] = "demo",
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per model.")] = 40,
        size: Annotated[str, typer.Option("--size", help="Training resolution HxW (multiples of 32 for FastDepth).")] = "64x96",
        width: Annotated[float, typer.Option("--width", help="FastDepth width multiplier.")] = 0.5,
        weight: Annotated[float, typer.Option("--weight", help="Selectivity weight lambda of the interpretable twin.")] = 1.0,
        lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate of both models.")] = 1e-2,
        liveness: Annotated[float, typer.Option("--liveness", help="Weight of the hinge that keeps units alive; 0 is the paper's Eq. 5.")] = 1.0,
        train_frames: Annotated[str | None, typer.Option("--train-frames", help="Folder data: frames for training, e.g. 0:80.")] = None,
        test_frames: Annotated[str | None, typer.Option("--test-frames", help="Folder data: held-out frames, e.g. 80:100.")] = None,
        binning: Annotated[str, typer.Option("--binning", help="sid-fit (SID over the data's range), quantile, or sid (0.75-10 m).")] = "sid-fit",
        seed: Annotated[int, typer.Option("--seed", help="Seed of both models and the data order.")] = 0,
        train_samples: Annotated[int, typer.Option("--train-samples", min=1, help="Synthetic data: training images.")] = 192,
        test_samples: Annotated[int, typer.Option("--test-samples", min=1, help="Synthetic data: held-out images.")] = 48,
        fmt: FormatOption = OutputFormat.table,
    ) -> None:
        """Train a narrow FastDepth baseline and its interpretable twin, dissect both, compare."""
        from ..experiment import ExperimentConfig, run_experiment
        from .common import parse_size

        spec = parse_dataspec(data)
        hw = parse_size(size)
        assert hw is not None
        if spec.root is None:
            if spec.name != "synthetic":
                raise CliError(f"--data {data!r}: give a path, e.g. folder:../shared/data/nyu2_mini_test")
            train_cfg: dict[str, Any] = {"split": "train", "num_samples": train_samples}
            test_cfg: dict[str, Any] = {"split": "test", "num_samples": test_samples}
        else:
            if not Path(spec.root).exists():
                raise CliError(f"dataset path {spec.root!r} does not exist")
            train_cfg = {"root": spec.root}
            test_cfg = {"root": spec.root}
            if train_frames or test_frames:
                if not (train_frames and test_frames):
                    raise CliError("give both --train-frames and --test-frames, or neither")
                train_cfg["frames"], test_cfg["frames"] = train_frames, test_frames
            else:
                train_cfg["split"], test_cfg["split"] = "train", "test"
        cfg = ExperimentConfig(name=name, out_dir=str(out), data=spec.name, train_data=train_cfg,
                               test_data=test_cfg, size=hw, model_config={"width": width}, weight=weight,
                               epochs=epochs, binning=binning, seed=seed, lr=lr,
                               objective_options={"liveness": liveness})
        summary = run_experiment(cfg)
        summary["run_dir"] = str(cfg.run_dir)
        _print_table(summary, fmt)
        if fmt == OutputFormat.table:
            message(f"plots and results in {cfg.run_dir}/ ({summary['seconds']} s); "
                    f"`depthsel report {cfg.run_dir}` makes an HTML report")

    @app.command("train")
    @handle_errors
    def train(
        model: Annotated[str, typer.Option("--model", "-m", help="Registered model name, or "
                         "package.module:Factory or path/to/file.py:Factory.")],
        data: Annotated[str, typer.Option("--data", "-d", help="DATASPEC, e.g. synthetic or folder:PATH.")],
        name: Annotated[str, typer.Option("--name", help="Run name: weights and history go to OUT/NAME.")] = "run",
        out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the run directory.")] = Path("runs"),
        model_config: Annotated[str | None, typer.Option("--model-config", help="Model options as JSON.")] = None,
        width: Annotated[float | None, typer.Option("--width", help="Model width multiplier.")] = None,
        data_set: Annotated[list[str] | None, typer.Option("--data-set", metavar="KEY=VALUE", help="Dataset option key=value; repeatable.")] = None,
        layers: Annotated[list[str] | None, typer.Option("--layers", "-l", metavar="LAYER", help="Layers for the selectivity term (default: suggested).")] = None,
        weight: Annotated[float, typer.Option("--weight", help="Selectivity weight lambda; 0 trains a plain baseline.")] = 0.1,
        objective: Annotated[str, typer.Option("--objective", help="assign (Eq. 5) or regularize (Eq. 4).")] = "assign",
        liveness: Annotated[float, typer.Option("--liveness", help="Weight of the hinge that keeps units alive (0: paper's objective).")] = 0.0,
        binner: Annotated[str, typer.Option("--binner", help="Binner config as JSON, e.g. {\"name\": \"sid\", \"num_bins\": 64}.")] = '{"name": "sid", "num_bins": 64}',
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs.")] = 10,
        max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps.")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")] = 8,
        lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
        loss: Annotated[str, typer.Option("--loss", help="l1, hu or silog.")] = "l1",
        schedule: Annotated[str, typer.Option("--schedule", help="cosine, step or none.")] = "cosine",
        checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 50,
        resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume from OUT/NAME's checkpoint if present.")] = True,
        seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
        device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
        amp: Annotated[bool, typer.Option("--amp", help="Mixed precision: float16 on CUDA, bfloat16 on CPU.")] = False,
        tokens: Annotated[list[str] | None, typer.Option("--tokens", metavar="LAYER[:grid=HxW][:skip=N]",
                          help="Token layer [B, N, C] read as a grid, e.g. blocks.11:grid=14x14:skip=1; "
                          "repeatable.")] = None,
        normalization: Annotated[str | None, typer.Option("--normalization", metavar="imagenet|unit",
                                 help="Input normalisation of the model (default: the model's own); "
                                 "recorded with the weights.")] = None,
        fmt: FormatOption = OutputFormat.table,
    ) -> None:
        """Train a model with (or without) the selectivity term; resumable."""
        from ..training import SelectivityConfig, TrainConfig, Trainer

        try:
            binner_cfg = json.loads(binner)
        except json.JSONDecodeError as exc:
            raise CliError(f"--binner is not valid JSON ({exc}); e.g. '{{\"name\": \"sid\", \"num_bins\": 64}}'") from exc
        built = build_model(model, config=parse_model_config(model_config, width), device=device,
                            normalization=normalization)
        dataset = build_dataset(data, **parse_settings(data_set, "--data-set"))
        sel = SelectivityConfig(layers=split_layers(layers), binner=binner_cfg, objective=objective,
                                weight=weight, objective_options={"liveness": liveness}) if weight else None
        cfg = TrainConfig(name=name, out_dir=str(out), epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                          lr=lr, loss=loss, schedule=schedule, seed=seed, device=device, amp=amp,
                          checkpoint_every=checkpoint_every, selectivity=sel)
        try:
            history = Trainer(built.model, built.info, dataset, cfg, adapters=parse_tokens(tokens)).fit(resume=resume)
        except (KeyError, ValueError) as exc:
            raise DepthselError(f"training failed on bad configuration: {exc}") from exc
        last = history["steps"][-1] if history["steps"] else {}
        result = {"run_dir": str(cfg.run_dir), "steps": last.get("step", 0), "loss": last.get("loss"),
                  "target_ds": last.get("target_ds"), "argmax_ds": last.get("argmax_ds")}
        if fmt == OutputFormat.json:
            emit_json(result)
        else:
            emit(fmt, [result], list(result), title="training finished")
