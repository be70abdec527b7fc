"""The papers' training recipes as named, documented configurations.

Each :class:`Recipe` says which model, layers, bins, objective, loss,
optimizer, schedule and data pipeline a paper used, and where every value
comes from. ``depthsel reproduce NAME`` turns one into a training run and a
dissection (:mod:`.run`). Nothing here has been run at full scale by the
depthsel team: see ``docs/recipes.md``.

Sources (read, not copied):

* ``you2021``: You et al., ICCV 2021, and its code, github.com/youzunzhi/InterpretableMDE
  (``train.py``: ``MFF_resnet``, ``LAYERS='D_MFF'``, batch 16, 20 epochs
  counted from 1, ``Adam(lr=1e-4, weight_decay=1e-4)``, ``lr * 0.1 ** (epoch // 5)``,
  ``loss = hu_loss - 0.1 * sum_l mean_k DS``; ``utils.py``: 64 SID bins, NYU
  alpha 0.75, beta 10; ``model/mff/modules.py``: ``align_corners=False``;
  ``data/nyuv2/data.py``: resize 240, flip, rotate 5 deg, centre crop 228x304,
  colour jitter 0.4).
* ``hu2019``: Hu et al., WACV 2019, github.com/JunjH/Revisiting_Single_Depth_Estimation
  (``train.py``: 20 epochs counted from 0, same Adam and step schedule, batch 8
  on one GPU; weights trained under PyTorch 0.3.1, i.e. ``align_corners=True``).
* ``fastdepth2021``: the FastDepth follow-up (``MobileNetSkipAdd``,
  ``decode_conv5``, 32 units, log bins). Its optimizer, schedule, bin range
  and lambda are not in any source available here; the recipe takes
  FastDepth's NYU pipeline (sparse-to-dense: SGD 0.01, momentum 0.9, weight
  decay 1e-4, x0.1 every 5 epochs, batch 8, L1, 228x304 crop resized to
  224x224) and You et al.'s lambda and NYU depth range. Each such choice is
  listed in ``assumptions``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from depthsel.errors import ConfigError

__all__ = ["OptimizerSpec", "Recipe", "RECIPES", "get_recipe", "YOU2021", "HU2019", "FASTDEPTH2021"]


@dataclass(frozen=True)
class OptimizerSpec:
    """Optimizer and per-epoch step schedule: ``lr * gamma ** ((epoch + epoch_offset) // step_epochs)``.

    ``epoch`` counts from 0; ``epoch_offset=1`` reproduces a loop that counts
    epochs from 1 (InterpretableMDE), where the first decay comes after 4 epochs.
    """

    name: str
    lr: float
    weight_decay: float
    momentum: float = 0.0
    step_epochs: int = 5
    gamma: float = 0.1
    epoch_offset: int = 0

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate during epoch ``epoch`` (0-based)."""
        return self.lr * self.gamma ** ((epoch + self.epoch_offset) // self.step_epochs)


@dataclass(frozen=True)
class Recipe:
    """One paper's training and dissection setup.

    Attributes
    ----------
    name, title, reference
        Registry name, one-line description and where the values come from.
    model, model_config
        Registered model and its factory options (``align_corners`` for Hu MFF).
    layers
        Layers given the selectivity term and dissected.
    binner
        Binner configuration; layers with fewer units than bins get one bin per unit.
    weight, objective, preset
        lambda, the objective (``assign`` is Eq. 5) and the regularizer preset
        (``reference``: layers summed, units with an absent bin score 0).
        ``weight=0`` trains the baseline.
    loss, optimizer, epochs, batch_size
        Training.
    resize, crop, input_size
        Data pipeline: resize every frame to ``resize`` (H, W), centre crop to
        ``crop`` (random transforms before the crop in training), then resize to
        ``input_size`` when given.
    augment
        ``hflip`` probability, ``rotate`` degrees, ``color_jitter`` strength.
    max_depth
        Depth beyond this (metres) is invalid.
    protocol, dissection_preset
        Metric protocol and dissection preset of the paper's evaluation.
    tiny_size
        Input size of ``--tiny`` runs.
    deviations, assumptions
        Where the recipe knowingly differs from the paper's code, and values the
        sources do not give.
    """

    name: str
    title: str
    reference: str
    model: str
    model_config: dict[str, Any]
    layers: tuple[str, ...]
    binner: dict[str, Any]
    weight: float
    loss: str
    optimizer: OptimizerSpec
    epochs: int
    batch_size: int
    resize: tuple[int, int]
    crop: tuple[int, int]
    protocol: str
    tiny_size: tuple[int, int]
    objective: str = "assign"
    preset: str = "reference"
    input_size: tuple[int, int] | None = None
    augment: dict[str, float] = field(default_factory=dict)
    max_depth: float | None = 10.0
    dissection_preset: str = "reference"
    deviations: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()

    @property
    def num_bins(self) -> int:
        """Bins per layer before fitting to the unit count."""
        return int(self.binner["num_bins"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (saved with every run)."""
        return asdict(self)


_PIPELINE_DEVIATIONS = (
    "ImageNet-pretrained encoder weights are not bundled; pass --weights to start from them",
    "the loss and the selectivity term see depth at the input resolution (the reference code "
    "downsamples ground truth to the output size first)",
    "pixels rotated in from outside the frame are invalid, not depth 0",
)

YOU2021 = Recipe(
    name="you2021",
    title="You et al. ICCV 2021: Hu MFF ResNet-50, D + MFF, 64 SID bins, lambda 0.1, L_assign",
    reference="You et al., ICCV 2021; github.com/youzunzhi/InterpretableMDE (train.py, utils/utils.py)",
    model="hu_mff_resnet50",
    model_config={"align_corners": False},  # InterpretableMDE's MFF copy upsamples this way
    layers=("D", "MFF"),
    binner={"name": "sid", "num_bins": 64, "preset": "nyu"},
    weight=0.1,
    loss="hu",
    optimizer=OptimizerSpec("adam", lr=1e-4, weight_decay=1e-4, epoch_offset=1),
    epochs=20,
    batch_size=16,
    resize=(240, 320),
    crop=(228, 304),
    protocol="you2021",
    tiny_size=(64, 80),
    augment={"hflip": 0.5, "rotate": 5.0, "color_jitter": 0.4},
    deviations=_PIPELINE_DEVIATIONS + (
        "no PCA lighting noise (the reference adds AlexNet-style Lighting(0.1) before colour jitter)",
    ),
)

HU2019 = Recipe(
    name="hu2019",
    title="Hu et al. WACV 2019: Hu MFF ResNet-50 baseline (no selectivity term), align_corners=True",
    reference="Hu et al., WACV 2019; github.com/JunjH/Revisiting_Single_Depth_Estimation (train.py)",
    model="hu_mff_resnet50",
    model_config={"align_corners": True},  # PyTorch 0.3.1 semantics of the released weights
    layers=("D", "MFF"),  # dissected only: weight 0 trains no selectivity term
    binner={"name": "sid", "num_bins": 64, "preset": "nyu"},
    weight=0.0,
    loss="hu",
    optimizer=OptimizerSpec("adam", lr=1e-4, weight_decay=1e-4, epoch_offset=0),
    epochs=20,
    batch_size=8,
    resize=(240, 320),
    crop=(228, 304),
    protocol="hu2019",
    tiny_size=(64, 80),
    augment={"hflip": 0.5, "rotate": 5.0, "color_jitter": 0.4},
    deviations=_PIPELINE_DEVIATIONS + ("no PCA lighting noise",),
)

FASTDEPTH2021 = Recipe(
    name="fastdepth2021",
    title="FastDepth follow-up: MobileNetSkipAdd, decode_conv5 (32 units), 32 log bins, L_assign",
    reference="the FastDepth follow-up; FastDepth (Wofk et al., ICRA 2019) for the NYU pipeline",
    model="fastdepth",
    model_config={"width": 1.0},
    layers=("decode_conv5",),
    binner={"name": "log", "num_bins": 32, "min_depth": 0.75, "max_depth": 10.0},
    weight=0.1,
    loss="l1",
    optimizer=OptimizerSpec("sgd", lr=0.01, weight_decay=1e-4, momentum=0.9, epoch_offset=0),
    epochs=20,
    batch_size=8,
    resize=(240, 320),
    crop=(228, 304),
    input_size=(224, 224),
    protocol="fastdepth",
    tiny_size=(64, 64),
    augment={"hflip": 0.5, "rotate": 5.0, "color_jitter": 0.4},
    deviations=_PIPELINE_DEVIATIONS + (
        "no random scale augmentation (sparse-to-dense scales by s in [1, 1.5] and divides depth by s)",
    ),
    assumptions=(
        "optimizer and schedule: sparse-to-dense's defaults (SGD 0.01, momentum 0.9, weight decay "
        "1e-4, x0.1 every 5 epochs), not the follow-up's own",
        "20 epochs: chosen here to match the other recipes (sparse-to-dense defaults to 15)",
        "lambda 0.1 and the regularizer's reference preset: You et al.'s, not the follow-up's",
        "log bins over (0.75, 10] m: You et al.'s NYU range; the follow-up's range is not known here",
    ),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (YOU2021, HU2019, FASTDEPTH2021)}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a :class:`ConfigError` lists the others."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; use one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]
