"""``depthsel demo``, ``sweep``, ``combine`` and ``train``: the experiments from the command line.

Registered through the ``register_commands`` hook (see this package's
``__init__``), exactly as a third party's commands are; the core CLI does not
know them. The plugin manager wraps each in the CLI's one-line error handling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from depthsel.cli.common import (
    build_dataset,
    build_model,
    parse_dataspec,
    parse_model_config,
    parse_settings,
    parse_tokens,
    split_layers,
)
from depthsel.cli.errors import CliError
from depthsel.cli.output import FormatOption, OutputFormat, emit, emit_json, message
from depthsel.errors import DepthselError
from depthsel.regularizer import POOLINGS

__all__ = ["demo", "sweep", "combine", "train"]


def _print_table(summary: dict[str, Any], fmt: OutputFormat, title: str) -> None:
    from depthsel.stats import format_comparison_table

    if fmt == OutputFormat.json:
        keys = ("kind", "table", "seeds", "num_seeds", "arms", "per_seed", "binner", "units", "seconds", "plots")
        emit_json({k: summary[k] for k in keys if k in summary} | {"run_dir": summary.get("run_dir")})
        return
    rows = format_comparison_table(summary)
    n = summary["num_seeds"]
    seeds = f"{n} seed{'s' if n != 1 else ''} {summary['seeds']}"
    spread = "mean ± 95% CI half-width" if n > 1 else "ONE seed: no spread, not a result to quote"
    emit(fmt, rows, list(rows[0]) if rows else ["metric"], title=f"{title}: {seeds}; {spread}")


def _data_configs(data: str, train_frames: str | None, test_frames: str | None, train_samples: int,
                  test_samples: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Registry name and the two splits' dataset options of a demo/sweep DATASPEC."""
    spec = parse_dataspec(data)
    if spec.root is None:
        if spec.name != "synthetic":
            raise CliError(f"--data {data!r}: give a path, e.g. folder:../shared/data/nyu2_mini_test")
        return spec.name, {"split": "train", "num_samples": train_samples}, {"split": "test", "num_samples": test_samples}
    if not Path(spec.root).exists():
        raise CliError(f"dataset path {spec.root!r} does not exist")
    train_cfg: dict[str, Any] = {"root": spec.root}
    test_cfg: dict[str, Any] = {"root": spec.root}
    if train_frames or test_frames:
        if not (train_frames and test_frames):
            raise CliError("give both --train-frames and --test-frames, or neither")
        train_cfg["frames"], test_cfg["frames"] = train_frames, test_frames
    else:
        train_cfg["split"], test_cfg["split"] = "train", "test"
    return spec.name, train_cfg, test_cfg


def _experiment_config(*, name: str, out: Path, data: str, train_frames: str | None, test_frames: str | None,
                       train_samples: int, test_samples: int, size: str, width: float, lr: float,
                       liveness: float, seeds: str, **options: Any) -> Any:
    """The :class:`~depthsel_plugins.experiments.experiment.ExperimentConfig` of `demo` and `sweep` from their shared options."""
    from .experiment import ExperimentConfig, parse_seeds
    from depthsel.cli.common import parse_size

    _check_numbers(lr=lr, width=width, liveness=liveness)
    hw = parse_size(size)
    assert hw is not None
    name_, train_cfg, test_cfg = _data_configs(data, train_frames, test_frames, train_samples, test_samples)
    from .measure import ASSIGNMENTS

    _check_choice("--assignment", options.get("assignment", "paper"), ASSIGNMENTS)
    _check_choice("--pooling", options.get("pooling", "batch"), POOLINGS)
    if options.get("layers"):
        options["layers"] = split_layers(options["layers"])
    else:
        options.pop("layers", None)  # the config's default layer
    return ExperimentConfig(name=name, out_dir=str(out), data=name_, train_data=train_cfg, test_data=test_cfg,
                            size=hw, model_config={"width": width}, seeds=parse_seeds(seeds), lr=lr,
                            objective_options={"liveness": liveness}, **options)


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    """Refuse a value outside ``choices`` in one line naming the flag, before any work."""
    if value not in choices:
        raise CliError(f"{flag} {value!r}: use one of {', '.join(choices)}")


def _check_numbers(allow_zero: tuple[str, ...] = ("liveness",), **values: float) -> None:
    """Refuse NaN, infinite or negative option values (zero only where it means "off")."""
    for name, v in values.items():
        if not math.isfinite(v) or v < 0 or (v == 0 and name not in allow_zero):
            bound = ">= 0" if name in allow_zero else "> 0"
            raise CliError(f"--{name} {v!r}: give a finite number {bound}")


SeedsOption = Annotated[str, typer.Option(
    "--seeds", help="Independent runs: a count (3 = seeds 0,1,2) or a list (0,4,7). Every number is reported "
                    "as mean ± 95% CI over them.")]


def _check_train_options(*, name: str, lr: float, weight: float, liveness: float, objective: str,
                         pooling: str = "batch") -> None:
    """Refuse values that would train garbage, or write outside --out, before any work."""
    import math

    from depthsel.registry import get_plugin_manager

    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CliError(f"--name {name!r} must be a plain directory name (no '/', not '.' or '..')")
    if not (math.isfinite(lr) and lr > 0):
        raise CliError(f"--lr must be a finite number > 0, got {lr}")
    for label, value in (("--weight", weight), ("--liveness", liveness)):
        if not (math.isfinite(value) and value >= 0):
            raise CliError(f"{label} must be a finite number >= 0, got {value}")
    _check_choice("--pooling", pooling, POOLINGS)
    get_plugin_manager().entry("objectives", objective)


def _binner_config(text: str) -> dict[str, Any]:
    """The ``--binner`` JSON object, refused in one line when it is not one."""
    from depthsel.cli.common import _check_depth

    _check_depth(text, "--binner")
    example = "e.g. '{\"name\": \"sid\", \"num_bins\": 64}'"
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--binner is not valid JSON ({exc}); {example}") from exc
    if not isinstance(cfg, dict):
        raise CliError(f"--binner must be a JSON object, {example}")
    return cfg


def _fit(make_trainer: Callable[[], Any], resume: bool, force: bool) -> dict[str, Any]:
    """Build and run the trainer; return what `train` prints (run directory, the last step's numbers)."""
    try:
        trainer = make_trainer()
        history = trainer.fit(resume=resume, overwrite=force)
    except DepthselError:
        raise
    except (KeyError, ValueError) as exc:
        raise DepthselError(f"training failed on bad configuration: {exc}") from exc
    last = history["steps"][-1] if history["steps"] else {}
    return {"run_dir": str(trainer.cfg.run_dir), "steps": last.get("step", 0), "loss": last.get("loss"),
            "target_ds": last.get("target_ds"), "argmax_ds": last.get("argmax_ds")}


# Options shared by `demo` and `sweep`: one definition, one help text.
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs per model.")]
AssignmentOpt = Annotated[str, typer.Option(
    "--assignment", help="Unit-to-bin targets: paper (Eq. 6) or matched (each unit to a bin near what the "
                         "starting weights prefer on the training split; use with --init-weights).")]
PoolingOpt = Annotated[str, typer.Option(
    "--pooling", help="How the selectivity term pools per-bin responses: batch (the paper's) or image "
                      "(each image scored, then averaged).")]
LayersOpt = Annotated[list[str] | None, typer.Option(
    "--layers", "-l", metavar="LAYER", help="Layers of the selectivity term and the dissection (default: decode_conv4).")]
InitOpt = Annotated[str | None, typer.Option(
    "--init-weights", metavar="PATH", help="Both arms of each seed start from these weights (safetensors; "
    "'{seed}' in PATH is replaced by the seed), e.g. after pretraining on other data. Default: random init.")]
SizeOpt = Annotated[str, typer.Option("--size", help="Training resolution HxW (multiples of 32 for FastDepth).")]
WidthOpt = Annotated[float, typer.Option("--width", help="FastDepth width multiplier.")]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate of every model.")]
LivenessOpt = Annotated[float, typer.Option("--liveness", help="Weight of the hinge that keeps units alive; 0 is the paper's Eq. 5.")]
TrainFramesOpt = Annotated[str | None, typer.Option("--train-frames", help="Folder data: frames for training, e.g. 0:80.")]
TestFramesOpt = Annotated[str | None, typer.Option("--test-frames", help="Folder data: held-out frames, e.g. 80:100.")]
BinningOpt = Annotated[str, typer.Option("--binning", help="sid-fit (SID over the data's range), quantile, or sid (0.75-10 m).")]
BinsOpt = Annotated[int, typer.Option(
    "--bins", min=0, help="Depth bins N_b; 0 gives one bin per unit. The default 4 (four units per bin) won on "
                          "validation blocks in docs/results.md; the papers' ratio is two units per bin.")]
TrainSamplesOpt = Annotated[int, typer.Option("--train-samples", min=1, help="Synthetic data: training images.")]
TestSamplesOpt = Annotated[int, typer.Option("--test-samples", min=1, help="Synthetic data: held-out images.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=0, help="CPU threads per training (1 is fastest for these small models; 0 keeps torch's default).")]


def demo(
    data: Annotated[str, typer.Option("--data", "-d", help="DATASPEC: 'synthetic' (default) or folder:PATH.")] = "synthetic",
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the run directory.")] = Path("runs"),
    name: Annotated[str, typer.Option("--name", help="Run directory name under --out.")] = "demo",
    epochs: EpochsOpt = 12,
    size: SizeOpt = "64x96",
    width: WidthOpt = 1.0,
    weight: Annotated[float, typer.Option("--weight", help="Selectivity weight lambda of the interpretable twin.")] = 1.0,
    lr: LrOpt = 1e-2,
    liveness: LivenessOpt = 1.0,
    train_frames: TrainFramesOpt = None,
    test_frames: TestFramesOpt = None,
    binning: BinningOpt = "quantile",
    bins: BinsOpt = 4,
    seeds: SeedsOption = "3",
    curve_every: Annotated[int, typer.Option("--curve-every", min=0, help="Epochs between learning-curve points (0: none).")] = 5,
    permutations: Annotated[int, typer.Option("--permutations", min=0, help="Re-pairings of the held-out significance test (0: off).")] = 199,
    train_samples: TrainSamplesOpt = 192,
    test_samples: TestSamplesOpt = 480,
    threads: ThreadsOpt = 1,
    init_weights: InitOpt = None,
    assignment: AssignmentOpt = "paper",
    pooling: PoolingOpt = "batch",
    layers: LayersOpt = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Train a FastDepth baseline and its interpretable twin over seeds, dissect both, compare."""
    from .experiment import run_experiment

    cfg = _experiment_config(name=name, out=out, data=data, train_frames=train_frames, test_frames=test_frames,
                             train_samples=train_samples, test_samples=test_samples, size=size, width=width,
                             lr=lr, liveness=liveness, epochs=epochs, binning=binning, num_bins=bins or None, seeds=seeds,
                             permutations=permutations, threads=threads, weight=weight, curve_every=curve_every,
                             init_weights=init_weights, assignment=assignment, pooling=pooling, layers=layers)
    _check_numbers(weight=weight, allow_zero=("weight",))
    summary = run_experiment(cfg)
    summary["run_dir"] = str(cfg.run_dir)
    _print_table(summary, fmt, "baseline vs interpretable (held-out split)")
    if fmt == OutputFormat.table:
        message(f"plots and results in {cfg.run_dir}/ ({summary['seconds']} s); "
                f"`depthsel report {cfg.run_dir}` makes an HTML report")


def sweep(
    weights: Annotated[str, typer.Option("--weights", help="Selectivity weights, comma separated; 0 (the baseline) is always included.")] = "0,0.03,0.1,0.3,1",
    data: Annotated[str, typer.Option("--data", "-d", help="DATASPEC: 'synthetic' (default) or folder:PATH.")] = "synthetic",
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the run directory.")] = Path("runs"),
    name: Annotated[str, typer.Option("--name", help="Run directory name under --out.")] = "sweep",
    seeds: SeedsOption = "3",
    epochs: EpochsOpt = 12,
    size: SizeOpt = "64x96",
    width: WidthOpt = 1.0,
    lr: LrOpt = 1e-2,
    liveness: LivenessOpt = 1.0,
    train_frames: TrainFramesOpt = None,
    test_frames: TestFramesOpt = None,
    binning: BinningOpt = "quantile",
    bins: BinsOpt = 4,
    permutations: Annotated[int, typer.Option("--permutations", min=0, help="Re-pairings of the significance test (0: off).")] = 0,
    train_samples: TrainSamplesOpt = 192,
    test_samples: TestSamplesOpt = 480,
    threads: ThreadsOpt = 1,
    init_weights: InitOpt = None,
    assignment: AssignmentOpt = "paper",
    pooling: PoolingOpt = "batch",
    layers: LayersOpt = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Accuracy vs selectivity over selectivity weights x seeds: a table and a trade-off plot with CIs."""
    from .experiment import run_sweep

    try:
        ws = [float(w) for w in weights.split(",") if w.strip()]
    except ValueError:
        ws = []
    if not ws or not all(math.isfinite(w) and w >= 0 for w in ws):
        raise CliError(f"--weights {weights!r}: give finite numbers >= 0 separated by commas, e.g. 0,0.1,1")
    cfg = _experiment_config(name=name, out=out, data=data, train_frames=train_frames, test_frames=test_frames,
                             train_samples=train_samples, test_samples=test_samples, size=size, width=width,
                             lr=lr, liveness=liveness, epochs=epochs, binning=binning, num_bins=bins or None, seeds=seeds,
                             permutations=permutations, threads=threads, init_weights=init_weights,
                             assignment=assignment, pooling=pooling, layers=layers)
    summary = run_sweep(cfg, ws)
    summary["run_dir"] = str(cfg.run_dir)
    _print_table(summary, fmt, "selectivity-weight sweep (held-out split)")
    if fmt == OutputFormat.table:
        message(f"trade-off plot and results in {cfg.run_dir}/ ({summary['seconds']} s)")


def combine(
    runs: Annotated[list[Path], typer.Argument(help="Experiment run directories (each with summary.json) of the same experiment on other seeds.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the combined summary.json and plots.")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Pool seeds run separately (other processes, machines or GPUs) into one table with CIs."""
    from .combine import combine_runs

    if (out / "summary.json").exists():
        raise CliError(f"{out}/summary.json exists; choose another --out")
    summary = combine_runs(runs, out)
    summary["run_dir"] = str(out)
    _print_table(summary, fmt, "combined runs (held-out split)")


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
    pooling: PoolingOpt = "batch",
    binner: Annotated[str, typer.Option("--binner", help="Binner config as JSON, e.g. {\"name\": \"sid\", \"num_bins\": 64}.")] = '{"name": "sid", "num_bins": 64}',
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs.")] = 10,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    loss: Annotated[str, typer.Option("--loss", help="l1, hu or silog.")] = "l1",
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, step or none.")] = "cosine",
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT/NAME from its checkpoint; the settings must match the run's.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over, deleting the run already in OUT/NAME.")] = False,
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
    import torch

    from depthsel.training import SelectivityConfig, TrainConfig, Trainer

    if resume and force:
        raise CliError("--resume continues a run and --force deletes it: pass one of them")
    _check_train_options(name=name, lr=lr, weight=weight, liveness=liveness, objective=objective,
                         pooling=pooling)
    binner_cfg = _binner_config(binner)
    torch.manual_seed(seed)  # --seed covers the model's initial weights too
    built = build_model(model, config=parse_model_config(model_config, width), device=device,
                        normalization=normalization)
    if layers:
        from depthsel.layers import LayerSelector

        LayerSelector(split_layers(layers)).resolve(built.model)  # a typo fails now, not never
    data_cfg = parse_settings(data_set, "--data-set")
    dataset = build_dataset(data, **data_cfg)
    sel = SelectivityConfig(layers=split_layers(layers), binner=binner_cfg, objective=objective,
                            weight=weight, objective_options={"liveness": liveness}, pooling=pooling) if weight else None
    cfg = TrainConfig(name=name, out_dir=str(out), epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                      lr=lr, loss=loss, schedule=schedule, seed=seed, device=device, amp=amp,
                      checkpoint_every=checkpoint_every, selectivity=sel,
                      extra={"model": built.describe(), "data": data, "data_settings": data_cfg})
    result = _fit(lambda: Trainer(built.model, built.info, dataset, cfg, adapters=parse_tokens(tokens)),
                  resume, force)
    if fmt == OutputFormat.json:
        emit_json(result)
    else:
        emit(fmt, [result], list(result), title="training finished")
