#!/usr/bin/env python
"""Time one training step of SGD / SAM / ImbSAM / CC-SAM / Focal-SAM on the same model and batches.

    python scripts/bench_step.py                                  # CIFAR-10-LT rows, ResNet-32, this machine
    python scripts/bench_step.py --dataset cifar100_lt --steps 20
    python scripts/bench_step.py --dataset imagenet_lt --batch 128 --set train.amp=bf16   # on a GPU
    python scripts/bench_step.py --optimizers sam,focal_sam --also optim.clean_backward=batched   # extra rows

Each optimizer is built from the paper config `configs/<dataset>/la_<optimizer>.yaml` (so the
hyper-parameters are the rows' own), on a copy of one initial model, and steps through the same
list of batches whose labels follow the training class counts (ImbSAM skips the perturbed pass
on batches without a tail sample, as in training); the optimizers take turns step by step. Prints
the mean seconds per step, the ratio to SAM (paper Table 1: Focal-SAM 1.36x SAM on CIFAR-10-LT)
and the implied seconds per epoch (training steps only: no data loading, no evaluation).
A benchmark, not a test: the figures depend on the machine and what else runs on it.
"""
import argparse
import json
import os
import statistics
import time

import torch

from core.errors import ConfigError
from engine.build import build_run
from engine.config import load_config
from engine.distributed import pick_device

OPTIMIZERS = ["sgd", "sam", "imbsam", "cc_sam", "focal_sam"]
DATASETS = ["cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(counts, n, batch, size, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    out = []
    for _ in range(n):
        y = torch.multinomial(probs, batch, replacement=True, generator=g)
        x = torch.randn(batch, 3, size, size, generator=g)
        out.append((x.to(device), y.to(device)))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg, model0, device):
    """(model, criterion, optimizer) of the row's run, on a copy of the shared initial weights."""
    run = build_run(cfg, device, load_data=False)
    run.model.load_state_dict(model0.state_dict())
    return run.model.train(), run.criterion, run.optimizer


def time_optimizers(cfgs, model0, batches, warmup, device):
    """Median / best seconds per step of each optimizer, the optimizers interleaved step by step
    (A B C A B C ...): a drift of the machine's speed (clock, caches, other load) then falls on
    every optimizer alike instead of on whichever ran during it."""
    runs = {}
    for name, cfg in cfgs.items():
        runs[name] = (*build(cfg, model0, device), [])
    for i in range(warmup + len(batches)):
        x, y = batches[i % len(batches)]
        for name, (model, criterion, opt, times) in runs.items():
            sync(device)
            t0 = time.perf_counter()
            opt.step(model, x, y, criterion)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    # The mean, not the median: an epoch costs the sum of its steps, and ImbSAM's steps are
    # bimodal (batches without a tail sample skip the perturbed pass).
    return {n: (statistics.fmean(t), statistics.median(t), min(t)) for n, (_, _, _, t) in runs.items()}


def peak_memory(cfg, model0, batch, device):
    """Peak GPU memory (GiB) of two steps of this optimizer with only its own model resident;
    None on the CPU. Run after the timing, one optimizer at a time."""
    if device.type != "cuda":
        return None
    model, criterion, opt = build(cfg, model0, device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        opt.step(model, *batch, criterion)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    del model, criterion, opt
    torch.cuda.empty_cache()
    return peak


def row_configs(dataset: str, optimizers, overrides, also) -> dict:
    """{row label: config}: each optimizer's paper config, plus one row per `--also` override
    that the optimizer reads (label "focal_sam +optim.clean_backward=batched")."""
    cfgs = {}
    for n in optimizers:
        path = os.path.join(ROOT, "configs", dataset, f"la_{n}.yaml")
        cfgs[n] = load_config(path, overrides)
        for extra in also:
            try:
                cfgs[f"{n} +{extra}"] = load_config(path, overrides + [extra])
            except ConfigError:      # an option this optimizer does not have: no row
                pass
    return cfgs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10_lt", choices=DATASETS)
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--batch", type=int, help="per-step batch (default: the config's train.batch_size)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per optimizer")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra row per optimizer that reads KEY, with this override (timed in the same rotation)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    device = pick_device(args.device)
    cfgs = row_configs(args.dataset, args.optimizers.split(","), args.set, args.also)
    names = list(cfgs)
    first = cfgs[names[0]]
    run0 = build_run(first, device, load_data=False)
    counts, model0 = run0.class_counts, run0.model
    batch = args.batch or first.train.batch_size
    # CIFAR images are 32 px; the list datasets (and the synthetic stand-in of smoke runs) crop
    # to the config's data.image_size.
    size = 32 if first.data.name.startswith("cifar") else first.data.image_size
    batches = make_batches(counts, args.steps, batch, size, device)
    steps_per_epoch = -(-sum(counts) // batch)
    timed = time_optimizers(cfgs, model0, batches, args.warmup, device)
    rows = {}
    for n in names:
        mean, med, best = timed[n]
        rows[n] = {"seconds_per_step": mean, "median_seconds_per_step": med, "best_seconds_per_step": best,
                   "peak_gib": peak_memory(cfgs[n], model0, batches[0], device),
                   "seconds_per_epoch": mean * steps_per_epoch}
    ref = rows.get("sam", {}).get("seconds_per_step")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}, {args.dataset}, {first.model.name}, batch {batch}, amp {first.train.amp}, "
          f"{args.steps} timed steps each (mean), optimizers interleaved step by step")
    print(f"| optimizer | s/step | x SAM | s/epoch ({steps_per_epoch} steps) |" + (" peak GiB |" if device.type == "cuda" else ""))
    print("|---|---|---|---|" + ("---|" if device.type == "cuda" else ""))
    for n, r in rows.items():
        ratio = f"{r['seconds_per_step'] / ref:.2f}" if ref else "n/a"
        mem = f" {r['peak_gib']:.2f} |" if r["peak_gib"] is not None else ""
        print(f"| {n} | {r['seconds_per_step']:.4f} | {ratio} | {r['seconds_per_epoch']:.1f} |{mem}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "dataset": args.dataset, "batch": batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
