"""Shared pieces of depthsel's benchmarks: the paper setups, seeded data, timing and capture helpers.

``benchmarks/run.py`` re-exports every name here, so scripts that import
``run`` (the GPU script, ``proposals.py``, ``breakdown.py``, ...) keep working.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import depthsel
import depthsel.kernels
import depthsel.testing

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


def cpu_median(fn: Callable[[], Any], repeats: int) -> float:
    """Median CPU seconds of this thread over ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    xs = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        xs.append(time.thread_time() - t)
    return median(xs)


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
        # CPU statistics: numba loops or torch operations (DEPTHSEL_KERNELS, depthsel.kernels).
        "kernels": depthsel.kernels.backend(),
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


def shared_binners(binners: dict[str, Any]) -> dict[str, Any]:
    """One binner object per distinct configuration, so that layers with equal bins bin once."""
    seen: dict[str, Any] = {}
    return {l: seen.setdefault(json.dumps(b.config(), sort_keys=True), b) for l, b in binners.items()}


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


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))
