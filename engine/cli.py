"""Command-line plumbing shared by train.py and eval.py: arguments, which runs are asked for,
error lines. Outputs are checked before any work starts (run folders and their locks:
engine/locks.py); an evaluation report path must be a writable file that is not part of a run.
"""
import argparse
import contextlib
import os
import signal
import sys
import tempfile

from core.errors import UserError, brief
from engine.config import load_config
from engine.distributed import restart_count
from engine import guards
from engine.locks import RUN_FILES, check_run_folder, folder_lock

NOT_A_REPORT = RUN_FILES - {"eval.json"}


def config_arguments(parser: argparse.ArgumentParser, config_required: bool) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.rho=0.1 (repeatable)")


def default_out_dir(config_path: str, seed: int) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", f"{stem}-seed{seed}")


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
