"""Command-line plumbing shared by train.py and eval.py: arguments, run folders, error lines."""
import argparse
import contextlib
import os
import signal
import sys

from engine.config import load_config
from engine.distributed import restart_count
from core.errors import UserError


def config_arguments(parser: argparse.ArgumentParser, config_required: bool) -> None:
    parser.add_argument("--config", required=config_required, help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.rho=0.1 (repeatable)")


def default_out_dir(config_path: str, seed: int) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", f"{stem}-seed{seed}")


def resolve_run(args):
    """-> (config, run folder, resume?) from --config/--set/--out/--resume."""
    if args.resume:
        if args.config or args.set:
            raise UserError("--resume continues a run with its saved config.yaml; drop --config and --set")
        out = args.resume
        if not os.path.isfile(os.path.join(out, "last.pt")):
            raise UserError(f"nothing to resume: {os.path.join(out, 'last.pt')} does not exist")
        return load_config(os.path.join(out, "config.yaml")), out, True
    if not args.config:
        raise UserError("give --config FILE (a YAML in configs/) or --resume DIR")
    cfg = load_config(args.config, args.set)
    out = args.out or default_out_dir(args.config, cfg.seed)
    has_run = os.path.isfile(os.path.join(out, "last.pt"))
    if has_run and restart_count() > 0:
        return cfg, out, True  # torchrun --max-restarts brought us back: continue from the checkpoint
    if has_run or os.path.isfile(os.path.join(out, "final.json")):
        raise UserError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")
    return cfg, out, False


class Terminated(Exception):
    """SIGTERM: torchrun stops the other ranks this way when one fails, schedulers on cancel."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def user_errors(resume_hint: str = ""):
    """Turn UserError into one 'error: ...' line (exit 2), Ctrl-C and SIGTERM into a resume hint.

    Checkpoints are written atomically, so stopping at any point keeps the last one intact.
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    hint = f"; the last checkpoint is kept, continue with: python train.py --resume {resume_hint}" if resume_hint else ""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"interrupted{hint}", file=sys.stderr, flush=True)
        sys.exit(130)
    except Terminated:
        print(f"stopped by SIGTERM (under torchrun: another rank failed, or the job was cancelled){hint}",
              file=sys.stderr, flush=True)
        sys.exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)
