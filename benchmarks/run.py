"""depthsel performance benchmarks: one command, one process (plus one child per memory figure).

    python benchmarks/run.py [--quick] [--device cpu|cuda]

Measures, on the setups of the papers (FastDepth, batch 8, 224x224, hooking
``decode_conv4`` + ``decode_conv5``; Hu MFF ResNet-50, batch 2, 228x304,
hooking ``D`` + ``MFF``; 64 SID bins, ``N_b = K`` for the 32-unit layer):

a. regularizer overhead: time of one training step (forward, loss, backward,
   Adam step) with / without the regularizer, runs interleaved, median of the
   per-repeat ratios; peak memory with / without (fresh child process per
   configuration: peak RSS on CPU, ``max_memory_allocated`` on CUDA); the same
   for ``method="upsample"``;
b. dissection throughput: images/s of each statistics configuration / images/s
   of plain ``no_grad`` inference over the same data loader, interleaved with
   rotating order: ``collect_responses`` as shipped, and the loop the issue's
   ``stream`` is to run (capture, one ``BinnedDepth`` per batch, accumulators
   with float32 or float64 per-batch products);
c. speed-up over a re-implementation of the published reference loops
   (``benchmarks/reference_impl.py``) on identical activations, for the
   training term (loss + backward) and for dissection statistics, with a
   numerical agreement check in float64; for dissection also the time of one
   read of the activations (the memory-bound floor) and of the reference's
   upsampling alone.

``--threads 1 --timer cpu`` is what docs/performance.md uses on the shared
2-core machine: one intra-op thread, timed by this thread's CPU time.

Prints a rich table and writes ``--out`` (default ``benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import depthsel  # noqa: E402
import depthsel.testing  # noqa: E402
from depthsel.accumulator import ResponseAccumulator  # noqa: E402
from depthsel.alignment import bin_counts, binned_sums  # noqa: E402
from depthsel.binned import BinnedDepth  # noqa: E402
from depthsel.capture import Capture  # noqa: E402
from depthsel.data import collate  # noqa: E402
from depthsel.dissect import collect_responses  # noqa: E402
from depthsel.selectivity import depth_selectivity  # noqa: E402

import reference_impl as ref  # noqa: E402

SETUPS: dict[str, dict[str, Any]] = {
    "fastdepth": {"model": "fastdepth", "batch": 8, "size": (224, 224),
                  "layers": ["decode_conv4", "decode_conv5"]},
    "hu_mff_resnet50": {"model": "hu_mff_resnet50", "batch": 2, "size": (228, 304),
                        "layers": ["D", "MFF"]},
}
# A smoke run (benchmarks/gpu/run.py --dry-run) shrinks the setups through this variable,
# which the memory children inherit: {"fastdepth": {"batch": 2, "size": [64, 64]}, ...}.
for _name, _over in json.loads(os.environ.get("DEPTHSEL_BENCH_SETUPS", "{}")).items():
    SETUPS[_name].update({k: tuple(v) if k == "size" else v for k, v in _over.items()})
NUM_BINS = 64
ALPHA, BETA = 0.75, 10.0
TARGETS = {"train_time": 1.05, "train_mem": 1.10, "dissect": 0.95, "speedup": 20.0}

# Repeats per mode. Full-size setups are kept in --quick; only repeats shrink.
REPEATS = {
    "quick": {"train": {"fastdepth": 3, "hu_mff_resnet50": 2}, "dissect": 2, "ref_train": 1,
              "ref_dissect": 2, "dissect_images": {"fastdepth": 16, "hu_mff_resnet50": 4}},
    "full": {"train": {"fastdepth": 7, "hu_mff_resnet50": 5}, "dissect": 5, "ref_train": 3,
             "ref_dissect": 5, "dissect_images": {"fastdepth": 32, "hu_mff_resnet50": 8}},
}


# ------------------------------------------------------------------ helpers
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


#: "cpu": CPU seconds of this thread (``time.thread_time``), robust to other
#: processes on a shared machine when torch runs one intra-op thread; "wall":
#: ``time.perf_counter``. CUDA always uses wall time (kernels run off-thread).
TIMER = {"kind": "wall"}


def timed(fn: Callable[[], Any], device: str) -> float:
    clock = time.thread_time if TIMER["kind"] == "cpu" and device != "cuda" else time.perf_counter
    sync(device)
    t = clock()
    fn()
    sync(device)
    return clock() - t


def make_batch(batch: int, size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(image [B,3,H,W], depth [B,1,H,W])`` spanning the SID range.

    About 5% of pixels are invalid (0) and about 1% lie above 10 m, so both
    reference quirks (invalid pixels, depth above beta) are exercised.
    """
    image, depth = depthsel.testing.toy_batch(batch, size, seed=seed, min_depth=0.3, max_depth=10.5)
    g = torch.Generator().manual_seed(seed + 1)
    hole = torch.rand(depth.shape, generator=g) < 0.05
    depth = torch.where(hole, torch.zeros_like(depth), depth)
    return image, depth


def build_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return depthsel.get_model(SETUPS[name]["model"])


def sid(nb: int, **kw: Any) -> Any:
    return depthsel.get_binner("sid", num_bins=nb, min_depth=ALPHA, max_depth=BETA, **kw)


def make_regularizer(model: nn.Module, name: str, method: str) -> depthsel.SelectivityRegularizer:
    # 64 SID bins; the 32-unit decode_conv5 gets N_b = K = 32 (paper rule).
    return depthsel.SelectivityRegularizer(
        model, SETUPS[name]["layers"], sid(NUM_BINS), objective="assign", weight=0.1,
        fit_bins_to_units=True, method=method,
    )


def criterion(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    if pred.shape[-2:] != depth.shape[-2:]:
        pred = F.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
    valid = depth > 0
    return (pred - depth).abs()[valid].mean()


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, depth: torch.Tensor,
               reg: depthsel.SelectivityRegularizer | None) -> None:
    opt.zero_grad(set_to_none=True)
    if reg is None:
        loss = criterion(model(x), depth)
    else:
        with reg.attach():
            pred = model(x)
            loss = criterion(pred, depth) + reg.loss(depth)
    loss.backward()
    opt.step()


def prime_adam(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Allocate Adam's state with a zero-gradient step (a no-op update), so that
    the first measured step already has the steady-state memory footprint."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` of the current address space. ``ru_maxrss`` is not used
    there because the kernel carries the pre-exec (forked) address space's
    peak into it, so a child of a large parent would report the parent's RSS.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        info["cpu_model"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ------------------------------------------------------- a. training overhead
CONFIGS = ("none", "adjoint", "upsample")


def bench_train_time(name: str, repeats: int, device: str, quick: bool = False) -> dict[str, Any]:
    s = SETUPS[name]
    model = build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, depth = make_batch(s["batch"], s["size"])
    x, depth = x.to(device), depth.to(device)
    regs = {"none": None, "adjoint": make_regularizer(model, name, "adjoint"),
            "upsample": make_regularizer(model, name, "upsample")}
    # Warm-up (allocator, kernels, Adam state, caches): one step per configuration,
    # or a single step with the regularizer in --quick.
    for c in (("adjoint",) if quick else CONFIGS):
        train_step(model, opt, x, depth, regs[c])
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(repeats):
        order = CONFIGS[r % 3:] + CONFIGS[: r % 3]  # rotate, so no config always runs first
        for c in order:
            times[c].append(timed(lambda c=c: train_step(model, opt, x, depth, regs[c]), device))
    ratio_adj = [a / n for a, n in zip(times["adjoint"], times["none"])]
    ratio_up = [u / n for u, n in zip(times["upsample"], times["none"])]
    return {
        "repeats": repeats,
        "step_s": {c: median(v) for c, v in times.items()},
        "step_s_all": times,
        "ratio_adjoint": median(ratio_adj),
        "ratio_upsample": median(ratio_up),
        "ratio_adjoint_all": ratio_adj,
        "ratio_upsample_all": ratio_up,
    }


def mem_child(name: str, config: str, device: str) -> dict[str, Any]:
    """Runs in a fresh process: one steady-state training step, peak memory."""
    s = SETUPS[name]
    model = build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, depth = make_batch(s["batch"], s["size"])
    x, depth = x.to(device), depth.to(device)
    reg = None if config == "none" else make_regularizer(model, name, config)
    prime_adam(model, opt)
    out: dict[str, Any] = {"baseline_rss_mb": peak_rss_mb()}
    if device == "cuda":
        torch.cuda.synchronize()
        out["baseline_cuda_mb"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    train_step(model, opt, x, depth, reg)
    sync(device)
    out["peak_rss_mb"] = peak_rss_mb()
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_train_mem(name: str, device: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for c in CONFIGS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--device", device,
               "--threads", str(torch.get_num_threads()), "--_mem-child", f"{name}:{c}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {name}:{c} failed:\n{proc.stderr[-3000:]}")
        res[c] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "peak_cuda_mb" if device == "cuda" else "peak_rss_mb"
    base_key = "baseline_cuda_mb" if device == "cuda" else "baseline_rss_mb"
    out: dict[str, Any] = {"children": res, "measure": key}
    for c in ("adjoint", "upsample"):
        out[f"ratio_{c}"] = res[c][key] / res["none"][key]
        # Growth above the state after setup (model, Adam state, data): the step's own memory.
        grow_c = res[c][key] - res[c][base_key]
        grow_n = res["none"][key] - res["none"][base_key]
        out[f"step_growth_ratio_{c}"] = grow_c / grow_n if grow_n > 0 else float("nan")
        out[f"extra_mb_{c}"] = res[c][key] - res["none"][key]
    return out


# ------------------------------------------------------- b. dissection throughput
class ListDataset(torch.utils.data.Dataset):
    """An in-memory depthsel dataset (same tensors for every pass)."""

    def __init__(self, n: int, size: tuple[int, int], seed: int = 0) -> None:
        image, depth = make_batch(n, size, seed)
        self.items = [{"image": image[i], "depth": depth[i], "valid": depth[i] > 0, "name": f"s{i}"}
                      for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def layer_binners(model: nn.Module, name: str, **kw: Any) -> dict[str, Any]:
    """Per-layer SID binners with ``N_b = min(64, K)``."""
    units = {}
    mods = dict(model.named_modules())
    x, _ = make_batch(1, SETUPS[name]["size"])
    hooks = [mods[l].register_forward_hook(lambda m, i, o, l=l: units.__setitem__(l, o.shape[1]))
             for l in SETUPS[name]["layers"]]
    try:
        with torch.no_grad():
            model.eval()(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {l: sid(min(NUM_BINS, units[l]), **kw) for l in SETUPS[name]["layers"]}


def stream_stats(model: nn.Module, data: Any, layers: list[str], binners: dict[str, Any], batch: int,
                 device: str, compute_dtype: torch.dtype) -> dict[str, ResponseAccumulator]:
    """The dissection statistics loop the issue's ``stream`` is to run, built from public pieces.

    Capture hooks, one :class:`~depthsel.binned.BinnedDepth` per batch (each
    binner bins once, each (binner, size) builds its weight maps once, in
    ``compute_dtype``), and one accumulator per layer whose per-batch products
    are in ``compute_dtype`` and whose sums across batches are float64.
    """
    accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=compute_dtype) for l in layers}
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False, collate_fn=collate)
    with torch.no_grad(), Capture(model, layers, detach=True) as cap:
        for b in loader:
            model(b["image"].to(device))
            binned = BinnedDepth(b["depth"].to(device), b["valid"].to(device))
            for l in layers:
                act = cap.outputs[l]
                accs[l].update(act, binned.bins(binners[l]),
                               weights=binned.weights(binners[l], tuple(act.shape[-2:]), compute_dtype))
            cap.clear()
    return accs


def shared_binners(binners: dict[str, Any]) -> dict[str, Any]:
    """One binner object per distinct configuration, so that layers with equal bins bin once."""
    seen: dict[str, Any] = {}
    return {l: seen.setdefault(json.dumps(b.config(), sort_keys=True), b) for l, b in binners.items()}


def bench_dissect(name: str, n_images: int, repeats: int, device: str) -> dict[str, Any]:
    """Throughput of each dissection configuration over plain no_grad inference, interleaved."""
    s = SETUPS[name]
    model = build_model(name).to(device).eval()
    binners = shared_binners(layer_binners(model, name))
    data = ListDataset(n_images, s["size"], seed=1)
    collect_kw: dict[str, Any] = {}
    if "compute_dtype" in inspect.signature(collect_responses).parameters:
        collect_kw["compute_dtype"] = torch.float32

    def plain() -> None:
        loader = torch.utils.data.DataLoader(data, batch_size=s["batch"], shuffle=False, collate_fn=collate)
        with torch.no_grad():
            for batch in loader:
                model(batch["image"].to(device))

    configs: dict[str, Callable[[], Any]] = {
        "plain": plain,
        # What ships: collect_responses (float64 products unless it accepts compute_dtype).
        "collect_responses": lambda: collect_responses(
            model, data, s["layers"], binners, batch_size=s["batch"], device=device, progress=False,
            **collect_kw),
        "stream_float32": lambda: stream_stats(model, data, s["layers"], binners, s["batch"], device,
                                               torch.float32),
        "stream_float64": lambda: stream_stats(model, data, s["layers"], binners, s["batch"], device,
                                               torch.float64),
    }
    names = list(configs)
    for fn in configs.values():
        fn()
    times: dict[str, list[float]] = {c: [] for c in names}
    for r in range(repeats):
        for c in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            times[c].append(timed(configs[c], device))
    out: dict[str, Any] = {"images": n_images, "batch": s["batch"], "repeats": repeats,
                           "timer": TIMER["kind"], "collect_kwargs": {k: str(v) for k, v in collect_kw.items()},
                           "seconds_all": times, "plain_img_s": n_images / median(times["plain"])}
    for c in names[1:]:
        ratios = [p / d for p, d in zip(times["plain"], times[c])]  # throughput ratio
        out[c] = {"img_s": n_images / median(times[c]), "ratio": median(ratios), "ratio_all": ratios,
                  "ratio_min": min(ratios), "ratio_max": max(ratios),
                  # statistics cost per batch, from the medians
                  "stats_ms_per_batch": 1e3 * (median(times[c]) - median(times["plain"]))
                  / math.ceil(n_images / s["batch"])}
    out["ratio"] = out["collect_responses"]["ratio"]
    return out


# ------------------------------------------------------- c. reference comparison
class Feed(nn.Module):
    """Replays fixed activations through identity layers named like the hooked ones,
    so the public regularizer API runs on exactly the reference's inputs."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names
        for n in names:
            self.add_module(n, nn.Identity())
        self.acts: list[torch.Tensor] = []

    def forward(self, _x: Any = None) -> list[torch.Tensor]:
        return [getattr(self, n)(a) for n, a in zip(self.names, self.acts)]


def capture(model: nn.Module, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    mods = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    hooks = [mods[l].register_forward_hook(lambda m, i, o, l=l: got.__setitem__(l, o.detach()))
             for l in layers]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [got[l] for l in layers]


def ds_train_term(feed: Feed, reg: depthsel.SelectivityRegularizer, acts: list[torch.Tensor],
                  depth: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    feed.acts = acts
    with reg.attach():
        feed()
        loss = reg.loss(depth)
    return loss, list(torch.autograd.grad(loss, acts))


def ref_train_term(acts: list[torch.Tensor], depth: torch.Tensor,
                   edges: list[list[float]]) -> tuple[torch.Tensor, list[torch.Tensor], Any]:
    sel, sums, counts = ref.training_selectivity(acts, depth, edges)
    loss = -0.1 * sel
    return loss, list(torch.autograd.grad(loss, acts)), (sums, counts)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def bench_reference_train(name: str, repeats: int, device: str) -> dict[str, Any]:
    s = SETUPS[name]
    model = build_model(name).to(device).train()
    x, depth = make_batch(s["batch"], s["size"], seed=2)
    x, depth = x.to(device), depth.to(device)
    acts32 = capture(model, s["layers"], x)
    binners = layer_binners(model, name, above_range="first_bin")
    nbs = [binners[l].num_bins for l in s["layers"]]
    edges = [ref.sid_thresholds(nb, ALPHA, BETA) for nb in nbs]
    feed = Feed(s["layers"]).to(device)

    # Agreement check in float64 (both sides), with the reference preset. Depth is
    # float64 too: the reference compares float32 depth with float32-rounded
    # edges, depthsel compares in float64, which bins a pixel lying within one
    # float32 ulp of an edge differently.
    acts64 = [a.double().requires_grad_() for a in acts32]
    depth64 = depth.double()
    reg64 = depthsel.SelectivityRegularizer(feed, s["layers"], binners, preset="reference",
                                            weight=0.1, stats_dtype=torch.float64)
    l_ds, g_ds = ds_train_term(feed, reg64, acts64, depth64)
    l_rf, g_rf, (r_sums, r_counts) = ref_train_term(acts64, depth64, edges)
    sums_err, counts_equal = 0.0, True
    for a, l, rs, rc in zip(acts64, s["layers"], r_sums, r_counts):
        bins = binners[l](depth64)
        ds_sums = binned_sums(a.detach(), bins, binners[l].num_bins, use_abs=True).sum(0)
        sums_err = max(sums_err, rel_err(ds_sums, rs))
        counts_equal &= bool(torch.equal(bin_counts(bins, binners[l].num_bins).sum(0).double(), rc))
    check = {
        "loss_depthsel": float(l_ds.detach()), "loss_reference": float(l_rf.detach()),
        "loss_rel_err": abs(float(l_ds.detach()) - float(l_rf.detach())) / abs(float(l_rf.detach())),
        # max |difference| over all layers relative to the largest reference gradient
        "grad_rel_err": max(float((a - b).abs().max()) for a, b in zip(g_ds, g_rf))
        / max(float(b.abs().max()) for b in g_rf),
        "per_bin_sums_rel_err": sums_err, "counts_equal": counts_equal,
    }
    check["ok"] = (check["loss_rel_err"] < 1e-9 and check["grad_rel_err"] < 1e-8
                   and sums_err < 1e-10 and counts_equal)

    # Timing on identical float32 activations; each side in its own default precision.
    reg32 = depthsel.SelectivityRegularizer(feed, s["layers"], binners, preset="reference", weight=0.1)
    leaf = [a.clone().requires_grad_() for a in acts32]
    ds_train_term(feed, reg32, leaf, depth)
    td, tr = [], []
    for _ in range(repeats):
        tr.append(timed(lambda: ref_train_term(leaf, depth, edges), device))
        for _ in range(3):
            td.append(timed(lambda: ds_train_term(feed, reg32, leaf, depth), device))
    l32, _ = ds_train_term(feed, reg32, leaf, depth)
    l_rf = l_rf.detach()
    check["loss_rel_err_float32"] = abs(float(l32.detach()) - float(l_rf)) / abs(float(l_rf))
    return {"check": check, "depthsel_s": median(td), "reference_s": median(tr),
            "speedup": median(tr) / median(td), "repeats": repeats, "bins": nbs}


def bench_reference_dissect(name: str, n_images: int, repeats: int, device: str) -> dict[str, Any]:
    s = SETUPS[name]
    model = build_model(name).to(device).eval()
    binners = shared_binners(layer_binners(model, name, above_range="first_bin"))
    data = ListDataset(n_images, s["size"], seed=1)
    batches = []
    for i in range(0, n_images, s["batch"]):
        b = collate([data[j] for j in range(i, min(n_images, i + s["batch"]))])
        depth = b["depth"].to(device)
        batches.append((capture(model, s["layers"], b["image"].to(device)), depth))
    edges = {l: ref.sid_thresholds(binners[l].num_bins, ALPHA, BETA) for l in s["layers"]}

    def run_ds(batches: list[Any] = batches, dtype: torch.dtype = torch.float32) -> dict[str, ResponseAccumulator]:
        # The per-batch work of the statistics: bin once per binner, weight maps once
        # per (binner, size), update; products in `dtype`, sums across batches float64.
        accs = {l: ResponseAccumulator(binners[l].num_bins, compute_dtype=dtype) for l in s["layers"]}
        for acts, depth in batches:
            binned = BinnedDepth(depth)
            for l, a in zip(s["layers"], acts):
                accs[l].update(a, binned.bins(binners[l]),
                               weights=binned.weights(binners[l], tuple(a.shape[-2:]), dtype))
        return accs

    def run_floor(batches: list[Any] = batches) -> None:
        # One read of every activation: the memory-bound floor of any statistic of them.
        for acts, _ in batches:
            for a in acts:
                a.sum()

    def run_ref_upsample(batches: list[Any] = batches) -> None:
        # The reference's own unavoidable part: one bilinear upsampling per image and layer.
        for acts, depth in batches:
            for a in acts:
                for i in range(a.shape[0]):
                    F.interpolate(a[i:i + 1], depth.shape[-2:], mode="bilinear", align_corners=False)

    def run_ref(batches: list[Any] = batches) -> dict[str, ref.ReferenceDissector]:
        dis = {l: ref.ReferenceDissector(edges[l], a.shape[1], device)
               for l, a in zip(s["layers"], batches[0][0])}
        for acts, depth in batches:
            for l, a in zip(s["layers"], acts):
                dis[l].update(a, depth)
        return dis

    # Agreement on float64 copies of the activations (the reference sums each
    # image and bin in the activation dtype before adding into float64).
    b64 = [([a.double() for a in acts], depth.double()) for acts, depth in batches]
    accs, dis = run_ds(b64, torch.float64), run_ref(b64)
    del b64
    check: dict[str, Any] = {"sums_rel_err": 0.0, "counts_equal": True, "ds_max_abs_err": 0.0}
    for l in s["layers"]:
        check["sums_rel_err"] = max(check["sums_rel_err"], rel_err(accs[l].sums, dis[l].sums))
        check["counts_equal"] &= bool(torch.equal(accs[l].counts.cpu(), dis[l].counts.cpu()))
        ds = depth_selectivity(accs[l].responses("signed"), absent="zero").cpu()
        ds_ref = dis[l].selectivity().cpu()
        err = (ds - ds_ref).abs()
        # The two DS formulas differ only in the epsilon of the denominator
        # (1e-12 vs 1e-15): allow for it where responses are tiny.
        avg = (dis[l].sums / (dis[l].counts + 1e-15)).abs().cpu()
        r_max = avg.max(1).values
        denom = r_max + (avg.sum(1) - r_max) / (avg.shape[1] - 1)
        tol = 1e-9 + 2e-12 / denom.clamp(min=1e-300)
        check["ds_max_abs_err"] = max(check["ds_max_abs_err"], float(err.max()))
        check["ds_within_eps_tolerance"] = check.get("ds_within_eps_tolerance", True) and bool((err <= tol).all())
    check["ok"] = (check["sums_rel_err"] < 1e-10 and check["counts_equal"]
                   and check["ds_within_eps_tolerance"])
    runs = {"reference": run_ref, "depthsel_float32": run_ds,
            "depthsel_float64": lambda: run_ds(batches, torch.float64),
            "activation_read_floor": run_floor, "reference_upsample_only": run_ref_upsample}
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for k, fn in runs.items():
            times[k].append(timed(fn, device))
    med = {k: median(v) for k, v in times.items()}
    check["sums_rel_err_float32"] = max(rel_err(run_ds()[l].sums, run_ref()[l].sums) for l in s["layers"])
    speedups = [r / d for r, d in zip(times["reference"], times["depthsel_float32"])]
    return {"check": check, "images": n_images, "seconds_median": med, "seconds_all": times,
            "depthsel_s": med["depthsel_float32"], "reference_s": med["reference"],
            "speedup": median(speedups), "speedup_all": speedups,
            "speedup_float64": med["reference"] / med["depthsel_float64"],
            # the best any implementation reading the activations once could do
            "speedup_bound_activation_read": med["reference"] / med["activation_read_floor"],
            "reference_upsample_fraction": med["reference_upsample_only"] / med["reference"],
            "repeats": repeats}


# ------------------------------------------------------------------ profile
def profile_step(name: str, device: str, method: str = "adjoint") -> str:
    """Top operators of one training step with the regularizer (for diagnosing misses)."""
    from torch.profiler import ProfilerActivity, profile

    s = SETUPS[name]
    model = build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, depth = make_batch(s["batch"], s["size"])
    x, depth = x.to(device), depth.to(device)
    reg = make_regularizer(model, name, method)
    train_step(model, opt, x, depth, reg)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts, profile_memory=True) as prof:
        train_step(model, opt, x, depth, reg)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


# ------------------------------------------------------------------ report
def fmt_status(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="depthsel benchmarks (" + results["machine"].get("cpu_model", "?") + ", "
              + results["machine"]["device"] + ")")
    for col in ("setup", "metric", "measured", "target", "status"):
        t.add_column(col)
    for name, r in results["setups"].items():
        tt, mm = r.get("train_time"), r.get("train_mem")
        if tt:
            t.add_row(name, "train step time, adjoint / none", f"{tt['ratio_adjoint']:.3f}x",
                      f"<= {TARGETS['train_time']}x",
                      fmt_status(tt["ratio_adjoint"], TARGETS["train_time"], False))
            t.add_row(name, "train step time, upsample / none", f"{tt['ratio_upsample']:.3f}x", "", "")
            t.add_row(name, "train step (s): none / adjoint / upsample",
                      " / ".join(f"{tt['step_s'][c]:.2f}" for c in CONFIGS), "", "")
        if mm:
            t.add_row(name, f"peak memory ({mm['measure']}), adjoint / none", f"{mm['ratio_adjoint']:.3f}x",
                      f"<= {TARGETS['train_mem']}x",
                      fmt_status(mm["ratio_adjoint"], TARGETS["train_mem"], False))
            t.add_row(name, "peak memory, upsample / none", f"{mm['ratio_upsample']:.3f}x", "", "")
            t.add_row(name, "extra MB: adjoint / upsample",
                      f"{mm['extra_mb_adjoint']:.0f} / {mm['extra_mb_upsample']:.0f}", "", "")
        d = r.get("dissect")
        if d:
            for c in ("collect_responses", "stream_float32", "stream_float64"):
                if c in d:
                    v = d[c]["ratio"]
                    t.add_row(name, f"dissection img/s / inference img/s ({c})",
                              f"{v:.3f}x [{d[c]['ratio_min']:.3f}, {d[c]['ratio_max']:.3f}]",
                              f">= {TARGETS['dissect']}x", fmt_status(v, TARGETS["dissect"], True))
        for key, label in (("ref_train", "speed-up vs reference, training term"),
                           ("ref_dissect", "speed-up vs reference, dissection stats")):
            c = r.get(key)
            if c:
                agree = "[green]agree[/green]" if c["check"]["ok"] else "[red]DISAGREE[/red]"
                t.add_row(name, label, f"{c['speedup']:.1f}x", f">= {TARGETS['speedup']:.0f}x",
                          fmt_status(c["speedup"], TARGETS["speedup"], True) + " " + agree)
    Console().print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (same setups)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of setups")
    p.add_argument("--parts", default="time,mem,dissect,ref_train,ref_dissect",
                   help="comma-separated subset of parts")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per setup")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice); children inherit it")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="wall: perf_counter; cpu: this thread's CPU time (use with --threads 1 on a "
                        "shared machine)")
    p.add_argument("--repeats", type=int, default=None, help="override every repeat count")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    TIMER["kind"] = args.timer
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    if args.mem_child:
        name, config = args.mem_child.split(":")
        print(json.dumps(mem_child(name, config, args.device)))
        return 0
    mode = "quick" if args.quick else "full"
    rep = json.loads(json.dumps(REPEATS[mode]))
    if args.repeats:
        rep["train"] = {k: args.repeats for k in rep["train"]}
        for k in ("dissect", "ref_train", "ref_dissect"):
            rep[k] = args.repeats
    parts = set(args.parts.split(","))
    started = time.time()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py"] + (argv or sys.argv[1:])),
        "mode": mode, "machine": machine(args.device), "targets": TARGETS, "timer": args.timer,
        "repeats": rep,
        "load_average_start": os.getloadavg(), "setups": {},
    }
    for name in args.setups.split(","):
        r: dict[str, Any] = {"setup": SETUPS[name]}
        results["setups"][name] = r
        print(f"[{time.time() - started:6.0f}s] {name}", flush=True)
        if "time" in parts:
            r["train_time"] = bench_train_time(name, rep["train"][name], args.device, args.quick)
            print(f"  train time {r['train_time']['step_s']}", flush=True)
        if "mem" in parts:
            r["train_mem"] = bench_train_mem(name, args.device)
            print(f"  train mem ratios {r['train_mem']['ratio_adjoint']:.3f} "
                  f"{r['train_mem']['ratio_upsample']:.3f}", flush=True)
        if "dissect" in parts:
            r["dissect"] = bench_dissect(name, rep["dissect_images"][name], rep["dissect"], args.device)
            print("  dissect ratios " + ", ".join(f"{c} {r['dissect'][c]['ratio']:.3f}" for c in
                  ("collect_responses", "stream_float32", "stream_float64")), flush=True)
        if "ref_train" in parts:
            r["ref_train"] = bench_reference_train(name, rep["ref_train"], args.device)
            print(f"  reference train {r['ref_train']['speedup']:.1f}x {r['ref_train']['check']}", flush=True)
        if "ref_dissect" in parts:
            r["ref_dissect"] = bench_reference_dissect(name, rep["dissect_images"][name],
                                                       rep["ref_dissect"], args.device)
            print(f"  reference dissect {r['ref_dissect']['speedup']:.1f}x {r['ref_dissect']['check']}",
                  flush=True)
        if args.profile:
            r["profile"] = profile_step(name, args.device)
            print(r["profile"], flush=True)
    results["load_average_end"] = os.getloadavg()
    results["wall_s"] = time.time() - started
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    report(results)
    print(f"wrote {args.out} in {results['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
