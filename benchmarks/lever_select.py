"""Issue 12: choose the number of bins on a validation block, never on the reported held-out frames.

7-Scenes: train frames 0-59, validate on 60-79 (frames 80-99, the reported end block, are not read).
Synthetic: train on the demo's training scenes, validate on 480 scenes of the *train* split drawn with
another base seed (the demo's test split is not read). Until round 6 the synthetic validation used
48 scenes; ``benchmarks/scene_sample_spread.py`` showed that target DS moves by ±0.1 between
48-scene sets, so round 7 re-scored the saved runs on 480 (``benchmarks/revalidate_syn.py``) and
this script now validates on 480 (each run's summary records the number it used).

``OMP_NUM_THREADS=1 python benchmarks/lever_select.py {7s|syn} NUM_BINS SEEDS NAME [OUT]``, e.g.
``python benchmarks/lever_select.py 7s 8 0,1,2 sel_7s_nb8 runs``. NUM_BINS 0 keeps the recipe's
default (one bin per unit). ``syn:N:E`` trains on N synthetic scenes for E epochs instead of the
recipe's 192 for 12 (the data lever: ``syn:5000:2`` is 1,250 steps). A sixth argument, ExperimentConfig
fields as JSON, puts a lever on top: ``... syn 4 0,1,2 sel_syn_conv4 runs '{"layers": ["decode_conv4"]}'``.
Pool and compare with ``benchmarks/lever_select_table.py``.
"""

import sys

from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment
from lever_pretrain import with_lever  # the same JSON overrides as its val/heldout steps

kind, nb, seeds, name = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
out = sys.argv[5] if len(sys.argv) > 5 else "runs"
if kind == "7s":
    root = "../shared/data/7scenes_redkitchen"
    cfg = ExperimentConfig(name=name, out_dir=out, data="folder",
                           train_data={"root": root, "frames": "0:60"}, test_data={"root": root, "frames": "60:80"},
                           size=(64, 96), epochs=60, binning="quantile", num_bins=nb or None, seeds=seeds,
                           curve_every=0, permutations=0, model_config={"width": 0.5})
elif kind == "syn" or kind.startswith("syn:"):
    # "syn:N:E": N training scenes for E epochs instead of ExperimentConfig's 192 x 12 (the data lever).
    extra = {}
    if kind != "syn":
        n_scenes, epochs = (int(v) for v in kind.split(":")[1:])
        extra = {"train_data": {"split": "train", "num_samples": n_scenes}, "epochs": epochs}
    # The round-6 incumbent (width 0.5, sid-fit bins), so that each lever is the JSON on top of it;
    # round 7's winner is '{"binning": "quantile", "model_config": {"width": 1.0}}'.
    cfg = ExperimentConfig(name=name, out_dir=out, num_bins=nb or None, seeds=seeds, curve_every=0, permutations=0,
                           test_data={"split": "train", "seed": 1, "num_samples": 480}, model_config={"width": 0.5},
                           binning="sid-fit", **extra)
else:
    raise SystemExit(f"unknown kind {kind!r}; use 7s or syn")
run_experiment(with_lever(cfg, sys.argv[6] if len(sys.argv) > 6 else None), progress=False)
