"""What a run leaves in its folder: config.yaml, metrics.jsonl (one line per epoch), summary.csv,
TensorBoard events, final.json. Only the main process writes.

Every whole-file write goes through `atomic_write`: a temporary file unique to the writer in the
same folder, flushed and fsynced, renamed over the destination, then the folder fsynced, so a
crash or a full disk leaves the old file or the whole new one, never a part, and two writers
never share a temporary name. A write that fails stops the run with one line (`RunStopped`).
"""
import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import tempfile
import threading
from typing import IO, Callable, List, Optional

import yaml

from core.errors import UserError
from engine.guards import RunStopped

CSV_KEYS = ["epoch", "lr", "rho", "train_loss", "train_acc", "top1", "head", "medium", "tail", "ece", "epoch_seconds"]
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a finished file gets the mode that open()
# would have given it (0666 less the umask), like every other file the user makes.
FILE_MODE = 0o666 & ~_umask()


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
    return RunStopped(f"cannot write {path}: {error.strerror or error}")


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry is data of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends.

    Their handlers raise an exception wherever the main thread is; inside torch.save that is a
    Python callback of its C++ zip writer, which then failed with "unexpected pos" or aborted
    the process ("terminate called ... write to closed file"). Held, they are raised again
    (`signal.raise_signal`) once the file is complete and in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    caught = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a fresh temporary file next to `path`, then put it in place; a
    signal that arrives meanwhile waits until the file is in place (`signals_held`)."""
    with signals_held():
        _atomic_write(path, write)


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_folder(folder)
    except OSError as e:
        _remove(tmp)
        raise write_failed(path, e) from None
    except BaseException:  # Ctrl-C mid-write: the destination stays as it was
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
