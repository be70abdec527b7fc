"""``depthsel analyze NAME`` and its shortcut ``depthsel dissect``.

One command runs any registered analyzer on any registered model and dataset:
the analyzer is built from ``--set key=value`` options, the model from
``--model``/``--model-config``/``--width``/``--weights``, the data from a
DATASPEC, and the :class:`~depthsel.results.Result` is saved to ``--out``
together with the command's own configuration in the result's ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..analysis import AnalysisContext
from ..errors import DepthselError
from ..results import Result
from .common import (
    build_dataset,
    build_model,
    parse_model_config,
    parse_settings,
    parse_tokens,
    split_layers,
)
from .errors import CliError, handle_errors
from .output import FormatOption, OutputFormat, emit, emit_json, key_value_rows, message, warn

__all__ = ["register", "run_analysis", "RESULT_FILES"]

#: What a saved result consists of; none is replaced without --force.
RESULT_FILES = ("result.json", "result.safetensors", "result.csv")

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registered model name (`depthsel models`), "
                     "or your own: package.module:Factory or path/to/file.py:Factory.")]
NormOpt = Annotated[str | None, typer.Option("--normalization", metavar="imagenet|unit",
                    help="Input normalisation of the model (default: the model's own, or the one "
                    "recorded with --weights; warns once when neither states it).")]
TokensOpt = Annotated[list[str] | None, typer.Option("--tokens", metavar="LAYER[:grid=HxW][:skip=N]",
                      help="Token layer [B, N, C] read as a grid, e.g. blocks.11:grid=14x14:skip=1; "
                      "repeatable.")]
DataOpt = Annotated[str, typer.Option("--data", "-d",
                    help="DATASPEC: NAME or NAME:PATH, a registered dataset (`depthsel datasets`) and its root.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Directory the result is saved to.")]
LayersOpt = Annotated[list[str] | None, typer.Option("--layers", "-l", metavar="LAYER",
                      help="Layer names or globs; repeat or comma-separate. Default: the model's suggested layers.")]
ModelConfigOpt = Annotated[str | None, typer.Option("--model-config",
                           help="Model factory options as a JSON object or JSON file.")]
WidthOpt = Annotated[float | None, typer.Option("--width", help="Model width multiplier (shortcut for --model-config).")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w",
                       help="Checkpoint to load (.safetensors, or .pth with weights only).")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle",
                     help="Allow unpickling the checkpoint: runs code from the file. Only for files you trust.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                   help="Analyzer option, a JSON value (a bare word is a string); dotted keys nest; "
                   "repeatable. The keys are listed at the end of this help.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Torch device, e.g. cpu or cuda:0.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for model initialisation and the analysis.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Use only the first N samples.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite a result already in --out.")]
DataSetOpt = Annotated[list[str] | None, typer.Option("--data-set", metavar="KEY=VALUE",
                       help="Dataset option key=value (JSON values), e.g. size=[96,128]; repeatable.")]
TrainDataOpt = Annotated[str | None, typer.Option("--train-data", metavar="DATASPEC",
                         help="A training split for analyzers that fit something first (probe, masks); "
                         "built with the same --data-set options. Default: the analyzer's own.")]


def run_analysis(
    name: str,
    *,
    model: str,
    data: str,
    out: Path,
    layers: list[str] | None = None,
    model_config: str | None = None,
    width: float | None = None,
    weights: Path | None = None,
    trust_pickle: bool = False,
    settings: list[str] | None = None,
    data_settings: list[str] | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    seed: int = 0,
    limit: int | None = None,
    force: bool = False,
    normalization: str | None = None,
    tokens: list[str] | None = None,
    train_data: str | None = None,
) -> tuple[Any, Path]:
    """Build everything from command-line strings, run analyzer ``name``, save the result.

    Returns
    -------
    tuple
        ``(result, directory)``.
    """
    from ..rundir import open_run

    # The output directory is locked for the whole analysis, so a second writer to the
    # same --out fails at once instead of racing this one to the last rename.
    with open_run(out) as rd:
        rd.refuse_overwrite(RESULT_FILES, force=force, what="a result", hint="choose another --out")
        result = _analyse(name, model=model, data=data, layers=layers, model_config=model_config,
                          width=width, weights=weights, trust_pickle=trust_pickle, settings=settings,
                          data_settings=data_settings, batch_size=batch_size, device=device, seed=seed,
                          limit=limit, normalization=normalization, tokens=tokens, train_data=train_data)
        directory = result.save(out)
        _write_figures(result, Path(directory))
        rd.write_manifest(f"analysis:{name}", result.meta.get("cli", {}), RESULT_FILES)
    return result, Path(directory)


def _analyse(name: str, *, model: str, data: str, layers: list[str] | None, model_config: str | None,
             width: float | None, weights: Path | None, trust_pickle: bool, settings: list[str] | None,
             data_settings: list[str] | None, batch_size: int, device: str, seed: int,
             limit: int | None, normalization: str | None, tokens: list[str] | None,
             train_data: str | None) -> Any:
    import torch

    from ..api import get_analyzer

    analyzer_cfg = parse_settings(settings)
    layer_list = split_layers(layers)
    trained = _trained_options(name, weights, analyzer_cfg)
    if not layer_list and trained.get("layers"):
        layer_list = list(trained["layers"])
    analyzer_cfg_full = {**{k: v for k, v in trained.items() if k != "layers"}, **analyzer_cfg}
    try:
        analyzer = get_analyzer(name, **analyzer_cfg_full)
    except TypeError as exc:
        raise CliError(f"analyzer {name!r} rejected its --set options {analyzer_cfg}: {exc}") from exc
    torch.manual_seed(seed)
    built = build_model(model, config=parse_model_config(model_config, width), weights=weights,
                        trust_pickle=trust_pickle, device=device, normalization=normalization)
    data_options = parse_settings(data_settings, "--data-set")
    dataset = build_dataset(data, limit=limit, **data_options)
    train_dataset = build_dataset(train_data, **data_options) if train_data is not None else None
    if not layer_list and not built.info.suggested_layers:
        hint = f"depthsel layers {model}" + (f" --model-config '{model_config}'" if model_config else "")
        raise CliError(f"model {model!r} suggests no layers; pass --layers (list them with `{hint}`)")
    _probe_forward(built, dataset, device, model)
    describe = getattr(dataset, "describe", None)
    if callable(describe):
        message(f"data: {describe()}", style="dim")
    ctx = AnalysisContext(model=built.model, dataset=dataset, info=built.info, layers=layer_list,
                          device=device, batch_size=batch_size, seed=seed, adapters=parse_tokens(tokens),
                          train_dataset=train_dataset)
    result = analyzer.run(ctx)
    if not isinstance(result, Result):
        raise DepthselError(f"analyzer {name!r} returned {type(result).__name__}, not a depthsel Result")
    # Record how the run was invoked, so `depthsel report` and re-runs can show it.
    result.meta.setdefault("cli", {
        "analyzer": name,
        "analyzer_config": analyzer_cfg,
        "from_training_run": {k: v for k, v in trained.items() if k not in analyzer_cfg},
        "model": built.describe(),
        "data": data,
        "train_data": train_data,
        "limit": limit,
        "layers": ctx.layers,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
    })
    return result


def _write_figures(result: Result, directory: Path) -> list[Path]:
    """Every analyzer's figures from the CLI too: ``result.save_figures`` into ``DIR/figures``.

    Results whose ``save`` already wrote their figures beside them (``figures_in_save``)
    get no second copy.
    """
    if result.figures_in_save or not result.figures():
        return []
    paths = result.save_figures(directory / "figures")
    message(f"figures in {directory / 'figures'}", style="dim")
    return paths


def _probe_forward(built: Any, dataset: Any, device: str, model: str) -> None:
    """Run the model once on the first sample, so a bad input size is one line, not a traceback."""
    import torch

    from ..data import collate
    from ..stream import move_batch

    info = built.info
    try:
        batch = collate([dataset[0]])
    except Exception as exc:  # noqa: BLE001 - a dataset that cannot load its first item
        raise CliError(f"cannot read the first sample of the data ({type(exc).__name__}: {exc})") from exc
    h, w = (int(s) for s in batch["image"].shape[-2:])
    mult = max(1, int(info.input_multiple))
    if h % mult or w % mult:
        raise CliError(f"{model!r} needs input sides that are multiples of {mult}, but the data gives "
                       f"{h}x{w}; resize it, e.g. --data-set 'size=[{h // mult * mult or mult},"
                       f"{w // mult * mult or mult}]'")
    batch = move_batch(batch, device)
    was = built.model.training
    built.model.eval()
    try:
        with torch.no_grad():
            info.predict(built.model, batch)
    except DepthselError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own forward failed on this input: user input
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CliError(
            f"{model!r} failed on a {h}x{w} input from the data ({type(exc).__name__}: {first}); "
            "check the input size (--data-set 'size=[H,W]'), --model-config and --weights"
        ) from exc
    finally:
        built.model.train(was)


def _trained_options(name: str, weights: Path | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """Binning, assignment and layers saved by `depthsel train` beside ``weights``.

    Used for every option the analyzer accepts and the command line did not set,
    so a trained model is dissected exactly as it was trained (no silent default).
    """
    import inspect

    from ..registry import get_plugin_manager
    from ..trained import dissection_options, run_config_path

    if weights is None:
        return {}
    saved = dissection_options(weights)
    if not saved:
        return {}
    try:
        params = inspect.signature(get_plugin_manager().entry("analyzers", name).factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    out = {k: v for k, v in saved.items() if k == "layers" or k in params}
    used = {k: v for k, v in out.items() if k not in explicit}
    if used:
        message(f"using {', '.join(sorted(used))} saved by training in {run_config_path(weights)}",
                style="dim")
    for key in sorted(set(out) & set(explicit)):
        if explicit[key] != out[key]:
            warn(f"--set {key} differs from the training run's {out[key]!r}")
    return out


def _print_result(result: Any, directory: Path, fmt: OutputFormat) -> None:
    summary = result.summary() if hasattr(result, "summary") else {}
    if fmt is OutputFormat.json:
        emit_json({"out": str(directory), "kind": getattr(result, "kind", None), "summary": summary})
        return
    kind = getattr(result, "kind", "result")
    from ..report import split_layer_rows

    per_layer = split_layer_rows(summary)
    if per_layer:
        # A dissection: one row per split and layer, not flattened keys like splits.test.dec2.target_ds.
        columns = list(dict.fromkeys(k for row in per_layer for k in row))
        emit(fmt, per_layer, columns, title=kind)
        rest = {k: v for k, v in summary.items() if k not in ("splits", "kind")}
        if rest:
            emit(fmt, list(key_value_rows(rest)), ["key", "value"])
    else:
        emit(fmt, list(key_value_rows(summary)), ["key", "value"], title=f"{kind}")
    message(f"saved to {directory}", style="green")


@handle_errors
def analyze(
    name: Annotated[str, typer.Argument(help="Registered analyzer name (`depthsel analyzers`).")],
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    layers: LayersOpt = None,
    model_config: ModelConfigOpt = None,
    width: WidthOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    settings: SetOpt = None,
    data_settings: DataSetOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    force: ForceOpt = False,
    normalization: NormOpt = None,
    tokens: TokensOpt = None,
    train_data: TrainDataOpt = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Run analyzer NAME on a model and a dataset; save the result to --out."""
    result, directory = run_analysis(
        name, model=model, data=data, out=out, layers=layers, model_config=model_config,
        width=width, weights=weights, trust_pickle=trust_pickle, settings=settings,
        data_settings=data_settings, batch_size=batch_size, device=device, seed=seed, limit=limit,
        force=force, normalization=normalization, tokens=tokens, train_data=train_data,
    )
    _print_result(result, directory, fmt)


@handle_errors
def dissect(
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    layers: LayersOpt = None,
    model_config: ModelConfigOpt = None,
    width: WidthOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustOpt = False,
    settings: SetOpt = None,
    data_settings: DataSetOpt = None,
    batch_size: BatchOpt = 4,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    limit: LimitOpt = None,
    force: ForceOpt = False,
    normalization: NormOpt = None,
    tokens: TokensOpt = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Dissect a model's layers for depth selectivity (= `analyze dissection`)."""
    result, directory = run_analysis(
        "dissection", model=model, data=data, out=out, layers=layers, model_config=model_config,
        width=width, weights=weights, trust_pickle=trust_pickle, settings=settings,
        data_settings=data_settings, batch_size=batch_size, device=device, seed=seed, limit=limit,
        force=force,
        normalization=normalization, tokens=tokens,
    )
    _print_result(result, directory, fmt)


def analyzer_options(names: list[str] | None = None) -> list[tuple[str, str]]:
    """``(analyzer, "key=default, ...")`` for each registered analyzer: its ``--set`` keys."""
    import inspect

    from ..registry import get_plugin_manager

    out: list[tuple[str, str]] = []
    for name, entry in sorted(get_plugin_manager().entries("analyzers").items()):
        if names is not None and name not in names:
            continue
        try:
            params = inspect.signature(entry.factory).parameters.values()
        except (TypeError, ValueError):
            continue
        keys = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
        out.append((name, ", ".join(keys) or "(none)"))
    return out


class _AnalyzerHelp(typer.core.TyperCommand):
    """A command whose help ends with the --set keys of its analyzers, read from the registry.

    Computed when help is shown, so listing plugins costs nothing on other calls.
    """

    analyzers: list[str] | None = None

    def format_help(self, ctx: Any, formatter: Any) -> None:
        try:
            lines = [f"{name}: {keys}" for name, keys in analyzer_options(self.analyzers)]
        except DepthselError:
            lines = []
        if lines:
            self.epilog = "--set keys (key=default):\n\n" + "\n\n".join(lines)
        super().format_help(ctx, formatter)


class _DissectHelp(_AnalyzerHelp):
    analyzers = ["dissection"]


def register(app: typer.Typer) -> None:
    """Add ``analyze`` and ``dissect`` to ``app``."""
    app.command("analyze", cls=_AnalyzerHelp)(analyze)
    app.command("dissect", cls=_DissectHelp)(dissect)
