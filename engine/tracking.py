"""Weights & Biases as a run's logger (`train.loggers: [..., wandb]`), beside TensorBoard and the
CSV that engine/report.py writes.

wandb is an optional dependency: imported only when a config names it, with one line naming the
pip command when it is missing. Each run logs to one W&B run whose id is kept in the run folder
(wandb.json), so that `train.py --resume` continues the same W&B run; W&B's own files go to
<run>/wandb/ (offline runs: `wandb sync <run>/wandb/offline-run-*`). What is logged: the
resolved config, one point per epoch (step = epoch, the keys of metrics.jsonl), and at the end
the final report in the run summary (top-1, Head / Med / Tail, ECE) and the per-class accuracy
as a table (class, name, training images, accuracy).

An epoch logged after the last checkpoint and before a stop is logged again by the resumed run;
W&B keeps the first of two points of one step and warns.
"""
import json
import os
import secrets
import string
from typing import Optional

from core.errors import UserError
from engine.report import write_json

ID_FILE = "wandb.json"
PIP = "pip install wandb"
SUMMARY_KEYS = ("top1", "head", "medium", "tail", "ece", "accuracy", "epochs", "wall_seconds")


def require_wandb():
    """The wandb module, or one line saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"train.loggers names wandb, but the wandb package is not installed: {PIP} "
                        "(or remove wandb from train.loggers)") from None
    return wandb


def read_id(out_dir: str) -> Optional[str]:
    """The W&B run id kept in a run folder, or None."""
    path = os.path.join(out_dir, ID_FILE)
    try:
        with open(path) as f:
            stored = json.load(f)["id"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged (no W&B run id in it); restore it, or remove it to log to a new "
                        "W&B run") from None
    if not _valid_id(stored):
        raise UserError(f"{path}: {stored!r} is not a W&B run id; restore the file, or remove it to log to a new W&B run")
    return stored


def _valid_id(run_id) -> bool:
    allowed = set(string.ascii_letters + string.digits + "-_")
    return isinstance(run_id, str) and 0 < len(run_id) <= 64 and set(run_id) <= allowed


def choose_id(out_dir: str, together: int) -> str:
    """The W&B run id of the run in `out_dir`: the one its folder keeps; for a new run,
    WANDB_RUN_ID when set (one run only), else a new id. A WANDB_RUN_ID other than the folder's
    would log this run into another W&B run: refused."""
    stored, given = read_id(out_dir), os.environ.get("WANDB_RUN_ID") or None
    if given is not None and stored is not None and given != stored:
        raise UserError(f"WANDB_RUN_ID={given} does not belong to {out_dir}, which logs to W&B run {stored} "
                        f"({os.path.join(out_dir, ID_FILE)}); unset WANDB_RUN_ID to continue that run")
    if given is not None and together > 1:
        raise UserError(f"WANDB_RUN_ID={given} names one W&B run, but {together} seeds train together here; "
                        "unset WANDB_RUN_ID (each seed gets its own W&B run)")
    if given is not None and not _valid_id(given):
        raise UserError(f"WANDB_RUN_ID={given!r} is not a W&B run id (letters, digits, - and _)")
    return stored or given or new_id()


def new_id() -> str:
    """A new W&B run id: 8 lowercase letters and digits, as W&B makes them."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbRun:
    """The W&B run of one lt-sam run (main process only)."""

    def __init__(self, cfg, out_dir: str, together: int = 1):
        self.wandb = require_wandb()
        self.cfg, self.out_dir = cfg, out_dir
        self.id = choose_id(out_dir, together)
        self.run = None

    def start(self, config: dict) -> None:
        """Open (or continue) the W&B run and keep its id in the run folder."""
        t = self.cfg.train
        folder = os.path.basename(os.path.normpath(self.out_dir))
        name = t.wandb_name or (f"{t.wandb_group}/{folder}" if t.wandb_group else folder)
        write_json(os.path.join(self.out_dir, ID_FILE), {"id": self.id, "project": t.wandb_project,
                                                         "entity": t.wandb_entity, "name": name})
        os.makedirs(os.path.join(self.out_dir, "wandb"), exist_ok=True)
        try:
            self.run = self.wandb.init(project=t.wandb_project, entity=t.wandb_entity, group=t.wandb_group, name=name,
                                       id=self.id, resume="allow", dir=self.out_dir, config=config,
                                       reinit="create_new", settings=self.wandb.Settings(console="off"))
        except Exception as e:  # no login, no network, a project of another entity: W&B's own words
            raise UserError(f"W&B did not start the run of {self.out_dir}: {str(e).splitlines()[0][:200]} "
                            "(log in with `wandb login`, or WANDB_MODE=offline to sync later)") from None

    def log_epoch(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"])

    def log_final(self, final: dict) -> None:
        """The final report: the summary figures, and per-class accuracy as a table."""
        for key in SUMMARY_KEYS:
            if final.get(key) is not None:
                self.run.summary[f"final/{key}"] = final[key]
        names = final.get("class_names") or [str(k) for k in range(len(final["class_counts"]))]
        rows = [[k, names[k], n, acc] for k, (n, acc) in enumerate(zip(final["class_counts"], final["per_class_acc"]))]
        table = self.wandb.Table(columns=["class", "name", "train_images", "accuracy"], data=rows)
        self.run.log({"final/per_class_accuracy": table})

    def close(self, failed: bool = False) -> None:
        """Finish the W&B run (marked failed when the lt-sam run stopped before its end)."""
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
