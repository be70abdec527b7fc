"""What a baseline-vs-interpretable comparison runs: :class:`ExperimentConfig`.

Its own module so that the measuring code (:mod:`.measure`) can name it without
importing the experiment runner that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExperimentConfig"]


@dataclass
class ExperimentConfig:
    """Configuration of a baseline-vs-interpretable comparison.

    ``data`` is a registry name; ``train_data``/``test_data`` are keyword
    options of its factory for the two splits (for ``folder``: ``root`` and
    ``frames``; for ``synthetic``: ``split`` and ``num_samples``). ``seeds``
    lists the independent runs; every number in the summary is reported per
    seed and as mean with a 95% confidence interval over them.
    """

    name: str = "demo"
    out_dir: str = "runs"
    data: str = "synthetic"
    train_data: dict[str, Any] = field(default_factory=lambda: {"split": "train", "num_samples": 192})
    # 480 held-out scenes (48 until round 6): the same five models scored target DS 0.57 to 0.86
    # on ten disjoint 48-scene sets (benchmarks/scene_sample_spread.py, docs/results.md 4d).
    test_data: dict[str, Any] = field(default_factory=lambda: {"split": "test", "num_samples": 480})
    size: tuple[int, int] = (64, 96)
    model: str = "fastdepth"
    # Width 1.0 (64 units at decode_conv4) with quantile bins since round 7: the winner on 480
    # synthetic validation scenes (docs/results.md 4d); width 1.0 had won 7-Scenes in round 6.
    model_config: dict[str, Any] = field(default_factory=lambda: {"width": 1.0})
    # decode_conv4 (32 units at width 0.5, 64 at 1.0) since round 5: it won both validation blocks (7-Scenes
    # frames 60-79 and synthetic scenes of another seed) against decode_conv5 (16 units) under the
    # fixed rule of benchmarks/lever_select_table.py (docs/results.md 4a).
    layers: list[str] = field(default_factory=lambda: ["decode_conv4"])
    # Equal-mass bins. With 4 bins, sid-fit's bin 0 is everything nearer than the 1st
    # percentile: about 1% of the pixels, in 0-4 of 48 held-out scenes, for a quarter of the units.
    binning: str = "quantile"
    # Four units per bin: chosen on validation blocks (7-Scenes frames 60-79, synthetic scenes of
    # another seed) over 8 and 16 bins, never on the reported held-out frames (docs/results.md,
    # benchmarks/lever_select_table.py). None gives one bin per unit.
    num_bins: int | None = 4
    objective: str = "assign"
    # Which unit gets which bin: "paper" (Eq. 6, unit k -> bin k mod Nb) or "matched" (the
    # Hungarian matching of each seed's *starting* weights, dissected on the training split,
    # to the same multiset of bins: units keep bins near what they already prefer). Both arms
    # of a seed are scored against the same assignment. "matched" means something only when
    # the start is not random, i.e. with init_weights.
    assignment: str = "paper"
    # The liveness hinge (see SelectivityObjective) keeps units from dying; on
    # 7-Scenes it took dead units from 12/16 to 0 (docs/results.md).
    objective_options: dict[str, Any] = field(default_factory=lambda: {"liveness": 1.0})
    weight: float = 1.0
    # "batch" (the paper's): per-bin responses pooled over the batch; "image": the objective
    # scores each image and the mean is taken (SelectivityRegularizer's pooling).
    pooling: str = "batch"
    warmup_steps: int = 0
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-2
    loss: str = "l1"
    seeds: list[int] = field(default_factory=lambda: [0])
    # Weights both arms of a seed start from (fine-tuning, e.g. after pretraining on other
    # data): a safetensors path, where "{seed}" is replaced by the seed. None: random init.
    init_weights: str | None = None
    device: str = "cpu"
    protocol: str = "default"
    permutations: int = 199
    curve_every: int = 0
    bootstrap: int = 1000
    # Intra-op CPU threads. These models are small: on the project's 2-core machine one
    # thread trained FastDepth (width 0.5, 64x96, batch 8) in 0.10 s/step and two threads
    # in 0.64-0.67 s/step while anything else ran (OpenMP spin-waiting). 0 keeps torch's.
    threads: int = 1

    @property
    def run_dir(self) -> Path:
        """``out_dir/name``."""
        return Path(self.out_dir) / self.name
