"""Issue 12 diagnostic: how many of the 4 bins one training image covers (why per-image pooling lost).

Per-image pooling asks a unit to prefer its bin over the other bins *present in each image*. On
the demo's synthetic scenes an image covers few bins, on 7-Scenes all four; this prints both.
A bin counts when it holds more than 2% of the image's valid pixels.

``OMP_NUM_THREADS=1 python benchmarks/bins_per_image.py`` (about 10 s; reads the 7-Scenes
training frames 0-59 of the validation recipe and the demo's 192 synthetic training scenes).
"""

import torch
from depthsel.api import get_dataset
from depthsel_plugins.experiments.experiment import fit_binner
torch.set_num_threads(1)
for name, data, tr, kind in [("7s", "folder", {"root": "../shared/data/7scenes_redkitchen", "frames": "0:60"}, "quantile"),
                       ("syn", "synthetic", {"split": "train", "num_samples": 192}, "sid-fit")]:
    ds = get_dataset(data, size=(64, 96), **tr)
    b = fit_binner(ds, kind, 4)
    present = []
    for i in range(len(ds)):
        d = ds[i]["depth"]
        bins = b(d.unsqueeze(0))
        c = torch.bincount(bins[bins >= 0].flatten(), minlength=4).float()
        present.append(int(((c / c.sum()) > 0.02).sum()))
    t = torch.tensor(present, dtype=torch.float)
    print(name, kind, "bins holding >2% of an image's valid pixels: mean", round(float(t.mean()), 2), "images with 0..4 such bins", torch.bincount(t.long(), minlength=5).tolist())
