"""Ways to build the bin weight maps ``W = Uh^T M_d Uw``, timed against each other.

    python benchmarks/weight_maps.py [--threads 1] [--repeats 9]

At the paper's depth size (224x224, batch 8, SID depth of ``run.make_batch``)
for 64 bins at 56x56 (FastDepth ``decode_conv4``) and 32 bins at 112x112
(``decode_conv5``), and 64 bins at 224x224 (no resampling), it times:

* ``scatter_bin_last`` - :func:`depthsel.alignment.bin_weight_maps`: the four
  taps of every pixel scattered per image into a bin-last float64 table;
* ``scatter_bin_first`` - the previous implementation (one float64 bincount
  over the whole batch into ``[B, Nb, h, w]``), kept here for the A/B;
* ``separable_matmul`` - the separable form: a one-hot ``[B*Nb, H, W]`` mask,
  then ``Uh^T @ M @ Uw`` as two batched matrix products. It does
  ``B*Nb*(h*H*W + h*W*w)`` multiply-adds against ``4*B*H*W`` scatters, so it is
  timed on one image and reported per batch of 8.

Each result is checked against ``scatter_bin_last`` in float64 (max abs error)
and the median CPU time of this thread is printed (``time.thread_time``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from depthsel.alignment import bin_weight_maps, interp_weights  # noqa: E402
from depthsel.taps import _interp_taps  # noqa: E402

import run  # noqa: E402
from common import cpu_median  # noqa: E402


def scatter_bin_first(bins: torch.Tensor, nb: int, feat: tuple[int, int], align_corners: bool = False) -> torch.Tensor:
    """The implementation before this change: one float64 bincount over the batch, bin-major."""
    bsz, height, width = bins.shape
    h, w = feat
    hw = h * w
    y0, y1, wy0, wy1 = _interp_taps(height, h, align_corners)
    x0, x1, wx0, wx1 = _interp_taps(width, w, align_corners)
    idx_l, wt_l = [], []
    for ys, wys in ((y0, wy0), (y1, wy1)):
        for xs, wxs in ((x0, wx0), (x1, wx1)):
            idx_l.append((ys[:, None] * w + xs[None, :]).reshape(-1))
            wt_l.append((wys[:, None] * wxs[None, :]).reshape(-1))
    tidx, twt = torch.stack(idx_l), torch.stack(wt_l)
    flat = bins.reshape(bsz, height * width)
    valid = flat >= 0
    size = bsz * nb * hw
    slot = (torch.arange(bsz).unsqueeze(1) * nb + flat) * hw
    slot = torch.where(valid, slot, torch.full_like(slot, size))
    idx = (slot.unsqueeze(1) + tidx.unsqueeze(0)).reshape(-1)
    vals = twt.unsqueeze(0).expand(bsz, -1, -1).reshape(-1)
    out = torch.bincount(idx, weights=vals, minlength=size + hw)
    return out[:size].view(bsz, nb, h, w)


def separable_matmul(bins: torch.Tensor, nb: int, feat: tuple[int, int], align_corners: bool = False,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``Uh^T @ onehot_d @ Uw`` for every image and bin, as two batched matrix products."""
    bsz, height, width = bins.shape
    h, w = feat
    uh = interp_weights(height, h, align_corners).to(dtype)  # [H, h]
    uw = interp_weights(width, w, align_corners).to(dtype)  # [W, w]
    onehot = F.one_hot(bins.clamp(min=0) + (bins < 0) * nb, nb + 1)[..., :nb]  # [B, H, W, Nb]
    m = onehot.permute(0, 3, 1, 2).to(dtype).reshape(bsz * nb, height, width)
    return (uh.T @ m @ uw).view(bsz, nb, h, w)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of ``fn`` (:func:`common.cpu_median`)."""
    return cpu_median(fn, repeats)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=str(HERE / "weight_maps.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, depth = run.make_batch(8, (224, 224), seed=1)
    results: dict[str, Any] = {"command": " ".join(["python", "benchmarks/weight_maps.py"] + (argv or sys.argv[1:])),
                               "threads": args.threads, "repeats": args.repeats, "timer": "thread_time",
                               "batch": 8, "depth_size": [224, 224], "cases": []}
    for nb, feat in ((64, (56, 56)), (32, (112, 112)), (64, (224, 224))):
        bins = run.sid(nb)(depth, depth > 0)
        ref = bin_weight_maps(bins, nb, feat, dtype=torch.float64)
        one = bins[:1]
        case: dict[str, Any] = {"bins": nb, "feature": list(feat)}
        for name, fn, per_image in (
            ("scatter_bin_last", lambda: bin_weight_maps(bins, nb, feat), False),
            ("scatter_bin_first", lambda: scatter_bin_first(bins, nb, feat), False),
            ("separable_matmul", lambda: separable_matmul(one, nb, feat), True),
        ):
            got = fn().double()
            err = float((got - (ref[:1] if per_image else ref)).abs().max())
            ms = 1e3 * timed(fn, max(1, args.repeats // 3) if per_image else args.repeats)
            case[name] = {"ms_per_batch_of_8": ms * 8 if per_image else ms, "max_abs_err_vs_bin_last": err,
                          "timed_on": "1 image, x8" if per_image else "8 images"}
            print(f"Nb={nb:3d} {feat[0]}x{feat[1]:<4d} {name:18s} {case[name]['ms_per_batch_of_8']:9.1f} ms/batch  "
                  f"max err {err:.1e}", flush=True)
        results["cases"].append(case)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
