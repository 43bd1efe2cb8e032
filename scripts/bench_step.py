#!/usr/bin/env python
"""Time one training step of SGD / SAM / ImbSAM / CC-SAM / Focal-SAM (or any optimizer) on the same model and batches.

    python scripts/bench_step.py                                  # CIFAR-10-LT rows, ResNet-32, this machine
    python scripts/bench_step.py --dataset cifar100_lt --steps 20
    python scripts/bench_step.py --dataset imagenet_lt --batch 128 --set train.amp=bf16   # on a GPU
    python scripts/bench_step.py --optimizers sam,focal_sam --also optim.clean_backward=batched   # extra rows
    python scripts/bench_step.py --config-dir configs/sam_family/cifar10_lt --baseline sgd   # every SAM-family row
    python scripts/bench_step.py --optimizers sgd,focal_sam,gsam --baseline sgd --also optim.perturb=asam

Each optimizer is built from the config `la_<optimizer>.yaml` of `--config-dir` (default the paper
configs, `configs/<dataset>/`; so the hyper-parameters are the rows' own; a registered optimizer
name without such a file runs la_sgd.yaml with `optim.name=<name>`, i.e. its defaults; `--optimizers
all`: every optimizer of the registry `optim.OPTIMIZERS` and every la_*.yaml of the folder; `--also
optim.perturb=asam` adds the composed row of each optimizer with a perturbation rule), on a copy
of one initial model, and steps through the same list of batches whose labels follow the training
class counts (ImbSAM skips the perturbed pass on batches without a tail sample, as in training);
the optimizers take turns step by step. SGD and the `--baseline` (default SAM; paper Table 1:
Focal-SAM 1.36x SAM on CIFAR-10-LT) are always among the rows, so every ratio divides two timings
of the same run. Per row, this (step) mode returns, and `--json` records, exactly:
`seconds_per_step` (the mean over the `--steps` timed steps), `median_seconds_per_step`,
`best_seconds_per_step` (the fastest step), `seconds_per_epoch` (the mean times the steps of one
epoch) and `peak_gib` (peak GPU memory of two steps; null on a CPU). The printed table shows the
mean, its ratio to SGD's mean, its ratio to the baseline's mean, the seconds per epoch (training
steps only: no data loading, no evaluation) and, on a GPU, the peak GiB.
A benchmark, not a test: the figures depend on the machine and what else runs on it.

Two more modes run the real training path (the run's loaders, `train_one_epoch`, `evaluate`):

    python scripts/bench_step.py --mode epoch --set data.root=DIR        # one real epoch per optimizer
    python scripts/bench_step.py --mode throughput --runs 1,2,4,8,16     # N runs at once on one device

`epoch`: train + test seconds of the last of `--epochs` epochs per optimizer (one optimizer after
the other, not interleaved), the ratio to the baseline's, and the paper's Table 1 (RTX 3090)
beside them; with train.max_steps_per_epoch set, the training part is extrapolated to the full
epoch (said so in the table); per row it returns `train_s`, `test_s`, `timed_steps` and
`steps_per_epoch`. `throughput`: N runs of the first optimizer on the real data path, as N
processes and as one process training them stacked (`train.py --seeds`; `--pack`), warm up, start
together and time `--steps` steps; prints run-steps/s of the device, runs per hour and the hours
for the CIFAR tables' runs, a PROJECTION from those steps (training steps only, no evaluation);
per (runs, packing) it returns `runs`, `pack`, `steps_per_s`, `runs_per_hour` and `table_hours`.
The `--json` file holds `device`, `dataset`, `mode`, `batch`, `baseline` and these `rows`.
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import torch

import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser, at_least
from core.errors import ConfigError, UserError
from engine.build import build_run
from engine.cli import check_report_path, user_errors
from engine.config import load_config
from engine.distributed import DistInfo, pick_device
from engine.report import write_json
from engine.loaders import eval_loader, train_loader
from engine.group import build_group, train_batches
from engine.evaluation import evaluate
from engine.trainer import make_stepper, start_epoch_setup, train_one_epoch, wrap_model
from optim import OPTIMIZERS as OPTIMIZER_REGISTRY

OPTIMIZERS = ["sgd", "sam", "imbsam", "cc_sam", "focal_sam"]
DATASETS = ["cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paper Table 1, seconds per epoch on an RTX 3090 (CIFAR-10-LT, CIFAR-100-LT, ImageNet-LT, iNaturalist).
PAPER_TABLE1 = {"sam": (5.66, 4.81, 170, 832), "imbsam": (7.80, 6.68, 293, 1089),
                "cc_sam": (11.6, 19.7, 1627, 12870), "focal_sam": (7.67, 6.71, 291, 1069)}
CIFAR_TABLE_RUNS = 480      # Tables 2, 5, 6: 160 CIFAR ResNet-32 rows x 3 seeds, 200 epochs each


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
    info = DistInfo(device=device)
    net = wrap_model(run.model.train(), cfg, info)   # train.compile, as in training
    return net, run.criterion, make_stepper(run.optimizer, cfg, info)   # and train.capture


def time_optimizers(cfgs, model0, batches, warmup, device):
    """(mean, median, best) seconds per step of each optimizer, the optimizers interleaved step by step
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


def config_names(folder: str) -> list:
    """The rows a config folder offers: <name> of each la_<name>.yaml."""
    return sorted(f[3:-5] for f in os.listdir(folder) if f.startswith("la_") and f.endswith(".yaml"))


def row_source(folder: str, name: str) -> tuple:
    """(label, config path, its own overrides) of one row: la_<name>.yaml of the folder, or, for a
    registered optimizer without one, la_sgd.yaml run as that optimizer with its defaults."""
    path = os.path.join(folder, f"la_{name}.yaml")
    if os.path.isfile(path):
        return name, path, []
    if name in OPTIMIZER_REGISTRY and os.path.isfile(os.path.join(folder, "la_sgd.yaml")):
        return f"{name} (defaults)", os.path.join(folder, "la_sgd.yaml"), [f"optim.name={name}"]
    raise UserError(f"--optimizers / --baseline {name}: no {os.path.relpath(path, ROOT)} and no registered optimizer of that "
                    f"name; rows there: {', '.join(config_names(folder))}")


def row_configs(folder: str, optimizers, overrides, also) -> dict:
    """{row label: config}: each optimizer's config in `folder`, plus one row per `--also`
    override that the optimizer reads (label "focal_sam +optim.clean_backward=batched")."""
    cfgs = {}
    for n in optimizers:
        label, path, own = row_source(folder, n)
        cfgs[label] = load_config(path, own + overrides)
        for extra in also:
            try:
                cfgs[f"{label} +{extra}"] = load_config(path, own + overrides + [extra])
            except ConfigError:      # an option this optimizer does not have: no row
                pass
    return cfgs


# ------------------------------------------------------------------------------ --mode epoch
def real_run(cfg, device):
    """(run, training module, train loader, test loader) on the run's real data path."""
    info = DistInfo(device=device)
    run = build_run(cfg, device)
    net = wrap_model(run.model, cfg, info)      # train.compile applies here, as in training
    train_dl = train_loader(run.splits.train, cfg.train.batch_size, info, cfg.seed, cfg.data, cfg.train.drop_last)
    return run, net, train_dl, eval_loader(run.splits.test, cfg.train.eval_batch_size, info, cfg.data), info


def time_epochs(cfg, device, epochs: int) -> dict:
    """Train and test seconds of the last of `epochs` epochs (the earlier ones warm up)."""
    run, net, train_dl, test_dl, info = real_run(cfg, device)
    stepper = make_stepper(run.optimizer, cfg, info)
    for epoch in range(epochs):
        sync(device)
        t0 = time.perf_counter()     # the trainer's own epoch start (it includes resetting a captured step)
        start_epoch_setup(epoch, run.epoch_values, run.optimizer, run.criterion, train_dl, [run.splits.train], stepper)
        train_one_epoch(net, stepper, run.criterion, train_dl, epoch, cfg.train, info)
        sync(device)
        t1 = time.perf_counter()
        evaluate(run.model, test_dl, info, run.class_counts, cfg.data, cfg.train.amp)
        sync(device)
        t2 = time.perf_counter()
    steps = min(len(train_dl), cfg.train.max_steps_per_epoch or len(train_dl))
    return {"train_s": (t1 - t0) * len(train_dl) / steps, "test_s": t2 - t1, "timed_steps": steps,
            "steps_per_epoch": len(train_dl)}


def epoch_mode(args, cfgs, device) -> dict:
    rows = {n: time_epochs(cfg, device, args.epochs) for n, cfg in cfgs.items()}
    col = DATASETS.index(args.dataset)
    ref = rows[row_label(rows, args.baseline)]
    ref_total = ref.get("train_s", 0) + ref.get("test_s", 0)
    first = next(iter(rows.values()))
    cut = first["timed_steps"] < first["steps_per_epoch"]
    print(f"{describe_device(device)}, {args.dataset}, real data path, epoch {args.epochs} of {args.epochs} timed"
          + (f"; training EXTRAPOLATED from {first['timed_steps']} of {first['steps_per_epoch']} steps" if cut else ""))
    print(f"| optimizer | train s | test s | s/epoch | x {args.baseline} | paper s/epoch (RTX 3090) | paper x SAM |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        total = r["train_s"] + r["test_s"]
        base = n.split(" ")[0]
        paper = PAPER_TABLE1.get(base, (None,) * 4)[col]
        ratio = f"{total / ref_total:.2f}" if ref_total else "n/a"
        pratio = f"{paper / PAPER_TABLE1['sam'][col]:.2f}" if paper else "-"
        print(f"| {n} | {r['train_s']:.2f} | {r['test_s']:.2f} | {total:.2f} | {ratio} | {paper or '-'} | {pratio} |")
    return rows


# ------------------------------------------------------------------------------ --mode throughput
def worker_mode(args, cfgs, device) -> None:
    """`--members` runs of the first config (seeds 0..N-1) in this process, as `train.py --seeds`
    trains them (stacked when N > 1): warm up, say "ready", wait for "go", time --steps steps."""
    cfg = next(iter(cfgs.values()))
    info = DistInfo(device=device)
    group = build_group([dataclasses.replace(cfg, seed=s) for s in range(args.members)], device)
    net = wrap_model(group.model, cfg, info)
    train_dl = train_batches(group, info)
    group.epoch_values.apply(0, group.optimizer, group.criterion)
    stepper = make_stepper(group.optimizer, cfg, info)
    batches = iter(cycle(train_dl))
    for _ in range(args.warmup):
        stepper.step(net, *next_on(batches, device), group.criterion)
    sync(device)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        stepper.step(net, *next_on(batches, device), group.criterion)
    sync(device)
    print(json.dumps({"seconds": time.perf_counter() - t0, "steps": args.steps * args.members,
                      "steps_per_epoch": len(train_dl), "epochs": cfg.train.epochs}), flush=True)


def cycle(loader):
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def next_on(batches, device):
    x, y = next(batches)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def concurrent(args, n: int, pack: str) -> list:
    """n runs: n worker processes of one run each ("process"), or one process training the n
    runs stacked ("stacked"); release them together once all are warm, return their reports."""
    procs_n, members = (n, 1) if pack == "process" else (1, n)
    threads = max(1, (os.cpu_count() or 1) // procs_n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", "worker", "--dataset", args.dataset,
           "--config-dir", args.config_dir, "--optimizers", args.optimizers[0], "--steps", str(args.steps),
           "--warmup", str(args.warmup),
           "--members", str(members), "--device", args.device] + [a for kv in args.set for a in ("--set", kv)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(procs_n)]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"a benchmark worker failed before warming up (exit {p.wait()})")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return reports


def throughput_mode(args, cfgs, device) -> dict:
    rows = {}
    for n in [int(v) for v in args.runs.split(",")]:
        for pack in args.pack.split(","):
            if n == 1 and pack == "stacked" and "process" in args.pack:
                continue   # one run: both packings are the same process
            reports = concurrent(args, n, pack)
            wall = max(r["seconds"] for r in reports)
            steps_s = sum(r["steps"] for r in reports) / wall
            run_steps = reports[0]["steps_per_epoch"] * reports[0]["epochs"]
            per_hour = steps_s * 3600 / run_steps
            rows[f"{n} {pack}"] = {"runs": n, "pack": pack, "steps_per_s": steps_s, "runs_per_hour": per_hour,
                                   "table_hours": CIFAR_TABLE_RUNS / per_hour}
    print(f"{describe_device(device)}, {args.dataset}, {args.optimizers[0]}, {args.steps} timed steps per "
          f"process after {args.warmup} warm-up steps; runs/hour and table hours are a PROJECTION (training steps "
          "only); process: N processes of one run, stacked: one process training the N runs together")
    print(f"| runs | packing | run-steps/s (all) | runs/hour (projected) | {CIFAR_TABLE_RUNS} runs, hours (projected) |")
    print("|---|---|---|---|---|")
    for r in rows.values():
        print(f"| {r['runs']} | {r['pack']} | {r['steps_per_s']:.2f} | {r['runs_per_hour']:.3f} | {r['table_hours']:.0f} |")
    return rows


def describe_device(device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    return f"device {device} ({name}), torch {torch.__version__}"


# ------------------------------------------------------------------------------ --mode step
def step_mode(args, cfgs, device) -> dict:
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
    refs = list(dict.fromkeys(["sgd", args.baseline]))       # both timed in this run (choose_rows)
    print(f"{describe_device(device)}, {args.dataset}, {first.model.name}, batch {batch}, amp {first.train.amp}, "
          f"{args.steps} timed steps each (mean), optimizers interleaved step by step")
    print("| optimizer | s/step | " + " | ".join(f"x {r}" for r in refs) + f" | s/epoch ({steps_per_epoch} steps) |"
          + (" peak GiB |" if device.type == "cuda" else ""))
    print("|---|---|" + "---|" * len(refs) + "---|" + ("---|" if device.type == "cuda" else ""))
    for n, r in rows.items():
        ratios = [f"{r['seconds_per_step'] / rows[row_label(rows, ref)]['seconds_per_step']:.2f}" for ref in refs]
        mem = f" {r['peak_gib']:.2f} |" if r["peak_gib"] is not None else ""
        print(f"| {n} | {r['seconds_per_step']:.4f} | " + " | ".join(ratios) + f" | {r['seconds_per_epoch']:.1f} |{mem}")
    return rows


def row_label(rows: dict, name: str) -> str:
    """The row of optimizer `name` ("gsam" or, run with its defaults, "gsam (defaults)")."""
    return next(k for k in rows if k.split(" ")[0] == name)


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10_lt", choices=DATASETS)
    ap.add_argument("--config-dir", help="folder of la_<optimizer>.yaml configs (default configs/<dataset>; "
                                         "the SAM family: configs/sam_family/<dataset>)")
    ap.add_argument("--optimizers", type=optimizer_names,
                    help=f"comma-separated la_<name>.yaml of --config-dir, or registered optimizer names (their defaults), "
                         f"or 'all' (every registered optimizer and every la_*.yaml of the folder); "
                         f"default {','.join(OPTIMIZERS)}, or every la_*.yaml of a --config-dir given")
    ap.add_argument("--baseline", default="sam", type=baseline_name,
                    help="the row the ratios divide by, timed in the same run (default sam; the SAM family: sgd); "
                         "the step mode also divides by sgd")
    ap.add_argument("--batch", type=at_least(1), help="per-step batch (default: the config's train.batch_size)")
    ap.add_argument("--steps", type=at_least(1), default=10, help="timed steps per optimizer")
    ap.add_argument("--warmup", type=at_least(0), default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every row")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra row per optimizer that reads KEY, with this override (timed in the same rotation)")
    ap.add_argument("--mode", default="step", choices=["step", "epoch", "throughput", "worker"],
                    help="step: synthetic batches, interleaved; epoch: real epochs; throughput: N concurrent runs")
    ap.add_argument("--epochs", type=at_least(1), default=1, help="--mode epoch: epochs per optimizer, the last one timed")
    ap.add_argument("--runs", default="1,2,4,8,16", help="--mode throughput: numbers of concurrent runs")
    ap.add_argument("--pack", default="process,stacked", type=pack_names,
                    help="--mode throughput: how N runs share the device: process (N processes), stacked "
                         "(one process, train.py --seeds), or both")
    ap.add_argument("--members", type=at_least(1), default=1, help=argparse.SUPPRESS)   # worker: runs in it
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    with user_errors():
        run_benchmark(args)


def pack_names(text: str) -> str:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in ("process", "stacked") for n in names):
        raise argparse.ArgumentTypeError(f"expected process, stacked or process,stacked, got {text!r}")
    return ",".join(names)


def optimizer_names(text: str) -> list:
    """argparse type of --optimizers: comma-separated names (each checked against the config folder)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(not n.replace("_", "").isalnum() for n in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names such as sgd,sam,focal_sam, got {text!r}")
    return names


def baseline_name(text: str) -> str:
    """argparse type of --baseline: one name as --optimizers takes them."""
    names = optimizer_names(text)
    if len(names) != 1 or names == ["all"]:
        raise argparse.ArgumentTypeError(f"expected one optimizer name such as sgd or sam, got {text!r}")
    return names[0]


def choose_rows(args) -> None:
    """--config-dir (absolute) and --optimizers (default: Table 1's five in the paper configs,
    every la_*.yaml of a folder given; `all`: all_rows), SGD and the baseline first in the step
    mode (the baseline in the epoch mode)."""
    given = args.config_dir is not None
    args.config_dir = os.path.abspath(args.config_dir or os.path.join(ROOT, "configs", args.dataset))
    if not os.path.isdir(args.config_dir):
        raise UserError(f"--config-dir {args.config_dir} is not a folder of la_<optimizer>.yaml configs")
    names = args.optimizers or (config_names(args.config_dir) if given else OPTIMIZERS)
    names = [m for n in names for m in (all_rows(args.config_dir) if n == "all" else [n])]
    first = {"step": ["sgd", args.baseline], "epoch": [args.baseline]}.get(args.mode, [])
    names = list(dict.fromkeys(first + names))    # the ratios' denominators, timed in the same run
    args.optimizers = names


def all_rows(folder: str) -> list:
    """`--optimizers all`: every registered optimizer (optim.OPTIMIZERS), then every other
    la_<name>.yaml of the folder (composed rows such as focal_sam_asam)."""
    return list(dict.fromkeys(list(OPTIMIZER_REGISTRY) + config_names(folder)))


def run_benchmark(args) -> None:
    if args.json:
        check_report_path(args.json, "", "--json")   # before the minutes of timing
    choose_rows(args)
    device = pick_device(args.device, option="--device")
    cfgs = row_configs(args.config_dir, args.optimizers, args.set, args.also)
    modes = {"step": step_mode, "epoch": epoch_mode, "throughput": throughput_mode, "worker": worker_mode}
    rows = modes[args.mode](args, cfgs, device)
    if args.json and rows is not None:
        batch = args.batch or next(iter(cfgs.values())).train.batch_size
        write_json(args.json, {"device": str(device), "dataset": args.dataset, "mode": args.mode, "batch": batch,
                               "baseline": args.baseline, "rows": rows})


if __name__ == "__main__":
    main()
