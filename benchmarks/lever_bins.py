"""Issue 12 lever: the 7-Scenes end-block experiment with N_b = 8 bins for 16 units (two units per bin).

Run two processes and pool them (what docs/results.md reports):
``OMP_NUM_THREADS=1 python benchmarks/lever_bins.py 0,1,2 nb8_a & OMP_NUM_THREADS=1 python benchmarks/lever_bins.py 3,4 nb8_b; wait``
then ``depthsel combine runs/nb8_a runs/nb8_b --out runs/7s_end_nb8``. Arguments: seeds, run name,
and optionally the output folder (default ``runs``).
"""

import sys
from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment
seeds=[int(s) for s in sys.argv[1].split(",")]
root="../shared/data/7scenes_redkitchen"
cfg=ExperimentConfig(name=sys.argv[2], out_dir=sys.argv[3] if len(sys.argv) > 3 else "runs", data="folder",
    train_data={"root": root, "frames": "0:80"}, test_data={"root": root, "frames": "80:100"},
    size=(64, 96), epochs=60, binning="quantile", num_bins=8, seeds=seeds, curve_every=0, permutations=199,
    model_config={"width": 0.5})  # the recipe of its round (the default is 1.0 since round 7)
run_experiment(cfg, progress=False)
