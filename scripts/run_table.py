#!/usr/bin/env python
"""Run the runs of one or more paper tables (repro/tables.yaml); called by scripts/table*.sh.

    python scripts/run_table.py --table 5 --dry-run              # list the runs and their state
    python scripts/run_table.py --table 5 --seeds "0 1 2" --gpus "0 1" --runs-per-gpu 4
    python scripts/run_table.py --table 2 --smoke --seeds 0      # synthetic data, 2 tiny epochs
    python scripts/run_table.py --table 5 --stack-seeds          # a row's seeds in one process
    python scripts/run_table.py --table 9 --table 10 --rows '^LA[+]SAM$'   # tables together; rows by name
    python scripts/run_table.py --table 5 --launcher slurm --partition gpu   # one SLURM job per run
    python scripts/run_table.py --table 5 --launcher slurm --partition gpu   # later: what finished, the rest's state

Finished runs are skipped and half-finished ones resumed, so a table fills over several sittings;
a failed run is reported at the end (exit 1) and does not stop the others. Then
`python scripts/make_tables.py --table N` prints the table beside the paper's numbers.
With --launcher slurm (repro/slurm.py, docs/clusters.md) each run, or each row's seeds trained
together, is a SLURM job; --wait blocks until they all end.
"""
import argparse
import dataclasses
import glob
import os
import re
import shlex
import sys
import time


import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser, at_least, positive_seconds
from core.errors import UserError
from engine.cli import user_errors
from repro import runner, spec


def detect_gpus(text: str) -> list:
    text = (text or "all").replace(",", " ").strip()
    if text == "cpu":
        return ["cpu"]
    if text != "all":
        return text.split()
    import torch
    n = torch.cuda.device_count()
    return [str(i) for i in range(n)] if n else ["cpu"]


def check_arguments(args, runs) -> None:
    """Refuse, before anything is launched, arguments that would fail every run or never schedule
    one (a negative share of a GPU, a GPU listed twice: the scheduler would wait forever), and
    check each run's config with its --set overrides and seed once."""
    from core.errors import UserError
    from engine.config import load_config
    if os.path.exists(args.out_root or "") and not os.path.isdir(args.out_root):
        raise UserError(f"--out-root {args.out_root} is a file; give a folder for the runs")
    if args.runs_per_gpu < 0 or args.procs_per_run < 0:
        raise UserError("--runs-per-gpu and --procs-per-run must be >= 0 (0: the default)")
    gpus = (args.gpus or "all").replace(",", " ").split()
    if gpus not in (["all"], ["cpu"]):
        if not all(g.isdigit() for g in gpus) or len(set(gpus)) != len(gpus):
            raise UserError(f"--gpus {args.gpus!r}: give 'all', 'cpu', or distinct GPU ids such as '0 1'")
    for config, sets, seed, names in sorted({(r.config, r.sets, r.seed, r.optimizers) for r in runs}):
        full = os.path.join(spec.ROOT, config)
        for path in bench_configs(full, names) if os.path.isdir(full) else [full]:
            try:
                load_config(path, [f"seed={seed}", *sets])
            except UserError as e:
                given = f" with --set {' '.join(args.set)}" if args.set else ""
                raise UserError(f"{os.path.relpath(path, spec.ROOT)}{given}: {e}; nothing was launched") from None


def bench_configs(folder: str, names) -> list:
    """The configs a benchmark run of a config folder times: la_<name>.yaml of `names`, or every
    la_*.yaml (Table 1's runs time bench_step's default rows from there)."""
    if names:
        return [os.path.join(folder, f"la_{n}.yaml") for n in names]
    return sorted(glob.glob(os.path.join(folder, "la_*.yaml")))


def execute_local(args, runs, out_root, bench_args, stack_seeds) -> dict:
    """Benchmarks first, one at a time on the first device (timings want it to themselves), then
    the training runs on every device."""
    devices = detect_gpus(args.gpus)
    per = args.runs_per_gpu or (1 if devices == ["cpu"] else 4)
    result = {"done": [], "skipped": [], "failed": []}
    for kind, slots in (("bench", runner.Slots(devices[:1], 1)), ("train", runner.Slots(devices, per))):
        part = [r for r in runs if r.kind == kind]
        if part:
            got = runner.execute(part, out_root, slots, bench_args=bench_args, stack_seeds=stack_seeds and kind == "train")
            result = {k: result[k] + got[k] for k in result}
    return result


def wandb_groups(runs) -> list:
    """Runs that log to W&B (train.loggers) are grouped by table cell, i.e. a row's seeds, unless
    their config or --set names a group (train.wandb_group)."""
    from engine.config import load_config
    grouped, out = {}, []
    for r in runs:
        if r.kind == "train" and (r.config, r.sets) not in grouped:
            t = load_config(os.path.join(spec.ROOT, r.config), list(r.sets)).train
            grouped[r.config, r.sets] = "wandb" in t.loggers and t.wandb_group is None
        if r.kind == "train" and grouped[r.config, r.sets]:
            cell = os.path.dirname(r.key) if os.path.basename(r.key) == f"seed{r.seed}" else r.key
            r = dataclasses.replace(r, sets=r.sets + (f"train.wandb_group={cell}",))
        out.append(r)
    return out


SLURM_OPTIONS = ("partition", "time", "gpus_per_node", "cpus_per_gpu", "mem_per_gpu", "sbatch", "wait", "retry_failed")


def slurm_arguments(ap) -> None:
    """The options of --launcher slurm (defaults per dataset: repro/slurm.py DEFAULTS)."""
    g = ap.add_argument_group("--launcher slurm (docs/clusters.md)")
    g.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: processes on this machine's GPUs (default); slurm: one SLURM job per run (submitit)")
    g.add_argument("--partition", help="SLURM partition (default: the cluster's default partition)")
    g.add_argument("--time", help="time limit per job, minutes or [D-]HH:MM:SS (default per dataset: 4 h CIFAR, "
                                  "24 h ImageNet-LT / iNaturalist); a job that reaches it is requeued and resumes")
    g.add_argument("--gpus-per-node", type=at_least(0), help="GPUs per node (default: the run's processes on one "
                                                              "node); fewer spreads a multi-GPU run over nodes; 0: CPU-only jobs")
    g.add_argument("--cpus-per-gpu", type=at_least(1), help="CPUs per GPU (or CPU process); default per dataset")
    g.add_argument("--mem-per-gpu", type=at_least(1), metavar="GB", help="memory per GPU (or CPU process), GB; default per dataset")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option for every job, e.g. --sbatch account=myproj --sbatch qos=high")
    g.add_argument("--wait", action="store_true", help="block until every job has ended, then print the report")
    g.add_argument("--retry-failed", action="store_true", help="submit the runs whose job failed again")
    g.add_argument("--poll", type=positive_seconds, default=30.0, help=argparse.SUPPRESS)  # seconds between squeue calls with --wait


def check_launcher_arguments(args) -> None:
    """Options of the other launcher are refused rather than ignored."""
    if args.launcher == "local":
        given = [o for o in SLURM_OPTIONS if getattr(args, o) not in (None, False, [])]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is an option of --launcher slurm")
    elif args.gpus not in ("all", None) or args.runs_per_gpu:
        raise UserError("--gpus and --runs-per-gpu place runs on this machine's GPUs; with --launcher slurm "
                        "give --gpus-per-node")


def slurm_options(args):
    from repro import slurm
    extra = []
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.strip().lstrip("-") in ("array", "output", "error", "signal"):
            raise UserError(f"--sbatch {item!r}: give KEY=VALUE of an sbatch option (not array, output, error, signal)")
        extra.append((key.strip().lstrip("-"), value))
    time_min = slurm.parse_time(args.time) if args.time is not None else None
    return slurm.Options(partition=args.partition, time_min=time_min, gpus_per_node=args.gpus_per_node,
                         cpus_per_gpu=args.cpus_per_gpu, mem_per_gpu_gb=args.mem_per_gpu, extra=tuple(extra),
                         job_name="lt-sam-t" + "-".join(args.table))


def run_facts(runs) -> dict:
    """{run key: (dataset, optimizer, model)} from each run's resolved config (bench runs: the
    dataset their folder names)."""
    from engine.config import load_config
    facts = {}
    for r in runs:
        if r.kind == "bench":
            facts[r.key] = (os.path.basename(r.config), "bench", "")
        else:
            cfg = load_config(os.path.join(spec.ROOT, r.config), [f"seed={r.seed}", *r.sets])
            facts[r.key] = (cfg.data.name, cfg.optim.name, cfg.model.name)
    return facts


def slurm_lines(args, runs) -> dict:
    """--dry-run --launcher slurm: {run key: what its job asks SLURM for}."""
    from repro import slurm
    opts, facts = slurm_options(args), run_facts(runs)
    lines = {}
    for r in runs:
        res = slurm.resources(r, facts[r.key][0], opts)
        gpus = f"{res.procs_per_node} GPUs" if res.gpus else f"{res.procs_per_node} CPU processes"
        lines[r.key] = (f"SLURM job: {res.nodes} node(s) x {gpus}, {res.cpus_per_task} CPUs, {res.mem_gb} GB, "
                        f"{res.time_min} min" + (f", partition {res.partition}" if res.partition else "")
                        + ("; every node runs scripts/launch_multi_node.sh with train.py's arguments" if r.procs > 1 else ""))
    return lines


def slurm_main(args, runs, chosen, out_root, bench_args, stack_seeds) -> int:
    """--launcher slurm: check, submit what is neither done nor in the queue, report."""
    from repro import slurm
    opts = slurm_options(args)
    facts = run_facts(runs)
    for r in runs:   # every check before anything is submitted
        folder = os.path.join(out_root, r.key)
        if runner.run_state(folder, r.done_file) != "done":
            slurm.check_time(r, folder, slurm.resources(r, facts[r.key][0], opts), *facts[r.key])
    slurm.check_cluster(opts.partition)
    now = [s.run for s in slurm.states(runs, out_root) if s.state == "new" or (s.state == "failed" and args.retry_failed)]
    ids = slurm.submit(now, out_root, opts, {k: f[0] for k, f in facts.items()}, stack_seeds, bench_args) if now else []
    if ids:
        print(f"submitted {len(now)} runs as {len(ids)} SLURM jobs ({', '.join(sorted({i.split('_')[0] for i in ids}))}); "
              f"logs under {os.path.join(out_root, 'slurm')}")
    states = wait_for(runs, out_root, args.poll) if args.wait else slurm.states(runs, out_root)
    return slurm_report(states, chosen, out_root, args)


def wait_for(runs, out_root, poll: float):
    """Poll squeue until no run is queued or running (a job that can never start does not count as
    queued: waiting for it would be for ever); print a line when the counts change."""
    from repro import slurm
    said = None
    try:
        while True:
            states = slurm.states(runs, out_root)
            counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "queued", "failed")}
            if not counts["running"] and not counts["queued"]:
                return states
            line = ", ".join(f"{n} {k}" for k, n in counts.items())
            if line != said:
                print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
                said = line
            time.sleep(poll)
    except KeyboardInterrupt:
        print("interrupted: the SLURM jobs go on; run the same command again to see where they stand", flush=True)
        raise SystemExit(130)


def slurm_report(states, chosen, out_root, args) -> int:
    """What finished, and where each other run stands (queued, running, failed with its log)."""
    from repro import slurm
    counts = {k: sum(s.state == k for s in states) for k in ("done", "running", "queued", "stuck", "failed", "new")}
    print(f"Table {', '.join(t.id for t in chosen)} on SLURM: {counts['done']} finished, {counts['running']} running, "
          f"{counts['queued']} queued, {counts['failed']} failed" + (f", {counts['stuck']} never to start" if counts["stuck"] else ""))
    for s in states:
        if s.state == "stuck":
            print(f"  stuck    {s.run.key}  job {s.job_id} ({s.detail}): scancel {s.job_id.split('_')[0]}, then submit "
                  "again with fewer --cpus-per-gpu / --gpus-per-node / --mem-per-gpu or a shorter --time")
        elif s.state in ("running", "queued"):
            reason = f" ({s.detail})" if s.detail and s.detail != "None" else ""
            print(f"  {s.state:8} {s.run.key}  job {s.job_id}{reason}")
        elif s.state == "failed":
            print(f"  failed   {os.path.join(out_root, s.run.key)}: {s.detail}  (log: {slurm.log_of(s, out_root)})")
    if counts["failed"]:
        print("submit the failed runs again with --retry-failed")
    if counts["done"] == len(states):
        tables_args = " ".join(f"--table {t.id}" for t in chosen)
        print(f"next: python scripts/make_tables.py {tables_args} --out-root {out_root} --seeds '{args.seeds}'")
    return 1 if counts["failed"] or counts["stuck"] else 0


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])   # a malformed argument: one line, exit 2
    ap.add_argument("--table", action="append", required=True,
                    help="table id in repro/tables.yaml: 1, 2, 3, 5, 6, 8, 9, 10 (repeatable: their runs, each once)")
    ap.add_argument("--out-root", default=None, help="runs/tables (runs/tables-smoke with --smoke)")
    ap.add_argument("--data-root", default="", help="folder holding the datasets; replaces the leading "
                                                    "'data' of each config's data.root")
    ap.add_argument("--seeds", default="0 1 2")
    ap.add_argument("--gpus", default="all", help="'all' (every visible GPU, else the CPU), 'cpu', or ids '0 1'")
    ap.add_argument("--runs-per-gpu", type=int, default=0, help="runs sharing one GPU at once "
                                                                "(default 4 on GPUs, 1 on the CPU)")
    ap.add_argument("--procs-per-run", type=int, default=0, help="processes per run (default: the "
                                                                 "table's, e.g. 2 GPUs for ImageNet-LT)")
    ap.add_argument("--stack-seeds", action="store_true",
                    help="train each row's new seeds together in one process (train.py --seeds) instead of one "
                         "process per seed; measure which is faster on your GPU with bench_step.py --mode throughput")
    ap.add_argument("--smoke", action="store_true", help="synthetic data, 2 epochs of 2 steps (repro/spec.py SMOKE_SETS)")
    ap.add_argument("--dry-run", action="store_true", help="list every run with its config, seed, folder and state")
    ap.add_argument("--rows", default="", help="only the rows whose name matches this regular expression "
                                              "(e.g. 'Focal-SAM|^LA$')")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every new run (not for resumed ones: they keep their config)")
    ap.add_argument("--spec", default=spec.SPEC_PATH, help=argparse.SUPPRESS)  # tests: a small tables file
    slurm_arguments(ap)
    args = ap.parse_args(argv)

    with user_errors():
        check_launcher_arguments(args)
        try:
            re.compile(args.rows)
        except re.error as e:
            raise UserError(f"--rows {args.rows!r} is not a regular expression ({e})") from None
        tables = spec.load_tables(args.spec)
        chosen = [spec.get_table(tables, t) for t in args.table]
        timing = chosen[0].kind == "timing"
        if len(chosen) > 1 and any(t.kind == "timing" for t in chosen):
            raise UserError("Table 1 (timing) runs alone: give --table 1 without other tables")
        # absolute: the runs start in the repository root, wherever this was called from
        out_root = os.path.abspath(args.out_root or os.path.join(spec.ROOT, "runs", "tables-smoke" if args.smoke else "tables"))
        if timing:
            runs = spec.plan_timing(chosen[0], smoke=args.smoke)
            cells = None
        else:
            seeds = spec.parse_seeds(args.seeds)
            cells = [c for t in chosen for c in spec.plan_runs(t, seeds, smoke=args.smoke,
                                                                procs=args.procs_per_run or None, rows=args.rows)]
            if not cells:
                raise UserError(f"--rows {args.rows!r} matches no row with runs in table(s) {', '.join(args.table)}")
            runs = [r for t in chosen for r in spec.plan_cost(t, args.smoke, args.rows)] + spec.unique_runs(cells)
        # DATA_ROOT and --set join each run's own overrides (DATA_ROOT maps per config: CIFAR's
        # root is the folder itself, ImageNet-LT's is DATA_ROOT/ImageNet_LT, ...).
        roots = {}
        if args.data_root and not args.smoke:
            roots = {c: runner.data_root_set(c, args.data_root) for c in {r.config for r in runs if r.kind == "train"}}
        runs = [dataclasses.replace(r, sets=r.sets + tuple([roots[r.config]] if r.config in roots else [])
                                    + tuple(args.set)) for r in runs]
        bench_args = ["--steps", "2", "--warmup", "1", "--batch", "8"] if args.smoke else []
        check_arguments(args, runs)
        runs = wandb_groups(runs)

        if args.dry_run:
            states = {}
            jobs = runner.jobs(runs, out_root, args.stack_seeds and not timing)
            sbatch = slurm_lines(args, runs) if args.launcher == "slurm" else {}
            for job in jobs:
                for run in job:
                    folder = os.path.join(out_root, run.key)
                    state = runner.run_state(folder, run.done_file)
                    states[state] = states.get(state, 0) + 1
                    print(f"{state:6} seed {run.seed}  {run.config}  -> {folder}")
                resume = len(job) == 1 and state == "resume"
                cmd = runner.job_command(job, out_root, resume, python="python", bench_args=bench_args)
                print(f"       {shlex.join(cmd)}")
                if sbatch:
                    print(f"       {sbatch[job[0].key]}")
            summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            print("\n".join(t.title for t in chosen) + f"\n{len(runs)} runs ({summary}) under {out_root}"
                  + (f"; {len(cells)} table cells" if cells is not None else "")
                  + (f"; {len(jobs)} processes" if len(jobs) != len(runs) else ""))
            return 0

        if args.launcher == "slurm":
            return slurm_main(args, runs, chosen, out_root, bench_args, args.stack_seeds and not timing)
        result = execute_local(args, runs, out_root, bench_args, args.stack_seeds and not timing)
        print(f"Table {', '.join(t.id for t in chosen)}: {len(result['done'])} finished now, {len(result['skipped'])} done before, "
              f"{len(result['failed'])} failed")
        for key in result["failed"]:
            folder = os.path.join(out_root, key)
            with open(os.path.join(folder, runner.FAILED)) as f:
                print(f"  failed: {folder}: {f.read().strip()}  (log: {os.path.join(folder, runner.LOG)})")
        if not result["failed"]:
            tables_args = " ".join(f"--table {t.id}" for t in chosen)
            print(f"next: python scripts/make_tables.py {tables_args} --out-root {out_root} --seeds '{args.seeds}'")
        return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
