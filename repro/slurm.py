"""The `slurm` launcher of scripts/run_table.py: a table's jobs as SLURM jobs, through submitit.

A job is what one local process runs (`runner.jobs`): one run, or a row's new seeds trained
together (--stack-seeds). Each becomes a SLURM job; jobs that ask for the same resources go in
one job array. A multi-GPU run (ImageNet-LT, iNaturalist) is one job of `nodes` nodes, one task
per node, each starting scripts/launch_multi_node.sh (torchrun, c10d rendezvous on the job's
first node, read from SLURM's environment).

State lives where the local launcher keeps it, in the run folders (final.json, last.pt, FAILED,
train.log), plus slurm.json: the SLURM job that holds the run. A later call with the same
arguments reads them and `squeue`: finished runs are skipped, queued and running ones reported,
failed ones reported with their log (and submitted again with --retry-failed).

Time limits: SLURM signals a job SIGNAL_DELAY_S seconds before its limit (and at preemption);
submitit then calls `TableJob.checkpoint` and requeues the job, whose next attempt resumes each
run from its last.pt (`train.py --resume`: exact). An attempt that ran into its limit without
checkpointing a single epoch is not requeued (it would loop forever): its runs get FAILED.
"""
import contextlib
import dataclasses
import glob
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from core.errors import UserError, brief
from repro import runner, spec
from repro.spec import ROOT, Run

RECORD = "slurm.json"          # in a run folder: the SLURM job that holds it
SIGNAL_DELAY_S = 90            # SLURM's warning before the time limit: the job checkpoints and requeues
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESV_DEL_HOLD",
          "RESIZING", "SIGNALING", "STAGE_OUT"}
RUNNING = {"RUNNING", "COMPLETING"}
# Pending reasons that no amount of waiting resolves: the job asks for more than its partition or
# account allows (more CPUs, GPUs, nodes or time than the partition's nodes have or its limits
# let through). squeue keeps such a job PENDING for ever; --wait reports it instead of waiting.
NEVER_STARTS = {"PartitionConfig": "it asks for more CPUs, GPUs or memory than a node of its partition has",
                "PartitionNodeLimit": "it asks for more nodes than its partition allows",
                "PartitionTimeLimit": "its --time is above its partition's limit",
                "BadConstraints": "no node satisfies its constraints",
                "InvalidAccount": "its account is not valid", "InvalidQOS": "its QOS is not valid"}
STOPPED = {143, -15, 137, -9}  # SIGTERM / SIGKILL: requeue, preemption or scancel; the checkpoint stays
FASTEST_GPU = 3.0              # the time check assumes no GPU runs an epoch more than 3x an RTX 3090


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Per-job resources of one dataset's runs, per GPU (or CPU process)."""
    time_min: int
    cpus_per_gpu: int
    mem_per_gpu_gb: int


# Time limits: a 200-epoch ResNet-32 CIFAR run takes 0.5-1.1 h on an RTX 3090 (the paper's Table 1
# times x 200; CC-SAM on CIFAR-100-LT is the slowest), the 300-epoch rows 1.5x; ImageNet-LT
# 16 h (Focal-SAM, 2 GPUs) to 90 h (CC-SAM), iNaturalist 59 h (4 GPUs): 24 h, the cap of many
# clusters, and the job is requeued from its checkpoint until the run ends. CPUs: CIFAR loads
# from GPU memory (data.loader auto); the large sets decode JPEGs in up to 8 loader workers per
# process (data.num_workers -1) beside the training process. A dataset not listed here (a new
# one) gets the large sets' resources.
DEFAULTS = {
    "cifar10_lt": Defaults(4 * 60, 4, 16),
    "cifar100_lt": Defaults(4 * 60, 4, 16),
    "imagenet_lt": Defaults(24 * 60, 9, 32),
    "inat2018": Defaults(24 * 60, 9, 32),
    "synthetic": Defaults(30, 2, 4),     # SMOKE=1
}


@dataclasses.dataclass(frozen=True)
class Options:
    """The launcher's options (run_table.py --partition ...); None: the dataset's default."""
    partition: Optional[str] = None
    time_min: Optional[int] = None
    gpus_per_node: Optional[int] = None      # 0: CPU-only jobs
    cpus_per_gpu: Optional[int] = None
    mem_per_gpu_gb: Optional[int] = None
    extra: Tuple[Tuple[str, str], ...] = ()  # any other sbatch option (account, qos, constraint, ...)
    job_name: str = "lt-sam"


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one job asks SLURM for: `nodes` x (one task of `procs_per_node` processes)."""
    nodes: int
    procs_per_node: int
    gpus: bool
    cpus_per_task: int
    mem_gb: int
    time_min: int
    partition: Optional[str]

    def parameters(self, opts: Options) -> dict:
        """submitit.SlurmExecutor.update_parameters(**this)."""
        p = dict(job_name=opts.job_name, nodes=self.nodes, ntasks_per_node=1, cpus_per_task=self.cpus_per_task,
                 mem=f"{self.mem_gb}GB", time=self.time_min, signal_delay_s=SIGNAL_DELAY_S,
                 additional_parameters={"requeue": True, **dict(opts.extra)})
        if self.gpus:
            p["gpus_per_node"] = self.procs_per_node
        if self.partition:
            p["partition"] = self.partition
        return p


def parse_time(text: str) -> int:
    """SLURM's time formats (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) -> whole
    minutes, rounded up."""
    days, sep, rest = text.strip().partition("-") if "-" in text else ("0", "", text.strip())
    parts = rest.split(":")
    if not days.isdigit() or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise UserError(f"--time {text!r}: give minutes or SLURM's [D-]HH:MM:SS, e.g. 240 or 1-00:00:00")
    values = [int(p) for p in parts]
    if sep:                      # D-HH[:MM[:SS]]
        h, m, s = (values + [0, 0])[:3]
    elif len(values) == 3:       # HH:MM:SS
        h, m, s = values
    else:                        # MM or MM:SS
        h, m, s = 0, values[0], values[1] if len(values) == 2 else 0
    seconds = int(days) * 86400 + h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UserError(f"--time {text!r}: give a positive time")
    return math.ceil(seconds / 60)


def resources(run: Run, dataset: str, opts: Options) -> Resources:
    """The resources of a job of `run` (a run of `run.procs` processes) on `dataset`."""
    d = DEFAULTS.get(dataset, DEFAULTS["imagenet_lt"])
    per_node = run.procs if opts.gpus_per_node in (None, 0) else opts.gpus_per_node
    if run.procs % per_node:
        raise UserError(f"{run.key}: {run.procs} processes do not split over nodes of --gpus-per-node "
                        f"{per_node}; give a divisor of {run.procs} or set PROCS_PER_RUN")
    cpus = opts.cpus_per_gpu or d.cpus_per_gpu
    mem = opts.mem_per_gpu_gb or d.mem_per_gpu_gb
    return Resources(nodes=run.procs // per_node, procs_per_node=per_node, gpus=opts.gpus_per_node != 0,
                     cpus_per_task=cpus * per_node, mem_gb=mem * per_node, time_min=opts.time_min or d.time_min,
                     partition=opts.partition)


# ----------------------------------------------------------------------------- checks before submitting

def measured_epoch(folder: str) -> Optional[float]:
    """The longest epoch (seconds) in a run folder's metrics.jsonl, or None."""
    try:
        with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8", errors="replace") as f:
            rows = [json.loads(line) for line in f if line.strip().startswith("{")]
    except (OSError, ValueError):
        return None
    seconds = [r.get("epoch_seconds") for r in rows if isinstance(r, dict)]
    seconds = [s for s in seconds if isinstance(s, (int, float))]
    return max(seconds) if seconds else None


def paper_epoch(dataset: str, optimizer: str) -> Optional[float]:
    """The paper's Table 1 seconds per epoch (RTX 3090 / 4090) of `optimizer` on `dataset`."""
    timing = spec.load_tables()["1"].raw
    if dataset not in timing["datasets"]:
        return None
    i = timing["datasets"].index(dataset)
    if optimizer == "sgd":   # one forward-backward pass per step against SAM's two
        return timing["paper"]["sam"][i] / 2
    return timing["paper"][optimizer][i] if optimizer in timing["paper"] else None


def check_time(run: Run, folder: str, res: Resources, dataset: str, optimizer: str, model: str) -> None:
    """Refuse a time limit that cannot hold one epoch of `run` before SLURM's requeue signal."""
    usable = res.time_min * 60 - SIGNAL_DELAY_S
    measured = measured_epoch(folder)
    if measured is not None:
        need, source = measured, f"its epochs took up to {measured / 60:.1f} min in {folder}"
    else:
        paper = None if model.startswith("clip") else paper_epoch(dataset, optimizer)
        if paper is None:
            return
        need = paper / FASTEST_GPU
        source = (f"the paper's {paper / 60:.1f} min per {optimizer} epoch on {dataset} (RTX 3090) / "
                  f"{FASTEST_GPU:g} for a faster GPU")
    if usable < need:
        raise UserError(f"--time {res.time_min} min leaves {max(usable, 0) / 60:.1f} min before SLURM's requeue "
                        f"signal, less than one epoch of {run.key} ({source}); give a longer --time: a job "
                        "must checkpoint an epoch to continue after a requeue; nothing was submitted")


def check_cluster(partition: Optional[str]) -> None:
    """sbatch, srun and squeue on PATH, and the partition known to SLURM."""
    missing = [c for c in ("sbatch", "srun", "squeue", "scontrol") if shutil.which(c) is None]
    if missing:
        raise UserError(f"{missing[0]} is not on PATH: run on a SLURM login node (or load its module), "
                        "or use --launcher local")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("the slurm launcher needs submitit: pip install 'submitit>=1.5,<2'") from None
    if partition is None:
        return
    found = _slurm(["scontrol", "show", "partition", partition])
    if found.returncode != 0:
        names = _slurm(["sinfo", "-h", "-o", "%P"]).stdout.split()
        valid = ", ".join(n.rstrip("*") for n in names) or "none listed by sinfo"
        raise UserError(f"--partition {partition}: SLURM has no such partition (partitions: {valid})")


def _slurm(argv: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{' '.join(argv[:2])} failed ({brief(e, 120)}); is SLURM reachable from here?") from None


# ----------------------------------------------------------------------------- what runs on the nodes

class TableJob:
    """What one SLURM job runs, on each of its nodes: the job's runs that are not done, resumed
    from their last.pt where they have one. Global rank 0 records the outcome in the run folders
    (as the local launcher does); the other nodes only take part in torchrun.

    submitit calls `checkpoint` on SLURM's signal before the time limit and at preemption: the
    job is requeued as it is, and its next attempt decides again what to resume."""

    def __init__(self, job: Sequence[Run], out_root: str, res: Resources, bench_args: Sequence[str] = (),
                 python: str = sys.executable):
        self.job, self.out_root, self.res = list(job), out_root, res
        self.bench_args, self.python = list(bench_args), python
        self.started = time.time()

    def __call__(self) -> Dict[str, List[str]]:
        import submitit
        env = submitit.JobEnvironment()
        self.started = time.time()
        main = env.global_rank == 0
        outcome = {"done": [], "skipped": [], "failed": []}
        for part, resume in self.plan():
            cmd, extra = self.command(part, resume, env)
            t0 = time.time()
            returncode = self._run(part, cmd, extra, env, main)
            if returncode in STOPPED:
                print(f"stopped by a signal (exit {returncode}): requeue, preemption or scancel; the runs keep "
                      "their last checkpoint", flush=True)
                return outcome
            if main:
                runner.record_outcome(part, self.out_root, returncode, outcome, print, (time.time() - t0) / 60)
        return outcome

    def folder(self, run: Run) -> str:
        return os.path.join(self.out_root, run.key)

    def plan(self) -> List[Tuple[List[Run], bool]]:
        """[(runs, resume)] to run one after another: the runs not done yet, together as the job
        was planned when they all start anew or all stopped after the same epoch, else one by one."""
        todo = [r for r in self.job if runner.run_state(self.folder(r), r.done_file) != "done"]
        ckpts = [os.path.join(self.folder(r), "last.pt") for r in todo]
        have = [os.path.isfile(c) for c in ckpts]
        if not todo:
            return []
        if not any(have):
            return [(todo, False)]
        if all(have) and len({_checkpoint_epoch(c) for c in ckpts}) == 1:
            return [(todo, True)]
        return [([r], h) for r, h in zip(todo, have)]

    def command(self, part: List[Run], resume: bool, env) -> Tuple[List[str], Dict[str, str]]:
        """(argv, environment) of one part: the local command, or for a multi-process run
        launch_multi_node.sh with the rendezvous on the job's first node."""
        cmd = runner.job_command(part, self.out_root, resume, python=self.python, bench_args=self.bench_args)
        extra = {} if self.res.gpus else {"CUDA_VISIBLE_DEVICES": ""}
        if part[0].procs == 1:
            return cmd, extra
        train = os.path.join(ROOT, "train.py")
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        job_id = os.environ.get("SLURM_JOB_ID", "0")
        extra.update(NNODES=str(self.res.nodes), GPUS=str(self.res.procs_per_node), RDZV_HOST=env.hostnames[0],
                     RDZV_PORT=str(rendezvous_port(job_id)), JOB_ID=f"lt-sam-{job_id}-{restart}",
                     PYTHON=self.python)
        return ["bash", os.path.join(ROOT, "scripts", "launch_multi_node.sh"), *cmd[cmd.index(train) + 1:]], extra

    def _run(self, part: List[Run], cmd: List[str], extra: Dict[str, str], env, main: bool) -> int:
        """Run one part to its end; a signal that ends this process (requeue) stops it first."""
        if main:
            proc = runner.start_job(part, self.out_root, cmd, extra, f"SLURM job {env.job_id} on {env.hostname}",
                                    {"slurm_job": env.job_id})
        else:   # the other nodes' output goes to their task's SLURM log
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **extra})
        try:
            return proc.wait()
        finally:
            if proc.poll() is None:   # submitit is requeuing this job: let the run stop cleanly
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if main:
                proc.log_file.close()

    def progressed(self) -> bool:
        """Did this attempt checkpoint an epoch of any run (or finish one)?"""
        for run in self.job:
            folder = self.folder(run)
            for name in ("last.pt", run.done_file):
                path = os.path.join(folder, name)
                if os.path.isfile(path) and os.path.getmtime(path) >= self.started:
                    return True
        return False

    def checkpoint(self):
        """submitit: requeue this job (the runs resume from their checkpoints), unless it ran into
        its time limit without checkpointing one epoch: then its runs fail with that reason."""
        import submitit
        ran = time.time() - self.started
        if ran >= 0.8 * self.res.time_min * 60 and not self.progressed():
            for run in self.job:
                if runner.run_state(self.folder(run), run.done_file) != "done":
                    _write_failed(self.folder(run), f"no epoch finished within --time {self.res.time_min} min "
                                                    f"({ran / 60:.1f} min ran); give a longer --time")
            return None
        return submitit.helpers.DelayedSubmission(TableJob(self.job, self.out_root, self.res, self.bench_args,
                                                           self.python))


def rendezvous_port(job_id: str) -> int:
    """The c10d rendezvous port of a multi-node job: a function of its id, the same on every node."""
    return 20000 + int("".join(c for c in job_id if c.isdigit()) or 0) % 20000


def _checkpoint_epoch(path: str) -> Optional[int]:
    import torch
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # an unreadable checkpoint: resume alone, where the trainer says what is wrong
        return None


def _write_failed(folder: str, message: str) -> None:
    with open(os.path.join(folder, runner.FAILED), "w") as f:
        f.write(message + "\n")


# ----------------------------------------------------------------------------- the submitting side

@dataclasses.dataclass
class State:
    """Where a run stands for the slurm launcher."""
    run: Run
    state: str                 # done | queued | stuck (queued for ever) | running | failed | new (not submitted)
    detail: str = ""
    job_id: Optional[str] = None


def read_record(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def queue_states(job_ids: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """{job id: (SLURM state, reason)} of the jobs squeue still lists (finished ones stay listed for
    the cluster's MinJobAge)."""
    if not job_ids:
        return {}
    heads = sorted({j.split("_")[0] for j in job_ids})
    out = _slurm(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(heads)])
    found = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = (parts[1], parts[2])
    return found


def states(runs: Sequence[Run], out_root: str) -> List[State]:
    """Each run's state from its folder, its slurm.json and squeue."""
    records = {r.key: read_record(os.path.join(out_root, r.key)) for r in runs}
    queue = queue_states([rec["job_id"] for rec in records.values() if rec])
    out = []
    for run in runs:
        folder, rec = os.path.join(out_root, run.key), records[run.key]
        if runner.run_state(folder, run.done_file) == "done":
            out.append(State(run, "done", job_id=rec and rec["job_id"]))
        elif rec is None:
            out.append(State(run, "new"))
        else:
            out.append(_unfinished(run, folder, rec, queue))
    return out


def _unfinished(run: Run, folder: str, rec: dict, queue) -> State:
    job_id = rec["job_id"]
    slurm_state, reason = queue.get(job_id, ("", ""))
    if slurm_state in QUEUED and reason in NEVER_STARTS:
        return State(run, "stuck", f"{reason}: {NEVER_STARTS[reason]}; it will never start", job_id)
    if slurm_state in QUEUED:
        return State(run, "queued", reason, job_id)
    if slurm_state in RUNNING:
        return State(run, "running", "", job_id)
    try:
        with open(os.path.join(folder, runner.FAILED)) as f:
            why = f.read().strip()
    except OSError:
        why = f"SLURM job {job_id} ended ({slurm_state or 'no longer listed'}) without {run.done_file}"
    return State(run, "failed", why, job_id)


def log_of(state: State, out_root: str) -> str:
    """The log to read: the run's train.log, or SLURM's log of its job when the run never started."""
    log = os.path.join(out_root, state.run.key, runner.LOG)
    if os.path.isfile(log):
        return log
    rec = read_record(os.path.join(out_root, state.run.key)) or {}
    return rec.get("stderr") or log


def submit(runs: Sequence[Run], out_root: str, opts: Options, datasets: Dict[str, str], stack_seeds: bool,
           bench_args: Sequence[str] = ()) -> List[str]:
    """Submit the jobs of `runs` (one per job of runner.jobs; an array per set of equal resources);
    write each run's slurm.json; -> the SLURM job ids."""
    import submitit
    groups: Dict[Resources, List[List[Run]]] = {}
    for job in runner.jobs(list(runs), out_root, stack_seeds):
        groups.setdefault(resources(job[0], datasets[job[0].key], opts), []).append(job)
    ids = []
    folder = os.path.join(out_root, "slurm")
    for res, jobs in groups.items():
        executor = submitit.SlurmExecutor(folder=os.path.join(folder, "%j"), max_num_timeout=10 ** 6)
        executor.update_parameters(**res.parameters(opts))
        before = set(glob.glob(os.path.join(folder, "*.pkl")))
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said), executor.batch():   # submitit prints sbatch's stderr
                handles = [executor.submit(TableJob(job, out_root, res, bench_args)) for job in jobs]
        except Exception as e:  # sbatch refused: its own message says why (a bad option, an account)
            for path in set(glob.glob(os.path.join(folder, "*.pkl"))) - before:
                os.remove(path)    # the pickles of jobs that were never submitted
            raise UserError(f"sbatch refused the jobs: {_sbatch_error(said.getvalue() or str(e))}"
                            + (f" ({len(ids)} jobs were submitted before: {', '.join(ids)})" if ids else "")) from None
        for job, handle in zip(jobs, handles):
            for run in job:
                _write_record(os.path.join(out_root, run.key), handle)
            ids.append(handle.job_id)
    return ids


def _sbatch_error(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if "error" in l.lower()]
    return brief(lines[-1] if lines else text, 200)


def _write_record(folder: str, handle) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RECORD), "w") as f:
        json.dump({"job_id": handle.job_id, "stdout": str(handle.paths.stdout), "stderr": str(handle.paths.stderr),
                   "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
