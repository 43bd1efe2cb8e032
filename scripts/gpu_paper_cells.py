"""Paper cells inside a time budget: full-length runs of a few rows of a paper table, as many as
fit, with the table report rewritten after each finished row (scripts/gpu_checks.sh, part 3).

    python scripts/gpu_paper_cells.py --out-root runs/cells --report DIR --budget-s 360 \\
        --set data.root=/datasets --set train.capture=step

The rows run one after another, in the order given (by default Table 5's LA, LA+Focal-SAM, then
LA+SAM at imbalance 100, three seeds each, trained together in one process). Each row starts as
an ordinary table run (its own folders, `train.py --seeds`); once its first `--probe-epochs`
epochs after the first have finished, their median time projects the rest of the row. If the
projection does not fit in the budget the row is stopped at once (its checkpoints stay: `train.py
--resume` continues it later) and no later row starts; the same projection, scaled by the passes
per step of each method, says how many of the remaining rows are expected to fit. When the
budget runs out mid-row, the row is stopped the same way. What finished is never lost: every run
writes its own folder, and `--report` gets the table (markdown and JSON) after every finished row.
"""
import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser, at_least, positive_seconds
from core.errors import UserError
from engine.cli import user_errors
from repro import collect, runner, spec

DEFAULT_ROWS = "LA,LA+Focal-SAM,LA+SAM"
# Forward + backward passes of one step (README, Methods): what an epoch costs relative to SGD.
PASSES = {"sgd": 2, "sam": 4, "imbsam": 5, "focal_sam": 5, "cc_sam": 2}
STOP_WAIT_S = 60            # a stopped run writes its checkpoint first; then it is killed


@dataclasses.dataclass
class Cell:
    """One paper row in one column group: its runs (one per seed) and their optimizer."""
    row: spec.Row
    group: spec.Group
    runs: List[spec.Run]
    optimizer: str
    epochs: int


def plan(table: spec.Table, rows: Sequence[str], group: str, seeds: Sequence[int], extra_sets: Sequence[str],
         smoke: bool = False) -> List[Cell]:
    """The cells of `rows` (names, in this order) in column group `group` of `table`."""
    by_name = {r.name: r for r in table.rows}
    groups = {g.name: g for g in table.groups}
    if group not in groups:
        raise UserError(f"table {table.id} has no column group {group!r}; choose one of: {', '.join(groups)}")
    unknown = [r for r in rows if r not in by_name or by_name[r].reference]
    if unknown:
        raise UserError(f"table {table.id} has no row {unknown[0]!r} with a run; rows: "
                        f"{', '.join(r.name for r in table.rows if not r.reference)}")
    cells = []
    for name in rows:
        sub = dataclasses.replace(table, rows=(by_name[name],), groups=(groups[group],))
        planned = spec.plan_runs(sub, seeds, smoke=smoke)
        runs = [dataclasses.replace(r, sets=r.sets + tuple(extra_sets)) for _, _, r in planned]
        info = spec.read_config_info(runs[0].config)
        epochs = spec.smoke_epochs(info.epochs) if smoke else info.epochs
        cells.append(Cell(by_name[name], groups[group], runs, info.optimizer, epochs))
    return cells


# ----------------------------------------------------------------------------- the budget
def projected_seconds(epoch_seconds: Sequence[float], total_epochs: int) -> float:
    """Seconds a run still needs after len(epoch_seconds) epochs: the median epoch, leaving out
    the first (start-up, warm-up steps, the first CUDA graph capture) while others exist."""
    steady = list(epoch_seconds[1:]) or list(epoch_seconds)
    return statistics.median(steady) * max(0, total_epochs - len(epoch_seconds))


def row_seconds(epoch_s: float, optimizer: str, probed: str, epochs: int) -> float:
    """A whole row's projected time from another row's steady epoch time, scaled by passes per step."""
    return epoch_s * PASSES[optimizer] / PASSES[probed] * epochs


def how_many_fit(cells: Sequence[Cell], epoch_s: float, probed: str, seconds_left: float) -> int:
    """How many of `cells`, in order, are projected to finish in `seconds_left`."""
    n, need = 0, 0.0
    for c in cells:
        need += row_seconds(epoch_s, c.optimizer, probed, c.epochs)
        if need > seconds_left:
            break
        n += 1
    return n


def epoch_times(folder: str) -> List[float]:
    """epoch_seconds of each finished epoch of a run (metrics.jsonl; a torn last line is skipped)."""
    out = []
    try:
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            for line in f:
                try:
                    out.append(float(json.loads(line)["epoch_seconds"]))
                except (ValueError, KeyError):
                    pass
    except FileNotFoundError:
        pass
    return out


class Budget:
    """The deadline, read through `clock` and waited on with `sleep` (stand-ins in tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.clock, self.sleep = clock, sleep
        self.deadline = clock() + seconds

    @property
    def left(self) -> float:
        return self.deadline - self.clock()


# ----------------------------------------------------------------------------- running
def launch(cell: Cell, out_root: str, stack: bool) -> List[subprocess.Popen]:
    """The row's processes: its seeds trained together in one process, or (stack False) one
    process per seed, side by side."""
    jobs = [cell.runs] if stack else [[r] for r in cell.runs]
    procs = []
    for job in jobs:
        folder = os.path.join(out_root, job[0].key)
        os.makedirs(folder, exist_ok=True)
        log = open(os.path.join(folder, runner.LOG), "a")
        cmd = runner.job_command(job, out_root)
        log.write(f"\n=== {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=spec.ROOT)
        proc.log_file = log
        procs.append(proc)
    return procs


def stop(procs: Sequence[subprocess.Popen], budget: Budget) -> None:
    """SIGTERM (the trainer keeps its last checkpoint and says how to resume), then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    waited = 0.0
    while any(p.poll() is None for p in procs) and waited < STOP_WAIT_S:
        budget.sleep(0.5)
        waited += 0.5
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_cells(cells: List[Cell], out_root: str, budget: Budget, stack: bool, probe_epochs: int,
              on_row_done: Callable[[Dict[str, str]], None], say=print, launcher=launch,
              poll: float = 2.0) -> Dict[str, str]:
    """Run `cells` in order inside `budget`; -> row name -> done | skipped (already done) |
    stopped (would not fit / budget reached) | failed | not started."""
    state = {c.row.name: "not started" for c in cells}
    for i, cell in enumerate(cells):
        folders = [os.path.join(out_root, r.key) for r in cell.runs]
        if all(runner.run_state(f) == "done" for f in folders):
            state[cell.row.name] = "skipped"
            continue
        if budget.left <= 0:
            say(f"{cell.row.name}: not started, the budget is spent")
            break
        say(f"{cell.row.name}: {len(cell.runs)} runs of {cell.epochs} epochs, {budget.left:.0f} s left")
        procs = launcher(cell, out_root, stack)
        decided = False
        while any(p.poll() is None for p in procs):
            budget.sleep(poll)
            times = epoch_times(folders[0])
            if not decided and len(times) >= probe_epochs + 1:
                decided = True
                need, steady = projected_seconds(times, cell.epochs), statistics.median(times[1:])
                fits = how_many_fit(cells[i + 1:], steady, cell.optimizer, budget.left - need)
                say(f"{cell.row.name}: {steady:.2f} s per epoch after {len(times)} epochs; {need:.0f} s more "
                    f"projected, {budget.left:.0f} s left: {'fits' if need <= budget.left else 'does not fit'}; "
                    f"then {fits} of the {len(cells) - i - 1} later rows fit")
                if need > budget.left:
                    stop(procs, budget)
                    state[cell.row.name] = "stopped"
                    say(f"{cell.row.name}: stopped; its checkpoints stay (train.py --resume continues them)")
                    return state
            if budget.left <= 0:
                stop(procs, budget)
                state[cell.row.name] = "stopped"
                say(f"{cell.row.name}: the budget ran out after {len(epoch_times(folders[0]))} epochs; stopped, "
                    "its checkpoints stay (train.py --resume continues them)")
                return state
        for p in procs:
            p.log_file.close()
        ok = all(p.returncode == 0 for p in procs) and all(runner.run_state(f) == "done" for f in folders)
        state[cell.row.name] = "done" if ok else "failed"
        if not ok:
            say(f"{cell.row.name}: failed; see {os.path.join(folders[0], runner.LOG)}")
        on_row_done(state)
    return state


# ----------------------------------------------------------------------------- the report
def write_report(table: spec.Table, cells: List[Cell], out_root: str, seeds: Sequence[int], report_dir: str,
                 state: Dict[str, str]) -> str:
    """cells.md (the rows in the paper's layout, ours beside the paper's) and cells.json."""
    table = dataclasses.replace(table, rows=tuple(c.row for c in cells), groups=(cells[0].group,))
    rows = collect.collect(table, collect.Finals(out_root), seeds)
    text = collect.markdown(table, rows)
    doc = {"table": table.id, "group": cells[0].group.name, "seeds": list(seeds), "rows": []}
    for cell, row_cells in zip(cells, rows):
        doc["rows"].append({"row": cell.row.name, "state": state.get(cell.row.name, "not started"),
                            "metrics": {m: {"ours": c.values, "mean": c.mean, "std": c.std, "paper": c.paper}
                                        for m, c in zip(cell.group.metrics, row_cells)}})
    os.makedirs(report_dir, exist_ok=True)
    _write(os.path.join(report_dir, "cells.md"), text)
    _write(os.path.join(report_dir, "cells.json"), json.dumps(doc, indent=1))
    return text


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="5", help="paper table (repro/tables.yaml)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="row names, comma-separated, in the order to run")
    p.add_argument("--group", default="IF100", help="column group (imbalance factor)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out-root", required=True, help="run folders go here (as scripts/run_table.py lays them out)")
    p.add_argument("--report", required=True, help="folder for cells.md and cells.json")
    p.add_argument("--budget-s", type=positive_seconds, required=True, help="seconds for all rows")
    p.add_argument("--probe-epochs", type=at_least(1), default=3, help="epochs after the first that time a row")
    p.add_argument("--no-stack", action="store_true", help="one process per seed (default: seeds trained together)")
    p.add_argument("--smoke", action="store_true", help="synthetic data, tiny schedule (the CPU rehearsal)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = p.parse_args(argv)
    with user_errors():
        budget = Budget(args.budget_s)
        seeds = spec.parse_seeds(args.seeds)
        table = spec.get_table(spec.load_tables(), args.table)
        cells = plan(table, [r.strip() for r in args.rows.split(",") if r.strip()], args.group, seeds, args.set,
                     args.smoke)
        out_root = os.path.abspath(args.out_root)
        report = lambda state: write_report(table, cells, out_root, seeds, args.report, state)
        state = run_cells(cells, out_root, budget, not args.no_stack, args.probe_epochs, report,
                          say=lambda m: print(m, flush=True))
        print(report(state), flush=True)
        print(" ".join(f"{k}: {v}." for k, v in state.items()), flush=True)
    return 0 if all(v in ("done", "skipped") for v in state.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
