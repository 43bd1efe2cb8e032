"""Run folders: what a folder may hold before a run starts in it, and the lock that claims it.

A run folder must be new, empty, or hold only a run's own files, and those only where it is
provably a run of ours (the marker file that every run writes first, engine/records.py
RUN_MARKER): a user's config.yaml or summary.csv is never overwritten. It is claimed with a lock
(`flock` on DIR/.lock, released by the kernel when the process ends however it ends), so two
launches into one folder can never both run and interleave their logs.
"""
import contextlib
import fcntl
import os

from core.errors import UserError
from engine.distributed import env_rank
from engine.records import OUTPUTS, RUN_MARKER
from engine.report import TMP_SUFFIX

LOCK = ".lock"
_held_locks: set = set()   # file descriptors of the run-folder locks this process holds
# What a run folder may hold before a new run starts in it: a run's own outputs (from an attempt
# that stopped before its first checkpoint) and the files scripts/run_table.py keeps beside them
# (slurm.json: the SLURM job of the run, written when it is submitted), and W&B's (engine/tracking.py).
RUN_FILES = {*OUTPUTS, RUN_MARKER, "eval.json", LOCK, "train.log", "command.json", "FAILED", "slurm.json",
             "wandb.json", "wandb"}


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
