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
The setups and shared helpers live in ``common.py`` (re-exported here), the
dissection parts in ``dissect_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import depthsel  # noqa: E402
from depthsel.alignment import bin_counts, binned_sums  # noqa: E402

import reference_impl as ref  # noqa: E402
from common import *  # noqa: E402,F401,F403  (re-exported: scripts use run.make_batch etc.)
from common import (ALPHA, BETA, REPEATS, SETUPS, TARGETS, TIMER, Feed, build_model, capture,  # noqa: E402
                    layer_binners, machine, make_batch, make_regularizer, median,
                    peak_rss_mb, prime_adam, rel_err, sync, timed, train_step)
from dissect_bench import bench_dissect, bench_reference_dissect, stream_stats  # noqa: E402,F401



# ------------------------------------------------------- a. training overhead
CONFIGS = ("none", "adjoint", "upsample")


def bench_train_time(name: str, repeats: int, device: str, quick: bool = False,
                     configs: tuple[str, ...] = CONFIGS) -> dict[str, Any]:
    s = SETUPS[name]
    model = build_model(name).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    x, depth = make_batch(s["batch"], s["size"])
    x, depth = x.to(device), depth.to(device)
    regs = {c: None if c == "none" else make_regularizer(model, name, c) for c in configs}
    # Warm-up (allocator, kernels, Adam state, caches): one step per configuration,
    # or a single step with the regularizer in --quick.
    for c in (("adjoint",) if quick else configs):
        train_step(model, opt, x, depth, regs[c])
    times: dict[str, list[float]] = {c: [] for c in configs}
    n = len(configs)
    for r in range(repeats):
        for c in configs[r % n:] + configs[: r % n]:  # rotate, so no config always runs first
            times[c].append(timed(lambda c=c: train_step(model, opt, x, depth, regs[c]), device))
    out: dict[str, Any] = {"repeats": repeats, "step_s": {c: median(v) for c, v in times.items()},
                           "step_s_all": times}
    for c in configs[1:]:
        ratios = [a / b for a, b in zip(times[c], times["none"])]
        out[f"ratio_{c}"], out[f"ratio_{c}_all"] = median(ratios), ratios
    return out


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


# ------------------------------------------------------- c. reference comparison
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
            if "ratio_upsample" in tt:
                t.add_row(name, "train step time, upsample / none", f"{tt['ratio_upsample']:.3f}x", "", "")
            t.add_row(name, "train step (s): " + " / ".join(tt["step_s"]),
                      " / ".join(f"{v:.2f}" for v in tt["step_s"].values()), "", "")
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


def run_setup(name: str, parts: set[str], rep: dict[str, Any], device: str, quick: bool,
              profile: bool) -> dict[str, Any]:
    """Every requested part for one setup, printing each result as it comes."""
    r: dict[str, Any] = {"setup": SETUPS[name]}
    if "time" in parts:
        r["train_time"] = bench_train_time(name, rep["train"][name], device, quick,
                                           CONFIGS if "upsample" in parts else CONFIGS[:2])
        print(f"  train time {r['train_time']['step_s']}", flush=True)
    if "mem" in parts:
        r["train_mem"] = bench_train_mem(name, device)
        print(f"  train mem ratios {r['train_mem']['ratio_adjoint']:.3f} "
              f"{r['train_mem']['ratio_upsample']:.3f}", flush=True)
    if "dissect" in parts:
        r["dissect"] = bench_dissect(name, rep["dissect_images"][name], rep["dissect"], device)
        print("  dissect ratios " + ", ".join(f"{c} {r['dissect'][c]['ratio']:.3f}" for c in
              ("collect_responses", "stream_float32", "stream_float64")), flush=True)
    if "ref_train" in parts:
        r["ref_train"] = bench_reference_train(name, rep["ref_train"], device)
        print(f"  reference train {r['ref_train']['speedup']:.1f}x {r['ref_train']['check']}", flush=True)
    if "ref_dissect" in parts:
        r["ref_dissect"] = bench_reference_dissect(name, rep["dissect_images"][name], rep["ref_dissect"], device)
        print(f"  reference dissect {r['ref_dissect']['speedup']:.1f}x {r['ref_dissect']['check']}", flush=True)
    if profile:
        r["profile"] = profile_step(name, device)
        print(r["profile"], flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats (same setups)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of setups")
    p.add_argument("--parts", default="time,upsample,mem,dissect,ref_train,ref_dissect",
                   help="comma-separated subset of parts (upsample: time method='upsample' steps too)")
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
        print(f"[{time.time() - started:6.0f}s] {name}", flush=True)
        results["setups"][name] = run_setup(name, parts, rep, args.device, args.quick, args.profile)
    results["load_average_end"] = os.getloadavg()
    results["wall_s"] = time.time() - started
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    report(results)
    print(f"wrote {args.out} in {results['wall_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
