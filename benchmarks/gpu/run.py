"""depthsel's performance ratios on CUDA, the CUDA leak test and AMP training, in one script.

    python benchmarks/gpu/run.py                 # on a CUDA machine: the paper-sized setups
    python benchmarks/gpu/run.py --dry-run       # anywhere: CPU, small setups, one repeat

On CUDA it measures, for each setup of ``benchmarks/run.py`` (FastDepth b8
224x224, Hu MFF ResNet-50 b2 228x304, 64 SID bins):

1. the same ratios as ``benchmarks/run.py``: training-step time and peak
   ``max_memory_allocated`` with / without the regularizer, dissection
   throughput over plain ``no_grad`` inference, and the speed-ups over the
   published reference loops (with their float64 agreement checks);
2. the leak test of ``tests/reliability/test_leaks.py`` (300 regularized
   steps; ``torch.cuda.memory_allocated`` must stay flat, no hook may remain);
3. AMP training: steps under ``torch.autocast`` (float16 and a ``GradScaler``
   on CUDA) with / without the regularizer; every loss must be finite and the
   regularizer's statistics stay float32.

``--dry-run`` runs every part on the CPU at small sizes (bfloat16 autocast, no
scaler, the CPU leak test), to show the script works end to end where no GPU
is available; its numbers mean nothing. Results go to
``benchmarks/gpu/results-<device>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DRY_SETUPS = {"fastdepth": {"batch": 2, "size": [64, 64]},
              "hu_mff_resnet50": {"batch": 1, "size": [64, 80]}}


def _import_run(dry: bool) -> Any:
    """``benchmarks/run.py`` as a module (its setups shrunk for a dry run, children included)."""
    if dry:
        os.environ["DEPTHSEL_BENCH_SETUPS"] = json.dumps(DRY_SETUPS)
    sys.path.insert(0, str(HERE.parent))
    import run  # noqa: PLC0415

    return run


def ratios(run: Any, name: str, device: str, repeats: int, images: int) -> dict[str, Any]:
    """Part 1: the ratios of benchmarks/run.py on ``device``."""
    out: dict[str, Any] = {"setup": run.SETUPS[name]}
    out["train_time"] = run.bench_train_time(name, repeats, device)
    out["train_mem"] = run.bench_train_mem(name, device)
    out["dissect"] = run.bench_dissect(name, images, repeats, device)
    out["ref_train"] = run.bench_reference_train(name, repeats, device)
    out["ref_dissect"] = run.bench_reference_dissect(name, images, repeats, device)
    return out


def leak_test(device: str) -> dict[str, Any]:
    """Part 2: the leak test of tests/reliability/test_leaks.py on ``device``."""
    import torch

    spec = importlib.util.spec_from_file_location("depthsel_leaks", ROOT / "tests" / "reliability" / "test_leaks.py")
    assert spec is not None and spec.loader is not None
    leaks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(leaks)
    gc.collect()
    measure = leaks.cuda_rss_mb if device == "cuda" else leaks.rss_mb
    samples, model = leaks.run_steps(device, measure)
    early = float(sorted(samples[50:100])[25])
    late = float(sorted(samples[250:300])[25])
    ok = True
    try:
        leaks.assert_flat(samples)
        leaks.assert_no_hooks(model)
    except AssertionError:
        ok = False
    if device == "cuda":
        torch.cuda.synchronize()
    return {"steps": len(samples), "measure": "memory_allocated" if device == "cuda" else "rss",
            "early_median_mb": early, "late_median_mb": late, "bound_mb": leaks.BOUND_MB, "ok": ok}


def amp_training(run: Any, name: str, device: str, repeats: int) -> dict[str, Any]:
    """Part 3: regularized training under autocast, timed against plain autocast steps."""
    import torch

    s = run.SETUPS[name]
    model = run.build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if device == "cuda" else None
    x, depth = run.make_batch(s["batch"], s["size"])
    x, depth = x.to(device), depth.to(device)
    reg = run.make_regularizer(model, name, "adjoint")
    losses: list[float] = []
    stats_dtypes: set[str] = set()

    def step(use_reg: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=amp_dtype):
            if use_reg:
                with reg.attach():
                    pred = model(x)
                    term = reg.loss(depth)
                    stats_dtypes.add(str(term.dtype))
                    loss = run.criterion(pred.float(), depth) + term
            else:
                loss = run.criterion(model(x).float(), depth)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))

    step(False)
    step(True)
    times: dict[str, list[float]] = {"none": [], "adjoint": []}
    for r in range(repeats):
        for c in (("none", "adjoint") if r % 2 == 0 else ("adjoint", "none")):
            times[c].append(run.timed(lambda c=c: step(c == "adjoint"), device))
    ratio = [a / n for a, n in zip(times["adjoint"], times["none"])]
    return {"autocast_dtype": str(amp_dtype), "grad_scaler": scaler is not None, "repeats": repeats,
            "step_s": {k: run.median(v) for k, v in times.items()}, "ratio": run.median(ratio),
            "ratio_all": ratio, "all_losses_finite": all(math.isfinite(v) for v in losses),
            "regularizer_dtypes": sorted(stats_dtypes),
            "ok": all(math.isfinite(v) for v in losses) and stats_dtypes == {"torch.float32"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, small setups, one repeat: checks the script")
    p.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 7; 1 with --dry-run)")
    p.add_argument("--setups", default="fastdepth,hu_mff_resnet50")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    run = _import_run(args.dry_run)
    import torch

    if args.dry_run:
        device, repeats, images = "cpu", args.repeats or 1, {"fastdepth": 4, "hu_mff_resnet50": 2}
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA device; run with --dry-run to check the script on the CPU")
        device, repeats, images = "cuda", args.repeats or 7, {"fastdepth": 64, "hu_mff_resnet50": 16}
    card = torch.cuda.get_device_name(0) if device == "cuda" else "cpu-dry-run"
    started = time.time()
    res: dict[str, Any] = {"command": " ".join(["python", "benchmarks/gpu/run.py"] + (argv or sys.argv[1:])),
                           "dry_run": args.dry_run, "machine": run.machine(device), "card": card,
                           "repeats": repeats, "setups": {}}
    for name in args.setups.split(","):
        print(f"[{time.time() - started:6.0f}s] {name}: ratios", flush=True)
        r = ratios(run, name, device, repeats, images[name])
        print(f"[{time.time() - started:6.0f}s] {name}: AMP training", flush=True)
        r["amp"] = amp_training(run, name, device, repeats)
        res["setups"][name] = r
    print(f"[{time.time() - started:6.0f}s] leak test", flush=True)
    res["leak"] = leak_test(device)
    res["wall_s"] = time.time() - started
    out = Path(args.out) if args.out else HERE / f"results-{re.sub(r'[^A-Za-z0-9]+', '-', card).strip('-')}.json"
    out.write_text(json.dumps(res, indent=2, default=str))
    run.report({"machine": res["machine"], "setups": res["setups"]})
    for name, r in res["setups"].items():
        a = r["amp"]
        print(f"{name}: AMP ({a['autocast_dtype']}) step ratio {a['ratio']:.3f}x, ok={a['ok']}")
    print(f"leak test: {res['leak']['early_median_mb']:.1f} -> {res['leak']['late_median_mb']:.1f} MB "
          f"({res['leak']['measure']}), ok={res['leak']['ok']}")
    print(f"wrote {out} in {res['wall_s']:.0f}s")
    ok = res["leak"]["ok"] and all(r["amp"]["ok"] and r["ref_train"]["check"]["ok"]
                                   and r["ref_dissect"]["check"]["ok"] for r in res["setups"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
