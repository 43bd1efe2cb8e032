"""One run's folder as the trainer keeps it: its config, checkpoint, per-epoch logs, best epoch,
elapsed time and final report. The trainer holds one `RunRecord` per run it trains (one, or
one per seed trained together), so what a run writes does not depend on its company."""
import os
from typing import Callable, Optional, Tuple

from core.errors import UserError
from engine.checkpoint import TRAINING_KEYS, load_checkpoint, save_checkpoint
from engine.config import Config, config_to_dict
from engine.guards import check_finite_report, stop_note
from engine.metrics import best_on_test
from engine.report import RunWriter, git_revision, percent, report_line, write_json, write_text, write_yaml
from engine.tracking import WandbRun

REPORT_KEYS = ("top1", "head", "medium", "tail", "ece")
# Written first into every folder a run is created in (and into an older run's folder when it is
# resumed): train.py starts a new run only in a folder that is empty or holds this file, so it
# never overwrites a config.yaml or summary.csv of the user's (engine/locks.py check_run_folder).
RUN_MARKER = ".lt-sam-run"
OUTPUTS = ("config.yaml", "metrics.jsonl", "summary.csv", "tb", "last.pt", "final.json")   # what a run writes


class RunRecord:
    def __init__(self, cfg: Config, out_dir: str, tag: str, is_main: bool, together: int = 1):
        self.cfg, self.out_dir, self.tag, self.is_main = cfg, out_dir, tag, is_main
        self.ckpt_path = os.path.join(out_dir, "last.pt")
        self.elapsed, self.writer = 0.0, None
        self.best, self.best_per_group = None, None    # best-on-test: engine.metrics.best_on_test
        # W&B (train.loggers): checked now, started with the epochs; `together`: runs in this process
        self.tracker = WandbRun(cfg, out_dir, together) if is_main and "wandb" in cfg.train.loggers else None
        self.finished = False

    # ------------------------------------------------------------------ start
    def create(self) -> None:
        """A new run: its folder, the marker that proves it ours, and its resolved config."""
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self._mark()
            write_yaml(os.path.join(self.out_dir, "config.yaml"), config_to_dict(self.cfg))

    def _mark(self) -> None:
        path = os.path.join(self.out_dir, RUN_MARKER)
        if not os.path.isfile(path):
            write_text(path, f"a run folder of lt-sam: train.py writes and rewrites {', '.join(OUTPUTS)} here\n")

    def load(self) -> dict:
        """A resumed run: its checkpoint (the caller restores weights and optimizer from it)."""
        state = load_checkpoint(self.ckpt_path, require=TRAINING_KEYS)
        # Checkpoints before best_per_group have best_on_test = {top1, epoch} only: the groups
        # of that epoch are unknown (None) until a better epoch replaces it.
        self.elapsed, self.best = state["elapsed"], state.get("best_on_test")
        self.best_per_group = state.get("best_per_group")
        return state

    def open(self, start_epoch: int) -> None:
        if self.is_main:
            self._mark()   # a run resumed from before the marker existed: its checkpoint has just loaded
        self.writer = RunWriter(self.out_dir, start_epoch, self.is_main, self.cfg.train.loggers)
        if self.tracker is not None:
            self.tracker.start(config_to_dict(self.cfg))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.tracker is not None:
            self.tracker.close(failed=not self.finished)

    # ------------------------------------------------------------------ epochs
    def note(self, epoch: int, epoch_values) -> str:
        """What a stop in this epoch says: the good checkpoint and the likely cause."""
        return self.tag + stop_note(self.ckpt_path, epoch, self.cfg, epoch_values)

    def end_epoch(self, epoch: int, values: dict, stats: dict, report: Optional[dict], seconds: float,
                  checkpoint: Callable[[], Tuple[dict, dict]], class_counts) -> None:
        """Log the epoch, keep the best-on-test figures, save the checkpoint (`checkpoint()` gives
        the model and optimizer state_dicts)."""
        if report is not None:
            check_finite_report(report)   # NaN outputs from finite weights (e.g. BN statistics)
            self.best, self.best_per_group = best_on_test(self.best, self.best_per_group, report, epoch)
        self.elapsed += seconds
        row = {"epoch": epoch, "lr": values["lr"], "rho": values["rho"], "drw": values["drw"], **stats,
               **{k: (report or {}).get(k) for k in REPORT_KEYS}, "epoch_seconds": seconds}
        self.writer.log_epoch(row)
        if self.tracker is not None:
            self.tracker.log_epoch(row)
        if self.is_main:
            _print_epoch(row, self.cfg.train.epochs, self.tag)
            model_state, optimizer_state = checkpoint()
            save_checkpoint(self.ckpt_path, {"epoch": epoch + 1, "elapsed": self.elapsed, "model": model_state,
                                             "optimizer": optimizer_state, "class_counts": list(class_counts),
                                             "config": config_to_dict(self.cfg), "best_on_test": self.best,
                                             "best_per_group": self.best_per_group})

    # ------------------------------------------------------------------ end
    def finish(self, report: dict, class_counts, class_names, info, together=None) -> dict:
        """final.json: the last evaluation, the run's facts; `together`: the seeds it trained with."""
        cfg = self.cfg
        final = {**report, "class_counts": list(class_counts), "class_names": class_names,
                 "epochs": cfg.train.epochs, "wall_seconds": self.elapsed,
                 "seconds_per_epoch": self.elapsed / max(1, cfg.train.epochs),
                 "best_on_test": self.best, "best_per_group": self.best_per_group,
                 "world_size": info.world_size, "device": str(info.device), "git_revision": git_revision(),
                 "run": {"dataset": cfg.data.name, "model": cfg.model.name, "loss": cfg.loss.name,
                         "optim": cfg.optim.name, "seed": cfg.seed}}
        if together:   # its seconds are the group's: say so beside them
            final["trained_with_seeds"] = list(together)
        check_finite_report(final)
        if self.is_main:
            path = os.path.join(self.out_dir, "final.json")
            write_json(path, final)
            if self.tracker is not None:
                self.tracker.log_final(final)
            self.finished = True
            print(f"{self.tag}final: {report_line(final)}  -> {path}", flush=True)
        return final


def same_epoch(states, records) -> int:
    """The epoch every resumed checkpoint stopped after (runs trained together move together)."""
    epochs = sorted({s["epoch"] for s in states})
    if len(epochs) > 1:
        raise UserError(f"{', '.join(r.out_dir for r in records)} stopped after different epochs "
                        f"({', '.join(map(str, epochs))}); resume them one by one")
    return epochs[0]


def _print_epoch(row: dict, epochs: int, tag: str = "") -> None:
    rho = "" if row["rho"] is None else f" rho {row['rho']:.3g}"
    test = "" if row["top1"] is None else (f" | top1 {row['top1']:.2f} head {percent(row['head'])} "
                                           f"med {percent(row['medium'])} tail {percent(row['tail'])}")
    print(f"{tag}epoch {row['epoch'] + 1}/{epochs} lr {row['lr']:.4g}{rho} loss {row['train_loss']:.4f} "
          f"train {row['train_acc']:.2f}%{test} ({row['epoch_seconds']:.1f}s)", flush=True)
