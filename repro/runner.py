"""Run many training runs, a few at a time per GPU, so that a paper table fills over several sittings.

A run's folder says where it stands: final.json -> done (skipped), last.pt -> half-finished
(resumed with `train.py --resume`), FAILED -> the last attempt failed (tried again). Each attempt
appends its output to <run>/train.log; a failure writes <run>/FAILED with the exit status and
the last line of that log, and never stops the other runs.
"""
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from repro.spec import ROOT, Run

FAILED = "FAILED"
LOG = "train.log"
COMMAND = "command.json"


def run_state(folder: str, done_file: str = "final.json") -> str:
    if os.path.isfile(os.path.join(folder, done_file)):
        return "done"
    if os.path.isfile(os.path.join(folder, "last.pt")):
        return "resume"
    if os.path.isfile(os.path.join(folder, FAILED)):
        return "retry"
    return "new"


def data_root_set(config: str, data_root: str) -> str:
    """--set data.root for DATA_ROOT: the configs' roots all start with `data` (data/,
    data/ImageNet_LT, data/iNaturalist); DATA_ROOT takes the place of that first `data`."""
    from engine.config import load_config
    root = load_config(os.path.join(ROOT, config)).data.root
    rel = os.path.relpath(root, "data")
    return "data.root=" + (data_root if rel == "." else os.path.join(data_root, rel))


def command(run: Run, folder: str, resume: bool = False, python: str = sys.executable,
            bench_args: Sequence[str] = ()) -> List[str]:
    if run.kind == "bench":
        dataset = os.path.basename(run.config)
        chosen = ["--config-dir", os.path.join(ROOT, run.config), "--optimizers", ",".join(run.optimizers),
                  "--baseline", run.optimizers[0]] if run.optimizers else []
        return [python, os.path.join(ROOT, "scripts", "bench_step.py"), "--dataset", dataset, *chosen,
                "--json", os.path.join(folder, run.done_file), *bench_args] + \
            [a for s in run.sets for a in ("--set", s)]
    if run.procs > 1:
        head = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run.procs}"]
    else:
        head = [python]
    head.append(os.path.join(ROOT, "train.py"))
    if resume:
        return head + ["--resume", folder]
    sets = [f"seed={run.seed}", *run.sets]
    return head + ["--config", os.path.join(ROOT, run.config), "--out", folder] + \
        [a for s in sets for a in ("--set", s)]


def jobs(runs: Sequence[Run], out_root: str, stack_seeds: bool) -> List[List[Run]]:
    """What one process runs: each run alone; with `stack_seeds`, the runs that start anew
    (state new or retry) with one config and one set of overrides, one process each, train their
    seeds together in one process (`train.py --seeds`, engine/group.py). Half-finished runs resume
    alone (the seeds of one row may have stopped after different epochs)."""
    out = []
    groups: Dict[tuple, List[Run]] = {}
    for run in runs:
        stackable = (stack_seeds and run.kind == "train" and run.procs == 1 and run.key.endswith(f"seed{run.seed}")
                     and run_state(os.path.join(out_root, run.key), run.done_file) in ("new", "retry")
                     and _stackable(run))
        if not stackable:
            out.append([run])
            continue
        k = (run.config, run.sets, run.key[:-len(f"seed{run.seed}")])
        if k not in groups:
            groups[k] = []
            out.append(groups[k])
        groups[k].append(run)
    return out


def _stackable(run: Run) -> bool:
    from engine.config import load_config
    from engine.group import why_not_stackable
    return not why_not_stackable(load_config(os.path.join(ROOT, run.config), [f"seed={run.seed}", *run.sets]))


def job_command(job: List[Run], out_root: str, resume: bool = False, python: str = sys.executable,
                bench_args: Sequence[str] = ()) -> List[str]:
    """The command of a job: `command` for one run; for seeds trained together, train.py --seeds
    with the folder pattern of their keys, or (`resume`) train.py --resume with their folders."""
    first = job[0]
    if len(job) == 1:
        return command(first, os.path.join(out_root, first.key), resume, python, bench_args)
    if resume:
        return [python, os.path.join(ROOT, "train.py"), "--resume", *[os.path.join(out_root, r.key) for r in job]]
    pattern = os.path.join(out_root, first.key[:-len(f"seed{first.seed}")] + "seed{seed}")
    return [python, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, first.config),
            "--out", pattern, "--seeds", *[str(r.seed) for r in job]] + [a for s in first.sets for a in ("--set", s)]


@dataclasses.dataclass
class Slots:
    """Devices and how many runs each holds at once. A run of n > 1 processes takes n whole
    devices (torchrun, one process per GPU); a one-process run takes one place on one device."""
    devices: List[str]                 # GPU ids, or ["cpu"]
    per_device: int
    load: Dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.load = {d: 0 for d in self.devices}

    def take(self, procs: int) -> Optional[List[str]]:
        if procs == 1:
            free = [d for d in self.devices if self.load[d] < self.per_device]
            if not free:
                return None
            d = min(free, key=lambda x: self.load[x])
            self.load[d] += 1
            return [d]
        if self.devices == ["cpu"]:
            picked = ["cpu"] if self.load["cpu"] == 0 else None
        else:
            idle = [d for d in self.devices if self.load[d] == 0]
            picked = idle[:procs] if len(idle) >= procs else None
        if picked:
            for d in picked:
                self.load[d] = self.per_device
        return picked

    def give(self, devices: List[str], procs: int) -> None:
        for d in devices:
            self.load[d] = 0 if procs > 1 else self.load[d] - 1

    def fits(self, procs: int) -> bool:
        return procs == 1 or self.devices == ["cpu"] or procs <= len(self.devices)


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [l.strip() for l in f.read().splitlines()[-200:] if l.strip()]
    except OSError:
        return ""
    errors = [l for l in lines if l.startswith("error:") or "Error" in l]
    return (errors or lines or [""])[-1][:300]


def _launch(job: List[Run], out_root: str, cmd: List[str], devices: List[str]) -> subprocess.Popen:
    """Start a job on local devices."""
    visible = "" if devices == ["cpu"] else ",".join(devices)
    return start_job(job, out_root, cmd, {"CUDA_VISIBLE_DEVICES": visible}, f"devices={','.join(devices)}",
                     {"devices": devices})


def start_job(job: List[Run], out_root: str, cmd: List[str], env: Dict[str, str], where: str,
              record: dict) -> subprocess.Popen:
    """Start a job's command with `env` added to ours; its output goes to its first run's log
    (`where` is written in the log's header), the other runs' logs point there. Each run's
    command.json holds the command and `record`."""
    folders = [os.path.join(out_root, r.key) for r in job]
    stamp = f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {where}: {shlex.join(cmd)}\n"
    for k, folder in enumerate(folders):
        os.makedirs(folder, exist_ok=True)
        try:
            os.remove(os.path.join(folder, FAILED))
        except FileNotFoundError:
            pass
        with open(os.path.join(folder, COMMAND), "w") as f:
            json.dump({"argv": cmd, **record}, f)
        if k:
            with open(os.path.join(folder, LOG), "a") as f:
                f.write(stamp + f"(trained together with {job[0].key}: its output is in {folders[0]}/{LOG})\n")
    log = open(os.path.join(folders[0], LOG), "a")
    log.write(stamp)
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **env})
    proc.log_file = log
    return proc


def record_outcome(job: List[Run], out_root: str, returncode: int, result: Dict[str, List[str]], say,
                   minutes: float) -> None:
    """After a job's process ended: each run is done (final.json written, exit 0) or failed
    (FAILED holds the exit status and the error line of its log)."""
    line = None
    for run in job:
        folder = os.path.join(out_root, run.key)
        if returncode == 0 and run_state(folder, run.done_file) == "done":
            result["done"].append(run.key)
            say(f"[done] {run.key} ({minutes:.1f} min)")
        else:
            line = line if line is not None else _last_line(os.path.join(out_root, job[0].key, LOG))
            _fail(folder, f"exit {returncode}: {line}", result, run, say)


def execute(runs: List[Run], out_root: str, slots: Slots, say=print, poll: float = 0.5,
            bench_args: Sequence[str] = (), stack_seeds: bool = False) -> Dict[str, List[str]]:
    """Run what is not done yet; -> {'done', 'skipped', 'failed'} lists of run keys. With
    `stack_seeds`, a row's new seeds train together in one process (`jobs`)."""
    result = {"done": [], "skipped": [], "failed": []}
    todo = []
    for run in runs:
        folder = os.path.join(out_root, run.key)
        if run_state(folder, run.done_file) == "done":
            result["skipped"].append(run.key)
        elif not slots.fits(run.procs):
            _fail(folder, f"needs {run.procs} GPUs at once, GPUS lists {len(slots.devices)}; "
                          f"list more GPUS or set PROCS_PER_RUN", result, run, say)
        else:
            todo.append(run)
    pending = jobs(todo, out_root, stack_seeds)
    say(f"{len(runs)} runs: {len(result['skipped'])} done already, {len(todo)} to run "
        f"on {','.join(slots.devices)} ({slots.per_device} per device"
        + (f"; {len(pending)} processes, a row's seeds together" if stack_seeds else "") + ")")
    running = []  # (proc, job, devices, started)
    try:
        while pending or running:
            i = 0
            while i < len(pending):
                devices = slots.take(pending[i][0].procs)
                if devices is None:
                    i += 1
                    continue
                job = pending.pop(i)
                resume = len(job) == 1 and run_state(os.path.join(out_root, job[0].key), job[0].done_file) == "resume"
                cmd = job_command(job, out_root, resume, bench_args=bench_args)
                say(f"[start{' resume' if resume else ''}] {' + '.join(r.key for r in job)} on {','.join(devices)}")
                running.append((_launch(job, out_root, cmd, devices), job, devices, time.time()))
            time.sleep(poll)
            for item in list(running):
                proc, job, devices, started = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                proc.log_file.close()
                slots.give(devices, job[0].procs)
                record_outcome(job, out_root, proc.returncode, result, say, (time.time() - started) / 60)
    except KeyboardInterrupt:
        for proc, _, _, _ in running:
            proc.terminate()  # the trainer keeps its last checkpoint; the next sitting resumes it
        for proc, _, _, _ in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        say(f"interrupted: {len(running)} processes stopped, {len(pending)} not started; "
            "run the same command again to resume them")
        raise
    return result


def _fail(folder, message, result, run, say):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, FAILED), "w") as f:
        f.write(message + "\n")
    result["failed"].append(run.key)
    say(f"[failed] {run.key}: {message}")
