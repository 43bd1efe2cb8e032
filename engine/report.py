"""What a run leaves in its folder: config.yaml, metrics.jsonl (one line per epoch), summary.csv,
TensorBoard events, final.json. Only the main process writes."""
import csv
import json
import os
import subprocess
from typing import List, Optional

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


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_metrics(path: str) -> List[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class RunWriter:
    """Per-epoch logs. On resume from epoch E, lines for epochs >= E (written after the last
    checkpoint) are dropped so that the files read as one uninterrupted run."""

    def __init__(self, out_dir: str, start_epoch: int, enabled: bool):
        self.out_dir, self.enabled = out_dir, enabled
        self.history: List[dict] = []
        if not enabled:
            return
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.history = [r for r in read_metrics(self.metrics_path) if r["epoch"] < start_epoch]
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        self._rewrite_csv()
        from torch.utils.tensorboard import SummaryWriter  # slow import: only on the main process
        self.tb = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start_epoch)

    def _rewrite_csv(self) -> None:
        with open(os.path.join(self.out_dir, "summary.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, CSV_KEYS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)

    def log_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self.history.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._rewrite_csv()
        for key in CSV_KEYS[1:]:
            if row.get(key) is not None:
                self.tb.add_scalar(key, row[key], row["epoch"])
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
