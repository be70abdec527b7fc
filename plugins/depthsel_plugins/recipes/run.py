"""Turn a :class:`~.configs.Recipe` into a training run, an evaluation and a dissection.

Everything goes through depthsel's public pieces (the registry, the
:class:`~depthsel.training.Trainer`, the ``dissection`` analyzer), exactly as
a third-party plugin would use them. The run directory ``OUT/NAME`` holds the
trainer's files (``config.json``, checkpoints, ``model.safetensors``,
``history.json``), ``dissection/`` and ``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from depthsel import get_analyzer, get_dataset, get_model, get_model_info, load_state_dict, load_weights
from depthsel.analysis import AnalysisContext
from depthsel.checkpoints import atomic_write_bytes
from depthsel.errors import CheckpointError, ConfigError, DepthselError
from depthsel.training import SelectivityConfig, TrainConfig, Trainer, evaluate
from depthsel.modelinfo import ModelInfo

from depthsel.transforms import CenterCrop, ColorJitter, Compose, HFlip, Resize, Rotation
from .configs import OptimizerSpec, Recipe

__all__ = ["RunOptions", "RecipeTrainer", "build_splits", "train_config", "run_recipe"]


@dataclass
class RunOptions:
    """What the user chose on top of a recipe (``depthsel reproduce`` options).

    ``epochs``, ``max_steps``, ``size``, ``tiny``, ``batch_size`` and ``limit``
    change the scale: a run with any of them is not the paper's recipe, and
    ``summary.json`` says so under ``"scale"``. ``eval_only`` skips training
    (``"trained": false``) to evaluate and dissect given weights.
    """

    data: str
    data_root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs"
    name: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    size: tuple[int, int] | None = None
    tiny: bool = False
    batch_size: int | None = None
    limit: int | None = None
    baseline: bool = False
    weights: str | None = None
    strict: bool = True
    trust_pickle: bool = False
    seed: int = 0
    device: str = "cpu"
    permutations: int = 0
    resume: bool = True
    eval_only: bool = False

    def scale_overrides(self) -> dict[str, Any]:
        """The options given that make this run smaller (or other) than the paper's."""
        keys = ("epochs", "max_steps", "size", "batch_size", "limit")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.tiny:
            out["tiny"] = True
        return out


class RecipeTrainer(Trainer):
    """The depthsel trainer with a paper's optimizer and per-epoch step schedule.

    The core trainer uses AdamW with a cosine/step/constant schedule; the papers
    use Adam or SGD with ``lr * gamma ** (epoch // step)``. Only the optimizer
    and :meth:`_lr_at` change; checkpoints, resume and the selectivity term are
    the core's.
    """

    def __init__(self, model: nn.Module, info: ModelInfo, train_set: Dataset[Any], config: TrainConfig,
                 spec: OptimizerSpec) -> None:
        super().__init__(model, info, train_set, config)
        self.spec = spec
        params = self.model.parameters()
        if spec.name == "adam":
            # torch's Adam adds weight decay to the gradient (L2), as the papers' code does.
            self.opt = torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
        elif spec.name == "sgd":
            self.opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                                       weight_decay=spec.weight_decay)
        else:
            raise ConfigError(f"recipe optimizer must be 'adam' or 'sgd', got {spec.name!r}")

    def _lr_at(self, step: int) -> float:
        return self.spec.lr_at_epoch(step // self.steps_per_epoch)


def _pipeline(recipe: Recipe, opts: RunOptions, train: bool) -> tuple[tuple[int, int], Compose | None]:
    """The resize applied by the dataset and the transforms after it."""
    aug = recipe.augment
    random: list[Any] = []
    if train:
        if aug.get("hflip"):
            random.append(HFlip(float(aug["hflip"])))
        if aug.get("rotate"):
            random.append(Rotation(float(aug["rotate"])))
    jitter = [ColorJitter(*(float(aug["color_jitter"]),) * 3)] if train and aug.get("color_jitter") else []
    size = opts.size or (recipe.tiny_size if opts.tiny else None)
    if size is not None:
        # A reduced run resizes straight to the chosen input size: no crop margin to spare.
        steps = random + jitter
        return size, (Compose(steps) if steps else None)
    steps = random + [CenterCrop(recipe.crop)]
    if recipe.input_size is not None:
        steps.append(Resize(recipe.input_size))
    return recipe.resize, Compose(steps + jitter)


def _dataset(recipe: Recipe, opts: RunOptions, split: str) -> Dataset[Any]:
    size, transforms = _pipeline(recipe, opts, train=split == "train")
    config: dict[str, Any] = {"split": split, "size": size, "max_depth": recipe.max_depth,
                              "seed": opts.seed, **opts.data_options}
    if transforms is not None:
        config["transforms"] = transforms
    if opts.data_root is not None:
        if not Path(opts.data_root).exists():
            raise DepthselError(f"dataset path {opts.data_root!r} does not exist; check --data {opts.data}:PATH")
        config["root"] = opts.data_root
    try:
        dataset = get_dataset(opts.data, **config)
    except TypeError as exc:
        raise ConfigError(f"dataset {opts.data!r} rejected the recipe's options: {exc}") from exc
    if opts.limit is not None:
        from depthsel.cli.common import LimitedDataset

        dataset = LimitedDataset(dataset, opts.limit)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DepthselError(f"the {split} split of {opts.data!r} has no samples")
    return dataset


def build_splits(recipe: Recipe, opts: RunOptions) -> tuple[Dataset[Any], Dataset[Any]]:
    """The training split (with the recipe's random augmentation) and the test split."""
    return _dataset(recipe, opts, "train"), _dataset(recipe, opts, "test")


def _weight(recipe: Recipe, opts: RunOptions) -> float:
    return 0.0 if opts.baseline else recipe.weight


def train_config(recipe: Recipe, opts: RunOptions) -> TrainConfig:
    """The :class:`TrainConfig` of a run (the optimizer and schedule live in :class:`RecipeTrainer`)."""
    weight = _weight(recipe, opts)
    sel = SelectivityConfig(layers=list(recipe.layers), binner=dict(recipe.binner), objective=recipe.objective,
                            weight=weight, fit_bins_to_units=True, preset=recipe.preset) if weight else None
    suffix = "_baseline" if opts.baseline else ""
    return TrainConfig(
        name=opts.name or f"{recipe.name}{suffix}", out_dir=opts.out_dir,
        epochs=opts.epochs or recipe.epochs, max_steps=opts.max_steps,
        batch_size=opts.batch_size or (min(recipe.batch_size, 2) if opts.tiny else recipe.batch_size),
        lr=recipe.optimizer.lr, weight_decay=recipe.optimizer.weight_decay, schedule="none",
        loss=recipe.loss, seed=opts.seed, device=opts.device, selectivity=sel,
        eval_protocol=recipe.protocol,
        extra={"recipe": recipe.name, "optimizer": asdict(recipe.optimizer)},
    )


def build_recipe_model(recipe: Recipe, opts: RunOptions) -> tuple[nn.Module, ModelInfo, dict[str, Any]]:
    """The recipe's network (``tiny`` narrows it), with ``--weights`` loaded when given.

    Returns the model, its info and what was loaded (for ``summary.json``).
    """
    config = dict(recipe.model_config)
    if opts.tiny:
        config["tiny"] = True
    torch.manual_seed(opts.seed)
    model = get_model(recipe.model, **config)
    info = get_model_info(recipe.model)
    loaded = _load_initial_weights(model, opts)
    return model.to(opts.device), info, loaded


def _load_initial_weights(model: nn.Module, opts: RunOptions) -> dict[str, Any]:
    if opts.weights is None:
        return {}
    if opts.strict:
        load_weights(model, opts.weights, strict=True, trust_pickle=opts.trust_pickle)
        return {"path": opts.weights, "strict": True}
    state = load_state_dict(opts.weights, trust_pickle=opts.trust_pickle)
    own = set(model.state_dict())
    try:
        # Count the file's tensors that found a home (missing keys undercount:
        # BatchNorm fills in an absent num_batches_tracked without reporting it).
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    except RuntimeError as exc:  # shapes that differ still fail a partial load
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"{opts.weights!r} does not fit {type(model).__name__}: {detail}") from exc
    loaded = len(state) - len(unexpected)
    if loaded == 0:
        # A partial load that matched nothing would silently train from scratch.
        raise CheckpointError(
            f"none of the {len(state)} tensors in {opts.weights!r} match the model's names; rename them "
            "to the model's keys first (e.g. an ImageNet ResNet-50 under 'E.' for hu_mff_resnet50)"
        )
    return {"path": opts.weights, "strict": False, "loaded": loaded, "model_tensors": len(own)}


def _check_size(info: ModelInfo, dataset: Dataset[Any]) -> None:
    h, w = dataset[0]["image"].shape[-2:]
    m = info.input_multiple
    if h % m or w % m:
        raise ConfigError(f"the model needs input sides that are multiples of {m}, got {h}x{w}; change --size")


def dissect_test_split(recipe: Recipe, opts: RunOptions, model: nn.Module, info: ModelInfo, test_set: Dataset[Any],
            out: Path, batch_size: int, progress: bool | None = None) -> Any:
    """Dissect the recipe's layers on the test split and save the result under ``out``."""
    analyzer = get_analyzer("dissection", binner=dict(recipe.binner), fit_bins_to_units=True,
                            preset=recipe.dissection_preset, permutations=opts.permutations, split="test")
    ctx = AnalysisContext(model=model, dataset=test_set, info=info, layers=list(recipe.layers),
                          device=opts.device, batch_size=batch_size, seed=opts.seed, progress=progress)
    result = analyzer.run(ctx)
    result.save(out)
    return result


def run_recipe(recipe: Recipe, opts: RunOptions, progress: bool | None = None) -> dict[str, Any]:
    """Train, evaluate and dissect; returns (and writes) ``summary.json``."""
    if opts.eval_only and opts.weights is None:
        raise ConfigError("--eval-only needs --weights: there is nothing trained to evaluate")
    train_set, test_set = build_splits(recipe, opts)
    model, info, loaded = build_recipe_model(recipe, opts)
    _check_size(info, train_set)
    cfg = train_config(recipe, opts)
    if opts.eval_only:
        # Evaluate and dissect the given weights as they are (e.g. an official checkpoint).
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        history: dict[str, Any] = {"steps": []}
    else:
        history = RecipeTrainer(model, info, train_set, cfg, recipe.optimizer).fit(resume=opts.resume)
    metrics = evaluate(model, info, test_set, protocol=recipe.protocol, batch_size=cfg.batch_size,
                       device=opts.device)
    result = dissect_test_split(recipe, opts, model, info, test_set, cfg.run_dir / "dissection", cfg.batch_size, progress)
    overrides = opts.scale_overrides()
    summary: dict[str, Any] = {
        "recipe": recipe.to_dict(),
        "scale": "paper" if not overrides else "reduced",
        "overrides": overrides,
        "trained": not opts.eval_only,
        "baseline": opts.baseline,
        "weight": _weight(recipe, opts),
        "weights": loaded,
        "data": {"name": opts.data, "root": opts.data_root,
                 "options": {k: str(v) for k, v in opts.data_options.items()},
                 "train": len(train_set), "test": len(test_set)},  # type: ignore[arg-type]
        "steps": history["steps"][-1]["step"] if history["steps"] else 0,
        "metrics": metrics,
        "dissection": result.summary()["splits"]["test"],
        "run_dir": str(cfg.run_dir),
    }
    atomic_write_bytes(cfg.run_dir / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    return summary
