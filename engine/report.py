"""What a run leaves in its folder: config.yaml, metrics.jsonl (one line per epoch), summary.csv,
TensorBoard events, final.json. Only the main process writes, every whole file atomically
(core/files.py); a write that fails stops the run with one line (`RunStopped`).
"""
import csv
import io
import json
import os
import subprocess
from typing import IO, Callable, List, Optional

import yaml

from core import files
from core.errors import UserError
from core.files import TMP_SUFFIX  # noqa: F401  (the temporary files' suffix, for the run-folder checks)
from engine.guards import RunStopped

CSV_KEYS = ["epoch", "lr", "rho", "train_loss", "train_acc", "top1", "head", "medium", "tail", "ece", "epoch_seconds"]


def git_revision() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_failed(path: str, error: OSError) -> RunStopped:
    return RunStopped(str(files.write_failed(path, error)))


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """core.files.atomic_write; a failed write of a run's file stops the run (RunStopped: the
    command line adds how to resume)."""
    try:
        files.atomic_write(path, write)
    except files.WriteFailed as e:
        raise RunStopped(str(e)) from None


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def write_yaml(path: str, tree: dict) -> None:
    """The resolved config (a plain dict from engine.config.config_to_dict) as YAML."""
    write_text(path, yaml.safe_dump(tree, sort_keys=False))


def percent(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def report_line(report: dict) -> str:
    """The one line that states a report: top1, head, medium, tail, ece (percent; n/a for an empty group)."""
    return (f"top1 {report['top1']:.2f}  head {percent(report['head'])}  medium {percent(report['medium'])}  "
            f"tail {percent(report['tail'])}  ece {report['ece']:.2f}")


def read_metrics(path: str) -> List[dict]:
    """The epoch rows of metrics.jsonl. A torn last line (the process died while appending it)
    is dropped: its epoch has no checkpoint, so the resumed run writes it again."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            if number == len(lines):
                break
            raise UserError(f"{path}: line {number} is not an epoch record; the file was edited or damaged "
                            "(move it away to resume without the earlier epochs' log)")
        rows.append(row)
    return rows


class RunWriter:
    """Per-epoch logs. On resume from epoch E, lines for epochs >= E (written after the last
    checkpoint) are dropped so that the files read as one uninterrupted run."""

    def __init__(self, out_dir: str, start_epoch: int, enabled: bool, loggers=("tensorboard", "csv")):
        """`loggers`: the config's train.loggers; tensorboard and csv are written here."""
        self.out_dir, self.enabled = out_dir, enabled
        self.csv, self.tb = "csv" in loggers, None
        self.history: List[dict] = []
        if not enabled:
            return
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.history = [r for r in read_metrics(self.metrics_path) if r["epoch"] < start_epoch]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))
        self._rewrite_csv()
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only on the main process
            self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start_epoch)

    def _rewrite_csv(self) -> None:
        if not self.csv:
            return
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        w.writerows(self.history)
        write_text(os.path.join(self.out_dir, "summary.csv"), text.getvalue())

    def log_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        try:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise write_failed(self.metrics_path, e) from None
        self._rewrite_csv()
        if self.tb is None:
            return
        try:
            for key in CSV_KEYS[1:]:
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], row["epoch"])
            self.tb.flush()
        except OSError as e:
            raise write_failed(os.path.join(self.out_dir, "tb"), e) from None

    def close(self) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError:
                pass  # already stopping (e.g. the disk is full): the events written so far stay
