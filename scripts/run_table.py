#!/usr/bin/env python
"""Run the runs of one or more paper tables (repro/tables.yaml); called by scripts/table*.sh.

    python scripts/run_table.py --table 5 --dry-run              # list the runs and their state
    python scripts/run_table.py --table 5 --seeds "0 1 2" --gpus "0 1" --runs-per-gpu 4
    python scripts/run_table.py --table 2 --smoke --seeds 0      # synthetic data, 2 tiny epochs
    python scripts/run_table.py --table 5 --stack-seeds          # a row's seeds in one process
    python scripts/run_table.py --table 9 --table 10 --rows '^LA[+]SAM$'   # tables together; rows by name

Finished runs are skipped and half-finished ones resumed, so a table fills over several sittings;
a failed run is reported at the end (exit 1) and does not stop the others. Then
`python scripts/make_tables.py --table N` prints the table beside the paper's numbers.
"""
import argparse
import dataclasses
import glob
import os
import re
import shlex
import sys


import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
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
    for config, sets, seed in sorted({(r.config, r.sets, r.seed) for r in runs}):
        full = os.path.join(spec.ROOT, config)
        for path in sorted(glob.glob(os.path.join(full, "la_*.yaml"))) if os.path.isdir(full) else [full]:
            try:
                load_config(path, [f"seed={seed}", *sets])
            except UserError as e:
                given = f" with --set {' '.join(args.set)}" if args.set else ""
                raise UserError(f"{os.path.relpath(path, spec.ROOT)}{given}: {e}; nothing was launched") from None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = ap.parse_args(argv)

    with user_errors():
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
            runs = spec.unique_runs(cells)
        # DATA_ROOT and --set join each run's own overrides (DATA_ROOT maps per config: CIFAR's
        # root is the folder itself, ImageNet-LT's is DATA_ROOT/ImageNet_LT, ...).
        roots = {}
        if args.data_root and not args.smoke:
            roots = {c: runner.data_root_set(c, args.data_root) for c in {r.config for r in runs if r.kind == "train"}}
        runs = [dataclasses.replace(r, sets=r.sets + tuple([roots[r.config]] if r.config in roots else [])
                                    + tuple(args.set)) for r in runs]
        bench_args = ["--steps", "2", "--warmup", "1", "--batch", "8"] if args.smoke else []
        check_arguments(args, runs)

        if args.dry_run:
            states = {}
            jobs = runner.jobs(runs, out_root, args.stack_seeds and not timing)
            for job in jobs:
                for run in job:
                    folder = os.path.join(out_root, run.key)
                    state = runner.run_state(folder, run.done_file)
                    states[state] = states.get(state, 0) + 1
                    print(f"{state:6} seed {run.seed}  {run.config}  -> {folder}")
                resume = len(job) == 1 and state == "resume"
                cmd = runner.job_command(job, out_root, resume, python="python", bench_args=bench_args)
                print(f"       {shlex.join(cmd)}")
            summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            print("\n".join(t.title for t in chosen) + f"\n{len(runs)} runs ({summary}) under {out_root}"
                  + (f"; {len(cells)} table cells" if cells is not None else "")
                  + (f"; {len(jobs)} processes" if len(jobs) != len(runs) else ""))
            return 0

        devices = detect_gpus(args.gpus)
        per = args.runs_per_gpu or (1 if devices == ["cpu"] else 4)
        if timing:  # timings want the device to themselves
            devices, per = devices[:1], 1
        result = runner.execute(runs, out_root, runner.Slots(devices, per), bench_args=bench_args,
                                stack_seeds=args.stack_seeds and not timing)
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
