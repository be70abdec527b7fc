"""Issue 12: the held-out 7-Scenes runs with the number of bins chosen on the validation block.

``OMP_NUM_THREADS=1 python benchmarks/heldout_bins.py {end|start} NUM_BINS SEEDS NAME [OUT]``, e.g.
``python benchmarks/heldout_bins.py end 4 0,1,2,3,4 7s_end_nb4 runs``. ``end``: train frames 0-79,
test 80-99; ``start``: train 20-99, test 0-19. 60 epochs, quantile bins, 199 permutations, as the
16-bin runs of docs/results.md. NUM_BINS was chosen by ``benchmarks/lever_select_table.py`` on
frames 60-79 (end block unseen) before these runs were made.
"""

import sys

from depthsel_plugins.experiments.experiment import ExperimentConfig, run_experiment

block, nb, seeds, name = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")], sys.argv[4]
out = sys.argv[5] if len(sys.argv) > 5 else "runs"
root = "../shared/data/7scenes_redkitchen"
frames = {"end": ("0:80", "80:100"), "start": ("20:100", "0:20")}[block]
cfg = ExperimentConfig(name=name, out_dir=out, data="folder", train_data={"root": root, "frames": frames[0]},
                       test_data={"root": root, "frames": frames[1]}, size=(64, 96), epochs=60,
                       binning="quantile", num_bins=nb, seeds=seeds, curve_every=0, permutations=199,
                       model_config={"width": 0.5})  # the recipe of its round (the default is 1.0 since round 7)
run_experiment(cfg, progress=False)
