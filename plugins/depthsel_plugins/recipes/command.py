"""``depthsel reproduce RECIPE --data nyu:PATH``: a paper's recipe as one command.

Registered through the ``register_commands`` hook, like any third-party
command; the core CLI does not know it exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from depthsel.cli.common import parse_dataspec, parse_settings, parse_size
from depthsel.cli.errors import CliError
from depthsel.cli.output import FormatOption, OutputFormat, emit, emit_json, message

from .configs import RECIPES, get_recipe
from .run import RunOptions, run_recipe

__all__ = ["reproduce"]


def _rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"what": k, "value": _fmt(summary["metrics"].get(k))} for k in ("delta1", "rmse", "abs_rel")]
    for layer, stats in summary["dissection"].items():
        for key in ("argmax_ds", "target_ds", "peak_on_target", "dead_units"):
            rows.append({"what": f"{layer} {key}", "value": _fmt(stats.get(key))})
    return rows


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _show(name: str | None, fmt: OutputFormat) -> None:
    if name is None:
        rows = [{"recipe": r.name, "description": r.title} for r in RECIPES.values()]
        if fmt == OutputFormat.json:
            emit_json(rows)
        else:
            emit(fmt, rows, ["recipe", "description"], title="recipes (depthsel reproduce RECIPE --data ...)")
        return
    emit_json(get_recipe(name).to_dict()) if fmt == OutputFormat.json else typer.echo(
        json.dumps(get_recipe(name).to_dict(), indent=2))


def reproduce(
    recipe: Annotated[str | None, typer.Argument(help="Recipe name: you2021, hu2019 or fastdepth2021.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="DATASPEC, e.g. nyu:PATH (nyu_data.zip, h5 folder...).")] = None,
    data_set: Annotated[list[str] | None, typer.Option("--data-set", help="Dataset option key=value for both splits; repeatable.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Parent folder of the run directory.")] = Path("runs"),
    name: Annotated[str | None, typer.Option("--name", help="Run directory name (default: the recipe's).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Override the recipe's epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.")] = None,
    size: Annotated[str | None, typer.Option("--size", help="Input HxW; replaces the recipe's resize and crop.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Width-reduced model, small input and batch: a smoke test.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Override the batch size.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N samples of each split.")] = None,
    baseline: Annotated[bool, typer.Option("--baseline", help="Train with lambda = 0 (the paper's baseline row).")] = False,
    weights: Annotated[str | None, typer.Option("--weights", help="Initial weights, e.g. an official checkpoint.")] = None,
    no_strict: Annotated[bool, typer.Option("--no-strict", help="Load --weights partially (e.g. an encoder only).")] = False,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow unpickling a torch.save --weights file.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model, data order and augmentation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    permutations: Annotated[int, typer.Option("--permutations", min=0, help="Permutation-test shuffles in the dissection.")] = 0,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume from the run's checkpoint if present.")] = True,
    eval_only: Annotated[bool, typer.Option("--eval-only", help="Skip training: evaluate and dissect --weights as given.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Print the recipe (or the list of recipes) and exit.")] = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Train a paper's recipe, evaluate it and dissect its layers (see docs/recipes.md)."""
    if show or recipe is None:
        _show(recipe, fmt)
        return
    chosen = get_recipe(recipe)
    if data is None:
        raise CliError(f"give --data, e.g. --data nyu:PATH/nyu_data.zip (or `depthsel reproduce {recipe} --show`)")
    spec = parse_dataspec(data)
    opts = RunOptions(data=spec.name, data_root=spec.root, data_options=parse_settings(data_set),
                      out_dir=str(out), name=name, epochs=epochs, max_steps=max_steps, size=parse_size(size),
                      tiny=tiny, batch_size=batch_size, limit=limit, baseline=baseline, weights=weights,
                      strict=not no_strict, trust_pickle=trust_pickle, seed=seed, device=device,
                      permutations=permutations, resume=resume, eval_only=eval_only)
    summary = run_recipe(chosen, opts)
    if fmt == OutputFormat.json:
        keys = ("scale", "overrides", "trained", "baseline", "weight", "steps", "metrics", "dissection",
                "run_dir")
        emit_json({k: summary[k] for k in keys})
        return
    emit(fmt, _rows(summary), ["what", "value"], title=f"{chosen.name} ({summary['scale']} scale, test split)")
    message(f"run, dissection and summary.json in {summary['run_dir']}/")
