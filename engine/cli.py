"""Command-line plumbing shared by train.py and eval.py: arguments, run folders, error lines.

Outputs are checked before any work starts: a run folder must be new, empty, or hold only a
run's own files, and those only where it is provably a run of ours (the marker file that every
run writes first, engine/records.py RUN_MARKER): a user's config.yaml or summary.csv is never
overwritten. It is claimed with a lock (`flock` on DIR/.lock, released by the kernel
when the process ends however it ends), so two launches into one folder can never both run and
interleave their logs. An evaluation report path must be a writable file that is not part of a
run.
"""
import argparse
import contextlib
import fcntl
import os
import signal
import sys
import tempfile

from core.errors import UserError, brief
from engine.config import load_config
from engine.distributed import env_rank, restart_count
from engine import guards
from engine.records import OUTPUTS, RUN_MARKER
from engine.report import TMP_SUFFIX

LOCK = ".lock"
_held_locks: set = set()   # file descriptors of the run-folder locks this process holds
# What a run folder may hold before a new run starts in it: a run's own outputs (from an attempt
# that stopped before its first checkpoint) and the files scripts/run_table.py keeps beside them
# (slurm.json: the SLURM job of the run, written when it is submitted), and W&B's (engine/tracking.py).
RUN_FILES = {*OUTPUTS, RUN_MARKER, "eval.json", LOCK, "train.log", "command.json", "FAILED", "slurm.json",
             "wandb.json", "wandb"}
NOT_A_REPORT = RUN_FILES - {"eval.json"}


def config_arguments(parser: argparse.ArgumentParser, config_required: bool) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.rho=0.1 (repeatable)")


def default_out_dir(config_path: str, seed: int) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", f"{stem}-seed{seed}")


def _is_temporary(name: str) -> bool:
    """A temporary file of engine.report.atomic_write, left behind by a writer that was killed."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def check_run_folder(out: str) -> None:
    """A new run's folder: absent, empty, or holding only a run's own files; those that the run
    would overwrite only where an earlier attempt of ours wrote them (RUN_MARKER beside them)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file; give a folder for the run")
    if os.path.isdir(out):
        others = sorted(n for n in os.listdir(out) if n not in RUN_FILES and not _is_temporary(n))
        if others:
            raise UserError(f"--out {out} holds other files ({_shown(others)}); a run folder holds one run's "
                            "outputs only: choose a new or empty folder")
        would_overwrite = sorted(n for n in OUTPUTS if os.path.exists(os.path.join(out, n)))
        if would_overwrite and not os.path.isfile(os.path.join(out, RUN_MARKER)):
            raise UserError(f"--out {out} holds {_shown(would_overwrite)} but is not a run folder of train.py "
                            f"(no {RUN_MARKER}); a new run would overwrite them: choose a new or empty folder, "
                            "or move them away")


def _shown(names) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _open_lock(out: str) -> int:
    try:
        os.makedirs(out, exist_ok=True)
        return os.open(os.path.join(out, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write in {out}: {e.strerror or e}; choose a writable --out") from None


@contextlib.contextmanager
def folder_lock(out: str):
    """Hold DIR/.lock for the life of the block; refuse if another live process holds it.

    Only the main process of a torchrun group writes, so only global rank 0 takes the lock.
    The file stays (removing it would let a third process lock a fresh file beside a holder).
    """
    if env_rank() != 0:
        yield
        return
    fd = _open_lock(out)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{out} is in use by another run (process {holder}); wait for it to end, "
                        "or choose another --out") from None
    except OSError as e:  # e.g. ENOLCK: a network file system mounted without lock support
        os.close(fd)
        raise UserError(f"cannot lock {os.path.join(out, LOCK)}: {e.strerror or e}; put the run folder on a "
                        "file system with locks (or mount it with lock support)") from None
    _held_locks.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for name in os.listdir(out):  # temporary files of writers that were killed mid-write
            if _is_temporary(name):
                os.unlink(os.path.join(out, name))
        yield
    finally:
        _held_locks.discard(fd)
        os.close(fd)


def close_inherited_locks() -> None:
    """In a forked child (a loader worker): close the copies of the run-folder lock. A worker
    that outlives a killed main process (up to 5 s) would otherwise keep the folder locked and
    refuse the run that torchrun --max-restarts starts in it."""
    for fd in list(_held_locks):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


def _configs_and_folders(args):
    """([config], [folder]) of the run(s) asked for: --resume DIR [DIR ...], or --config with
    --seeds S [S ...] (one folder per seed: --out holds `{seed}`)."""
    resume = list(args.resume or [])
    if resume:
        if args.config or args.set or args.seeds:
            raise UserError("--resume continues runs with their saved config.yaml; drop --config, --set and --seeds")
        for d in resume:
            if not os.path.isfile(os.path.join(d, "last.pt")):
                raise UserError(f"nothing to resume: {os.path.join(d, 'last.pt')} does not exist")
        if len({os.path.realpath(d) for d in resume}) != len(resume):
            raise UserError("--resume lists one folder twice")
        return [load_config(os.path.join(d, "config.yaml")) for d in resume], resume
    if not args.config:
        raise UserError("give --config FILE (a YAML in configs/) or --resume DIR")
    if not args.seeds:
        cfg = load_config(args.config, args.set)
        return [cfg], [args.out or default_out_dir(args.config, cfg.seed)]
    if any(kv.split("=", 1)[0].strip() == "seed" for kv in args.set):
        raise UserError("give the seeds with --seeds only, not also --set seed=...")
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds lists a seed twice: {' '.join(map(str, args.seeds))}")
    pattern = args.out or default_out_dir(args.config, "{seed}")
    if len(args.seeds) > 1 and "{seed}" not in pattern:
        raise UserError(f"--out {pattern}: with several --seeds give a folder pattern holding {{seed}}, "
                        "e.g. runs/la_focal_sam-seed{seed}")
    cfgs = [load_config(args.config, [*args.set, f"seed={s}"]) for s in args.seeds]
    return cfgs, [pattern.replace("{seed}", str(s)) for s in args.seeds]


def _is_resume(args, out: str) -> bool:
    """Decided under the folder's lock: a finished or checkpointed folder is never started over."""
    if args.resume:
        return True
    has_run = os.path.isfile(os.path.join(out, "last.pt"))
    if has_run and restart_count() > 0:
        return True  # torchrun --max-restarts brought us back: continue from the checkpoint
    if has_run or os.path.isfile(os.path.join(out, "final.json")):
        raise UserError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")
    return False


@contextlib.contextmanager
def claimed_runs(args):
    """-> ([config], [run folder], resume?) from --config/--set/--seeds/--out/--resume, with each
    folder checked and locked for this process for the life of the block."""
    cfgs, outs = _configs_and_folders(args)
    for out in outs:
        if not args.resume and not os.path.isfile(os.path.join(out, "last.pt")):
            check_run_folder(out)  # before anything is created in it
    with contextlib.ExitStack() as locks:
        for out in outs:
            locks.enter_context(folder_lock(out))
        resume = {_is_resume(args, out) for out in outs}
        if len(resume) > 1:
            raise UserError(f"some of {', '.join(outs)} hold a checkpoint and some do not; resume them one by one")
        yield cfgs, outs, resume.pop()


def check_report_path(path: str, checkpoint: str, option: str = "--out") -> None:
    """A report file (eval.py --out): a file path in a writable folder, not a folder and not a
    run's own file."""
    if os.path.isdir(path):
        raise UserError(f"{option} {path} is a folder; give a file path such as {os.path.join(path, 'eval.json')}")
    if os.path.exists(path) and (os.path.basename(path) in NOT_A_REPORT or
                                 os.path.exists(checkpoint) and os.path.samefile(path, checkpoint)):
        raise UserError(f"{option} {path} would overwrite a file of the run; give another path")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{option} {path}: {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write {option} {path}: {e.strerror or e}; choose a writable path") from None


def check_out_folder(folder: str, option: str = "--out") -> str:
    """An output folder (reports, figures): created if absent and shown writable before any work,
    so that a typo costs no computation and no traceback; -> the folder."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder} ({option}) is a file; give a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({option}): {e.strerror or e}; choose a writable folder") from None
    return folder


class Terminated(Exception):
    """SIGTERM: torchrun stops the other ranks this way when one fails, schedulers on cancel."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _is_loader_failure(e: BaseException) -> bool:
    """A DataLoader worker died or stalled (PyTorch reports both as RuntimeError text)."""
    return isinstance(e, RuntimeError) and ("DataLoader worker" in str(e) or "DataLoader timed out" in str(e))


@contextlib.contextmanager
def user_errors(resume_hint=""):
    """Turn UserError into one 'error: ...' line (exit 2), Ctrl-C and SIGTERM into a line that
    says how to go on (the resume command only when the run folder holds a checkpoint).

    Checkpoints are written atomically, so stopping at any point keeps the last one intact.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    hint = (lambda: f"; {guards.resume_hint(resume_hint)}") if resume_hint else (lambda: "")
    try:
        yield
    except guards.RunStopped as e:
        print(f"error: {e}{hint()}", file=sys.stderr, flush=True)
        sys.exit(2)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted{hint()}", file=sys.stderr, flush=True)
        sys.exit(130)
    except Terminated:
        print(f"stopped by SIGTERM (under torchrun: another rank failed, or the job was cancelled){hint()}",
              file=sys.stderr, flush=True)
        sys.exit(143)
    except RuntimeError as e:
        if not _is_loader_failure(e):
            raise
        print(f"error: the data loader failed ({brief(e, 120)}){hint()}", file=sys.stderr, flush=True)
        sys.exit(2)
    except MemoryError as e:  # numpy's array allocation says how much it asked for
        print(f"error: out of memory ({brief(e, 120) or 'MemoryError'}); lower train.batch_size, "
              f"data.num_workers or the data sizes{hint()}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        signal.signal(signal.SIGTERM, previous)
